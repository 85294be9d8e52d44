"""Node parameters typed by their defaults, as a YAML writer expects them to be.

rclpy types a parameter by its default, so `control_rate_hz: 500` (an integer) where the
default is 500.0 would stop the node at start. Here parameters are declared with dynamic
typing and every value, at start and on each live change, is checked against its default's
type: an integer is a number wherever a number is expected, anything else is refused with
the parameter's name and the type it needs.
"""

from __future__ import annotations

import math
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list of integers"}


def coerce(name: str, value: Any, default: Any) -> Any:
    """`value` as the type of `default`; a ValueError names the parameter otherwise."""
    kind = type(default)
    if kind is list:  # lists of integers (cpu_affinity); rclpy may hand over an array
        if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [int(v) for v in value]
        raise ValueError(f"{name}: expected {_TYPE_NAMES[list]}, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is kind and not (kind is float and math.isnan(value)):
        return value
    raise ValueError(f"{name}: expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")


# Parameters a node may be given that are not its own: rclpy's and ROS 2's.
_FOREIGN = ("use_sim_time", "start_type_description_service", "start_parameter_event_publisher")


def unknown(given: Any, declared: Any, node_name: str) -> str | None:
    """Why a parameter the node was given is none of its own (a typo would otherwise leave
    the node running on the default), or None."""
    import difflib

    for name in sorted(given):
        if name in declared or name in _FOREIGN or name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, list(declared), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return (f"{name}: not a parameter of the {node_name}{hint}; it would be ignored and the default used "
                f"(from --ros-args -p or a params file)")
    return None


def declare(node, defaults: dict[str, Any]) -> dict[str, Any]:
    """Declare `defaults` on `node` and return the values it was started with, checked; a
    parameter it was given that is not one of them is refused (ValueError)."""
    why = unknown(node._parameter_overrides, defaults, node.get_name())
    if why:
        raise ValueError(why)
    loose = ParameterDescriptor(dynamic_typing=True)
    for name, default in defaults.items():
        node.declare_parameter(name, default, loose)
    return {name: coerce(name, node.get_parameter(name).value, default) for name, default in defaults.items()}
