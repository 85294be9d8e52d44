"""The controller's decisions in plain Python (the ROS controller node wraps it).

The node answers each observation as it arrives and a control-rate timer guarantees a
decision every period (needs_tick). On each decision: take the newest observation; if there is none, it is older than obs_timeout,
it holds NaN / Inf, the e-stop is latched, or the engine fails, publish the fallback action
and count why; otherwise publish the policy's action. Every action carries the stamp of the
observation it answers. Latency is measured from the observation's receipt to the action's
hand-over; a tick whose work takes longer than the period is an overrun.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algd_runtime.runtime import MODES

FALLBACK_KINDS = ("zero", "hold-last")


@dataclass
class ControllerParams:
    control_rate_hz: float = 500.0
    obs_timeout_s: float = 0.05
    fallback: str = "zero"  # "zero" | "hold-last" | comma-separated action vector
    mode: str = "deterministic"  # deterministic | stochastic | best_of_n
    best_of_n: int = 16
    lagrange_multiplier: float = -1.0  # < 0: the bundle's own
    guidance_scale: float = 0.0
    remaining_budget: float = math.inf  # best_of_n shield: only candidates with Qc risk below this


def parse_fallback(value: str, act_low: np.ndarray, act_high: np.ndarray) -> str | np.ndarray:
    if value in FALLBACK_KINDS:
        return value
    try:
        vec = np.array([float(x) for x in value.split(",")], np.float32)
    except ValueError:
        raise ValueError(f"fallback: expected 'zero', 'hold-last' or {len(act_low)} comma-separated numbers, "
                         f"got {value!r}") from None
    if vec.shape != act_low.shape:
        raise ValueError(f"fallback: expected {len(act_low)} numbers, got {len(vec)}")
    if not (np.all(vec >= act_low) and np.all(vec <= act_high)):
        raise ValueError(f"fallback: {vec.tolist()} is outside the action bounds {act_low.tolist()}..{act_high.tolist()}")
    return vec


def check_param(name: str, value: Any, act_low: np.ndarray, act_high: np.ndarray) -> str | None:
    """None if `value` is acceptable for parameter `name`, else the reason it is not."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if name == "control_rate_hz":
        return None if number(value) and 0 < value <= 10_000 else f"control_rate_hz: expected 0 < value <= 10000, got {value!r}"
    if name == "obs_timeout_s":
        return None if number(value) and 0 < value <= 10 else f"obs_timeout_s: expected 0 < value <= 10, got {value!r}"
    if name == "mode":
        return None if value in MODES else f"mode: expected one of {list(MODES)}, got {value!r}"
    if name == "best_of_n":
        return None if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024 \
            else f"best_of_n: expected an integer in 1..1024, got {value!r}"
    if name == "lagrange_multiplier":
        return None if number(value) and value < 1e6 else f"lagrange_multiplier: expected a finite number (< 0: the bundle's), got {value!r}"
    if name == "guidance_scale":
        return None if number(value) and 0 <= value <= 100 else f"guidance_scale: expected 0 <= value <= 100, got {value!r}"
    if name == "remaining_budget":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) \
            else f"remaining_budget: expected a number (inf: no shield), got {value!r}"
    if name == "fallback":
        if not isinstance(value, str):
            return f"fallback: expected a string, got {value!r}"
        try:
            parse_fallback(value, act_low, act_high)
        except ValueError as exc:
            return str(exc)
        return None
    return f"{name}: unknown parameter"


@dataclass
class Decision:
    action: np.ndarray
    stamp: Any  # the stamp of the observation answered (None if there was none)
    source: str  # "policy" | "fallback"
    reason: str = ""  # why the fallback: no_observation | stale | nan | estop | engine_error
    latency_s: float = math.nan  # observation receipt -> hand-over


