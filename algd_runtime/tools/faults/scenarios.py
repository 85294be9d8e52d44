"""The faults: what each injects into a running graph, how it recovers, and the hostile
node that forges heartbeats, resets and episode ends (SAFETY.md's fault matrix)."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence


from algd_runtime.deploy.safety import GRAPH_SETTLE_S
from algd_runtime.tools.faults.graph import Graph
from algd_runtime.tools.faults.probe import Probe
from algd_runtime.tools.faults.settings import (
    CMD_TIMEOUT_S, DISCOVERY_WAITS, MONITOR_LATE_S, QUIET_S, REVIVE_AFTER_S, SIGSTOP_S, WARMUP_TIMEOUT_S)


# -- one run ---------------------------------------------------------------------------------------
@dataclass
class Injection:
    at: float  # time.monotonic() of the injection
    reasons: tuple[str, ...]  # a hold or STOP reason with one of these shows the robot stopped for the fault
    deadline_s: float  # the mechanism's deadline
    episodes_before: int
    log_labels: tuple[str, ...] = ()  # controllers whose STOP decisions count
    until: float | None = None  # when the fault was cleared (a reset, a new process); None: the run's end
    early_s: float = 0.0  # a STOP this long before `at` still counts (at is known only approximately)


@dataclass
class Run:
    fault: str
    rate: float
    seconds: float
    graph: Graph
    probe: Probe
    key: bytes
    limit: float
    monitor_timeout_s: float
    injections: list[Injection] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    expect_latch: tuple[str, ...] = ()  # latch kinds the controller(s) must show
    t_fault: float | None = None  # when the fault phase began
    episodes_before_fault: int | None = None

    @property
    def period(self) -> float:
        return 1.0 / self.rate

    @cached_property
    def steps_on_old_command(self) -> int:
        """Steps a robot without a lease may take on its last command after a stop is decided:
        the io file's steps_ahead, which the budget's margin keeps for them; 0 with a lease."""
        if self.graph.io is None:
            return 0
        from algd_runtime.deploy.adapters import load_io

        io = load_io(str(self.graph.io))
        return 0 if io.leased else io.steps_ahead

    def wait(self, done: Callable[[], bool], timeout: float, what: str | None) -> bool:
        """Until done(); on timeout a problem (unless `what` is None). A node that exits on its
        own aborts the run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            dead = self.graph.dead()
            if dead:
                raise Abort(f"node(s) exited early: {dead}; see {self.graph.workdir}/<node>.log")
            time.sleep(0.01)
        if done():
            return True
        if what:
            said = "; ".join(f"{label}: " + " | ".join(lines) for label in self.graph.procs
                             if (lines := self.graph.last_warnings(label)))
            self.problems.append(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (the nodes' last warnings: {said})" if said else ""))
        return False

    def sleep_until(self, t: float) -> None:
        self.wait(lambda: time.monotonic() >= t, max(0.0, t - time.monotonic()) + 1.0, None)

    def log_has(self, label: str, text: str) -> bool:
        return any(text in msg for _, msg in self.graph.log_lines(label, self.probe.offset))

    def start_node(self, node: str, timeout: float = WARMUP_TIMEOUT_S) -> str:
        """Start a node and wait until it runs: the controller and the monitor say so in their
        logs, the sim publishes observations."""
        label = self.graph.start(node)
        if node == "sim":
            self.probe.epoch += 1
            topic = self.graph.trigger or "observation"
            up = lambda: self.probe.publishers(topic) >= 1  # noqa: E731
        else:
            up = lambda: self.log_has(label, f"{node}: ")  # noqa: E731
        self.wait(up, timeout, f"{label} to start")
        return label

    def start_graph(self, monitor: bool = True) -> None:
        """Controller and monitor first, so that the sim's first observation has listeners."""
        self.start_node("controller")
        if monitor:
            self.start_node("monitor")
            self.wait(lambda: bool(self.probe.heartbeats), WARMUP_TIMEOUT_S, "the monitor's heartbeat")
        self.start_node("sim")

    def moving(self, quiet_s: float) -> bool:
        return time.monotonic() - self.probe.last_step() < quiet_s

    def ensure_motion(self, why: str, episodes: int = 1, attempts: int = 4) -> None:
        """Until `episodes` more episodes ended. A graph still in discovery (no heartbeat yet,
        the monitor not seeing the robot yet, the start-up hold) is given more time; a latch the
        controller tripped by itself without a fault is cleared by the operator (a warning)."""
        since = time.monotonic()
        for _ in range(attempts):
            if self.wait(lambda: self.probe.ends_since(since) >= episodes, REVIVE_AFTER_S, None):
                return
            label = self.graph.current("controller")
            decisions = [m for _, m in self.graph.log_lines(label, self.probe.offset)
                         if m.startswith(("STOP: ", "moving", "operator reset: cleared"))]
            last = decisions[-1] if decisions else ""
            if last.startswith(("STOP: budget", "STOP: monitor at STOP: budget")):
                return  # it moved and spent its budget: held for it, not without a fault
            if last.startswith("STOP: ") and not any(k in last for k in DISCOVERY_WAITS):
                since = time.monotonic()  # before the reset: an episode may end as soon as it is done
                # The controller's own latch (a heartbeat late under load) is the controller's to
                # clear; the monitor's STOP too where the controller holds for it, but not a
                # budget STOP (the operator-latched one is what the hostile run waits for).
                monitor = "monitor at STOP: " in last and "monitor at STOP: budget" not in last
                nodes = ("controller", "monitor") if monitor else ("controller",)
                self.warnings.append(f"{why}: no motion, the controller holds without a fault ({last[6:90]}); "
                                     f"operator reset of the {' and '.join(nodes)}")
                self.evidence["revivals"] = self.evidence.get("revivals", 0) + 1
                self.operator_reset(nodes)
        raise Abort(f"{why}: the graph does not move (see {self.graph.workdir}/<node>.log)")

    def warm_up(self, episodes: int = 2) -> None:
        self.ensure_motion("warm-up", episodes)
        self.t_fault = time.monotonic()

    def before_injection(self) -> None:
        """A fault is injected into a moving robot only."""
        if not self.moving(QUIET_S):
            self.ensure_motion("before the fault")

    def operator_reset(self, nodes: Sequence[str] = ("controller", "monitor")) -> dict:
        from algd_runtime.ros.reset_cli import operator_reset

        out = operator_reset(self.graph.ns, list(nodes), self.key, timeout_s=10.0, node=self.probe.node)
        bad = {n: r for n, r in out.items() if r[0] != "ok"}
        if bad:
            self.problems.append(f"operator reset failed: {bad}")
        return out

    def wait_motion(self, since: float, what: str) -> bool:
        """Until an episode ended after `since` (the robot moved again); a graph that does not
        move without a fault (a heartbeat late under load right after a reset) is revived."""
        if self.wait(lambda: self.probe.ends_since(since) >= 1, REVIVE_AFTER_S, None):
            return True
        self.ensure_motion(what)
        return True


class Abort(Exception):
    pass


# -- the faults ----------------------------------------------------------------------------------
def _cycles(run: Run, inject: Callable[[], Injection], recover: Callable[[Injection], bool], window_s: float,
            recover_always: bool, first_cycle_s: float) -> None:
    """Inject, hold for window_s, recover (if the run's time allows, or always), repeat while
    another cycle fits; then run on until the end (still held after an unrecovered fault)."""
    end = run.t_fault + run.seconds
    estimate = first_cycle_s
    while True:
        t0 = time.monotonic()
        run.before_injection()
        inj = inject()
        run.injections.append(inj)
        run.sleep_until(inj.at + window_s)
        if not recover_always and time.monotonic() + estimate > end:
            break  # held to the end of the run
        if not recover(inj):
            break
        estimate = time.monotonic() - t0
        if time.monotonic() + estimate > end:
            break
    run.sleep_until(end)


def _fault_none(run: Run) -> None:
    run.warm_up()
    run.episodes_before_fault = len(run.probe.ends)
    run.sleep_until(run.t_fault + run.seconds)


def _kill_monitor(run: Run, reasons=("monitor_lost",)) -> Injection:
    label = run.graph.current("monitor")
    before = len(run.probe.ends)
    at = time.monotonic()
    run.graph.send(label, signal.SIGKILL)
    return Injection(at, reasons, run.monitor_timeout_s, before, log_labels=(run.graph.current("controller"),))


def _new_monitor_and_reset(run: Run, inj: Injection, quiet_s: float, controller_sees: str | None = None) -> bool:
    """A new monitor process (same state_file), its first heartbeat, `quiet_s` in which the
    robot must stay held (and, if given, until the controller logged `controller_sees`: it
    may discover the new monitor later than the probe does), then the operator's reset and
    episodes again."""
    old = set(run.probe.boots())
    label = run.start_node("monitor")
    if not run.wait(lambda: bool(set(run.probe.boots()) - old), 30.0, f"a heartbeat from the new monitor ({label})"):
        return False
    run.sleep_until(time.monotonic() + quiet_s)
    if controller_sees:
        ctl = run.graph.current("controller")
        run.wait(lambda: any(controller_sees in r for t, r in run.graph.stop_lines(ctl, run.probe.offset)
                             if t >= inj.at), 10.0, None)
    inj.until = time.monotonic()
    run.operator_reset()
    return run.wait_motion(inj.until, "episodes after the operator's reset")


def _recover_killed_monitor(run: Run, inj: Injection) -> bool:
    return _new_monitor_and_reset(run, inj, 0.2)


def _recover_restarted_monitor(run: Run, inj: Injection) -> bool:
    ok = _new_monitor_and_reset(run, inj, 1.0, controller_sees="monitor_restarted")
    ctl = run.graph.current("controller")
    lines = [r for t, r in run.graph.stop_lines(ctl, run.probe.offset) if inj.at <= t <= (inj.until or math.inf)]
    if not any("monitor_restarted" in r for r in lines):
        run.problems.append("restart_monitor: the controller never stopped for monitor_restarted before the reset")
    return ok


def _sigstop_monitor(run: Run) -> Injection:
    label = run.graph.current("monitor")
    before = len(run.probe.ends)
    at = time.monotonic()
    run.graph.send(label, signal.SIGSTOP)
    return Injection(at, ("monitor_lost",), run.monitor_timeout_s, before,
                     log_labels=(run.graph.current("controller"),))


def _recover_stopped_monitor(run: Run, inj: Injection) -> bool:
    n = len(run.probe.heartbeats)
    run.graph.send(run.graph.current("monitor"), signal.SIGCONT)
    if not run.wait(lambda: len(run.probe.heartbeats) > n, 10.0, "heartbeats after SIGCONT"):
        return False
    run.sleep_until(time.monotonic() + 0.5)  # a monitor back alone does not restart motion
    inj.until = time.monotonic()
    run.operator_reset()
    return run.wait_motion(inj.until, "episodes after the operator's reset")


def _signal_controller(sig: int) -> Callable[[Run], Injection]:
    """Kill (SIGKILL) or suspend (SIGSTOP) the controller: the robot's command timeout holds it."""
    def inject(run: Run) -> Injection:
        before = len(run.probe.ends)
        at = time.monotonic()
        run.graph.send(run.graph.current("controller"), sig)
        return Injection(at, ("cmd_timeout",), CMD_TIMEOUT_S, before)
    return inject


def _recover_killed_controller(run: Run, inj: Injection) -> bool:
    inj.until = time.monotonic()
    run.start_node("controller")  # it hears the observation the waiting robot re-sends
    run.ensure_motion("after a new controller")
    return True


def _recover_stopped_controller(run: Run, inj: Injection) -> bool:
    """SIGCONT: suspended past restart_after_suspend_s, the controller starts again in its own
    process (ros/suspend.py) and moves after its start-up hold, with no reset needed."""
    label = run.graph.current("controller")
    inj.until = time.monotonic()
    run.graph.send(label, signal.SIGCONT)
    started = lambda: any(msg.startswith("started again: ") and t >= inj.at  # noqa: E731
                          for t, msg in run.graph.log_lines(label, run.probe.offset))
    if not run.wait(started, 20.0, "sigstop_controller: the controller started again after its suspension "
                                   "(restart_after_suspend_s)"):
        return False
    run.ensure_motion("after the suspended controller started again")
    return True


@dataclass(frozen=True)
class Cycle:
    """A fault that can be injected into a running graph again and again (the matrix's
    repeated cells, the chaos soak): inject, hold `window_s`, recover."""

    inject: Callable[[Run], Injection]
    recover: Callable[[Run, Injection], bool]
    window_s: float
    latches: tuple[str, ...] = ()  # what the controller must stop for
    recover_always: bool = False  # recover even when the run's time is nearly up
    first_cycle_s: float = 5.0


CYCLES: dict[str, Cycle] = {
    "kill_monitor": Cycle(_kill_monitor, _recover_killed_monitor, 1.0, ("monitor_lost",)),
    "restart_monitor": Cycle(lambda run: _kill_monitor(run, ("monitor_lost", "monitor_restarted")),
                             _recover_restarted_monitor, 0.3, ("monitor_lost", "monitor_restarted"), True, 6.0),
    "sigstop_monitor": Cycle(_sigstop_monitor, _recover_stopped_monitor, SIGSTOP_S, ("monitor_lost",), True, 4.0),
    "kill_controller": Cycle(_signal_controller(signal.SIGKILL), _recover_killed_controller, 0.6, (), False, 8.0),
    "sigstop_controller": Cycle(_signal_controller(signal.SIGSTOP), _recover_stopped_controller, SIGSTOP_S, (), True, 8.0),
}


def _fault_cycles(run: Run) -> None:
    cycle = CYCLES[run.fault]
    run.warm_up()
    run.expect_latch = cycle.latches
    run.sleep_until(run.t_fault + 0.5)
    _cycles(run, lambda: cycle.inject(run), lambda inj: cycle.recover(run, inj), cycle.window_s,
            cycle.recover_always, cycle.first_cycle_s)


def _fault_late_monitor(run: Run) -> None:
    run.start_graph(monitor=False)
    up = time.monotonic()
    run.sleep_until(up + MONITOR_LATE_S)
    run.t_fault = time.monotonic()
    run.episodes_before_fault = len(run.probe.ends)  # without a monitor: must stay 0
    label = run.start_node("monitor")
    run.ensure_motion("once the monitor runs")
    # The monitor sends its first heartbeat after its start-up line ("monitor: ..."): a step
    # before that line's time was taken without a heartbeat.
    up_lines = [t for t, msg in run.graph.log_lines(label, run.probe.offset) if msg.startswith("monitor: ")]
    first_hb = up_lines[0] if up_lines else math.inf
    run.evidence.update(steps_before_monitor_started=run.probe.steps_between(-math.inf, run.t_fault),
                        steps_before_first_heartbeat=run.probe.steps_between(-math.inf, first_hb - 0.005),
                        monitor_started_after_s=round(run.t_fault - up, 3),
                        first_heartbeat_after_monitor_start_s=round(first_hb - run.t_fault, 3))
    if run.evidence["steps_before_monitor_started"] or run.evidence["steps_before_first_heartbeat"]:
        run.problems.append(f"late_monitor: the robot stepped without a monitor ({run.evidence})")
    if run.episodes_before_fault:
        run.problems.append(f"late_monitor: {run.episodes_before_fault} episodes ended before the monitor started")
    lines = [r for t, r in run.graph.stop_lines("controller", run.probe.offset) if t < run.t_fault]
    run.evidence["held_for"] = sorted(set(lines))[:3]
    if not any("no heartbeat" in r for r in lines):
        run.problems.append("late_monitor: the controller never said it stopped for want of a heartbeat")
    run.sleep_until(run.t_fault + run.seconds)


def _fault_robot_first(run: Run) -> None:
    """The robot runs (its state and costs flowing) before the controller and the monitor
    start: discovery must neither latch monitor_lagging nor spend its first episode."""
    run.start_node("sim")
    time.sleep(2.0)
    run.start_node("controller")
    run.start_node("monitor")
    run.warm_up()
    run.episodes_before_fault = len(run.probe.ends)
    if run.evidence.get("revivals"):
        run.problems.append("robot_first: the graph needed the operator's reset to move (a latch at discovery)")
    run.sleep_until(run.t_fault + run.seconds)


def _fault_duplicate_controller(run: Run) -> None:
    run.warm_up()
    run.expect_latch = ("duplicate_controller",)
    run.sleep_until(run.t_fault + 0.5)
    run.before_injection()
    before = len(run.probe.ends)
    label = run.graph.start("controller")
    if not run.wait(lambda: run.probe.publishers("action") >= 2, WARMUP_TIMEOUT_S, "a second publisher on action"):
        return
    # The new controller holds still for its first GRAPH_SETTLE_S; the running one must see it
    # (through DDS discovery) and stop within that window, so that two never command at once.
    # The fault begins when the second publisher exists: its process creates it just before its
    # start-up line, and the probe sees it through discovery; whichever shows it first. The
    # running controller may see it a little earlier still (early_s).
    seen = time.monotonic()
    up = [t for t, msg in run.graph.log_lines(label, run.probe.offset) if msg.startswith("controller: ")]
    injection = Injection(min([seen] + up[:1]), ("duplicate_controller",), GRAPH_SETTLE_S, before,
                          log_labels=("controller",), early_s=0.25)
    run.injections.append(injection)
    run.sleep_until(max(run.t_fault + run.seconds, time.monotonic() + 2.0))
    lines = run.graph.log_lines(label, run.probe.offset)
    moved = [t for t, msg in lines if msg.startswith("moving")]
    if moved:
        run.problems.append(f"duplicate_controller: the second controller commanded motion ({len(moved)} times)")
    # The second controller could first move when its start-up hold had ended and it heard the
    # monitor (its interlock). Where its process's discovery was slow as a whole (no heartbeat
    # for 1.4-2.1 s, BENCHMARKS, tenth session), the first one had until then to hold: the
    # pass rule is that the two never command motion at once, not how fast discovery runs.
    heard = [t for t, msg in lines if msg.startswith("STOP: ") and "no heartbeat from the monitor yet" not in msg]
    if heard:
        injection.deadline_s = max(GRAPH_SETTLE_S, heard[0] - injection.at)


# -- hostile ---------------------------------------------------------------------------------------
class Hostile:
    """A node on the run's domain and namespace that tries everything but the operator key."""

    def __init__(self, probe: Probe) -> None:
        import rclpy
        from rclpy.parameter_client import AsyncParameterClient
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger

        from algd_runtime.ros import messages as m

        self.probe = probe
        self.node = rclpy.create_node(f"hostile_{os.getpid()}", namespace=probe.ns, context=probe.ctx)
        probe.executor.add_node(self.node)
        self.Bool, self.String, self.Trigger = Bool, String, Trigger
        self.estop = self.node.create_publisher(Bool, m.ESTOP, m.LATCHED)
        self.heartbeat = self.node.create_publisher(String, m.HEARTBEAT, m.RELIABLE)
        self.episode = self.node.create_publisher(String, m.EPISODE, m.EVENTS)  # as the robot publishes them
        self.reset = {n: self.node.create_publisher(String, f"{n}/reset", m.RELIABLE) for n in ("controller", "monitor")}
        self.challenge = {n: self.node.create_client(Trigger, f"{n}/reset_challenge") for n in ("controller", "monitor")}
        self.trigger = self.node.create_client(Trigger, "reset")  # the monitor's old unauthenticated service
        self.reset_episode = self.node.create_client(Trigger, "reset_episode")  # the sim's
        self.params = {n: AsyncParameterClient(self.node, n) for n in ("controller", "monitor")}
        self.wrong_key = secrets.token_bytes(32)
        self.nonces: set[str] = set()  # every nonce this node sent

    def _call(self, client, request, timeout: float = 3.0):
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        return future.result() if future.done() else None

    def _send_reset(self, node: str, text: str, nonce: str) -> None:
        self.nonces.add(nonce)
        pub = self.reset[node]
        deadline = time.monotonic() + 3.0
        while pub.get_subscription_count() < 2 and time.monotonic() < deadline:  # the node's and the probe's
            time.sleep(0.01)
        pub.publish(self.String(data=text))

    def attack(self, targets: Sequence[str], log: dict) -> None:
        """Everything, against the live nodes in `targets` ("controller", "monitor"); the
        outcomes go into `log` (lists of strings)."""
        from rclpy.parameter import Parameter

        from algd_runtime.contract.keys import canonical
        from algd_runtime.deploy.safety import reset_proof, sign_heartbeat

        # 1. The e-stop cleared by someone else.
        for _ in range(5):
            self.estop.publish(self.Bool(data=False))
            time.sleep(0.01)
        log.setdefault("estop_false", []).append("published 5x")
        # 2. The unauthenticated services.
        if "monitor" in targets:
            r = self._call(self.trigger, self.Trigger.Request())
            log.setdefault("trigger_reset", []).append("no answer" if r is None else f"success={r.success}")
            event = {"event": "end", "index": 10_000, "return": 0.0, "cost": 0.0, "steps": 1, "reason": "forged",
                     "forged": True}
            self.episode.publish(self.String(data=json.dumps(event)))
            log.setdefault("forged_episode_end", []).append("published")
        r = self._call(self.reset_episode, self.Trigger.Request())
        log.setdefault("sim_reset_episode", []).append("no answer" if r is None else f"success={r.success}")
        # 3. Heartbeats: signed with a wrong key, unsigned, replayed.
        hbs = list(self.probe.heartbeats)
        boot, seq = (hbs[-1][1], hbs[-1][2]) if hbs else ("0" * 16, 0)
        replays = [h[4] for h in hbs if h[3] == "OK"][:20] + [h[4] for h in hbs[-5:]]
        for i in range(50):
            payload = {"boot": boot, "seq": seq + 1000 + i, "level": "OK", "latched": False, "reason": "",
                       "episode": 0, "t": 0, "accumulated": 0.0, "limit": 1e9, "seen_stamp_ns": None, "missed": 0}
            forged = (sign_heartbeat(self.wrong_key, self.probe.ns, payload), canonical(payload),
                      json.dumps({"body": canonical(payload), "mac": ""}))
            for text in forged:
                self.heartbeat.publish(self.String(data=text))
            if replays:
                self.heartbeat.publish(self.String(data=replays[i % len(replays)]))
            time.sleep(0.01)
        log.setdefault("forged_heartbeats", []).append(f"150 forged (wrong key, unsigned, empty MAC) and "
                                                      f"{50 if replays else 0} replayed")
        # 4. Reset requests: malformed, invented, a real nonce with a wrong-key proof, the
        #    other node's nonce, and replays of every proof seen on the wire.
        for node in targets:
            self._send_reset(node, "reset please", "")
            fake = secrets.token_hex(16)
            self._send_reset(node, json.dumps({"nonce": fake, "proof": secrets.token_hex(32)}), fake)
            r = self._call(self.challenge[node], self.Trigger.Request())
            if r is not None:
                c = json.loads(r.message)
                self._send_reset(node, json.dumps({"nonce": c["nonce"], "proof": reset_proof(
                    self.wrong_key, c["node"], c["nonce"])}), c["nonce"])
            other = "monitor" if node == "controller" else "controller"
            if other in targets:
                r = self._call(self.challenge[other], self.Trigger.Request())
                if r is not None:
                    c = json.loads(r.message)
                    self._send_reset(node, json.dumps({"nonce": c["nonce"], "proof": reset_proof(
                        self.wrong_key, c["node"], c["nonce"])}), c["nonce"])
            for _, n, text in list(self.probe.resets):
                if n == node:
                    try:
                        nonce = str(json.loads(text)["nonce"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    if nonce in self.nonces:
                        continue  # one of ours
                    log.setdefault("replayed_proofs", []).append(f"{node}: {nonce[:8]}")
                    self.reset[node].publish(self.String(data=text))
        # 5. Parameter sets that would take the safety away.
        sets = {"controller": [Parameter("safe_action", value="1.0,1.0"),
                               Parameter("remaining_budget", value=float("-inf"))],
                "monitor": [Parameter("cost_limit", value=500.0)]}
        for node in targets:
            client = self.params[node]
            if not client.wait_for_services(timeout_sec=5.0):
                log.setdefault("parameter_sets", []).append(f"{node}: parameter services unreachable")
                continue
            for p in sets[node]:
                future = client.set_parameters([p])
                deadline = time.monotonic() + 5.0
                while not future.done() and time.monotonic() < deadline:
                    time.sleep(0.005)
                res = future.result().results[0] if future.done() and future.result() else None
                log.setdefault("parameter_sets", []).append(
                    f"{node}.{p.name}={p.value}: " + ("no answer" if res is None else
                                                       f"successful={res.successful} ({res.reason})"))
        time.sleep(0.3)  # let the last messages land

    def close(self) -> None:
        self.probe.executor.remove_node(self.node)
        self.node.destroy_node()


def _fault_hostile(run: Run) -> None:
    run.warm_up(episodes=1)  # with stop_latch operator the first spent budget latches the monitor's STOP
    run.expect_latch = ("monitor_lost",)
    hostile = Hostile(run.probe)
    attacks: dict[str, dict] = {}
    try:
        run.wait(lambda: not run.moving(QUIET_S) and run.probe.heartbeats[-1][3] == "STOP", 10.0,
                 "the robot to hold at the monitor's STOP")
        run.episodes_before_fault = len(run.probe.ends)
        level = run.probe.heartbeats[-1][3] if run.probe.heartbeats else None
        run.evidence["monitor_level_before_attack"] = level
        if level != "STOP":
            run.problems.append(f"hostile: the monitor is not at STOP before the attack ({level}): vacuous")
        # Phase A: the monitor holds a STOP that only the operator clears.
        a0 = time.monotonic()
        attacks["monitor_stop"] = log = {}
        hostile.attack(("controller", "monitor"), log)
        a1 = time.monotonic()
        _check_attack(run, "monitor at STOP", a0, a1, log, hostile)
        # The operator's reset does restart it (the attacks failed on a live, resumable graph).
        run.operator_reset()
        moved = run.wait_motion(a1, "episodes after the operator's reset (phase A)")
        run.evidence["operator_reset_restarts_motion"] = moved
        # Phase B: the monitor killed, the controller latched.
        run.wait(lambda: not run.moving(QUIET_S), 10.0, "the robot to hold (the monitor's STOP again)")
        inj = _kill_monitor(run)
        run.injections.append(inj)
        run.sleep_until(inj.at + 0.3)
        b0 = time.monotonic()
        attacks["controller_latched"] = log = {}
        hostile.attack(("controller",), log)
        b1 = time.monotonic()
        _check_attack(run, "controller latched", b0, b1, log, hostile)
        run.sleep_until(max(b1 + 0.5, run.t_fault + run.seconds))
    finally:
        hostile.close()
    run.evidence["attacks"] = attacks


def _check_attack(run: Run, phase: str, t0: float, t1: float, log: dict, hostile: Hostile) -> None:
    steps = run.probe.steps_between(t0, t1)
    accepted = [r for t, n, r in run.probe.results if t0 <= t <= t1 and r.get("ok")]
    refused = [r for t, n, r in run.probe.results if t0 <= t <= t1 and not r.get("ok")]
    log["steps_during_attack"] = steps
    log["resets_refused"] = len(refused)
    log["attack_s"] = round(t1 - t0, 2)
    if steps:
        run.problems.append(f"hostile ({phase}): the robot took {steps} steps during the attack")
    if accepted:
        run.problems.append(f"hostile ({phase}): reset accepted: {accepted}")
    if not refused:
        run.problems.append(f"hostile ({phase}): no refusal heard on reset_result (did the resets arrive?)")
    sets = log.get("parameter_sets", [])
    if not sets or any("successful=False" not in s for s in sets):
        run.problems.append(f"hostile ({phase}): parameter sets not all refused: {sets}")
    trig = log.get("trigger_reset", [])
    if any("success=True" in s for s in trig):
        run.problems.append(f"hostile ({phase}): the unauthenticated reset service succeeded")


RUNNERS: dict[str, Callable[[Run], None]] = {
    "none": _fault_none, "kill_monitor": _fault_cycles, "late_monitor": _fault_late_monitor,
    "restart_monitor": _fault_cycles, "sigstop_monitor": _fault_cycles,
    "kill_controller": _fault_cycles, "sigstop_controller": _fault_cycles, "hostile": _fault_hostile,
    "cost_drop": _fault_none, "cost_late": _fault_none, "episode_lost": _fault_none,
    "robot_first": _fault_robot_first,
    "duplicate_controller": _fault_duplicate_controller,
}


# -- the analysis ----------------------------------------------------------------------------------
# -- entry points ----------------------------------------------------------------------------------
