"""The controller's decisions, driven directly with a real exported bundle (no ROS)."""

import math
import re

import numpy as np
import pytest

from algd_runtime.deploy.control import LATENCY_WINDOW, ControllerCore, ControllerParams, check_param
from algd_runtime.deploy.runtime import PolicyRuntime
from algd_runtime.contract.budget import Budget
from algd_runtime.deploy.safety import BudgetAccount, HeartbeatWatch, SafetyGate, sign_heartbeat

KEY, NS = b"k" * 32, "/t"


def beat(seq, level="OK", boot="b1", **kw):
    return sign_heartbeat(KEY, NS, {"boot": boot, "seq": seq, "level": level, "latched": level == "STOP", **kw})


def make_core(bundle, watch=True, **params):
    rt = PolicyRuntime.load(bundle, provider="cpu")
    w = HeartbeatWatch(KEY, NS, deadline_s=0.05, max_lag_s=1.0) if watch else None
    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0)), w, stop_latch="episode")
    return ControllerCore(rt, gate, ControllerParams(obs_timeout_s=0.05, **params))


@pytest.fixture
def core(vesde_bundle):
    return make_core(vesde_bundle, watch=False)


OBS = np.full(8, 0.1, np.float32)


def test_fresh_observation_gets_the_policy_action_with_its_stamp_and_lease(core):
    core.on_observation(OBS, stamp=(12, 345), received_at=10.0, meta=(0, 1, 1.0))
    d = core.tick(now=10.001)
    expected = core.runtime.act(OBS).action
    assert d.source == "policy" and d.stamp == (12, 345) and d.stop is None
    assert d.lease == 4  # 1 spent of 5, steps of at most 1
    np.testing.assert_allclose(d.action, expected, atol=1e-6)
    core.handed_over(d, published_at=10.0015, work_s=0.0005)
    assert d.latency_s == pytest.approx(0.0015) and core.overruns == 0


def test_no_or_stale_observation_holds_with_the_safe_action_and_recovers(core):
    assert core.tick(0.0).reason == "no_observation"
    core.on_observation(OBS, 1, received_at=1.0, meta=(0, 0, 0.0))
    assert core.tick(1.02).source == "policy"
    stale = core.tick(1.06)  # 60 ms > 50 ms timeout
    assert stale.source == "hold" and stale.reason == "stale" and np.all(stale.action == 0) and stale.lease > 0
    core.on_observation(OBS, 2, received_at=1.07, meta=(0, 1, 0.0))
    assert core.tick(1.071).source == "policy"
    assert core.fallbacks == {"no_observation": 1, "stale": 1}


def test_nan_observation_gives_the_safe_action_and_is_counted(core):
    bad = OBS.copy()
    bad[2] = math.nan
    core.on_observation(bad, 1, received_at=0.0, meta=(0, 0, 0.0))
    d = core.tick(0.001)
    assert d.source == "hold" and d.reason == "nan" and np.isfinite(d.action).all()
    assert core.stats()["fallback_nan"] == 1


def test_the_budget_stops_before_the_step_that_could_overspend_and_a_new_episode_moves(core):
    for t in range(1, 5):
        core.on_observation(OBS, t, received_at=t, meta=(0, t, 1.0))
        assert core.tick(t + 0.001).source == "policy"
    core.on_observation(OBS, 5, received_at=5.0, meta=(0, 5, 1.0))
    d = core.tick(5.001)
    assert d.stop and "budget spent (5 >= 5)" in d.stop and d.lease == 0 and np.all(d.action == 0)
    core.on_observation(OBS, 6, received_at=6.0, meta=(1, 0, 0.0))  # the robot began the next episode
    assert core.tick(6.001).source == "policy"


def test_a_sequence_gap_counts_as_the_worst_case(core):
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 1, 0.0))
    core.on_observation(OBS, 2, received_at=0.001, meta=(0, 6, 0.0))  # steps 2..5 never arrived
    d = core.tick(0.002)
    assert core.gate.account.missed == 4 and core.gate.account.accumulated == 4  # 4 missing steps at 1 each
    assert d.source == "policy" and d.lease == 1  # one more step fits, not two
    core.on_observation(OBS, 3, received_at=0.003, meta=(0, 8, 0.0))  # and step 7 is missing too
    assert "budget spent (5 >= 5)" in core.tick(0.004).stop


