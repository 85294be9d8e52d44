"""Fault injection with real processes: controller, monitor and sim robot as three rclpy
processes over loopback, on PointHazard with hazard_scale 10 (every step costs 1, the budget
is 5, so every episode would overspend without the safety layer). Each test injects one
fault into a moving robot and asserts that no episode went over budget, that the robot was
held for the fault (and stayed held) and that episodes ran before the fault (not vacuous).
run_fault collects every failed expectation in `problems`; the asserts below name the main
ones so that a failure reads as the outcome. The time from fault to safe action is a target
that algd-bench safety reports (BENCHMARKS.md), not asserted here.

The default run has the faults of the issue's table that take a few seconds each; the rest
of the matrix (other control rates, restart, SIGSTOP, late start, duplicates) is marked
slow: `make test-all` or .ci/run."""

from pathlib import Path

import pytest

from algd_runtime.tools.faults import run_fault

IO = Path(__file__).resolve().parents[1] / "config" / "io"


def run(fault, bundle, tmp_path, rate=500.0, seconds=4.0, io=None):
    r = run_fault(fault, rate, seconds, bundle, tmp_path / fault, io=IO / f"{io}.yaml" if io else None)
    assert r["episodes"] > 0, r["problems"]
    # Without a lease an episode may go over only where the nodes measured the stall that caused
    # it (the margin grew to cover it, and they hold the robot to it): SAFETY.md. With one, never.
    unmeasured = r["over_budget"] - r["over_budget_explained"]
    assert unmeasured == 0, f"{r['over_budget']} episodes over budget: max cost {r['max_cost']} ({r['problems']})"
    if not r["over_budget_explained"]:
        assert r["max_cost"] <= r["limit"] + 1e-9  # costs of 0.2 a step add up with rounding
    assert r["ok"], "\n".join(r["problems"])
    return r


def held_for_every_injection(r):
    assert r["injections"], "no fault was injected"
    for inj in r["injections"]:
        assert inj["episodes_before"] >= 1, "no episode before the fault: vacuous"
        assert inj["steps_late"] == 0, inj  # no step after the fault's deadline (and a lease-less margin)


def test_without_a_lease_only_an_overspend_the_nodes_measured_or_a_wedged_transport_explains_is_allowed(tmp_path):
    """SAFETY.md: without a lease the budget holds while the nodes run within the measured
    margin and reach the robot. An episode over it passes only where the margin they measured
    in the end covers its overshoot, or where a killed process wedged the robot's shared-memory
    port and the robot's own command timeout ended the episode; with a lease, or on the raw
    contract, none does."""
    import json

    from algd_runtime.tools.faults.graph import Graph, judge_overspend

    def judge(io, steps_ahead, costs, ended_by=None, wedged=False, largest=None):
        from algd_runtime.tools.faults.settings import io_for_rate

        io = io_for_rate(IO / io, 500.0, tmp_path) if io else None  # as a run writes it: configured 21 at 500 Hz
        g = Graph(Path("bundle"), tmp_path, "ns", 500.0, {}, tmp_path / "k", io=io)
        g.procs = {"controller": None, "monitor": None}  # the summaries below stand for their processes
        (tmp_path / "controller.json").write_text(json.dumps({"steps_ahead": 21}))
        monitor = {"steps_ahead": steps_ahead, **({"steps_ahead_largest": largest} if largest else {})}
        (tmp_path / "monitor.json").write_text(json.dumps(monitor))
        return judge_overspend(g, costs, 5.0, ended_by, wedged)[0]

    costs = [1.2, 7.4, 20.0]  # 0.2 a step at 500 Hz: overshoots of 2.4 and 15
    ended = ["estop", "estop", "cmd_timeout"]
    assert judge("vector.yaml", 21, costs) == 0  # the configured margin: nothing was measured
    assert judge("vector.yaml", 40, costs) == 1  # measured 40 x 0.2 = 8 covers 2.4, not 15
    assert judge("vector.yaml", 100, costs) == 2
    # The operator's reset forgot a margin of 100 (it left no episode able to move): the run's
    # record still has it (a chaos soak: a 100-step stall at an operator reset, 20 of 5).
    assert judge("vector.yaml", 21, costs, largest=100) == 2
    assert judge("vector.yaml", 21, [1.2, 5.0]) == 0  # nothing over
    assert judge("vector.yaml", 21, costs, ended, wedged=False) == 0
    assert judge("vector.yaml", 21, costs, ended, wedged=True) == 1  # the command timeout's episode only
    assert judge("twist_stamped.yaml", 100, costs, ended, wedged=True) == 0  # a lease: every overspend fails
    assert judge(None, 100, costs, ended, wedged=True) == 0