@dataclass
class ControllerCore:
    runtime: Any  # a PolicyRuntime (or anything with act(), act_low, act_high)
    params: ControllerParams = field(default_factory=ControllerParams)
    estop: bool = False

    def __post_init__(self) -> None:
        low, high = np.asarray(self.runtime.act_low), np.asarray(self.runtime.act_high)
        for name, value in vars(self.params).items():
            reason = check_param(name, value, low, high)
            if reason:
                raise ValueError(reason)
        self._low, self._high = low, high
        self._obs = self._stamp = self._received = None
        self._answered = False
        self._last_action = np.zeros_like(low, dtype=np.float32)
        self.fallbacks: Counter = Counter()
        self.ticks = self.overruns = 0
        self.latencies: deque = deque(maxlen=10_000)

    # -- inputs ---------------------------------------------------------------------------
    def check(self, name: str, value: Any) -> str | None:
        return check_param(name, value, self._low, self._high)

    def set_param(self, name: str, value: Any) -> str | None:
        """Apply a live update; returns the reason if rejected (nothing changes then)."""
        reason = self.check(name, value)
        if reason is None:
            setattr(self.params, name, value)
        return reason

    def on_observation(self, obs, stamp: Any, received_at: float) -> None:
        """Keep only the newest observation."""
        self._obs, self._stamp, self._received = np.asarray(obs, np.float32), stamp, received_at
        self._answered = False

    def needs_tick(self, now: float) -> bool:
        """Whether the control-rate timer must act: anything but a fresh observation that has
        already been answered (the node answers each observation as it arrives)."""
        fresh = self._obs is not None and now - self._received <= self.params.obs_timeout_s
        return self.estop or not fresh or not self._answered

    # -- the tick ---------------------------------------------------------------------------
    def _fallback(self) -> np.ndarray:
        fb = parse_fallback(self.params.fallback, self._low, self._high)
        if isinstance(fb, np.ndarray):
            return fb
        return self._last_action.copy() if fb == "hold-last" else np.zeros_like(self._low, np.float32)

    def tick(self, now: float) -> Decision:
        self.ticks += 1
        p = self.params
        if self.estop:
            return self._fall("estop")
        if self._obs is None:
            return self._fall("no_observation")
        if now - self._received > p.obs_timeout_s:
            return self._fall("stale")
        lam = None if p.lagrange_multiplier < 0 else p.lagrange_multiplier
        budget = None if math.isinf(p.remaining_budget) else p.remaining_budget
        try:
            res = self.runtime.act(self._obs, mode=p.mode, n=p.best_of_n, lagrange_multiplier=lam,
                                   guidance_scale=p.guidance_scale, remaining_budget=budget)
        except ValueError:  # a malformed observation (wrong size): the engine refused it
            return self._fall("engine_error")
        if not bool(np.all(res.valid)):
            return self._fall("nan")
        self._last_action = np.asarray(res.action, np.float32)
        self._answered = True
        return Decision(self._last_action, self._stamp, "policy")

    def _fall(self, reason: str) -> Decision:
        self.fallbacks[reason] += 1
        return Decision(self._fallback(), self._stamp, "fallback", reason)

    def handed_over(self, decision: Decision, published_at: float, work_s: float) -> None:
        """Record latency (receipt -> publish) of policy answers, and whether the tick overran
        its period. A fallback's "latency" (e.g. to an observation the e-stop left
        unanswered for seconds) would say nothing about the controller's speed."""
        if decision.source == "policy" and decision.stamp is not None and self._received is not None:
            decision.latency_s = published_at - self._received
            self.latencies.append(decision.latency_s)
        if work_s > 1.0 / self.params.control_rate_hz:
            self.overruns += 1

    def stats(self) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1e3 if self.latencies else np.array([math.nan])
        return {"ticks": self.ticks, "fallbacks": sum(self.fallbacks.values()), "overruns": self.overruns,
                "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
                **{f"fallback_{k}": v for k, v in self.fallbacks.items()}}
