"""The io mapping: standard messages in, the observation vector out; the action into commands."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

pytest.importorskip("sensor_msgs")
from geometry_msgs.msg import PoseWithCovariance, Twist, TwistStamped, TwistWithCovariance  # noqa: E402
from sensor_msgs.msg import Imu, JointState, LaserScan  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from algd_runtime.deploy.adapters import action_map, io_config, observation_map, scan_bins, yaw  # noqa: E402

CONFIG = [
    {"topic": "joint_states", "type": "sensor_msgs/JointState", "field": "position", "joints": ["knee", "hip"]},
    {"topic": "joint_states", "type": "sensor_msgs/JointState", "field": "velocity", "joints": ["hip"], "scale": 0.1},
    {"topic": "odom", "type": "nav_msgs/Odometry", "field": "twist.twist.linear.x", "offset": 1.0},
    {"topic": "odom", "type": "nav_msgs/Odometry", "field": "pose.pose.orientation.yaw"},
    {"topic": "imu", "type": "sensor_msgs/Imu", "field": "angular_velocity.z", "clip": [-1, 1]},
    {"topic": "scan", "type": "sensor_msgs/LaserScan", "field": "ranges", "bins": 2},
]


def odometry(vx: float, heading: float):
    """nav_msgs/Odometry's fields (pose and twist with covariance) from geometry_msgs."""
    pose = PoseWithCovariance()
    pose.pose.orientation.z, pose.pose.orientation.w = math.sin(heading / 2), math.cos(heading / 2)
    twist = TwistWithCovariance()
    twist.twist.linear.x = vx
    return SimpleNamespace(pose=pose, twist=twist)


def test_messages_map_to_the_observation_in_the_configured_order():
    obs = observation_map(CONFIG, 8)
    assert obs.topics == ["imu", "joint_states", "odom", "scan"]
    with pytest.raises(ValueError, match=r"no message yet on \['imu', 'joint_states', 'odom', 'scan'\]"):
        obs.vector()
    # The robot lists its joints in its own order, with more than the policy uses.
    obs.update("joint_states", JointState(name=["hip", "ankle", "knee"], position=[0.1, 9.0, 0.3],
                                          velocity=[2.0, 9.0, 4.0]))
    obs.update("odom", odometry(0.5, math.pi / 2))
    imu = Imu()
    imu.angular_velocity.z = 3.0
    obs.update("imu", imu)
    obs.update("scan", LaserScan(ranges=[2.0, math.inf, 0.5, math.nan, 9.0, 0.01], range_min=0.05, range_max=4.0))
    v = obs.vector()
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [0.3, 0.1, 0.2, 1.5, math.pi / 2, 1.0, 0.5, 4.0], rtol=1e-6)


def test_mistakes_name_the_entry_and_the_field():
    cases = [
        ([{"topic": "j", "type": "sensor_msgs/JointState", "field": "pos", "joints": ["a"]}],
         r"observation\[0\]\.field: expected one of \['position', 'velocity', 'effort'\], got 'pos'"),
        ([{"topic": "j", "type": "sensor_msgs/JointState", "field": "position"}],
         r"observation\[0\]\.joints: expected a non-empty list of names, got None"),
        ([{"topic": "o", "type": "nav_msgs/Odom", "field": "x"}], r"observation\[0\]\.type: expected one of"),
        ([{"topic": "s", "type": "sensor_msgs/LaserScan", "field": "ranges", "bins": 0}],
         r"observation\[0\]\.bins: expected an integer >= 1, got 0"),
        ([{"topic": "i", "type": "sensor_msgs/Imu", "field": "angular_velocity.z", "clip": [1, -1]}],
         r"observation\[0\]\.clip: expected low < high"),
        ([{"topic": "i", "type": "sensor_msgs/Imu", "field": "angular_velocity.z", "scael": 2}],
         r"observation\[0\]: unknown key 'scael'"),
        ([{"topic": "i", "type": "sensor_msgs/Imu", "field": "angular_velocity.z"}],
         r"observation: the entries give 1 values, the policy observes 2"),
    ]
    for cfg, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            observation_map(cfg, 2)
    obs = observation_map([{"topic": "j", "type": "sensor_msgs/JointState", "field": "position",
                            "joints": ["a", "b"]}], 2)
    obs.update("j", JointState(name=["a"], position=[1.0]))
    with pytest.raises(ValueError, match=r"j: no position for joint\(s\) \['b'\]"):
        obs.vector()