def test_a_safe_action_vector_is_used_for_stops_and_holds(vesde_bundle):
    core = make_core(vesde_bundle, watch=False, safe_action="0.5,-0.25")
    np.testing.assert_array_equal(core.tick(0.0).action, [0.5, -0.25])  # no observation yet
    assert "read-only" in core.set_params({"safe_action": "zero"})


def test_no_heartbeat_no_motion_then_a_lost_monitor_latches(vesde_bundle):
    core = make_core(vesde_bundle, watch=True)
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 0, 0.0))
    d = core.tick(0.001)
    assert d.stop == "no heartbeat from the monitor yet"
    core.gate.watch.on_message(beat(1), 0.002, core.gate.latch)
    core.on_observation(OBS, 2, received_at=0.003, meta=(0, 0, 0.0))
    assert core.tick(0.004).source == "policy"
    core.on_observation(OBS, 3, received_at=0.06, meta=(0, 0, 0.0))
    d = core.tick(0.061)  # 59 ms since the last heartbeat > 50 ms
    assert d.stop and "monitor_lost" in d.stop
    core.gate.watch.on_message(beat(2), 0.062, core.gate.latch)  # it came back: still latched
    assert core.tick(0.063).stop
    core.gate.reset()  # the operator
    assert core.tick(0.064).source == "policy"


def test_a_monitor_at_stop_stops_the_controller(vesde_bundle):
    core = make_core(vesde_bundle, watch=True)
    core.gate.watch.on_message(beat(1, "STOP", reason="budget spent"), 0.0, core.gate.latch)
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 0, 0.0))
    assert "monitor at STOP: budget spent" in core.tick(0.001).stop


def test_an_observation_without_meta_or_of_the_wrong_size_latches(core):
    core.on_observation(OBS, 1, received_at=0.0, meta=None)
    assert "contract" in core.tick(0.001).stop
    core.gate.reset()
    core.on_observation(np.zeros(5, np.float32), 2, received_at=0.0, meta=(0, 0, 0.0))
    assert "observation has 5 values, the bundle expects 8" in core.tick(0.001).stop


def test_actions_stay_inside_the_bounds(core):
    rng = np.random.default_rng(0)
    for i in range(50):
        core.on_observation(rng.normal(0, 5, 8).astype(np.float32), i, received_at=i, meta=(i, 0, 0.0))
        a = core.tick(i + 0.001).action
        assert np.all(a >= core.runtime.act_low) and np.all(a <= core.runtime.act_high)


@pytest.mark.parametrize("name, value, pattern", [
    ("control_rate_hz", 0.0, "control_rate_hz: expected 0 < value <= 10000"),
    ("control_rate_hz", "fast", "control_rate_hz: expected"),
    ("obs_timeout_s", -1.0, "obs_timeout_s: expected 0 < value"),
    ("mode", "greedy", "mode: expected one of"),
    ("best_of_n", 0, "best_of_n: expected an integer in 1..1024"),
    ("guidance_scale", math.nan, "guidance_scale: expected 0 <= value <= 100"),
    ("lagrange_multiplier", math.inf, "lagrange_multiplier: expected a finite number"),
    ("remaining_budget", -math.inf, "remaining_budget: expected a number >= 0"),
    ("remaining_budget", math.nan, "remaining_budget: expected a number >= 0"),
    ("safe_action", "zero", "safe_action: read-only"),
    ("speed", 1.0, "speed: unknown parameter"),
])
def test_bad_parameter_values_are_rejected_with_the_reason(core, name, value, pattern):
    before = dict(vars(core.params))
    reason = core.set_params({name: value})
    assert reason is not None
    assert re.search(pattern, reason), reason
    assert vars(core.params) == before  # nothing changed


