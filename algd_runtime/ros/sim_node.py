"""algd-sim: a task from algd_runtime.sim stepped in real time, standing in for a robot.

Publishes the observation (stamped when measured), the step's reward and cost, and episode
events; applies the newest action with a zero-order hold. Parameters: task, seed (episode i
resets with seed + i, as algd-eval does), rate_hz (control steps per second of wall time),
real_time_factor, lockstep (step only once the action answering the last observation has
arrived, or after lockstep_timeout_s, where <= 0 waits for ever: reproducible runs, as in
simulation), and the domain-shift parameters (mass, friction, actuator_gain, obs_noise,
action_delay, hazard_scale).

It keeps the robot's side of the budget contract (SAFETY.md):
- each observation carries (episode, t, cost of step t);
- an action is applied for at most its lease (steps past the observation it answers), and no
  later than lease + 1 periods after it was sent or arrived, whichever is earlier (DDS's
  timestamps: a robot that stalled with its driver resumes on no old lease, and an action a
  blocked controller delivers late is not applied; not in lockstep); with the lease used up
  the robot waits for a newer action;
- on a stop action, on the monitor's e-stop, or when no command has arrived for
  cmd_timeout_s (as ros2_control's command timeout) it holds still: the episode in progress
  ends there ("reason": the hold's) and the next one starts, but no step is taken until a
  moving action arrives and the e-stop is clear;
- while it waits for a command it re-sends the current observation every REPUBLISH_S, as a
  robot publishes its state continuously (a late controller still hears it).

With `io` (an io file, adapters.py) it speaks standard messages instead, from the robot's
side of that file: the observation on the file's topics (JointState joints listed in reverse,
as a driver lists them in its own order), a cost for every state on the cost topic before
it (the step's cost; 0 for an episode's first state and for the state it publishes,
stamped anew, every period while it waits), the last step's state too, an Empty on the episode
topic as each episode starts, and the command read back through the action map; an
e-stop ends the episode in progress even if it took no step. A
standard command has no stop: the robot applies the newest one, and the e-stop and
cmd_timeout_s still hold it; an expiring one (TwistStamped, JointTrajectory with
expires_after_s) is dropped that long after its stamp, as diff_drive_controller and
joint_trajectory_controller do. It also holds until the monitor's e-stop has said "clear"
once (a robot that starts before its monitor must not move on the controller's first
commands).

Service `reset_episode` (std_srvs/Trigger) ends the episode in progress (an "end" event with
"reason": "reset") and starts the next one; on an episode with no step taken yet it changes
nothing. Its reply message is JSON {"index", "stamp", "observation"}: RosEnv.reset().
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict, deque

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from algd_runtime.deploy.adapters import load_io
from algd_runtime.ros import messages as m
from algd_runtime.ros import params
from algd_runtime.ros.entry import run_node
from algd_runtime.ros.realtime import DEFAULT_SLICE_US
from algd_runtime.sim import make_task
from algd_runtime.sim.shift import NOMINAL as SHIFT

REPUBLISH_S = 0.05  # while waiting for a command, the current observation is re-sent this often
LATENCY_WINDOW = 100_000  # latencies kept for the summary's percentiles


# Every parameter and its default (launch/controller.yaml states them; tests/test_launch.py).
DEFAULTS = {
    "task": "PointHazard-v0", "budget": "algd", "seed": 0, "rate_hz": 500.0, "real_time_factor": 1.0,
    "max_episodes": 0,  # 0: run until stopped
    "lockstep": False, "lockstep_timeout_s": 1.0,
    "cmd_timeout_s": 0.5,  # no command for this long: hold still
    "summary_file": "",  # JSON stats written at exit (algd-bench loop)
    "sched_slice_us": DEFAULT_SLICE_US,  # a short time slice on the default scheduler (ros/realtime.py); 0: the kernel's
    "executor": "lean",  # lean | rclpy (ros/executor.py)
    "realtime_priority": 0,  # 1-99: SCHED_FIFO (ros/realtime.py)
    "cpu_affinity": [],  # CPUs to run on ([]: any)
    "io": "",  # an io file: speak standard messages (see the module's docstring)
    "cost_scale": 1.0,  # each step's cost x this: a cost per unit of time at another rate
    # A robot as DDS and a careless driver treat its io messages (the fault matrix):
    "io_cost_drop": 0.0,  # this fraction of cost messages never sent
    "io_cost_late": 0.0,  # this fraction sent after the state that follows the step
    "io_episode_drop": 0.0,  # this fraction of episode messages never sent
    "io_steps": False,  # also publish the raw `step` messages (for a probe that counts steps)
    **SHIFT}


def _fraction_problem(name: str, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return f"{name}: expected a fraction in 0..1, got {value!r}"
    return None


class SimNode(Node):
    NAME = "sim"

    def __init__(self, **overrides):
        super().__init__(self.NAME, **overrides)
        values = params.declare(self, DEFAULTS)
        get = values.__getitem__
        shift = {k: get(k) for k in SHIFT if get(k) != SHIFT[k]}
        self.seed = get("seed")
        self.cost_scale = get("cost_scale")
        if not self.cost_scale > 0:
            raise ValueError(f"cost_scale: expected a value > 0, got {self.cost_scale}")
        self.io_faults = {k: get(k) for k in ("io_cost_drop", "io_cost_late", "io_episode_drop")}
        for k, v in self.io_faults.items():
            if problem := _fraction_problem(k, v):
                raise ValueError(problem)
        self._fixed = set(values) - set(self.io_faults)
        self.add_on_set_parameters_callback(self._on_set_parameters)  # the io faults change at run time (algd-bench chaos)
        self.io_steps = get("io_steps")
        self._fault_rng = np.random.default_rng(self.seed + 7919)
        # The bundle's budget: a policy trained with budget: safety_gymnasium meets the same
        # costs and episode length here (make_task refuses a budget the task does not have).
        self.env = make_task(get("task"), seed=self.seed, budget=get("budget"), **shift)
        self.spec = self.env.task_spec
        self.action = np.zeros(self.spec.act_dim, np.float32)
        self.episode, self.returns, self.costs, self.ended_by = 0, [], [], []
        self.max_episodes, self.lockstep = get("max_episodes"), get("lockstep")
        self.lockstep_timeout, self.cmd_timeout = get("lockstep_timeout_s"), get("cmd_timeout_s")
        self._stamp = None  # stamp of the last observation published
        self._answered = False  # an action carrying that stamp has arrived
        self._published_at = 0.0
        self._published: OrderedDict = OrderedDict()  # stamp ns -> (episode, t) of recent observations
        self._cmd = None  # (episode, t answered, lease, stop reason) of the newest action
        self._lease_ends_ns: int | None = None  # its lease in time (m.lease_end_ns)
        self._cmd_expires_ns: int | None = None  # an expiring standard command: when it is dropped
        self._cmd_at: float | None = None
        self.estop = False
        self._estop_rose = False  # an e-stop began since the last step: it ends the episode
        self.estop_heard = False
        self._reading = False  # inside _read_command
        self.holding: str | None = None
        self.holds: list[tuple[float, str]] = []  # (monotonic time, reason) each time a hold began
        self.lease_waits = 0
        self.steps = 0
        # Observation published -> its action received (s), late ones too: the newest
        # LATENCY_WINDOW (a soak at 500 Hz grew the sim by 27 MB in 30 min with a list).
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.answers = 0  # every answer, over the run
        self.answered = 0  # observations whose action arrived before the next step
        self.answered_in_period = 0  # ... within one period of being published, whenever the next step came
        self._waiting: OrderedDict = OrderedDict()  # stamp ns -> publish time of observations not answered yet
        self.observations = 0  # distinct observations published (re-sends not counted)
        self.superseded = 0  # of those, states followed at once by another (io: an episode's last)
        self.first_observations: list[list[float]] = []
        self.qos = m.QosCheck(self)
        self.io = load_io(get("io"), m.message_class) if get("io") else None
        self.step_pub = self.qos.watch(self.create_publisher(Float64MultiArray, m.STEP, **m.wired(m.RELIABLE, True)),
                                       True)
        self.ep_pub = self.qos.watch(self.create_publisher(String, m.EPISODE, **m.wired(m.EVENTS, True)), True)
        if self.io is None:
            self.obs_pub = self.qos.watch(self.create_publisher(JointState, m.OBSERVATION, **m.wired(m.LATEST, True)),
                                         True)
            self.command_sub = self.qos.watch(self.create_subscription(JointState, m.ACTION, self._on_action,
                                                                       **m.wired(m.LATEST, False)), False)
        else:
            self._wire_io()
        self.create_service(Trigger, "reset_episode", self._on_reset_episode)
        self.create_subscription(Bool, m.ESTOP, self._on_estop, **m.endpoint(m.LATCHED, False))
        self._estops = {"monitor": False, "controller": False}
        if self.io is not None:  # a robot on standard messages holds while either e-stop says so
            self.create_subscription(Bool, m.CONTROLLER_ESTOP, lambda msg: self._on_estop(msg, "controller"),
                                     **m.endpoint(m.LATCHED, False))
        period = self.period = 1.0 / (get("rate_hz") * get("real_time_factor"))
        self.paused = False
        self._start_episode()
        self.timer = self.create_timer(period, self._step)
        m.mark_cpu()

    def _wire_io(self) -> None:
        io = self.io
        self.action_map = io.bind(self.spec.obs_dim, self.spec.act_dim)
        self.io_pubs = {topic: self.qos.watch(self.create_publisher(
            m.message_class(kind), topic, **m.wired(m.RELIABLE if topic == io.cost.topic else m.COMMANDS, True)), True)
                        for topic, kind in io.topics().items()}
        self.command_sub = self.qos.watch(self.create_subscription(
            m.message_class(io.action_type), io.action_topic, self._on_command, **m.wired(m.LATEST, False)), False)

    def _start_episode(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed + self.episode)
        self.ep_return, self.ep_costs = 0.0, []
        if self.io is not None and self.io.episode_topic and not self._faulty("io_episode_drop"):
            self.io_pubs[self.io.episode_topic].publish(m.message_class("std_msgs/Empty")())
        self._publish_obs(start=True)

    @property
    def halted(self) -> bool:
        return self.holding is not None

    def _on_set_parameters(self, changes):
        """The io faults may change while the robot runs; nothing else does (all or nothing)."""
        from rcl_interfaces.msg import SetParametersResult

        for p in changes:
            if p.name in self._fixed:
                return SetParametersResult(successful=False, reason=f"{p.name}: fixed at start (only the io_* faults "
                                                                    f"change while the robot runs)")
            if p.name in self.io_faults and (problem := _fraction_problem(p.name, p.value)):
                return SetParametersResult(successful=False, reason=problem)
        for p in changes:
            if p.name in self.io_faults:
                self.io_faults[p.name] = float(p.value)
        return SetParametersResult(successful=True)

    def _end_episode(self, reason: str) -> None:
        cost = self.spec.episode_cost(self.ep_costs)
        self.returns.append(self.ep_return)
        self.costs.append(cost)
        self.ended_by.append(reason)
        self.ep_pub.publish(m.episode_msg("end", self.episode, self.ep_return, cost, steps=len(self.ep_costs),
                                          reason=reason))
        self.episode += 1

    def _on_estop(self, msg: Bool, source: str = "monitor") -> None:
        self._estops[source] = bool(msg.data)
        was, self.estop = self.estop, any(self._estops.values())
        self._estop_rose = self._estop_rose or (self.estop and not was)  # seen by the next step, even if it flapped
        self.estop_heard = self.estop_heard or source == "monitor"
        if self.estop:
            self._step()  # hold now, not a period later

    def _on_reset_episode(self, request, response):
        if self.ep_costs:  # an episode with steps taken: end it here
            self._end_episode("reset")
            self._start_episode()
        response.success = True
        response.message = json.dumps({"index": self.episode, "stamp": m.stamp_pair(self._stamp),
                                       "observation": [float(x) for x in self.obs]})
        return response

    def _publish_obs(self, stamp=None, start: bool = False, cost: float | None = None) -> None:
        """The current observation, stamped now (or `stamp`); with an io file, with the cost
        of the step that led to it (`cost` overrides: 0 for a state re-sent while waiting)."""
        if self.io is not None and start and self._stamp is not None and not self._answered:
            # On standard messages an episode's last state goes out just before the next one's
            # first: no command can answer it in between (unstamped commands answer the newest).
            self.superseded += 1
        self._stamp = stamp or self.get_clock().now().to_msg()
        self._answered = False
        t = len(self.ep_costs)
        self._published[m.stamp_ns(self._stamp)] = (self.episode, t)
        while len(self._published) > 256:
            self._published.popitem(last=False)
        self._sent_at = time.monotonic()
        self.observations += 1
        # The answer's clock starts as the observation goes out (its messages are built by
        # then: building them in Python is this stand-in's cost, not the loop's).
        if self.io is not None:
            self._publish_io(cost if cost is not None else self.ep_costs[-1] if self.ep_costs else None)
        else:
            self._obs_msg = m.observation_msg(self.obs, self._stamp, self.episode, t,
                                              self.ep_costs[-1] if self.ep_costs else 0.0)
            self._published_at = time.monotonic()
            self.obs_pub.publish(self._obs_msg)
        self._waiting[m.stamp_ns(self._stamp)] = self._published_at
        while len(self._waiting) > 256:
            self._waiting.popitem(last=False)
        # After the observation, which the controller waits for: the episode's first
        # observation travels with its start event (for logs; nothing orders the two topics).
        if start:
            self.ep_pub.publish(m.episode_msg("start", self.episode, stamp=m.stamp_pair(self._stamp),
                                              observation=[float(x) for x in self.obs]))
        if len(self.first_observations) < 200:  # the summary's record of what was published (tests)
            self.first_observations.append([float(x) for x in self.obs])

    def _publish_io(self, cost: float | None) -> None:
        """The state as the io file's messages: the cost first, the trigger topic last."""
        msgs = self._io_messages(cost)
        order = sorted(msgs, key=lambda topic: topic == self.io.trigger)
        cost_topic = self.io.cost.topic
        if cost_topic not in self.io.observation.types:  # a cost message of its own: faults apply
            if self._faulty("io_cost_drop"):
                order.remove(cost_topic)
            elif self._faulty("io_cost_late"):
                order.remove(cost_topic)
                order.append(cost_topic)
        for topic in order:
            if topic == self.io.trigger:  # the state is out with its trigger's message
                self._published_at = time.monotonic()
            self.io_pubs[topic].publish(msgs[topic])

    def _faulty(self, kind: str) -> bool:
        return self.io_faults[kind] > 0 and self._fault_rng.random() < self.io_faults[kind]

    def _io_messages(self, cost: float | None) -> dict:
        """topic -> message of the state (and of the step's cost when it has one)."""
        io = self.io
        msgs = io.observation.write(self.obs, lambda kind: m.message_class(kind)())
        # A cost for every state (SAFETY.md), 0 where no step led to it (an episode's start).
        if io.cost.topic not in msgs:
            msgs[io.cost.topic] = m.message_class(io.cost.type)()
        io.cost.write(msgs[io.cost.topic], [cost or 0.0])
        for msg in msgs.values():
            if hasattr(msg, "header"):
                msg.header.stamp = self._stamp
            if hasattr(msg, "name") and hasattr(msg, "position"):  # a driver's own joint order
                n = len(msg.name)
                msg.name = list(reversed(msg.name))
                for arr in ("position", "velocity", "effort"):
                    if len(getattr(msg, arr)) == n:
                        setattr(msg, arr, list(reversed(getattr(msg, arr))))
        return msgs

    def _republish(self, now: float) -> None:
        """A robot publishes its state continuously: a controller that started late or lost
        the one observation still hears it while the robot waits (same stamp and step, so
        nothing is counted twice)."""
        # A robot on standard messages publishes its state at its rate, moving or not.
        if now - self._sent_at >= (self.period * 0.9 if self.io is not None else REPUBLISH_S):
            self._sent_at = now
            if self.io is None:
                self.obs_pub.publish(self._obs_msg)
            else:  # as a robot on standard messages does: its state, stamped now, no step taken
                self._publish_obs(cost=0.0)

    def _on_action(self, msg: JointState, info: dict) -> None:
        if len(msg.effort) != self.spec.act_dim:
            return
        lease, stop = m.action_verdict(msg)
        answers = self._published.get(m.stamp_ns(msg.header.stamp))  # None: not one of ours, or too old
        self._cmd, self._cmd_at = (answers, lease, stop), time.monotonic()
        # In time too (m.lease_end_ns): a robot that stalled with its driver must not resume on
        # a lease given before the stall, nor step on an action delivered late (lockstep: no
        # wall time).
        self._lease_ends_ns = None if self.lockstep else m.lease_end_ns(info, lease, self.period, time.time_ns())
        if stop is None:
            self.action = np.asarray(msg.effort, np.float32)
        sent = self._waiting.pop(m.stamp_ns(msg.header.stamp), None)
        if sent is not None:  # the first answer to one of ours, in time or late
            self.latencies.append(time.monotonic() - sent)
            self.answers += 1
            self.answered_in_period += self.latencies[-1] <= self.period
        if self._stamp is not None and msg.header.stamp == self._stamp and not self._answered:
            self._answered = True
            self.answered += 1
        if stop and self.holding is None and not self._reading:
            self._step()  # hold now, not a period later (inside a step, that step holds)

    def _on_command(self, msg) -> None:
        """A standard command (io file): no lease, no stop; the newest one is applied."""
        try:
            action = self.action_map.read(msg)
        except (ValueError, AttributeError):
            return
        self._cmd, self._cmd_at, self.action = ("io", None, None), time.monotonic(), action
        expiry = self.action_map.expires_after_s
        if expiry is not None:  # as diff_drive / joint_trajectory_controller: dropped at stamp + expiry
            self._cmd_expires_ns = m.stamp_ns(msg.header.stamp) + int(expiry * 1e9)
        if self._stamp is not None and not self._answered:  # no stamp on a command: the first after it
            self._answered = True
            self.answered += 1
            self.latencies.append(time.monotonic() - self._published_at)
            self.answers += 1
            self.answered_in_period += self.latencies[-1] <= self.period

    def _hold_reason(self, now: float) -> str | None:
        if self.estop:
            return "estop"
        if self.io is not None and not self.estop_heard:
            return "estop_unknown"
        if self._cmd is None:
            return "no_command"
        if now - self._cmd_at > self.cmd_timeout:
            return "cmd_timeout"
        if self._cmd[2]:
            return f"stop: {self._cmd[2]}"
        return None

    def _read_command(self) -> None:
        """The newest command before each step, as a ros2_control update reads its command
        buffer: rclpy runs a due timer before a waiting message, which would otherwise step
        on the old command while the answer sits in the queue."""
        self._reading = True
        try:
            m.take_waiting(self.command_sub)
        finally:
            self._reading = False

    def _step(self) -> None:
        if self.paused or (self.max_episodes and self.episode >= self.max_episodes):
            return
        self._read_command()
        now = time.monotonic()
        hold = self._hold_reason(now)
        if hold:
            if self.holding is None:
                self.holds.append((now, hold))
            # The episode ends where the robot stopped. On standard messages an e-stop ends it
            # even before a step: the nodes count every state as a step, the ones re-sent while
            # the robot waits too, and their worst-case charges can spend an episode that
            # nothing else would end (SAFETY.md, standard messages).
            ends = self.ep_costs or (self.io is not None and hold == "estop" and self._estop_rose)
            self._estop_rose = False
            self.holding = hold
            if ends:
                self._end_episode(hold)
                if not (self.max_episodes and self.episode >= self.max_episodes):
                    self._start_episode()
            self._republish(now)
            return
        self.holding, self._estop_rose = None, False
        answers, lease, _ = self._cmd
        if self.io is None:  # the lease in time, on the clock DDS stamped its arrival with
            expired = self._lease_ends_ns is not None and time.time_ns() > self._lease_ends_ns
        else:  # an expiring standard command: its stamp is ROS time
            expired = self._cmd_expires_ns is not None and self.get_clock().now().nanoseconds > self._cmd_expires_ns
        if expired or self.io is None and (answers is None or answers[0] != self.episode
                                           or len(self.ep_costs) - answers[1] >= lease):
            self.lease_waits += 1
            self._republish(now)
            return  # no action valid for this step: wait for a newer one
        if self.lockstep and not self._answered and (
                self.lockstep_timeout <= 0 or now - self._published_at < self.lockstep_timeout):
            return  # wait for the action that answers the last observation
        self.steps += 1
        action = self.action.copy()
        self.obs, r, c, term, trunc, _ = self.env.step(action)
        c *= self.cost_scale
        self.ep_return += r
        self.ep_costs.append(c)
        stamp = self.get_clock().now().to_msg()
        step = None if self.io and not self.io_steps else m.step_msg(r, c, term, trunc, self.episode, len(self.ep_costs), stamp, action,
                                               self.obs)
        if not (term or trunc):
            # The controller's message first: it is on the loop's critical path, the
            # monitor's copy of the step is not (its deadline is monitor_max_lag_s).
            self._publish_obs(stamp)
            if step is not None:
                self.step_pub.publish(step)
            return
        if self.io is not None:  # the last step's cost and the state it ended in, before the episode ends
            self._publish_obs(stamp)
        if step is not None:
            self.step_pub.publish(step)
        self._end_episode("terminated" if term else "truncated")
        if not (self.max_episodes and self.episode >= self.max_episodes):
            self._start_episode()

    def summarize(self) -> None:
        lat = np.asarray(self.latencies) * 1e3 if self.latencies else np.array([np.nan])
        print(f"sim: {self.episode} episodes, returns {np.round(self.returns, 2).tolist()}, "
              f"costs {np.round(self.costs, 2).tolist()}, observation->action p50 {np.percentile(lat, 50):.3f} ms "
              f"p99 {np.percentile(lat, 99):.3f} ms over the last {len(self.latencies)} of {self.answers} answers ({self.answered} of "
              f"{self.observations} observations answered before the next step); holds "
              f"{[r for _, r in self.holds]}, ended by {self.ended_by}, {self.lease_waits} waits")
        m.write_summary(self.get_parameter("summary_file").value, {
            "steps": self.steps, "episodes": self.episode, "returns": self.returns, "costs": self.costs,
            "holds": self.holds, "lease_waits": self.lease_waits, "ended_by": self.ended_by,
            "cmd_timeout_s": self.cmd_timeout, "first_observations": self.first_observations,
            "observations": self.observations, "superseded": self.superseded, "answered": self.answered,
            "answered_in_period": self.answered_in_period,
            "answers": self.answers, "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)), "latency_max_ms": float(np.max(lat))})


def main(argv=None) -> int:
    return run_node(SimNode, argv)


if __name__ == "__main__":
    sys.exit(main())
