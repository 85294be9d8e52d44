"""Standard ROS 2 messages <-> the policy's vectors, configured from YAML (no ROS imports).

An `io` mapping says which message fields make up the observation, in order, and which
command fields the action fills:

    observation:
      - {topic: joint_states, type: sensor_msgs/JointState, field: position, joints: [hip, knee]}
      - {topic: odom, type: nav_msgs/Odometry, field: twist.twist.linear.x, scale: 0.5}
      - {topic: odom, type: nav_msgs/Odometry, field: pose.pose.orientation.yaw}
      - {topic: scan, type: sensor_msgs/LaserScan, field: ranges, bins: 16, clip: [0.0, 5.0]}
      - {topic: obs, type: std_msgs/Float64MultiArray, field: data, size: 8}
    action:
      {topic: cmd_vel, type: geometry_msgs/Twist, fields: [linear.x, angular.z], scale: [0.5, 1.0]}

The whole `io` file (load_io) adds where the budget's costs come from and when the
controller decides:

    cost: {topic: cost, type: std_msgs/Float64, field: data}   # one message per step taken
    episode: {topic: episode_start, type: std_msgs/Empty}      # optional: a new episode begins
    trigger: joint_states      # the topic whose messages are answered (default: the first entry's)
    steps_ahead: 2             # steps the robot may take before a stop reaches it (no lease here)
    # an observation entry may say max_age_s: an older newest message is stale

Fields are attribute paths into the message. `yaw` after a quaternion is its heading. A
JointState field is read by joint name, in the configured order, whatever the message's
order. LaserScan ranges are cut into `bins` equal sectors, each the nearest return in it
(no return or beyond range_max: range_max). Each entry's values become
clip(value * scale + offset). The action side writes action[i] * scale[i] + offset[i] into
the command's fields (Twist, TwistStamped, Float64MultiArray's data, JointState by joint
name). Every mistake is a ValueError naming the entry and the field.

The ROS layer subscribes to the topics named here and hands each message to
ObservationMap.update; this module only maps. The inverse maps (ObservationEntry.write,
ActionMap.read) let the simulated robot speak the same file from the robot's side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

INPUT_TYPES = ("sensor_msgs/JointState", "nav_msgs/Odometry", "sensor_msgs/Imu", "sensor_msgs/LaserScan",
               "std_msgs/Float64MultiArray", "std_msgs/Float64", "geometry_msgs/PointStamped")
EPISODE_TYPES = ("std_msgs/Empty",)
UNSTAMPED_TYPES = ("std_msgs/Float64MultiArray", "std_msgs/Float64")  # the inputs without a header
OUTPUT_TYPES = ("geometry_msgs/Twist", "geometry_msgs/TwistStamped", "std_msgs/Float64MultiArray",
                "sensor_msgs/JointState", "trajectory_msgs/JointTrajectory")
# Commands whose consumer expires them (a lease): TwistStamped after the consumer's timeout
# from its stamp (diff_drive_controller's cmd_vel_timeout), a JointTrajectory at its point's
# time_from_start (joint_trajectory_controller holds at the trajectory's end).
EXPIRING_TYPES = ("geometry_msgs/TwistStamped", "trajectory_msgs/JointTrajectory")
JOINT_FIELDS = ("position", "velocity", "effort")
TRAJECTORY_FIELDS = ("positions", "velocities", "accelerations", "effort")
# Without a lease, the steps a robot takes before a stop reaches it, by default, until the
# nodes have measured them: what most stops (the monitor's e-stop, the controller's command)
# took on a loaded 2-core machine (BENCHMARKS, the io contract: up to 40 ms at 100 Hz, 46 ms
# at 1 kHz, 60 ms at 500 Hz once), in steps of the robot's rate, plus the step in flight.
# 40 ms still lets a budget of 5 move at 100 Hz to 1 kHz (margin 5, 4.2 and 4.1).
STOP_LATENCY_S = 0.04


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _names(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: expected a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: names repeat in {value!r}")
    return list(value)


def _check_keys(where: str, entry: dict, allowed: set[str]) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _per_value(where: str, value: Any, n: int, default: float) -> np.ndarray:
    """A number for every value, or one list of n numbers."""
    if value is None:
        return np.full(n, default)
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{where}: expected {n} numbers (one per value), got {len(value)}")
        return np.array([_number(f"{where}[{i}]", v) for i, v in enumerate(value)])
    return np.full(n, _number(where, value))


def yaw(q) -> float:
    """Heading (rotation about z) of a quaternion with x, y, z, w."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def _resolve(msg, path: str):
    obj = msg
    for part in path.split("."):
        if part == "yaw" and all(hasattr(obj, k) for k in "xyzw"):
            obj = yaw(obj)
        else:
            obj = getattr(obj, part)
    return obj