def test_the_action_fills_each_standard_command():
    a = np.array([0.5, -1.0])
    twist = action_map({"topic": "cmd_vel", "type": "geometry_msgs/Twist", "fields": ["linear.x", "angular.z"],
                        "scale": [2.0, 0.5]}, 2).fill(Twist(), a)
    assert (twist.linear.x, twist.angular.z, twist.linear.y) == (1.0, -0.5, 0.0)
    stamped = action_map({"topic": "cmd_vel", "type": "geometry_msgs/TwistStamped",
                          "fields": ["linear.x", "angular.z"], "expires_after_s": 0.02}, 2).fill(TwistStamped(), a)
    assert (stamped.twist.linear.x, stamped.twist.angular.z) == (0.5, -1.0)
    arr = action_map({"topic": "forward_position_controller/commands", "type": "std_msgs/Float64MultiArray",
                      "offset": 1.0}, 2).fill(Float64MultiArray(), a)
    assert list(arr.data) == [1.5, 0.0]
    joints = action_map({"topic": "joint_commands", "type": "sensor_msgs/JointState", "joints": ["hip", "knee"],
                         "joint_field": "effort"}, 2).fill(JointState(), a)
    assert list(joints.name) == ["hip", "knee"] and list(joints.effort) == [0.5, -1.0]
    with pytest.raises(ValueError, match=r"action: 1 command fields for an action of 2 values"):
        action_map({"topic": "c", "type": "geometry_msgs/Twist", "fields": ["linear.x"]}, 2)
    with pytest.raises(ValueError, match=r"action\.fields: expected linear\.x \.\. angular\.z, got 'linear\.q'"):
        action_map({"topic": "c", "type": "geometry_msgs/Twist", "fields": ["linear.q", "angular.z"]}, 2)


def test_scan_bins_and_yaw():
    np.testing.assert_allclose(scan_bins([1, 2, 3, 4, 5, 6], 3, 0.0, 10.0), [1, 3, 5])
    np.testing.assert_allclose(scan_bins([math.inf, math.nan, -1.0, 20.0], 2, 0.0, 10.0), [10.0, 10.0])
    q = SimpleNamespace(x=0.0, y=0.0, z=math.sin(-0.4), w=math.cos(-0.4))
    assert yaw(q) == pytest.approx(-0.8)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_the_shipped_io_files_load_and_fit_the_toy_task():
    from algd_runtime.deploy.adapters import load_io

    for name, topics in [("standard", {"cost", "episode_start", "odom", "joint_states"}),
                         ("vector", {"cost", "episode_start", "state"})]:
        io = load_io(str(ROOT / "config" / "io" / f"{name}.yaml"))
        assert set(io.topics()) == topics and list(io.topics())[0] == "cost"  # cost is subscribed first
        assert io.bind(8, 2).topic in ("cmd_vel", "commands") and io.steps_ahead == 5  # 100 Hz x 40 ms + 1
        with pytest.raises(ValueError, match=r"observation: the entries give 8 values, the policy observes 6"):
            io.bind(6, 2)


