"""An io file end to end: the sim robot speaks standard messages (Odometry and JointState in,
Twist on cmd_vel out, the cost on std_msgs/Float64), and the controller and the monitor run
as separate processes over real rclpy (algd-launch), wired by YAML alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("nav_msgs")
from algd_runtime.contract.keys import create_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_graph(bundle, tmp_path, io: Path, seconds: float, nodes: dict | None = None, **sim):
    """nodes: parameters for both the controller and the monitor; sim: the sim's."""
    params = yaml.safe_load((ROOT / "launch" / "controller.yaml").read_text())
    for name in ("controller", "monitor", "sim"):
        params[f"/**/{name}"]["ros__parameters"]["summary_file"] = str(tmp_path / f"{name}.json")
    params["/**/sim"]["ros__parameters"].update(sim)
    for name in ("controller", "monitor"):  # each episode starts afresh: many episodes in one run
        params[f"/**/{name}"]["ros__parameters"]["stop_latch"] = "episode"
        params[f"/**/{name}"]["ros__parameters"].update(nodes or {})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    create_key(tmp_path / "op.key")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(60 + os.getpid() % 20),
               XDG_STATE_HOME=str(tmp_path / "state"))
    out = subprocess.run([str(Path(sys.executable).parent / "algd-launch"), "--with-sim", "--bundle", str(bundle),
                          "--io", str(io), "--params-file", str(tmp_path / "params.yaml"), "--duration", str(seconds),
                          "--key", str(tmp_path / "op.key")], env=env, capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "all nodes exited cleanly" in text, text[-3000:]
    return [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("controller", "monitor", "sim")], text


def test_standard_messages_drive_the_robot_and_the_budget_holds(vesde_bundle, tmp_path):
    # The hazard covers the start: every step costs 1 until the robot is held. A standard
    # command has no lease: the robot keeps stepping until the e-stop lands, so steps_ahead
    # must cover rate x e-stop latency (SAFETY.md): 3 steps of 10 ms here to start with, then
    # what the nodes measure. The budget (12) leaves room for a loaded machine's stop (5-6
    # steps measured beside a soak): with 5, a margin of 6 x 1 latches budget_margin and
    # nothing moves, which is safe but tests nothing here.
    io = yaml.safe_load((ROOT / "config" / "io" / "standard.yaml").read_text())
    (tmp_path / "io.yaml").write_text(yaml.safe_dump({**io, "steps_ahead": 3}))
    (ctrl, mon, sim), text = run_graph(vesde_bundle, tmp_path, tmp_path / "io.yaml", 8.0,
                                       nodes={"cost_limit": 12.0}, hazard_scale=3.0, rate_hz=100.0)
    limit = ctrl["safety"]["budget"]
    # Wired by name: what the controller mapped from Odometry (the first 4 values) and from
    # JointState (the last 4, listed in reverse by the sim) is what the sim observed. Each
    # source is compared on its own: sources are combined newest-of-each, not in lockstep.
    seen = np.array(sim["first_observations"])
    for obs in ctrl["first_observations"]:
        for part in (slice(0, 4), slice(4, 8)):
            assert np.abs(seen[:, part] - obs[part]).max(axis=1).min() < 1e-5, (obs, seen)
    assert ctrl["io_errors"] == {} or set(ctrl["io_errors"]) == {"observation: no message yet on ['joint_states']"}
    # It moved on the policy's commands, and every episode ended within the budget.
    assert not np.isnan(ctrl["latency_p50_ms"]) and sim["steps"] > 30, text[-2000:]
    moved = [c for c, why in zip(sim["costs"], sim["ended_by"]) if c > 0]
    assert len(moved) >= 3 and max(sim["costs"]) <= limit, (sim["costs"], sim["ended_by"])
    assert "estop" in sim["ended_by"] and "budget" in " ".join(t["reason"] for t in mon["transitions"])
    # The monitor accounted the same costs from the cost topic. Episode by episode they may
    # differ: a cost that races the episode message is charged to the next episode (without
    # stamps the running one pays), and an episode end the monitor did not see leaves its
    # costs in the next record. Over the run nothing is lost: the totals agree within the
    # episode in progress at either end.
    ended = sum(e["monitor_accumulated"] for e in mon["episodes"])
    assert abs(ended - sum(sim["costs"])) <= 2 * limit, (ended, sum(sim["costs"]), mon["episodes"][:5])


def test_a_mistake_in_the_io_file_is_reported_once_with_the_field(vesde_bundle, tmp_path, capsys):
    from algd_runtime.ros.launcher import main

    create_key(tmp_path / "k")
    io = yaml.safe_load((ROOT / "config" / "io" / "standard.yaml").read_text())
    io["observation"][4]["joints"] = "goal_dx"
    (tmp_path / "io.yaml").write_text(yaml.safe_dump(io))
    assert main(["--bundle", str(vesde_bundle), "--io", str(tmp_path / "io.yaml"), "--key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert f"error: --io: io {tmp_path / 'io.yaml'}: observation[4].joints: expected a non-empty list of names" in err


def test_a_misspelled_field_path_stops_the_io_file_at_load_naming_the_entry(tmp_path):
    from algd_runtime.deploy.adapters import load_io
    from algd_runtime.ros.messages import message_class

    io = yaml.safe_load((ROOT / "config" / "io" / "standard.yaml").read_text())
    io["observation"][2]["field"] = "twist.twist.linaer.x"
    (tmp_path / "io.yaml").write_text(yaml.safe_dump(io))
    load_io(str(tmp_path / "io.yaml"))  # without the message types only the shape is checked
    with pytest.raises(ValueError, match=rf"io {tmp_path / 'io.yaml'}: observation\[2\]\.field: nav_msgs/Odometry "
                                         r"has no 'twist.twist.linaer.x' \('linaer' is not one of: linear, angular\)"):
        load_io(str(tmp_path / "io.yaml"), message_class)
    io["observation"][2]["field"] = "twist.twist.linear"
    (tmp_path / "io.yaml").write_text(yaml.safe_dump(io))
    with pytest.raises(ValueError, match=r"observation\[2\]\.field: 'twist.twist.linear' of nav_msgs/Odometry is a "
                                         r"message, not a number; name one of its fields: x, y, z"):
        load_io(str(tmp_path / "io.yaml"), message_class)


def test_a_misspelled_node_parameter_stops_the_node_naming_it(vesde_bundle, tmp_path):
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(60 + os.getpid() % 20))
    create_key(tmp_path / "op.key")
    for node, typo, meant in (("controller", "contrl_rate_hz", "control_rate_hz"), ("monitor", "warn_att", "warn_at")):
        out = subprocess.run([str(Path(sys.executable).parent / f"algd-{node}"), "--ros-args", "-p",
                              f"bundle:={vesde_bundle}", "-p", f"operator_key_file:={tmp_path / 'op.key'}",
                              "-p", f"{typo}:=1.0"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, out.stdout[-2000:]
        assert f"{typo}: not a parameter of the {node} (did you mean {meant}?)" in out.stderr + out.stdout


def test_an_episode_message_behind_a_backlog_of_costs_ends_its_episode_after_them(tmp_path):
    """Issue 19's 16-of-5 episode with "accumulated 0": a monitor busy for a while finds an
    episode's costs and states waiting, and the next episode's start message. rclpy's executor
    takes one message of each ready subscription in turn, so the episode message went ahead
    of all but one of the costs, which were then charged to the next episode. And the other
    way (the loaded twist_stamped run's 6 of 5): reading everything waiting before the episode
    message charged the next episode's first steps to the one that had ended."""
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Empty, Float64, Float64MultiArray

    from algd_runtime.ros import messages as m
    from algd_runtime.ros.monitor_node import MonitorNode

    create_key(tmp_path / "op.key")
    rclpy.init()
    try:
        ns = f"/backlog_{os.getpid()}"
        mon = MonitorNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in {
            "io": str(ROOT / "config" / "io" / "vector.yaml"), "cost_limit": 50.0, "max_step_cost": 1.0,
            "operator_key_file": str(tmp_path / "op.key"), "state_file": str(tmp_path / "state.json"),
            "stop_latch": "episode", "use_critic": False}.items()])
        robot = rclpy.create_node("robot", namespace=ns)
        pubs = {"cost": robot.create_publisher(Float64, "cost", m.COSTS),
                "state": robot.create_publisher(Float64MultiArray, "state", m.COSTS),
                "episode_start": robot.create_publisher(Empty, "episode_start", m.RELIABLE)}
        ex = SingleThreadedExecutor()
        ex.add_node(mon)
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs.values()):
            ex.spin_once(timeout_sec=0.05)
        state = lambda: Float64MultiArray(data=[0.0] * 8)  # noqa: E731
        pubs["cost"].publish(Float64(data=0.0))  # the first state's cost
        pubs["state"].publish(state())
        for _ in range(4):  # four steps of episode 0, costing 0.5 each, while the monitor is busy
            pubs["cost"].publish(Float64(data=0.5))
            pubs["state"].publish(state())
        pubs["episode_start"].publish(Empty())
        pubs["cost"].publish(Float64(data=0.0))  # episode 1 begins: its first state
        pubs["state"].publish(state())
        for _ in range(3):  # and three of its steps, costing 1 each, also sent while the monitor is busy
            pubs["cost"].publish(Float64(data=1.0))
            pubs["state"].publish(state())
        time.sleep(0.3)  # all of it waits in the monitor's queues
        end = time.monotonic() + 5
        while time.monotonic() < end and (not mon.episodes or mon.monitor.accumulated < 3.0):
            ex.spin_once(timeout_sec=0.05)
        # Episode 0 is charged its own four steps, not the next episode's: those were sent after
        # the episode message (its publisher's timestamps say so), and episode 1 pays them.
        assert [e["monitor_accumulated"] for e in mon.episodes] == [2.0], mon.episodes
        assert mon.monitor.accumulated == 3.0
        ex.shutdown()
        robot.destroy_node()
        mon.destroy_node()
    finally:
        rclpy.shutdown()


def test_a_stop_on_an_expiring_command_renews_no_lease(vesde_bundle, tmp_path):
    """The loaded twist_stamped run's 6 of 5: the safe action, re-sent every period with a
    fresh stamp, kept a robot that costs while it stands stepping until the e-stop landed.
    A stop keeps the stamp it began at, so the robot drops it when that lease ends."""
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.parameter import Parameter

    from algd_runtime.ros.controller_node import ControllerNode

    create_key(tmp_path / "op.key")
    rclpy.init()
    try:
        node = ControllerNode(namespace=f"/lease_{os.getpid()}", parameter_overrides=[
            Parameter(k, value=v) for k, v in {
                "bundle": str(vesde_bundle), "io": str(ROOT / "config" / "io" / "twist_stamped.yaml"),
                "operator_key_file": str(tmp_path / "op.key"), "autostart": False}.items()])
        node.trigger_configure()
        action = np.zeros(2, np.float32)
        stamps = [node._publish(action, Time(sec=s), 3, stop).header.stamp.sec
                  for s, stop in ((1, None), (2, "budget"), (3, "budget"), (4, "estop"), (5, None), (6, "budget"))]
        assert stamps == [1, 2, 2, 2, 5, 6], stamps
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_a_stop_reloaded_after_restarts_keeps_a_readable_reason(tmp_path):
    from algd_runtime.deploy.safety import restart_reason
    from algd_runtime.deploy.safety import LatchStore

    store = LatchStore(tmp_path / "state.json")
    store.save({"monitor": "budget spent (5 >= 5)"})
    for _ in range(3):  # three restarts, each saving what it reloaded
        store.save({"monitor": restart_reason(store.load())})
    assert store.load() == {"monitor": "latched before restart: budget spent (5 >= 5)"}


def test_costs_states_and_episode_starts_are_read_in_the_order_the_robot_sent_them():
    """DDS orders no two topics and rclpy's executor takes one message of each ready
    subscription in turn; a node that read a new episode's costs before its start message
    charged them to the episode that ended. take_in_sent_order reads every waiting message of
    the given topics in the order their publisher sent them."""
    import time

    import rclpy
    from std_msgs.msg import Empty, Float64, Float64MultiArray

    from algd_runtime.ros import messages as m

    rclpy.init()
    try:
        ns = f"/order_{os.getpid()}"
        robot, node = rclpy.create_node("robot", namespace=ns), rclpy.create_node("reader", namespace=ns)
        kinds = {"cost": Float64, "state": Float64MultiArray, "episode_start": Empty}
        pubs = {k: robot.create_publisher(t, k, m.COSTS) for k, t in kinds.items()}
        subs = {k: node.create_subscription(t, k, lambda msg, info: None, m.COSTS) for k, t in kinds.items()}
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs.values()):
            time.sleep(0.05)
        sent = []
        for step in range(12):
            kind = "episode_start" if step == 6 else None
            for k in ([kind] if kind else []) + ["cost", "state"]:
                msg = kinds[k]()
                if k == "cost":
                    msg.data = float(step)
                pubs[k].publish(msg)
                sent.append((k, step if k == "cost" else None))
        time.sleep(0.3)
        read = m.take_in_sent_order([subs["cost"], subs["episode_start"], subs["state"]])
        names = {sub: k for k, sub in subs.items()}
        got = [(names[sub], taken[0].data if names[sub] == "cost" else None) for sub, taken in read]
        assert got == sent
        robot.destroy_node()
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_the_controller_holds_the_robot_while_nothing_hears_its_estop(vesde_bundle, tmp_path):
    """On standard messages the controller's own stop of a robot that costs while it stands is
    its e-stop: while nothing subscribes to controller/estop (discovery not yet matched to the
    robot), this channel alone could not end such an episode, so the robot does not move."""
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool

    from algd_runtime.ros import messages as m
    from algd_runtime.ros.controller_node import ControllerNode

    create_key(tmp_path / "op.key")
    ns = f"/unheard_{os.getpid()}"
    rclpy.init()
    try:
        node = ControllerNode(namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in {
            "bundle": str(vesde_bundle), "io": str(ROOT / "config" / "io" / "standard.yaml"),
            "operator_key_file": str(tmp_path / "op.key"), "autostart": False,
            "require_monitor": False}.items()])  # the monitor's interlock is another hold
        node.trigger_configure()
        gate = node.core.gate
        gate.waiting_for = None  # the robot's first cost is another hold; this test is about the e-stop
        assert "does not hear" in (gate.verdict(time.monotonic()).stop or ""), gate.verdict(time.monotonic())
        robot = rclpy.create_node("robot", namespace=ns)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        ex.add_node(robot)

        def spin_until(done, seconds: float = 10.0) -> bool:
            deadline = time.monotonic() + seconds
            while not done() and time.monotonic() < deadline:
                ex.spin_once(timeout_sec=0.02)
            return done()

        sub = robot.create_subscription(Bool, m.CONTROLLER_ESTOP, lambda msg: None, m.LATCHED)
        assert spin_until(lambda: gate.estop_unheard is None), gate.estop_unheard
        assert gate.verdict(time.monotonic()).stop is None
        robot.destroy_subscription(sub)  # the robot went away: held again
        assert spin_until(lambda: gate.estop_unheard is not None)
        ex.shutdown()
        robot.destroy_node()
        node.destroy_node()
    finally:
        rclpy.shutdown()