def _assign(msg, path: str, values: np.ndarray) -> None:
    """The inverse of _resolve: write `values` at `path` (a heading becomes a z-rotation)."""
    head, _, leaf = path.rpartition(".")
    parent = _resolve(msg, head) if head else msg
    if leaf == "yaw" and all(hasattr(parent, k) for k in "xyzw"):
        half = float(values[0]) / 2
        parent.x, parent.y, parent.z, parent.w = 0.0, 0.0, math.sin(half), math.cos(half)
    elif isinstance(getattr(parent, leaf), float):
        setattr(parent, leaf, float(values[0]))
    else:
        setattr(parent, leaf, [float(v) for v in values])


@dataclass
class ObservationEntry:
    """One contiguous piece of the observation vector, read from one field of one topic."""

    topic: str
    type: str
    field: str
    size: int
    joints: list[str] = field(default_factory=list)
    bins: int = 0
    scale: np.ndarray = None
    offset: np.ndarray = None
    low: float = -math.inf
    high: float = math.inf
    max_age_s: float = math.inf  # an older newest message is stale

    def read(self, msg) -> np.ndarray:
        """The entry's values from `msg`; a ValueError says what the message lacks."""
        if self.type == "sensor_msgs/JointState":
            values = getattr(msg, self.field)
            index = {name: i for i, name in enumerate(msg.name)}
            missing = [j for j in self.joints if j not in index or index[j] >= len(values)]
            if missing:
                raise ValueError(f"{self.topic}: no {self.field} for joint(s) {missing}")
            raw = np.array([values[index[j]] for j in self.joints], np.float64)
        elif self.type == "sensor_msgs/LaserScan":
            raw = scan_bins(msg.ranges, self.bins, msg.range_min, msg.range_max)
        else:
            value = _resolve(msg, self.field)
            raw = np.atleast_1d(np.asarray(value, np.float64))
            if raw.size != self.size:
                raise ValueError(f"{self.topic}: {self.field} has {raw.size} values, the config says {self.size}")
        # minimum/maximum: np.clip's answer (NaN stays NaN) without its per-call checks
        return np.minimum(np.maximum(raw * self.scale + self.offset, self.low), self.high)

    def write(self, msg, values: np.ndarray) -> None:
        """The robot's side: put `values` (this entry's part of an observation) into `msg`."""
        raw = (np.asarray(values, np.float64) - self.offset) / self.scale
        if self.type == "sensor_msgs/LaserScan":
            raise ValueError(f"{self.topic}: a binned scan cannot be written back (simulated robots: use another type)")
        if self.type == "sensor_msgs/JointState":
            names = list(msg.name)
            for joint, v in zip(self.joints, raw):
                if joint not in names:
                    names.append(joint)
                arr = list(getattr(msg, self.field))
                arr += [0.0] * (len(names) - len(arr))
                arr[names.index(joint)] = float(v)
                setattr(msg, self.field, arr)
            msg.name = names
        else:
            _assign(msg, self.field, raw)


