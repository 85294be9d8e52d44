"""algd-monitor: watches accumulated cost against the budget and escalates.

Thin: BudgetMonitor (algd_runtime.monitor) decides; this node feeds it each step's cost and
the exported cost critic's prediction for the newest (observation, action), and carries out
the level's response on the controller:
    WARN  -> raise the controller's lagrange_multiplier and guidance_scale (within bounds)
    ERROR -> shielded best-of-N (remaining_budget = what is left of the budget)
    STOP  -> latched e-stop on `estop`, until the `reset` service (std_srvs/Trigger) clears it
             (or, with stop_latch:=episode, until the robot's episode ends)
    OK    -> the controller's original parameters again
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from algd_runtime.monitor import BudgetMonitor, Level, MonitorConfig
from algd_runtime.ros_nodes import messages as m
from algd_runtime.ros_nodes.entry import run_node
from algd_runtime.ros_nodes.recorder import McapRecorder
from algd_runtime.runtime import PolicyRuntime

TRANSITION = "monitor/transition"
_DIAG_LEVEL = {Level.OK: DiagnosticStatus.OK, Level.WARN: DiagnosticStatus.WARN,
               Level.ERROR: DiagnosticStatus.ERROR, Level.STOP: DiagnosticStatus.ERROR}


class MonitorNode(Node):
    def __init__(self, **overrides):
        super().__init__("monitor", **overrides)
        p = {"bundle": "", "cost_limit": -1.0, "accounting": "episode", "window_steps": 1000, "warn_at": 0.5,
             "error_at": 0.8, "stop_at": 1.0, "stop_on": "budget", "stop_latch": "operator",
             "hysteresis": 0.1, "clear_steps": 20, "controller": "controller",
             "warn_lambda_factor": 2.0, "lambda_max": 100.0, "warn_guidance": 0.3, "error_best_of_n": 16,
             "use_critic": True, "record": "", "summary_file": ""}
        for k, v in p.items():
            self.declare_parameter(k, v)
        get = lambda k: self.get_parameter(k).value  # noqa: E731
        self.runtime = PolicyRuntime.load(get("bundle"), provider="cpu") if get("bundle") else None
        limit = get("cost_limit")
        if limit <= 0:
            if self.runtime is None:
                raise ValueError("cost_limit: expected a value > 0, or a bundle whose manifest gives it")
            limit = float(self.runtime.manifest["budget"]["cost_limit"])
        self.monitor = BudgetMonitor(MonitorConfig(
            cost_limit=limit, accounting=get("accounting"), window_steps=get("window_steps"), warn_at=get("warn_at"),
            error_at=get("error_at"), stop_at=get("stop_at"), stop_on=get("stop_on"),
            stop_latch=get("stop_latch"), hysteresis=get("hysteresis"),
            clear_steps=get("clear_steps")))
        self.use_critic = bool(get("use_critic")) and self.runtime is not None
        self.base_lambda = self.runtime.lagrange_multiplier if self.runtime else 1.0
        self.cfg = {k: get(k) for k in ("warn_lambda_factor", "lambda_max", "warn_guidance", "error_best_of_n")}
        self._obs = self._act = None
        self.episodes: list[dict] = []  # the robot's "end" events, with the monitor's level then
        self.recorder = McapRecorder(get("record")) if get("record") else None
        self.controller = AsyncParameterClient(self, get("controller"))
        self.estop_pub = self.create_publisher(Bool, m.ESTOP, m.LATCHED)
        self.diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(Float64MultiArray, m.STEP, self._on_step, m.RELIABLE)
        self.create_subscription(String, m.EPISODE, self._on_episode, m.RELIABLE)
        self.create_subscription(JointState, m.OBSERVATION, self._on_obs, m.LATEST)
        self.create_subscription(JointState, m.ACTION, self._on_action, m.LATEST)
        self.create_service(Trigger, "reset", self._on_reset)
        self.create_timer(1.0, self._diagnostics)
        self.estop_pub.publish(Bool(data=False))
        self.get_logger().info(f"monitor: limit {limit:g} per {get('accounting')}, critic "
                               f"{'on' if self.use_critic else 'off'}")

    # -- inputs ------------------------------------------------------------------------------
    def _on_obs(self, msg: JointState) -> None:
        self._obs = np.asarray(msg.position, np.float32)

    def _on_action(self, msg: JointState) -> None:
        self._act = np.asarray(msg.effort, np.float32)

    def _predicted(self) -> float:
        if not self.use_critic or self._obs is None or self._act is None:
            return 0.0
        try:
            return float(self.runtime.evaluate(self._obs, self._act)["qc_mean"])
        except ValueError:
            return 0.0

    def _record(self, topic: str, msg) -> None:
        if self.recorder:
            self.recorder.write(topic, msg, time.time_ns())

    def _on_step(self, msg: Float64MultiArray) -> None:
        self._record(m.STEP, msg)
        cost = float(msg.data[1]) if len(msg.data) > 1 else float("nan")
        for t in self.monitor.update(cost, self._predicted()):
            self._respond(t)

    def _on_episode(self, msg: String) -> None:
        self._record(m.EPISODE, msg)
        event = m.parse_episode(msg)
        if event.get("event") == "end":
            self.episodes.append({**event, "level": self.monitor.level.name,
                                  "monitor_accumulated": self.monitor.accumulated})
            for t in self.monitor.end_episode():
                self._respond(t)

    def _on_reset(self, request, response):
        out = self.monitor.reset_stop()
        for t in out:
            self._respond(t)
        response.success = bool(out)
        response.message = "e-stop cleared" if out else f"nothing to reset (level {self.monitor.level.name})"
        return response

    # -- responses ---------------------------------------------------------------------------
    def _respond(self, t) -> None:
        self._record(TRANSITION, String(data=json.dumps(t.as_dict())))
        self.get_logger().warning(f"{t.old} -> {t.new} at step {t.step}: accumulated {t.accumulated:.3g}, "
                                  f"predicted {t.predicted:.3g}, forecast {t.forecast:.3g} / limit {t.limit:g} "
                                  f"({t.reason})")
        new = Level[t.new]
        if new == Level.STOP:
            self.estop_pub.publish(Bool(data=True))
            return
        if t.old == "STOP":
            self.estop_pub.publish(Bool(data=False))
        if new == Level.WARN:
            lam = min(self.cfg["lambda_max"], max(self.base_lambda, 1e-3) * self.cfg["warn_lambda_factor"])
            self._set_controller(lagrange_multiplier=float(lam), guidance_scale=float(self.cfg["warn_guidance"]))
        elif new == Level.ERROR:
            left = max(0.0, self.monitor.cfg.cost_limit - self.monitor.accumulated)
            self._set_controller(mode="best_of_n", best_of_n=int(self.cfg["error_best_of_n"]),
                                 remaining_budget=float(left))
        elif new == Level.OK:
            self._set_controller(mode="deterministic", lagrange_multiplier=-1.0, guidance_scale=0.0,
                                 remaining_budget=float("inf"))
        self._diagnostics()

    def _set_controller(self, **values) -> None:
        if not self.controller.services_are_ready():
            self.get_logger().warning(f"controller parameters unreachable; wanted {values}")
            return
        self.controller.set_parameters([Parameter(k, value=v) for k, v in values.items()])

    def _diagnostics(self) -> None:
        mon = self.monitor
        vals = {"accumulated": mon.accumulated, "predicted": mon.predicted, "forecast": mon.forecast,
                "limit": mon.cfg.cost_limit, "ratio": mon.ratio, "episode": mon.episode, "steps": mon.step,
                "transitions": len(mon.transitions)}
        if mon.transitions:
            last = mon.transitions[-1]
            vals["last_transition"] = f"{last.old}->{last.new} at step {last.step}: {last.reason}"
        self.diag.publish(m.diagnostics(self, "monitor", _DIAG_LEVEL[mon.level], mon.level.name, vals))

    def stop_recording(self) -> None:
        if self.recorder:
            self.recorder.close()

    def summarize(self) -> None:
        self.stop_recording()
        for t in self.monitor.transitions:
            print(f"monitor: {t.old} -> {t.new} at step {t.step} ({t.reason})")
        m.write_summary(self.get_parameter("summary_file").value, {
            "limit": self.monitor.cfg.cost_limit, "level": self.monitor.level.name, "steps": self.monitor.step,
            "transitions": [t.as_dict() for t in self.monitor.transitions], "episodes": self.episodes})


def main(argv=None) -> int:
    return run_node(MonitorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
