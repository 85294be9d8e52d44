"""Installs outside the checkout (issue 20, item 4): a wheel built from the tree carries the
task configs, the io examples and the nodes' parameter file, and the commands find them
there, not in a source tree that a robot does not have."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_a_wheel_install_uses_its_shipped_configs_and_parameters(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("algd_runtime-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # The installed copy, from a folder with no checkout in sight (this environment's other
    # packages stay importable; the editable install of the tree is shadowed by the wheel's).
    env = dict(os.environ, PYTHONPATH=str(site))
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run([sys.executable, "-c", (
        "import algd_runtime\n"
        "from algd_runtime.data import io_example, task_config\n"
        "from algd_runtime.ros.launcher import default_params\n"
        "print(algd_runtime.__file__); print(task_config('PointHazard-v0')); print(default_params())\n"
        "print(io_example('standard'))\n")], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    paths = probe.stdout.split()
    assert all(p.startswith(str(site)) for p in paths), paths
    assert all(Path(p).is_file() for p in paths[1:]) and not Path(paths[1]).is_symlink()
    train = subprocess.run([str(BIN / "algd-train"), "--task", "PointHazard-v0", "--steps", "200", "--out",
                            str(work / "runs"), "--no-progress"], cwd=work, env=env, capture_output=True, text=True,
                           timeout=300)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert f"config: {site / 'algd_runtime' / 'data' / 'configs' / 'PointHazard-v0.yaml'}" in train.stdout, train.stdout
