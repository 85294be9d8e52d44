"""The budget monitor's decisions, driven directly (no ROS)."""

import math

import pytest

from algd_runtime.deploy.monitor import BudgetMonitor, Level, MonitorConfig


def levels(mon):
    return [(t.old, t.new) for t in mon.transitions]


def test_rising_cost_escalates_ok_warn_error_stop_in_order_with_numbers():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0, warn_at=0.5, error_at=0.8, stop_at=1.0, stop_on="forecast"))
    seen = []
    for _ in range(12):
        for t in mon.update(1.0):
            seen.append((t.step, t.new, t.accumulated))
    assert seen == [(5, "WARN", 5.0), (8, "ERROR", 8.0), (10, "STOP", 10.0)]
    stop = mon.transitions[-1]
    assert stop.limit == 10.0 and stop.ratio == pytest.approx(1.0) and "forecast/limit 1.000 >= 1" in stop.reason


def test_forecast_includes_the_critics_prediction():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0))
    out = mon.update(1.0, predicted_cost_to_go=4.5)  # 1 + 4.5 = 5.5 -> WARN at once
    assert [t.new for t in out] == ["WARN"] and mon.forecast == pytest.approx(5.5)
    assert out[0].predicted == pytest.approx(4.5)


def test_a_jump_passes_through_every_level_in_one_update():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0, stop_on="forecast"))
    out = mon.update(0.0, predicted_cost_to_go=50.0)
    assert [(t.old, t.new) for t in out] == [("OK", "WARN"), ("WARN", "ERROR"), ("ERROR", "STOP")]


def test_budget_stop_ignores_the_forecast_but_stops_before_overspending():
    mon = BudgetMonitor(MonitorConfig(cost_limit=5.0))  # stop_on="budget"
    mon.update(0.0, predicted_cost_to_go=50.0)  # a wild forecast: shield, but no e-stop
    assert mon.level == Level.ERROR
    for _ in range(3):
        mon.update(1.0)
    assert mon.level == Level.ERROR  # 3 + largest step 1 = 4: one more step still fits
    mon.update(1.0)  # 4 + 1 = 5: the next costly step would reach the limit, not exceed it
    assert mon.level == Level.ERROR
    out = mon.update(0.5)  # 4.5 + 1 > 5: one more such step would overspend
    assert [t.new for t in out] == ["STOP"] and "budget nearly spent (4.5 + step-cost margin 1 > 5)" in out[0].reason
    assert mon.accumulated <= 5.0


def test_stop_latch_episode_clears_stop_when_the_episode_ends():
    mon = BudgetMonitor(MonitorConfig(cost_limit=2.0, stop_latch="episode"))
    mon.update(1.5)
    mon.update(1.0)
    assert mon.level == Level.STOP
    mon.update(0.0)
    assert mon.level == Level.STOP  # latched for the rest of the episode
    out = mon.end_episode()
    assert [(t.old, t.new) for t in out] == [("STOP", "OK")] and mon.accumulated == 0.0


def test_budget_stop_on_a_spent_budget_in_one_jump():
    mon = BudgetMonitor(MonitorConfig(cost_limit=5.0))
    out = mon.update(7.0, count=2)  # two steps reported together
    assert [t.new for t in out] == ["WARN", "ERROR", "STOP"] and "budget spent (7 >= 5)" in out[-1].reason


def test_a_step_that_costs_more_than_the_budget_latches_a_stop_no_episode_end_clears():
    """Without a bound the margin is the largest step cost reported: above the budget, no
    episode could ever move. That hold says why and waits for the operator (issue 19)."""
    mon = BudgetMonitor(MonitorConfig(cost_limit=5.0, stop_latch="episode"))
    out = mon.update(7.0)
    assert out[-1].new == "STOP" and "step-cost margin 7 (1 steps ahead x step cost 7) > budget 5" in out[-1].reason
    assert mon.end_episode() == [] and mon.level == Level.STOP
    assert [t.new for t in mon.reset_stop()] == ["OK"]


def test_stop_is_latched_until_reset():
    mon = BudgetMonitor(MonitorConfig(cost_limit=2.0))
    mon.update(3.0)
    assert mon.level == Level.STOP
    for _ in range(100):
        mon.update(0.0)
    assert mon.end_episode() == [] and mon.level == Level.STOP
    out = mon.reset_stop()
    assert [t.new for t in out] == ["OK"] and mon.accumulated == 0.0 and mon.level == Level.OK
    assert mon.reset_stop() == []


