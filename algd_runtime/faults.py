"""Fault injection against the safety layer (`algd-bench safety`, tests/test_faults.py).

Each run starts the controller, the monitor and the sim robot as three processes
(launcher.node_command, the launch YAML) in a namespace of their own, on PointHazard-v0
with hazard_scale 10: the hazard covers the whole arena, so EVERY step costs 1 and every
episode would overspend its budget (5) after five steps without the safety layer. The run
waits until episodes run (a probe in this process counts the robot's "end" events live),
injects one fault, keeps running, stops every node with SIGINT and reads their summaries.

    none                  baseline
    kill_monitor          SIGKILL the monitor: the controller latches monitor_lost within its
                          deadline and the robot stays held
    late_monitor          the monitor starts 3 s after the others: no step before its first heartbeat
    restart_monitor       SIGKILL + a new monitor (same state_file): the controller latches
                          monitor_restarted; only the operator's reset brings motion back
    sigstop_monitor       SIGSTOP the monitor 2 s, SIGCONT, operator reset
    kill_controller       SIGKILL the controller: the robot holds after cmd_timeout_s
    hostile               with the monitor at STOP (stop_latch operator), then with the
                          controller latched (monitor killed): e-stop clears, the unauthenticated
                          reset service, forged/unsigned/replayed heartbeats, bad/replayed reset
                          proofs, parameter sets, a forged episode end: nothing may move the robot
    duplicate_controller  a second controller in the namespace: both latch, the robot holds

The repeatable faults (kill_monitor, restart_monitor, sigstop_monitor, kill_controller) are
injected again after a recovery (a new process and/or the operator's reset, then episodes
running again) while the run's time allows, for p50/p99 of fault -> safe.

fault -> safe: from the injection (time.monotonic() here) to the first moment the robot is
held for the fault: the first sim hold (CLOCK_MONOTONIC, from its summary) whose reason
shows the fault, or the controller's first STOP decision for it (its log, wall clock turned
into monotonic), whichever is first (the latter when the robot was already holding between
episodes, so that no new hold began). A robot that was holding when its controller died and
never stepped again counts as safe at the injection; one that took its leased steps and then
never stepped again (for at least QUIET_S, until the recovery) is safe from its last step. The expectation is
    p99 <= deadline (monitor_timeout_s, cmd_timeout_s, the controller's 0.1 s graph check)
           + one control period + SCHED_ALLOWANCE_S
where SCHED_ALLOWANCE_S covers the scheduling of four Python processes (three nodes and this
harness) on a small machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from algd_runtime.safety import GRAPH_SETTLE_S

FAULTS = ("none", "kill_monitor", "late_monitor", "restart_monitor", "sigstop_monitor", "kill_controller",
          "hostile", "duplicate_controller")
# With an io file (standard messages), the robot's own faults too; hostile and
# duplicate_controller are the raw contract's (forged episode events, our action topic).
IO_FAULTS = ("none", "kill_monitor", "late_monitor", "restart_monitor", "sigstop_monitor", "kill_controller",
             "cost_drop", "cost_late", "episode_lost", "robot_first")
IO_ROBOT_FAULTS = {"cost_drop": {"io_cost_drop": 0.1}, "cost_late": {"io_cost_late": 0.3},
                   "episode_lost": {"io_episode_drop": 0.1}}
IO_LEASE_STEPS = 2  # an expiring command's expiry in these runs: 2 periods
RATE_VARIANTS = ("none@100", "none@1000")  # the baseline at other control rates
DEFAULT_RATES = (500.0,)

TASK = "PointHazard-v0"
HAZARD_SCALE = 10.0  # the hazard covers the arena: every step costs 1
CMD_TIMEOUT_S = 0.2  # the sim's command timeout in these runs
SCHED_ALLOWANCE_S = 0.03  # scheduling allowance on top of deadline + one control period
MONITOR_LATE_S = 3.0
SIGSTOP_S = 2.0
WARMUP_TIMEOUT_S = 60.0
# Holds that are the budget's (the controller's or the monitor's) or the start's, not a fault's.
BUDGET_HOLDS = ("stop: budget", "stop: monitor at STOP: budget", "estop", "no_command",
                "stop: no heartbeat from the monitor yet")
QUIET_S = 0.5  # no step for this long: the robot is not moving
REVIVE_AFTER_S = 2.5  # no episode for this long without a fault: look at why (discovery or a latch)
# Decisions that only wait for DDS discovery: more time, never a revival.
DISCOVERY_WAITS = ("no heartbeat from the monitor yet", "does not see the robot", "starting: ")
LOG_FORMAT = "[{severity}] [{time}] [{name}]: {message}"
_LOG_LINE = re.compile(r"^\[(\w+)\] \[(\d+(?:\.\d+)?)\] \[[^\]]*\]: (.*)$")

_counter = iter(range(1_000_000))


def last_warnings(log_file: Path, n: int = 3) -> list[str]:
    """The last n WARN/ERROR/FATAL lines of a node's log (LOG_FORMAT), their message only."""
    try:
        text = Path(log_file).read_text(errors="replace")
    except OSError:
        return []
    found = [mt.group(3) for line in text.splitlines()
             if (mt := _LOG_LINE.match(line.strip())) and mt.group(1) in ("WARN", "ERROR", "FATAL")]
    return found[-n:]


