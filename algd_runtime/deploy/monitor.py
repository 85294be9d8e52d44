"""Cost-budget accounting and escalation, in plain Python (the ROS monitor node wraps it).

Each control step the monitor gets the step's cost and, optionally, the cost critic's
prediction of the cost still to come. It keeps the accumulated cost (per episode, or over a
sliding window for continuing tasks) and the forecast = accumulated + predicted cost-to-go,
and escalates on forecast / limit:

    OK -> WARN   (ratio >= warn_at):  raise the controller's lambda / guidance, within bounds
       -> ERROR  (ratio >= error_at): shielded best-of-N or fallback actions
       -> STOP   a latched e-stop, on `stop_on`:
                 "budget"   (default) the budget is spent, or one more step at the largest
                            one-step cost seen so far would overspend it;
                 "forecast" ratio >= stop_at, or the budget is spent.
The forecast is a learned estimate: it is right for prevention (WARN, ERROR) but, as the
only reason for an e-stop, it stops a robot whose critic over-predicts; hence "budget".

Escalation is immediate and passes through every level in order (one update may record
several transitions). De-escalation needs the ratio below the level's threshold minus
`hysteresis` for `clear_steps` updates in a row, and goes one level at a time. STOP stays
latched until reset_stop() (the operator), or with stop_latch="episode" (per-episode budgets
on a robot that is reset between episodes) until the episode ends. Every transition carries
the numbers behind it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import IntEnum

from algd_runtime.contract.budget import Budget, budget_verdict
from algd_runtime.deploy.safety import StopDistance


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
    stop_on: str = "budget"  # "budget" | "forecast"
    stop_latch: str = "operator"  # "operator": until reset_stop() | "episode": until the episode ends
    hysteresis: float = 0.1
    clear_steps: int = 20
    max_step_cost: float | None = None  # a bound on one step's cost (None: the largest seen)
    steps_ahead: int = 1  # steps the robot may take before a stop reaches it (an io file's steps_ahead)

    def __post_init__(self) -> None:
        self.budget  # the budget's own checks (cost_limit, max_step_cost, steps_ahead)
        if self.accounting not in ("episode", "window"):
            raise ValueError(f"accounting: expected 'episode' or 'window', got {self.accounting!r}")
        if self.stop_on not in ("budget", "forecast"):
            raise ValueError(f"stop_on: expected 'budget' or 'forecast', got {self.stop_on!r}")
        if self.stop_latch not in ("operator", "episode"):
            raise ValueError(f"stop_latch: expected 'operator' or 'episode', got {self.stop_latch!r}")
        if self.stop_latch == "episode" and self.accounting != "episode":
            raise ValueError("stop_latch: 'episode' needs accounting 'episode' (a window has no episode end)")
        if self.accounting == "window" and self.window_steps < 1:
            raise ValueError(f"window_steps: expected >= 1, got {self.window_steps}")
        if not 0 < self.warn_at < self.error_at < self.stop_at:
            raise ValueError(f"thresholds: expected 0 < warn_at < error_at < stop_at, got "
                             f"{self.warn_at}, {self.error_at}, {self.stop_at}")
        if not 0 <= self.hysteresis < self.warn_at:
            raise ValueError(f"hysteresis: expected 0 <= hysteresis < warn_at, got {self.hysteresis}")
        if self.clear_steps < 1:
            raise ValueError(f"clear_steps: expected >= 1, got {self.clear_steps}")

    @property
    def budget(self) -> Budget:
        """The same budget rule as the controller's account (safety.Budget)."""
        return Budget(self.cost_limit, self.max_step_cost, self.steps_ahead)

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


# How the monitor's levels escalate the policy (the monitor node's parameters of these names).
# WARN: a multiplier of 4 x the policy's exchange rate at guidance 1 cut the cost of trained
# Hopper policies from 61 to 46 (episodes over the limit 12 % -> 0 %, return -9 %) and sits
# between the toy task's working 10 and 50; the policy's own lambda x 2 (its floor, 1e-8,
# once its costs were within the limit) changed nothing on either (BENCHMARKS.md).
ESCALATION = {"warn_lambda_factor": 2.0, "warn_rate_factor": 4.0, "lambda_max": 100.0, "warn_guidance": 1.0,
              "error_best_of_n": 16}


def level_response(level: Level, base_lambda: float, escalation: dict, remaining: float,
                   exchange_rate: float | None = None) -> dict:
    """The controller parameters a level asks for (control.RESPONSE; none at OK and STOP):
    WARN raises lambda (the larger of its own x warn_lambda_factor and the bundle's exchange
    rate x warn_rate_factor) and guides the reverse diffusion, ERROR picks the best of N
    candidates whose cost risk fits the `remaining` budget."""
    if level == Level.WARN:
        lam = max(base_lambda, 1e-3) * escalation["warn_lambda_factor"]
        if exchange_rate is not None:
            lam = max(lam, exchange_rate * escalation["warn_rate_factor"])
        return {"lagrange_multiplier": float(min(escalation["lambda_max"], lam)),
                "guidance_scale": float(escalation["warn_guidance"])}
    if level == Level.ERROR:
        return {"mode": "best_of_n", "best_of_n": int(escalation["error_best_of_n"]),
                "remaining_budget": float(max(0.0, remaining))}
    return {}


