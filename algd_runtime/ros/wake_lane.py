"""A lane of its own for the messages a node answers at once (issue 19, headroom).

rclpy's executor costs 240-290 us of a core per wake-up on a 2-core VM: each wait rebuilds
its wait set from every endpoint of the node (parameter and lifecycle services, timers) and
runs the callback as a Task. rclpy's bare wait set, on the same message, costs 50-70 us
(BENCHMARKS.md, "Headroom"). At 500 Hz the controller and the monitor each wake once per
robot step, so the executor's share was a fifth of the loop's CPU.

The lane waits on a few subscriptions (the robot's state and episode topics) with the bare
wait set, in a thread of its own, and calls the node back. The executor serves the rest
(services, timers, parameters, lifecycle transitions) and skips the lane's subscriptions
while the lane runs. Both run the node's code under one lock: the node sees one thread at a
time, as under the single-threaded executor. A node spun without its lane (a test's own
executor) has its lane's subscriptions served by the executor, as before.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from typing import Callable

import rclpy
from rclpy.callback_groups import CallbackGroup
from rclpy.executors import SingleThreadedExecutor, TimeoutException
from rclpy.guard_condition import GuardCondition
# The wait set rclpy's own executor and wait_for_message are built on (no public wrapper).
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

from algd_runtime.ros import messages as m

WAIT_NS = 100_000_000  # a stop request is also seen after at most this long


class LaneGroup(CallbackGroup):
    """The lane's subscriptions: served by the executor until their lane starts, then
    never waited on by it (the lane reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.lane_running = False

    def can_execute(self, entity) -> bool:
        return not self.lane_running

    def beginning_execution(self, entity) -> bool:
        return not self.lane_running

    def ending_execution(self, entity) -> None:
        pass


class WakeLane:
    """Waits on `subscriptions` and `timers` (created in `group`); under `lock`, runs each due
    timer's callback, and `on_wake()` when a subscription has a message (on_wake takes what
    waits: messages.take_in_sent_order / take_waiting)."""

    def __init__(self, node, group: LaneGroup, subscriptions: list, on_wake: Callable[[], None] | None,
                 lock: threading.Lock, timers: list = ()) -> None:
        self.node, self.group, self.subscriptions, self.timers = node, group, list(subscriptions), list(timers)
        self.on_wake, self.lock = on_wake, lock
        self._stop = threading.Event()
        self._guard: GuardCondition | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended the lane, if not a stop

    def set_timers(self, timers: list) -> None:
        """The lane's timers from now on (created in its group; under the lock). A timer the
        node resets from the lane's callbacks must be the lane's: the executor would wake at
        the deadline it began waiting for, once per reset, for nothing."""
        self.timers = list(timers)
        if self._guard is not None:
            self._guard.trigger()  # wait again, with them

    def start(self) -> None:
        """In the thread whose scheduling (realtime_priority, cpu_affinity) the lane inherits."""
        self._guard = GuardCondition(None, None, context=self.node.context)
        self.group.lane_running = True
        self._thread = threading.Thread(target=self._run, name="wake_lane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        try:
            self._guard.trigger()
        except Exception:  # noqa: BLE001 - the context may be gone already; the wait times out
            pass
        self._thread.join(timeout=2 * WAIT_NS / 1e9 + 1.0)
        if not self._thread.is_alive():
            self._guard.destroy()
        self._thread = None
        self.group.lane_running = False

    def _run(self) -> None:
        subs = self.subscriptions
        started = time.thread_time()
        try:
            while not self._stop.is_set():
                timers = self.timers
                wait_set = _rclpy.WaitSet(len(subs), 1, len(timers), 0, 0, 0, self.node.context.handle)
                with ExitStack() as handles:
                    handles.enter_context(self.node.context.handle)
                    for sub in subs:
                        handles.enter_context(sub.handle)
                        wait_set.add_subscription(sub.handle)
                    for timer in timers:
                        handles.enter_context(timer.handle)
                        wait_set.add_timer(timer.handle)
                    handles.enter_context(self._guard.handle)
                    wait_set.add_guard_condition(self._guard.handle)
                    wait_set.wait(WAIT_NS)
                    ready = set(wait_set.get_ready_entities("timer")) if timers else set()
                    due = [t for t in timers if t.handle.pointer in ready]
                if self._stop.is_set():
                    break
                messages = bool(wait_set.get_ready_entities("subscription"))
                if not (due or messages):
                    continue
                with self.lock:
                    for timer in due:
                        if timer not in self.timers:  # removed (and destroyed) since
                            continue
                        with timer.handle:
                            timer.handle.call_timer()  # starts its next period, as the executor does
                        timer.callback()
                    if messages:
                        self.on_wake()
        except BaseException as exc:  # noqa: BLE001
            if not self._stop.is_set() and rclpy.ok(context=self.node.context):
                self.error = exc
                self.node.get_logger().error(f"wake lane stopped: {exc!r}; the executor serves its topics again")
            self.group.lane_running = False
        finally:
            m.add_lane_cpu(time.thread_time() - started)  # for the node's summary (algd-bench loop)


def spin_locked(node, lock: threading.Lock) -> None:
    """rclpy.spin(node), each callback under `lock` (the lane's lock); raises as spin does
    (KeyboardInterrupt, ExternalShutdownException, a callback's exception)."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        while rclpy.ok(context=node.context):
            try:
                handler, _, _ = executor.wait_for_ready_callbacks(timeout_sec=WAIT_NS / 1e9)
            except TimeoutException:
                continue
            with lock:
                handler()
            if handler.exception() is not None:
                raise handler.exception()
    finally:
        # shutdown(), not just dropping it: rclpy's signal thread triggers the executor's
        # SIGINT guard condition until shutdown unregisters it; an executor freed without it
        # crashed a node that Ctrl-C stopped (rcl_trigger_guard_condition on freed memory).
        executor.shutdown()
