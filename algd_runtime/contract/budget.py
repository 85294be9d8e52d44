"""The budget both channels guard, and the rule they apply: the limit, the largest cost one
step can have, and how many steps the robot may take before a stop reaches it. The bundle's
manifest gives the limit and bound; resolve_budget makes the one Budget that the controller,
the monitor and fine-tuning use.

    budget_verdict  stop when the budget is spent or one more step at the step-cost margin
                    could overspend it
    lease_cap       the longest lease at a rate: what fits in the silent-monitor deadline
    lease_steps     how many steps the robot may take on one action
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

from algd_runtime.contract.keys import canonical

LEASE_MAX = 1000  # an upper bound on any lease, even with nothing spent yet


def budget_verdict(accumulated: float, margin: float, limit: float) -> str | None:
    """Why the robot must not take another step, or None. `margin` bounds one step's cost."""
    if accumulated >= limit:
        return f"budget spent ({accumulated:g} >= {limit:g})"
    if accumulated + margin > limit:
        return f"budget nearly spent ({accumulated:g} + step-cost margin {margin:g} > {limit:g})"
    return None


def lease_cap(rate_hz: float, silent_deadline_s: float) -> int:
    """The longest lease at this rate: no more steps than fit in the controller's deadline for a
    silent monitor (monitor_timeout_s). A controller that is itself blocked (a suspended peer's
    shared-memory lock) then leaves the robot no motion past the moment it would have stopped it."""
    if not (rate_hz > 0 and silent_deadline_s > 0):
        raise ValueError(f"rate and deadline: expected > 0, got {rate_hz!r} Hz, {silent_deadline_s!r} s")
    return max(1, min(LEASE_MAX, math.floor(rate_hz * silent_deadline_s + 1e-9)))


def lease_steps(accumulated: float, margin: float, limit: float, cap: int = LEASE_MAX) -> int:
    """Steps that can be taken, each costing at most `margin`, without overspending."""
    if budget_verdict(accumulated, margin, limit):
        return 0
    if margin <= 0:
        return cap
    return int(min(cap, math.floor((limit - accumulated) / margin + 1e-9)))


@dataclass(frozen=True)
class Budget:
    """The one budget both channels guard (the controller's account and the monitor), made
    by one function (resolve_budget) from the bundle's manifest and the parameters.

    step_bound: the largest cost one step can have (a configured or task bound), or None:
    then the margin is the largest step cost the robot reported, and a step whose cost is
    unknown spends the whole budget. steps_ahead: steps the robot may take before a stop
    reaches it (1: it obeys a lease)."""

    limit: float
    step_bound: float | None = None
    steps_ahead: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not (isinstance(self.limit, (int, float)) and math.isfinite(self.limit)
                                                and self.limit > 0):
            raise ValueError(f"cost_limit: expected a finite value > 0, got {self.limit!r}")
        if self.step_bound is not None and not (math.isfinite(self.step_bound) and self.step_bound > 0):
            raise ValueError(f"max_step_cost: expected a finite value > 0 (or none), got {self.step_bound!r}")
        if isinstance(self.steps_ahead, bool) or not isinstance(self.steps_ahead, int) or self.steps_ahead < 1:
            raise ValueError(f"steps_ahead: expected an integer >= 1, got {self.steps_ahead!r}")

    def worst_case(self, steps: int = 1) -> float:
        """What `steps` steps of unknown cost are charged."""
        return steps * self.step_bound if self.step_bound else self.limit

    def margin(self, worst_reported: float, steps_ahead: int | None = None) -> float:
        """What the steps the robot may still take before a stop reaches it can cost (steps_ahead:
        the measured number in use, else the configured one). Only a bound or a cost the robot
        reported for one step raises it, never a worst-case charge."""
        return (steps_ahead or self.steps_ahead) * max(self.step_bound or 0.0, worst_reported)

    def never_moves(self, worst_reported: float, steps_ahead: int | None = None) -> str | None:
        """Why no episode can ever move under this budget (a hold that cannot end by itself), or None."""
        steps = steps_ahead or self.steps_ahead
        margin = self.margin(worst_reported, steps)
        if margin > self.limit:
            measured = " measured" if steps != self.steps_ahead else ""
            return (f"step-cost margin {margin:g} ({steps}{measured} steps ahead x step cost "
                    f"{max(self.step_bound or 0.0, worst_reported):g}) > budget {self.limit:g}: no episode can "
                    f"move; raise cost_limit, lower max_step_cost, or give the robot a command it expires "
                    f"(a lease) or a lower rate")
        return None

    @cached_property  # frozen: computed once, not at each of 100 heartbeats a second
    def digest(self) -> str:
        """What the heartbeat carries, so the controller knows the monitor guards the same budget."""
        body = canonical({"limit": float(self.limit), "step_bound": self.step_bound, "steps_ahead": self.steps_ahead})
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (f"limit {self.limit:g}, step-cost bound {self.step_bound if self.step_bound else 'largest reported'}, "
                f"steps_ahead {self.steps_ahead}")


def resolve_budget(manifest_budget: dict | None, cost_limit: float = -1.0, max_step_cost: float = -1.0,
                   steps_ahead: int = 1) -> Budget:
    """The budget a node guards: cost_limit and max_step_cost when set (> 0), else the
    bundle's (manifest `budget`); the one rule of the controller, the monitor and the guard."""
    budget = manifest_budget or {}
    limit = cost_limit if cost_limit > 0 else budget.get("cost_limit")
    if limit is None:
        raise ValueError("cost_limit: expected a value > 0, or a bundle whose manifest gives it")
    bound = max_step_cost if max_step_cost > 0 else budget.get("max_step_cost")
    return Budget(float(limit), float(bound) if bound else None, steps_ahead)
