"""algd-launch: the graph of controller.launch.py, where the ros2 CLI is absent.

Starts the controller and the monitor (and with --with-sim the sim robot) as separate
processes with the same parameter YAML, for --duration seconds or until Ctrl-C, then stops
them with SIGINT; each node prints its summary as it exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

NODES = ("controller", "monitor", "sim")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def shipped_param(node: str, name: str, default):
    """A node's parameter as the parameter file (default_params) ships it, else `default`."""
    import yaml

    try:
        params = yaml.safe_load(default_params().read_text())
        return params[f"/**/{node}"]["ros__parameters"].get(name, default)
    except (OSError, KeyError, TypeError, ValueError):
        return default


def default_params() -> Path:
    """launch/controller.yaml: the ament index's share first (a colcon workspace, where a
    user may have edited it), else the package's own copy (algd_runtime/data)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("algd_runtime")) / "launch" / "controller.yaml"
        if path.is_file():
            return path
    except Exception:  # not registered in this environment's ament index
        pass
    from algd_runtime.data import node_parameters

    return node_parameters()


def missing_sim_extra() -> str | None:
    """The sim robot's modules that a robot-side install (only [ros]) lacks, or None."""
    import importlib

    for module in ("mujoco", "gymnasium"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def node_command(name: str, namespace: str, params: Path, bundle: str | None, use_sim_time: bool = False,
                 log_level: str = "info", **overrides) -> list[str]:
    cmd = [sys.executable, "-m", f"algd_runtime.ros.{name}_node", "--ros-args",
           "-r", f"__ns:=/{namespace.strip('/')}", "-r", f"__node:={name}", "--params-file", str(params),
           "--log-level", log_level]
    if bundle and name != "sim":
        overrides = {"bundle": bundle, **overrides}
    if use_sim_time:
        overrides = {"use_sim_time": "true", **overrides}
    for key, value in overrides.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


ABORT_WAIT_S = 5.0  # for a hung node's stack dump before the kill


def stop_nodes(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, str]:
    """SIGINT to every running node (each saves, summarises and exits), then wait; a node
    still running after `timeout` s is aborted: SIGABRT, whose faulthandler (ros/entry.py)
    writes every thread's stack to the node's log, even when its main thread is stuck in
    native code where a SIGINT never reaches Python. Killed if even that does not end it.
    Returns {name: why} for the nodes that did not stop by themselves."""
    for pr in procs.values():
        if pr.poll() is None:
            pr.send_signal(signal.SIGINT)
    killed = {}
    for name, pr in procs.items():
        try:
            pr.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pr.send_signal(signal.SIGABRT)
            killed[name] = f"aborted after {timeout:g} s (every thread's stack is in its log)"
            try:
                pr.wait(timeout=ABORT_WAIT_S)
            except subprocess.TimeoutExpired:
                pr.kill()
                killed[name] = f"killed after {timeout + ABORT_WAIT_S:g} s"
    return killed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-launch", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="exported bundle folder (algd-export)")
    p.add_argument("--with-sim", action="store_true", help="also start the sim robot")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--namespace", default="algd")
    p.add_argument("--params-file", "--params", type=Path, dest="params",
                   help="the nodes' parameter YAML (default: launch/controller.yaml)")
    p.add_argument("--use-sim-time", action="store_true",
                   help="stamps from /clock (the safety deadlines always run on the wall clock)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    p.add_argument("--no-autostart", dest="autostart", action="store_false",
                   help="leave the controller and the monitor unconfigured, for lifecycle transitions")
    p.add_argument("--io", type=Path, help="an io file: wire standard messages (config/io/*.yaml; README, "
                   "'Wiring a robot'); given to every node, the sim included")
    p.add_argument("--key", type=Path, help="operator key file (default: $ALGD_OPERATOR_KEY or "
                   "~/.config/algd-runtime/operator.key; create it with algd-reset --init-key)")
    args = p.parse_args(argv)
    if not (Path(args.bundle) / "manifest.yaml").is_file():
        print(f"error: --bundle: {args.bundle} holds no manifest.yaml (run algd-export first)", file=sys.stderr)
        return 2
    if args.with_sim and (missing := missing_sim_extra()):
        print(f"error: --with-sim: the sim robot needs {missing}, which is not installed: install the training "
              f"extra too (python -m pip install -c constraints.txt -e \".[train,ros]\"), or run without "
              f"--with-sim beside your robot", file=sys.stderr)
        return 2
    from algd_runtime.contract.keys import OperatorKeyError, default_key_path, load_key

    key = args.key or default_key_path()
    try:
        load_key(key)  # the controller and the monitor refuse to start without it: say so once, here
    except OperatorKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = args.params or default_params()
    if not params.is_file():
        print(f"error: --params-file: {params} does not exist", file=sys.stderr)
        return 2
    import yaml

    from algd_runtime.contract.yamlfile import load_yaml

    try:
        load_yaml(params.read_text())  # a key given twice would leave one node on the other value
    except yaml.YAMLError as exc:
        print(f"error: --params-file: {params}: {exc}", file=sys.stderr)
        return 2
    if args.duration < 0 or args.duration != args.duration:
        print(f"error: --duration: expected seconds >= 0 (0: until Ctrl-C), got {args.duration:g}", file=sys.stderr)
        return 2
    io = {}
    if args.io:
        from algd_runtime.deploy.adapters import load_io
        from algd_runtime.ros.messages import message_class

        try:
            load_io(str(args.io), message_class)  # a mistake in it is reported once, here, not by three nodes
        except ValueError as exc:
            print(f"error: --io: {exc}", file=sys.stderr)
            return 2
        io = {"io": str(args.io.resolve())}
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # discovery stays on this machine
    env.setdefault("PYTHONUNBUFFERED", "1")
    names = [n for n in NODES if n != "sim" or args.with_sim]
    print(f"algd-launch: {', '.join(names)} in /{args.namespace} with {params} "
          f"(ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID', '0')}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']})",
          flush=True)
    keyed = {"operator_key_file": key, "autostart": str(args.autostart).lower()}
    procs = {n: subprocess.Popen(node_command(n, args.namespace, params, args.bundle, args.use_sim_time, args.log_level,
                                              **io, **(keyed if n != "sim" else {})), env=env) for n in names}
    t0 = time.monotonic()
    try:
        while all(pr.poll() is None for pr in procs.values()):
            if args.duration and time.monotonic() - t0 >= args.duration:
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    failed = {n: pr.returncode for n, pr in procs.items() if pr.poll() is not None and pr.returncode != 0}
    failed.update(stop_nodes(procs, timeout=10.0))
    print(f"algd-launch: ran {time.monotonic() - t0:.1f} s; "
          + ("all nodes exited cleanly" if not failed else f"failed: {failed}"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
