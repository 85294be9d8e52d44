"""ros2 launch algd_runtime controller.launch.py bundle:=/path/to/bundle [with_sim:=true] [namespace:=algd]

Starts the controller and the monitor (and the sim robot with with_sim:=true) with the
parameters in controller.yaml. algd-launch starts the same graph where the ros2 CLI is absent.
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
    params = os.path.join(get_package_share_directory("algd_runtime"), "launch", "controller.yaml")
    bundle, ns, with_sim = LaunchConfiguration("bundle"), LaunchConfiguration("namespace"), LaunchConfiguration("with_sim")
    actions = [
        DeclareLaunchArgument("bundle", description="exported bundle folder (algd-export)"),
        DeclareLaunchArgument("with_sim", default_value="false", description="also start the sim robot"),
        DeclareLaunchArgument("namespace", default_value="algd"),
    ]
    for name, executable in NODES:
        actions.append(Node(
            package="algd_runtime", executable=executable, name=name, namespace=ns, output="screen",
            parameters=[params] if name == "sim" else [params, {"bundle": bundle}],
            condition=IfCondition(with_sim) if name == "sim" else None))
    return LaunchDescription(actions)
