"""Topic names, QoS and conversions between numpy and standard ROS 2 messages.

| topic (under the namespace, default /algd) | type | from -> to |
| --- | --- | --- |
| observation | sensor_msgs/JointState: position = observation, effort = [episode, t, cost] (OBS_META), header.stamp = when measured | robot -> controller, monitor |
| action | sensor_msgs/JointState: effort = action, header.stamp = the observation's, header.frame_id = the verdict ("lease=N" or "stop=why") | controller (reliable) -> robot, monitor |
| step | std_msgs/Float64MultiArray: the transition (STEP_FIELDS below) | robot -> monitor, RosEnv |
| episode | std_msgs/String (JSON: {"event": "start" or "end", "index", "return", "cost", ...}) | robot -> monitor, RosEnv |
| heartbeat | std_msgs/String: the monitor's signed state (safety.sign_heartbeat) | monitor -> controller |
| monitor/status | diagnostic_msgs/DiagnosticStatus: the monitor's level and budget view, at every transition and every second (latched) | monitor -> anyone |
| estop | std_msgs/Bool (latched, re-asserted) | monitor -> robot |
| controller/reset, monitor/reset | std_msgs/String (JSON {"nonce", "proof"}) | operator (algd-reset) -> node |
| controller/reset_result, monitor/reset_result | std_msgs/String (JSON {"nonce", "ok", "message"}) | node -> operator |
| /diagnostics | diagnostic_msgs/DiagnosticArray | every node |

With an io file (parameter `io`, adapters.py) the controller reads standard messages on the
topics the file names and writes standard commands instead of observation and action, and
the budget follows the contract for standard messages (SAFETY.md, safety.CostMatcher).

The budget contract (SAFETY.md): observation t carries the cost of the step that produced it,
so the controller has accounted every step before it answers; an action's lease is the
number of steps the robot may take on it past the observation it answers.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSCompatibility, QoSPolicyKind, QoSProfile, ReliabilityPolicy,
                       qos_check_compatible)
from rclpy.qos_overriding_options import QoSOverridingOptions
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String

OBSERVATION, ACTION, STEP, EPISODE, ESTOP = "observation", "action", "step", "episode", "estop"
# With an io file the controller's own e-stop (std_msgs/Bool, latched): a standard command
# cannot say "stop and end the episode" as our action's "stop=" does. The robot holds while
# either e-stop is true.
CONTROLLER_ESTOP = "controller/estop"
MONITOR_STATUS = "monitor/status"
HEARTBEAT, RESET, RESET_RESULT, RESET_CHALLENGE = "heartbeat", "~/reset", "~/reset_result", "~/reset_challenge"
OBS_META = ("episode", "t", "cost")  # t: steps taken in the episode; cost: step t's (0 at t = 0)

# QoS follows ROS conventions. What we publish for others to act on (action, step,
# episode) is reliable and keep-last, so that a subscriber with default QoS (most robot
# drivers, `ros2 topic echo`) receives it, and a best-effort one does too. What we read
# from sensors is subscribed best effort, which matches any publisher.
#
# Newest only: a late observation is worth nothing to a controller.
LATEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
# Commands (rclpy's default profile: reliable, keep-last 10, volatile).
COMMANDS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Observations carry the budget's costs: a short queue so that a burst is accounted, not
# dropped (a dropped one still counts, as the worst case).
OBSERVATIONS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
# An io file's cost and episode topics, read: best effort matches any publisher, and a lost
# cost message is charged as the worst case (safety.CostMatcher), so losing one is safe.
COSTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
# /diagnostics: rclpy's default (reliable, keep-last 10), as diagnostic aggregators expect.
DIAGNOSTICS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Every step's cost and every episode event count for the budget.
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Episode events are the run's record: a reader a few seconds behind (a loaded logger) must
# not lose one when episodes are short (the chaos soak lost 56 of ~2 000 with depth 100), and
# one that joins late (a logger, the fault bench's probe: discovery took seconds on a loaded
# machine and it missed the first episode) reads the last 2 000 when it asks for them
# (TRANSIENT_LOCAL); a volatile reader (the monitor) gets only what follows, as before.
EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2000, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
# A late joiner still sees the e-stop.
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
# The operator reset's results: a reader that discovery matched late (a loaded graph) still
# gets the answers of the last few resets, each naming its nonce.
RESULTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=16, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)

# The topics a robot integrator wires (observation, action, step, episode) take ROS's
# standard QoS overrides from the parameter YAML, per topic and side:
#   qos_overrides./algd/action.publisher.reliability: best_effort   (history, depth, durability alike)
# The safety channels (heartbeat, estop, reset) do not: their QoS is part of the interlock.
OVERRIDABLE = QoSOverridingOptions(
    policy_kinds=(QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY, QoSPolicyKind.DURABILITY))


# rclpy gives every publisher and subscription default QoS event handlers: waitables that
# its executor builds into the wait set at every wake-up, 12-18 per node here, ~40 us per
# wake-up (BENCHMARKS.md, "The whole graph"), twice a step at 1 kHz. The nodes create their
# endpoints without them, and QosCheck reads the graph once a second instead.
NO_PUB_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
NO_SUB_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)


def endpoint(profile: QoSProfile, publisher: bool) -> dict:
    """create_publisher / create_subscription keywords for a fixed-QoS topic."""
    return {"qos_profile": profile, "event_callbacks": NO_PUB_EVENTS if publisher else NO_SUB_EVENTS}


def wired(profile: QoSProfile, publisher: bool) -> dict:
    """create_publisher / create_subscription keywords for a wired topic: QoS overrides from
    the YAML. A copy of the profile: rclpy writes the overrides into the object it is given."""
    return {**endpoint(copy.copy(profile), publisher), "qos_overriding_options": OVERRIDABLE}


class Polled(CallbackGroup):
    """Subscriptions the executor never waits on: their node reads what waits on them
    (take_waiting) when it needs their newest message, as ros2_control reads its state
    interfaces at each update. A topic read only with another's message then costs no
    wake-up of its own (each costs a few hundred microseconds of a core on a 2-core VM)."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


