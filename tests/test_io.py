"""An io file end to end: the sim robot speaks standard messages (Odometry and JointState in,
Twist on cmd_vel out, the cost on std_msgs/Float64), and the controller and the monitor run
as separate processes over real rclpy (algd-launch), wired by YAML alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("nav_msgs")
from algd_runtime.safety import create_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_graph(bundle, tmp_path, io: Path, seconds: float, **sim):
    params = yaml.safe_load((ROOT / "launch" / "controller.yaml").read_text())
    for name in ("controller", "monitor", "sim"):
        params[f"/**/{name}"]["ros__parameters"]["summary_file"] = str(tmp_path / f"{name}.json")
    params["/**/sim"]["ros__parameters"].update(sim)
    for name in ("controller", "monitor"):  # each episode starts afresh: many episodes in one run
        params[f"/**/{name}"]["ros__parameters"]["stop_latch"] = "episode"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    create_key(tmp_path / "op.key")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(60 + os.getpid() % 20),
               XDG_STATE_HOME=str(tmp_path / "state"))
    out = subprocess.run([str(Path(sys.executable).parent / "algd-launch"), "--with-sim", "--bundle", str(bundle),
                          "--io", str(io), "--params-file", str(tmp_path / "params.yaml"), "--duration", str(seconds),
                          "--key", str(tmp_path / "op.key")], env=env, capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "all nodes exited cleanly" in text, text[-3000:]
    return [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("controller", "monitor", "sim")], text


def test_standard_messages_drive_the_robot_and_the_budget_holds(vesde_bundle, tmp_path):
    # The hazard covers the start: every step costs 1 until the robot is held. A standard
    # command has no lease: the robot keeps stepping until the e-stop lands, so steps_ahead
    # must cover rate x e-stop latency (SAFETY.md): 3 steps of 10 ms here.
    io = yaml.safe_load((ROOT / "config" / "io" / "standard.yaml").read_text())
    (tmp_path / "io.yaml").write_text(yaml.safe_dump({**io, "steps_ahead": 3}))
    (ctrl, mon, sim), text = run_graph(vesde_bundle, tmp_path, tmp_path / "io.yaml", 8.0, hazard_scale=3.0,
                                       rate_hz=100.0)
    limit = ctrl["safety"]["budget"]
    # Wired by name: what the controller mapped from Odometry (the first 4 values) and from
    # JointState (the last 4, listed in reverse by the sim) is what the sim observed. Each
    # source is compared on its own: sources are combined newest-of-each, not in lockstep.
    seen = np.array(sim["first_observations"])
    for obs in ctrl["first_observations"]:
        for part in (slice(0, 4), slice(4, 8)):
            assert np.abs(seen[:, part] - obs[part]).max(axis=1).min() < 1e-5, (obs, seen)
    assert ctrl["io_errors"] == {} or set(ctrl["io_errors"]) == {"observation: no message yet on ['joint_states']"}
    # It moved on the policy's commands, and every episode ended within the budget.
    assert not np.isnan(ctrl["latency_p50_ms"]) and sim["steps"] > 30, text[-2000:]
    moved = [c for c, why in zip(sim["costs"], sim["ended_by"]) if c > 0]
    assert len(moved) >= 3 and max(sim["costs"]) <= limit, (sim["costs"], sim["ended_by"])
    assert "estop" in sim["ended_by"] and "budget" in " ".join(t["reason"] for t in mon["transitions"])
    # The monitor accounted the same costs from the cost topic.
    ended = {e["index"]: e["monitor_accumulated"] for e in mon["episodes"]}
    assert sorted(c for c in ended.values() if c > 0) == sorted(moved)


def test_a_mistake_in_the_io_file_is_reported_once_with_the_field(vesde_bundle, tmp_path, capsys):
    from algd_runtime.ros_nodes.launcher import main

    create_key(tmp_path / "k")
    io = yaml.safe_load((ROOT / "config" / "io" / "standard.yaml").read_text())
    io["observation"][4]["joints"] = "goal_dx"
    (tmp_path / "io.yaml").write_text(yaml.safe_dump(io))
    assert main(["--bundle", str(vesde_bundle), "--io", str(tmp_path / "io.yaml"), "--key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert f"error: --io: io {tmp_path / 'io.yaml'}: observation[4].joints: expected a non-empty list of names" in err