def test_a_multi_parameter_set_is_all_or_nothing(core):
    before = dict(vars(core.params))
    assert "best_of_n" in core.set_params({"mode": "best_of_n", "best_of_n": 0})
    assert vars(core.params) == before
    assert core.set_params({"mode": "best_of_n", "best_of_n": 8}) is None
    assert core.params.mode == "best_of_n" and core.params.best_of_n == 8


@pytest.mark.parametrize("value, pattern", [
    ("1,2,3", "safe_action: expected 2 numbers, got 3"),
    ("5,0", r"safe_action: \[5.0, 0.0\] is outside the action bounds"),
    ("brake", "safe_action: expected 'zero' or 2 comma-separated numbers"),
])
def test_bad_safe_actions_are_refused_at_start(vesde_bundle, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_core(vesde_bundle, safe_action=value)


def test_live_mode_and_shield_updates_change_the_action(core):
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 0, 0.0))
    det = core.tick(0.001).action
    assert core.set_params({"mode": "best_of_n", "best_of_n": 8, "remaining_budget": 1.0}) is None
    shielded = core.tick(0.002)
    assert shielded.source == "policy" and not np.array_equal(shielded.action, det)


def test_overruns_are_counted(core):
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 0, 0.0))
    d = core.tick(0.0)
    core.handed_over(d, 0.01, work_s=0.01)  # 10 ms of work at 500 Hz (2 ms period)
    assert core.overruns == 1 and core.stats()["latency_p99_ms"] == pytest.approx(10.0)


def test_constructor_rejects_bad_params(vesde_bundle):
    with pytest.raises(ValueError, match="control_rate_hz"):
        make_core(vesde_bundle, control_rate_hz=-5)
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    assert check_param("remaining_budget", math.inf, rt.act_low, rt.act_high) is None


def test_only_policy_answers_count_towards_latency(core):
    core.on_observation(OBS, 1, received_at=0.0, meta=(0, 0, 0.0))
    d = core.tick(5.0)  # stale, seconds after the observation arrived
    core.handed_over(d, 5.0, work_s=0.0)
    assert d.source == "hold" and core.stats()["latency_p50_ms"] != core.stats()["latency_p50_ms"]  # NaN: none
    core.on_observation(OBS, 2, received_at=6.0, meta=(0, 1, 0.0))
    core.handed_over(core.tick(6.0), 6.001, work_s=0.0)
    assert core.stats()["latency_p99_ms"] == pytest.approx(1.0)
    # A periodic report reads only what is new; the window keeps the newest 10 000.
    seen = core.latency_count
    assert math.isnan(core.stats(since=seen)["latency_p50_ms"])
    for i in range(LATENCY_WINDOW + 5):
        core.on_observation(OBS, 3 + i, received_at=7.0 + i, meta=(0, 2 + i, 0.0))
        core.handed_over(core.tick(7.0 + i), 7.0 + i + (0.002 if i >= LATENCY_WINDOW else 0.0005), work_s=0.0)
    assert core.stats(since=core.latency_count - 5)["latency_p50_ms"] == pytest.approx(2.0)
    assert core.latencies().size == LATENCY_WINDOW and core.stats()["latency_p50_ms"] == pytest.approx(0.5)


def test_the_monitors_response_applies_while_it_asks_and_bad_values_are_ignored(vesde_bundle):
    core = make_core(vesde_bundle)
    core.gate.watch.on_message(beat(1, "ERROR", response={"mode": "best_of_n", "best_of_n": 4,
                                                          "remaining_budget": 1.5, "guidance_scale": -3.0,
                                                          "safe_action": "1,1"}), 0.0, core.gate.latch)
    p = core.effective_params()
    assert (p.mode, p.best_of_n, p.remaining_budget) == ("best_of_n", 4, 1.5)
    assert p.guidance_scale == 0.0 and p.safe_action == "zero"  # out of range / not the monitor's to set
    assert core.params.mode == "deterministic"  # the node's own parameters are untouched
    core.gate.watch.on_message(beat(2, "OK"), 0.01, core.gate.latch)
    assert core.effective_params().mode == "deterministic"
    core.set_params({"guidance_scale": 0.5})
    assert core.effective_params().guidance_scale == 0.5