def test_the_robot_side_writes_what_the_controller_side_reads():
    """The sim speaks an io file from the robot's side: writing then reading is the identity,
    whatever order a driver lists its joints in."""
    from nav_msgs.msg import Odometry
    from std_msgs.msg import Float64

    from algd_runtime.deploy.adapters import io_config

    io = io_config({
        "observation": [
            {"topic": "odom", "type": "nav_msgs/Odometry", "field": "pose.pose.position.x", "scale": 2.0},
            {"topic": "odom", "type": "nav_msgs/Odometry", "field": "pose.pose.orientation.yaw"},
            {"topic": "joint_states", "type": "sensor_msgs/JointState", "field": "velocity", "joints": ["b", "a"],
             "offset": [1.0, -1.0]},
            {"topic": "joint_states", "type": "sensor_msgs/JointState", "field": "position", "joints": ["a"]},
            {"topic": "cost", "type": "std_msgs/Float64", "field": "data"}],
        "action": {"topic": "cmd_vel", "type": "geometry_msgs/Twist", "fields": ["linear.x", "angular.z"],
                   "scale": [0.5, 2.0], "offset": [0.1, 0.0]},
        "cost": {"topic": "cost", "type": "std_msgs/Float64", "field": "data"}})
    types = {"nav_msgs/Odometry": Odometry, "sensor_msgs/JointState": JointState, "std_msgs/Float64": Float64}
    obs = np.array([0.4, -2.0, 3.0, 4.0, 5.0, 0.25], np.float32)
    msgs = io.observation.write(obs, lambda kind: types[kind]())
    js = msgs["joint_states"]
    order = list(reversed(range(len(js.name))))
    msgs["joint_states"] = JointState(name=[js.name[i] for i in order], position=[js.position[i] for i in order],
                                      velocity=[js.velocity[i] for i in order])
    for topic, msg in msgs.items():
        io.observation.update(topic, msg, now=10.0)
    np.testing.assert_allclose(io.observation.vector(now=10.0), obs, rtol=1e-6)
    action = np.array([0.3, -0.7], np.float32)
    amap = io.bind(6, 2)
    twist = amap.fill(Twist(), action)
    assert twist.linear.x == pytest.approx(0.25)
    np.testing.assert_allclose(amap.read(twist), action, rtol=1e-6)
    with pytest.raises(ValueError, match=r"the command lacks joint"):
        io_config({**_minimal(), "action": {"topic": "j", "type": "sensor_msgs/JointState", "joints": ["x"]}}
                  ).bind(1, 1).read(JointState(name=["y"], position=[1.0]))


def _minimal():
    return {"observation": [{"topic": "s", "type": "std_msgs/Float64MultiArray", "field": "data", "size": 1,
                             "max_age_s": 0.05}],
            "action": {"topic": "c", "type": "std_msgs/Float64MultiArray"},
            "cost": {"topic": "cost", "type": "std_msgs/Float64", "field": "data"}}


def test_a_source_older_than_its_max_age_is_stale():
    from algd_runtime.deploy.adapters import io_config

    io = io_config(_minimal())
    io.observation.update("s", Float64MultiArray(data=[1.0]), now=1.0)
    assert io.observation.vector(now=1.04).tolist() == [1.0]
    with pytest.raises(ValueError, match=r"observation: stale \['s'\] \(older than max_age_s\)"):
        io.observation.vector(now=1.06)


def test_io_file_mistakes_name_the_file_and_the_field(tmp_path):
    from algd_runtime.deploy.adapters import io_config, load_io

    cases = [
        ({k: v for k, v in _minimal().items() if k != "cost"}, r"io: missing 'cost' \(observation, action and cost"),
        ({**_minimal(), "trigger": "odom"}, r"io: trigger: expected one of the observation topics \['s'\], got 'odom'"),
        ({**_minimal(), "steps_ahead": 0}, r"io: steps_ahead: expected an integer in 1\.\.100, got 0"),
        ({**_minimal(), "episode": {"topic": "e", "type": "std_msgs/String"}},
         r"io: episode\.type: expected one of \['std_msgs/Empty'\], got 'std_msgs/String'"),
        ({**_minimal(), "episode": {"topic": "cost", "type": "std_msgs/Empty"}}, r"episode\.topic 'cost' is also"),
        ({**_minimal(), "cost": {"topic": "s", "type": "std_msgs/Float64", "field": "data"}},
         r"topic 's' is given as std_msgs/Float64 and as std_msgs/Float64MultiArray"),
        ({**_minimal(), "extra": 1}, r"io: unknown key 'extra'"),
        ({**_minimal(), "action": {"topic": "c", "type": "std_msgs/Float64MultiArray", "scale": [1.0, 0.0]}},
         r"io: action\.scale: expected non-zero numbers"),
    ]
    for cfg, match in cases:
        with pytest.raises(ValueError, match=match):
            io_config(cfg)
    (tmp_path / "bad.yaml").write_text("observation: [\n")
    with pytest.raises(ValueError, match=rf"io: {tmp_path / 'bad.yaml'} is not valid YAML"):
        load_io(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match=r"io: cannot read .*none\.yaml: No such file"):
        load_io(str(tmp_path / "none.yaml"))


