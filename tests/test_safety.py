"""The safety core (algd_runtime/deploy/safety.py) in plain Python: the budget rule and account,
the latch and its file, keys, heartbeats, and the operator's reset."""

import json
import math
import os

import numpy as np
import pytest

from algd_runtime.contract.budget import Budget, budget_verdict, lease_steps
from algd_runtime.contract.keys import OperatorKeyError, create_key, load_key
from algd_runtime.deploy.safety import (
    BudgetAccount,
    HeartbeatWatch,
    Latch,
    LatchStore,
    ResetAuthority,
    SafetyGate,
    SecondCommander,
    parse_safe_action,
    read_heartbeat,
    reset_proof,
    sign_heartbeat,
)

KEY, NS = bytes(range(32)), "/algd"


def beat(seq, boot="b1", level="OK", **kw):
    return sign_heartbeat(KEY, NS, {"boot": boot, "seq": seq, "level": level, "latched": level == "STOP", **kw})


@pytest.mark.parametrize("rate, deadline, cap", [(500.0, 0.25, 125), (100.0, 0.25, 25), (1000.0, 0.05, 50),
                                                  (10.0, 0.05, 1), (5000.0, 1.0, 1000)])
def test_no_lease_outlasts_the_silent_monitor_deadline(rate, deadline, cap):
    from algd_runtime.contract.budget import lease_cap

    assert lease_cap(rate, deadline) == cap
    assert cap == 1 or cap / rate <= deadline  # a blocked controller's robot stops by then


def test_a_lease_cap_from_a_bad_rate_names_both_values():
    from algd_runtime.contract.budget import lease_cap

    with pytest.raises(ValueError, match="rate and deadline: expected > 0, got 0.0 Hz, 0.25 s"):
        lease_cap(0.0, 0.25)


@pytest.mark.parametrize("acc, margin, limit, stop, lease", [
    (0.0, 1.0, 5.0, None, 5), (4.0, 1.0, 5.0, None, 1), (4.5, 1.0, 5.0, "nearly spent", 0),
    (5.0, 0.0, 5.0, "spent", 0), (0.0, 0.0, 5.0, None, 1000), (2.0, 0.4, 5.0, None, 7),
])
def test_the_budget_rule_and_the_lease(acc, margin, limit, stop, lease):
    v = budget_verdict(acc, margin, limit)
    assert (v is None) if stop is None else (stop in v)
    assert lease_steps(acc, margin, limit) == lease
    # the lease never allows a worst-case overspend
    assert acc + lease * margin <= limit or margin == 0


def test_account_repeats_gaps_unknown_costs_and_episodes():
    a = BudgetAccount(Budget(5.0, step_bound=2.0))
    a.record(0, 0, 0.0)
    a.record(0, 1, 1.0)
    a.record(0, 1, 1.0)  # a repeat is not counted twice
    assert a.accumulated == 1.0 and a.margin == 2.0
    a.record(0, 3, 0.0)  # step 2 missing: worst case 2
    assert a.accumulated == 3.0 and a.missed == 1
    assert a.verdict() is None and a.lease() == 1
    a.record(0, 4, 0.5)
    assert "nearly spent" in a.verdict() and a.lease() == 0
    a.record(1, 0, 0.0)
    assert a.accumulated == 0.0 and a.verdict() is None and a.lease() == 2
    a.record(1, 1, math.nan)  # unreadable: worst case
    assert a.accumulated == 2.0


def test_without_a_bound_a_gap_spends_the_budget_and_the_margin_is_the_largest_seen():
    a = BudgetAccount(Budget(5.0))
    a.record(0, 1, 0.5)
    assert a.margin == 0.5 and a.lease() == 9
    a.record(0, 3, 0.0)
    assert "spent" in a.verdict()
    a.record(1, 4, 0.0)  # joined an episode late: steps 1..3 unknown
    assert "spent" in a.verdict()


def test_account_refuses_bad_limits():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="cost_limit: expected a finite value > 0"):
            Budget(bad)
    with pytest.raises(ValueError, match="max_step_cost"):
        Budget(5.0, step_bound=-1.0)
    with pytest.raises(ValueError, match=r"steps_ahead: expected an integer >= 1, got 0"):
        Budget(5.0, steps_ahead=0)


