"""The shared `main` of the nodes: init, spin until Ctrl-C / SIGINT, summarise, shut down."""

from __future__ import annotations

import faulthandler
import sys

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from algd_runtime.ros.executor import EXECUTORS, LeanExecutor
from algd_runtime.ros.suspend import CHECK_PERIOD_S, Suspended, SuspendWatch, restart, restarted_after


def node_help(node_cls) -> str:
    """Usage, what the node does (its module's docstring) and its parameters as the shipped
    YAML sets them, comments included."""
    from algd_runtime.ros.launcher import default_params

    name = node_cls.NAME
    doc = (sys.modules[node_cls.__module__].__doc__ or "").strip()
    usage = (f"usage: algd-{name} [--help] [--ros-args [-r __ns:=/algd] [--params-file FILE] "
             f"[-p NAME:=VALUE ...] [--log-level LEVEL]]")
    section, lines = False, []
    path = default_params()
    for line in path.read_text().splitlines():
        if not line.startswith((" ", "#")) and line.strip():
            section = line.strip() == f"/**/{name}:"
        if section:
            lines.append(line)
    return "\n\n".join([usage, doc, f"Parameters ({path}):", "\n".join(lines)])


CLOCK_GRACE_S = 5.0
SHUTDOWN_REPORT_S = 8.0  # under algd-launch's and the fault bench's 20 s before kill -9


def _warn_without_clock(node) -> None:
    """use_sim_time with nobody publishing /clock: every stamp stays 0, and the node's
    timers (on ROS time) never fire. Said once, CLOCK_GRACE_S after start, on the steady clock."""
    from rclpy.clock import Clock, ClockType

    def check():
        timer.cancel()
        if node.count_publishers("/clock") == 0:
            node.get_logger().warning(f"use_sim_time is true but nothing publishes /clock after {CLOCK_GRACE_S:g} s: "
                                      "every stamp is 0 and this node's timers wait for simulated time; start the "
                                      "simulator's clock or set use_sim_time:=false")

    timer = node.create_timer(CLOCK_GRACE_S, check, clock=Clock(clock_type=ClockType.STEADY_TIME))


def _params_files_problem(argv: list[str]) -> str | None:
    """A --params-file that gives a key twice (rcl keeps one of them silently)."""
    import yaml

    from algd_runtime.contract.yamlfile import load_yaml

    for flag, value in zip(argv, argv[1:]):
        if flag == "--params-file":
            try:
                with open(value) as f:
                    load_yaml(f.read())
            except (OSError, yaml.YAMLError) as exc:
                return f"--params-file: {value}: {exc}"
    return None


def _param(node, name: str, default):
    """A process-level parameter where the node declares it (the sim has fewer), else `default`."""
    return node.get_parameter(name).value if node.has_parameter(name) else default


def _refuse(node, why: str) -> int:
    """A parameter the process cannot start with: one clear line, exit status 2."""
    print(f"error: {why}", file=sys.stderr)
    node.destroy_node()
    rclpy.try_shutdown()
    return 2


def run_node(node_cls, argv=None) -> int:
    faulthandler.enable()  # a crash in native code (Fast DDS, ONNX Runtime) says where in the log
    argv = list(argv if argv is not None else sys.argv)
    ours = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "-h" in ours or "--help" in ours:
        print(node_help(node_cls))
        return 0
    why = _params_files_problem(argv)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    try:
        node = node_cls()
    except (ValueError, ParameterException, RuntimeError) as exc:  # bad parameters, QoS or bundle: one clear line
        print(f"error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while starting (a sibling failed under algd-launch): no traceback
        print(f"{node_cls.NAME}: stopped while starting", file=sys.stderr)
        rclpy.try_shutdown()
        return 130
    from algd_runtime.ros.realtime import make_realtime, pin_cpus, short_slice

    log = node.get_logger()
    if node.get_parameter("use_sim_time").value:
        _warn_without_clock(node)
    cpus = list(_param(node, "cpu_affinity", []))
    if cpus:
        refused = pin_cpus(cpus)
        log.warning(refused) if refused else log.info(f"on CPU(s) {cpus}")
    slice_us = _param(node, "sched_slice_us", 0)
    if slice_us:
        refused = short_slice(slice_us)
        log.warning(refused) if refused else log.info(f"time slice {slice_us} us")
    priority = _param(node, "realtime_priority", 0)
    if priority:
        refused = make_realtime(priority)
        log.warning(refused) if refused else log.info(f"SCHED_FIFO at priority {priority}")
    before = restarted_after()
    if before:
        log.warning(f"started again: the previous process was suspended for {before} s (restart_after_suspend_s)")
    suspend_s = _param(node, "restart_after_suspend_s", 0)
    if suspend_s:
        from rclpy.clock import Clock, ClockType

        try:
            watch = SuspendWatch(suspend_s)
        except ValueError as exc:
            return _refuse(node, str(exc))
        watch.install()
        node.create_timer(CHECK_PERIOD_S, watch.check, clock=Clock(clock_type=ClockType.STEADY_TIME))
    kind = _param(node, "executor", "rclpy")
    if kind not in EXECUTORS:
        return _refuse(node, f"executor: expected one of {', '.join(EXECUTORS)}, got {kind!r}")
    # rclpy's EventsExecutor was tried (BENCHMARKS.md, loop): it kept a core busy and did not
    # stop on SIGINT. The lean one (ros/executor.py) is rclpy's single-threaded one without
    # its per-callback cost.
    executor = LeanExecutor() if kind == "lean" else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if kind == "lean":
            executor.spin()
        else:
            rclpy.spin(node, executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Suspended as exc:
        log.error(f"{exc}: Fast DDS's shared memory may no longer deliver to it; starting again "
                  f"(restart_after_suspend_s {suspend_s:g})")
        node.summarize()
        restart(exc, node.latched())  # does not return; the participant is left as it is (suspend.py)
    except Exception:  # noqa: BLE001
        if rclpy.ok():
            raise  # a failure while running: in full
        # SIGINT shut the context down while a callback was still publishing: that is the stop
    finally:
        # A stop that hangs says where (every thread's stack in the log) before a launcher's
        # kill -9 ends it: one node stopped with Ctrl-C under load left no summary, once.
        faulthandler.dump_traceback_later(SHUTDOWN_REPORT_S)
        # Not executor.shutdown(): it destroys the SIGINT guard condition while rclpy's signal
        # thread may still be triggering it (a segfault in librcl, once, under load).
        executor.remove_node(node)
        node.summarize()
        # Once the summary is written nothing is left to lose: a teardown stuck in Fast DDS
        # (rcl_node_fini, seen once in CI at 1 kHz for more than 20 s) dumps every thread's
        # stack and ends the process with status 1 instead of waiting for a launcher's kill -9.
        faulthandler.dump_traceback_later(SHUTDOWN_REPORT_S, exit=True)
        node.destroy_node()
        rclpy.try_shutdown()
        faulthandler.cancel_dump_traceback_later()
    return 0
