"""The safety core: one implementation of every rule that keeps an episode within its budget.

Used by the controller node (in the action's path), the monitor node (the independent
second channel) and the fine-tuning guard; the nodes only move messages. SAFETY.md is the
contract these pieces implement.

    budget_verdict  the budget rule: stop when the budget is spent or one more step at the
                    step-cost margin could overspend it
    BudgetAccount   an episode's cost from sequence-numbered transitions (a gap counts as
                    the worst case) and the lease: how many steps the robot may take on one
                    action before it must have a newer one
    StepTally       the same transitions for a robot that speaks standard messages: one step
                    per answered observation, charged the cost messages since the last one
    Latch           a STOP that only the operator clears (kinds and reasons kept)
    HeartbeatWatch  the controller's view of the monitor: no verified, fresh, in-order
                    heartbeat from the same monitor process -> no motion
    ResetAuthority  operator-only reset: HMAC over a fresh single-use nonce
    SafetyGate      the controller's verdict each decision: stop (and why) or go with a lease
    LatchStore      a latch that survives a restart (atomic JSON file)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEASE_MAX = 1000  # an upper bound on any lease, even with nothing spent yet
KEY_BYTES = 32


# -- the budget rule -----------------------------------------------------------------------------
def budget_verdict(accumulated: float, margin: float, limit: float) -> str | None:
    """Why the robot must not take another step, or None. `margin` bounds one step's cost."""
    if accumulated >= limit:
        return f"budget spent ({accumulated:g} >= {limit:g})"
    if accumulated + margin > limit:
        return f"budget nearly spent ({accumulated:g} + step-cost margin {margin:g} > {limit:g})"
    return None


def lease_steps(accumulated: float, margin: float, limit: float, cap: int = LEASE_MAX) -> int:
    """Steps that can be taken, each costing at most `margin`, without overspending."""
    if budget_verdict(accumulated, margin, limit):
        return 0
    if margin <= 0:
        return cap
    return int(min(cap, math.floor((limit - accumulated) / margin + 1e-9)))


@dataclass
class BudgetAccount:
    """One episode's cost, as the robot reports it step by step.

    step_bound: the largest cost one step can have (a configured or task bound), or None:
    then the margin is the largest step cost seen so far, and a missed step (whose cost is
    unknown) spends the whole budget.
    """

    limit: float
    step_bound: float | None = None
    steps_ahead: int = 1  # steps the robot may take before a stop reaches it (1: it obeys a lease)
    episode: int = -1
    t: int = 0  # steps accounted in the episode
    accumulated: float = 0.0
    worst_seen: float = 0.0
    missed: int = 0  # steps never reported (counted as the worst case), over all episodes

    def __post_init__(self) -> None:
        if not (isinstance(self.limit, (int, float)) and math.isfinite(self.limit) and self.limit > 0):
            raise ValueError(f"cost_limit: expected a finite value > 0, got {self.limit!r}")
        if self.step_bound is not None and not (math.isfinite(self.step_bound) and self.step_bound > 0):
            raise ValueError(f"max_step_cost: expected a finite value > 0 (or none), got {self.step_bound!r}")
        if isinstance(self.steps_ahead, bool) or not isinstance(self.steps_ahead, int) or self.steps_ahead < 1:
            raise ValueError(f"steps_ahead: expected an integer >= 1, got {self.steps_ahead!r}")

    @property
    def margin(self) -> float:
        """What the steps the robot may still take before a stop reaches it can cost."""
        return self.steps_ahead * max(self.step_bound or 0.0, self.worst_seen)

    def _worst_case(self, steps: int) -> float:
        return steps * self.step_bound if self.step_bound else self.limit

    def record(self, episode: int, t: int, cost: float) -> None:
        """The robot's report that step t of `episode` cost `cost` (t = 0: the episode began).
        A repeat is ignored; a gap, a late join or an unreadable cost counts as the worst case."""
        if episode != self.episode:
            self.episode, self.t, self.accumulated = episode, 0, 0.0
        if t <= self.t and not (t == 0 and self.t == 0):
            return  # already accounted (a repeated or reordered observation)
        gap = t - self.t - 1 if t > 0 else 0
        if gap > 0:
            self.missed += gap
            self.accumulated += self._worst_case(gap)
        if t > 0:
            if math.isfinite(cost) and cost >= 0:
                self.worst_seen = max(self.worst_seen, cost)
                self.accumulated += cost
            else:
                self.accumulated += self._worst_case(1)
        self.t = max(self.t, t)

    def verdict(self) -> str | None:
        return budget_verdict(self.accumulated, self.margin, self.limit)

    def lease(self, cap: int = LEASE_MAX) -> int:
        return lease_steps(self.accumulated, self.margin, self.limit, cap)


