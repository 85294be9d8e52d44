"""colcon and ament: the repository builds as a ROS 2 package in a workspace, plain and with
--symlink-install, and the install space is what ros2 launch / ros2 run look for."""

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
COLCON = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
# The modules the robot runs (engine, safety, controller, monitor) and their ROS / pip names.
RUNTIME = ["algd_runtime/deploy/runtime.py", "algd_runtime/deploy/control.py", "algd_runtime/deploy/safety.py", "algd_runtime/deploy/monitor.py",
           "algd_runtime/contract/atomic.py", "algd_runtime/__init__.py", *(f"algd_runtime/ros/{n}.py" for n in (
               "controller_node", "monitor_node", "managed", "messages", "params", "entry", "operator", "recorder",
               "launcher"))]
ROSDEP_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "onnxruntime": "python3-onnxruntime-pip"}
OPTIONAL = {"mcap"}  # recording only (imported when record:= is set), from pip


def checkout(dest: Path) -> Path:
    """The repository's files as a user's clone has them (tracked and new, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.parametrize("symlink", [False, True], ids=["install", "symlink-install"])
def test_colcon_builds_the_package_into_an_ament_install_space(tmp_path, symlink):
    if COLCON is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions, in the [dev] extra)")
    src = checkout(tmp_path / "ws" / "src" / "algd_runtime")
    ws = src.parent.parent
    cmd = [COLCON, "build", "--event-handlers", "console_direct-"] + (["--symlink-install"] if symlink else [])
    out = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    prefix = ws / "install" / "algd_runtime"
    for path in ("share/algd_runtime/package.xml", "share/algd_runtime/launch/controller.launch.py",
                 "share/algd_runtime/launch/controller.yaml", "share/algd_runtime/config/io/standard.yaml",
                 "share/ament_index/resource_index/packages/algd_runtime"):
        assert (prefix / path).is_file(), path
    assert os.access(prefix / "lib" / "algd_runtime" / "algd-controller", os.X_OK)
    # In the sourced workspace, Python finds the package there (built or, with
    # --symlink-install, the sources themselves) and ament finds its share.
    probe = ("import algd_runtime.ros.launcher as l; from ament_index_python.packages import "
             "get_package_share_directory as g; print(l.__file__); print(g('algd_runtime')); print(l.default_params())")
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    res = subprocess.run(["bash", "-c", f". install/setup.bash && {sys.executable} -c \"{probe}\""], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    module, share, params = res.stdout.split()
    assert Path(module).resolve().is_relative_to(src.resolve() if symlink else prefix.resolve()), module
    assert Path(share) == prefix / "share" / "algd_runtime" and Path(params) == Path(share) / "launch" / "controller.yaml"
    if symlink:  # an edit in the sources is what runs, without a rebuild
        assert (prefix / "share" / "algd_runtime" / "launch" / "controller.yaml").resolve().is_relative_to(ws)


def test_package_xml_lists_every_run_dependency():
    declared = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    imported = set()
    for name in RUNTIME:
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"algd_runtime"} - OPTIONAL
    missing = {ROSDEP_KEYS.get(m, m) for m in third_party} - declared
    assert not missing, f"package.xml lacks <exec_depend> for {sorted(missing)}"
