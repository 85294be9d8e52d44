"""Fault injection against the safety layer (`algd-bench safety`, tests/test_faults.py).

Each run starts the controller, the monitor and the sim robot as three processes
(launcher.node_command, the launch YAML) in a namespace of their own, on PointHazard-v0
with hazard_scale 10: the hazard covers the whole arena, so EVERY step costs 1 and every
episode would overspend its budget (5) after five steps without the safety layer. The run
waits until episodes run (a probe in this process counts the robot's "end" events live),
injects one fault, keeps running, stops every node with SIGINT and reads their summaries.

    none                  baseline
    kill_monitor          SIGKILL the monitor: the controller latches monitor_lost within its
                          deadline and the robot stays held
    late_monitor          the monitor starts 3 s after the others: no step before its first heartbeat
    restart_monitor       SIGKILL + a new monitor (same state_file): the controller latches
                          monitor_restarted; only the operator's reset brings motion back
    sigstop_monitor       SIGSTOP the monitor 2 s, SIGCONT, operator reset
    kill_controller       SIGKILL the controller: the robot holds after cmd_timeout_s
    hostile               with the monitor at STOP (stop_latch operator), then with the
                          controller latched (monitor killed): e-stop clears, the unauthenticated
                          reset service, forged/unsigned/replayed heartbeats, bad/replayed reset
                          proofs, parameter sets, a forged episode end: nothing may move the robot
    duplicate_controller  a second controller in the namespace: both latch, the robot holds

The repeatable faults (kill_monitor, restart_monitor, sigstop_monitor, kill_controller) are
injected again after a recovery (a new process and/or the operator's reset, then episodes
running again) while the run's time allows, for p50/p99 of fault -> safe.

fault -> safe: from the injection (time.monotonic() here) to the first moment the robot is
held for the fault: the first sim hold (CLOCK_MONOTONIC, from its summary) whose reason
shows the fault, or the controller's first STOP decision for it (its log, wall clock turned
into monotonic), whichever is first (the latter when the robot was already holding between
episodes, so that no new hold began). A robot that was holding when its controller died and
never stepped again counts as safe at the injection; one that took its leased steps and then
never stepped again (for at least QUIET_S, until the recovery) is safe from its last step. The expectation is
    p99 <= deadline (monitor_timeout_s, cmd_timeout_s, the controller's 0.1 s graph check)
           + one control period + SCHED_ALLOWANCE_S
where SCHED_ALLOWANCE_S covers the scheduling of four Python processes (three nodes and this
harness) on a small machine.

probe.py observes, graph.py runs the processes, scenarios.py injects and recovers,
report.py judges one cell and prints the matrix."""

from algd_runtime.tools.faults.probe import last_warnings
from algd_runtime.tools.faults.report import bench_safety, run_fault
from algd_runtime.tools.faults.settings import FAULTS, IO_FAULTS, LOG_FORMAT, io_for_rate, io_step_cost

__all__ = ["FAULTS", "IO_FAULTS", "LOG_FORMAT", "bench_safety", "io_for_rate", "io_step_cost", "last_warnings",
           "run_fault"]
