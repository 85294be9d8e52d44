"""The runtime installs on ROS 2 Humble's Python (3.10) to Jazzy's (3.12).

The source is checked statically (vermin reads every module and names what a newer Python
needs), and, where pyenv has those Pythons, the README's robot install itself runs on each:
a clean venv, `-c constraints.txt -e ".[ros]"`, then the controller and the monitor on a
bundle (issue 20, item 4).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_no_module_needs_a_python_newer_than_3_10():
    pytest.importorskip("vermin")
    out = subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "--eval-annotations",
                          "-t=3.10-", "algd_runtime", "launch", "setup.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_metadata_admits_3_10_to_3_12():
    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    meta = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("python_requires", "install_requires")}
    assert meta["python_requires"] == ">=3.10"
    deps = meta["install_requires"]
    assert "numpy" in " ".join(deps) and all("<" not in d for d in deps)  # no upper pin blocks 3.12


PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def _pyenv_python(minor: str) -> Path | None:
    found = sorted(PYENV.glob(f"{minor}.*/bin/python")) if PYENV.is_dir() else []
    return found[-1] if found else None


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.10", "3.12"])
def test_the_robot_install_runs_the_nodes_on_another_python(minor, vesde_bundle, tmp_path):
    python = _pyenv_python(minor)
    if python is None:
        pytest.skip(f"no Python {minor} under {PYENV} (pyenv install {minor})")
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", "constraints.txt",
                              "-e", ".[ros]"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    # A clean environment for the other Python: the ROS wheels' bootstrapper re-executed this
    # Python with its own ROS libraries on LD_LIBRARY_PATH, and a guard variable that would
    # stop the other Python's bootstrapper from doing the same for its own.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "AMENT_PREFIX_PATH", "PYTHONPATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    key = tmp_path / "op.key"
    subprocess.run([str(venv / "bin" / "algd-reset"), "--init-key", str(key)], check=True, capture_output=True,
                   timeout=60, env=env)
    run = subprocess.run([str(venv / "bin" / "algd-launch"), "--bundle", str(vesde_bundle), "--duration", "4",
                          "--key", str(key)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    text = run.stdout + run.stderr
    assert run.returncode == 0 and "all nodes exited cleanly" in text, text[-3000:]
    assert "controller: " in text and "monitor: " in text, text[-3000:]  # both configured: bundle, key, budget
    version = subprocess.run([str(venv / "bin" / "python"), "--version"], capture_output=True, text=True).stdout
    assert version.startswith(f"Python {minor}.")
