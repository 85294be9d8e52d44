"""Scheduling for a node process (parameters `sched_slice_us`, `realtime_priority`, `cpu_affinity`).

`sched_slice_us` stays on the default scheduler (SCHED_OTHER, no privilege needed) and asks
Linux's EEVDF (6.12 and later) for a short time slice: a node woken by a message then runs
before the process it shares a core with has used its own slice (1.4 ms by default here, most
of a 500 Hz period). Beside a CPU-bound process it raised the share of states answered within
the period at 500 Hz from 50-74 % to 60-89 % (BENCHMARKS.md); quiet it changed nothing.

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

import ctypes
import os
import sys

SLICE_RANGE_US = (100, 100_000)  # what the kernel accepts for a custom slice
DEFAULT_SLICE_US = 200  # the nodes' sched_slice_us


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


class _SchedAttr(ctypes.Structure):  # struct sched_attr, include/uapi/linux/sched/types.h
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64), ("sched_util_min", ctypes.c_uint32),
                ("sched_util_max", ctypes.c_uint32)]


_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr


def _sched_calls() -> tuple | None:
    """(libc, sched_setattr's number, sched_getattr's), or None where they are not known here."""
    calls = _SYSCALLS.get(os.uname().machine) if sys.platform == "linux" else None
    return None if calls is None else (ctypes.CDLL(None, use_errno=True), *calls)


def slice_refusal(us) -> str | None:
    """Why `us` is not a time slice the kernel takes, or None."""
    lo, hi = SLICE_RANGE_US
    if isinstance(us, bool) or not isinstance(us, (int, float)) or not lo <= us <= hi:
        return f"sched_slice_us: expected 0 (the kernel's) or {lo}..{hi} microseconds, got {us!r}"
    return None


def _sched_attr(libc, get: int, tid: int) -> _SchedAttr:
    attr = _SchedAttr()
    if libc.syscall(get, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return attr


def thread_slice_us(tid: int = 0) -> float | None:
    """The time slice the kernel gives a thread (0: this one), in microseconds; None where it
    does not say (not Linux, or an architecture without the syscall numbers here)."""
    calls = _sched_calls()
    if calls is None:
        return None
    libc, _, get = calls
    return _sched_attr(libc, get, tid).sched_runtime / 1e3


def short_slice(us: float) -> str | None:
    """A time slice of `us` microseconds for every thread of this process (threads started
    later inherit it), staying on the default scheduler. Returns why it could not, or None."""
    refused = slice_refusal(us)
    if refused:
        return refused
    calls = _sched_calls()
    if calls is None:
        return "sched_slice_us: needs Linux on x86_64 or aarch64; running with the kernel's slice"
    libc, set_, get = calls
    try:
        for tid in os.listdir("/proc/self/task"):
            attr = _sched_attr(libc, get, int(tid))
            if attr.sched_policy != 0:  # SCHED_FIFO (realtime_priority) or another class: not ours to change
                continue
            attr.size, attr.sched_flags, attr.sched_runtime = ctypes.sizeof(attr), 0, int(us * 1e3)
            if libc.syscall(set_, int(tid), ctypes.byref(attr), 0):
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except OSError as exc:
        return f"sched_slice_us {us:g}: refused ({exc.strerror}); running with the kernel's slice"
    if abs(thread_slice_us() - us) > 1:  # kernels before 6.12 keep their own (sched_runtime is EDF's there)
        return f"sched_slice_us {us:g}: this kernel ({os.uname().release}) keeps its own slice (EEVDF's custom " \
               f"slices need Linux 6.12)"
    return None