def test_latch_and_its_file_survive_and_an_unreadable_file_means_latched(tmp_path):
    latch = Latch()
    assert latch.trip("monitor_lost", "no heartbeat") and not latch.trip("monitor_lost", "again")
    store = LatchStore(tmp_path / "state.json")
    assert store.load() == {}
    store.save(latch.reasons)
    assert LatchStore(tmp_path / "state.json").load() == {"monitor_lost": "no heartbeat"}
    (tmp_path / "state.json").write_text("{torn")
    assert "unreadable" in store.load()["state_file"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_latch_store_writes_only_what_changes_the_file(tmp_path, monkeypatch):
    """The monitor saves "no latch" at every episode's end; each write is two fsyncs on the
    control path, so a write that changes nothing must not happen."""
    import algd_runtime.contract.atomic as atomic

    writes = []
    real = atomic.atomic_write
    monkeypatch.setattr(atomic, "atomic_write", lambda path, mode="wb": writes.append(path) or real(path, mode))
    path = tmp_path / "state.json"
    store = LatchStore(path)
    assert store.load() == {}
    store.save({})  # no file yet: written
    store.save({})
    assert len(writes) == 1
    store.save({"monitor": "budget spent"})
    store.save({"monitor": "budget spent"})
    assert len(writes) == 2 and LatchStore(path).load() == {"monitor": "budget spent"}
    path.write_text("{torn")  # edited behind its back: a load reads the file again, a save rewrites it
    assert "unreadable" in store.load()["state_file"]
    store.save({"monitor": "budget spent"})
    assert len(writes) == 3 and LatchStore(path).load() == {"monitor": "budget spent"}
    path.unlink()
    store.save({"monitor": "budget spent"})
    assert len(writes) == 4 and path.exists()


def test_keys_are_created_private_never_overwritten_and_refused_when_readable_by_others(tmp_path):
    path = create_key(tmp_path / "k" / "operator.key")
    assert os.stat(path).st_mode & 0o777 == 0o600 and len(load_key(path)) == 32
    with pytest.raises(FileExistsError):
        create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(OperatorKeyError, match="readable by others"):
        load_key(path)
    with pytest.raises(OperatorKeyError, match="does not exist; create one with `algd-reset --init-key"):
        load_key(tmp_path / "missing.key")


def test_heartbeats_verify_and_forgeries_are_refused():
    assert read_heartbeat(KEY, NS, beat(1))["seq"] == 1
    forged = json.loads(beat(1))
    forged["body"] = forged["body"].replace('"STOP"', '"OK"').replace('"seq":1', '"seq":99')
    for bad in (json.dumps(forged), "hello", json.dumps({"body": "{}", "mac": "00"})):
        with pytest.raises(ValueError):
            read_heartbeat(KEY, NS, bad)
    with pytest.raises(ValueError, match="MAC does not verify"):
        read_heartbeat(KEY, "/other", beat(1))  # a heartbeat is bound to its namespace


def test_watch_no_motion_before_a_heartbeat_lost_restarted_replayed_and_lagging():
    latch = Latch()
    w = HeartbeatWatch(KEY, NS, deadline_s=0.05, max_lag_s=0.1)
    assert w.check(0.0, latch) == "no heartbeat from the monitor yet" and not latch.latched
    w.on_message(beat(1), 0.0, latch)
    assert w.check(0.04, latch) is None
    w.on_message(beat(1), 0.045, latch)  # a replay: ignored, counted
    assert w.rejected == 1 and "replayed" in w.last_rejection
    assert "monitor_lost" in latch.reasons or w.check(0.06, latch) and "monitor_lost" in latch.reasons
    latch.clear()
    w.on_message(beat(1, boot="b2"), 0.07, latch)  # a new process
    assert "monitor_restarted" in latch.reasons
    latch.clear()
    w.on_message(beat(2, boot="b2", seen_stamp_ns=100), 0.08, latch)
    w.on_robot_step(200, 0.08)  # a step the monitor has not shown yet
    assert w.check(0.1, latch) is None
    w.on_message(beat(3, boot="b2", seen_stamp_ns=100), 0.19, latch)
    assert "monitor_lagging" in w.check(0.19, latch)
    latch.clear()
    w.on_message(beat(4, boot="b2", seen_stamp_ns=200), 0.2, latch)
    assert w.check(0.2, latch) is None
    w.on_message(beat(5, boot="b2", seen_stamp_ns=200, sees_robot=False), 0.21, latch)  # a monitor blind to steps
    assert "does not see the robot" in w.check(0.21, latch) and not latch.latched


def test_operator_reset_accepts_a_fresh_proof_once_and_nothing_else():
    auth = ResetAuthority(KEY, "/algd/monitor", ttl_s=10)
    nonce = auth.challenge(0.0)
    assert "wrong operator key" in auth.verify(nonce, reset_proof(b"x" * 32, "/algd/monitor", nonce), 1.0)
    assert "wrong operator key" in auth.verify(nonce, reset_proof(KEY, "/algd/controller", nonce), 1.0)
    assert auth.verify(nonce, reset_proof(KEY, "/algd/monitor", nonce), 1.0) is None
    assert "unknown, used or expired" in auth.verify(nonce, reset_proof(KEY, "/algd/monitor", nonce), 1.0)
    late = auth.challenge(2.0)
    assert "expired" in auth.verify(late, reset_proof(KEY, "/algd/monitor", late), 13.0)
    assert "unknown" in auth.verify("00" * 16, reset_proof(KEY, "/algd/monitor", "00" * 16), 13.0)


def test_gate_operator_latch_holds_a_spent_budget_until_reset_episode_latch_until_the_next_episode():
    for stop_latch, moves_next_episode in (("operator", False), ("episode", True)):
        gate = SafetyGate(BudgetAccount(Budget(2.0, 1.0)), None, stop_latch)
        gate.on_transition(0, 1, 1.0, 0, 0.0)
        assert gate.verdict(0.0).lease == 1
        gate.on_transition(0, 2, 1.0, 0, 0.0)
        assert gate.verdict(0.0).stop
        gate.on_transition(1, 0, 0.0, 0, 0.0)
        assert (gate.verdict(0.0).stop is None) == moves_next_episode
        gate.reset()
        assert gate.verdict(0.0).stop is None


def test_gate_start_up_hold_stops_until_its_time_without_latching():
    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0)), None, "operator")
    gate.hold_for(10.0, 1.0, "starting")
    assert gate.verdict(10.5).stop == "starting" and gate.verdict(10.5).lease == 0
    assert gate.verdict(11.01).stop is None and not gate.latch.latched