# -- the harness's own ROS participant ------------------------------------------------------------
class Probe:
    """Listens on the run's namespace: episode ends, steps (with the sim's stamps, turned into
    CLOCK_MONOTONIC), heartbeats (kept for restarts and replays) and the reset traffic. Spins
    in a thread of its own; the hostile node lives in the same context."""

    def __init__(self, namespace: str, domain_id: int) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray, String

        from algd_runtime.ros_nodes import messages as m

        self.ns = "/" + namespace.strip("/")
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"fault_probe_{os.getpid()}", namespace=self.ns, context=self.ctx)
        self.offset = time.time() - time.monotonic()  # wall - monotonic, on this machine
        self.ends: list[tuple[float, dict]] = []
        self.steps: list[float] = []  # monotonic time of each step, from its stamp
        self.epoch = 0  # which sim process (a new sim counts its episodes from 0 again)
        self.episode_cost: dict[tuple[int, int], float] = {}
        self.heartbeats: list[tuple[float, str, int, str, str]] = []  # (received, boot, seq, level, text)
        self.resets: list[tuple[float, str, str]] = []  # (received, node, text) on <node>/reset
        self.results: list[tuple[float, str, dict]] = []  # (received, node, result) on <node>/reset_result
        self.errors: list[str] = []
        node = self.node
        # A deep reader queue: the probe must not lose a step (a step it never saw could be
        # one the robot should not have taken) when this process falls behind for a moment.
        deep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(String, m.EPISODE, self._on_episode, deep)
        node.create_subscription(Float64MultiArray, m.STEP, self._on_step, deep)
        node.create_subscription(String, m.HEARTBEAT, self._on_heartbeat, deep)
        for name in ("controller", "monitor"):
            node.create_subscription(String, f"{name}/reset", lambda msg, n=name: self.resets.append(
                (time.monotonic(), n, msg.data)), m.RELIABLE)
            node.create_subscription(String, f"{name}/reset_result", lambda msg, n=name: self._on_result(n, msg),
                                     m.RELIABLE)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(node)
        self._running = True
        self.thread = threading.Thread(target=self._spin, name="fault-probe", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # noqa: BLE001 -- shutting down, or a bad message: keep the reason
                if not self._running:
                    return
                self.errors.append(repr(exc))
                time.sleep(0.01)

    def _on_episode(self, msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        if event.get("event") == "end" and not event.get("forged"):
            self.ends.append((time.monotonic(), event))

    def _on_step(self, msg) -> None:
        d = msg.data
        if len(d) >= 8:
            self.steps.append(float(d[6]) + float(d[7]) * 1e-9 - self.offset)
            ep = (self.epoch, int(d[4]))
            self.episode_cost[ep] = self.episode_cost.get(ep, 0.0) + float(d[1])

    def _on_heartbeat(self, msg) -> None:
        try:
            body = json.loads(json.loads(msg.data)["body"])
            self.heartbeats.append((time.monotonic(), str(body["boot"]), int(body["seq"]), str(body["level"]),
                                    msg.data))
        except (ValueError, KeyError, TypeError):
            pass  # a forgery (ours): not the monitor's

    def _on_result(self, node: str, msg) -> None:
        try:
            self.results.append((time.monotonic(), node, json.loads(msg.data)))
        except ValueError:
            pass

    # -- queries -----------------------------------------------------------------------------
    def ends_since(self, t: float) -> int:
        """Episodes that ended after t having moved after t (an episode ended by a hold, with
        no step since t, is not motion)."""
        first_step = next((s for s in list(self.steps) if s > t), None)
        if first_step is None:
            return 0
        return sum(1 for at, _ in list(self.ends) if at > first_step)

    def steps_between(self, t0: float, t1: float = math.inf) -> int:
        return sum(1 for s in list(self.steps) if t0 < s <= t1)

    def last_step(self) -> float:
        return self.steps[-1] if self.steps else -math.inf

    def boots(self) -> list[str]:
        seen: list[str] = []
        for _, boot, *_ in list(self.heartbeats):
            if boot not in seen:
                seen.append(boot)
        return seen

    def publishers(self, topic: str) -> int:
        return self.node.count_publishers(f"{self.ns}/{topic}")

    def close(self) -> None:
        self._running = False
        self.thread.join(timeout=5.0)
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self.ctx.try_shutdown()


# -- the three processes -------------------------------------------------------------------------
class Graph:
    """Controller, monitor and sim (and any later instance: "monitor_2", "sim_2", ...) as
    processes, each with its summary file and log in workdir."""

    def __init__(self, bundle: Path, workdir: Path, namespace: str, rate: float, env: dict, key_file: Path,
                 monitor_latch: str = "episode", io: Path | None = None, sim_extra: dict | None = None) -> None:
        from algd_runtime.ros_nodes.launcher import default_params

        self.bundle, self.workdir, self.ns, self.rate, self.env = bundle, workdir, namespace, rate, env
        self.params = default_params()
        self.key_file, self.monitor_latch = key_file, monitor_latch
        # With an io file every step in the hazard costs one per 10 ms, whatever the rate (a cost
        # per unit of time): a stop over standard messages takes some steps to land.
        self.io, self.sim_extra = io, dict(sim_extra or {})
        self.step_cost = io_step_cost(rate) if io else 1.0
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.killed: set[str] = set()  # SIGKILLed here
        self.ended: set[str] = set()  # stopped with SIGINT here before the run's end
        self.paused: set[str] = set()  # SIGSTOPped now

    def overrides(self, node: str, label: str) -> dict:
        summary = self.workdir / f"{label}.json"
        io = {"io": self.io} if self.io else {}
        if node == "controller":
            return {"provider": "cpu", "control_rate_hz": float(self.rate), "obs_timeout_s": max(3.0 / self.rate, 0.01),
                    "operator_key_file": self.key_file, "stop_latch": "episode", "max_step_cost": self.step_cost,
                    "summary_file": summary, **io}
        if node == "monitor":
            return {"operator_key_file": self.key_file, "state_file": self.workdir / "monitor_state.json",
                    "stop_latch": self.monitor_latch, "max_step_cost": self.step_cost, "use_critic": "false",
                    "summary_file": summary, **io}
        extra = {"io_steps": "true", "cost_scale": self.step_cost, **self.sim_extra} if self.io else {}
        return {"task": TASK, "rate_hz": float(self.rate), "hazard_scale": HAZARD_SCALE, "cmd_timeout_s": CMD_TIMEOUT_S,
                "summary_file": summary, **io, **extra}

    @property
    def trigger(self) -> str | None:
        """The io file's trigger topic (the sim's state), or None for the raw contract."""
        if not self.io:
            return None
        from algd_runtime.adapters import load_io

        return load_io(str(self.io)).trigger

    def next_label(self, node: str) -> str:
        n = len(self.labels(node))
        return node if n == 0 else f"{node}_{n + 1}"

    def start(self, node: str) -> str:
        from algd_runtime.ros_nodes.launcher import node_command

        label = self.next_label(node)
        (self.workdir / f"{label}.json").unlink(missing_ok=True)
        cmd = node_command(node, self.ns, self.params, str(self.bundle) if node != "sim" else None,
                           **self.overrides(node, label))
        with open(self.workdir / f"{label}.log", "w") as log:
            self.procs[label] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.started[label] = time.monotonic()
        return label

    def send(self, label: str, sig: int) -> None:
        self.procs[label].send_signal(sig)
        if sig == signal.SIGKILL:
            self.killed.add(label)
            self.procs[label].wait(timeout=10.0)
        elif sig == signal.SIGSTOP:
            self.paused.add(label)
        elif sig == signal.SIGCONT:
            self.paused.discard(label)

    def end(self, label: str, timeout: float = 20.0) -> None:
        """SIGINT one node (it writes its summary) and wait for it."""
        from algd_runtime.ros_nodes.launcher import stop_nodes

        self.ended.add(label)
        stop_nodes({label: self.procs[label]}, timeout=timeout)

    def current(self, node: str) -> str:
        """The newest instance of `node` that was not killed or ended here."""
        alive = [n for n in self.labels(node) if n not in self.killed and n not in self.ended]
        return alive[-1] if alive else self.labels(node)[-1]

    def dead(self) -> dict[str, int]:
        """Processes that exited on their own (not killed or ended here): {label: exit status}."""
        return {n: p.returncode for n, p in self.procs.items()
                if p.poll() is not None and n not in self.killed and n not in self.ended}

    def stop(self, timeout: float = 20.0) -> dict[str, str]:
        from algd_runtime.ros_nodes.launcher import stop_nodes

        for label in list(self.paused):
            self.send(label, signal.SIGCONT)
        return stop_nodes({n: p for n, p in self.procs.items() if n not in self.killed}, timeout=timeout)

    def summary(self, label: str) -> dict | None:
        try:
            return json.loads((self.workdir / f"{label}.json").read_text())
        except (OSError, ValueError):
            return None

    def log_lines(self, label: str, offset: float) -> list[tuple[float, str]]:
        """(monotonic time, message) of every ROS log line of a node."""
        out = []
        try:
            text = (self.workdir / f"{label}.log").read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            mt = _LOG_LINE.match(line.strip())
            if mt:
                out.append((float(mt.group(2)) - offset, mt.group(3)))
        return out

    def last_warnings(self, label: str, n: int = 3) -> list[str]:
        """A node's last n warning or error lines: why it holds, when a wait times out."""
        return last_warnings(self.workdir / f"{label}.log", n)

    def stop_lines(self, label: str, offset: float) -> list[tuple[float, str]]:
        """The controller's STOP decisions from its log: (monotonic time, reason)."""
        return [(t, msg[6:]) for t, msg in self.log_lines(label, offset) if msg.startswith("STOP: ")]

    def labels(self, node: str) -> list[str]:
        return [n for n in self.procs if n == node or n.startswith(node + "_")]


def _merge_sims(summaries: list[dict]) -> dict:
    out: dict = {"steps": 0, "episodes": 0, "costs": [], "holds": [], "ended_by": [], "lease_waits": 0}
    for s in summaries:
        for k in ("steps", "episodes", "lease_waits"):
            out[k] += int(s.get(k, 0))
        for k in ("costs", "holds", "ended_by"):
            out[k] += list(s.get(k, []))
    out["holds"].sort(key=lambda h: h[0])
    return out


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

    def wait(self, done: Callable[[], bool], timeout: float, what: str | None) -> bool:
        """Until done(); on timeout a problem (unless `what` is None). A node that exits on its
        own aborts the run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            dead = self.graph.dead()
            if dead:
                raise _Abort(f"node(s) exited early: {dead}; see {self.graph.workdir}/<node>.log")
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
                return  # it moved and spent its budget: held for it, not without a fault (a reset
                # here cleared the operator-latched STOP that the hostile run waits for)
            if last.startswith("STOP: ") and not any(k in last for k in DISCOVERY_WAITS):
                since = time.monotonic()  # before the reset: an episode may end as soon as it is done
                self.warnings.append(f"{why}: no motion, the controller holds without a fault ({last[6:90]}); "
                                     f"operator reset")
                self.evidence["revivals"] = self.evidence.get("revivals", 0) + 1
                self.operator_reset()
        raise _Abort(f"{why}: the graph does not move (see {self.graph.workdir}/<node>.log)")

    def warm_up(self, episodes: int = 2) -> None:
        self.ensure_motion("warm-up", episodes)
        self.t_fault = time.monotonic()

    def before_injection(self) -> None:
        """A fault is injected into a moving robot only."""
        if not self.moving(QUIET_S):
            self.ensure_motion("before the fault")

    def operator_reset(self, nodes: Sequence[str] = ("controller", "monitor")) -> dict:
        from algd_runtime.ros_nodes.reset_cli import operator_reset

        out = operator_reset(self.graph.ns, list(nodes), self.key, timeout_s=10.0)
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


class _Abort(Exception):
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


def _kill_controller(run: Run) -> Injection:
    before = len(run.probe.ends)
    at = time.monotonic()
    run.graph.send(run.graph.current("controller"), signal.SIGKILL)
    return Injection(at, ("cmd_timeout",), CMD_TIMEOUT_S, before)


def _recover_killed_controller(run: Run, inj: Injection) -> bool:
    inj.until = time.monotonic()
    run.start_node("controller")  # it hears the observation the waiting robot re-sends
    run.ensure_motion("after a new controller")
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
    "kill_controller": Cycle(_kill_controller, _recover_killed_controller, 0.6, (), False, 8.0),
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
    run.injections.append(Injection(min([seen] + up[:1]), ("duplicate_controller",), GRAPH_SETTLE_S, before,
                                    log_labels=("controller",), early_s=0.25))
    run.sleep_until(max(run.t_fault + run.seconds, time.monotonic() + 2.0))
    moved = [t for t, msg in run.graph.log_lines(label, run.probe.offset) if msg.startswith("moving")]
    if moved:
        run.problems.append(f"duplicate_controller: the second controller commanded motion ({len(moved)} times)")


# -- hostile ---------------------------------------------------------------------------------------
class Hostile:
    """A node on the run's domain and namespace that tries everything but the operator key."""

    def __init__(self, probe: Probe) -> None:
        import rclpy
        from rclpy.parameter_client import AsyncParameterClient
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger

        from algd_runtime.ros_nodes import messages as m

        self.probe = probe
        self.node = rclpy.create_node(f"hostile_{os.getpid()}", namespace=probe.ns, context=probe.ctx)
        probe.executor.add_node(self.node)
        self.Bool, self.String, self.Trigger = Bool, String, Trigger
        self.estop = self.node.create_publisher(Bool, m.ESTOP, m.LATCHED)
        self.heartbeat = self.node.create_publisher(String, m.HEARTBEAT, m.RELIABLE)
        self.episode = self.node.create_publisher(String, m.EPISODE, m.RELIABLE)
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

        from algd_runtime.safety import canonical, reset_proof, sign_heartbeat

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


_FAULTS: dict[str, Callable[[Run], None]] = {
    "none": _fault_none, "kill_monitor": _fault_cycles, "late_monitor": _fault_late_monitor,
    "restart_monitor": _fault_cycles, "sigstop_monitor": _fault_cycles,
    "kill_controller": _fault_cycles, "hostile": _fault_hostile,
    "cost_drop": _fault_none, "cost_late": _fault_none, "episode_lost": _fault_none,
    "robot_first": _fault_robot_first,
    "duplicate_controller": _fault_duplicate_controller,
}


# -- the analysis ----------------------------------------------------------------------------------
def _analyze(inj: Injection, run: Run, holds: list, stop_lines: dict, end: float) -> dict:
    until = inj.until if inj.until is not None else end
    steps = list(run.probe.steps)
    cands = []
    hold = next(((t, r) for t, r in holds if inj.at <= t <= until and any(k in r for k in inj.reasons)), None)
    if hold:
        cands.append((hold[0], f"sim hold ({hold[1][:60]})"))
    firsts = [next(((t, r) for t, r in stop_lines.get(label, [])
                    if inj.at - inj.early_s <= t <= until and any(k in r for k in inj.reasons)), None)
              for label in inj.log_labels]
    if any(firsts):
        t, r = min(f for f in firsts if f)
        cands.append((max(t, inj.at), f"controller stop ({r[:60]})"))
    last_step = max((s for s in steps if s <= inj.at), default=-math.inf)
    last_hold = max((t for t, _ in holds if t <= inj.at), default=-math.inf)
    after = [s for s in steps if inj.at < s <= until]
    if last_hold > last_step and not after:
        cands.append((inj.at, "already holding; never stepped again"))
    elif not cands and after and until - max(after) >= QUIET_S:
        # No new hold began (the robot was between holds), but it stopped stepping: it is
        # safe from its last step on.
        cands.append((max(after), "the robot's last step; it never stepped again"))
    out = {"at_s": round(inj.at - run.t_fault, 3) if run.t_fault else None, "episodes_before": inj.episodes_before,
           "deadline_ms": (inj.deadline_s + run.period + SCHED_ALLOWANCE_S) * 1e3, "recovered": inj.until is not None,
           "steps_after_fault": sum(1 for s in steps if inj.at < s <= until)}
    # The pass rule is what safety means: no step after the fault's deadline (the time the
    # layer is allowed to take to hold the robot), whatever hold (or none) the log shows.
    # Which hold it was, and how soon, is a figure (safe_ms), not the rule.
    slack = run.period + SCHED_ALLOWANCE_S  # a step already leased may still land
    deadline_at = inj.at + inj.deadline_s + slack
    moved = sum(1 for s in steps if deadline_at < s <= until)
    safe_at, source = min(cands) if cands else (None, "none")
    out.update(safe_ms=None if safe_at is None else (safe_at - inj.at) * 1e3, source=source,
               steps_after_safe=moved)
    # A second controller is safe while it never commands: the running one may keep driving
    # until discovery shows it the other (both latch then; _finish checks that).
    if moved and run.fault != "duplicate_controller":
        run.problems.append(f"{run.fault}: the robot took {moved} steps after the fault's deadline "
                            f"({(deadline_at - inj.at) * 1e3:.0f} ms after the fault injected at {out['at_s']} s)")
    if inj.episodes_before < 1:
        run.problems.append(f"{run.fault}: no episode ran before the fault at {out['at_s']} s (vacuous)")
    return out


def _finish(run: Run, end: float, killed: dict) -> dict:
    g, probe = run.graph, run.probe
    sims = {label: g.summary(label) for label in g.labels("sim")}
    sim = _merge_sims([s for s in sims.values() if s])
    ctl = {label: g.summary(label) for label in g.labels("controller")}
    mon = {label: g.summary(label) for label in g.labels("monitor")}
    for label, s in list(ctl.items()) + list(mon.items()) + list(sims.items()):
        if s is None and label not in g.killed:
            run.problems.append(f"no summary from {label} (see {g.workdir}/{label}.log)")
    if killed:
        run.problems.append(f"node(s) did not exit on SIGINT: {killed}")
    costs = [float(c) for c in sim.get("costs", [])]
    over = sum(1 for c in costs if c > run.limit + 1e-9)
    live_over = {ep: c for ep, c in probe.episode_cost.items() if c > run.limit + 1e-9}
    if over:
        run.problems.append(f"{over} episode(s) over the budget {run.limit:g}: max cost {max(costs):g}")
    if live_over and not over:
        run.problems.append(f"episode(s) over the budget while running (unfinished at exit?): {live_over}")
    holds = [(float(t), str(r)) for t, r in sim.get("holds", [])]
    stop_lines = {label: g.stop_lines(label, probe.offset) for label in ctl}
    injections = [_analyze(inj, run, holds, stop_lines, end) for inj in run.injections]
    safe = [i["safe_ms"] for i in injections if i.get("safe_ms") is not None]
    p50 = float(np.percentile(safe, 50)) if safe else None
    p99 = float(np.percentile(safe, 99)) if safe else None
    deadline_ms = max((i["deadline_ms"] for i in injections), default=None)
    # A timing target, not a safety expectation: a late stop still held the budget (`over`).
    late = p99 is not None and p99 > deadline_ms
    ticks = sum(int(s.get("ticks", 0)) for s in ctl.values() if s)
    fallbacks = sum(int(s.get("fallbacks", 0)) for s in ctl.values() if s)
    latched = {label: (s or {}).get("latched") for label, s in ctl.items()}
    seen = set()
    for label, lines in stop_lines.items():
        for t, r in lines:
            if run.t_fault is None or t >= run.t_fault:
                for part in r.split("; "):
                    seen.add(part.split(":", 1)[0])
    for kind in run.expect_latch:
        if kind not in seen:
            run.problems.append(f"{run.fault}: the controller never stopped for {kind!r} (seen: {sorted(seen)})")
    if run.fault == "duplicate_controller":
        for label in ("controller", "controller_2"):
            if "duplicate_controller" not in ((ctl.get(label) or {}).get("latched") or {}):
                run.problems.append(f"duplicate_controller: {label} did not latch duplicate_controller "
                                    f"(latched: {latched.get(label)})")
    if run.fault in ("kill_monitor", "hostile") and run.injections and run.injections[-1].until is None:
        final = (ctl.get(run.graph.current("controller")) or {}).get("latched") or {}
        if "monitor_lost" not in final:
            run.problems.append(f"{run.fault}: the controller is not latched monitor_lost at the end ({final})")
    if run.fault in ("none", "late_monitor"):
        # No fault injected: a latch or a fault's hold is the controller's own doing (a heartbeat
        # late under load): safe, but the robot stopped; a warning, not a failed expectation.
        bad = {label: v for label, v in latched.items() if v}
        if bad:
            run.warnings.append(f"{run.fault}: latched without an injected fault: {bad}")
        faulty = sorted({r for _, r in holds if not r.startswith(BUDGET_HOLDS)})
        if faulty:
            run.warnings.append(f"{run.fault}: holds without an injected fault: {faulty[:5]}")
    if run.episodes_before_fault is None:
        run.episodes_before_fault = injections[0]["episodes_before"] if injections else None
    if run.fault not in ("late_monitor",) and not (run.episodes_before_fault or 0) >= 1:
        run.problems.append(f"{run.fault}: no episode before the fault (vacuous)")
    if not costs:
        run.problems.append(f"{run.fault}: no episode ended (vacuous)")
    if probe.errors:
        run.problems.append(f"probe errors: {probe.errors[:3]}")
    ended_by: dict[str, int] = {}
    for r in sim.get("ended_by", []):
        k = r.split(":")[0] if r.startswith("stop") else r
        k = r[:40] if k == "stop" else k
        ended_by[k] = ended_by.get(k, 0) + 1
    return {
        "fault": run.fault, "rate_hz": run.rate, "seconds": run.seconds, "namespace": g.ns,
        "workdir": str(g.workdir), "episodes": len(costs), "over_budget": over, "limit": run.limit,
        "max_cost": max(costs) if costs else None,
        "max_cost_ratio": max(costs) / run.limit if costs else None, "costs": costs,
        "episodes_before_fault": run.episodes_before_fault, "injections": injections,
        "fault_to_safe_ms": safe, "fault_to_safe_p50_ms": p50, "fault_to_safe_p99_ms": p99,
        "deadline_ms": deadline_ms, "sched_allowance_ms": SCHED_ALLOWANCE_S * 1e3,
        "ticks": ticks, "fallbacks": fallbacks, "fallback_pct": 100.0 * fallbacks / ticks if ticks else None,
        "steps": sim.get("steps"), "probe_steps": len(probe.steps), "lease_waits": sim.get("lease_waits"),
        "holds": len(holds), "ended_by": ended_by, "latched": latched,
        "monitor_level": {label: (s or {}).get("level") for label, s in mon.items()},
        "stop_kinds_seen": sorted(seen), "evidence": run.evidence,
        "heartbeat_max_gap_ms": _max_gap_ms(probe, run.t_fault, end),
        "ok": not run.problems, "target_met": not late, "problems": list(run.problems), "warnings": list(run.warnings),
    }


def _max_gap_ms(probe: Probe, t0: float | None, t1: float) -> float | None:
    """The longest silence between two heartbeats of one monitor process, as the probe heard them."""
    gaps = []
    hb = [(t, boot) for t, boot, *_ in list(probe.heartbeats) if t0 is None or t >= t0]
    for (ta, ba), (tb, bb) in zip(hb, hb[1:]):
        if ba == bb and tb <= t1:
            gaps.append(tb - ta)
    return max(gaps) * 1e3 if gaps else None


# -- entry points ----------------------------------------------------------------------------------
def _domain(domain_id: int | None) -> int:
    if domain_id is not None:
        return int(domain_id)
    env = os.environ.get("ROS_DOMAIN_ID")
    return int(env) if env and env.isdigit() else 80 + os.getpid() % 20


class _RosEnviron:
    """This process's own ROS participants (the probe, the operator's reset) on the run's
    domain, discovery on this machine only; the previous values come back afterwards."""

    def __init__(self, domain: int) -> None:
        self.values = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(domain)}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prepare_graph(bundle, workdir, rate_hz: float, domain_id: int | None, io, sim_extra: dict | None,
                  monitor_latch: str = "episode") -> tuple[Graph, int, float]:
    """The three processes' Graph for one run in workdir (its own namespace, domain, operator
    key and monitor state), the domain, and the budget's limit from the bundle."""
    from algd_runtime.runtime import read_manifest
    from algd_runtime.safety import create_key

    bundle, workdir = Path(bundle), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    budget = read_manifest(bundle).get("budget") or {}
    limit = float(budget.get("cost_limit") or 5.0)
    key_file = workdir / "operator.key"
    if not key_file.exists():
        create_key(key_file)
    (workdir / "monitor_state.json").unlink(missing_ok=True)
    domain = _domain(domain_id)
    ns = f"faults_{os.getpid()}_{next(_counter)}"
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
               XDG_STATE_HOME=str(workdir), RCUTILS_CONSOLE_OUTPUT_FORMAT=LOG_FORMAT, RCUTILS_COLORIZED_OUTPUT="0")
    io_file = io_for_rate(Path(io), rate_hz, workdir) if io else None
    graph = Graph(bundle, workdir, ns, rate_hz, env, key_file, monitor_latch=monitor_latch, io=io_file,
                  sim_extra=sim_extra)
    return graph, domain, limit


