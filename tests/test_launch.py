"""controller.launch.py against its YAML (with test doubles for the absent launch packages),
the ament registration after a real install, and algd-launch."""

import importlib.util
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from algd_runtime.contract.keys import create_key

ROOT = Path(__file__).parent.parent


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def load_launch_file(monkeypatch, share: Path):
    """Import controller.launch.py with stand-ins for launch / launch_ros / ament_index_python."""
    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda actions: list(actions)),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_Recorder),
        "launch.conditions": types.SimpleNamespace(IfCondition=lambda c: ("if", c)),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=lambda name: ("arg", name)),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_Recorder),
        "ament_index_python.packages": types.SimpleNamespace(get_package_share_directory=lambda pkg: str(share)),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("controller_launch", ROOT / "launch" / "controller.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def test_launch_file_nodes_and_parameters_match_the_yaml(monkeypatch, tmp_path):
    actions = load_launch_file(monkeypatch, tmp_path)
    args = {a.args[0]: a.kwargs for a in actions if a.args}
    assert set(args) == {"bundle", "with_sim", "namespace", "params_file", "use_sim_time", "log_level", "autostart", "io"}
    assert args["autostart"]["default_value"] == "true"
    assert args["with_sim"]["default_value"] == "false" and args["use_sim_time"]["default_value"] == "false"
    assert args["log_level"]["default_value"] == "info"
    assert args["params_file"]["default_value"] == str(tmp_path / "launch" / "controller.yaml")  # the shipped one
    nodes = {a.kwargs["name"]: a.kwargs for a in actions if "executable" in a.kwargs}
    assert set(nodes) == {"controller", "monitor", "sim"}
    params = yaml.safe_load((ROOT / "launch" / "controller.yaml").read_text())
    for name, node in nodes.items():
        assert node["package"] == "algd_runtime" and node["namespace"] == ("arg", "namespace")
        assert node["parameters"][0] == ("arg", "params_file") and f"/**/{name}" in params
        assert node["parameters"][1]["use_sim_time"] == ("arg", "use_sim_time")
        assert node["parameters"][1]["io"] == ("arg", "io")  # one io file for the whole graph
        assert node["ros_arguments"] == ["--log-level", ("arg", "log_level")]
        # The executable ros2 launch will look for is installed under lib/algd_runtime/.
        assert (ROOT / "resource" / "lib" / node["executable"]).is_file()
    for name in ("controller", "monitor"):
        assert nodes[name]["parameters"][1]["bundle"] == ("arg", "bundle")
        assert nodes[name]["parameters"][1]["autostart"] == ("arg", "autostart")
    assert "bundle" not in nodes["sim"]["parameters"][1] and "autostart" not in nodes["sim"]["parameters"][1]
    assert nodes["sim"]["condition"] == ("if", ("arg", "with_sim"))


def test_the_launch_yaml_states_every_default_of_every_node():
    """One source for each default (issue 20, item 5): the nodes declare DEFAULTS, and
    launch/controller.yaml states each of them, with the same value, or names it in a comment
    ("# key: ..."); a value in one that drifts from the other (obs_timeout_s was 0.05 in the
    code and 0.02 in the YAML) fails here."""
    from algd_runtime.ros import controller_node, monitor_node, sim_node

    text = (ROOT / "launch" / "controller.yaml").read_text()
    params = yaml.safe_load(text)
    for name, defaults in (("controller", controller_node.DEFAULTS), ("monitor", monitor_node.DEFAULTS),
                           ("sim", sim_node.DEFAULTS)):
        stated = params[f"/**/{name}"]["ros__parameters"]
        assert set(stated) <= set(defaults), f"{name}: not parameters of the node: {set(stated) - set(defaults)}"
        drift = {k: (v, defaults[k]) for k, v in stated.items() if v != defaults[k]}
        assert not drift, f"{name}: launch/controller.yaml (left) and the node's DEFAULTS (right) differ: {drift}"
        section = text[text.index(f"/**/{name}:"):]
        section = section[:section.index("\n/**/", 1)] if "\n/**/" in section[1:] else section
        unstated = {k for k in defaults if k not in stated and f"# {k}:" not in section}
        unstated -= {"bundle", "fallback"}  # the launch argument; a removed parameter kept to explain itself
        assert not unstated, f"{name}: defaults that launch/controller.yaml does not state: {sorted(unstated)}"


def test_non_editable_install_registers_the_package_with_ament(tmp_path):
    prefix = tmp_path / "prefix"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
                          "--prefix", str(prefix), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = ("from ament_index_python.packages import get_package_share_directory as g; import os; "
             "d = g('algd_runtime'); print(d); "
             "print(os.path.isfile(os.path.join(d, 'launch', 'controller.launch.py')))")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix))
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    share, has_launch = res.stdout.split()
    assert Path(share) == prefix / "share" / "algd_runtime" and has_launch == "True"
    assert os.access(prefix / "lib" / "algd_runtime" / "algd-controller", os.X_OK)