def scan_bins(ranges: Sequence[float], bins: int, range_min: float, range_max: float) -> np.ndarray:
    """The nearest valid return in each of `bins` equal sectors; none there: range_max."""
    r = np.asarray(ranges, np.float64)
    valid = np.isfinite(r) & (r >= range_min) & (r <= range_max)
    r = np.where(valid, r, range_max)
    if r.size < bins:
        raise ValueError(f"scan: {r.size} ranges cannot fill {bins} bins")
    return np.array([part.min() for part in np.array_split(r, bins)])


def _observation_entry(where: str, e: Any) -> ObservationEntry:
    if not isinstance(e, dict):
        raise ValueError(f"{where}: expected a mapping with topic, type and field, got {e!r}")
    _check_keys(where, e, {"topic", "type", "field", "joints", "bins", "size", "scale", "offset", "clip", "max_age_s"})
    for key in ("topic", "type", "field"):
        if not isinstance(e.get(key), str) or not e[key]:
            raise ValueError(f"{where}.{key}: expected a non-empty string, got {e.get(key)!r}")
    kind = e["type"]
    if kind not in INPUT_TYPES:
        raise ValueError(f"{where}.type: expected one of {list(INPUT_TYPES)}, got {kind!r}")
    joints, bins = [], 0
    if kind == "sensor_msgs/JointState":
        if e["field"] not in JOINT_FIELDS:
            raise ValueError(f"{where}.field: expected one of {list(JOINT_FIELDS)}, got {e['field']!r}")
        joints = _names(f"{where}.joints", e.get("joints"))
        size = len(joints)
    elif kind == "sensor_msgs/LaserScan":
        if e["field"] != "ranges":
            raise ValueError(f"{where}.field: expected 'ranges', got {e['field']!r}")
        bins = e.get("bins")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"{where}.bins: expected an integer >= 1, got {bins!r}")
        size = bins
    else:
        size = e.get("size", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{where}.size: expected an integer >= 1, got {size!r}")
    low, high = -math.inf, math.inf
    if "clip" in e:
        clip = e["clip"]
        if not (isinstance(clip, list) and len(clip) == 2):
            raise ValueError(f"{where}.clip: expected [low, high], got {clip!r}")
        low, high = _number(f"{where}.clip[0]", clip[0]), _number(f"{where}.clip[1]", clip[1])
        if not low < high:
            raise ValueError(f"{where}.clip: expected low < high, got {clip!r}")
    max_age = _number(f"{where}.max_age_s", e["max_age_s"]) if "max_age_s" in e else math.inf
    if max_age <= 0:
        raise ValueError(f"{where}.max_age_s: expected a value > 0 (seconds), got {max_age!r}")
    scale = _per_value(f"{where}.scale", e.get("scale"), size, 1.0)
    if np.any(scale == 0):
        raise ValueError(f"{where}.scale: expected non-zero numbers, got {e.get('scale')!r}")
    return ObservationEntry(e["topic"], kind, e["field"], size, joints, bins, scale,
                            _per_value(f"{where}.offset", e.get("offset"), size, 0.0), low, high, max_age)


class ObservationMap:
    """The newest message of each topic, and the observation vector they make."""

    def __init__(self, entries: list[ObservationEntry]):
        self.entries = entries
        self.topics = sorted({e.topic for e in entries})
        types = {}
        for e in entries:
            if types.setdefault(e.topic, e.type) != e.type:
                raise ValueError(f"observation: topic {e.topic!r} is given as {types[e.topic]} and as {e.type}")
        self.types = types
        self.size = sum(e.size for e in entries)
        self.max_age = {t: min(e.max_age_s for e in entries if e.topic == t) for t in self.topics}
        self._latest: dict[str, Any] = {}
        self._at: dict[str, float] = {}

    def update(self, topic: str, msg, now: float = 0.0) -> None:
        self._latest[topic], self._at[topic] = msg, now

    def missing(self) -> list[str]:
        return [t for t in self.topics if t not in self._latest]

    def stale(self, now: float) -> list[str]:
        return [t for t in self.topics if t in self._at and now - self._at[t] > self.max_age[t]]

    def vector(self, now: float | None = None) -> np.ndarray:
        """The observation from the newest message of each topic. ValueError: a topic has
        sent nothing yet, or (given `now`) its newest message is older than its max_age_s."""
        if self.missing():
            raise ValueError(f"observation: no message yet on {self.missing()}")
        stale = self.stale(now) if now is not None else []
        if stale:
            raise ValueError(f"observation: stale {stale} (older than max_age_s)")
        return np.concatenate([e.read(self._latest[e.topic]) for e in self.entries]).astype(np.float32)

    def write(self, obs: np.ndarray, new_message) -> dict[str, Any]:
        """The robot's side: the messages (by topic) that carry `obs`; new_message(type) makes one."""
        msgs, start = {}, 0
        for e in self.entries:
            if e.topic not in msgs:  # one message per topic (setdefault would build one per entry)
                msgs[e.topic] = new_message(e.type)
            e.write(msgs[e.topic], obs[start:start + e.size])
            start += e.size
        return msgs


@dataclass
class ActionMap:
    """The action vector written into one command message."""

    topic: str
    type: str
    fields: list[str]
    scale: np.ndarray
    offset: np.ndarray
    joint_field: str = "position"  # JointState / JointTrajectory commands: which array the values go to
    expires_after_s: float | None = None  # the consumer drops (or ends) a command this long after its stamp

    def fill(self, msg, action: np.ndarray):
        """`msg` (an empty message of self.type) carrying `action`; returns it. The caller
        stamps it with the observation's stamp: the expiry runs from there."""
        values = np.asarray(action, np.float64) * self.scale + self.offset
        if self.type == "std_msgs/Float64MultiArray":
            msg.data = [float(v) for v in values]
        elif self.type == "sensor_msgs/JointState":
            msg.name = list(self.fields)
            setattr(msg, self.joint_field, [float(v) for v in values])
        elif self.type == "trajectory_msgs/JointTrajectory":
            msg.joint_names = list(self.fields)
            point = _trajectory_point()
            setattr(point, self.joint_field, [float(v) for v in values])
            secs = self.expires_after_s or 0.0
            point.time_from_start.sec, point.time_from_start.nanosec = int(secs), int(round((secs % 1) * 1e9))
            msg.points = [point]
        else:
            root = msg.twist if self.type == "geometry_msgs/TwistStamped" else msg
            for path, v in zip(self.fields, values):
                head, _, leaf = path.rpartition(".")
                setattr(_resolve(root, head) if head else root, leaf, float(v))
        return msg

    def read(self, msg) -> np.ndarray:
        """The inverse of fill: the action a command message carries (ValueError: not one)."""
        if self.type == "std_msgs/Float64MultiArray":
            values = np.asarray(msg.data, np.float64)
        elif self.type in ("sensor_msgs/JointState", "trajectory_msgs/JointTrajectory"):
            trajectory = self.type == "trajectory_msgs/JointTrajectory"
            if trajectory and not msg.points:
                raise ValueError(f"{self.topic}: the trajectory has no point")
            names = msg.joint_names if trajectory else msg.name
            arr = getattr(msg.points[0] if trajectory else msg, self.joint_field)
            index = {name: i for i, name in enumerate(names)}
            if any(j not in index or index[j] >= len(arr) for j in self.fields):
                raise ValueError(f"{self.topic}: the command lacks joint(s) of {self.fields}")
            values = np.array([arr[index[j]] for j in self.fields], np.float64)
        else:
            root = msg.twist if self.type == "geometry_msgs/TwistStamped" else msg
            values = np.array([_resolve(root, f) for f in self.fields], np.float64)
        if values.size != self.scale.size:
            raise ValueError(f"{self.topic}: the command has {values.size} values, the action {self.scale.size}")
        return ((values - self.offset) / self.scale).astype(np.float32)


def action_map(cfg: Any, act_dim: int, where: str = "action") -> ActionMap:
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a mapping with topic, type and fields, got {cfg!r}")
    _check_keys(where, cfg, {"topic", "type", "fields", "joints", "joint_field", "scale", "offset", "expires_after_s"})
    if not isinstance(cfg.get("topic"), str) or not cfg["topic"]:
        raise ValueError(f"{where}.topic: expected a non-empty string, got {cfg.get('topic')!r}")
    kind = cfg.get("type")
    if kind not in OUTPUT_TYPES:
        raise ValueError(f"{where}.type: expected one of {list(OUTPUT_TYPES)}, got {kind!r}")
    trajectory = kind == "trajectory_msgs/JointTrajectory"
    joint_field = cfg.get("joint_field", "positions" if trajectory else "position")
    expires = cfg.get("expires_after_s")
    if kind in EXPIRING_TYPES:
        if expires is None:
            raise ValueError(f"{where}.expires_after_s: expected the time (s) after its stamp at which the robot drops "
                             f"a {kind} (diff_drive_controller's cmd_vel_timeout; a trajectory point's "
                             f"time_from_start)")
        expires = _number(f"{where}.expires_after_s", expires)
        if not 0 < expires <= 10:
            raise ValueError(f"{where}.expires_after_s: expected 0 < seconds <= 10, got {expires!r}")
    elif expires is not None:
        raise ValueError(f"{where}.expires_after_s: a {kind} carries no stamp to expire from (expiring: "
                         f"{', '.join(EXPIRING_TYPES)})")
    if kind == "std_msgs/Float64MultiArray":
        fields = [f"data[{i}]" for i in range(act_dim)]
    elif kind in ("sensor_msgs/JointState", "trajectory_msgs/JointTrajectory"):
        fields = _names(f"{where}.joints", cfg.get("joints"))
        allowed = TRAJECTORY_FIELDS if trajectory else JOINT_FIELDS
        if joint_field not in allowed:
            raise ValueError(f"{where}.joint_field: expected one of {list(allowed)}, got {joint_field!r}")
    else:
        fields = _names(f"{where}.fields", cfg.get("fields"))
        for f in fields:
            if f.split(".")[0] not in ("linear", "angular") or f.rpartition(".")[2] not in ("x", "y", "z"):
                raise ValueError(f"{where}.fields: expected linear.x .. angular.z, got {f!r}")
    if len(fields) != act_dim:
        raise ValueError(f"{where}: {len(fields)} command fields for an action of {act_dim} values")
    scale = _per_value(f"{where}.scale", cfg.get("scale"), act_dim, 1.0)
    if np.any(scale == 0):
        raise ValueError(f"{where}.scale: expected non-zero numbers, got {cfg.get('scale')!r}")
    return ActionMap(cfg["topic"], kind, fields, scale, _per_value(f"{where}.offset", cfg.get("offset"), act_dim, 0.0),
                     joint_field, expires)


def _trajectory_point():
    from trajectory_msgs.msg import JointTrajectoryPoint

    return JointTrajectoryPoint()


def observation_map(cfg: Any, obs_dim: int, where: str = "observation") -> ObservationMap:
    if not isinstance(cfg, list) or not cfg:
        raise ValueError(f"{where}: expected a list of entries (topic, type, field), got {cfg!r}")
    entries = [_observation_entry(f"{where}[{i}]", e) for i, e in enumerate(cfg)]
    mapped = ObservationMap(entries)
    if mapped.size != obs_dim:
        raise ValueError(f"{where}: the entries give {mapped.size} values, the policy observes {obs_dim}")
    return mapped


def observation_entries(cfg: Any, where: str = "observation") -> ObservationMap:
    """The observation's entries without checking their total size (see observation_map)."""
    if not isinstance(cfg, list) or not cfg:
        raise ValueError(f"{where}: expected a list of entries (topic, type, field), got {cfg!r}")
    return ObservationMap([_observation_entry(f"{where}[{i}]", e) for i, e in enumerate(cfg)])


@dataclass
class IoConfig:
    """A whole io file: what the controller reads and writes, where the costs come from,
    and which topic's messages it answers. `bind` checks it against a policy's sizes."""

    observation: ObservationMap
    action_cfg: dict
    cost: ObservationEntry
    episode_topic: str | None
    trigger: str
    steps_ahead: int = 3
    source: str = "io"
    rate_hz: float | None = None  # the robot's rate, where the file gives it
    leased: bool = False  # the command expires at the robot (steps_ahead derived from the expiry)

    @property
    def cost_stamped(self) -> bool:
        """The cost message carries the stamp of the state that follows its step (SAFETY.md)."""
        return self.cost.type not in UNSTAMPED_TYPES

    @property
    def action_topic(self) -> str:
        return self.action_cfg["topic"]

    @property
    def action_type(self) -> str:
        return self.action_cfg["type"]

    def topics(self) -> dict[str, str]:
        """Every input topic with its type: cost and episode first (a node subscribes in this
        order, so that a step's cost is read before the state that follows it)."""
        out = {self.cost.topic: self.cost.type}
        if self.episode_topic:
            if self.episode_topic in self.observation.types or self.episode_topic == self.cost.topic:
                raise ValueError(f"{self.source}: episode.topic {self.episode_topic!r} is also an observation or "
                                 f"cost topic")
            out[self.episode_topic] = "std_msgs/Empty"
        for topic, kind in self.observation.types.items():
            if out.setdefault(topic, kind) != kind:
                raise ValueError(f"{self.source}: cost topic {topic!r} is given as {self.cost.type} and as {kind}")
        return out

    def bind(self, obs_dim: int, act_dim: int) -> ActionMap:
        """The action map for a policy of these sizes; ValueError if the file does not fit it."""
        if self.observation.size != obs_dim:
            raise ValueError(f"{self.source}: observation: the entries give {self.observation.size} values, "
                             f"the policy observes {obs_dim}")
        return action_map(self.action_cfg, act_dim, f"{self.source}: action")


def _action_size_hint(action: dict) -> int:
    """The action size an action entry implies by itself (bind() checks it against the policy)."""
    for key in ("fields", "joints", "scale", "offset"):
        if isinstance(action.get(key), list):
            return len(action[key])
    return 1


def io_config(cfg: Any, source: str = "io") -> IoConfig:
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a mapping with observation, action and cost, got {cfg!r}")
    _check_keys(source, cfg, {"observation", "action", "cost", "episode", "trigger", "steps_ahead", "rate_hz"})
    for key in ("observation", "action", "cost"):
        if key not in cfg:
            raise ValueError(f"{source}: missing {key!r} (observation, action and cost are required: the "
                             f"budget needs each step's cost)")
    observation = observation_entries(cfg["observation"], f"{source}: observation")
    action = cfg["action"]
    if not isinstance(action, dict):
        raise ValueError(f"{source}: action: expected a mapping with topic, type and fields, got {action!r}")
    command = action_map(action, _action_size_hint(action), f"{source}: action")  # the checks that need no policy
    cost = _observation_entry(f"{source}: cost", cfg["cost"])
    if cost.size != 1:
        raise ValueError(f"{source}: cost: expected one value per message, the entry gives {cost.size}")
    episode = cfg.get("episode")
    topic = None
    if episode is not None:
        if not isinstance(episode, dict):
            raise ValueError(f"{source}: episode: expected {{topic, type: std_msgs/Empty}}, got {episode!r}")
        _check_keys(f"{source}: episode", episode, {"topic", "type"})
        if episode.get("type") not in EPISODE_TYPES:
            raise ValueError(f"{source}: episode.type: expected one of {list(EPISODE_TYPES)}, got "
                             f"{episode.get('type')!r}")
        topic = episode.get("topic")
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"{source}: episode.topic: expected a non-empty string, got {topic!r}")
    trigger = cfg.get("trigger", observation.entries[0].topic)
    if trigger not in observation.topics:
        raise ValueError(f"{source}: trigger: expected one of the observation topics {observation.topics}, "
                         f"got {trigger!r}")
    rate = cfg.get("rate_hz")
    if rate is not None:
        rate = _number(f"{source}: rate_hz", rate)
        if not 0 < rate <= 10_000:
            raise ValueError(f"{source}: rate_hz: expected the robot's rate, 0 < Hz <= 10000, got {rate!r}")
    ahead = cfg.get("steps_ahead")
    if ahead is not None and (isinstance(ahead, bool) or not isinstance(ahead, int) or not 1 <= ahead <= 100):
        raise ValueError(f"{source}: steps_ahead: expected an integer in 1..100, got {ahead!r}")
    expires = command.expires_after_s
    if expires is not None:
        # The robot drops the command at its expiry: it takes at most that many steps on it.
        if rate is None:
            raise ValueError(f"{source}: rate_hz: expected the robot's rate (Hz): with an expiring command "
                             f"(action.expires_after_s) the steps it may take on one are expiry x rate")
        # ... plus the step in flight when the stop was decided (measured at 1 kHz: one more).
        least = math.ceil(expires * rate - 1e-9) + 1
        if ahead is not None and ahead < least:
            raise ValueError(f"{source}: steps_ahead: expected >= {least} (expires_after_s {expires:g} s x rate_hz "
                             f"{rate:g} + 1), got {ahead}")
        ahead = ahead or least
    elif ahead is None:
        # A standard command carries no lease: the robot takes the step in flight, and maybe
        # more, on its old command after the budget says stop. The budget stops that early.
        ahead = math.ceil(rate * STOP_LATENCY_S - 1e-9) + 1 if rate else 3
    io = IoConfig(observation, action, cost, topic, trigger, min(ahead, 100), source, rate, expires is not None)
    io.topics()  # the topic/type checks
    return io


