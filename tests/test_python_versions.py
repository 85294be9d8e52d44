"""The runtime installs on ROS 2 Humble's Python (3.10) to Jazzy's (3.12).

This machine has only Python 3.11, so the source is checked statically: vermin reads every
module (syntax, standard-library modules and functions) and names what a newer Python needs.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_no_module_needs_a_python_newer_than_3_10():
    pytest.importorskip("vermin")
    out = subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "--eval-annotations",
                          "-t=3.10-", "algd_runtime", "ros_nodes", "sim", "export", "launch"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_metadata_admits_3_10_to_3_12():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.10"
    assert "numpy" in " ".join(meta["dependencies"]) and all("<" not in d for d in meta["dependencies"])