def test_hysteresis_needs_calm_steps_below_threshold_minus_margin():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0, warn_at=0.5, error_at=0.8, hysteresis=0.1, clear_steps=3))
    mon.update(0.0, 6.0)  # forecast 6 / 10 -> WARN
    assert mon.level == Level.WARN
    for _ in range(10):
        mon.update(0.0, 4.5)  # 0.45: under warn_at but inside the margin -> stays WARN
    assert mon.level == Level.WARN
    mon.update(0.0, 3.0)
    mon.update(0.0, 3.0)
    mon.update(0.0, 4.5)  # the calm streak is broken
    mon.update(0.0, 3.0)
    mon.update(0.0, 3.0)
    assert mon.level == Level.WARN
    mon.update(0.0, 3.0)  # third calm update in a row -> one level down
    assert mon.level == Level.OK
    assert levels(mon)[-1] == ("WARN", "OK") and "for 3 steps" in mon.transitions[-1].reason


def test_window_accounting_forgets_old_cost():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0, accounting="window", window_steps=5))
    for _ in range(5):
        mon.update(1.0)
    assert mon.accumulated == 5.0
    mon.end_episode()  # a continuing task: episode events do not clear the window
    assert mon.accumulated == 5.0
    for _ in range(5):
        mon.update(0.0)
    assert mon.accumulated == 0.0


def test_episode_end_resets_accounting_and_level_below_stop():
    mon = BudgetMonitor(MonitorConfig(cost_limit=10.0))
    for _ in range(6):
        mon.update(1.0)
    assert mon.level == Level.WARN
    out = mon.end_episode()
    assert [t.new for t in out] == ["OK"] and mon.accumulated == 0.0 and mon.episode == 1


def test_nan_cost_counts_as_worst_case_and_nan_prediction_as_none():
    mon = BudgetMonitor(MonitorConfig(cost_limit=4.0))
    mon.update(math.nan)
    assert mon.level == Level.STOP
    mon2 = BudgetMonitor(MonitorConfig(cost_limit=4.0))
    mon2.update(1.0, predicted_cost_to_go=math.nan)
    assert mon2.forecast == 1.0


@pytest.mark.parametrize("kw, pattern", [
    (dict(cost_limit=0.0), "cost_limit: expected a finite value > 0"),
    (dict(cost_limit=1.0, accounting="daily"), "accounting: expected 'episode' or 'window'"),
    (dict(cost_limit=1.0, warn_at=0.9, error_at=0.8), "thresholds: expected 0 < warn_at < error_at < stop_at"),
    (dict(cost_limit=1.0, hysteresis=0.6), "hysteresis: expected 0 <= hysteresis < warn_at"),
    (dict(cost_limit=1.0, stop_on="soon"), "stop_on: expected 'budget' or 'forecast'"),
    (dict(cost_limit=1.0, stop_latch="never"), "stop_latch: expected 'operator' or 'episode'"),
    (dict(cost_limit=1.0, stop_latch="episode", accounting="window"), "stop_latch: 'episode' needs accounting"),
])
def test_bad_config_names_the_field(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        MonitorConfig(**kw)


def test_each_level_asks_the_controller_for_one_response():
    """One rule (monitor.level_response) for the node's heartbeat and the benches."""
    from algd_runtime.deploy.monitor import ESCALATION, level_response
    from algd_runtime.ros.launcher import shipped_param

    assert {k: shipped_param("monitor", k, None) for k in ESCALATION} == ESCALATION  # the file ships the defaults
    assert level_response(Level.OK, 0.7, ESCALATION, 3.0) == {} == level_response(Level.STOP, 0.7, ESCALATION, 3.0)
    assert level_response(Level.WARN, 0.7, ESCALATION, 3.0) == {"lagrange_multiplier": 1.4, "guidance_scale": 1.0}
    # With the bundle's exchange rate: 4 x it where that is more than the own lambda x 2.
    assert level_response(Level.WARN, 1e-8, ESCALATION, 3.0, exchange_rate=2.5)["lagrange_multiplier"] == 10.0
    assert level_response(Level.WARN, 9.0, ESCALATION, 3.0, exchange_rate=2.5)["lagrange_multiplier"] == 18.0
    assert level_response(Level.WARN, 1e-8, ESCALATION, 3.0, exchange_rate=40.0)["lagrange_multiplier"] == 100.0
    off = dict(ESCALATION, warn_rate_factor=0.0)  # 0: the own lambda's rule alone
    assert level_response(Level.WARN, 0.7, off, 3.0, exchange_rate=2.5)["lagrange_multiplier"] == 1.4
    assert level_response(Level.WARN, 80.0, ESCALATION, 3.0)["lagrange_multiplier"] == 100.0  # lambda_max
    assert level_response(Level.WARN, 0.0, ESCALATION, 3.0)["lagrange_multiplier"] == 2e-3  # a lambda of 0 still rises
    assert level_response(Level.ERROR, 0.7, ESCALATION, -1.0) == {"mode": "best_of_n", "best_of_n": 16,
                                                                  "remaining_budget": 0.0}
