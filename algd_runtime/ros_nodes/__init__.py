"""ROS 2 nodes (controller, monitor, sim robot) and the in-process launcher. Thin wrappers:
the decisions live in algd_runtime.control and algd_runtime.monitor."""