def test_algd_launch_runs_the_graph_and_prints_a_summary(vesde_bundle, tmp_path):
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(40 + os.getpid() % 50),
               XDG_STATE_HOME=str(tmp_path / "state"))
    launch = str(Path(sys.executable).parent / "algd-launch")
    cmd = [launch, "--with-sim", "--bundle", str(vesde_bundle), "--duration", "6", "--key", str(tmp_path / "op.key")]  # 2 s start-up hold, then motion
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist; create one with `algd-reset --init-key" in out.stderr
    create_key(tmp_path / "op.key")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "all nodes exited cleanly" in text and "controller: {'ticks':" in text and "sim: " in text
    assert "'fallback_policy'" not in text and "moving: no stop reason left" in text  # the interlock let it move
    # --no-autostart: the managed nodes wait, unconfigured, for lifecycle transitions.
    out = subprocess.run(cmd + ["--no-autostart"], env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "controller: not configured at exit" in text and "monitor: not configured at exit" in text
    assert "of 0 answers (0 of" in text and "moving:" not in text  # nothing answered the robot


def test_algd_launch_refuses_a_folder_without_a_bundle(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "algd-launch"), "--bundle", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "holds no manifest.yaml" in out.stderr


def test_every_node_executable_answers_help_with_its_parameters():
    shipped = yaml.safe_load((ROOT / "launch" / "controller.yaml").read_text())
    for name in ("controller", "monitor", "sim"):
        out = subprocess.run([sys.executable, "-m", f"algd_runtime.ros.{name}_node", "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: algd-{name} [--help] [--ros-args")
        for key in shipped[f"/**/{name}"]["ros__parameters"]:
            assert f"    {key}:" in out.stdout, (name, key)


def test_algd_launch_mirrors_the_launch_arguments(tmp_path, capsys):
    from algd_runtime.ros.launcher import main, node_command

    cmd = node_command("controller", "robot1", Path("p.yaml"), "b", use_sim_time=True, log_level="debug")
    ros = cmd[cmd.index("--ros-args"):]
    assert ros[ros.index("--params-file") + 1] == "p.yaml" and ros[ros.index("--log-level") + 1] == "debug"
    assert "use_sim_time:=true" in ros and "bundle:=b" in ros and "__ns:=/robot1" in ros
    sim = node_command("sim", "robot1", Path("p.yaml"), "b")
    assert "use_sim_time:=true" not in sim and "bundle:=b" not in sim and sim[sim.index("--log-level") + 1] == "info"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.yaml").write_text("{}")
    create_key(tmp_path / "k")
    assert main(["--bundle", str(tmp_path / "b"), "--params-file", str(tmp_path / "none.yaml"),
                 "--key", str(tmp_path / "k")]) == 2
    assert f"--params-file: {tmp_path / 'none.yaml'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("io,pin", [(None, False), ("standard.yaml", True)])
def test_algd_bench_loop_runs_the_whole_graph_and_reports_answered_observations_and_cpu(vesde_bundle, io, pin):
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(40 + (os.getpid() + 7) % 50))
    wired = ["--io", str(ROOT / "config" / "io" / io)] if io else []
    out = subprocess.run([str(Path(sys.executable).parent / "algd-bench"), "loop", str(vesde_bundle), "--rate", "100",
                          "--seconds", "7", *wired, *(["--pin"] if pin else [])],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "sim, controller and monitor as processes" in out.stdout
    speed = re.search(r"Python ([\d.]+) M loop iterations/s", out.stdout)  # what moves the figures between machines
    assert speed and float(speed.group(1)) > 0, out.stdout[:500]
    assert ("standard messages" if io else "raw contract") in out.stdout
    lines = out.stdout.strip().splitlines()
    row = lines[-2].split()
    rate, steps_per_s, answered = float(row[0]), float(row[1]), float(row[2])
    # The interlock let it move. The window counts from the processes' start: Python's start-up,
    # discovery and the 2 s start-up hold take 2.5-4 s of it (CI once saw none left of 4 s),
    # and how far the robot got in the rest is the machine's load.
    assert rate == 100 and steps_per_s > 0 and 50 < answered <= 100, out.stdout
    # Where the time goes: each process's share of a core and its CPU per robot step
    cpu = re.findall(r"(\w+) ([\d.]+) % of a core \(([\d.]+) % its spinning thread\), (\d+) us per robot step, "
                     r"on CPU ([\d,]+)", lines[-1])
    assert sorted(n for n, *_ in cpu) == ["controller", "monitor", "sim"], lines[-1]
    for _, core, thread, per_step, _ in cpu:
        assert 0 < float(thread) <= float(core) and int(per_step) > 0, lines[-1]
    # --pin, read back from each process: the controller alone on the last CPU, the sim and the monitor on the first
    cpus = {n: c for n, *_, c in cpu}
    allowed = sorted(os.sched_getaffinity(0))
    expected = ({"controller": str(allowed[-1]), "sim": str(allowed[0]), "monitor": str(allowed[0])} if pin
                else {n: ",".join(map(str, allowed)) for n in cpus})
    assert cpus == expected, lines[-1]


def test_use_sim_time_without_a_clock_publisher_is_reported(tmp_path):
    import signal
    import time

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(40 + (os.getpid() + 13) % 50))
    proc = subprocess.Popen([sys.executable, "-m", "algd_runtime.ros.sim_node", "--ros-args", "-r",
                             f"__ns:=/clockless_{os.getpid()}", "-p", "use_sim_time:=true"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "use_sim_time is true but nothing publishes /clock after 5 s" in out, out[-2000:]


def test_launch_refuses_a_negative_duration_and_a_params_file_with_a_key_twice(vesde_bundle, tmp_path, capsys):
    from algd_runtime.ros.launcher import main
    from algd_runtime.contract.keys import create_key

    create_key(tmp_path / "k")
    assert main(["--bundle", str(vesde_bundle), "--key", str(tmp_path / "k"), "--duration", "-3"]) == 2
    assert "error: --duration: expected seconds >= 0 (0: until Ctrl-C), got -3" in capsys.readouterr().err
    (tmp_path / "p.yaml").write_text("/**/monitor:\n  ros__parameters:\n    stop_latch: operator\n    stop_latch: episode\n")
    assert main(["--bundle", str(vesde_bundle), "--key", str(tmp_path / "k"), "--params-file", str(tmp_path / "p.yaml")]) == 2
    assert "the key 'stop_latch' is given twice (lines 3 and 4)" in capsys.readouterr().err


def test_the_monitors_default_latch_file_is_one_per_namespace_and_domain(monkeypatch, tmp_path):
    from algd_runtime.ros.monitor_node import default_state_file

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("ROS_DOMAIN_ID", "7")
    seven = default_state_file("/robot")
    monkeypatch.setenv("ROS_DOMAIN_ID", "8")
    assert seven != default_state_file("/robot") and seven.endswith("monitor_robot_domain7.json")


def test_a_node_that_hangs_on_stop_is_aborted_with_every_threads_stack_in_its_log(tmp_path):
    """Two CI runs saw a node not exit 10 s after SIGINT and leave no trace of where it was:
    its main thread was in native code, where a SIGINT never reaches Python. SIGABRT reaches
    the faulthandler the nodes enable (ros/entry.py) wherever they are."""
    from algd_runtime.ros.launcher import stop_nodes

    hung = ("import faulthandler, signal, time\n"
            "faulthandler.enable()\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)  # as if SIGINT were never handled\n"
            "print('ready', flush=True)\n"
            "def stuck_in_teardown():\n"
            "    time.sleep(60)\n"
            "stuck_in_teardown()\n")
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", hung], stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while "ready" not in log.read_text() and time.monotonic() < end:
        time.sleep(0.05)
    killed = stop_nodes({"controller": proc}, timeout=0.5)
    assert killed == {"controller": "aborted after 0.5 s (every thread's stack is in its log)"}
    assert proc.returncode == -6  # SIGABRT, not a kill
    text = log.read_text()
    assert "Fatal Python error: Aborted" in text and "stuck_in_teardown" in text, text
