"""algd-controller: runs the exported policy at control rate on the newest observation.

Thin: ControllerCore (algd_runtime.deploy.control) and SafetyGate (algd_runtime.deploy.safety) make every
decision; this node moves messages, owns the timers, verifies the monitor's heartbeats and
the operator's resets, and turns parameter updates into validated, all-or-nothing changes.
Required: the parameter `bundle` (an exported bundle folder, algd-export). Optional: `io`,
an io file (adapters.py) that wires standard messages in place of observation / action.
"""

from __future__ import annotations

import math
import re
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String

from algd_runtime.deploy.adapters import load_io
from algd_runtime.deploy.control import ControllerCore, ControllerParams
from algd_runtime.ros import messages as m
from algd_runtime.ros import params
from algd_runtime.ros.entry import run_node
from algd_runtime.ros.managed import ManagedNode
from algd_runtime.ros.operator import ResetEndpoint
from algd_runtime.ros.suspend import RESTART_AFTER_SUSPEND_S, carried_latches
from algd_runtime.ros.realtime import DEFAULT_SLICE_US
from algd_runtime.ros.recorder import McapRecorder
from algd_runtime.deploy.runtime import PolicyRuntime
from algd_runtime.contract.signing import SIGNATURE_DEFAULTS, check_bundle
from algd_runtime.contract.budget import lease_cap, resolve_budget
from algd_runtime.contract.keys import default_key_path, load_key
from algd_runtime.deploy.safety import (
    GRAPH_SETTLE_S,
    BudgetAccount,
    CostMatcher,
    HeartbeatWatch,
    Latch,
    SafetyGate,
    StopDistance,
    restart_reason,
)

# Start-up only: what the bundle is, where the key is, and every safety setting.
# With an io file the cost messages carry no robot stamp: the monitor's heartbeat says when
# (wall clock) it read its newest one, and each cost this controller read must be matched
# within monitor_max_lag_s. The tolerance absorbs the two deliveries' jitter.
IO_CLOCK_TOLERANCE_NS = 20_000_000
_NUMBERS = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")

READ_ONLY = ("bundle", "bundle_public_key", "allow_unsigned", "io", "sched_slice_us", "realtime_priority", "cpu_affinity",
             "restart_after_suspend_s", "executor", "provider", "summary_file", "record", "task", "bundle_digest", "operator_key_file",
             "require_monitor", "monitor_timeout_s", "monitor_max_lag_s", "max_step_cost", "cost_limit",
             "stop_latch", "fallback", "safe_action", "startup_hold_s")
SAFETY_DEFAULTS = {"task": "", "bundle_digest": "", "operator_key_file": "", "require_monitor": True,
                   "monitor_timeout_s": 0.25, "monitor_max_lag_s": 0.25, "max_step_cost": -1.0,
                   "cost_limit": -1.0, "stop_latch": "operator", "startup_hold_s": GRAPH_SETTLE_S,
                   **SIGNATURE_DEFAULTS}


# Every parameter and its default, in one place: the node declares these, and
# launch/controller.yaml states them (tests/test_launch.py fails when the two drift).
DEFAULTS = {"bundle": "", "io": "", "provider": "auto", "diagnostics_period_s": 1.0, "summary_file": "", "record": "",
            "fallback": "", "autostart": True, "sched_slice_us": DEFAULT_SLICE_US, "realtime_priority": 0, "cpu_affinity": [],
            "restart_after_suspend_s": RESTART_AFTER_SUSPEND_S, "executor": "lean", **SAFETY_DEFAULTS,
            **vars(ControllerParams())}