def check_fields(io: IoConfig, message_class) -> None:
    """Every field path of the observation and the cost exists in its message type, and is a
    number or an array of numbers (message_class: "pkg/Type" -> class). A misspelled path
    (twist.twist.linaer.x) would otherwise pass and fail on the first message."""
    named = [(f"observation[{i}]", e) for i, e in enumerate(io.observation.entries)] + [("cost", io.cost)]
    for where, e in named:
        if e.type in ("sensor_msgs/JointState", "sensor_msgs/LaserScan"):
            continue  # their fields are checked by name at load
        obj = message_class(e.type)()
        for part in e.field.split("."):
            if part == "yaw" and all(hasattr(obj, k) for k in "xyzw"):
                obj = 0.0
            elif part in obj.get_fields_and_field_types():
                obj = getattr(obj, part)
            else:
                known = ", ".join(obj.get_fields_and_field_types())
                raise ValueError(f"{io.source}: {where}.field: {e.type} has no {e.field!r} ({part!r} is not one "
                                 f"of: {known})")
        if hasattr(obj, "get_fields_and_field_types"):
            raise ValueError(f"{io.source}: {where}.field: {e.field!r} of {e.type} is a message, not a number; "
                             f"name one of its fields: {', '.join(obj.get_fields_and_field_types())}")


def load_io(path: str, message_class=None) -> IoConfig:
    """An io file (YAML); errors name the file, the entry and the field. With message_class
    ("pkg/Type" -> class, where ROS 2 is installed) the field paths are checked too."""
    import yaml

    from algd_runtime.contract.yamlfile import load_yaml

    try:
        with open(path) as f:
            cfg = load_yaml(f.read())
    except OSError as exc:
        raise ValueError(f"io: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"io: {path} is not valid YAML: {exc}") from None
    io = io_config(cfg, f"io {path}")
    if message_class is not None:
        check_fields(io, message_class)
    return io
