"""Progress of a long loop: a tqdm bar on a terminal, plain periodic lines otherwise.

A bar redrawn many times a second is what a person at a terminal wants; in a log file (CI, a
sweep, `nohup`, journald) the same bar is thousands of carriage-return fragments. So a
non-terminal stream gets one readable line every `every_s` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class PlainProgress:
    """tqdm's update / set_postfix / write / close, as a line every `every_s` seconds."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step", every_s: float = 30.0,
                 stream: TextIO | None = None, clock=time.monotonic):
        self.total, self.n, self.desc, self.unit, self.every_s = total, initial, desc, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._t0 = self._last = self._t_line = clock()
        self._n0 = self._n_line = initial
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        self._line(self.clock())

    def _line(self, now: float) -> None:
        # The rate since the last line, and the time left at it: a mean since the start would
        # count a fast warm-up (random actions, no updates) and promise too early an end.
        recent = (self.n - self._n_line) / max(now - self._t_line, 1e-9)
        mean = (self.n - self._n0) / max(now - self._t0, 1e-9)
        self._n_line, self._t_line = self.n, now
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        left = self.total - self.n if self.total else 0
        eta = f", ETA {_duration(left / recent)}" if left > 0 and recent > 0 else ""
        extra = f", {self._postfix}" if self._postfix else ""
        self.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s{pct}, {recent:.1f} {self.unit}s/s "
                   f"(mean {mean:.1f}){eta}{extra}")


def _duration(seconds: float) -> str:
    """3h05m, 12m30s, 45s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "step", stream: TextIO | None = None):
    """tqdm when `stream` (default stderr) is a terminal, else PlainProgress."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return PlainProgress(total, initial, desc, unit, stream=stream)