def take_waiting(subscription) -> None:
    """Run the subscription's callback on every message waiting in its queue, now. rclpy's
    executor runs due timers before waiting messages; a node that must act on the newest
    message (a command, a heartbeat) reads them itself first."""
    with subscription.handle:
        while (taken := subscription.handle.take_message(subscription.msg_type, False)) is not None:
            call(subscription, taken)


def arrived_at(info: dict | None, now: float) -> float:
    """When a message reached this process (DDS's reception time, on this machine's clock),
    on the monotonic clock of `now`; `now` where DDS did not say."""
    received = info.get("received_timestamp") if info else None
    if not received:
        return now
    return now - min(max(time.time_ns() - received, 0), 10**12) * 1e-9


def source_ns(info: dict | None) -> int | None:
    """When the publisher sent a message (its DDS source timestamp), from rclpy's message info."""
    return info.get("source_timestamp") if info else None


def lease_end_ns(info: dict | None, lease: int, period_s: float, now_ns: int) -> int:
    """When an action's lease ends in time (wall clock, ns): lease + 1 periods after the
    earlier of when the controller sent it (DDS's source timestamp) and when it arrived. Sent:
    a controller blocked inside `publish` (a killed peer's shared-memory lock) delivers its
    action seconds late, and the robot must not step on it then. Arrived: a robot whose clock
    runs behind the controller's must not get a longer lease. `now_ns` where DDS did not say."""
    known = [t for t in (source_ns(info), (info or {}).get("received_timestamp")) if t]
    return (min(known) if known else now_ns) + int((lease + 1) * period_s * 1e9)


def take_in_sent_order(subscriptions: list, first: tuple | None = None) -> list:
    """Every message waiting on `subscriptions`, with `first` ((subscription, (msg, info)),
    one already taken), as (subscription, taken) in the order their publishers sent them (DDS
    source timestamps; ties keep the order given). DDS orders no two topics, and the executor
    takes one message of each ready subscription in turn: a node that accounts costs, states
    and episode starts must read them in the robot's order, or a new episode's cost read
    before its start message is charged to the episode that ended (and lost from its own)."""
    taken = [first] if first is not None else []
    for sub in dict.fromkeys(subscriptions):
        with sub.handle:
            while (message := sub.handle.take_message(sub.msg_type, False)) is not None:
                taken.append((sub, message))
    return sorted(taken, key=lambda item: (item[1][1] or {}).get("source_timestamp", 0))


def call(subscription, taken) -> None:
    """Run a subscription's callback on a message taken from it."""
    if subscription._callback_type is subscription.CallbackType.WithMessageInfo:
        subscription.callback(*taken)
    else:
        subscription.callback(taken[0])


