"""The controller's decisions, driven directly with a real exported bundle (no ROS)."""

import math
import re

import numpy as np
import pytest

from algd_runtime.control import ControllerCore, ControllerParams, check_param
from algd_runtime.runtime import PolicyRuntime


@pytest.fixture
def core(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    return ControllerCore(rt, ControllerParams(obs_timeout_s=0.05, fallback="zero"))


OBS = np.full(8, 0.1, np.float32)


def test_fresh_observation_gets_the_policy_action_with_its_stamp(core):
    core.on_observation(OBS, stamp=(12, 345), received_at=10.0)
    d = core.tick(now=10.001)
    expected = core.runtime.act(OBS).action
    assert d.source == "policy" and d.stamp == (12, 345)
    np.testing.assert_array_equal(d.action, expected)
    core.handed_over(d, published_at=10.0015, work_s=0.0005)
    assert d.latency_s == pytest.approx(0.0015) and core.overruns == 0


def test_no_or_stale_observation_falls_back_and_recovers(core):
    assert core.tick(0.0).reason == "no_observation"
    core.on_observation(OBS, 1, received_at=1.0)
    assert core.tick(1.02).source == "policy"
    stale = core.tick(1.06)  # 60 ms > 50 ms timeout
    assert stale.source == "fallback" and stale.reason == "stale" and np.all(stale.action == 0)
    core.on_observation(OBS, 2, received_at=1.07)
    assert core.tick(1.071).source == "policy"
    assert core.fallbacks == {"no_observation": 1, "stale": 1}


def test_nan_observation_gives_the_fallback_and_is_counted(core):
    bad = OBS.copy()
    bad[2] = math.nan
    core.on_observation(bad, 1, received_at=0.0)
    d = core.tick(0.001)
    assert d.source == "fallback" and d.reason == "nan" and np.isfinite(d.action).all()
    assert core.stats()["fallback_nan"] == 1


def test_hold_last_and_vector_fallbacks(core):
    core.on_observation(OBS, 1, received_at=0.0)
    last = core.tick(0.001).action
    assert core.set_param("fallback", "hold-last") is None
    np.testing.assert_array_equal(core.tick(1.0).action, last)
    assert core.set_param("fallback", "0.5,-0.25") is None
    np.testing.assert_array_equal(core.tick(1.0).action, [0.5, -0.25])


def test_estop_is_obeyed(core):
    core.on_observation(OBS, 1, received_at=0.0)
    core.estop = True
    d = core.tick(0.001)
    assert d.source == "fallback" and d.reason == "estop"
    core.estop = False
    assert core.tick(0.002).source == "policy"


@pytest.mark.parametrize("name, value, pattern", [
    ("control_rate_hz", 0.0, "control_rate_hz: expected 0 < value <= 10000"),
    ("control_rate_hz", "fast", "control_rate_hz: expected"),
    ("obs_timeout_s", -1.0, "obs_timeout_s: expected 0 < value"),
    ("mode", "greedy", "mode: expected one of"),
    ("best_of_n", 0, "best_of_n: expected an integer in 1..1024"),
    ("guidance_scale", math.nan, "guidance_scale: expected 0 <= value <= 100"),
    ("lagrange_multiplier", math.inf, "lagrange_multiplier: expected a finite number"),
    ("fallback", "1,2,3", "fallback: expected 2 numbers, got 3"),
    ("fallback", "5,0", r"fallback: \[5.0, 0.0\] is outside the action bounds"),
    ("fallback", "brake", "fallback: expected 'zero', 'hold-last' or 2 comma-separated numbers"),
    ("speed", 1.0, "speed: unknown parameter"),
])
def test_bad_parameter_values_are_rejected_with_the_reason(core, name, value, pattern):
    before = dict(vars(core.params))
    reason = core.set_param(name, value)
    assert reason is not None
    assert re.search(pattern, reason), reason
    assert vars(core.params) == before  # nothing changed


def test_live_mode_and_shield_updates_change_the_action(core):
    core.on_observation(OBS, 1, received_at=0.0)
    det = core.tick(0.001).action
    assert core.set_param("mode", "best_of_n") is None and core.set_param("best_of_n", 8) is None
    assert core.set_param("remaining_budget", 1.0) is None
    shielded = core.tick(0.002)
    assert shielded.source == "policy" and not np.array_equal(shielded.action, det)


def test_overruns_are_counted(core):
    core.on_observation(OBS, 1, received_at=0.0)
    d = core.tick(0.0)
    core.handed_over(d, 0.01, work_s=0.01)  # 10 ms of work at 500 Hz (2 ms period)
    assert core.overruns == 1 and core.stats()["latency_p99_ms"] == pytest.approx(10.0)


def test_constructor_rejects_bad_params(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    with pytest.raises(ValueError, match="control_rate_hz"):
        ControllerCore(rt, ControllerParams(control_rate_hz=-5))
    assert check_param("remaining_budget", math.inf, rt.act_low, rt.act_high) is None


def test_only_policy_answers_count_towards_latency(core):
    core.on_observation(OBS, 1, received_at=0.0)
    core.estop = True
    d = core.tick(5.0)  # an e-stopped fallback, seconds after the observation arrived
    core.handed_over(d, 5.0, work_s=0.0)
    assert d.source == "fallback" and core.stats()["latency_p50_ms"] != core.stats()["latency_p50_ms"]  # NaN: none
    core.estop = False
    core.on_observation(OBS, 2, received_at=6.0)
    core.handed_over(core.tick(6.0), 6.001, work_s=0.0)
    assert core.stats()["latency_p99_ms"] == pytest.approx(1.0)
