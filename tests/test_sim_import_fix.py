"""The Python >= 3.11 import fix for safety-gymnasium 1.0.0 (run in fresh interpreters)."""

import subprocess
import sys
import textwrap

import pytest

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="the bug is 3.11+ only")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120,
    )


@needs_311
def test_plain_import_fails_with_the_dataclass_error():
    proc = _run("import safety_gymnasium")
    assert proc.returncode != 0
    assert "ValueError: mutable default <class 'numpy.ndarray'> for field color" in proc.stderr


@needs_311
def test_install_makes_import_work_and_keeps_colour_values():
    proc = _run(
        """
        import runpy, sys
        import numpy as np
        from algd_runtime.sim import sg_import_fix as fix
        fix.install(); fix.install()
        assert sum(isinstance(f, fix._ColorFixFinder) for f in sys.meta_path) == 1

        import safety_gymnasium
        from safety_gymnasium.assets.color import COLOR, __file__ as color_file
        from safety_gymnasium.assets.geoms.goal import Goal

        original = runpy.run_path(color_file)["COLOR"]   # a fresh, unpatched copy
        assert set(COLOR) == set(original)
        for key, value in original.items():
            assert isinstance(COLOR[key], fix.HashableArray), key
            assert COLOR[key].dtype == value.dtype and np.array_equal(COLOR[key], value), key
        assert np.array_equal(Goal.color, original["goal"])
        assert hash(COLOR["goal"]) == hash(COLOR["goal"])
        print("OK", len(COLOR))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK 13" in proc.stdout


@needs_311
def test_install_after_a_failed_import_lets_a_retry_succeed():
    proc = _run(
        """
        try:
            import safety_gymnasium
        except ValueError:
            pass
        else:
            raise SystemExit("expected the 3.11 import error")
        from algd_runtime.sim import sg_import_fix
        sg_import_fix.install()
        import safety_gymnasium
        print("OK", callable(safety_gymnasium.make))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK True" in proc.stdout


def test_install_is_a_noop_where_not_needed(monkeypatch):
    from algd_runtime.sim import sg_import_fix as fix

    monkeypatch.setattr(fix, "needed", lambda: False)
    before = list(sys.meta_path)
    fix.install()
    assert sys.meta_path == before
