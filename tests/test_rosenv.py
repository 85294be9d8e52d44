"""RosEnv against the sim robot node in its own process (real rclpy, loopback only), the
monitor's MCAP log turned back into transitions, and fine-tuning over ROS."""

import os
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from conftest import small_policy  # noqa: E402

from algd_runtime.learn.finetune import FinetuneOptions, finetune, parse_target  # noqa: E402
from algd_runtime.ros.launcher import default_params, node_command, stop_nodes  # noqa: E402
from algd_runtime.learn.logdata import add_mcap_to_replay, read_transitions  # noqa: E402
from algd_runtime.learn.ros_env import RosEnv, RosEnvTimeout  # noqa: E402
from algd_runtime.learn.replay import ReplayBuffer  # noqa: E402
from algd_runtime.sim import make_task  # noqa: E402
from algd_runtime.sim.hazard_task import scripted_action  # noqa: E402

SHIFT = {"hazard_scale": 1.5}
SEED = 7


def _start(name, ns, **params):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    return subprocess.Popen(node_command(name, ns, default_params(), None, **params), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(*procs):
    stop_nodes({i: p for i, p in enumerate(procs)}, timeout=20.0)


@pytest.fixture
def robot(tmp_path):
    """A shifted sim robot in lockstep (waits for ever for each action) and a recording monitor."""
    ns = f"algd_rosenv_{os.getpid()}"
    log = tmp_path / "monitor.mcap"
    # max_step_cost: steps missed while discovery completes count 1 each, not the whole budget
    monitor = _start("monitor", ns, cost_limit=1000.0, max_step_cost=1.0, use_critic="false", record=log)
    time.sleep(1.0)  # the monitor listens before the first episode starts
    sim = _start("sim", ns, seed=SEED, rate_hz=2000.0, lockstep="true", lockstep_timeout_s=0.0,
                 **{k: float(v) for k, v in SHIFT.items()})
    try:
        yield "/" + ns, log, lambda: _stop(monitor)
    finally:
        _stop(sim, monitor)


def _monitor_steps(ns):
    """A reader of the monitor's /diagnostics: poll(seconds) -> steps it has accounted so far."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    ctx = Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("diag_reader", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    steps = [0]

    def on_diag(msg):
        for status in msg.status:
            if status.name == f"{ns}/monitor":
                steps[0] = max(steps[0], int(float({kv.key: kv.value for kv in status.values}["steps"])))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)

    def poll(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        return steps[0]

    def close():
        executor.shutdown()
        node.destroy_node()
        ctx.try_shutdown()

    return poll, close


def test_rosenv_episodes_equal_the_local_task_and_the_log_rebuilds_them(robot):
    ns, log, stop_monitor = robot
    local = make_task("PointHazard-v0", seed=0, **SHIFT)
    env = RosEnv(local.task_spec, ns, timeout_s=20.0)
    poll, close_reader = _monitor_steps(ns)
    seen = []
    try:
        # Warm up until the recording monitor has heard the robot (DDS discovery between
        # processes takes a moment); the episodes compared below start after that.
        env.reset()
        end = time.monotonic() + 30
        while poll(0.3) < 1 and time.monotonic() < end:
            if any(env.step(np.zeros(2))[3:5]):  # slow polling under load: the robot may end it
                env.reset()
        assert poll(0.1) >= 1, "the monitor never heard the sim"
        first = env.reset()[1]["episode"]
        assert first >= 1  # the warm-up episode(s) came first, ended by reset()
        for episode in range(first, first + 2):
            obs, info = env.reset()
            assert info["episode"] == episode
            want, _ = local.reset(seed=SEED + episode)
            assert np.allclose(obs, want, atol=1e-6)
            while True:
                action = scripted_action(obs, "straight").astype(np.float32)  # as it travels
                nxt, r, c, term, trunc, info = env.step(action)
                w_obs, w_r, w_c, w_term, w_trunc, _ = local.step(action)
                assert np.allclose(nxt, w_obs, atol=1e-6) and (r, c, term, trunc) == pytest.approx(
                    (w_r, w_c, w_term, w_trunc), abs=1e-9)
                assert np.allclose(info["applied_action"], np.clip(action, -1, 1), atol=1e-6)
                seen.append((episode, obs, action, r, c, nxt, term))
                obs = nxt
                if term or trunc:
                    break
        assert sum(s[4] for s in seen) > 5  # the straight line crosses the widened hazard
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(np.zeros(2))  # the episode is over
        # reset() in the middle of an episode ends it and starts the next one.
        env.reset()
        env.step(np.zeros(2))
        assert env.reset()[1]["episode"] == first + 3
    finally:
        env.close()
        close_reader()
    stop_monitor()
    transitions, skipped = read_transitions(log, 8, 2)
    # Steps whose previous observation the log lacks are skipped, never guessed; the
    # compared episodes started after the monitor was listening, so they are all there.
    got = [tr for tr in transitions if first <= tr.episode < first + 2]
    assert len(got) == len(seen)
    for tr, (episode, o, a, r, c, n, term) in zip(got, seen):
        assert tr.episode == episode and np.allclose(tr.obs, o, atol=1e-6) and np.allclose(tr.next_obs, n)
        assert np.allclose(tr.action, np.clip(a, -1, 1), atol=1e-6)
        assert (tr.reward, tr.cost, tr.terminated) == pytest.approx((r, c, term), abs=1e-9)
    assert [tr.t for tr in got if tr.episode == first][:3] == [1, 2, 3]
    replay = ReplayBuffer(1000, 8, 2)
    assert add_mcap_to_replay(log, replay, local.task_spec) == len(transitions) == replay.size


def test_rosenv_says_what_it_waited_for(tmp_path):
    env = RosEnv(make_task("PointHazard-v0").task_spec, f"/nobody_{os.getpid()}", timeout_s=0.5)
    try:
        with pytest.raises(RosEnvTimeout, match=r"no service /nobody_\d+/reset_episode within 0.5 s"):
            env.reset()
    finally:
        env.close()


def test_finetune_over_ros_keeps_the_robot_within_budget(robot, tmp_path):
    ns, _, _ = robot
    small_policy(tmp_path / "p.pt")
    opts = FinetuneOptions(parse_target(f"ros:{ns}"), steps=200, eval_episodes=2, warmup_steps=100, timeout_s=20.0)
    lines = []
    report = finetune(tmp_path / "p.pt", tmp_path / "ft", opts, progress=False, echo=lines.append)
    assert report["target"] == f"ros:{ns}" and report["steps"] == 200
    for part in ("before", "after"):  # evaluations on a robot are guarded too
        assert all(c <= 5.0 for c in report[part]["costs"]), report[part]
    assert report["training_episodes"]["over_limit"] == 0
    assert (tmp_path / "ft" / "policy.pt").is_file() and (tmp_path / "ft" / "before_after.png").is_file()


def test_a_recorded_log_feeds_fine_tuning(tmp_path):
    """Transitions written the way the sim robot publishes them, recorded as the monitor
    records them, come back exactly and pre-fill the fine-tuning replay."""
    from builtin_interfaces.msg import Time

    from algd_runtime.ros import messages as m
    from algd_runtime.ros.recorder import McapRecorder

    env = make_task("PointHazard-v0", seed=0)
    rec, written, t_ns = McapRecorder(tmp_path / "run.mcap"), [], 1
    for episode in range(2):
        obs, _ = env.reset(seed=episode)
        rec.write(m.EPISODE, m.episode_msg("start", episode, stamp=[0, 0], observation=obs.tolist()), t_ns)
        for t in range(1, 31):
            action = scripted_action(obs, "straight").astype(np.float32)
            nxt, r, c, term, trunc, _ = env.step(action)
            rec.write(m.STEP, m.step_msg(r, c, term, trunc, episode, t, Time(sec=t), action, nxt), t_ns := t_ns + 1)
            written.append((obs, action, r, c, nxt, term))
            obs = nxt
    rec.write(m.STEP, m.step_msg(0.0, 1.0), t_ns + 1)  # reward and cost only: skipped, not guessed
    rec.close()
    transitions, skipped = read_transitions(tmp_path / "run.mcap", 8, 2)
    assert skipped == 1 and len(transitions) == len(written) == 60
    for tr, (o, a, r, c, n, term) in zip(transitions, written):
        assert np.allclose(tr.obs, o) and np.allclose(tr.action, a) and np.allclose(tr.next_obs, n)
        assert (tr.reward, tr.cost, tr.terminated) == pytest.approx((r, c, term))
    small_policy(tmp_path / "p.pt")
    lines = []
    opts = FinetuneOptions(parse_target("sim"), steps=10, eval_episodes=1, warmup_steps=10,
                           data=(tmp_path / "run.mcap",))
    finetune(tmp_path / "p.pt", tmp_path / "ft", opts, progress=False, echo=lines.append)
    assert f"replay: 60 transitions from {tmp_path / 'run.mcap'}" in lines
    with pytest.raises(ValueError, match="not a readable MCAP log"):
        (tmp_path / "junk.mcap").write_bytes(b"not mcap at all")
        read_transitions(tmp_path / "junk.mcap", 8, 2)


def test_a_silent_learner_is_stopped_by_the_robot_and_told_so(robot):
    """The sim's command timeout (0.5 s) ends the episode when the learner is silent; RosEnv
    reports it as truncated without a transition, and the next episode runs."""
    ns, _, _ = robot
    env = RosEnv(make_task("PointHazard-v0").task_spec, ns, timeout_s=20.0)
    try:
        env.reset()
        env.step(np.zeros(2))
        time.sleep(1.0)  # longer than the robot's command timeout
        obs, r, c, term, trunc, info = env.step(np.zeros(2))
        assert trunc and not term and info == {"no_transition": True, "ended_by": "cmd_timeout"}
        env.reset()
        assert not env.step(np.zeros(2))[4]  # the next episode steps again
    finally:
        env.close()


def test_reset_asks_again_when_a_reply_is_lost(monkeypatch):
    """rmw_fastrtps drops a reply whose reader has not matched yet: reset() must ask again."""
    import json
    from types import SimpleNamespace

    from algd_runtime.learn import ros_env

    spec = make_task("PointHazard-v0").task_spec
    env = RosEnv(spec, f"algd_lost_reply_{os.getpid()}", timeout_s=5.0)
    obs = [0.5] * spec.obs_dim

    class Future:
        def __init__(self, reply):
            self.reply = reply

        def done(self):
            return self.reply is not None

        def result(self):
            return self.reply

    class LosesFirstReply:
        def __init__(self):
            self.calls, self.dropped = 0, []

        def wait_for_service(self, timeout_sec):
            return True

        def call_async(self, request):
            self.calls += 1
            message = json.dumps({"index": 4, "stamp": [1, 2], "observation": obs})
            return Future(None if self.calls == 1 else SimpleNamespace(message=message))

        def remove_pending_request(self, future):
            self.dropped.append(future)

    monkeypatch.setattr(ros_env, "RESET_RETRY_S", 0.05)
    client = env._reset_client = LosesFirstReply()
    try:
        got, info = env.reset()
    finally:
        env.close()
    assert client.calls == 2 and len(client.dropped) == 1
    assert info["episode"] == 4 and np.allclose(got, obs)


def test_a_recording_never_overwrites_an_earlier_one(tmp_path):
    """A node started again (after a suspension, or by the user) with the same `record` path
    keeps the earlier file and records beside it."""
    from algd_runtime.ros import messages as m
    from algd_runtime.ros.recorder import McapRecorder

    first = McapRecorder(tmp_path / "run.mcap")
    first.write(m.STEP, m.step_msg(0.0, 1.0), 1)
    first.close()
    before = (tmp_path / "run.mcap").read_bytes()
    second, third = McapRecorder(tmp_path / "run.mcap"), McapRecorder(tmp_path / "run.mcap")
    assert (second.path.name, third.path.name) == ("run.1.mcap", "run.2.mcap")
    second.close()
    third.close()
    assert (tmp_path / "run.mcap").read_bytes() == before
