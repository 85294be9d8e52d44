"""The public API of algd_runtime.sim: names, errors, cheap import."""

import subprocess
import sys

import pytest

from algd_runtime.sim import TASK_NAMES, UnknownTaskError, make_task


def test_task_names():
    assert TASK_NAMES[0] == "PointHazard-v0"
    assert len(TASK_NAMES) == 9 and len(set(TASK_NAMES)) == 9


def test_unknown_task_lists_known_names():
    with pytest.raises(UnknownTaskError) as err:
        make_task("SafetyPointGoal9-v0")
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "'SafetyPointGoal9-v0'" in msg
    for name in TASK_NAMES:
        assert name in msg


def test_import_is_cheap():
    code = (
        "import sys, algd_runtime.sim as s\n"
        "heavy = [m for m in ('mujoco', 'gymnasium', 'safety_gymnasium', 'torch')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "s.make_task('PointHazard-v0')\n"
        "print('SG', 'safety_gymnasium' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "SG False" in proc.stdout  # the toy task never loads Safety-Gymnasium
