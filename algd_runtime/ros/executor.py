"""A lean single-threaded executor for the nodes (parameter `executor: lean`, the default).

rclpy's SingleThreadedExecutor costs about 140 us of CPU for every callback it runs on a
2-core VM, whatever the node holds: each `spin_once` builds a new wait set, enters every
entity's handle through an ExitStack and wraps the callback in a Task. At 500 Hz, with two
or three callbacks per robot step in each of three processes, that was about a third of the
graph's CPU (BENCHMARKS.md, "where each process's time goes"). This executor keeps one wait
set and the node's entities between spins (rebuilt only when the node adds or removes one)
and calls the callbacks directly: the same timer callback took 42 us.

It runs what rclpy's does, in the same order per wait (timers, subscriptions, guard
conditions, clients, services, then waitables such as QoS event handlers), one message per
ready subscription, and it skips what rclpy's skips (a callback group that cannot execute:
ros/messages.Polled). A callback's exception leaves `spin_once` as it does in rclpy.
`executor: rclpy` falls back to rclpy's own.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from typing import Any

from rclpy.executors import Executor, ExternalShutdownException, ShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

EXECUTORS = ("lean", "rclpy")


def _run(result: Any) -> None:
    """Finish what a callback returned: a coroutine (a QoS event handler's execute) runs to
    its end; our callbacks return plain values."""
    if inspect.iscoroutine(result):
        try:
            while True:
                result.send(None)
        except StopIteration:
            pass


class LeanExecutor(Executor):
    def __init__(self, *, context=None) -> None:
        super().__init__(context=context)
        self._key: tuple | None = None
        self._stack: ExitStack | None = None
        self._wait_set = None
        self._entities: dict[str, list] = {}
        self._own_guards = [self._guard, self._sigint_gc]  # the executor's wake-up and Ctrl-C

    # -- the wait set, kept between spins -------------------------------------------------------
    def _entity_key(self, nodes) -> tuple:
        return tuple(id(e) for node in nodes for kind in (node.timers, node.subscriptions, node.guards,
                                                           node.clients, node.services, node.waitables)
                     for e in kind)

    def _release(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._wait_set, self._key, self._entities = None, None, None, {}

    def _build(self, nodes, key: tuple) -> None:
        """Hold every entity that can execute (entered, so that none is destroyed while it is
        in the wait set) and size one wait set for them."""
        self._release()
        stack = ExitStack()
        kinds = {"timer": [], "subscription": [], "guard": [], "client": [], "service": [], "waitable": []}
        for node in nodes:
            for kind, entities in (("timer", node.timers), ("subscription", node.subscriptions),
                                   ("guard", node.guards), ("client", node.clients), ("service", node.services),
                                   ("waitable", node.waitables)):
                for entity in entities:
                    if not self.can_execute(entity):
                        continue
                    try:
                        stack.enter_context(entity if kind == "waitable" else entity.handle)
                    except Exception:  # noqa: BLE001 (InvalidHandle: destroyed meanwhile)
                        continue
                    kinds[kind].append(entity)
        own_guards = self._own_guards
        for gc in own_guards:
            stack.enter_context(gc.handle)
        stack.enter_context(self._context.handle)
        counts = [len(kinds["subscription"]), len(kinds["guard"]) + len(own_guards), len(kinds["timer"]),
                  len(kinds["client"]), len(kinds["service"]), 0]
        for waitable in kinds["waitable"]:
            n = waitable.get_num_entities()
            counts = [counts[0] + n.num_subscriptions, counts[1] + n.num_guard_conditions,
                      counts[2] + n.num_timers, counts[3] + n.num_clients, counts[4] + n.num_services,
                      counts[5] + n.num_events]
        self._wait_set = _rclpy.WaitSet(*counts, self._context.handle)
        self._stack, self._key, self._entities = stack, key, kinds

    # -- one wait, and every callback it made ready --------------------------------------------
    def spin_once(self, timeout_sec: float | None = None) -> None:
        if self._is_shutdown:
            return
        nodes = self.get_nodes()
        key = self._entity_key(nodes)
        if key != self._key:
            self._build(nodes, key)
        ws, e = self._wait_set, self._entities
        ws.clear_entities()
        for sub in e["subscription"]:
            ws.add_subscription(sub.handle)
        for client in e["client"]:
            ws.add_client(client.handle)
        for srv in e["service"]:
            ws.add_service(srv.handle)
        for tmr in e["timer"]:
            ws.add_timer(tmr.handle)
        for gc in e["guard"]:
            ws.add_guard_condition(gc.handle)
        for gc in self._own_guards:
            ws.add_guard_condition(gc.handle)
        for waitable in e["waitable"]:
            waitable.add_to_wait_set(ws)
        ws.wait(-1 if timeout_sec is None or timeout_sec < 0 else int(timeout_sec * 1e9))
        if self._is_shutdown:
            raise ShutdownException()
        if not self._context.ok():
            raise ExternalShutdownException()
        ready_waitables = [w for w in e["waitable"] if w.is_ready(ws)]  # before the wait set changes
        timers = set(ws.get_ready_entities("timer"))
        subs = set(ws.get_ready_entities("subscription"))
        guards = set(ws.get_ready_entities("guard_condition"))
        clients = set(ws.get_ready_entities("client"))
        services = set(ws.get_ready_entities("service"))
        for tmr in e["timer"]:
            # is_timer_ready: rclpy's workaround for a cancelled timer that rcl reports ready
            if tmr.handle.pointer in timers and tmr.handle.is_timer_ready():
                tmr.handle.call_timer()
                _run(tmr.callback())
        for sub in e["subscription"]:
            if sub.handle.pointer in subs:
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
                if taken is not None:
                    _run(sub.callback(taken[0]) if sub._callback_type is sub.CallbackType.MessageOnly
                         else sub.callback(*taken))
        for gc in e["guard"]:
            if gc.handle.pointer in guards and gc.callback is not None:
                _run(gc.callback())
        for client in e["client"]:
            if client.handle.pointer in clients:
                header, response = client.handle.take_response(client.srv_type.Response)
                if header is not None:
                    try:
                        future = client.get_pending_request(header.request_id.sequence_number)
                    except KeyError:
                        continue  # the request was cancelled
                    future._set_executor(self)
                    future.set_result(response)
        for srv in e["service"]:
            if srv.handle.pointer in services:
                request, header = srv.handle.service_take_request(srv.srv_type.Request)
                if header is not None:
                    srv.send_response(srv.callback(request, srv.srv_type.Response()), header)
        for waitable in ready_waitables:
            _run(waitable.execute(waitable.take_data()))

    def spin(self) -> None:
        """Until the context shuts down; the held handles are let go however it ends, so that
        the node can then be destroyed."""
        try:
            while self._context.ok() and not self._is_shutdown:
                self.spin_once()
        finally:
            self._release()

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        self._release()
        return super().shutdown(timeout_sec)
