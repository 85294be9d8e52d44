"""Packaging: pip (`pip install .`, `pip install -e .`) and colcon (`colcon build`,
`colcon build --symlink-install`, ament_python) read this one file.

The metadata lives here rather than in pyproject.toml"s [project] table because colcon"s
ament_python support evaluates setup.py"s keywords and cannot read pyproject metadata
(requires-python there breaks it). The runtime (engine + nodes) needs Python 3.10 to 3.12
(ROS 2 Humble to Jazzy); the [train] extra"s pins need 3.11.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "train": [
        "torch==2.13.0",
        "numpy<1.24",                 # safety-gymnasium 1.0.0"s pin
        "mujoco==2.3.3",
        "gymnasium==0.28.1",
        "gymnasium-robotics==1.2.2",
        "pygame>=2.5",                # safety-gymnasium pins 2.1.0, which has no 3.11 wheel
        "xmltodict>=0.13",
        "imageio>=2.27",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "onnx>=1.16",                 # algd-export builds the graphs with onnx.helper
        "matplotlib>=3.8",            # demo and fine-tuning report plots (PNG)
        "ray==2.60.0",                # algd-sweep: trials as Ray tasks, local or on a cluster
        # safety-gymnasium==1.0.0 itself is installed with --no-deps (see the Makefile)
    ],
    # ROS 2 from PyPI wheels (Jazzy); on a robot with ROS 2 installed, its own packages do.
    "ros": [
        "ros-jazzy-rclpy",
        "ros-jazzy-rmw-fastrtps-cpp",
        "ros-jazzy-std-msgs",
        "ros-jazzy-sensor-msgs",
        "ros-jazzy-diagnostic-msgs",
        "ros-jazzy-std-srvs",
        "ros-jazzy-lifecycle-msgs",
        "ros-jazzy-nav-msgs",         # io adapters: nav_msgs/Odometry in
        "ros-jazzy-geometry-msgs",    # io adapters: Twist / TwistStamped out
        "ros-jazzy-trajectory-msgs",  # io adapters: JointTrajectory out (an expiring command)
        "mcap>=1.2",                  # run logs (algd_runtime/ros/recorder.py)
        "mcap-ros2-support>=0.5",
    ],
    # Install on a CUDA machine *instead of* onnxruntime: pip uninstall onnxruntime first.
    "gpu": ["onnxruntime-gpu>=1.17"],
    "dev": [
        "pytest>=7",
        "colcon-common-extensions>=0.3",  # tests/test_colcon.py builds the package as a user's workspace would
        "vermin>=1.6",                # tests/test_python_versions.py: no module needs a Python newer than 3.10
    ],
}

setup(
    name="algd-runtime",
    version="0.1.0",
    description="Train, export and deploy ALGD safe diffusion policies for robots (MuJoCo, ONNX Runtime, ROS 2)",
    license="Apache-2.0",
    python_requires=">=3.10",
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    # The runtime on the robot: no torch here.
    install_requires=[
        "numpy>=1.23",
        "pyyaml>=6.0",
        "onnxruntime>=1.17",          # CPU; the [gpu] extra swaps in onnxruntime-gpu (CUDA, TensorRT)
        "cryptography>=42",           # Ed25519: who signed a bundle (signing.py)
    ],
    extras_require=EXTRAS,
    packages=find_packages(include=["algd_runtime", "algd_runtime.*"]),
    # Task configs, io examples and the nodes' parameter file ship inside the package (one
    # copy; the repository's configs/, config/io/ and launch/controller.yaml link to them).
    package_data={"algd_runtime.sim": ["assets/*.xml"], "algd_runtime.data": ["*.yaml", "configs/*.yaml", "io/*.yaml"]},
    # ROS 2 package registration: ros2 launch and ament_index_python find these under the
    # install prefix (AMENT_PREFIX_PATH); the node executables go where ros2 run looks.
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/algd_runtime"]),
        ("share/algd_runtime", ["package.xml"]),
        ("share/algd_runtime/launch", ["launch/controller.launch.py", "algd_runtime/data/controller.yaml"]),
        ("share/algd_runtime/config/io", [f"algd_runtime/data/io/{n}.yaml" for n in
                                          ("standard", "vector", "twist_stamped", "trajectory")]),
        ("lib/algd_runtime", ["resource/lib/algd-controller", "resource/lib/algd-monitor", "resource/lib/algd-sim"]),
    ],
    entry_points={"console_scripts": [
        "algd-train = algd_runtime.cli:train_main",
        "algd-eval = algd_runtime.cli:eval_main",
        "algd-sign = algd_runtime.cli:sign_main",
        "algd-bench = algd_runtime.cli:bench_main",
        "algd-import-reference = algd_runtime.cli:import_reference_main",
        "algd-finetune = algd_runtime.cli:finetune_main",
        "algd-sweep = algd_runtime.cli:sweep_main",
        "algd-diagnose = algd_runtime.cli:diagnose_main",
        "algd-demo = algd_runtime.cli:demo_main",
        "algd-export = algd_runtime.cli:export_main",
        "algd-controller = algd_runtime.cli:controller_main",
        "algd-sim = algd_runtime.cli:sim_main",
        "algd-monitor = algd_runtime.cli:monitor_main",
        "algd-launch = algd_runtime.cli:launch_main",
        "algd-reset = algd_runtime.cli:reset_main",
    ]},
)