def test_the_bench_gives_an_expiring_command_two_periods_and_at_least_10_ms(tmp_path):
    """A 4 ms lease at 500 Hz expired before a loaded robot read it: no episode ran, and the
    cell proved nothing (BENCHMARKS, tenth session)."""
    import yaml

    from algd_runtime.tools.faults.settings import io_for_rate

    def expiry(rate):
        return yaml.safe_load(io_for_rate(IO / "twist_stamped.yaml", rate, tmp_path).read_text())["action"]["expires_after_s"]

    assert expiry(100.0) == 0.02 and expiry(500.0) == 0.01 and expiry(1000.0) == 0.01
    unleased = yaml.safe_load(io_for_rate(IO / "standard.yaml", 500.0, tmp_path).read_text())
    assert "expires_after_s" not in unleased["action"] and unleased["rate_hz"] == 500.0


def test_a_wedged_transport_is_a_long_silence_of_the_monitor_right_after_a_kill():
    from types import SimpleNamespace

    from algd_runtime.tools.faults.report import transport_wedged

    beats = [(t / 100, "boot-a", 0, "OK", "") for t in range(100)]  # 100 Hz for 1 s
    beats += [(1.8 + t / 100, "boot-a", 0, "OK", "") for t in range(50)]  # silent 0.81 s from 0.99 s
    probe = SimpleNamespace(heartbeats=beats)
    assert transport_wedged(probe, [0.5]) and transport_wedged(probe, [0.95])
    assert not transport_wedged(probe, [2.0])  # no kill before the silence
    assert not transport_wedged(probe, [])
    restarted = [b if b[0] < 1 else (b[0], "boot-b", *b[2:]) for b in beats]  # a new monitor: not a silence
    assert not transport_wedged(SimpleNamespace(heartbeats=restarted), [0.5])


def test_no_fault_every_episode_stops_at_the_budget(vesde_bundle, tmp_path):
    r = run("none", vesde_bundle, tmp_path)
    # Not vacuous (episodes ran), and the layer is what stopped them: the policy overspends on
    # its own. How many episodes a loaded machine runs in 4 s is no part of safety.
    assert r["episodes"] >= 3 and r["max_cost"] == r["limit"]


def test_kill_monitor_holds_the_robot_and_latches(vesde_bundle, tmp_path):
    r = run("kill_monitor", vesde_bundle, tmp_path)
    held_for_every_injection(r)
    assert "monitor_lost" in r["stop_kinds_seen"]


def test_kill_controller_the_robot_holds_on_its_command_timeout(vesde_bundle, tmp_path):
    r = run("kill_controller", vesde_bundle, tmp_path)
    held_for_every_injection(r)


def test_hostile_node_cannot_clear_a_stop_or_move_the_robot(vesde_bundle, tmp_path):
    r = run("hostile", vesde_bundle, tmp_path, seconds=1.0)
    attacks = r["evidence"]["attacks"]
    for phase in ("monitor_stop", "controller_latched"):
        log = attacks[phase]
        assert log["steps_during_attack"] == 0 and log["resets_refused"] > 0, log
        assert all("successful=False" in s for s in log["parameter_sets"]), log["parameter_sets"]
    assert r["evidence"]["operator_reset_restarts_motion"]  # the operator's reset still works


@pytest.mark.slow
@pytest.mark.parametrize("rate", [100.0, 1000.0])
def test_no_fault_at_other_control_rates(vesde_bundle, tmp_path, rate):
    r = run("none", vesde_bundle, tmp_path, rate=rate, seconds=6.0)
    assert r["episodes"] >= 10


@pytest.mark.slow
def test_monitor_started_late_no_step_before_its_first_heartbeat(vesde_bundle, tmp_path):
    r = run("late_monitor", vesde_bundle, tmp_path)
    ev = r["evidence"]
    assert ev["steps_before_monitor_started"] == 0 and ev["steps_before_first_heartbeat"] == 0, ev
    assert r["episodes"] > 0  # and it moves once the monitor runs


@pytest.mark.slow
def test_restarted_monitor_keeps_the_stop_until_the_operator_resets(vesde_bundle, tmp_path):
    r = run("restart_monitor", vesde_bundle, tmp_path, seconds=6.0)
    held_for_every_injection(r)
    assert "monitor_restarted" in r["stop_kinds_seen"]


@pytest.mark.slow
def test_monitor_stopped_for_two_seconds_holds_and_latches(vesde_bundle, tmp_path):
    r = run("sigstop_monitor", vesde_bundle, tmp_path, seconds=6.0)
    held_for_every_injection(r)
    assert "monitor_lost" in r["stop_kinds_seen"]


