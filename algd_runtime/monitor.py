"""Cost-budget accounting and escalation, in plain Python (the ROS monitor node wraps it).

Each control step the monitor gets the step's cost and, optionally, the cost critic's
prediction of the cost still to come. It keeps the accumulated cost (per episode, or over a
sliding window for continuing tasks) and the forecast = accumulated + predicted cost-to-go,
and escalates on forecast / limit:

    OK -> WARN   (ratio >= warn_at):  raise the controller's lambda / guidance, within bounds
       -> ERROR  (ratio >= error_at): shielded best-of-N or fallback actions
       -> STOP   (ratio >= stop_at, or the budget is spent): a latched e-stop

Escalation is immediate and passes through every level in order (one update may record
several transitions). De-escalation needs the ratio below the level's threshold minus
`hysteresis` for `clear_steps` updates in a row, and goes one level at a time. STOP stays
latched until reset_stop(). Every transition carries the numbers behind it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import IntEnum


class Level(IntEnum):
    OK = 0
    WARN = 1
    ERROR = 2
    STOP = 3


@dataclass
class MonitorConfig:
    cost_limit: float
    accounting: str = "episode"  # "episode" | "window"
    window_steps: int = 1000  # for "window": the sliding window's length
    warn_at: float = 0.5
    error_at: float = 0.8
    stop_at: float = 1.0
    hysteresis: float = 0.1
    clear_steps: int = 20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cost_limit) and self.cost_limit > 0):
            raise ValueError(f"cost_limit: expected a finite value > 0, got {self.cost_limit}")
        if self.accounting not in ("episode", "window"):
            raise ValueError(f"accounting: expected 'episode' or 'window', got {self.accounting!r}")
        if self.accounting == "window" and self.window_steps < 1:
            raise ValueError(f"window_steps: expected >= 1, got {self.window_steps}")
        if not 0 < self.warn_at < self.error_at < self.stop_at:
            raise ValueError(f"thresholds: expected 0 < warn_at < error_at < stop_at, got "
                             f"{self.warn_at}, {self.error_at}, {self.stop_at}")
        if not 0 <= self.hysteresis < self.warn_at:
            raise ValueError(f"hysteresis: expected 0 <= hysteresis < warn_at, got {self.hysteresis}")
        if self.clear_steps < 1:
            raise ValueError(f"clear_steps: expected >= 1, got {self.clear_steps}")

    def threshold(self, level: Level) -> float:
        return {Level.WARN: self.warn_at, Level.ERROR: self.error_at, Level.STOP: self.stop_at}[level]


@dataclass
class Transition:
    step: int
    episode: int
    old: str
    new: str
    accumulated: float
    predicted: float
    forecast: float
    limit: float
    ratio: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BudgetMonitor:
    cfg: MonitorConfig
    level: Level = Level.OK
    step: int = 0
    episode: int = 0
    accumulated: float = 0.0
    predicted: float = 0.0
    transitions: list[Transition] = field(default_factory=list)
    _window: deque = field(default_factory=deque)
    _calm: int = 0

    @property
    def forecast(self) -> float:
        return self.accumulated + self.predicted

    @property
    def ratio(self) -> float:
        return self.forecast / self.cfg.cost_limit

    def update(self, cost: float, predicted_cost_to_go: float = 0.0) -> list[Transition]:
        """Account one step; returns the transitions it caused (usually none)."""
        if not math.isfinite(cost):
            cost = self.cfg.cost_limit  # an unreadable cost is treated as the worst case
        self.step += 1
        if self.cfg.accounting == "window":
            self._window.append(cost)
            if len(self._window) > self.cfg.window_steps:
                self._window.popleft()
            self.accumulated = float(sum(self._window))
        else:
            self.accumulated += cost
        # A NaN prediction must not hide a risk: it counts as no information (0), not as safe.
        self.predicted = max(0.0, predicted_cost_to_go) if math.isfinite(predicted_cost_to_go) else 0.0
        return self._escalate_or_calm()

    def _escalate_or_calm(self) -> list[Transition]:
        ratio, out = self.ratio, []
        spent = self.accumulated >= self.cfg.cost_limit
        while self.level < Level.STOP:
            nxt = Level(self.level + 1)
            if ratio >= self.cfg.threshold(nxt):
                out.append(self._move(nxt, f"forecast/limit {ratio:.3f} >= {self.cfg.threshold(nxt):g}"))
            elif spent:  # the budget is gone whatever the thresholds say
                out.append(self._move(nxt, f"budget spent ({self.accumulated:g} >= {self.cfg.cost_limit:g})"))
            else:
                break
        if out or self.level in (Level.OK, Level.STOP):
            self._calm = 0
            return out
        # De-escalate one level after clear_steps calm updates in a row.
        if ratio < self.cfg.threshold(self.level) - self.cfg.hysteresis:
            self._calm += 1
            if self._calm >= self.cfg.clear_steps:
                self._calm = 0
                return [self._move(Level(self.level - 1), f"forecast/limit {ratio:.3f} < "
                                   f"{self.cfg.threshold(self.level) - self.cfg.hysteresis:g} for "
                                   f"{self.cfg.clear_steps} steps")]
        else:
            self._calm = 0
        return out

    def _move(self, new: Level, reason: str) -> Transition:
        t = Transition(self.step, self.episode, self.level.name, new.name, self.accumulated, self.predicted,
                       self.forecast, self.cfg.cost_limit, self.ratio, reason)
        self.level = new
        self.transitions.append(t)
        return t

    def end_episode(self) -> list[Transition]:
        """Episode accounting starts again; levels below STOP return to OK (STOP stays latched)."""
        self.episode += 1
        if self.cfg.accounting == "episode":
            self.accumulated, self.predicted = 0.0, 0.0
        out = []
        if Level.OK < self.level < Level.STOP:
            out.append(self._move(Level.OK, "episode ended"))
        self._calm = 0
        return out

    def reset_stop(self) -> list[Transition]:
        """Clear a latched STOP (the reset service). Returns to OK with fresh accounting."""
        if self.level != Level.STOP:
            return []
        self.accumulated, self.predicted = 0.0, 0.0
        self._window.clear()
        self._calm = 0
        return [self._move(Level.OK, "reset by operator")]
