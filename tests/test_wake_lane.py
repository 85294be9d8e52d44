"""The wake lane (ros/wake_lane.py) over real rclpy: the robot's topics and the lane's timers
are served in the lane's thread, under the node's lock, and by the executor again when the
lane stops."""

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from algd_runtime.ros import messages as m  # noqa: E402
from algd_runtime.ros.wake_lane import LaneGroup, WakeLane, spin_locked  # noqa: E402


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=91)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _spin(node, lock):
    try:
        spin_locked(node, lock)
    except ExternalShutdownException:  # the test's end
        pass


def _until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate():
        time.sleep(0.01)
    return predicate()


def test_the_lane_serves_its_topics_and_timers_and_hands_them_back(context):
    node = Node("lane_test", context=context)
    talker = Node("lane_talker", context=context)
    lock, group = threading.Lock(), LaneGroup()
    seen, ticks, overlaps = [], [], []
    inside = threading.Event()

    def guarded(record):
        if inside.is_set():
            overlaps.append(threading.current_thread().name)  # two threads in the node at once
        inside.set()
        record()
        inside.clear()

    sub = node.create_subscription(Float64, "x", lambda msg: guarded(
        lambda: seen.append((msg.data, threading.current_thread().name))), 10, callback_group=group)
    timer = node.create_timer(0.01, lambda: guarded(lambda: ticks.append(threading.current_thread().name)),
                              callback_group=group)
    def read():  # slow, as a loaded node is: messages come while the lane works
        time.sleep(0.004)
        m.take_waiting(sub)

    lane = WakeLane(node, group, [sub], read, lock)
    lane.set_timers([timer])
    # An executor timer that holds the lock a while: the lane must wait for it, never overlap.
    node.create_timer(0.005, lambda: guarded(lambda: time.sleep(0.002)))
    pub = talker.create_publisher(Float64, "x", 10)
    spinner = threading.Thread(target=_spin, args=(node, lock), daemon=True)
    lane.start()
    spinner.start()
    try:
        assert _until(lambda: node.count_subscribers("x") > 0 and pub.get_subscription_count() > 0)
        for i in range(20):
            pub.publish(Float64(data=float(i)))
            time.sleep(0.005)
        assert not group.can_execute(sub), "the executor would wait on (and wake for) the lane's topic"
        assert _until(lambda: len(seen) >= 20), f"the lane read {len(seen)} of 20 messages"
        assert {name for _, name in seen} == {"wake_lane"}, "a message was served outside the lane"
        assert _until(lambda: len(ticks) >= 5) and set(ticks) == {"wake_lane"}
        lane.set_timers([])
        n = len(ticks)
        time.sleep(0.2)
        assert len(ticks) <= n + 1, "a timer taken from the lane still fired there"

        lane.stop()  # the executor serves the topic again
        assert group.can_execute(sub)
        before = len(seen)
        for i in range(5):
            pub.publish(Float64(data=100.0 + i))
            time.sleep(0.01)
        assert _until(lambda: len(seen) >= before + 5), "after the lane stopped, nothing read the topic"
        assert all(name != "wake_lane" for _, name in seen[before:])
        assert not overlaps, f"two threads ran the node's code at once ({overlaps[:3]})"
    finally:
        lane.stop()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5)
        node.destroy_node()
        talker.destroy_node()