@dataclass
class StepTally:
    """The budget contract for a robot without [episode, t, cost] on its observations (an
    io file, SAFETY.md): each message on the trigger topic is one step, charged the sum of
    the cost messages received since the previous one. A step with no cost message is
    charged NaN, which BudgetAccount counts as the worst case: a robot that stops reporting
    costs spends its budget, not nothing. Without an episode topic the run is one episode.
    Costs belong to the episode in progress when they arrive."""

    episode: int = 0
    t: int = -1  # -1: no observation yet in this episode
    pending: list = field(default_factory=list)
    received: int = 0  # cost messages over the run (the monitor counts the same messages)
    uncosted: int = 0  # steps with no cost message, charged the worst case

    def on_cost(self, cost: float) -> None:
        self.pending.append(float(cost))
        self.received += 1

    def on_observation(self) -> tuple[int, int, float]:
        """(episode, t, cost) for BudgetAccount.record: the episode's first observation is
        t = 0 (no step yet) unless costs already arrived for it."""
        if self.t < 0 and not self.pending:
            self.t = 0
            return self.episode, 0, 0.0
        self.t = max(self.t, 0) + 1
        cost = math.fsum(self.pending) if self.pending else math.nan
        self.uncosted += not self.pending
        self.pending.clear()
        return self.episode, self.t, cost

    def on_episode(self) -> tuple[int, int, float] | None:
        """A new episode starts; returns the old one's last record if costs were still pending."""
        last = None
        if self.pending:
            last = (self.episode, max(self.t, 0) + 1, math.fsum(self.pending))
            self.pending.clear()
        self.episode, self.t = self.episode + 1, -1
        return last


# -- the latch -------------------------------------------------------------------------------------
@dataclass
class Latch:
    """A latched STOP: kind -> why. Tripping is idempotent per kind (the first reason stays)."""

    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def latched(self) -> bool:
        return bool(self.reasons)

    def trip(self, kind: str, reason: str) -> bool:
        """True if this kind was not latched before."""
        if kind in self.reasons:
            return False
        self.reasons[kind] = reason
        return True

    def clear(self) -> dict[str, str]:
        cleared, self.reasons = self.reasons, {}
        return cleared

    def describe(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.reasons.items())


