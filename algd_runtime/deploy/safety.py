"""The safety core: one implementation of every rule that keeps an episode within its budget.

Used by the controller node (in the action's path), the monitor node (the independent
second channel) and the fine-tuning guard; the nodes only move messages. SAFETY.md is the
contract these pieces implement.

    (contract/budget.py: Budget, the rule budget_verdict and resolve_budget, which both
    channels share with fine-tuning; contract/keys.py: the key files and the MAC)
    BudgetAccount   an episode's cost from sequence-numbered transitions (a gap counts as
                    the worst case) and the lease: how many steps the robot may take on one
                    action before it must have a newer one
    StopDistance    for a robot without a lease: the steps it takes after a stop, measured
    CostMatcher     the same transitions for a robot that speaks standard messages: costs
                    matched to the steps they belong to by stamp or by time
    Latch           a STOP that only the operator clears (kinds and reasons kept)
    SecondCommander two live publishers on the command topic, seen in the commands' own
                    sequence numbers (no discovery between the publishers needed)
    HeartbeatWatch  the controller's view of the monitor: no verified, fresh, in-order
                    heartbeat from the same monitor process -> no motion
    ResetAuthority  operator-only reset: HMAC over a fresh single-use nonce
    SafetyGate      the controller's verdict each decision: stop (and why) or go with a lease
    LatchStore      a latch that survives a restart (atomic JSON file)
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from algd_runtime.contract.budget import LEASE_MAX, Budget, budget_verdict, lease_steps
from algd_runtime.contract.keys import canonical, mac


class StopDistance:
    """For a robot without a lease (standard commands): how many steps it takes between a
    stop decision and its stop, measured. The margin counts the larger of the configured
    steps_ahead and the worst measured + 1; it never shrinks within a run.

    A distance runs from the step at which the budget first said stop to the last step of
    the episode the robot reported a cost for (a robot held still at no cost has stopped,
    whenever its episode ends), plus the costs of that episode that raced its end and were
    charged to the next one (CostMatcher: without stamps the running episode pays).
    A backlog the node read after deciding counts too: the margin must cover every step
    beyond the last one accounted when the stop was decided.

    Distances are in the robot's steps, not the states the node read: a node that stalls
    loses states (their queue is short) and reads the costs of k steps with the next one
    (one charge of `steps` k). If that charge decided the stop, the stop was due at its
    first step: the stall is part of the distance. (A monitor that stalled 70 ms read 34 of
    the robot's steps as one, stopped at 6.8 of 5 and measured a 3-step stop.)"""

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self.worst = -1  # -1: nothing measured yet
        self.last = -1  # the last episode's distance
        self._stop_at: int | None = None
        self._last_costly: int | None = None
        self._behind = 0  # robot steps beyond the states read, this episode (charges of several steps)
        self._last_steps = 1  # robot steps of the last charge
        self.forgotten = -1  # the worst an operator's reset cleared: gone from the margin, not the record

    @property
    def in_use(self) -> int:
        return max(self.configured, self.worst + 1)

    @property
    def largest(self) -> int:
        """The largest margin this run measured, a forgotten one included (for the summary)."""
        return max(self.configured, max(self.worst, self.forgotten) + 1)

    def stop_decided(self, t: int) -> None:
        """A budget stop was decided at step t of the episode (the first one counts), right
        after the charge of step t."""
        if self._stop_at is None:
            self._stop_at = t + self._behind - (self._last_steps - 1)

    def on_step(self, t: int, cost: float, steps: int = 1) -> None:
        """Step t's charge (the node's count of states), covering `steps` robot steps."""
        steps = max(1, int(steps))
        self._behind += steps - 1
        self._last_steps = steps
        at = t + self._behind
        # Only a cost the robot reported: a step whose cost never came is charged the worst
        # case in the account, but as a distance it would measure the network, not the robot
        # (a held robot whose episode message was lost went on 5 483 "costly" steps, and the
        # margin latched for good). One lost cost at a distance's end shortens that episode's
        # measure by a step; the worst over the run's episodes is what the margin takes.
        if self._stop_at is not None and at > self._stop_at and math.isfinite(cost) and cost > 0:
            self._last_costly = max(at, self._last_costly or at)

    def episode_ended(self) -> bool:
        """The episode ended; True if the margin's steps grew."""
        before = self.in_use
        self.last = -1
        if self._stop_at is not None:
            self.last = (self._last_costly - self._stop_at) if self._last_costly is not None else 0
            self.worst = max(self.worst, self.last)
        self._stop_at = self._last_costly = None
        self._behind, self._last_steps = 0, 1
        return self.in_use > before

    def abandon(self) -> None:
        """The operator's reset restarted the episode's account: what follows is motion the
        operator allowed, not the robot's stop (measured as one, a robot whose episode message
        was lost ran a "stop" of 4 050 steps, and budget_margin latched for good)."""
        self._stop_at = self._last_costly = None

    def forget(self) -> str | None:
        """The operator cleared a hold that the measured distance made permanent ("no episode
        can move"): back to the configured steps, measured again from the next stop. Returns
        what was forgotten, for the log (None: nothing measured beyond the configuration)."""
        self.abandon()
        if self.in_use <= self.configured:
            return None
        self.forgotten = max(self.forgotten, self.worst)
        before, self.worst, self.last = self.in_use, -1, -1
        return f"measured stop distance forgotten: {before} -> {self.configured} steps ahead (configured)"

    def raced(self, steps: int) -> bool:
        """`steps` cost messages of the last episode came after its end; True if it grew."""
        before = self.in_use
        if self.last >= 0 and steps > 0:
            self.last += steps
            self.worst = max(self.worst, self.last)
        return self.in_use > before

    def describe(self) -> str:
        return (f"{self.in_use} steps ahead (configured {self.configured}, measured "
                f"{self.worst if self.worst >= 0 else 'nothing yet'} steps from a stop decision to the robot's stop)")


@dataclass
class BudgetAccount:
    """One episode's cost, as the robot reports it step by step. `provisional` is what steps
    taken but not yet costed (their cost message is still on its way) are held at: their
    worst case, for the verdict only, until the cost arrives (CostMatcher)."""

    budget: Budget
    episode: int = -1
    t: int = 0  # steps accounted in the episode
    accumulated: float = 0.0
    worst_seen: float = 0.0  # the largest cost the robot reported for one step
    missed: int = 0  # steps never reported (counted as the worst case), over all episodes
    worst_charged: int = 0  # steps of this episode charged the worst case (no cost, or a gap)
    provisional: float = 0.0
    distance: StopDistance | None = None  # a robot without a lease: the margin's steps, measured

    @property
    def limit(self) -> float:
        return self.budget.limit

    @property
    def steps_ahead(self) -> int:
        return self.distance.in_use if self.distance else self.budget.steps_ahead

    @property
    def margin(self) -> float:
        return self.budget.margin(self.worst_seen, self.steps_ahead)

    def record(self, episode: int, t: int, cost: float, reported: bool = True, extra: float = 0.0,
               steps: int = 1) -> None:
        """The robot's report that step t of `episode` cost `cost` (t = 0: the episode began).
        A repeat is ignored; a gap, a late join or an unreadable cost counts as the worst case.
        reported=False: `cost` is not one step's own report (a sum over steps whose states were
        lost), so it does not raise the margin. extra: the costs of steps whose states were
        lost, charged with this one. steps: the robot's steps this charge covers (StopDistance)."""
        if episode != self.episode:
            self.episode, self.t, self.accumulated, self.worst_charged = episode, 0, 0.0, 0
        if t <= self.t and not (t == 0 and self.t == 0):
            return  # already accounted (a repeated or reordered observation)
        gap = t - self.t - 1 if t > 0 else 0
        if gap > 0:
            self.missed += gap
            self.worst_charged += gap
            self.accumulated += self.budget.worst_case(gap)
        if t > 0 and self.distance is not None:
            self.distance.on_step(t, cost + extra if math.isfinite(extra) else cost, steps)
        if t > 0:
            if math.isfinite(cost) and cost >= 0:
                if reported:
                    self.worst_seen = max(self.worst_seen, cost)
                self.accumulated += cost
            else:
                self.worst_charged += 1
                self.accumulated += self.budget.worst_case(1)
            self.accumulated += extra if math.isfinite(extra) and extra >= 0 else self.budget.worst_case(1)
        self.t = max(self.t, t)

    def charge(self, charge: "Charge") -> None:
        if charge.refund:  # a late cost replaces the worst case its step was charged
            if charge.episode == self.episode and math.isfinite(charge.cost) and charge.cost >= 0:
                self.accumulated += charge.cost - self.budget.worst_case(1)
                self.worst_seen = max(self.worst_seen, charge.cost)
                self.worst_charged = max(0, self.worst_charged - 1)
                if self.distance is not None:
                    self.distance.on_step(charge.t, charge.cost)
            return
        if charge.raced and self.distance is not None:
            self.distance.raced(charge.raced)
        self.record(charge.episode, charge.t, charge.cost, charge.reported, charge.extra, charge.steps)

    def verdict(self, with_provisional: bool = True) -> str | None:
        """Why the robot must hold. with_provisional=False: by the costs charged so far only
        (what may latch: a cost still on its way must not latch a STOP for the operator)."""
        return budget_verdict(self.accumulated + (self.provisional if with_provisional else 0.0), self.margin,
                              self.limit)

    def lease(self, cap: int = LEASE_MAX) -> int:
        return lease_steps(self.accumulated + self.provisional, self.margin, self.limit, cap)


@dataclass
class Charge:
    """What CostMatcher hands the account: step t of `episode` cost `cost` (NaN: no cost came
    in time, the worst case), plus `extra`, the costs of steps whose states were lost.
    reported: one cost message of the robot's for this one step (only that raises the margin)."""

    episode: int
    t: int
    cost: float
    reported: bool = True
    extra: float = 0.0
    raced: int = 0  # cost messages that came before the episode's first state: the last episode's
    refund: bool = False  # the late cost of a step charged the worst case: it replaces that charge
    steps: int = 1  # the robot's steps it covers (its costs, extra's too): more where states were lost


@dataclass
class _Step:
    t: int
    deadline: float
    stamp_ns: int | None
    costs: list | None = None  # None: its cost has not come yet
    extra: list = field(default_factory=list)
    raced: int = 0


class CostMatcher:
    """The budget contract for a robot that speaks standard messages (an io file, SAFETY.md):
    costs matched to the steps they belong to by time, not by the order they arrive in (DDS
    does not order two topics: a cost can arrive after the state that follows its step).

    Each new state (trigger message) after the episode's first is one step. Its cost is:
    - stamped costs: the cost message whose stamp equals the state's stamp (a state re-sent
      with the same stamp is not a new step);
    - unstamped: the costs that arrived since the previous state, or else the next cost to
      arrive within `wait_s`.
    A step whose cost does not come within `wait_s` of its state (at most one period) is
    charged the worst case; until then it is pending, and the verdict holds it at the worst
    case. Costs that came for states that were lost are charged with the next step. Nothing
    is charged before the robot's first cost message: a robot already running when the node
    starts is not charged for what discovery missed, and until then nothing moves."""

    MIN_WAIT_S, MAX_WAIT_S = 0.0005, 0.1

    def __init__(self, stamped: bool = False, wait_s: float | None = None) -> None:
        """stamped: the costs carry the stamp of the state that follows their step (else they
        are matched by arrival). wait_s: how long a step waits for its cost; None: one period
        of the robot's, as measured between its states (the median of the last 32 intervals;
        10 ms at first). A state's stamp, where it has one, tells a re-sent state from a step."""
        self.stamped = stamped
        if wait_s is not None and not (math.isfinite(wait_s) and wait_s > 0):
            raise ValueError(f"cost wait: expected a finite time > 0, got {wait_s!r}")
        self._fixed_wait = wait_s
        self._intervals: deque = deque(maxlen=32)
        self._measured_wait = 0.01  # the median interval, kept current as states arrive
        self._last_state_at: float | None = None
        self.episode, self.t = 0, -1  # -1: no state yet in this episode
        self._early: list[tuple[float, int | None, int | None]] = []  # (cost, stamp, sent): before their state
        self._pending: deque[_Step] = deque()  # steps in order, some still waiting for a cost
        # (episode, t, stamp) of steps charged the worst case, this episode's and the last's
        self._worst: deque = deque(maxlen=256)
        self._episode_sent: int | None = None  # when the robot sent this episode's start (its source clock)
        self._last_stamp: int | None = None
        self.armed = False  # the robot's first cost message arms the account
        self.received = 0  # cost messages over the run
        self.uncosted = 0  # steps charged the worst case: no cost within wait_s
        self.reordered = 0  # costs that came after the state that follows their step
        self.dropped = 0  # stamped costs whose step was charged already, or of an ended episode
        self.refunded = 0  # late costs that replaced a worst-case charge
        self.carried = 0  # states still waiting for a cost when their episode ended

    @property
    def wait_s(self) -> float:
        return self._fixed_wait if self._fixed_wait is not None else self._measured_wait

    def counts(self) -> dict:
        """What the summaries and /diagnostics report."""
        return {"received": self.received, "after_their_state": self.reordered, "without_cost": self.uncosted,
                "late_refunded": self.refunded,
                "dropped": self.dropped, "carried_over_episode": self.carried, "wait_ms": round(self.wait_s * 1e3, 3)}

    @property
    def waiting(self) -> int:
        """Steps taken whose cost has not come yet (the verdict holds them at the worst case)."""
        return sum(step.costs is None for step in self._pending)

    def on_cost(self, cost: float, stamp_ns: int | None, now: float, sent_ns: int | None = None) -> list[Charge]:
        """A cost message that reached the node at `now`; sent_ns: when the robot sent it (DDS's
        source timestamp), which tells a late cost of the last episode from one of this episode."""
        self.received += 1
        self.armed = True
        out = self.expire(now)
        stamp_ns = stamp_ns if self.stamped else None
        last_episodes = (sent_ns is not None and self._episode_sent is not None and sent_ns < self._episode_sent)
        # The oldest step without its own cost takes it: one charged the worst case when the
        # cost was late (the cost replaces that charge), else one still waiting. Unstamped, a
        # lost cost shifts costs to later steps, and the latest steps stay at the worst case:
        # the account never holds less than the costs sent. A cost sent before this episode
        # began replaces its own episode's charge (the account has moved on: nothing changes),
        # instead of being charged again to this one: a monitor that read costs late charged
        # a new episode 35 of them and measured them as a 47-step stop.
        for i, (episode, t, stamp) in enumerate(self._worst):
            if (episode == self.episode or last_episodes) and (stamp_ns is None or stamp == stamp_ns):
                del self._worst[i]
                self.refunded += 1
                return out + [Charge(episode, t, float(cost), True, refund=True)]
        for step in self._pending:
            if step.costs is None and (stamp_ns is None or step.stamp_ns == stamp_ns):
                step.costs = [float(cost)]
                self.reordered += 1
                return out + self._release()
        if stamp_ns is not None and self._last_stamp is not None and stamp_ns <= self._last_stamp:
            self.dropped += 1  # its step was charged the worst case already, or it is a repeat
            return out
        self._early.append((float(cost), stamp_ns, sent_ns))
        return out

    def on_state(self, stamp_ns: int | None, now: float) -> list[Charge]:
        """A state (trigger message). Returns the charges now known, in step order."""
        out = self.expire(now)
        if stamp_ns is not None:
            if self._last_stamp is not None and stamp_ns <= self._last_stamp:
                return out  # the same state re-sent while the robot waits: not a step
            self._last_stamp = stamp_ns
        if self._last_state_at is not None:
            self._intervals.append(now - self._last_state_at)
            # statistics.median: np.median's answer at a tenth of its cost on 32 numbers (per state)
            self._measured_wait = min(self.MAX_WAIT_S, max(self.MIN_WAIT_S, statistics.median(self._intervals)))
        self._last_state_at = now
        if not self.armed:
            return out
        if self.stamped and stamp_ns is not None:
            mine = [e[0] for e in self._early if e[1] == stamp_ns]
            older = [e[0] for e in self._early if e[1] is None or e[1] < stamp_ns]
            self._early = [e for e in self._early if e[1] is not None and e[1] > stamp_ns]
            if self.t < 0 and not mine:  # the episode's first state; older costs are the last episode's
                self.t, self.dropped = 0, self.dropped + len(older)
                return out + [Charge(self.episode, 0, 0.0)]
        else:
            early, self._early = self._early, []
            mine, older = [e[0] for e in early], []
            if self.t < 0 and not mine:
                self.t = 0
                return out + [Charge(self.episode, 0, 0.0)]
        # Costs before an episode's first state are the last episode's (they raced its end),
        # unless the robot sent them after this episode began: this episode's steps whose
        # states were lost (a node that stalled found 24 such costs and measured a 41-step stop).
        raced = 0 if self.t >= 0 or self.stamped else sum(
            not (e[2] is not None and self._episode_sent is not None and e[2] >= self._episode_sent) for e in early)
        self.t = max(self.t, 0) + 1
        self._pending.append(_Step(self.t, now + self.wait_s, stamp_ns, mine or None, older, raced))
        return out + self._release()

    def _release(self) -> list[Charge]:
        """Charges for the steps at the head of the queue whose cost has come, in order."""
        out = []
        while self._pending and self._pending[0].costs is not None:
            step = self._pending.popleft()
            costs = step.costs
            if any(not (math.isfinite(c) and c >= 0) for c in costs):
                out.append(Charge(self.episode, step.t, math.nan, False, math.fsum(step.extra), step.raced,
                                  steps=1 + len(step.extra)))
            else:
                out.append(Charge(self.episode, step.t, math.fsum(costs), len(costs) == 1, math.fsum(step.extra),
                                  step.raced, steps=max(1, len(costs) - step.raced) + len(step.extra)))
        return out

    def expire(self, now: float) -> list[Charge]:
        """Steps whose cost did not come within wait_s: charged the worst case."""
        for step in self._pending:
            if step.costs is None and step.deadline <= now:
                step.costs = [math.nan]
                self.uncosted += 1
                self._worst.append((self.episode, step.t, step.stamp_ns))
        return self._release()

    def on_episode(self, now: float, sent_ns: int | None = None) -> list[Charge]:
        """A new episode starts (sent_ns: when the robot sent its start message). The old one's
        steps whose cost came are charged; a step still waiting is not (the old episode is
        over): its cost, if it still comes, is charged to the new episode unstamped (the safe
        side), or dropped by its stamp. A late cost of a step the old episode charged the worst
        case replaces that charge where its send time says it is the old episode's. The state
        may also be the new episode's first, come before this message (DDS orders no two topics)."""
        self._worst = deque((w for w in self._worst if w[0] == self.episode), maxlen=self._worst.maxlen)
        self.carried += sum(step.costs is None for step in self._pending)
        self._pending = deque(step for step in self._pending if step.costs is not None)
        out = self._release()
        self.episode, self.t, self._episode_sent = self.episode + 1, -1, sent_ns
        return out


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


@dataclass
class SecondCommander:
    """Two live publishers on one command topic (a second controller, a stray learner). DDS
    numbers each publisher's messages 1, 2, 3, ..., so the newest command read steps back in
    number whenever it comes from the other publisher. One step back is a publisher that
    restarted (a killed controller's successor); `steps_back` of them within `window_s` is
    two at once. A monitor that reads both publishers' commands sees this as soon as it has
    discovered both; the controllers' own check waits until they discover each other, which
    took 0.9-1.4 s in 3 runs of 8 (BENCHMARKS, tenth session), against a 2 s start-up hold."""

    window_s: float = 1.0
    steps_back: int = 3
    last: int | None = None
    backs: deque = field(default_factory=deque)

    def see(self, seq: int | None, now: float) -> bool:
        """A command's publication sequence number (None where the middleware gives none);
        True while two publishers' commands interleave."""
        if seq is None:
            return False
        if self.last is not None and seq <= self.last:
            self.backs.append(now)
        self.last = seq
        while self.backs and now - self.backs[0] > self.window_s:
            self.backs.popleft()
        return len(self.backs) >= self.steps_back

    def forget(self) -> None:
        """After the operator's reset: only interleaving seen from now on counts."""
        self.backs.clear()


RESTART_PREFIX = "latched before restart: "


def restart_reason(persisted: dict[str, str]) -> str:
    """The reason of a STOP latched before a restart (the monitor's state file, the
    controller's latch carried over a restart after a suspension), readable after any number of restarts (the
    prefix is not nested: "latched before restart: latched before restart: ...")."""
    return RESTART_PREFIX + "; ".join(v[len(RESTART_PREFIX):] if v.startswith(RESTART_PREFIX) else v
                                      for v in persisted.values())


class LatchStore:
    """A latch on disk, so that a restarted node starts where the old one stopped. A write
    that would not change the file is skipped: each is two fsyncs on the thread that reads
    the robot's steps, and the monitor saved "no latch" at every episode's end."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._on_disk: dict[str, str] | None = None  # what the file holds, where known

    def load(self) -> dict[str, str]:
        self._on_disk = None
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable: the safe reading is "stopped"
            return {"state_file": f"{self.path} unreadable ({exc}); treated as latched"}
        reasons = data.get("reasons") if isinstance(data, dict) else None
        if not isinstance(reasons, dict):
            return {"state_file": f"{self.path} malformed; treated as latched"}
        self._on_disk = {str(k): str(v) for k, v in reasons.items()}
        return dict(self._on_disk)

    def save(self, reasons: dict[str, str]) -> None:
        from algd_runtime.contract.atomic import atomic_write

        reasons = {str(k): str(v) for k, v in reasons.items()}
        if reasons == self._on_disk and self.path.exists():
            return
        with atomic_write(self.path, "w") as f:
            json.dump({"reasons": reasons, "written": time.time()}, f)
        self._on_disk = reasons


# -- heartbeats ---------------------------------------------------------------------------------
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
    budget: Budget | None = None  # the controller's: the monitor must guard the same one

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
        if p.get("sees_robot") is not False and self.payload.get("sees_robot") is False:
            self._unaccounted.clear()  # steps before the monitor saw the robot were not tracked (discovery)
        self.seq, self.last_at, self.payload = int(p["seq"]), now, p
        if self.budget is not None and p.get("budget") != self.budget.digest:
            latch.trip("budget_mismatch", f"the monitor guards budget {p.get('budget')} (limit {p.get('limit')}), "
                       f"this controller {self.budget.digest} ({self.budget.describe()}): the two channels must "
                       f"guard one budget (same bundle, cost_limit, max_step_cost and io file)")
        seen = p.get("seen_stamp_ns")
        while self._unaccounted and seen is not None and self._unaccounted[0][0] <= seen:
            self._unaccounted.popleft()

    def on_robot_step(self, stamp_ns: int, now: float) -> None:
        """The controller saw a step (an observation with t >= 1) taken at robot time stamp_ns.
        Tracked only once the monitor says it sees the robot: a robot already running while
        discovery is still under way is not a lagging monitor (its steps are held anyway)."""
        if self.boot is not None and self.payload.get("sees_robot") is not False:
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

# A robot that resets itself ends an episode its budget stopped within a command timeout or an
# e-stop's latency. One that has not started a new episode this long after can never move by
# itself again (nothing ends the episode): that hold latches, for the operator to read.
SPENT_HOLD_LATCH_S = 5.0


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
        self.waiting_for: str | None = None  # a hold until the robot's first cost (CostMatcher)
        # A hold while the robot does not hear this controller's own e-stop (standard messages):
        # without it, a robot that costs while it stands outspends a stop of this channel alone.
        self.estop_unheard: str | None = None
        self._spent_since: tuple[int, float] | None = None  # (episode, when) its budget first stopped it

    def hold_for(self, now: float, seconds: float, why: str) -> None:
        self.hold_until, self.hold_reason = now + seconds, why

    def on_transition(self, episode: int, t: int, cost: float, stamp_ns: int | None, now: float) -> None:
        """A step the robot reports. stamp_ns (None: the caller tells the watch itself) is
        what the monitor's heartbeat must show as accounted within max_lag_s."""
        self.account.record(episode, t, cost)
        if t > 0 and self.watch is not None and stamp_ns is not None:
            self.watch.on_robot_step(stamp_ns, now)
        self._latch_if_stuck()

    def on_charges(self, charges: list[Charge], waiting: int) -> None:
        """Steps costed by a CostMatcher (standard messages); `waiting` steps are held at the
        worst case until their cost comes."""
        for charge in charges:
            self.account.charge(charge)
        self.account.provisional = self.account.budget.worst_case(waiting) if waiting else 0.0
        if charges:
            self._latch_if_stuck()

    def _latch_if_stuck(self) -> None:
        """A budget stop latches for the operator with stop_latch "operator", and always when
        it can never end by itself: no episode could move under the margin."""
        account = self.account
        never = account.budget.never_moves(account.worst_seen, account.steps_ahead)
        if never:
            self.latch.trip("budget_margin", never)
        elif self.stop_latch == "operator":
            spent = account.verdict(with_provisional=False)
            if spent:
                self.latch.trip("budget", f"episode {account.episode}: {spent}")

    def _latch_if_spent_for_good(self, now: float) -> bool:
        """stop_latch "episode": a spent episode the robot has not ended after
        SPENT_HOLD_LATCH_S latches `budget_held` with the numbers (issue 19: no robot held
        still for good without a reason)."""
        account = self.account
        spent = account.verdict(with_provisional=False)
        if spent is None:
            self._spent_since = None
            return False
        if self._spent_since is None or self._spent_since[0] != account.episode:
            self._spent_since = (account.episode, now)
            return False
        if now - self._spent_since[1] < SPENT_HOLD_LATCH_S:
            return False
        worst = (f"; {account.worst_charged} of its {account.t} steps were charged the worst case (their cost "
                 f"never came)" if account.worst_charged else "")
        return self.latch.trip("budget_held", f"episode {account.episode}: {spent}{worst}; the robot has started no "
                                              f"new episode in {SPENT_HOLD_LATCH_S:g} s, so it cannot move again "
                                              f"by itself; the operator's reset starts a new account")

    def verdict(self, now: float) -> Verdict:
        reason = None
        self._latch_if_spent_for_good(now)  # whatever else holds the robot (a STOP of the monitor's too)
        if self.watch is not None:
            reason = self.watch.check(now, self.latch)
        if self.latch.latched:
            reason = self.latch.describe()
        if reason is None and now < self.hold_until:
            reason = self.hold_reason
        if reason is None:
            reason = self.waiting_for or self.estop_unheard
        if reason is None:
            reason = self.account.verdict()
            if reason and self.account.distance is not None:
                self.account.distance.stop_decided(self.account.t)
        if reason:
            return Verdict(reason, 0)
        return Verdict(None, self.account.lease(self.lease_cap))

    def reset(self) -> dict[str, str]:
        """The operator's reset (after ResetAuthority.verify) clears the latch. The episode's
        account is kept (a spent episode stays stopped until the robot starts a new one, and a
        still-missing monitor stops the robot again at once), except after `budget_held`."""
        cleared = self.latch.clear()
        self._spent_since = None
        if cleared and self.account.distance is not None:
            # Whatever the reset cleared, the motion it allows is not the stop being measured
            # (as on the monitor, BudgetMonitor.reset_stop): a controller held 11 s by
            # monitor_lost after a budget stop measured the robot's motion after the reset as a
            # 4 430-step stop, and budget_margin latched (the twelfth session's chaos soak).
            self.account.distance.abandon()
        if "budget_margin" in cleared and self.account.distance is not None:
            # "No episode can move" never ends by itself: the operator's reset must clear it.
            forgotten = self.account.distance.forget()
            if forgotten:
                cleared["budget_margin"] += f" ({forgotten})"
        if "budget_held" in cleared:
            # The robot could not end that episode: the operator's reset ends its account, as
            # the monitor's reset does (fresh accounting), and the robot may move again.
            self.account.accumulated, self.account.worst_charged = 0.0, 0
        if self.watch is not None:
            self.watch._unaccounted.clear()
        return cleared