def test_the_readme_io_example_is_a_valid_io_file():
    import yaml

    from algd_runtime.deploy.adapters import io_config

    text = (ROOT / "README.md").read_text()
    start = text.index("```yaml\nobservation:") + len("```yaml\n")
    io = io_config(yaml.safe_load(text[start:text.index("```", start)]), "README")
    assert io.observation.size == 1 + 1 + 2 + 1 + 16 + 4 and io.trigger == "odom" and io.steps_ahead == 3
    assert io.bind(25, 2).fields == ["linear.x", "angular.z"]


def test_expiring_commands_give_the_margin_from_their_expiry():
    """TwistStamped dropped after the consumer's timeout, a JointTrajectory ended at its
    point's time_from_start: a command moves the robot for at most expiry x rate steps."""
    from algd_runtime.deploy.adapters import load_io

    for name, kind in (("twist_stamped", "geometry_msgs/TwistStamped"), ("trajectory", "trajectory_msgs/JointTrajectory")):
        io = load_io(str(ROOT / "config" / "io" / f"{name}.yaml"))
        command = io.bind(8, 2)
        assert command.type == kind and command.expires_after_s == 0.02
        assert io.leased and io.steps_ahead == 3  # 0.02 s x 100 Hz, and the step in flight
    base = yaml.safe_load((ROOT / "config" / "io" / "twist_stamped.yaml").read_text())
    for change, error in [
        ({"rate_hz": None}, r"rate_hz: expected the robot's rate \(Hz\): with an expiring command"),
        ({"steps_ahead": 2}, r"steps_ahead: expected >= 3 \(expires_after_s 0.02 s x rate_hz 100 \+ 1\), got 2"),
        ({"action": {**base["action"], "expires_after_s": None}}, r"action.expires_after_s: expected the time"),
        ({"action": {**base["action"], "type": "geometry_msgs/Twist"}},
         r"action.expires_after_s: a geometry_msgs/Twist carries no stamp to expire from"),
    ]:
        cfg = {k: v for k, v in {**base, **change}.items() if v is not None}
        if "action" in change:
            cfg["action"] = {k: v for k, v in cfg["action"].items() if v is not None}
        with pytest.raises(ValueError, match=error):
            io_config(cfg)
    assert io_config({**base, "rate_hz": 500, "action": {**base["action"], "expires_after_s": 0.004}}).steps_ahead == 3


def test_a_joint_trajectory_command_carries_the_action_and_its_end():
    pytest.importorskip("trajectory_msgs")
    from trajectory_msgs.msg import JointTrajectory

    amap = action_map({"topic": "jt", "type": "trajectory_msgs/JointTrajectory", "joints": ["vx", "vy"],
                       "joint_field": "velocities", "expires_after_s": 0.25}, 2)
    msg = amap.fill(JointTrajectory(), np.array([0.5, -1.0], np.float32))
    assert msg.joint_names == ["vx", "vy"] and list(msg.points[0].velocities) == [0.5, -1.0]
    assert (msg.points[0].time_from_start.sec, msg.points[0].time_from_start.nanosec) == (0, 250_000_000)
    msg.joint_names, msg.points[0].velocities = ["vy", "vx"], [-1.0, 0.5]  # another order: read by name
    np.testing.assert_allclose(amap.read(msg), [0.5, -1.0])
