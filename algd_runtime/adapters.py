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

Fields are attribute paths into the message. `yaw` after a quaternion is its heading. A
JointState field is read by joint name, in the configured order, whatever the message's
order. LaserScan ranges are cut into `bins` equal sectors, each the nearest return in it
(no return or beyond range_max: range_max). Each entry's values become
clip(value * scale + offset). The action side writes action[i] * scale[i] + offset[i] into
the command's fields (Twist, TwistStamped, Float64MultiArray's data, JointState by joint
name). Every mistake is a ValueError naming the entry and the field.

The ROS layer subscribes to the topics named here and hands each message to
ObservationMap.update; this module only maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

INPUT_TYPES = ("sensor_msgs/JointState", "nav_msgs/Odometry", "sensor_msgs/Imu", "sensor_msgs/LaserScan",
               "std_msgs/Float64MultiArray")
OUTPUT_TYPES = ("geometry_msgs/Twist", "geometry_msgs/TwistStamped", "std_msgs/Float64MultiArray",
                "sensor_msgs/JointState")
JOINT_FIELDS = ("position", "velocity", "effort")


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
        return np.clip(raw * self.scale + self.offset, self.low, self.high)


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
    _check_keys(where, e, {"topic", "type", "field", "joints", "bins", "size", "scale", "offset", "clip"})
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
    return ObservationEntry(e["topic"], kind, e["field"], size, joints, bins,
                            _per_value(f"{where}.scale", e.get("scale"), size, 1.0),
                            _per_value(f"{where}.offset", e.get("offset"), size, 0.0), low, high)


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
        self._latest: dict[str, Any] = {}

    def update(self, topic: str, msg) -> None:
        self._latest[topic] = msg

    def missing(self) -> list[str]:
        return [t for t in self.topics if t not in self._latest]

    def vector(self) -> np.ndarray:
        """The observation from the newest message of each topic (ValueError: one is missing)."""
        if self.missing():
            raise ValueError(f"observation: no message yet on {self.missing()}")
        return np.concatenate([e.read(self._latest[e.topic]) for e in self.entries]).astype(np.float32)


@dataclass
class ActionMap:
    """The action vector written into one command message."""

    topic: str
    type: str
    fields: list[str]
    scale: np.ndarray
    offset: np.ndarray
    joint_field: str = "position"  # JointState commands: which array the values go to

    def fill(self, msg, action: np.ndarray):
        """`msg` (an empty message of self.type) carrying `action`; returns it."""
        values = np.asarray(action, np.float64) * self.scale + self.offset
        if self.type == "std_msgs/Float64MultiArray":
            msg.data = [float(v) for v in values]
        elif self.type == "sensor_msgs/JointState":
            msg.name = list(self.fields)
            setattr(msg, self.joint_field, [float(v) for v in values])
        else:
            root = msg.twist if self.type == "geometry_msgs/TwistStamped" else msg
            for path, v in zip(self.fields, values):
                head, _, leaf = path.rpartition(".")
                setattr(_resolve(root, head) if head else root, leaf, float(v))
        return msg


def action_map(cfg: Any, act_dim: int, where: str = "action") -> ActionMap:
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a mapping with topic, type and fields, got {cfg!r}")
    _check_keys(where, cfg, {"topic", "type", "fields", "joints", "joint_field", "scale", "offset"})
    if not isinstance(cfg.get("topic"), str) or not cfg["topic"]:
        raise ValueError(f"{where}.topic: expected a non-empty string, got {cfg.get('topic')!r}")
    kind = cfg.get("type")
    if kind not in OUTPUT_TYPES:
        raise ValueError(f"{where}.type: expected one of {list(OUTPUT_TYPES)}, got {kind!r}")
    joint_field = cfg.get("joint_field", "position")
    if kind == "std_msgs/Float64MultiArray":
        fields = [f"data[{i}]" for i in range(act_dim)]
    elif kind == "sensor_msgs/JointState":
        fields = _names(f"{where}.joints", cfg.get("joints"))
        if joint_field not in JOINT_FIELDS:
            raise ValueError(f"{where}.joint_field: expected one of {list(JOINT_FIELDS)}, got {joint_field!r}")
    else:
        fields = _names(f"{where}.fields", cfg.get("fields"))
        for f in fields:
            if f.split(".")[0] not in ("linear", "angular") or f.rpartition(".")[2] not in ("x", "y", "z"):
                raise ValueError(f"{where}.fields: expected linear.x .. angular.z, got {f!r}")
    if len(fields) != act_dim:
        raise ValueError(f"{where}: {len(fields)} command fields for an action of {act_dim} values")
    return ActionMap(cfg["topic"], kind, fields, _per_value(f"{where}.scale", cfg.get("scale"), act_dim, 1.0),
                     _per_value(f"{where}.offset", cfg.get("offset"), act_dim, 0.0), joint_field)


def observation_map(cfg: Any, obs_dim: int, where: str = "observation") -> ObservationMap:
    if not isinstance(cfg, list) or not cfg:
        raise ValueError(f"{where}: expected a list of entries (topic, type, field), got {cfg!r}")
    entries = [_observation_entry(f"{where}[{i}]", e) for i, e in enumerate(cfg)]
    mapped = ObservationMap(entries)
    if mapped.size != obs_dim:
        raise ValueError(f"{where}: the entries give {mapped.size} values, the policy observes {obs_dim}")
    return mapped