@pytest.mark.slow
def test_a_second_controller_in_the_namespace_latches_both(vesde_bundle, tmp_path):
    r = run("duplicate_controller", vesde_bundle, tmp_path)
    held_for_every_injection(r)
    assert all("duplicate_controller" in (v or {}) for v in r["latched"].values()), r["latched"]


# -- the io contract: a robot on standard messages (issue 19) ------------------------------------
@pytest.mark.parametrize("io, fault", [("standard", "cost_late"), ("twist_stamped", "kill_monitor")])
def test_io_robot_faults_keep_every_episode_within_the_budget(vesde_bundle, tmp_path, io, fault):
    """Costs after their state (30 %) with no lease; the monitor killed with a lease: the
    controller's own e-stop ends the episode where standing still costs."""
    r = run(fault, vesde_bundle, tmp_path, io=io)
    if fault == "kill_monitor":
        held_for_every_injection(r)


# cost_drop, episode_lost and robot_first are in `algd-bench safety --io` only: they hold the
# robot safely but, in some runs, for good or until the operator's reset (a monitor that stalls
# over 250 ms while it starts beside a running robot latches monitor_lost): BENCHMARKS.md,
# "The io contract", open problems of issue 19.
@pytest.mark.slow
@pytest.mark.parametrize("io", ["standard", "twist_stamped", "trajectory", "vector"])
@pytest.mark.parametrize("fault", ["none", "cost_late", "kill_controller"])
def test_io_fault_matrix_at_500_hz(vesde_bundle, tmp_path, io, fault):
    r = run(fault, vesde_bundle, tmp_path, io=io)
    if fault == "kill_controller":
        held_for_every_injection(r)


# -- the chaos soak (algd-bench chaos), in short ------------------------------------------------
def test_the_soak_traces_each_episode_over_the_budget_to_the_fault_and_reset_before_it():
    from algd_runtime.tools.chaos import trace_overspend

    ends = [(100.5, {"index": 7, "cost": 4.8, "steps": 24}), (103.0, {"index": 8, "cost": 6.2, "steps": 31})]
    logs = {"controller": [(101.5, "STOP: budget"), (102.9, "budget margin: 31 steps"), (103.5, "later")],
            "monitor": [(99.0, "too early")]}
    traced = trace_overspend(5.0, ends, [(90.0, "kill_monitor"), (102.0, "cost_late")], [95.0, 102.5], logs, 90.0)
    assert len(traced) == 1, traced  # 4.8 is within the budget
    t = traced[0]
    assert (t["episode"], t["cost"], t["steps"], t["at_s"]) == (8, 6.2, 31, 13.0)
    assert (t["fault"], t["since_fault_s"], t["since_reset_s"]) == ("cost_late", 1.0, 0.5)
    assert t["log"] == {"controller": ["-1.500 s STOP: budget", "-0.100 s budget margin: 31 steps"]}


@pytest.mark.slow
def test_a_short_chaos_soak_keeps_the_budget_and_loses_no_record(vesde_bundle, tmp_path):
    """Four faults in one running graph on standard messages, each followed by the operator's
    reset: a robot fault switched on and off in the running sim, then the node faults."""
    from algd_runtime.tools.chaos import run_chaos

    r = run_chaos(vesde_bundle, tmp_path / "chaos", minutes=4 * 12 / 60, rate_hz=500.0, io=IO / "standard.yaml",
                  every_s=12.0, faults=["cost_drop", "kill_monitor", "sigstop_monitor", "kill_controller"],
                  echo=lambda line: None)
    assert r["faults"] >= 3 and r["episodes"] > 0, r["problems"]
    assert r["over_budget"] == r["over_budget_explained"] and r["steps_late"] == 0, r["problems"]
    assert r["operator_resets"] >= r["faults"] and r["episode_ends_lost"] == 0 and not r["summaries_missing"]
    assert len(r["overspent"]) == r["over_budget"], r["overspent"]  # each traced
    assert all(v["rss_mb"] for v in r["memory_end"].values()), r["memory_end"]
    assert r["ok"], "\n".join(r["problems"])


@pytest.mark.slow
def test_a_suspended_controller_starts_again_and_the_robot_holds_meanwhile(vesde_bundle, tmp_path):
    """SIGSTOP 2 s: the robot's command timeout holds it; on SIGCONT the controller starts
    again in its own process (ros/suspend.py) and the robot moves again."""
    r = run("sigstop_controller", vesde_bundle, tmp_path, seconds=6.0)
    held_for_every_injection(r)
