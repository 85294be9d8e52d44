"""A node process that was suspended starts again (parameter `restart_after_suspend_s`).

Fast DDS 2.14's shared-memory transport, which ROS 2 Jazzy uses between processes on one
machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST cannot turn it off), can give up on a process
that is suspended (SIGSTOP, Ctrl-Z, a debugger's stop) for about a second or more: the other
processes' watchdogs see its listener stand still and replace its port. Once it runs again it
publishes as before but receives nothing more, from anyone, new participants included
(BENCHMARKS.md, "A suspended monitor goes deaf": 3 of 12 runs at 1 kHz). A deaf monitor holds
the robot for good, and the operator's reset cannot reach it.

So a node that was suspended for longer than `restart_after_suspend_s` (measured from its last
steady-clock check to the SIGCONT that resumed it) replaces its process image with a fresh
start of the same command (exec: same PID, same arguments, a new DDS participant) after
writing its summary. Only a suspension counts: a process that was merely slow or blocked (a
publish waiting a second on a suspended peer's shared-memory lock) was not deafened, and a
restart would only leave the robot longer without commands. A latched STOP survives the
restart: the monitor's is in its state file, the controller's goes over with the process
(RESTARTED_LATCHES_ENV).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

RESTART_AFTER_SUSPEND_S = 0.8  # the nodes' default: under the ~1 s after which Fast DDS may replace a port
CHECK_PERIOD_S = 0.1
RESTARTED_ENV = "ALGD_RESTARTED_AFTER_SUSPEND_S"  # what the fresh process says it started for
RESTARTED_LATCHES_ENV = "ALGD_LATCHED_BEFORE_SUSPEND"  # {kind: reason} the fresh process latches again


class Suspended(Exception):
    """The process was suspended for `seconds` (raised out of the executor's spin)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"this process was suspended for {seconds:.2f} s")
        self.seconds = seconds


class SuspendWatch:
    """check() runs every CHECK_PERIOD_S on the steady clock; continued() runs on SIGCONT. A
    check after a SIGCONT that came more than `after_s` after the check before it raises
    Suspended."""

    def __init__(self, after_s: float, now: float | None = None) -> None:
        if isinstance(after_s, bool) or not isinstance(after_s, (int, float)) or not after_s > CHECK_PERIOD_S:
            raise ValueError(f"restart_after_suspend_s: expected 0 (off) or more than {CHECK_PERIOD_S:g} s, "
                             f"got {after_s!r}")
        self.after_s = after_s
        self.last = time.monotonic() if now is None else now
        self.continued_at: float | None = None

    def continued(self, now: float | None = None) -> None:
        self.continued_at = time.monotonic() if now is None else now

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        continued_at, self.continued_at = self.continued_at, None
        before, self.last = self.last, now
        if continued_at is not None and continued_at - before > self.after_s:
            raise Suspended(continued_at - before)

    def install(self) -> None:
        """Call continued() on SIGCONT (Python runs the handler in the main thread, between
        the executor's waits)."""
        signal.signal(signal.SIGCONT, lambda signum, frame: self.continued())


def restart(suspended: Suspended, latched: dict[str, str]) -> None:
    """Replace this process with a fresh start of the command that started it, which latches
    `latched` again. The old DDS participant is deliberately not shut down: Fast DDS opens its
    sockets and shared-memory lock files without close-on-exec, so they stay held in the new
    image, and the new participant must take other ports and another shared-memory port. A
    new participant on the old port's name was deaf again in 1 of 16 runs (the other
    processes keep writing to the port they had open). The others drop the old participant
    when its lease ends."""
    os.environ[RESTARTED_ENV] = f"{suspended.seconds:.2f}"
    os.environ[RESTARTED_LATCHES_ENV] = json.dumps(latched)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def restarted_after() -> str | None:
    """The suspension this process was started again for (seconds, as text), or None."""
    return os.environ.pop(RESTARTED_ENV, None)


def carried_latches() -> dict[str, str]:
    """The STOP reasons latched in the process this one replaced ({} if none)."""
    try:
        carried = json.loads(os.environ.pop(RESTARTED_LATCHES_ENV, "{}"))
    except ValueError:
        return {"restart": "the latches of the suspended process were unreadable"}  # fail closed
    return {str(k): str(v) for k, v in carried.items()} if isinstance(carried, dict) else {}
