"""Real rclpy over loopback: the sim robot and the controller in one executor."""

import math
import os
import time

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "42")

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from algd_runtime.ros_nodes import messages as m  # noqa: E402
from algd_runtime.ros_nodes.controller_node import ControllerNode  # noqa: E402
from algd_runtime.ros_nodes.sim_node import SimNode  # noqa: E402


@pytest.fixture
def loop(vesde_bundle):
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    rclpy.init()
    ns = f"/algd_test_{os.getpid()}"
    ctrl = ControllerNode(namespace=ns, parameter_overrides=[
        Parameter("bundle", value=str(vesde_bundle)), Parameter("control_rate_hz", value=200.0),
        Parameter("obs_timeout_s", value=0.05)])
    sim = SimNode(namespace=ns, parameter_overrides=[Parameter("rate_hz", value=200.0)])
    ex = SingleThreadedExecutor()
    ex.add_node(ctrl)
    ex.add_node(sim)

    def spin(seconds, until=lambda: False):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            ex.spin_once(timeout_sec=0.005)

    yield ctrl, sim, ex, spin, ns
    ex.shutdown()
    ctrl.destroy_node()
    sim.destroy_node()
    rclpy.shutdown()


def test_controller_drives_the_sim_and_stamps_actions(loop):
    ctrl, sim, ex, spin, ns = loop
    from diagnostic_msgs.msg import DiagnosticArray

    stamps, diags = [], []
    probe = rclpy.create_node("probe", namespace=ns)
    probe.create_subscription(JointState, m.ACTION, lambda msg: stamps.append(m.stamp_to_s(msg.header.stamp)), m.LATEST)
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda msg: diags.extend(msg.status), 10)
    ex.add_node(probe)
    spin(2.0)
    mine = [d for d in diags if d.name == f"{ns}/controller"]
    assert mine, [d.name for d in diags]
    keys = {kv.key: kv.value for kv in mine[-1].values}
    assert {"rate_hz", "latency_p50_ms", "latency_p99_ms", "fallbacks", "overruns"} <= set(keys)
    assert float(keys["rate_hz"]) > 50
    stats = ctrl.core.stats()
    assert stats["ticks"] > 200 and ctrl.core.fallbacks.get("stale", 0) == 0
    assert sum(s > 0 for s in stamps) > 100  # actions carry the observation's stamp
    assert np.any(sim.action != 0)  # the sim received the policy's actions
    probe.destroy_node()


def test_stopping_the_sim_triggers_fallback_within_timeout_and_recovers(loop):
    ctrl, sim, ex, spin, ns = loop
    spin(0.5)
    assert ctrl.core.fallbacks.get("stale", 0) == 0
    sim.paused = True
    paused_at = time.monotonic()
    spin(1.0, until=lambda: ctrl.core.fallbacks.get("stale", 0) > 0)
    took = time.monotonic() - paused_at
    assert ctrl.core.fallbacks["stale"] > 0 and took < 0.05 + 0.1  # timeout + a tick + scheduling
    sim.paused = False
    sim._publish_obs()
    before = ctrl.core.stats()["ticks"] - sum(ctrl.core.fallbacks.values())
    spin(0.5)
    after = ctrl.core.stats()["ticks"] - sum(ctrl.core.fallbacks.values())
    assert after > before + 20  # policy actions again


def test_nan_observation_gives_fallback_and_is_counted(loop):
    ctrl, sim, ex, spin, ns = loop
    sim.paused = True
    pub = ctrl.create_publisher(JointState, m.OBSERVATION, m.LATEST)
    spin(0.2)
    pub.publish(m.observation_msg(np.full(8, math.nan), ctrl.get_clock().now().to_msg()))
    spin(0.5, until=lambda: ctrl.core.fallbacks.get("nan", 0) > 0)
    assert ctrl.core.fallbacks["nan"] > 0


