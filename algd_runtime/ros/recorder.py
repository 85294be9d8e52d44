"""MCAP run logs: ROS 2 messages as CDR with their .msg schemas, readable by any MCAP tool
(mcap_ros2.reader, Foxglove) and by our offline replay / fine-tuning.

The controller records `observation` and `action`; the monitor records `step`, `episode`
and `monitor/status` at each transition (diagnostic_msgs/DiagnosticStatus: the level and
the numbers behind the decision as key/values).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

from rclpy.serialization import serialize_message

_SEPARATOR = "=" * 80
_BUILTIN = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
            "int64", "uint64", "string", "wstring"}


def _msg_file(type_name: str) -> Path:
    """share/<pkg>/msg/<Name>.msg under AMENT_PREFIX_PATH, else this environment's prefix
    (where the ROS 2 wheels put it)."""
    pkg, name = type_name.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{pkg}/msg/{name}.msg: not under {prefixes} (is the ROS 2 package installed?)")


def message_definition(type_name: str) -> str:
    """The ros2msg schema text: the message's .msg, then each nested type's once, as
    rosbag2 writes it ('pkg/Name' names, e.g. 'sensor_msgs/JointState')."""
    parts, seen, queue = [], set(), [type_name]
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        text = _msg_file(current).read_text()
        parts.append(text if current == type_name else f"{_SEPARATOR}\nMSG: {current}\n{text}")
        pkg = current.split("/")[0]
        for line in text.splitlines():
            tokens = line.split("#", 1)[0].split()
            if len(tokens) < 2:
                continue
            base = re.sub(r"(\[.*\]|<=\d+)$", "", tokens[0])  # drop array / bound suffixes
            if base in _BUILTIN:
                continue
            if "/" in base:
                queue.append(base.replace("/msg/", "/"))
            else:
                queue.append("std_msgs/Header" if base == "Header" else f"{pkg}/{base}")
    return "\n".join(parts)


def _open_new(path: Path):
    """(path, file) for the first of path, NAME.1.SUFFIX, NAME.2.SUFFIX, ... that does not exist
    yet, opened exclusively (two recorders never share one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        candidate = path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")
        try:
            return candidate, candidate.open("xb")
        except FileExistsError:
            continue


def _type_name(msg) -> str:
    module = type(msg).__module__.split(".")[0]  # e.g. sensor_msgs
    return f"{module}/{type(msg).__name__}"


class McapRecorder:
    """Append ROS 2 messages to an MCAP file (zstd chunks); close() writes the index. A file
    already at `path` (an earlier run, or this node before it started again) is kept: the
    recording goes to the first free NAME.1.mcap, NAME.2.mcap, ... (`self.path`)."""

    def __init__(self, path: str | Path):
        try:
            from mcap.writer import CompressionType, Writer  # only a node that records needs mcap
        except ImportError:
            raise ValueError("record: needs the mcap package (pip install mcap mcap-ros2-support, or the "
                             "[ros] extra)") from None
        self.path, self._file = _open_new(Path(path))
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="algd-runtime")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msg, log_time_ns: int) -> None:
        type_name = _type_name(msg)
        if type_name not in self._schemas:
            self._schemas[type_name] = self._writer.register_schema(
                name=type_name.replace("/", "/msg/"), encoding="ros2msg",
                data=message_definition(type_name).encode())
        if topic not in self._channels:
            self._channels[topic] = self._writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=self._schemas[type_name])
        seq = self._seq.get(topic, 0)
        self._writer.add_message(channel_id=self._channels[topic], log_time=log_time_ns,
                                 publish_time=log_time_ns, sequence=seq, data=serialize_message(msg))
        self._seq[topic] = seq + 1
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()
