"""RosEnv: a task (the sim/ 6-tuple interface, gymnasium spaces) over the controller's topics.

It lets training and fine-tuning run against anything that speaks the robot side of the
graph (messages.py): it publishes `action` stamped with the observation it answers, reads
each transition from `step`, and starts episodes through the `reset_episode` service.
Here that is algd-sim (run it with lockstep:=true lockstep_timeout_s:=0 for exact
transitions); on hardware, the robot's driver. Do not run algd-controller at the same time:
the learner is the controller (a second publisher on `action` latches a controller's STOP).

Each action goes out with a lease of one step. A robot keeps the contract of SAFETY.md: when
the learner is silent for longer than its command timeout it holds still and ends the
episode; step() then returns that episode as truncated at its last observation, with
info["no_transition"] = True (nothing happened: the learner must not store it).

rclpy spins in a background thread in a private context, so RosEnv can live beside other
nodes in one process and is closed cleanly with close().
"""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np

from algd_runtime.sim.base import TaskEnv
from algd_runtime.sim.spec import TaskSpec


class RosEnvTimeout(TimeoutError):
    """The robot did not answer in time; the message says what was awaited, on which name."""


RESET_RETRY_S = 1.0


class RosEnv(TaskEnv):
    replayable = False  # a robot cannot replay an episode's actions to rebuild its state

    def __init__(self, spec: TaskSpec, namespace: str = "/algd", timeout_s: float = 10.0,
                 resend_s: float = 0.2, node_name: str = "rosenv") -> None:
        import rclpy
        from builtin_interfaces.msg import Time
        from gymnasium.spaces import Box
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import Trigger

        from algd_runtime.ros import messages as m

        self._m, self._Time, self._Trigger = m, Time, Trigger
        self.task_spec = spec
        self.observation_space = Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        self.action_space = Box(np.asarray(spec.act_low, np.float32), np.asarray(spec.act_high, np.float32))
        self.namespace = "/" + namespace.strip("/")
        self.timeout_s, self.resend_s = float(timeout_s), float(resend_s)
        self._ctx = Context()
        rclpy.init(context=self._ctx)
        self._node = rclpy.create_node(node_name, namespace=self.namespace, context=self._ctx)
        self._steps: queue.Queue = queue.Queue()
        self._action_pub = self._node.create_publisher(JointState, m.ACTION, m.COMMANDS)
        self._node.create_subscription(Float64MultiArray, m.STEP, self._steps.put, m.RELIABLE)
        self._ended: dict[int, str] = {}  # episode -> why the robot ended it
        self._node.create_subscription(String, m.EPISODE, self._on_episode, m.RELIABLE)
        self._reset_client = self._node.create_client(Trigger, "reset_episode")
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._node)
        self._spin = threading.Thread(target=self._executor.spin, name="rosenv-spin", daemon=True)
        self._spin.start()
        self._episode, self._t, self._stamp = -1, 0, None

    # -- the task interface --------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Starts an episode through the robot's reset_episode service. `seed` is ignored:
        the robot decides its own start states."""
        name = f"{self.namespace}/reset_episode"
        if not self._reset_client.wait_for_service(timeout_sec=self.timeout_s):
            raise RosEnvTimeout(f"RosEnv: no service {name} within {self.timeout_s:g} s "
                                f"(is the robot, e.g. algd-sim, running in namespace {self.namespace}?)")
        reply = self._call_reset(name)
        try:
            start = json.loads(reply.message)
            obs = np.asarray(start["observation"], np.float32)
            sec, nanosec = start["stamp"]
            self._episode = int(start["index"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"RosEnv: {name} replied {reply.message!r}; expected JSON with index, stamp "
                             f"and observation ({exc})") from None
        self._check_obs(obs, name)
        self._stamp, self._t, self._last_obs = self._Time(sec=int(sec), nanosec=int(nanosec)), 0, obs
        return obs, {"episode": self._episode}

    def step(self, action):
        if self._stamp is None:
            raise RuntimeError("RosEnv: call reset() before step()")
        msg = self._m.action_msg(self.clip_action(action), self._stamp, lease=1)
        want = (self._episode, self._t + 1)
        deadline, next_send = time.monotonic() + self.timeout_s, 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise RosEnvTimeout(f"RosEnv: no transition for episode {want[0]} step {want[1]} on "
                                    f"{self.namespace}/step within {self.timeout_s:g} s (a robot in lockstep "
                                    f"waits for this action; a stopped robot sends nothing)")
            if now >= next_send:  # best-effort action topic: send again until the step arrives
                self._action_pub.publish(msg)
                next_send = now + self.resend_s
            why = self._ended.get(self._episode)
            if why is not None and self._steps.empty():  # the robot ended it without this step
                self._stamp = None
                return self._last_obs, 0.0, 0.0, False, True, {"no_transition": True, "ended_by": why}
            try:
                raw = self._steps.get(timeout=min(self.resend_s, max(deadline - now, 1e-3)))
            except queue.Empty:
                continue
            st = self._m.parse_step(raw, self.task_spec.act_dim, self.task_spec.obs_dim)
            if (st.episode, st.t) == want:
                break  # anything else is an earlier episode's or a repeated message
        self._t, self._last_obs = st.t, st.next_obs
        self._stamp = self._Time(sec=st.stamp[0], nanosec=st.stamp[1])
        if st.terminated or st.truncated:
            self._stamp = None
        return st.next_obs, st.reward, st.cost, st.terminated, st.truncated, {"applied_action": st.action}

    def close(self) -> None:
        if self._ctx.ok():
            self._executor.shutdown()
            self._node.destroy_node()
            self._ctx.try_shutdown()
        self._spin.join(timeout=2.0)

    # -- helpers ---------------------------------------------------------------------------------
    def _call_reset(self, name: str):
        """The request again every RESET_RETRY_S until a reply comes: a service is "ready"
        once it sees our requests, but rmw_fastrtps drops a reply when our reply reader has
        not matched within ~100 ms (ros2/rmw_fastrtps#467), which a loaded machine shows.
        Asking again is safe: a reset of an episode with no step taken changes nothing."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            future = self._reset_client.call_async(self._Trigger.Request())
            retry_at = min(deadline, time.monotonic() + RESET_RETRY_S)
            while not future.done() and time.monotonic() < retry_at:
                time.sleep(0.001)
            if future.done():
                return future.result()
            self._reset_client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise RosEnvTimeout(f"RosEnv: no reply from {name} within {self.timeout_s:g} s")

    def _on_episode(self, msg) -> None:
        event = self._m.parse_episode(msg)
        if event.get("event") == "end" and event.get("reason") not in ("terminated", "truncated", "reset"):
            self._ended[int(event["index"])] = str(event.get("reason"))

    def _check_obs(self, obs: np.ndarray, where: str) -> None:
        if obs.shape != (self.task_spec.obs_dim,):
            raise ValueError(f"RosEnv: {where} gave an observation of shape {obs.shape}; the policy's task "
                             f"{self.task_spec.name} expects ({self.task_spec.obs_dim},)")