def _matching_policies(qos) -> QoSProfile:
    """The policies that decide whether two endpoints match and that the nodes set
    (reliability, durability); the graph reports deadlines and leases in a form that
    qos_check_compatible misreads as set."""
    return QoSProfile(depth=1, reliability=qos.reliability, durability=qos.durability)


class QosCheck:
    """What rclpy's QoS event handlers would say, from the graph: each peer whose QoS cannot
    match one of ours (a reliable subscriber on a best-effort publisher, ...) is logged once,
    and kept in `incompatible`."""

    def __init__(self, node, period_s: float = 1.0) -> None:
        from rclpy.clock import Clock, ClockType

        self.node, self.endpoints, self.incompatible = node, [], []
        self._seen: set = set()
        node.create_timer(period_s, self.check, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def watch(self, entity, publisher: bool):
        self.endpoints.append((entity, publisher))
        return entity

    def check(self) -> None:
        for entity, publisher in self.endpoints:
            topic = entity.topic_name
            peers = (self.node.get_subscriptions_info_by_topic(topic) if publisher
                     else self.node.get_publishers_info_by_topic(topic))
            ours = _matching_policies(entity.qos_profile)
            for peer in peers:
                theirs = _matching_policies(peer.qos_profile)
                verdict, reason = qos_check_compatible(*((ours, theirs) if publisher else (theirs, ours)))
                key = (topic, bytes(peer.endpoint_gid))
                if verdict == QoSCompatibility.ERROR and key not in self._seen:
                    self._seen.add(key)
                    who = f"{peer.node_namespace.rstrip('/')}/{peer.node_name}"
                    line = (f"{topic}: {'subscription' if publisher else 'publisher'} of {who} has incompatible QoS, "
                            f"no messages will pass ({reason.strip()}); set qos_overrides (README, QoS)")
                    self.incompatible.append(line)
                    self.node.get_logger().warning(line)


def observation_msg(obs: np.ndarray, stamp, episode: int = 0, t: int = 0, cost: float = 0.0) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.position = [float(x) for x in obs]
    msg.effort = [float(episode), float(t), float(cost)]
    return msg


def observation_meta(msg: JointState) -> tuple[int, int, float] | None:
    """(episode, t, cost) of an observation, or None if the robot sent none."""
    if len(msg.effort) != len(OBS_META):
        return None
    episode, t, cost = msg.effort
    return int(episode), int(t), float(cost)


def action_msg(action: np.ndarray, stamp, lease: int = 1, stop: str | None = None) -> JointState:
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = f"stop={stop}" if stop else f"lease={int(lease)}"
    msg.effort = [float(x) for x in action]
    return msg


def action_verdict(msg: JointState) -> tuple[int, str | None]:
    """(lease, stop reason) of an action; an action without a readable verdict is a stop."""
    tag, _, value = msg.header.frame_id.partition("=")
    if tag == "lease":
        try:
            return max(0, int(value)), None
        except ValueError:
            pass
    elif tag == "stop":
        return 0, value or "stop"
    return 0, f"no verdict on the action ({msg.header.frame_id!r})"


def message_class(type_name: str):
    """The message class for "package/Type" (an io file's types), imported on first use."""
    import importlib

    package, _, name = type_name.partition("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise ValueError(f"io: message type {type_name} is not installed (pip install ros-jazzy-"
                         f"{package.replace('_', '-')})") from None


def header_stamp(msg):
    """The stamp of a message with a header, else None."""
    header = getattr(msg, "header", None)
    return header.stamp if header is not None else None


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_stamp_ns(msg) -> int | None:
    """The robot's stamp on a message with a header (a stamped cost or state), else None."""
    stamp = header_stamp(msg)
    return None if stamp is None else stamp_ns(stamp)


# A step message is one whole transition, so that a learner (RosEnv) or a recorded log can
# rebuild (obs, action, reward, cost, next_obs, done) from it alone. Only the first two
# fields are required: the monitor reads reward and cost, and a robot driver that knows no
# more may send just those.
STEP_FIELDS = ("reward", "cost", "terminated", "truncated", "episode", "t", "stamp_sec", "stamp_nanosec")


@dataclass
class Step:
    reward: float
    cost: float
    terminated: bool
    truncated: bool
    episode: int
    t: int  # steps taken in the episode, this one included
    stamp: tuple[int, int]  # (sec, nanosec) of next_obs, as published on `observation`
    action: np.ndarray  # the action this step applied (as commanded, before any robot-side delay)
    next_obs: np.ndarray


def step_msg(reward: float, cost: float, terminated: bool = False, truncated: bool = False, episode: int = 0,
             t: int = 0, stamp=None, action=(), next_obs=()) -> Float64MultiArray:
    head = [reward, cost, terminated, truncated, episode, t,
            stamp.sec if stamp else 0, stamp.nanosec if stamp else 0]
    return Float64MultiArray(data=[float(x) for x in head] + [float(x) for x in action] + [float(x) for x in next_obs])


def parse_step(msg: Float64MultiArray, act_dim: int, obs_dim: int) -> Step:
    """The full transition; a ValueError says what a shorter message lacks."""
    data = np.asarray(msg.data, np.float64)
    need = len(STEP_FIELDS) + act_dim + obs_dim
    if data.size != need:
        raise ValueError(f"step message: expected {need} values ({', '.join(STEP_FIELDS)}, action[{act_dim}], "
                         f"next_observation[{obs_dim}]), got {data.size}; the robot must publish whole "
                         f"transitions for learning (algd-sim does)")
    h = len(STEP_FIELDS)
    return Step(float(data[0]), float(data[1]), bool(data[2]), bool(data[3]), int(data[4]), int(data[5]),
                (int(data[6]), int(data[7])), data[h:h + act_dim].astype(np.float32),
                data[h + act_dim:].astype(np.float32))


def episode_msg(event: str, index: int, ret: float = 0.0, cost: float = 0.0, **extra) -> String:
    return String(data=json.dumps({"event": event, "index": index, "return": ret, "cost": cost, **extra}))


def parse_episode(msg: String) -> dict:
    return json.loads(msg.data)


def status(node, part: str, level: int, message: str, values: dict) -> DiagnosticStatus:
    """A DiagnosticStatus named <namespace>/<part> with `values` as key/value strings."""
    msg = DiagnosticStatus(level=level, name=f"{node.get_namespace().rstrip('/')}/{part}", message=message,
                           hardware_id="algd")
    msg.values = [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    return msg


def diagnostics(node, part: str, level: int, message: str, values: dict) -> DiagnosticArray:
    """/diagnostics: one DiagnosticStatus (status() above)."""
    msg = DiagnosticArray(status=[status(node, part, level, message, values)])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


_cpu_mark: tuple[float, float, float] | None = None


def mark_cpu() -> None:
    """From now on this process's CPU counts as the node's work (start-up left out): called
    where a node starts its loop. Call it from the thread that spins the node."""
    global _cpu_mark
    _cpu_mark = (time.process_time(), time.thread_time(), time.monotonic())


def cpu_since_mark() -> dict:
    """CPU seconds of the process and of the spinning thread since mark_cpu(), and the wall
    seconds between: the rest of the process's CPU is its DDS threads."""
    if _cpu_mark is None:
        return {}
    process, thread, wall = _cpu_mark
    return {"process_s": time.process_time() - process, "main_thread_s": time.thread_time() - thread,
            "wall_s": time.monotonic() - wall, "cpus": sorted(os.sched_getaffinity(0))}


def write_summary(path: str, stats: dict) -> None:
    """Stats a node leaves behind at exit, for algd-bench loop (no file if path is empty),
    with the CPU it used since mark_cpu(). A node started again after a suspension (same PID,
    restart_after_suspend_s) keeps what it wrote before under `before_restart`, oldest first."""
    if path:
        from algd_runtime.contract.atomic import atomic_write

        summary = {**stats, "cpu": cpu_since_mark(), "pid": os.getpid()}
        earlier = _written_before_restart(path)
        if earlier:
            summary["before_restart"] = earlier
        with atomic_write(path, "w") as f:
            json.dump(summary, f)


def _written_before_restart(path: str) -> list[dict]:
    """The summaries this process wrote before it replaced itself: a file with our own PID
    (each image writes once, at its end); another process's file is overwritten as before."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("pid") != os.getpid():
        return []
    return [*old.pop("before_restart", []), old]


def stamp_pair(stamp) -> list[int]:
    """A builtin_interfaces/Time as [sec, nanosec] (JSON-friendly, and exact)."""
    return [int(stamp.sec), int(stamp.nanosec)]


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9