def test_bad_parameter_values_are_rejected_with_a_reason(loop):
    ctrl, *_ = loop
    res = ctrl.set_parameters([Parameter("mode", value="greedy")])[0]
    assert not res.successful and "mode: expected one of" in res.reason
    res = ctrl.set_parameters([Parameter("fallback", value="1,2,3")])[0]
    assert not res.successful and "fallback: expected 2 numbers" in res.reason
    res = ctrl.set_parameters([Parameter("bundle", value="/elsewhere")])[0]
    assert not res.successful and "read-only" in res.reason
    res = ctrl.set_parameters([Parameter("guidance_scale", value=0.5)])[0]
    assert res.successful and ctrl.core.params.guidance_scale == 0.5


def test_injected_cost_escalates_and_the_controller_obeys_estop_until_reset(loop, vesde_bundle):
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    from algd_runtime.ros_nodes.monitor_node import MonitorNode

    ctrl, sim, ex, spin, ns = loop
    mon = MonitorNode(namespace=ns, parameter_overrides=[
        Parameter("bundle", value=str(vesde_bundle)), Parameter("use_critic", value=False)])
    ex.add_node(mon)
    limit = mon.monitor.cfg.cost_limit  # 5 per episode, from the bundle's manifest
    spin(0.5, until=lambda: mon.controller.services_are_ready())
    sim.paused = True  # the test is the only source of cost
    pub = ctrl.create_publisher(Float64MultiArray, m.STEP, m.RELIABLE)
    spin(0.3)
    seen = {}
    for i in range(12):
        pub.publish(m.step_msg(0.0, limit / 10))
        spin(0.1)
        seen.setdefault(mon.monitor.level.name, ctrl.core.params.mode)
        if mon.monitor.level.name == "WARN":
            seen["warn_lambda"] = ctrl.core.params.lagrange_multiplier
    assert [(t.old, t.new) for t in mon.monitor.transitions] == [("OK", "WARN"), ("WARN", "ERROR"), ("ERROR", "STOP")]
    assert seen["warn_lambda"] > 0  # raised through the controller's parameter service
    spin(0.3, until=lambda: ctrl.core.estop and sim.halted)
    assert ctrl.core.estop and ctrl.core.params.mode == "best_of_n"
    # The robot stands still; the episode it was in ended there, as an operator would end it.
    assert sim.halted and (sim.episode >= 1 or not sim.ep_costs)
    episodes_at_stop, steps_at_stop = sim.episode, sim.steps
    sim._publish_obs()
    spin(0.2)
    assert ctrl.core.fallbacks.get("estop", 0) > 0
    client = ctrl.create_client(Trigger, f"{ns}/reset")
    assert client.wait_for_service(timeout_sec=2.0)
    future = client.call_async(Trigger.Request())
    spin(2.0, until=future.done)
    assert future.result().success and "cleared" in future.result().message
    spin(1.0, until=lambda: not ctrl.core.estop and ctrl.core.params.mode == "deterministic" and not sim.halted)
    assert not ctrl.core.estop and ctrl.core.params.mode == "deterministic"
    assert not sim.halted and sim.steps == steps_at_stop  # no step was taken while e-stopped
    assert sim.episode == episodes_at_stop
    sim.paused = False
    before = ctrl.core.fallbacks.get("estop", 0)
    spin(0.3)
    assert ctrl.core.fallbacks.get("estop", 0) == before  # obeying the policy again
    mon.destroy_node()


def test_lockstep_episode_returns_agree_with_algd_eval(vesde_bundle):
    """The exported policy driving the sim node over DDS gives the returns the torch
    evaluation (algd-eval) gives on the same reset seeds: tolerance 1e-3 relative + 1e-2."""
    from algd_runtime.checkpoint import agent_from_checkpoint, load_checkpoint
    from algd_runtime.sim import make_task
    from algd_runtime.trainer import evaluate

    agent = agent_from_checkpoint(load_checkpoint(vesde_bundle.parent / "policy.pt"), with_optimizers=False)
    expected = evaluate(lambda o: agent.act(o, deterministic=True), make_task("PointHazard-v0"), 2, seed=7)
    rclpy.init()
    ns = f"/algd_lockstep_{os.getpid()}"
    ctrl = ControllerNode(namespace=ns, parameter_overrides=[
        Parameter("bundle", value=str(vesde_bundle)), Parameter("control_rate_hz", value=1000.0),
        Parameter("obs_timeout_s", value=1.0)])
    sim = SimNode(namespace=ns, parameter_overrides=[
        Parameter("rate_hz", value=1000.0), Parameter("seed", value=7), Parameter("lockstep", value=True),
        Parameter("max_episodes", value=2)])
    ex = SingleThreadedExecutor()
    ex.add_node(ctrl)
    ex.add_node(sim)
    try:
        end = time.monotonic() + 30
        while sim.episode < 2 and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.005)
    finally:
        ex.shutdown()
        ctrl.destroy_node()
        sim.destroy_node()
        rclpy.shutdown()
    assert sim.episode == 2
    for got, want in zip(sim.returns, expected.returns):
        assert abs(got - want) <= 1e-3 * abs(want) + 1e-2, (sim.returns, expected.returns)
    assert sim.costs == expected.costs