def run_fault(fault: str, rate_hz: float, seconds: float, bundle, workdir, domain_id: int | None = None,
              io=None) -> dict:
    """One fault at one control rate: the three nodes as processes, the fault, the numbers.
    The result has `ok` and `problems` (each failed expectation, in words). io: an io file:
    the graph speaks standard messages (its rate_hz, and an expiring command's expiry of
    IO_LEASE_STEPS periods, set for the run's rate)."""
    names = IO_FAULTS if io else FAULTS
    if fault not in names:
        raise ValueError(f"fault: expected one of {', '.join(names)}{' (with --io)' if io else ''}, got {fault!r}")
    if not (rate_hz > 0 and seconds > 0):
        raise ValueError(f"rate_hz and seconds: expected values > 0, got {rate_hz}, {seconds}")
    from algd_runtime.ros_nodes.launcher import shipped_param
    from algd_runtime.safety import load_key

    graph, domain, limit = prepare_graph(bundle, workdir, float(rate_hz), domain_id, io, IO_ROBOT_FAULTS.get(fault),
                                         monitor_latch="operator" if fault == "hostile" else "episode")
    workdir = graph.workdir
    with _RosEnviron(domain):
        probe = Probe(graph.ns, domain)
        run = Run(fault, float(rate_hz), float(seconds), graph, probe, load_key(graph.key_file), limit,
                  float(shipped_param("controller", "monitor_timeout_s", 0.05)))
        killed: dict = {}
        try:
            if fault not in ("late_monitor", "robot_first"):
                run.start_graph()
            _FAULTS[fault](run)
        except _Abort as exc:
            run.problems.append(str(exc))
        finally:
            end = time.monotonic()
            killed = graph.stop()
            time.sleep(0.2)  # the last messages reach the probe
            probe.close()
        result = _finish(run, end, killed)
    (workdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def io_step_cost(rate: float, per_second: float = 100.0) -> float:
    """A step's cost in the hazard when the robot speaks standard messages: 1 per 10 ms
    (`per_second`), whatever the rate (a stop over standard messages takes some steps to land)."""
    return per_second / rate


def io_for_rate(io: Path, rate: float, workdir: Path) -> Path:
    """The io file with the robot's rate set to the run's (and an expiring command's expiry
    to IO_LEASE_STEPS periods), written beside the run."""
    import yaml

    cfg = yaml.safe_load(io.read_text())
    cfg["rate_hz"] = rate
    if isinstance(cfg.get("action"), dict) and "expires_after_s" in cfg["action"]:
        cfg["action"]["expires_after_s"] = IO_LEASE_STEPS / rate
        cfg.pop("steps_ahead", None)
    out = workdir / "io.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _cells(faults: Sequence[str] | None, rates: Sequence[float] | None, io=None) -> list[tuple[str, float]]:
    """'name' runs at each of `rates`; 'name@rate' at that rate only. With an io file the
    default is every io fault at 100, 500 and 1000 Hz."""
    names = IO_FAULTS if io else FAULTS
    rates = [float(r) for r in (rates or ((100.0, 500.0, 1000.0) if io else DEFAULT_RATES))]
    specs = list(faults) if faults else list(names) + ([] if io else list(RATE_VARIANTS))
    cells = []
    for spec in specs:
        name, _, at = spec.partition("@")
        if name not in names:
            raise ValueError(f"fault: expected one of {', '.join(names)} (optionally @rate), got {spec!r}")
        for rate in ([float(at)] if at else rates):
            if (name, rate) not in cells:
                cells.append((name, rate))
    return cells


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def bench_safety(bundle, faults: Sequence[str] | None = None, rates: Sequence[float] | None = None,
                 seconds: float = 8.0, echo: Callable[[str], None] = print, workdir=None,
                 domain_id: int | None = None, io=None, load: int = 0) -> list[dict]:
    """Every fault (default: all, at 500 Hz, plus the baseline at 100 and 1000 Hz) as one
    run each; prints a table and returns the results (run_fault's dicts)."""
    import tempfile

    cells = _cells(faults, rates, io)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="algd-faults-")
        workdir = tmp.name
    root = Path(workdir)
    from algd_runtime.machine import machine_line

    echo(machine_line("cpu"))
    cost = "1 per 10 ms (a step at rate R costs 100 / R)" if io else "1"
    echo(f"bundle: {bundle}; controller, monitor and sim as processes{', io ' + str(io) if io else ''}, every step "
         f"costs {cost} (hazard_scale {HAZARD_SCALE:g}), {seconds:g} s after warm-up per cell; fault -> safe deadline "
         f"= mechanism + one period + {SCHED_ALLOWANCE_S * 1e3:g} ms; ok: no episode over the budget, no step after "
         f"a fault's deadline, not vacuous; {load} CPU-bound process(es) beside")
    header = (f"{'fault':<21} {'rate Hz':>7} {'episodes':>8} {'over':>4} {'max/budget':>10} {'n':>2} "
              f"{'f->safe p50':>11} {'p99 ms':>7} {'deadline':>8} {'fallback %':>10}  ok")
    echo(header)
    echo("-" * len(header))
    rows = []
    import subprocess as sp
    import sys

    burners = [sp.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        for fault, rate in cells:
            r = run_fault(fault, rate, seconds, bundle, root / f"{fault}_{rate:g}", domain_id, io=io)
            rows.append(r)
            ratio = "-" if r["max_cost_ratio"] is None else f"{r['max_cost_ratio']:.2f}"
            fb = "-" if r["fallback_pct"] is None else f"{r['fallback_pct']:.1f}"
            echo(f"{fault:<21} {rate:>7g} {r['episodes']:>8} {r['over_budget']:>4} {ratio:>10} "
                 f"{len(r['fault_to_safe_ms']):>2} {_ms(r['fault_to_safe_p50_ms']):>11} "
                 f"{_ms(r['fault_to_safe_p99_ms']):>7} {_ms(r['deadline_ms']):>8} {fb:>10}  "
                 f"{'yes' if r['ok'] else 'NO'}{'' if r['target_met'] else ' (p99 late)'}")
            for p in r["problems"]:
                echo(f"    problem: {p}")
    finally:
        for b in burners:
            b.kill()
            b.wait()
        if tmp is not None:
            tmp.cleanup()
    return rows
