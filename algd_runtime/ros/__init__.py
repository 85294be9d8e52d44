"""The ROS 2 nodes (rclpy): controller, monitor, sim robot, launcher, operator reset."""
