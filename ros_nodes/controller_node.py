"""algd-controller: runs the exported policy at control rate on the newest observation.

Thin: ControllerCore (algd_runtime.control) makes every decision; this node moves messages,
owns the timer and turns parameter updates into validated live changes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from algd_runtime.control import ControllerCore, ControllerParams
from algd_runtime.ros_nodes import messages as m
from algd_runtime.ros_nodes.entry import run_node
from algd_runtime.ros_nodes.recorder import McapRecorder
from algd_runtime.runtime import PolicyRuntime

READ_ONLY = ("bundle", "provider", "summary_file", "record")


class ControllerNode(Node):
    def __init__(self, **overrides):
        super().__init__("controller", **overrides)
        defaults = ControllerParams()
        self.declare_parameter("bundle", "")
        self.declare_parameter("provider", "auto")
        self.declare_parameter("diagnostics_period_s", 1.0)
        self.declare_parameter("summary_file", "")  # JSON stats written at exit (algd-bench loop)
        self.declare_parameter("record", "")  # MCAP file for observations and actions ("" = off)
        for name, value in vars(defaults).items():
            self.declare_parameter(name, value)
        bundle = self.get_parameter("bundle").value
        if not bundle:
            raise ValueError("bundle: expected the path of an exported bundle (parameter 'bundle')")
        runtime = PolicyRuntime.load(bundle, provider=self.get_parameter("provider").value)
        params = ControllerParams(**{k: self.get_parameter(k).value for k in vars(defaults)})
        self.core = ControllerCore(runtime, params)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pub = self.create_publisher(JointState, m.ACTION, m.LATEST)
        self.create_subscription(JointState, m.OBSERVATION, self._on_observation, m.LATEST)
        self.create_subscription(Bool, m.ESTOP, self._on_estop, m.LATCHED)
        self.diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = self.create_timer(1.0 / params.control_rate_hz, self._tick)
        self.create_timer(self.get_parameter("diagnostics_period_s").value, self._diagnostics)
        self._t0, self._ticks0 = time.monotonic(), 0
        record = self.get_parameter("record").value
        self.recorder = McapRecorder(record) if record else None
        self.get_logger().info(f"controller: {bundle} on {runtime.provider}, {params.control_rate_hz:g} Hz, "
                               f"mode {params.mode}")

    # -- callbacks ----------------------------------------------------------------------------
    def _on_observation(self, msg: JointState) -> None:
        self.core.on_observation(np.asarray(msg.position, np.float32), msg.header.stamp, time.monotonic())
        if self.recorder:
            self.recorder.write(m.OBSERVATION, msg, time.time_ns())
        self._act()  # answer at once: waiting for the next tick would add up to a period of latency

    def _on_estop(self, msg: Bool) -> None:
        if msg.data != self.core.estop:
            self.get_logger().warning(f"e-stop {'LATCHED' if msg.data else 'cleared'}")
        self.core.estop = bool(msg.data)

    def _tick(self) -> None:
        """The control-rate timer: a decision every period unless the newest observation is
        fresh and already answered (then there is nothing new to say)."""
        if self.core.needs_tick(time.monotonic()):
            self._act()

    def _act(self) -> None:
        start = time.monotonic()
        decision = self.core.tick(start)
        msg = m.action_msg(decision.action, decision.stamp)
        self.pub.publish(msg)
        done = time.monotonic()
        if self.recorder:
            self.recorder.write(m.ACTION, msg, time.time_ns())
        self.core.handed_over(decision, done, done - start)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """All or nothing: every value is checked before any is applied."""
        updates = {}
        for p in params:
            if p.name in READ_ONLY:
                return SetParametersResult(successful=False, reason=f"{p.name}: read-only while running")
            if p.name == "diagnostics_period_s":
                continue
            reason = self.core.check(p.name, p.value)
            if reason:
                self.get_logger().warning(f"rejected {p.name}={p.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            updates[p.name] = p.value
        for name, value in updates.items():
            self.core.set_param(name, value)
            if name == "control_rate_hz":
                self.timer.cancel()
                self.timer = self.create_timer(1.0 / value, self._tick)
        if updates:
            self.get_logger().info(f"parameters: {updates}")
        return SetParametersResult(successful=True)

    def _diagnostics(self) -> None:
        now = time.monotonic()
        stats = self.core.stats()
        rate = (stats["ticks"] - self._ticks0) / max(now - self._t0, 1e-9)
        self._t0, self._ticks0 = now, stats["ticks"]
        level = DiagnosticStatus.ERROR if self.core.estop else DiagnosticStatus.OK
        values = {"rate_hz": rate, "mode": self.core.params.mode, **stats}
        self.diag.publish(m.diagnostics(self, "controller", level, "e-stop" if self.core.estop else "running", values))

    def stop_recording(self) -> None:
        if self.recorder:
            self.recorder.close()

    def summarize(self) -> None:
        self.stop_recording()
        stats = self.core.stats()
        print(f"controller: {stats}")
        m.write_summary(self.get_parameter("summary_file").value, stats)


def main(argv=None) -> int:
    return run_node(ControllerNode, argv)


if __name__ == "__main__":
    sys.exit(main())