def test_controller_and_monitor_record_mcap_logs_that_read_back(vesde_bundle, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.reader import read_ros2_messages
    from std_msgs.msg import Float64MultiArray

    from algd_runtime.ros_nodes.monitor_node import MonitorNode

    rclpy.init()
    ns = f"/algd_mcap_{os.getpid()}"
    ctrl = ControllerNode(namespace=ns, parameter_overrides=[
        Parameter("bundle", value=str(vesde_bundle)), Parameter("control_rate_hz", value=200.0),
        Parameter("record", value=str(tmp_path / "controller.mcap"))])
    sim = SimNode(namespace=ns, parameter_overrides=[Parameter("rate_hz", value=200.0), Parameter("max_episodes", value=1)])
    mon = MonitorNode(namespace=ns, parameter_overrides=[
        Parameter("bundle", value=str(vesde_bundle)), Parameter("use_critic", value=False),
        Parameter("cost_limit", value=1.0), Parameter("record", value=str(tmp_path / "monitor.mcap"))])
    ex = SingleThreadedExecutor()
    for n in (ctrl, sim, mon):
        ex.add_node(n)
    try:
        end = time.monotonic() + 20
        while sim.episode < 1 and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.005)
        pub = ctrl.create_publisher(Float64MultiArray, m.STEP, m.RELIABLE)  # cost enough for transitions
        for _ in range(3):
            pub.publish(m.step_msg(0.0, 0.6))
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                ex.spin_once(timeout_sec=0.005)
        ctrl.stop_recording()
        mon.stop_recording()
        expected_ctrl, expected_mon = dict(ctrl.recorder.counts), dict(mon.recorder.counts)
        n_steps = sim.steps
    finally:
        ex.shutdown()
        for n in (ctrl, sim, mon):
            n.destroy_node()
        rclpy.shutdown()

    def counts(path):
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
        by_id = {c.id: c.topic for c in summary.channels.values()}
        return {by_id[cid]: n for cid, n in summary.statistics.channel_message_counts.items()}

    ctrl_counts, mon_counts = counts(tmp_path / "controller.mcap"), counts(tmp_path / "monitor.mcap")
    assert set(ctrl_counts) == {"observation", "action"} and ctrl_counts == expected_ctrl
    assert ctrl_counts["observation"] > 50 and ctrl_counts["action"] >= ctrl_counts["observation"] - 5
    assert set(mon_counts) == {"step", "episode", "monitor/transition"} and mon_counts == expected_mon
    assert mon_counts["step"] == n_steps + 3  # every sim step's cost, and the 3 injected
    # (the first "start" may go out before discovery completes; the "end" is always there)
    episodes = [msg.ros_msg.data for msg in read_ros2_messages(str(tmp_path / "monitor.mcap"), topics=["episode"])]
    assert len(episodes) == mon_counts["episode"] and any('"event": "end"' in e for e in episodes)
    obs = [msg.ros_msg for msg in read_ros2_messages(str(tmp_path / "controller.mcap"), topics=["observation"])]
    assert len(obs) == ctrl_counts["observation"] and len(obs[0].position) == 8
    trans = [msg.ros_msg.data for msg in read_ros2_messages(str(tmp_path / "monitor.mcap"), topics=["monitor/transition"])]
    assert '"new": "WARN"' in trans[0] and any('"new": "STOP"' in t for t in trans)
