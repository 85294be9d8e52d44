"""The shared `main` of the nodes: init, spin until Ctrl-C / SIGINT, summarise, shut down."""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException


def run_node(node_cls, argv=None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = node_cls()
    except ValueError as exc:  # bad parameters or bundle: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.summarize()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
