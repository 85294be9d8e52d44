"""TaskSpec: what a trainer, a checkpoint and a bundle need to know about a task."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

COST_SEMANTICS = ("episode", "discounted")


@dataclass(frozen=True)
class TaskSpec:
    """Sizes, bounds and the safety budget of a task.

    cost_semantics:
      "episode"    -- cost_limit bounds the undiscounted cost summed over one episode
                      (Safety-Gym navigation: 10 per 400-step episode);
      "discounted" -- cost_limit bounds the discounted cost sum sum_t gamma_c^t c_t
                      (the velocity tasks: Hopper 82.748, ...).
    """

    name: str
    obs_dim: int
    act_dim: int
    act_low: tuple[float, ...]
    act_high: tuple[float, ...]
    episode_length: int
    cost_limit: float
    cost_semantics: str = "episode"
    cost_gamma: float = 0.99
    # Safety-Gym style tasks force the cost-critic mask to 1 (costs never "end").
    cost_mask_always_one: bool = False
    shift: dict[str, float] = field(default_factory=dict)
    # The largest cost one step can have, where the task knows it (None: unknown); a monitor
    # can tell a real reading from a corrupted one with it.
    max_step_cost: float | None = None
    # Whose budget the task keeps: "algd" (the ALGD authors') or "safety_gymnasium" (the
    # benchmark's own: native costs, 1000-step episodes, 25 per episode). sim/safety_gym.py
    budget: str = "algd"

    def __post_init__(self) -> None:
        if self.cost_semantics not in COST_SEMANTICS:
            raise ValueError(
                f"cost_semantics: expected one of {COST_SEMANTICS}, got {self.cost_semantics!r}"
            )
        if len(self.act_low) != self.act_dim or len(self.act_high) != self.act_dim:
            raise ValueError(
                f"act_low/act_high: expected {self.act_dim} values each, "
                f"got {len(self.act_low)} and {len(self.act_high)}"
            )
        m = self.max_step_cost
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0):
            raise ValueError(f"max_step_cost: expected None or a finite value > 0, got {m!r}")

    @property
    def target_cost(self) -> float:
        """The per-step threshold h that the cost critic is held to.

        An episode budget is turned into the discounted value of spreading it evenly over
        the episode, h = limit * (1 - g^T) / (1 - g) / T (ALGD.md); a discounted budget is
        used as it is.
        """
        if self.cost_semantics == "discounted" or self.cost_gamma >= 1.0:
            return float(self.cost_limit)
        g, t = self.cost_gamma, self.episode_length
        return float(self.cost_limit * (1.0 - g**t) / (1.0 - g) / t)

    def episode_cost(self, costs) -> float:
        """The episode's cost in the units of cost_limit (plain or discounted sum)."""
        if self.cost_semantics == "episode":
            return float(sum(costs))
        return float(sum(self.cost_gamma**i * c for i, c in enumerate(costs)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["act_low"] = list(self.act_low)
        d["act_high"] = list(self.act_high)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        d = dict(d)
        d["act_low"] = tuple(float(x) for x in d["act_low"])
        d["act_high"] = tuple(float(x) for x in d["act_high"])
        d["shift"] = dict(d.get("shift") or {})
        return cls(**d)
