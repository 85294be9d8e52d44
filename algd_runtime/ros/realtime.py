"""Real-time scheduling for a node process (parameters `realtime_priority`, `cpu_affinity`).

On a loaded machine the kernel's fair scheduler can leave a node waiting for milliseconds
while another process runs; at 1 kHz that is a lost step (BENCHMARKS.md, "The whole
graph"). SCHED_FIFO runs the node's threads, DDS's receive threads included, ahead of every
normal process as soon as they are ready, as ros2_control does for its control loop. The
kernel's RT throttling (sched_rt_runtime_us, 95 % by default) still leaves the rest of the
machine some time if a node spins. `cpu_affinity` keeps a process on the CPUs given (as
ros2_control's controller manager does): the loop's two processes on a core each stay cache-
warm, which took the guided loop's p99 at 500 Hz from 0.95-1.09 to 0.84-0.87 ms here.
"""

from __future__ import annotations

import os


def make_realtime(priority: int) -> str | None:
    """SCHED_FIFO at `priority` (1-99) for every thread of this process; threads started
    later inherit it. Returns why it could not, or None."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 99:
        return f"realtime_priority: expected 0 (off) or an integer in 1..99, got {priority!r}"
    if not hasattr(os, "sched_setscheduler"):
        return "realtime_priority: this platform has no SCHED_FIFO; running with the default scheduler"
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return (f"realtime_priority {priority}: SCHED_FIFO refused ({exc.strerror}); it needs CAP_SYS_NICE or an "
                f"rtprio limit (/etc/security/limits.conf: '<user> - rtprio {priority}'); running with the default "
                f"scheduler")
    return None


def pin_cpus(cpus: list[int]) -> str | None:
    """Every thread of this process on `cpus` only. Returns why it could not, or None."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus or any(c not in available for c in cpus):
        return f"cpu_affinity: expected CPUs among {available}, got {cpus}"
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), cpus)
    except OSError as exc:
        return f"cpu_affinity {cpus}: refused ({exc.strerror}); running on every CPU"
    return None
