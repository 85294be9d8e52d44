"""Topic names, QoS and conversions between numpy and standard ROS 2 messages.

| topic (under the namespace, default /algd) | type | from -> to |
| --- | --- | --- |
| observation | sensor_msgs/JointState (position = observation, header.stamp = when measured) | robot -> controller, monitor |
| action | sensor_msgs/JointState (effort = action, header.stamp = the observation's) | controller -> robot, monitor |
| step | std_msgs/Float64MultiArray [reward, cost] | robot -> monitor |
| episode | std_msgs/String (JSON: {"event": "start" or "end", "index", "return", "cost"}) | robot -> monitor |
| estop | std_msgs/Bool (latched) | monitor -> controller |
| /diagnostics | diagnostic_msgs/DiagnosticArray | every node |
"""

from __future__ import annotations

import json

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String

OBSERVATION, ACTION, STEP, EPISODE, ESTOP = "observation", "action", "step", "episode", "estop"

# Newest only: a late observation is worth nothing to a controller.
LATEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
# Every step's cost and every episode event count for the budget.
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
# A late joiner still sees the e-stop.
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def observation_msg(obs: np.ndarray, stamp) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.position = [float(x) for x in obs]
    return msg


def action_msg(action: np.ndarray, stamp) -> JointState:
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.effort = [float(x) for x in action]
    return msg


def step_msg(reward: float, cost: float) -> Float64MultiArray:
    return Float64MultiArray(data=[float(reward), float(cost)])


def episode_msg(event: str, index: int, ret: float = 0.0, cost: float = 0.0) -> String:
    return String(data=json.dumps({"event": event, "index": index, "return": ret, "cost": cost}))


def parse_episode(msg: String) -> dict:
    return json.loads(msg.data)


def diagnostics(node, part: str, level: int, message: str, values: dict) -> DiagnosticArray:
    """One DiagnosticStatus named <namespace>/<part> with `values` as key/value strings."""
    status = DiagnosticStatus(level=level, name=f"{node.get_namespace().rstrip('/')}/{part}", message=message,
                              hardware_id="algd")
    status.values = [KeyValue(key=k, value=f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


def write_summary(path: str, stats: dict) -> None:
    """Stats a node leaves behind at exit, for algd-bench loop (no file if path is empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(stats, f)


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9