@dataclass
class BudgetMonitor:
    cfg: MonitorConfig
    level: Level = Level.OK
    step: int = 0
    episode: int = 0
    accumulated: float = 0.0
    predicted: float = 0.0
    transitions: list[Transition] = field(default_factory=list)
    worst_step: float = 0.0  # the largest cost the robot reported for one step (the "budget" stop's margin)
    missed_steps: int = 0  # steps the robot took that never reached the monitor
    distance: StopDistance | None = None  # a robot without a lease: the margin's steps, measured
    _episode_start: int = 0  # `step` when the episode began
    _window: deque = field(default_factory=deque)
    _calm: int = 0
    _operator_only: bool = False  # a STOP that no episode end clears (latch_stop)
    forgotten: str | None = None  # what the last operator reset forgot of the measured stop distance

    @property
    def forecast(self) -> float:
        return self.accumulated + self.predicted

    @property
    def ratio(self) -> float:
        return self.forecast / self.cfg.cost_limit

    @property
    def margin_steps(self) -> int:
        """Steps the robot may take before the e-stop reaches it (measured, for a robot without a lease)."""
        return self.distance.in_use if self.distance else self.cfg.steps_ahead

    @property
    def margin(self) -> float:
        """What the steps the robot may still take before the e-stop reaches it can cost."""
        return self.cfg.budget.margin(self.worst_step, self.margin_steps)

    def _worst_case(self, steps: int) -> float:
        return self.cfg.budget.worst_case(steps)

    def missed(self, steps: int) -> list[Transition]:
        """Steps the robot took whose costs never arrived: each counts as the worst case."""
        if steps <= 0:
            return []
        self.missed_steps += steps
        return self.update(self._worst_case(steps), count=steps)

    def update(self, cost: float, predicted_cost_to_go: float = 0.0, count: int = 1, reported: bool = True,
               extra: float = 0.0, steps: int = 1) -> list[Transition]:
        """Account one step (or `count` steps costing `cost` together); returns the
        transitions it caused (usually none). reported=False: not one step's own cost report
        (it never raises the margin); extra: costs of steps whose states were lost; steps: the
        robot's steps this charge covers (CostMatcher's Charge.steps: the stop distance counts them)."""
        if self.distance is not None:  # a cost the robot reported, not a worst-case charge (StopDistance)
            self.distance.on_step(self.step + count - self._episode_start, cost + extra, steps)
        if not math.isfinite(cost) or cost < 0:
            cost = self._worst_case(count)  # an unreadable cost is treated as the worst case
        elif count == 1 and reported:
            self.worst_step = max(self.worst_step, cost)
        cost += extra if math.isfinite(extra) and extra >= 0 else self._worst_case(1)
        self.step += count
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

    def refund(self, cost: float, t: int | None = None) -> list[Transition]:
        """Step t of this episode, charged the worst case (its cost was late), costs `cost`
        after all (a step the stop distance counts, as the controller's account does)."""
        if math.isfinite(cost) and cost >= 0:
            self.accumulated += cost - self._worst_case(1)
            self.worst_step = max(self.worst_step, cost)
            if self.distance is not None and t is not None:
                self.distance.on_step(t, cost)
        return self._escalate_or_calm()

    def _escalate_or_calm(self) -> list[Transition]:
        never = self.cfg.budget.never_moves(self.worst_step, self.margin_steps)
        if never:  # no episode can move: a STOP that no episode end clears (the controller latches too)
            return self.latch_stop(never)
        ratio, out, limit = self.ratio, [], self.cfg.cost_limit
        # stop_on "forecast" stops only on a spent budget (margin 0), "budget" one step early.
        spent = budget_verdict(self.accumulated, self.margin if self.cfg.stop_on == "budget" else 0.0, limit)
        while self.level < Level.STOP:
            nxt = Level(self.level + 1)
            by_forecast = ratio >= self.cfg.threshold(nxt) and (nxt < Level.STOP or self.cfg.stop_on == "forecast")
            if by_forecast:
                out.append(self._move(nxt, f"forecast/limit {ratio:.3f} >= {self.cfg.threshold(nxt):g}"))
            elif spent:  # the budget is gone (or about to be) whatever the thresholds say
                out.append(self._move(nxt, spent))
                if nxt == Level.STOP and self.distance is not None:
                    self.distance.stop_decided(self.step - self._episode_start)
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
        """Episode accounting starts again; levels below STOP return to OK (STOP too, with
        stop_latch="episode")."""
        out = []
        episode_clears = self.cfg.stop_latch == "episode" and not self._operator_only
        if Level.OK < self.level < Level.STOP or (self.level == Level.STOP and episode_clears):
            out.append(self._move(Level.OK, "episode ended"))  # recorded with the episode that ended
        if self.distance is not None:
            self.distance.episode_ended()
        self._episode_start = self.step
        self.episode += 1
        if self.cfg.accounting == "episode":
            self.accumulated, self.predicted = 0.0, 0.0
        self._calm = 0
        return out

    def latch_stop(self, reason: str) -> list[Transition]:
        """STOP now, for a reason outside the budget (e.g. a STOP kept across a restart);
        only reset_stop() clears it, whatever stop_latch says."""
        self._operator_only = True
        return [] if self.level == Level.STOP else [self._move(Level.STOP, reason)]

    def reset_stop(self) -> list[Transition]:
        """Clear a latched STOP (the reset service). Returns to OK with fresh accounting."""
        if self.level != Level.STOP:
            return []
        self._operator_only = False
        self.accumulated, self.predicted = 0.0, 0.0
        self.forgotten = None
        if self.distance is not None:
            self.distance.abandon()  # motion after the reset is not the stop being measured
            if self.cfg.budget.never_moves(self.worst_step, self.margin_steps):
                self.forgotten = self.distance.forget()  # a hold that never ends by itself: the reset clears it
        self._window.clear()
        self._calm = 0
        return [self._move(Level.OK, "reset by operator")]
