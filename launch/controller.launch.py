"""ros2 launch algd_runtime controller.launch.py bundle:=/path/to/bundle [with_sim:=true] [namespace:=algd]
    [params_file:=my.yaml] [use_sim_time:=true] [log_level:=debug] [autostart:=false] [io:=my_io.yaml]

Starts the controller and the monitor (and the sim robot with with_sim:=true) with the
parameters in params_file (default: the shipped controller.yaml). algd-launch starts the
same graph, with the same arguments, where the ros2 CLI is absent.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

NODES = (("controller", "algd-controller"), ("monitor", "algd-monitor"), ("sim", "algd-sim"))


def generate_launch_description():
    shipped = os.path.join(get_package_share_directory("algd_runtime"), "launch", "controller.yaml")
    arg = LaunchConfiguration
    actions = [
        DeclareLaunchArgument("bundle", description="exported bundle folder (algd-export)"),
        DeclareLaunchArgument("with_sim", default_value="false", description="also start the sim robot"),
        DeclareLaunchArgument("namespace", default_value="algd"),
        DeclareLaunchArgument("params_file", default_value=shipped, description="the nodes' parameter YAML"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="stamps from /clock (the safety deadlines always run on the wall clock)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error or fatal"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="bring the controller and the monitor to active; false: leave them "
                                          "unconfigured for lifecycle transitions"),
        DeclareLaunchArgument("io", default_value="",
                              description="an io file wiring standard messages (config/io/*.yaml); '': the "
                                          "observation/action topics"),
    ]
    for name, executable in NODES:
        overrides = {"use_sim_time": arg("use_sim_time"), "io": arg("io")}
        if name != "sim":
            overrides.update(bundle=arg("bundle"), autostart=arg("autostart"))
        actions.append(Node(
            package="algd_runtime", executable=executable, name=name, namespace=arg("namespace"), output="screen",
            parameters=[arg("params_file"), overrides], ros_arguments=["--log-level", arg("log_level")],
            condition=IfCondition(arg("with_sim")) if name == "sim" else None))
    return LaunchDescription(actions)
