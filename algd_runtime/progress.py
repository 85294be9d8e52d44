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
        self._t0 = self._last = clock()
        self._n0 = initial
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
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        extra = f", {self._postfix}" if self._postfix else ""
        self.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s{pct}, {rate:.1f} {self.unit}s/s{extra}")


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "step", stream: TextIO | None = None):
    """tqdm when `stream` (default stderr) is a terminal, else PlainProgress."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return PlainProgress(total, initial, desc, unit, stream=stream)
