"""The fault bench's observer: a node in the bench's own process that counts the robot's
episode ends, steps and heartbeats live, and reads the nodes' logs."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path


from algd_runtime.tools.faults.settings import LOG_LINE


def last_warnings(log_file: Path, n: int = 3) -> list[str]:
    """The last n WARN/ERROR/FATAL lines of a node's log (LOG_FORMAT), their message only."""
    try:
        text = Path(log_file).read_text(errors="replace")
    except OSError:
        return []
    found = [mt.group(3) for line in text.splitlines()
             if (mt := LOG_LINE.match(line.strip())) and mt.group(1) in ("WARN", "ERROR", "FATAL")]
    return found[-n:]


class Probe:
    """Listens on the run's namespace: episode ends, steps (with the sim's stamps, turned into
    CLOCK_MONOTONIC), heartbeats (kept for restarts and replays) and the reset traffic. Spins
    in a thread of its own; the hostile node lives in the same context."""

    def __init__(self, namespace: str, domain_id: int) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray, String

        from algd_runtime.ros import messages as m

        self.ns = "/" + namespace.strip("/")
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"fault_probe_{os.getpid()}", namespace=self.ns, context=self.ctx)
        self.offset = time.time() - time.monotonic()  # wall - monotonic, on this machine
        self.ends: list[tuple[float, dict]] = []
        self.steps: list[float] = []  # monotonic time of each step, from its stamp
        self.epoch = 0  # which sim process (a new sim counts its episodes from 0 again)
        self.episode_cost: dict[tuple[int, int], float] = {}
        self.heartbeats: list[tuple[float, str, int, str, str]] = []  # (received, boot, seq, level, text)
        self.resets: list[tuple[float, str, str]] = []  # (received, node, text) on <node>/reset
        self.results: list[tuple[float, str, dict]] = []  # (received, node, result) on <node>/reset_result
        self.errors: list[str] = []
        node = self.node
        # A deep reader queue: the probe must not lose a step (a step it never saw could be
        # one the robot should not have taken) when this process falls behind for a moment.
        deep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(String, m.EPISODE, self._on_episode, QoSProfile(  # the episodes before it joined too
            history=HistoryPolicy.KEEP_LAST, depth=100_000, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        node.create_subscription(Float64MultiArray, m.STEP, self._on_step, deep)
        node.create_subscription(String, m.HEARTBEAT, self._on_heartbeat, deep)
        for name in ("controller", "monitor"):
            node.create_subscription(String, f"{name}/reset", lambda msg, n=name: self.resets.append(
                (time.monotonic(), n, msg.data)), m.RELIABLE)
            node.create_subscription(String, f"{name}/reset_result", lambda msg, n=name: self._on_result(n, msg),
                                     m.RELIABLE)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(node)
        self._running = True
        self.thread = threading.Thread(target=self._spin, name="fault-probe", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # noqa: BLE001 -- shutting down, or a bad message: keep the reason
                if not self._running:
                    return
                self.errors.append(repr(exc))
                time.sleep(0.01)

    def _on_episode(self, msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        if event.get("event") == "end" and not event.get("forged"):
            self.ends.append((time.monotonic(), event))

    def _on_step(self, msg) -> None:
        d = msg.data
        if len(d) >= 8:
            self.steps.append(float(d[6]) + float(d[7]) * 1e-9 - self.offset)
            ep = (self.epoch, int(d[4]))
            self.episode_cost[ep] = self.episode_cost.get(ep, 0.0) + float(d[1])

    def _on_heartbeat(self, msg) -> None:
        try:
            body = json.loads(json.loads(msg.data)["body"])
            self.heartbeats.append((time.monotonic(), str(body["boot"]), int(body["seq"]), str(body["level"]),
                                    msg.data))
        except (ValueError, KeyError, TypeError):
            pass  # a forgery (ours): not the monitor's

    def _on_result(self, node: str, msg) -> None:
        try:
            self.results.append((time.monotonic(), node, json.loads(msg.data)))
        except ValueError:
            pass

    # -- queries -----------------------------------------------------------------------------
    def ends_since(self, t: float) -> int:
        """Episodes that ended after t having moved after t (an episode ended by a hold, with
        no step since t, is not motion)."""
        first_step = next((s for s in list(self.steps) if s > t), None)
        if first_step is None:
            return 0
        return sum(1 for at, _ in list(self.ends) if at > first_step)

    def steps_between(self, t0: float, t1: float = math.inf) -> int:
        return sum(1 for s in list(self.steps) if t0 < s <= t1)

    def last_step(self) -> float:
        return self.steps[-1] if self.steps else -math.inf

    def boots(self) -> list[str]:
        seen: list[str] = []
        for _, boot, *_ in list(self.heartbeats):
            if boot not in seen:
                seen.append(boot)
        return seen

    def publishers(self, topic: str) -> int:
        return self.node.count_publishers(f"{self.ns}/{topic}")

    def close(self) -> None:
        self._running = False
        self.thread.join(timeout=5.0)
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self.ctx.try_shutdown()