def test_safe_action_parsing():
    low, high = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)
    assert parse_safe_action("zero", low, high).tolist() == [0.0, 0.0]
    assert parse_safe_action("0.5,-1", low, high).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="safe_action: zero is outside"):
        parse_safe_action("zero", low + 2, high + 2)
    with pytest.raises(ValueError, match="outside the action bounds"):
        parse_safe_action("nan,0", low, high)


def test_a_controller_whose_estop_nobody_hears_holds_the_robot():
    from algd_runtime.contract.budget import Budget
    from algd_runtime.deploy.safety import BudgetAccount, SafetyGate

    gate = SafetyGate(BudgetAccount(Budget(5.0, 0.2, 3)), None, "episode")
    assert gate.verdict(0.0).stop is None and gate.verdict(0.0).lease > 0
    gate.estop_unheard = "the robot does not hear /ns/controller/estop yet"
    v = gate.verdict(0.0)
    assert v.stop == "the robot does not hear /ns/controller/estop yet" and v.lease == 0
    gate.estop_unheard = None
    assert gate.verdict(0.0).stop is None


def test_a_second_commander_is_seen_in_interleaving_sequence_numbers_and_a_restart_is_not():
    one = SecondCommander()
    assert not any(one.see(seq, 0.002 * seq) for seq in range(1, 1000))  # one publisher: numbers only rise
    assert not one.see(1, 2.0) and not any(one.see(seq, 2.0 + 0.002 * seq) for seq in range(2, 500))  # restarted once
    assert not one.see(None, 3.0)  # a middleware without sequence numbers: nothing to see

    two = SecondCommander()
    old, new, tripped = 50_000, 1, []
    for i in range(20):  # the newest command read at each step comes from either publisher
        old, new = old + 1, new + 1
        tripped.append(two.see(old if i % 3 else new, 0.002 * i))
    assert tripped.index(True) == 9 and all(tripped[9:])  # the third step back (steps 3, 6, 9)

    slow = SecondCommander(window_s=1.0)  # three steps back spread over more than the window: restarts
    assert not any(slow.see(seq, t) for t, seq in [(0.0, 10), (0.6, 1), (1.2, 2), (1.8, 1), (2.4, 2), (3.0, 1)])
    two.forget()  # the operator's reset: only what comes next counts
    assert not two.see(old + 1, 0.05) and not two.see(new + 1, 0.06)