class ControllerNode(ManagedNode):
    """A managed node. unconfigured -> configure (load and check the bundle, the key and every
    safety setting) -> inactive (observations are accounted, nothing is published) ->
    activate (start-up hold, then decisions) -> active; deactivate publishes the safe action
    as a stop and goes quiet; cleanup frees the bundle. A latched STOP survives every
    transition: only the operator's reset clears it. `autostart` (default) configures and
    activates at start, and a bundle that fails to load ends the process."""

    NAME = "controller"

    def __init__(self, **overrides):
        super().__init__(self.NAME, **overrides)
        self.defaults = DEFAULTS
        self.values = params.declare(self, self.defaults)
        self.core: ControllerCore | None = None
        self.recorder: McapRecorder | None = None
        self.safety: dict = {}
        self.timer = None  # the control-rate timer, while active
        carried = carried_latches()  # a STOP of the process this one replaced after a suspension
        self._latch = Latch({k: restart_reason({k: v}) for k, v in carried.items()}) if carried else None
        self._stop_reason: str | None = None
        self._stop_stamp = None  # with an expiring command: the stamp the stop in progress began at
        self._steps_ahead_logged: int | None = None
        self._latencies0 = 0  # latencies reported by the last diagnostics
        self._t0, self._ticks0, self._errors0 = time.monotonic(), 0, 0
        # The topics live as long as the node; what flows on them depends on the state.
        self.qos = m.QosCheck(self)
        # Read at each decision (which comes at least every period), not on a wake-up of their
        # own: 100 wake-ups a second fewer on the loop's process.
        self.heartbeats = self.create_subscription(String, m.HEARTBEAT, self._on_heartbeat,
                                                   **m.endpoint(m.RELIABLE, False), callback_group=m.Polled())
        self.io = load_io(self.values["io"], m.message_class) if self.values["io"] else None
        self._reading = self._answer_due = False  # inside _read_io; a state read there awaits its answer
        self.io_errors: dict[str, int] = {}
        self.first_observations: list[list[float]] = []  # with an io file: what the mapping made (tests)
        if self.io is None:  # our own contract: observation / action with (episode, t, cost) and leases
            self.pub = self.qos.watch(self.create_lifecycle_publisher(JointState, m.ACTION, **m.wired(m.COMMANDS, True)),
                                      True)
            self.qos.watch(self.create_subscription(JointState, m.OBSERVATION, self._on_observation,
                                                    **m.wired(m.OBSERVATIONS, False)), False)
        else:  # standard messages as the io file says; the budget from its cost topic
            self.command_cls = m.message_class(self.io.action_type)
            self.pub = self.qos.watch(self.create_lifecycle_publisher(self.command_cls, self.io.action_topic,
                                                                      **m.wired(m.COMMANDS, True)), True)
            # Only the trigger (a step) and the episode topic wake this process. The costs are
            # read with them, all in the order the robot sent them (m.take_in_sent_order), and
            # the other observation topics' newest messages before a state is answered (at each
            # trigger, or the timer's decision at least every period). A cost is matched by when
            # it arrived (m.arrived_at), not when it was read.
            topics, self._subs = self.io.topics(), {}
            polled = m.Polled()
            read_at_decision = [t for t in topics if t not in (self.io.trigger, self.io.episode_topic)]
            for topic in topics:
                qos = m.OBSERVATIONS if topic in self.io.observation.types else m.COSTS
                type_name = topics[topic]
                group = {"callback_group": polled} if topic in read_at_decision else {}
                self._subs[topic] = self.qos.watch(self.create_subscription(
                    m.message_class(type_name), topic,
                    lambda msg, info, topic=topic: self._on_io_message(topic, msg, info),
                    **m.wired(qos, False), **group), False)
            self._in_order = [self._subs[t] for t in (self.io.cost.topic, self.io.episode_topic, self.io.trigger)
                              if t]
            self._read_at_decision = [self._subs[t] for t in read_at_decision if self._subs[t] not in self._in_order]
            # The second channel's own e-stop: either channel alone must end an episode whose
            # robot keeps costing while it stands (SAFETY.md, standard messages).
            self.estop_pub = self.create_publisher(Bool, m.CONTROLLER_ESTOP, **m.endpoint(m.LATCHED, True))
            self._estop: bool | None = None
            self.create_timer(1.0, lambda: self._assert_estop(force=True))
        self.diag = self.create_publisher(DiagnosticArray, "/diagnostics", **m.endpoint(m.DIAGNOSTICS, True))
        self.reset = ResetEndpoint(self, self._operator_reset)
        # After the QoS overrides are declared (they are read-only parameters, not ours).
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(self.values["diagnostics_period_s"], self._diagnostics)
        self.create_timer(0.1, self._check_graph)
        if self.values["autostart"]:
            self.autostart()

    # -- lifecycle ----------------------------------------------------------------------------
    def _configure(self) -> None:
        get = self.values.__getitem__
        if get("fallback"):
            raise ValueError("fallback: replaced by safe_action ('zero' or a brake vector); hold-last is gone "
                             "because a robot must never keep moving on an old command")
        bundle = get("bundle")
        if not bundle:
            raise ValueError("bundle: expected the path of an exported bundle (parameter 'bundle')")
        hold = get("startup_hold_s")
        if not 0 <= hold <= 60:
            raise ValueError(f"startup_hold_s: expected 0 <= value <= 60 (seconds), got {hold}")
        runtime = PolicyRuntime.load(bundle, provider=get("provider"), expect_task=get("task") or None,
                                     expect_digest=get("bundle_digest") or None)
        signature = check_bundle(bundle, get("bundle_public_key") or None, get("allow_unsigned"))
        manifest, digest = runtime.manifest, runtime.digest
        budget = resolve_budget(manifest.get("budget"), get("cost_limit"), get("max_step_cost"),
                                self.io.steps_ahead if self.io else 1)
        never = budget.never_moves(0.0)
        if never:
            raise ValueError(never)
        limit, bound = budget.limit, budget.step_bound
        key = load_key(get("operator_key_file") or str(default_key_path()))
        watch = None
        if get("require_monitor"):
            watch = HeartbeatWatch(key, self.get_namespace(), get("monitor_timeout_s"), get("monitor_max_lag_s"),
                                   budget=budget)
        # No lease on a standard command: the margin's steps are measured (StopDistance).
        account = BudgetAccount(budget, distance=StopDistance(budget.steps_ahead)
                                if self.io and not self.io.leased else None)
        cap = lease_cap(get("control_rate_hz"), get("monitor_timeout_s"))
        gate = SafetyGate(account, watch, get("stop_latch"), lease_cap=cap)
        if self._latch is not None:
            gate.latch = self._latch  # a reconfiguration never clears a STOP
        self._latch = gate.latch
        if self.io is not None:
            self.action_map = self.io.bind(int(runtime.obs_dim), len(runtime.act_low))
            self.matcher = CostMatcher(self.io.cost_stamped)
            self._steps_ahead_logged = budget.steps_ahead
            gate.waiting_for = "no cost message from the robot yet (its budget starts at the first)"
        live = ControllerParams(**{k: get(k) for k in vars(ControllerParams())})
        self.core = ControllerCore(runtime, gate, live)
        self.reset.set_key(key)
        self._check_estop_heard()  # unheard until the graph shows the robot's subscription
        # What guards this run, as it was configured (the summary and the demo report say it).
        self.safety = {"budget": limit, "step_cost_bound": bound, "steps_ahead": budget.steps_ahead, "lease_cap": cap,
                       "budget_digest": budget.digest,
                       "stop_latch": get("stop_latch"), "safe_action": live.safe_action,
                       "monitor_interlock": bool(watch), "monitor_timeout_s": get("monitor_timeout_s"),
                       "monitor_max_lag_s": get("monitor_max_lag_s"),
                       "startup_hold_s": get("startup_hold_s"), "bundle_digest": digest,
                       "task_checked": bool(get("task")), "digest_pinned": bool(get("bundle_digest")),
                       "bundle_signature": signature.describe(), "allow_unsigned": get("allow_unsigned")}
        if get("record") and self.recorder is None:
            self.recorder = McapRecorder(get("record"))
            self.get_logger().info(f"recording to {self.recorder.path}")
        self.get_logger().info(
            f"controller: {bundle} ({manifest.get('task')}, digest {str(digest)[:16]}) on {runtime.provider}, "
            f"{'io ' + get('io') if self.io else 'observation/action topics'}, "
            f"{live.control_rate_hz:g} Hz, mode {live.mode}; budget {limit:g}, step-cost bound "
            f"{bound or 'largest seen'}, stop_latch {get('stop_latch')}, monitor interlock "
            f"{'on, deadline %g s' % get('monitor_timeout_s') if watch else 'OFF (require_monitor:=false)'}")

    def on_activate(self, state) -> TransitionCallbackReturn:
        # Discovery is asynchronous: a controller started beside a running one would not see
        # it yet. Holding still for a while first means a second controller never commands.
        hold = self.values["startup_hold_s"]
        self.core.gate.hold_for(time.monotonic(), hold, f"starting: {hold:g} s for discovery to show any other "
                                "controller")
        self.timer = self.create_timer(1.0 / self.core.params.control_rate_hz, self._tick)
        result = super().on_activate(state)
        m.mark_cpu()
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        # The robot's last word from us is a stop, not whatever it was doing.
        self._publish(self.core.safe_action, self.core.last.stamp if self.core.last else None, 0, "deactivated")
        self._stop_timers()
        self.get_logger().warning("STOP: deactivated (the safe action was sent)")
        self._stop_reason = "deactivated"
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.core = None  # frees the bundle's sessions; the latch is kept (self._latch)
        self.reset.set_key(None)
        return super().on_cleanup(state)

    def _stop_timers(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None

    # -- callbacks ----------------------------------------------------------------------------
    def _on_observation(self, msg: JointState) -> None:
        """Accounted once configured (the budget sees every step); answered only when active."""
        if self.core is None:
            return
        now = time.monotonic()
        self.core.on_observation(np.asarray(msg.position, np.float32), msg.header.stamp, now,
                                 m.observation_meta(msg), m.stamp_ns(msg.header.stamp))
        if self.recorder:
            self.recorder.write(m.OBSERVATION, msg, time.time_ns())
        if self.timer is not None:
            self._act()  # answer at once: waiting for the next tick would add up to a period of latency

    def _on_io_message(self, topic: str, msg, info: dict | None = None) -> None:
        """A wake-up (a state or an episode start): everything waiting on the cost, episode and
        trigger topics, in the order the robot sent it; then the newest state is answered."""
        if self._reading or self._subs[topic] not in self._in_order:  # taken by _read_io, or another source
            self._on_io(topic, msg, info)
            return
        self._read_io((self._subs[topic], (msg, info)))
        if self._answer_due and self.timer is not None:
            self._act()  # at once: waiting for the next tick would add up to a period of latency

    def _read_io(self, first: tuple | None = None) -> None:
        self._reading, self._answer_due = True, False
        try:
            for sub, taken in m.take_in_sent_order(self._in_order, first):
                m.call(sub, taken)
        finally:
            self._reading = False

    def _on_io(self, topic: str, msg, info: dict | None = None) -> None:
        """A message on one of the io file's topics (CostMatcher is the budget's contract)."""
        if self.core is None:
            return
        now, io = time.monotonic(), self.io
        if topic == io.episode_topic:
            self._charge(self.matcher.on_episode(now, m.source_ns(info)))
            if self.core.gate.account.distance is not None:
                self.core.gate.account.distance.episode_ended()
                self._charge([])  # logs a margin that grew
            return
        if topic == io.cost.topic:
            try:
                cost = float(io.cost.read(msg)[0])
            except (ValueError, AttributeError, IndexError) as exc:  # unreadable: the worst case
                cost = math.nan
                self._io_problem(f"cost: {exc}")
            self._charge(self.matcher.on_cost(cost, m.header_stamp_ns(msg), m.arrived_at(info, now), m.source_ns(info)))
            self.core.gate.waiting_for = None
            if self.core.gate.watch is not None:  # the monitor must show it read a cost this recent
                arrived_ns = (info or {}).get("received_timestamp") or time.time_ns()
                self.core.gate.watch.on_robot_step(arrived_ns - IO_CLOCK_TOLERANCE_NS, now)
        if topic in io.observation.types:
            io.observation.update(topic, msg, now)
        if topic != io.trigger:
            return
        self._read_waiting()  # the other sources' newest
        self._charge(self.matcher.on_state(m.header_stamp_ns(msg), now))
        try:
            obs = io.observation.vector(now)
        except (ValueError, AttributeError, IndexError) as exc:
            # The step is accounted; the policy keeps its last observation, which goes stale
            # (obs_timeout_s) into the safe action while a source is missing or stale.
            self._io_problem(str(exc))
            return
        if len(self.first_observations) < 5:
            self.first_observations.append(obs.tolist())
        stamp = m.header_stamp(msg) or self.get_clock().now().to_msg()
        self.core.on_observation(obs, stamp, now, None, None, accounted=True)
        if self.recorder:
            self.recorder.write(topic, msg, time.time_ns())
        self._answer_due = True  # the newest state read is answered once they all are (_on_io_message)

    def _assert_estop(self, force: bool = False) -> None:
        """True while a latch or the budget stops the robot (not for the start-up holds)."""
        if self.core is None:
            return
        gate = self.core.gate
        want = gate.latch.latched or gate.account.verdict(with_provisional=False) is not None
        if force or want != self._estop:
            self._estop = want
            self.estop_pub.publish(Bool(data=want))

    def _charge(self, charges) -> None:
        gate = self.core.gate
        gate.on_charges(charges, self.matcher.waiting)
        distance = gate.account.distance
        if distance is not None and distance.in_use != self._steps_ahead_logged:
            self._steps_ahead_logged = distance.in_use
            self.get_logger().warning(f"budget margin: {distance.describe()}; set steps_ahead >= {distance.in_use} "
                                      f"in the io file")

    def _io_problem(self, what: str) -> None:
        n = self.io_errors[what] = self.io_errors.get(what, 0) + 1
        if n == 1 or n % 1000 == 0:
            self.get_logger().warning(f"io: {what} ({n} times)")

    def _on_heartbeat(self, msg: String, info: dict) -> None:
        if self.core is not None and self.core.gate.watch is not None:
            # When it arrived, not when it is read: one that waited since before a dead
            # monitor's end must not make that monitor look alive.
            self.core.gate.watch.on_message(msg.data, m.arrived_at(info, time.monotonic()), self.core.gate.latch)

    def _tick(self) -> None:
        """The control-rate timer: a decision every period unless the newest observation is
        fresh and already answered by the policy (then there is nothing new to say)."""
        if self.io is not None:
            self._read_io()  # costs before their deadlines are judged
            self._read_waiting()
        if self.core.needs_tick(time.monotonic()):
            self._act()

    def _read_waiting(self) -> None:
        for sub in self._read_at_decision:
            m.take_waiting(sub)

    def _act(self) -> None:
        m.take_waiting(self.heartbeats)  # the monitor's newest word first (m.Polled)
        start = time.monotonic()
        if self.io is not None:
            self._charge(self.matcher.expire(start))  # steps whose cost did not come in time
        decision = self.core.tick(start)
        msg = self._publish(decision.action, decision.stamp, decision.lease, decision.stop)
        done = time.monotonic()
        if self.recorder:
            self.recorder.write(self.io.action_topic if self.io else m.ACTION, msg, time.time_ns())
        self.core.handed_over(decision, done, done - start)
        if self.io is not None:
            self._assert_estop()
        if self.timer is not None and not self.timer.is_canceled():
            self.timer.reset()  # the deadline restarts: the timer fires only after a silent period
        # Logged when the reason changes, not when only its numbers do (a budget stop's
        # accumulated cost moves every step while the robot stands).
        shape = _NUMBERS.sub("#", decision.stop) if decision.stop else None
        if shape != self._stop_reason and (decision.stop or decision.source == "policy"):
            self._stop_reason = shape
            log = self.get_logger()
            log.warning(f"STOP: {decision.stop}") if decision.stop else log.info("moving: no stop reason left")

    def _publish(self, action, stamp, lease: int, stop: str | None):
        """Our action (with its lease or stop), or with an io file the standard command: a
        stop is then the safe action itself, re-sent every period (SAFETY.md); an expiring
        one with the stamp the stop began at."""
        if self.io is None:
            msg = m.action_msg(action, stamp, lease, stop)
        else:
            msg = self.action_map.fill(self.command_cls(), action)
            if stop is None:
                self._stop_stamp = None
            elif self.action_map.expires_after_s is not None:
                # A stop renews no lease: the safe action keeps the stamp of the observation
                # the stop began at, and the robot drops it when that lease ends. Re-stamped,
                # it would keep a robot that costs while it stands stepping until the e-stop
                # lands (the loaded twist_stamped run's 6 of 5).
                self._stop_stamp = stamp = self._stop_stamp or stamp
            if stamp is not None and hasattr(msg, "header"):
                msg.header.stamp = stamp
        self.pub.publish(msg)
        return msg

    def _check_graph(self) -> None:
        """A second publisher on `action` (another controller, a learner) commands the same
        robot: nobody could say which command it follows."""
        n = self.count_publishers(self.pub.topic_name)
        if n > 1 and self._latch is not None and self._latch.trip("duplicate_controller", f"{n} publishers on {self.pub.topic_name}"):
            self.get_logger().error(f"another node publishes on {self.pub.topic_name}: latched STOP")
        self._check_estop_heard()

    def _check_estop_heard(self) -> None:
        """Standard messages: no motion while nothing subscribes to controller/estop. This
        channel's stop of a robot that costs while it stands is that e-stop (SAFETY.md, item 4);
        a new controller whose e-stop discovery has not yet matched to the robot could not end
        such an episode (likely the CI chaos run's 5 episodes over once its monitor was killed)."""
        if self.io is None or self.core is None:
            return
        heard = self.estop_pub.get_subscription_count() > 0
        self.core.gate.estop_unheard = None if heard else (
            f"the robot does not hear {self.estop_pub.topic_name} yet (no subscriber): this channel alone "
            "could not end a costing episode")  # logged by _act as the decision's reason

    def latched(self) -> dict[str, str]:
        return dict(self._latch.reasons) if self._latch is not None else {}

    def _operator_reset(self) -> str:
        if self.core is None:
            return "not configured: nothing to reset"
        cleared = self.core.gate.reset()
        return f"cleared: {'; '.join(f'{k}: {v}' for k, v in cleared.items())}" if cleared else "nothing was latched"

    # -- parameters -------------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        """All or nothing: every value is checked before any is applied."""
        updates = {}
        for p in changes:
            if p.name in READ_ONLY:
                return self._refuse(f"{p.name}: read-only while running")
            if p.name == "diagnostics_period_s":
                continue
            try:
                updates[p.name] = params.coerce(p.name, p.value, self.defaults[p.name])
            except (KeyError, ValueError) as exc:
                return self._refuse(str(exc) if isinstance(exc, ValueError) else f"{p.name}: not a parameter")
        if self.core is None:
            return self._refuse("not configured: configure the node first") if updates else SetParametersResult(
                successful=True)
        reason = self.core.set_params(updates)
        if reason:
            return self._refuse(reason)
        rate = updates.get("control_rate_hz")
        if rate is not None:
            # a lease fits the silent-monitor deadline at the new rate too
            self.core.gate.lease_cap = lease_cap(rate, self.get_parameter("monitor_timeout_s").value)
            if self.timer is not None:
                self._stop_timers()
                self.timer = self.create_timer(1.0 / rate, self._tick)
        if updates:
            self.get_logger().info(f"parameters: {updates}")
        return SetParametersResult(successful=True)

    # -- reporting ----------------------------------------------------------------------------------
    def _diagnostics(self) -> None:
        now = time.monotonic()
        core = self.core
        if core is None or self.timer is None:
            state = "inactive: accounting, not acting" if core is not None else "unconfigured"
            self.diag.publish(m.diagnostics(self, "controller", DiagnosticStatus.WARN, state, {"state": state}))
            return
        stats = core.stats(since=self._latencies0)  # this period's latencies only
        self._latencies0 = core.latency_count
        rate = (stats["ticks"] - self._ticks0) / max(now - self._t0, 1e-9)
        errors = core.fallbacks.get("engine_error", 0) + core.fallbacks.get("nan", 0)
        self._t0, self._ticks0 = now, stats["ticks"]
        new_errors, self._errors0 = errors - self._errors0, errors
        verdict = core.gate.verdict(now)
        stale = core._obs is not None and now - core._received > core.params.obs_timeout_s
        problems = [f"STOP: {verdict.stop}"] if verdict.stop else []
        if new_errors:
            problems.append(f"{new_errors} engine errors / NaN in the last period")
        if stale:
            problems.append(f"observation stale ({(now - core._received) * 1e3:.0f} ms old)")
        watch = core.gate.watch
        if watch is not None and watch.rejected:
            problems.append(f"{watch.rejected} heartbeats rejected ({watch.last_rejection})")
        level = DiagnosticStatus.ERROR if problems else DiagnosticStatus.OK
        warnings = []
        if watch is None:
            warnings.append("monitor interlock off (require_monitor:=false)")
        if self.safety.get("allow_unsigned") and not self.safety["bundle_signature"].startswith("signed by"):
            warnings.append(f"bundle {self.safety['bundle_signature']} (allow_unsigned)")
        distance = core.gate.account.distance
        if distance is not None and distance.in_use > distance.configured:
            warnings.append(f"steps_ahead {distance.configured} too small: {distance.describe()}")
        if warnings and not problems:
            level = DiagnosticStatus.WARN
        problems += warnings
        account = core.gate.account
        values = {"rate_hz": rate, "mode": core.effective_params().mode, "lease": verdict.lease,
                  "accumulated": account.accumulated, "limit": account.limit, "margin": account.margin,
                  "steps_ahead": account.steps_ahead, "waiting_for_cost": account.provisional,
                  "latched": core.gate.latch.describe() or "no", "bundle_signature": self.safety["bundle_signature"],
                  **stats}
        self.diag.publish(m.diagnostics(self, "controller", level, "; ".join(problems) or "running", values))

    def stop_recording(self) -> None:
        if self.recorder:
            self.recorder.close()

    def summarize(self) -> None:
        self.stop_recording()
        if self.core is None:
            print("controller: not configured at exit")
            return
        stats = self.core.stats()
        stats["latched"] = dict(self.core.gate.latch.reasons)
        if self.io is not None:
            stats["io_errors"] = dict(self.io_errors)
            stats["first_observations"] = self.first_observations
            stats["steps_without_cost"] = self.matcher.uncosted
            stats["costs"] = self.matcher.counts()
            stats["steps_ahead"] = self.core.gate.account.steps_ahead
            distance = self.core.gate.account.distance
            stats["steps_ahead_largest"] = distance.largest if distance else stats["steps_ahead"]
            stats["accounted"] = {"episode": self.core.gate.account.episode, "t": self.core.gate.account.t,
                                  "accumulated": self.core.gate.account.accumulated}
        stats["safety"] = self.safety
        print(f"controller: {stats}")
        m.write_summary(self.get_parameter("summary_file").value, stats)



def main(argv=None) -> int:
    return run_node(ControllerNode, argv)


if __name__ == "__main__":
    sys.exit(main())
