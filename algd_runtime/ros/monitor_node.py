"""algd-monitor: watches accumulated cost against the budget and escalates.

Thin: BudgetMonitor (algd_runtime.deploy.monitor) decides; this node feeds it each step's cost and
the exported cost critic's prediction for the newest (observation, action), and carries out
the level's response, which its signed heartbeat carries to the controller (a topic, not the
controller's parameter service: a monitor that stalls mid-call must not stall the controller):
    WARN  -> raise the controller's lagrange_multiplier and guidance_scale (within bounds)
    ERROR -> shielded best-of-N (remaining_budget = what is left of the budget, kept current)
    STOP  -> latched e-stop on `estop` (re-asserted every estop_period_s) and STOP in the
             heartbeat, until the operator's reset (algd-reset: an HMAC over a fresh nonce)
             clears it, or with stop_latch:=episode until the robot's episode ends. A STOP
             latched for the operator is kept in state_file: a restarted monitor starts in it.
    OK    -> no response: the controller's own parameters

Its signed heartbeat (heartbeat_rate_hz) is the controller's interlock: no live monitor, no
motion. A step whose sequence number skips ahead counts the missing steps as the worst case.
It reads the commands at each step: two publishers' commands interleaving on the command
topic (a second controller) latch STOP, before the controllers have discovered each other.
With an io file (parameter `io`, the controller's) each message on its cost topic is a step
and its episode topic ends the episode; the heartbeat's seen_stamp_ns is then the wall-clock
time it read the newest cost (the controller and the monitor share a clock).
"""

from __future__ import annotations

import math
import secrets
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, String
from std_srvs.srv import Trigger

from algd_runtime.deploy.adapters import load_io
from algd_runtime.deploy.monitor import ESCALATION, BudgetMonitor, Level, MonitorConfig, level_response
from algd_runtime.ros import messages as m
from algd_runtime.ros import params
from algd_runtime.ros.entry import run_node
from algd_runtime.ros.managed import ManagedNode
from algd_runtime.ros.operator import ResetEndpoint
from algd_runtime.ros.suspend import RESTART_AFTER_SUSPEND_S
from algd_runtime.ros.realtime import DEFAULT_SLICE_US
from algd_runtime.ros.recorder import McapRecorder
from algd_runtime.deploy.runtime import PolicyRuntime
from algd_runtime.contract.signing import SIGNATURE_DEFAULTS, check_bundle
from algd_runtime.contract.budget import resolve_budget
from algd_runtime.contract.keys import default_key_path, load_key
from algd_runtime.deploy.safety import (RESTART_PREFIX, CostMatcher, LatchStore, SecondCommander, StopDistance,
                                        restart_reason, sign_heartbeat)


CONFIG_KEYS = ("cost_limit", "accounting", "window_steps", "warn_at", "error_at", "stop_at", "stop_on", "stop_latch",
               "hysteresis", "clear_steps", "max_step_cost", "steps_ahead")
LIVE = ("warn_at", "error_at", "stop_at", "hysteresis", "clear_steps", "warn_lambda_factor", "warn_rate_factor",
        "lambda_max", "warn_guidance", "error_best_of_n")  # what a parameter set may change while running
_DIAG_LEVEL = {Level.OK: DiagnosticStatus.OK, Level.WARN: DiagnosticStatus.WARN,
               Level.ERROR: DiagnosticStatus.ERROR, Level.STOP: DiagnosticStatus.ERROR}


# Every parameter and its default (launch/controller.yaml states them; tests/test_launch.py).
DEFAULTS = {"bundle": "", "cost_limit": -1.0, "accounting": "episode", "window_steps": 1000, "warn_at": 0.5,
            "error_at": 0.8, "stop_at": 1.0, "stop_on": "budget", "stop_latch": "operator", "hysteresis": 0.1,
            "clear_steps": 20, "max_step_cost": -1.0, **ESCALATION, "use_critic": True, "io": "", "record": "", "summary_file": "",
            "operator_key_file": "", "state_file": "", "heartbeat_rate_hz": 100.0, "estop_period_s": 1.0,
            "autostart": True, "sched_slice_us": DEFAULT_SLICE_US, "realtime_priority": 0, "cpu_affinity": [],
            "restart_after_suspend_s": RESTART_AFTER_SUSPEND_S, "executor": "lean", **SIGNATURE_DEFAULTS}


