"""The runtime installs on ROS 2 Humble's Python (3.10) to Jazzy's (3.12).

This machine has only Python 3.11, so the source is checked statically: vermin reads every
module (syntax, standard-library modules and functions) and names what a newer Python needs.
"""

import ast
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