class LatchStore:
    """A latch on disk, so that a restarted node starts where the old one stopped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable: the safe reading is "stopped"
            return {"state_file": f"{self.path} unreadable ({exc}); treated as latched"}
        reasons = data.get("reasons") if isinstance(data, dict) else None
        if not isinstance(reasons, dict):
            return {"state_file": f"{self.path} malformed; treated as latched"}
        return {str(k): str(v) for k, v in reasons.items()}

    def save(self, reasons: dict[str, str]) -> None:
        from algd_runtime.atomic import atomic_write

        with atomic_write(self.path, "w") as f:
            json.dump({"reasons": reasons, "written": time.time()}, f)


# -- keys and MACs ------------------------------------------------------------------------------
class OperatorKeyError(ValueError):
    """The operator key file is missing or unsafe; the message says how to fix it."""


def default_key_path() -> Path:
    env = os.environ.get("ALGD_OPERATOR_KEY")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "algd-runtime" / "operator.key"


def create_key(path: str | Path) -> Path:
    """A new random key, readable by its owner only; an existing key is never overwritten."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def load_key(path: str | Path) -> bytes:
    path = Path(path).expanduser()
    hint = f"create one with `algd-reset --init-key {path}`"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise OperatorKeyError(f"operator_key_file: {path} does not exist; {hint}") from None
    if st.st_mode & 0o077:
        raise OperatorKeyError(f"operator_key_file: {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                        f"expected 600: chmod 600 {path}")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise OperatorKeyError(f"operator_key_file: {path}: expected {KEY_BYTES * 2} hex digits; {hint}") from None
    if len(key) < 16:
        raise OperatorKeyError(f"operator_key_file: {path}: expected at least 16 bytes of key, got {len(key)}; {hint}")
    return key


def mac(key: bytes, purpose: str, *parts: str) -> str:
    """HMAC-SHA256 over purpose and parts: one purpose's MAC is never valid for another."""
    msg = "\x1f".join((purpose, *parts)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


# -- heartbeats ---------------------------------------------------------------------------------
def canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def sign_heartbeat(key: bytes, namespace: str, payload: dict) -> str:
    body = canonical(payload)
    return json.dumps({"body": body, "mac": mac(key, "heartbeat", namespace, body)})


def read_heartbeat(key: bytes, namespace: str, text: str) -> dict:
    """The payload of a heartbeat whose MAC is right; ValueError otherwise."""
    try:
        outer = json.loads(text)
        body, got = outer["body"], outer["mac"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("heartbeat: not a signed heartbeat") from None
    if not hmac.compare_digest(str(got), mac(key, "heartbeat", namespace, str(body))):
        raise ValueError("heartbeat: MAC does not verify (wrong key, or forged)")
    payload = json.loads(body)
    for k in ("boot", "seq", "level", "latched"):
        if k not in payload:
            raise ValueError(f"heartbeat: missing {k!r}")
    return payload


@dataclass
class HeartbeatWatch:
    """The controller's view of its monitor. Stops while there is no verified heartbeat
    newer than `deadline_s`; trips its latch when a monitor it had is lost, restarted, or
    lags the robot by more than `max_lag_s`."""

    key: bytes
    namespace: str
    deadline_s: float
    max_lag_s: float
    boot: str | None = None
    seq: int = -1
    last_at: float | None = None
    payload: dict = field(default_factory=dict)
    rejected: int = 0
    last_rejection: str = ""

    def __post_init__(self) -> None:
        self._unaccounted: deque = deque()  # (robot stamp ns, receipt time) of steps the monitor has not shown

    def on_message(self, text: str, now: float, latch: Latch) -> None:
        try:
            p = read_heartbeat(self.key, self.namespace, text)
        except ValueError as exc:
            self.rejected += 1
            self.last_rejection = str(exc)
            return
        if self.boot is not None and p["boot"] != self.boot:
            latch.trip("monitor_restarted", f"the monitor restarted (process {self.boot[:8]} -> {str(p['boot'])[:8]}); "
                       f"its accounting was lost")
            self.boot, self.seq = p["boot"], -1
        if self.boot is None:
            self.boot = p["boot"]
        if int(p["seq"]) <= self.seq:
            self.rejected += 1
            self.last_rejection = f"heartbeat: sequence {p['seq']} not after {self.seq} (replayed)"
            return
        self.seq, self.last_at, self.payload = int(p["seq"]), now, p
        seen = p.get("seen_stamp_ns")
        while self._unaccounted and seen is not None and self._unaccounted[0][0] <= seen:
            self._unaccounted.popleft()

    def on_robot_step(self, stamp_ns: int, now: float) -> None:
        """The controller saw a step (an observation with t >= 1) taken at robot time stamp_ns."""
        if self.boot is not None:
            self._unaccounted.append((stamp_ns, now))
            while len(self._unaccounted) > 100_000:
                self._unaccounted.popleft()

    def check(self, now: float, latch: Latch) -> str | None:
        """Why the monitor does not allow motion now, or None."""
        if self.last_at is None:
            return "no heartbeat from the monitor yet"
        age = now - self.last_at
        if age > self.deadline_s:
            latch.trip("monitor_lost", f"no heartbeat from the monitor for {age * 1e3:.0f} ms "
                       f"(deadline {self.deadline_s * 1e3:.0f} ms)")
            return "monitor_lost: " + latch.reasons["monitor_lost"]
        if self._unaccounted and now - self._unaccounted[0][1] > self.max_lag_s:
            lag = now - self._unaccounted[0][1]
            latch.trip("monitor_lagging", f"the monitor has not accounted a step the controller saw "
                       f"{lag * 1e3:.0f} ms ago (max {self.max_lag_s * 1e3:.0f} ms)")
            return "monitor_lagging: " + latch.reasons["monitor_lagging"]
        if self.payload.get("level") == "STOP" or self.payload.get("latched"):
            return f"monitor at STOP: {self.payload.get('reason') or 'latched'}"
        if self.payload.get("sees_robot") is False:
            return "the monitor does not see the robot's steps yet (discovery)"
        return None


# -- operator reset -------------------------------------------------------------------------------
@dataclass
class ResetAuthority:
    """Challenge-response: challenge() hands out a fresh nonce; verify() accepts
    HMAC(key, "reset", node, nonce) once, within ttl_s. Unknown, used or late nonces fail."""

    key: bytes
    node: str  # the fully qualified node name: a proof for one node is not valid for another
    ttl_s: float = 30.0
    max_open: int = 16
    _open: dict = field(default_factory=dict)

    def challenge(self, now: float) -> str:
        self._expire(now)
        while len(self._open) >= self.max_open:
            self._open.pop(next(iter(self._open)))
        nonce = secrets.token_hex(16)
        self._open[nonce] = now + self.ttl_s
        return nonce

    def verify(self, nonce: str, proof: str, now: float) -> str | None:
        """None if the proof is good (the nonce is spent), else why it is refused."""
        self._expire(now)
        if nonce not in self._open:
            return "unknown, used or expired nonce (ask for a new challenge)"
        if not hmac.compare_digest(str(proof), mac(self.key, "reset", self.node, nonce)):
            return "proof does not verify (wrong operator key?)"
        del self._open[nonce]
        return None

    def _expire(self, now: float) -> None:
        for n in [n for n, until in self._open.items() if until < now]:
            del self._open[n]


def reset_proof(key: bytes, node: str, nonce: str) -> str:
    return mac(key, "reset", node, nonce)


# -- safe actions ---------------------------------------------------------------------------------
def parse_safe_action(value: str, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """'zero' or comma-separated numbers inside the bounds (a brake vector)."""
    if value == "zero":
        vec = np.zeros_like(low, np.float32)
        if not (np.all(vec >= low) and np.all(vec <= high)):
            raise ValueError(f"safe_action: zero is outside the action bounds {low.tolist()}..{high.tolist()}; "
                             f"give {len(low)} comma-separated numbers inside them")
        return vec
    try:
        vec = np.array([float(x) for x in str(value).split(",")], np.float32)
    except ValueError:
        raise ValueError(f"safe_action: expected 'zero' or {len(low)} comma-separated numbers, got {value!r}") from None
    if vec.shape != low.shape:
        raise ValueError(f"safe_action: expected {len(low)} numbers, got {len(vec)}")
    if not (np.all(np.isfinite(vec)) and np.all(vec >= low) and np.all(vec <= high)):
        raise ValueError(f"safe_action: {vec.tolist()} is outside the action bounds {low.tolist()}..{high.tolist()}")
    return vec


# -- the controller's verdict -------------------------------------------------------------------
@dataclass
class Verdict:
    stop: str | None  # why the robot must hold still, or None
    lease: int  # steps the robot may take on a moving action (0 when stopped)


# A controller holds still this long after it starts: DDS discovery is asynchronous, and a
# controller started beside a running one must not command before either can see the other.
# Measured on a loaded 2-core machine: discovery of a new participant took up to ~1.6 s.
GRAPH_SETTLE_S = 2.0


class SafetyGate:
    """Everything that can forbid motion, in one place. `stop_latch` is "operator" (a spent
    budget latches until reset) or "episode" (it ends the episode; the next one may move)."""

    def __init__(self, account: BudgetAccount, watch: HeartbeatWatch | None, stop_latch: str = "operator",
                 lease_cap: int = LEASE_MAX) -> None:
        if stop_latch not in ("operator", "episode"):
            raise ValueError(f"stop_latch: expected 'operator' or 'episode', got {stop_latch!r}")
        self.account, self.watch, self.stop_latch, self.lease_cap = account, watch, stop_latch, lease_cap
        self.latch = Latch()
        self.hold_until = -math.inf  # no motion before this time (a start-up hold), without latching

    def hold_for(self, now: float, seconds: float, why: str) -> None:
        self.hold_until, self.hold_reason = now + seconds, why

    def on_transition(self, episode: int, t: int, cost: float, stamp_ns: int | None, now: float) -> None:
        """A step the robot reports. stamp_ns (None: the caller tells the watch itself) is
        what the monitor's heartbeat must show as accounted within max_lag_s."""
        self.account.record(episode, t, cost)
        if t > 0 and self.watch is not None and stamp_ns is not None:
            self.watch.on_robot_step(stamp_ns, now)
        if self.stop_latch == "operator":
            spent = self.account.verdict()
            if spent:
                self.latch.trip("budget", f"episode {episode}: {spent}")

    def verdict(self, now: float) -> Verdict:
        reason = None
        if self.watch is not None:
            reason = self.watch.check(now, self.latch)
        if self.latch.latched:
            reason = self.latch.describe()
        if reason is None and now < self.hold_until:
            reason = self.hold_reason
        if reason is None:
            reason = self.account.verdict()
        if reason:
            return Verdict(reason, 0)
        return Verdict(None, self.account.lease(self.lease_cap))

    def reset(self) -> dict[str, str]:
        """The operator's reset (after ResetAuthority.verify) clears the latch. The episode's
        account is kept: a spent episode stays stopped until the robot starts a new one, and
        a still-missing monitor stops the robot again at once."""
        cleared = self.latch.clear()
        if self.watch is not None:
            self.watch._unaccounted.clear()
        return cleared