class MonitorNode(ManagedNode):
    """A managed node. configure loads the bundle's budget (and a STOP latched before),
    activate starts the heartbeat and the e-stop's state; an inactive monitor keeps
    accounting every step but holds the e-stop and sends no heartbeat, so nothing moves
    while nobody watches. `autostart` (default) configures and activates at start."""

    NAME = "monitor"

    def __init__(self, **overrides):
        super().__init__(self.NAME, **overrides)
        self.defaults = DEFAULTS
        self.values = params.declare(self, self.defaults)
        self.signature = None  # who signed the bundle (signing.check_bundle), once configured
        self.monitor: BudgetMonitor | None = None
        self.runtime = self.recorder = None
        self.boot, self.seq = secrets.token_hex(8), 0
        self.cfg = {k: self.values[k] for k in ESCALATION}
        self._obs = self._act = None
        self.commanders = SecondCommander()
        self._robot = (None, 0)  # (episode, t) of the newest step from the robot
        self.seen_stamp_ns: int | None = None
        self.episodes: list[dict] = []  # the robot's "end" events, with the monitor's level then
        self.sees_robot = False
        self._active_timers: list = []  # heartbeat and e-stop re-assertion, while active
        self._heartbeat_timer = None
        self._heartbeat_at = self._last_step_at = -math.inf
        self.qos = m.QosCheck(self)
        self.estop_pub = self.create_lifecycle_publisher(Bool, m.ESTOP, **m.endpoint(m.LATCHED, True))
        self.heartbeat_pub = self.create_lifecycle_publisher(String, m.HEARTBEAT, **m.endpoint(m.RELIABLE, True))
        self.diag = self.create_publisher(DiagnosticArray, "/diagnostics", **m.endpoint(m.DIAGNOSTICS, True))
        # The monitor's state for standard tools; latched, so a late subscriber has it at once.
        self.status_pub = self.create_publisher(DiagnosticStatus, m.MONITOR_STATUS, **m.endpoint(m.LATCHED, True))
        self.io = load_io(self.values["io"], m.message_class) if self.values["io"] else None
        self.action_map = None
        self._read_for_forecast: list = []  # subscriptions the forecast reads when it needs them (m.Polled)
        self.matcher: CostMatcher | None = None
        self._io_episode = 0
        self._reading = False  # inside _read_io: a message taken there is handled at once
        if self.io is None:
            self.step_sub = self.qos.watch(self.create_subscription(Float64MultiArray, m.STEP, self._on_step,
                                                                    **m.wired(m.RELIABLE, False)), False)
            self.qos.watch(self.create_subscription(String, m.EPISODE, self._on_episode, **m.wired(m.RELIABLE, False)),
                           False)
            # Read at each step, with no wake-up of their own: the commands (the forecast's
            # input, and a second commander's sign) and, for the forecast, the observation.
            polled = m.Polled()
            self._commands = self.create_subscription(JointState, m.ACTION, self._on_action, **m.wired(m.LATEST, False),
                                                      callback_group=polled)
            self._read_for_forecast = [self._commands]
            if self.values["use_critic"]:
                self._read_for_forecast.append(self.create_subscription(
                    JointState, m.OBSERVATION, self._on_obs, **m.wired(m.LATEST, False), callback_group=polled))
        else:
            subs = {}
            wanted = {self.io.cost.topic, self.io.episode_topic, self.io.trigger}  # the trigger: one step each
            polled = m.Polled()
            if self.values["use_critic"]:
                wanted |= set(self.io.observation.types)
            self._commands = self.qos.watch(self.create_subscription(
                m.message_class(self.io.action_type), self.io.action_topic, self._on_command,
                **m.wired(m.LATEST, False), callback_group=polled), False)
            self._read_for_forecast.append(self._commands)
            # A topic read only for the forecast is read when a forecast is made (its newest
            # message then), not on its own wake-up; the costs are read at each state (and by
            # the heartbeat): one wake-up per step instead of two (issue 19, headroom).
            forecast_only = set(self.io.observation.types) - {self.io.cost.topic, self.io.episode_topic, self.io.trigger}
            polled_topics = forecast_only | ({self.io.cost.topic} - {self.io.trigger})
            for topic, type_name in self.io.topics().items():
                if topic in wanted:
                    qos = m.COSTS if topic in (self.io.cost.topic, self.io.episode_topic) else m.OBSERVATIONS
                    group = {"callback_group": polled} if topic in polled_topics else {}
                    subs[topic] = self.qos.watch(self.create_subscription(
                        m.message_class(type_name), topic,
                        lambda msg, info, topic=topic: self._on_io_message(topic, msg, info),
                        **m.wired(qos, False), **group), False)
            self.step_sub, self._subs = subs[self.io.cost.topic], subs
            self._in_order = [subs[t] for t in (self.io.cost.topic, self.io.episode_topic, self.io.trigger) if t]
            self._read_for_forecast += [subs[t] for t in forecast_only if t in subs]
        self.create_service(Trigger, "reset", self._on_unauthenticated_reset)
        self.reset = ResetEndpoint(self, self._operator_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._diagnostics)
        self.create_timer(0.1, self._check_graph)
        if self.values["autostart"]:
            self.autostart()

    # -- lifecycle ----------------------------------------------------------------------------
    def _configure(self) -> None:
        get = self.values.__getitem__
        runtime = PolicyRuntime.load(get("bundle"), provider="cpu") if get("bundle") else None
        if runtime is not None:  # the budget comes from it: only a bundle the trusted key signed
            self.signature = check_bundle(get("bundle"), get("bundle_public_key") or None, get("allow_unsigned"))
        budget = resolve_budget(runtime.manifest.get("budget") if runtime else None, float(get("cost_limit")),
                                float(get("max_step_cost")), self.io.steps_ahead if self.io else 1)
        limit, bound = budget.limit, budget.step_bound
        never = budget.never_moves(0.0)
        if never:
            raise ValueError(never)
        monitor = BudgetMonitor(MonitorConfig(
            cost_limit=limit, accounting=get("accounting"), window_steps=get("window_steps"), warn_at=get("warn_at"),
            error_at=get("error_at"), stop_at=get("stop_at"), stop_on=get("stop_on"),
            stop_latch=get("stop_latch"), hysteresis=get("hysteresis"),
            clear_steps=get("clear_steps"), max_step_cost=bound, steps_ahead=budget.steps_ahead))
        self.matcher = CostMatcher(self.io.cost_stamped) if self.io is not None else None
        if self.io is not None and not self.io.leased:  # no lease: the margin's steps are measured
            monitor.distance = StopDistance(budget.steps_ahead)
        self.key = load_key(get("operator_key_file") or default_key_path())
        self.store = LatchStore(get("state_file") or default_state_file(self.get_namespace()))
        self.runtime, self.monitor = runtime, monitor
        self.use_critic = bool(get("use_critic")) and runtime is not None
        if self.io is not None and runtime is not None:
            self.action_map = self.io.bind(int(runtime.obs_dim), len(runtime.act_low))
        self.base_lambda = runtime.lagrange_multiplier if runtime else 1.0
        self.exchange_rate = runtime.exchange_rate if runtime else None
        self.reset.set_key(self.key)
        if get("record") and self.recorder is None:
            self.recorder = McapRecorder(get("record"))
            self.get_logger().info(f"recording to {self.recorder.path}")
        persisted = self.store.load()
        if persisted:  # a STOP latched before this process (or configuration) stays latched
            self._respond_all(monitor.latch_stop(restart_reason(persisted)))
        self.get_logger().info(f"monitor: limit {limit:g} per {get('accounting')}, step-cost bound "
                               f"{bound or 'largest seen'}, critic {'on' if self.use_critic else 'off'}, "
                               f"stop_latch {get('stop_latch')}, state {self.store.path}"
                               + (", STARTS IN STOP (latched before restart)" if persisted else ""))

    def on_activate(self, state) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # the publishers first: what follows must go out
        self._heartbeat_period = 1.0 / self.values["heartbeat_rate_hz"]
        self._heartbeat_timer = self.create_timer(self._heartbeat_period, self._on_heartbeat_timer)
        self._active_timers = [self._heartbeat_timer, self.create_timer(self.values["estop_period_s"], self._reassert)]
        self._reassert()
        self._heartbeat()  # after the start-up line: no controller moves before it (tests rely on this)
        m.mark_cpu()
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        # Nobody watches from now on: the e-stop holds the robot and the heartbeats stop, so
        # the controller's interlock stops it too.
        self.estop_pub.publish(Bool(data=True))
        self._stop_timers()
        self.get_logger().warning("inactive: e-stop held, heartbeats stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.monitor = self.runtime = None
        self.reset.set_key(None)
        return super().on_cleanup(state)

    def _stop_timers(self) -> None:
        for timer in self._active_timers:
            self.destroy_timer(timer)
        self._active_timers, self._heartbeat_timer = [], None

    # -- inputs ------------------------------------------------------------------------------
    def _on_obs(self, msg: JointState) -> None:
        self._obs = np.asarray(msg.position, np.float32)

    def _on_action(self, msg: JointState, info: dict) -> None:
        self._commander(info)
        self._act = np.asarray(msg.effort, np.float32)

    def _on_command(self, msg, info: dict) -> None:
        self._commander(info)
        if self.action_map is not None:
            try:
                self._act = self.action_map.read(msg)
            except (ValueError, AttributeError):
                self._act = None

    def _on_io_message(self, topic: str, msg, info: dict | None = None) -> None:
        """A wake-up (a state or an episode start; the costs are read with them): everything
        waiting on the cost, episode and trigger topics, in the order the robot sent it."""
        if self._reading or self._subs[topic] not in self._in_order:  # taken by _read_io, or a forecast input
            self._on_io(topic, msg, info)
            return
        self._read_io((self._subs[topic], (msg, info)))

    def _read_io(self, first: tuple | None = None, heartbeat: bool = True) -> None:
        self._reading = True
        try:
            for sub, taken in m.take_in_sent_order(self._in_order, first):
                m.call(sub, taken)
        finally:
            self._reading = False
        if heartbeat:
            self._heartbeat_if_due()

    def _on_io(self, topic: str, msg, info: dict | None = None) -> None:
        """A message on the io file's cost, episode, trigger or (for the forecast) observation
        topics; CostMatcher turns costs and states into steps, as in the controller."""
        if self.monitor is None:
            return
        io, now = self.io, time.monotonic()
        if topic == io.episode_topic:  # a new episode: the one in progress (if it took steps) ends
            self._record(topic, msg)
            self._charge(self.matcher.on_episode(now, m.source_ns(info)))
            if self._robot[0] == self._io_episode and self._robot[1] > 0:
                self._episode_end({"event": "end", "index": self._io_episode})
            self._io_episode += 1
            return
        if topic in io.observation.types and self.use_critic:
            io.observation.update(topic, msg)  # mapped only when a cost asks for the forecast
        if topic == io.cost.topic:
            self._record(topic, msg)
            try:
                cost = float(io.cost.read(msg)[0])
            except (ValueError, AttributeError, IndexError):
                cost = float("nan")  # unreadable: the worst case
            self.seen_stamp_ns = time.time_ns()  # no robot stamp on a cost: when it was read (controller_node)
            # When it arrived, not when it is read: a cost read late was in time for its step.
            self._charge(self.matcher.on_cost(cost, m.header_stamp_ns(msg), m.arrived_at(info, now), m.source_ns(info)))
        if topic == io.trigger:
            self._charge(self.matcher.on_state(m.header_stamp_ns(msg), now))

    def _charge(self, charges) -> None:
        for c in charges:
            if c.refund:
                if c.episode == self.matcher.episode:
                    self._respond_all(self.monitor.refund(c.cost, c.t))
                continue
            if c.raced and self.monitor.distance is not None and self.monitor.distance.raced(c.raced):
                self._margin_grew()
            self._robot = (self._io_episode, c.t)
            if c.t > 0:
                self._respond_all(self.monitor.update(c.cost, self._predicted(), reported=c.reported, extra=c.extra,
                                                      steps=c.steps))

    def _commander(self, info: dict | None) -> None:
        """A command read: two publishers' commands interleaving (SecondCommander) latch STOP."""
        seq = info.get("publication_sequence_number") if info else None
        if self.commanders.see(seq, time.monotonic()) and self.monitor is not None and self.monitor.level != Level.STOP:
            topic = self._commands.topic_name
            self._respond_all(self.monitor.latch_stop(
                f"duplicate_controller: two publishers' commands interleave on {topic}"))
            self.get_logger().error(f"another node publishes on {topic}: latched STOP")

    def _predicted(self) -> float:
        for sub in self._read_for_forecast:
            m.take_waiting(sub)
        if self.use_critic and self.io is not None:
            try:
                self._obs = self.io.observation.vector()
            except (ValueError, AttributeError, IndexError):
                self._obs = None
        if not self.use_critic or self._obs is None or self._act is None:
            return 0.0
        try:
            return float(self.runtime.evaluate(self._obs, self._act)["qc_mean"])
        except ValueError:
            return 0.0

    def _record(self, topic: str, msg) -> None:
        if self.recorder:
            self.recorder.write(topic, msg, time.time_ns())

    def _on_step(self, msg: Float64MultiArray) -> None:
        if self.monitor is None:
            return
        self._record(m.STEP, msg)
        data = msg.data
        cost = float(data[1]) if len(data) > 1 else float("nan")
        out = []
        if len(data) >= len(m.STEP_FIELDS):  # sequence-numbered: a gap is counted, not missed
            episode, t = int(data[4]), int(data[5])
            last_episode, last_t = self._robot
            expected = last_t + 1 if episode == last_episode else 1
            out += self.monitor.missed(t - expected)
            self._robot = (episode, max(t, last_t) if episode == last_episode else t)
            self.seen_stamp_ns = int(data[6]) * 1_000_000_000 + int(data[7])
        out += self.monitor.update(cost, self._predicted())
        self._respond_all(out)
        self._heartbeat_if_due()

    def _on_episode(self, msg: String) -> None:
        if self.monitor is None:
            return
        self._record(m.EPISODE, msg)
        event = m.parse_episode(msg)
        if event.get("event") == "end":
            self._episode_end(event)

    def _episode_end(self, event: dict) -> None:
        self.episodes.append({**event, "level": self.monitor.level.name, "monitor_accumulated": self.monitor.accumulated})
        distance = self.monitor.distance
        before = distance.in_use if distance else None
        self._respond_all(self.monitor.end_episode())
        if distance is not None and distance.in_use != before:
            self._margin_grew()

    def _margin_grew(self) -> None:
        distance = self.monitor.distance
        self.get_logger().warning(f"budget margin: {distance.describe()}; set steps_ahead >= {distance.in_use} in "
                                  f"the io file")

    def _on_unauthenticated_reset(self, request, response):
        """The old, unauthenticated reset service: kept so that a caller learns why it fails."""
        self.get_logger().warning("unauthenticated reset refused")
        response.success = False
        response.message = ("refused: clearing a STOP needs the operator's proof; run algd-reset "
                            "(challenge on ~/reset_challenge, proof on ~/reset)")
        return response

    def _operator_reset(self) -> str:
        if self.monitor is None:
            return "not configured: nothing to reset"
        out = self.monitor.reset_stop()
        self.commanders.forget()  # two commanders still there latch again at once
        self._respond_all(out)
        if out and self.monitor.forgotten:
            self.get_logger().warning(f"operator reset: {self.monitor.forgotten}")
        self.store.save({})
        return "e-stop cleared" if out else f"nothing to reset (level {self.monitor.level.name})"

    # -- the interlock ------------------------------------------------------------------------
    def _heartbeat_if_due(self) -> None:
        """While steps come, a heartbeat goes out in a step's own wake-up when the next step
        would come after it is due (a little early, never late), and the timer (for when no
        step comes) starts over: one wake-up per step instead of two."""
        now = time.monotonic()
        gap, self._last_step_at = now - self._last_step_at, now
        early = min(gap, self._heartbeat_period / 2)
        if self._heartbeat_timer is not None and now - self._heartbeat_at >= self._heartbeat_period - early:
            self._heartbeat()

    def _on_heartbeat_timer(self) -> None:
        if self.io is not None and self.monitor is not None:
            self._read_io(heartbeat=False)  # costs that came since the last state (m.Polled)
        self._heartbeat()

    def _heartbeat(self) -> None:
        now = self._heartbeat_at = time.monotonic()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.reset()
        mon = self.monitor
        if self.matcher is not None:
            self._charge(self.matcher.expire(now))  # steps whose cost did not come in time
        self.seq += 1
        reason = mon.transitions[-1].reason if mon.level == Level.STOP and mon.transitions else ""
        payload = {"boot": self.boot, "seq": self.seq, "level": mon.level.name, "latched": mon.level == Level.STOP,
                   "reason": reason, "episode": self._robot[0], "t": self._robot[1],
                   "accumulated": mon.accumulated, "limit": mon.cfg.cost_limit, "budget": mon.cfg.budget.digest,
                   "seen_stamp_ns": self.seen_stamp_ns,
                   "missed": mon.missed_steps, "response": self._response(), "sees_robot": self.sees_robot}
        self.heartbeat_pub.publish(String(data=sign_heartbeat(self.key, self.get_namespace(), payload)))

    def _check_graph(self) -> None:
        """Whether discovery shows the robot's step publisher: until it does, steps the robot
        took would not reach this monitor, and the controller must not move."""
        self.sees_robot = self.count_publishers(self.step_sub.topic_name) > 0

    def _reassert(self) -> None:
        """The e-stop's state, true or false, every period (and at start): a robot that missed
        the last change (its sender killed right after publishing it) is told again. Seen: a
        monitor killed within a millisecond of its STOP -> OK left the robot on e-stop for good."""
        self.estop_pub.publish(Bool(data=self.monitor.level == Level.STOP))

    # -- responses ---------------------------------------------------------------------------
    def _respond_all(self, transitions) -> None:
        """A step can move the level several times at once (OK -> WARN -> ERROR -> STOP). A
        STOP's e-stop goes out first; each move is recorded (status, log); then one heartbeat
        carries the level reached. (One heartbeat and one /diagnostics per move: a fault-bench
        run spent 145 ms in the WARN's before the STOP went out, and the robot, which costs
        while it stands, took 14 steps of a budget of 5.)"""
        if not transitions:
            return
        if any(t.new == "STOP" for t in transitions):
            self.estop_pub.publish(Bool(data=True))
        for t in transitions:
            self._record_move(t)
        self._heartbeat()  # the controller hears of it now, not a period later
        if transitions[-1].new != "STOP":
            self._diagnostics()

    def _record_move(self, t) -> None:
        status = m.status(self, "monitor", _DIAG_LEVEL[Level[t.new]], f"{t.old} -> {t.new}: {t.reason}",
                          {"level": t.new, **t.as_dict()})
        self.status_pub.publish(status)
        self._record(m.MONITOR_STATUS, status)
        self.get_logger().warning(f"{t.old} -> {t.new} at step {t.step}: accumulated {t.accumulated:.3g}, "
                                  f"predicted {t.predicted:.3g}, forecast {t.forecast:.3g} / limit {t.limit:g} "
                                  f"({t.reason})")
        if Level[t.new] == Level.STOP:
            if self.monitor.cfg.stop_latch == "operator" or t.reason.startswith(RESTART_PREFIX):
                self.store.save({"monitor": t.reason})
        elif t.old == "STOP":
            self.store.save({})  # on disk before the robot may move: a slow disk delays the clear, not a stop
            self.estop_pub.publish(Bool(data=False))

    def _response(self) -> dict:
        """The controller parameters the current level asks for (none at OK and STOP)."""
        mon = self.monitor
        return level_response(mon.level, self.base_lambda, self.cfg, mon.cfg.cost_limit - mon.accumulated,
                              self.exchange_rate)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        """All or nothing, and only what is safe to change live; the reason says why not."""
        updates = {p.name: p.value for p in changes}
        fixed = [n for n in updates if n not in LIVE]
        if self.monitor is None and updates:
            return self._refuse("not configured: configure the node first")
        if fixed:
            return self._refuse(f"{fixed[0]}: read-only while running (live: {', '.join(LIVE)})")
        cfg = {k: getattr(self.monitor.cfg, k) for k in CONFIG_KEYS}
        for k, v in updates.items():
            try:
                v = updates[k] = params.coerce(k, v, self.defaults[k])
            except ValueError as exc:
                return self._refuse(str(exc))
            if not math.isfinite(v):
                return self._refuse(f"{k}: expected a finite number, got {v!r}")
            if k in cfg:
                cfg[k] = v
        try:
            new_cfg = MonitorConfig(**cfg)
        except (ValueError, TypeError) as exc:
            return self._refuse(str(exc))
        for k, v in updates.items():
            if k in self.cfg and v <= 0:
                return self._refuse(f"{k}: expected a value > 0, got {v!r}")
        self.monitor.cfg = new_cfg
        self.cfg.update({k: v for k, v in updates.items() if k in self.cfg})
        self.get_logger().info(f"parameters: {updates}")
        return SetParametersResult(successful=True)

    def _diagnostics(self) -> None:
        mon = self.monitor
        if mon is None:
            self.diag.publish(m.diagnostics(self, "monitor", DiagnosticStatus.WARN, "unconfigured", {}))
            return
        vals = {"accumulated": mon.accumulated, "predicted": mon.predicted, "forecast": mon.forecast,
                "margin": mon.margin,
                "limit": mon.cfg.cost_limit, "ratio": mon.ratio, "episode": mon.episode, "steps": mon.step,
                "missed_steps": mon.missed_steps, "transitions": len(mon.transitions)}
        if mon.transitions:
            last = mon.transitions[-1]
            vals["last_transition"] = f"{last.old}->{last.new} at step {last.step}: {last.reason}"
        level, message = _DIAG_LEVEL[mon.level], mon.level.name
        if self.signature is not None:
            vals["bundle_signature"] = self.signature.describe()
            if not self.signature.trusted:  # allow_unsigned: development only, and it shows
                message += f"; bundle {self.signature.describe()} (allow_unsigned)"
                level = max(level, DiagnosticStatus.WARN)
        if mon.distance is not None and mon.distance.in_use > mon.distance.configured:
            vals["steps_ahead"] = mon.distance.in_use
            message += f"; steps_ahead {mon.distance.configured} too small: {mon.distance.describe()}"
            level = max(level, DiagnosticStatus.WARN)
        status = m.status(self, "monitor", level, message, {"level": mon.level.name, **vals})
        self.status_pub.publish(status)
        self.diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def stop_recording(self) -> None:
        if self.recorder:
            self.recorder.close()

    def summarize(self) -> None:
        self.stop_recording()
        if self.monitor is None:
            print("monitor: not configured at exit")
            return
        for t in self.monitor.transitions:
            print(f"monitor: {t.old} -> {t.new} at step {t.step} ({t.reason})")
        m.write_summary(self.get_parameter("summary_file").value, {
            "limit": self.monitor.cfg.cost_limit, "level": self.monitor.level.name, "steps": self.monitor.step,
            "missed_steps": self.monitor.missed_steps, "stop_latch": self.monitor.cfg.stop_latch,
            "heartbeat_rate_hz": float(self.get_parameter("heartbeat_rate_hz").value),
            "estop_period_s": float(self.get_parameter("estop_period_s").value),
            "transitions": [t.as_dict() for t in self.monitor.transitions], "episodes": self.episodes,
            **({"costs": self.matcher.counts(), "steps_ahead": self.monitor.margin_steps,
                "steps_ahead_largest": self.monitor.distance.largest if self.monitor.distance
                else self.monitor.margin_steps} if self.matcher else {})})





def default_state_file(namespace: str) -> str:
    """Where a monitor keeps its latch by default: per user, per namespace and per DDS domain
    (two robots on one machine with the same namespace on two domains are two robots)."""
    import os
    from pathlib import Path

    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "algd-runtime"
    domain = os.environ.get("ROS_DOMAIN_ID", "0") or "0"
    return str(base / f"monitor{namespace.replace('/', '_') or '_'}_domain{domain}.json")


def main(argv=None) -> int:
    return run_node(MonitorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
