"""The nodes' lean executor (ros/executor.py) runs what rclpy's single-threaded one runs."""

from __future__ import annotations

import os
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from algd_runtime.ros import messages as m  # noqa: E402
from algd_runtime.ros.executor import LeanExecutor  # noqa: E402


@pytest.fixture
def ctx():
    rclpy.init()
    yield
    rclpy.shutdown()


def _spin_until(ex, done, timeout=10.0):
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    return done()


def test_timers_subscriptions_services_and_entities_made_while_it_runs(ctx):
    ns = f"/algd_lean_{os.getpid()}"
    node = rclpy.create_node("lean", namespace=ns)
    peer = rclpy.create_node("peer", namespace=ns)
    got, with_info, polled, ticks = [], [], [], []
    node.create_subscription(Float64, "x", lambda msg: got.append(msg.data), 10)
    node.create_subscription(Float64, "x", lambda msg, info: with_info.append(info["source_timestamp"]), 10)
    node.create_subscription(Float64, "x", lambda msg: polled.append(msg.data), 10, callback_group=m.Polled())
    node.create_service(Trigger, "ask", lambda req, resp: setattr(resp, "message", "answered") or resp)
    timer = node.create_timer(0.01, lambda: ticks.append(1))
    lean = LeanExecutor()
    lean.add_node(node)
    other = SingleThreadedExecutor()
    other.add_node(peer)
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [other.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)])
    worker.start()
    try:
        pub = peer.create_publisher(Float64, "x", 10)
        assert _spin_until(lean, lambda: pub.get_subscription_count() >= 3)
        for i in range(5):
            pub.publish(Float64(data=float(i)))
        assert _spin_until(lean, lambda: len(got) == 5 and len(with_info) == 5)
        assert got == [0.0, 1.0, 2.0, 3.0, 4.0] and all(t > 0 for t in with_info)
        assert polled == []  # a Polled group is never waited on; its node reads it itself
        m.take_waiting(next(s for s in node.subscriptions if s.callback_group.__class__ is m.Polled))
        assert polled == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert _spin_until(lean, lambda: len(ticks) >= 3)
        client = peer.create_client(Trigger, "ask")
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(Trigger.Request())
        assert _spin_until(lean, future.done) and future.result().message == "answered"
        node.destroy_timer(timer)  # gone from the wait set at the next spin
        n = len(ticks)
        later = []
        node.create_timer(0.01, lambda: later.append(1))  # made while it runs: picked up
        assert _spin_until(lean, lambda: len(later) >= 3)
        assert len(ticks) == n
    finally:
        stop.set()
        worker.join()
        other.shutdown()
        lean.shutdown()
        peer.destroy_node()
        node.destroy_node()


def test_a_callbacks_exception_leaves_spin_once(ctx):
    node = rclpy.create_node("lean_raise")
    node.create_timer(0.01, lambda: (_ for _ in ()).throw(RuntimeError("from the callback")))
    lean = LeanExecutor()
    lean.add_node(node)
    try:
        with pytest.raises(RuntimeError, match="from the callback"):
            for _ in range(100):
                lean.spin_once(timeout_sec=0.1)
    finally:
        lean.shutdown()
        node.destroy_node()


def test_a_stop_stuck_after_the_summary_ends_the_process_with_the_stacks(tmp_path):
    """Ctrl-C, the summary written, then a teardown that never returns (as rcl_node_fini once
    did in Fast DDS): the process dumps every thread's stack and exits with status 1 within
    SHUTDOWN_REPORT_S, instead of waiting for a launcher's kill -9."""
    import signal
    import subprocess
    import sys

    from algd_runtime.ros.entry import SHUTDOWN_REPORT_S

    summary = tmp_path / "sim.json"
    script = ("import sys, time\n"
              "from algd_runtime.ros.entry import run_node\n"
              "from algd_runtime.ros.sim_node import SimNode\n"
              "SimNode.destroy_node = lambda self: time.sleep(120)\n"
              "sys.exit(run_node(SimNode, sys.argv))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "--ros-args", "-r", f"__ns:=/algd_stuck_{os.getpid()}",
                             "-p", f"summary_file:={summary}", "-p", "rate_hz:=50.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=SHUTDOWN_REPORT_S + 15)
    assert proc.returncode == 1 and time.monotonic() - t0 < SHUTDOWN_REPORT_S + 5, out[-2000:]
    assert "Timeout (0:00:08)!" in out and "in run_node" in out  # every thread's stack, where it was stuck
    assert summary.is_file()  # written before the teardown
