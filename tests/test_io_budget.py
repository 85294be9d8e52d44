"""The budget on standard messages (issue 19), in plain Python: costs matched to steps by
time (CostMatcher), one budget for both channels (Budget), no ratchet, no silent stall.

Each `replay` feeds a CostMatcher and the controller's SafetyGate, and a BudgetMonitor, the
events a robot's messages make, in the order they arrive. The first tests are the rows of
the issue that failed with the old rule (each step charged the costs that arrived since the
previous state, a silent step the worst case at once)."""

import math

import pytest

from algd_runtime.deploy.monitor import BudgetMonitor, MonitorConfig
from algd_runtime.contract.budget import Budget, resolve_budget
from algd_runtime.deploy.safety import BudgetAccount, CostMatcher, HeartbeatWatch, SafetyGate, sign_heartbeat

KEY, NS = bytes(range(32)), "/algd"
PERIOD = 0.002  # 500 Hz


def replay(events, budget=Budget(5.0, 1.0, steps_ahead=3), stop_latch="episode", wait_s=None):
    """events: ("cost", value[, stamp]), ("state"[, stamp]), ("episode",), ("tick",), each
    one PERIOD / 4 after the last. Returns (gate, matcher, monitor)."""
    stamped = any(ev[0] == "cost" and len(ev) > 2 for ev in events)
    matcher, gate = CostMatcher(stamped, wait_s), SafetyGate(BudgetAccount(budget), None, stop_latch)
    monitor = BudgetMonitor(MonitorConfig(budget.limit, max_step_cost=budget.step_bound,
                                          steps_ahead=budget.steps_ahead, stop_latch=stop_latch))
    mon_matcher = CostMatcher(stamped, wait_s)
    now = 0.0
    for ev in events:
        now += PERIOD / 4
        kind, args = ev[0], ev[1:]
        if kind == "cost":
            got = [m.on_cost(args[0], args[1] if len(args) > 1 else None, now) for m in (matcher, mon_matcher)]
        elif kind == "state":
            got = [m.on_state(args[0] if args else None, now) for m in (matcher, mon_matcher)]
        elif kind == "episode":
            got = [m.on_episode(now) for m in (matcher, mon_matcher)]
            monitor.end_episode()
        else:
            got = [m.expire(now) for m in (matcher, mon_matcher)]
        gate.on_charges(got[0], matcher.waiting)
        for c in got[1]:
            if c.t > 0:
                monitor.update(c.cost, reported=c.reported, extra=c.extra)
    return gate, matcher, monitor


def steps(costs, late=(), stamped=False, first=0):
    """A robot's messages for one episode: the first state, then cost and state per step;
    the steps in `late` send their cost after their state (as DDS may deliver them)."""
    stamp = (lambda t: 1_000 + first + t) if stamped else (lambda t: None)
    out = [("state", stamp(0)) if stamped else ("state",)]
    for t, c in enumerate(costs, start=1):
        cost = ("cost", c, stamp(t)) if stamped else ("cost", c)
        state = ("state", stamp(t)) if stamped else ("state",)
        out += [state, cost] if t in late else [cost, state]
    return out


# -- the rows of the issue, reproduced --------------------------------------------------------
def test_a_cost_that_arrives_after_its_state_is_not_charged_twice_and_never_ratchets_the_margin():
    """Issue 19, "why it stalls": one step charged twice made the margin 6 (then 9 .. 33),
    and with a budget of 5 the robot never moved again."""
    events = steps([0.0] * 5, late={2, 4})
    gate, matcher, monitor = replay(events)
    account = gate.account
    assert account.accumulated == 0.0 and account.worst_seen == 0.0 and account.margin == 3.0
    assert matcher.reordered == 2 and matcher.uncosted == 0
    assert gate.verdict(1.0).stop is None and monitor.accumulated == 0.0 and monitor.margin == 3.0


def test_the_old_rule_is_what_ratcheted():
    """The same messages under the old rule (the costs since the previous state, a silent
    step the worst case at once) charge 1 + 2: the margin it took from that sum was 6."""
    charged, pending = [], []
    for ev in steps([1.0] * 3, late={2})[1:]:
        if ev[0] == "cost":
            pending.append(ev[1])
        else:
            charged.append(sum(pending) if pending else math.nan)
            pending.clear()
    assert math.isnan(charged[1]) and charged[2] == 2.0  # the sum that raised worst_seen to 2
    gate, _, _ = replay(steps([1.0] * 3, late={2}), budget=Budget(10.0, None, 3))
    assert gate.account.worst_seen == 1.0 and gate.account.accumulated == 3.0  # no bound: only real reports


def test_a_cost_that_never_comes_is_the_worst_case_after_one_period_and_leaves_the_margin_alone():
    events = steps([0.25]) + [("state",)] + [("tick",)] * 5  # step 2's cost is lost
    gate, matcher, monitor = replay(events, budget=Budget(5.0, 1.0, 2), wait_s=PERIOD)
    assert matcher.uncosted == 1 and gate.account.accumulated == 1.25 and gate.account.margin == 2.0
    assert monitor.accumulated == 1.25 and monitor.worst_step == 0.25


def test_while_a_step_waits_for_its_cost_the_verdict_holds_it_at_the_worst_case_without_latching():
    events = steps([1.0, 1.0, 1.0]) + [("state",)]  # step 4 taken, its cost not yet here
    gate, matcher, _ = replay(events, budget=Budget(5.0, 1.0, 2), stop_latch="operator")
    assert matcher.waiting == 1 and gate.account.accumulated == 3.0
    assert "budget nearly spent (4 + step-cost margin 2 > 5)" == gate.verdict(1.0).stop
    assert not gate.latch.latched  # a cost on its way never latches a STOP for the operator
    gate.on_charges(matcher.on_cost(0.0, None, 0.0), matcher.waiting)  # it comes: 0
    assert gate.account.accumulated == 3.0 and gate.verdict(1.0).stop is None


def test_stamped_costs_match_their_states_whatever_the_order():
    events = steps([1.0, 0.0, 1.0, 0.0], late={2, 3}, stamped=True)
    events.insert(3, ("state", 1_001))  # a state re-sent with its stamp while the robot waits
    gate, matcher, monitor = replay(events, budget=Budget(10.0, 1.0, 2))
    assert gate.account.t == 4 and gate.account.accumulated == 2.0 and matcher.reordered == 2
    assert monitor.accumulated == 2.0


def test_a_stamped_cost_of_the_last_episode_that_arrives_after_the_episode_message_stays_there():
    first = steps([1.0, 1.0], stamped=True)
    last_cost = first.pop()  # the last state, and its cost after the new episode began
    last_cost, last_state = first.pop(), last_cost
    events = first + [last_state, ("episode",), last_cost] + steps([0.0], stamped=True, first=100)
    gate, matcher, _ = replay(events, budget=Budget(10.0, 1.0, 2))
    assert (gate.account.episode, gate.account.accumulated) == (1, 0.0)


def test_unstamped_costs_that_race_the_episode_message_are_charged_to_the_new_episode():
    """Without stamps nothing says which episode a cost belongs to: the running one pays."""
    events = steps([1.0]) + [("episode",), ("cost", 1.0)] + steps([0.0])
    gate, _, _ = replay(events, budget=Budget(10.0, 1.0, 2))
    assert (gate.account.episode, gate.account.accumulated) == (1, 1.0)


def test_costs_of_lost_states_are_charged_with_the_next_step_and_do_not_raise_the_margin():
    events = [("state", 1_000), ("cost", 1.0, 1_001), ("cost", 1.0, 1_002), ("state", 1_002)]
    gate, _, monitor = replay(events, budget=Budget(10.0, None, 2))
    assert gate.account.accumulated == 2.0 and gate.account.worst_seen == 1.0
    assert monitor.accumulated == 2.0
    gate, _, _ = replay([("state",), ("cost", 1.0), ("cost", 1.0), ("state",)], budget=Budget(10.0, None, 2))
    assert gate.account.accumulated == 2.0 and gate.account.worst_seen == 0.0  # a sum is no step's report


def test_nothing_is_charged_before_the_robots_first_cost_and_nothing_moves():
    """A robot already running when the nodes start: the states discovery showed before its
    first cost are not its first episode's worst case."""
    matcher, gate = CostMatcher(wait_s=PERIOD), SafetyGate(BudgetAccount(Budget(5.0, 1.0, 2)), None, "episode")
    gate.waiting_for = "no cost message from the robot yet"
    for i in range(50):
        gate.on_charges(matcher.on_state(None, i * PERIOD), matcher.waiting)
    assert gate.account.accumulated == 0.0 and gate.verdict(1.0).stop == "no cost message from the robot yet"
    gate.on_charges(matcher.on_cost(0.0, None, 0.2), matcher.waiting)
    gate.waiting_for = None
    gate.on_charges(matcher.on_state(None, 0.201), matcher.waiting)
    assert gate.account.accumulated == 0.0 and gate.verdict(1.0).stop is None


def test_the_wait_is_one_period_of_the_robot_as_measured():
    matcher = CostMatcher()
    assert matcher.wait_s == 0.01
    for i in range(40):
        matcher.on_state(None, i * PERIOD)
    assert matcher.wait_s == pytest.approx(PERIOD)


# -- no silent stall -------------------------------------------------------------------------
def test_a_margin_no_episode_can_move_under_latches_with_its_numbers():
    gate, _, _ = replay(steps([2.0]), budget=Budget(5.0, None, 3))  # a step reported 2: margin 6 > 5
    assert "budget_margin" in gate.latch.reasons
    assert "step-cost margin 6 (3 steps ahead x step cost 2) > budget 5" in gate.latch.reasons["budget_margin"]
    with pytest.raises(ValueError, match=r"step-cost margin 6 .* > budget 5"):
        raise ValueError(Budget(5.0, 2.0, 3).never_moves(0.0))


# -- one budget, both channels ------------------------------------------------------------------
def test_one_function_makes_the_budget_and_both_channels_share_its_rule():
    manifest = {"cost_limit": 5.0, "max_step_cost": 1.0}
    assert resolve_budget(manifest) == Budget(5.0, 1.0, 1)
    assert resolve_budget(manifest, cost_limit=8.0, max_step_cost=-1.0, steps_ahead=3) == Budget(8.0, 1.0, 3)
    assert resolve_budget({"cost_limit": 5.0}) == Budget(5.0, None, 1)
    with pytest.raises(ValueError, match="cost_limit: expected a value > 0, or a bundle"):
        resolve_budget(None)
    budget = Budget(5.0, 1.0, 3)
    account = BudgetAccount(budget)
    monitor = BudgetMonitor(MonitorConfig(5.0, max_step_cost=1.0, steps_ahead=3))
    assert monitor.cfg.budget == budget and monitor.margin == account.margin == 3.0
    assert budget.digest == Budget(5.0, 1.0, 3).digest != Budget(5.0, 1.0, 2).digest


def test_a_monitor_that_guards_another_budget_latches_the_controller():
    watch = HeartbeatWatch(KEY, NS, 0.25, 0.25, budget=Budget(5.0, 1.0, 3))
    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0, 3)), watch)
    beat = {"boot": "b", "level": "OK", "latched": False, "limit": 50.0}
    watch.on_message(sign_heartbeat(KEY, NS, {**beat, "seq": 1, "budget": Budget(5.0, 1.0, 3).digest}), 0.0, gate.latch)
    assert not gate.latch.latched
    watch.on_message(sign_heartbeat(KEY, NS, {**beat, "seq": 2, "budget": Budget(50.0, 1.0, 3).digest}), 0.01,
                     gate.latch)
    assert "budget_mismatch" in gate.latch.reasons and "limit 50" in gate.latch.reasons["budget_mismatch"]


def test_steps_seen_before_the_monitor_sees_the_robot_are_not_a_lagging_monitor():
    """Issue 19: monitor_lagging latched ~250 ms after start (robot already running)."""
    watch = HeartbeatWatch(KEY, NS, 0.25, 0.25)
    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0)), watch)
    beat = {"boot": "b", "level": "OK", "latched": False}
    now, seq = 0.0, 0
    for i in range(60):  # 300 ms at 200 Hz: the robot steps, the monitor has not discovered it
        now += 0.005
        watch.on_robot_step(int(now * 1e9), now)
        if i % 2 == 0:
            seq += 1
            watch.on_message(sign_heartbeat(KEY, NS, {**beat, "seq": seq, "sees_robot": False,
                                                      "seen_stamp_ns": None}), now, gate.latch)
    assert "monitor_lagging" not in gate.latch.reasons
    assert "does not see the robot" in watch.check(now, gate.latch)
    for _ in range(60):  # now it does, and shows every step
        now += 0.005
        watch.on_robot_step(int(now * 1e9), now)
        seq += 1
        watch.on_message(sign_heartbeat(KEY, NS, {**beat, "seq": seq, "sees_robot": True,
                                                  "seen_stamp_ns": int(now * 1e9)}), now, gate.latch)
    assert watch.check(now, gate.latch) is None and not gate.latch.latched
    for _ in range(60):  # and a monitor that stops showing them is still caught
        now += 0.005
        watch.on_robot_step(int(now * 1e9), now)
        seq += 1
        watch.on_message(sign_heartbeat(KEY, NS, {**beat, "seq": seq, "sees_robot": True,
                                                  "seen_stamp_ns": int(0.3 * 1e9)}), now, gate.latch)
    assert "monitor_lagging" in (watch.check(now, gate.latch) or "")


# -- a measured margin where no lease bounds the robot ---------------------------------------
def test_the_margin_grows_to_the_steps_a_robot_took_after_a_stop_and_never_shrinks():
    """A robot that takes 4 steps after the stop decision before its episode ends (its e-stop
    is slow) overspent with steps_ahead 2; the measured distance makes the next stop earlier."""
    from algd_runtime.deploy.safety import StopDistance

    gate = SafetyGate(BudgetAccount(Budget(10.0, 1.0, 2), distance=StopDistance(2)), None, "episode")
    matcher = CostMatcher(wait_s=PERIOD)
    now = 0.0

    def episode(after_stop):
        nonlocal now
        stopped_at = None
        gate.on_charges(matcher.on_episode(now), 0)
        gate.account.distance.episode_ended()
        gate.on_charges(matcher.on_state(None, now), 0)
        while True:
            now += PERIOD
            if stopped_at is None and gate.verdict(now).stop:
                stopped_at = gate.account.t
            if stopped_at is not None and gate.account.t - stopped_at >= after_stop:
                return gate.account.accumulated
            gate.on_charges(matcher.on_cost(1.0, None, now), 0)
            gate.on_charges(matcher.on_state(None, now), 0)

    gate.on_charges(matcher.on_cost(0.0, None, now), 0)  # arm
    first = episode(after_stop=4)
    assert first == 13.0 and gate.account.steps_ahead == 2  # 9 + 4: over, and nothing measured until it ends
    second = episode(after_stop=4)
    assert gate.account.distance.worst == 4 and gate.account.steps_ahead == 5
    assert second == 10.0  # stopped at 6 (6 + 5 > 10), then 4 more steps: the budget, not over
    third = episode(after_stop=1)  # a quicker stop does not shrink it
    assert gate.account.steps_ahead == 5 and third <= 10.0


def test_costs_that_raced_the_episode_message_count_in_the_distance_and_a_still_robot_does_not():
    from algd_runtime.deploy.safety import StopDistance

    distance = StopDistance(2)
    distance.stop_decided(3)
    for t, cost in ((4, 1.0), (5, 0.0), (6, 0.0), (7, 0.0)):  # one costly step, then held still at no cost
        distance.on_step(t, cost)
    assert not distance.episode_ended() and distance.worst == 1
    matcher = CostMatcher()  # two costs of that episode come after the episode message
    matcher.on_cost(0.0, None, 0.0)
    matcher.on_state(None, 0.0)
    matcher.on_episode(0.01)
    matcher.on_cost(1.0, None, 0.011)
    matcher.on_cost(1.0, None, 0.012)
    (first,) = matcher.on_state(None, 0.013)
    assert first.raced == 2 and first.cost == 2.0  # the running episode pays, and the distance grows
    assert distance.raced(first.raced) and distance.worst == 3 and distance.in_use == 4


def test_a_cost_later_than_one_period_replaces_the_worst_case_it_was_charged():
    """A robot standing still at 500 Hz, its cost 3 ms behind its state: each step is charged
    the worst case after one period, then the cost that comes replaces it. Before, those
    charges added up and spent the budget of a robot that never moved."""
    for stamped in (False, True):
        matcher, gate = CostMatcher(stamped, wait_s=PERIOD), SafetyGate(BudgetAccount(Budget(5.0, 0.2, 2)), None)
        monitor = BudgetMonitor(MonitorConfig(5.0, max_step_cost=0.2, steps_ahead=2))

        def apply(charges):
            gate.on_charges(charges, matcher.waiting)
            for c in charges:
                if c.refund:
                    monitor.refund(c.cost)
                elif c.t > 0:
                    monitor.update(c.cost, reported=c.reported, extra=c.extra)

        apply(matcher.on_cost(0.0, 1 if stamped else None, 0.0))
        apply(matcher.on_state(1 if stamped else None, 0.0))
        for k in range(2, 300):
            now = k * PERIOD
            apply(matcher.on_state(k if stamped else None, now))
            apply(matcher.expire(now + 0.0025))  # a period passes without its cost
            apply(matcher.on_cost(0.0, k if stamped else None, now + 0.003))
        assert matcher.uncosted > 250 and matcher.refunded == matcher.uncosted
        assert gate.account.accumulated == pytest.approx(0.0, abs=1e-9) and not gate.latch.latched
        assert monitor.accumulated == pytest.approx(0.0, abs=1e-9) and monitor.level.name == "OK"


def test_lost_costs_shift_to_later_steps_and_the_account_never_holds_less_than_was_spent():
    matcher, gate = CostMatcher(wait_s=PERIOD), SafetyGate(BudgetAccount(Budget(100.0, 1.0, 2)), None)
    gate.on_charges(matcher.on_cost(0.0, None, 0.0), 0)
    gate.on_charges(matcher.on_state(None, 0.0), 0)
    spent, now = 0.0, 0.0
    for k in range(1, 60):
        now += PERIOD
        spent += 0.5
        if k % 7:  # every seventh cost is lost
            gate.on_charges(matcher.on_cost(0.5, None, now), matcher.waiting)
        gate.on_charges(matcher.on_state(None, now + 0.0001), matcher.waiting)
        gate.on_charges(matcher.expire(now + 1.5 * PERIOD), matcher.waiting)
        assert gate.account.accumulated >= spent - 1e-9, k


def test_a_spent_episode_the_robot_never_ends_latches_with_the_numbers():
    """The cost_drop cell at 100 Hz: a robot held still at its start re-sends its state, one in
    ten of its costs is lost, and the worst-case charges spend the episode before it moves.
    Nothing ends that episode: the hold latches after SPENT_HOLD_LATCH_S with a reason, and
    the operator's reset ends its account."""
    from algd_runtime.deploy.safety import SPENT_HOLD_LATCH_S, Charge

    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0, 2)), None, "episode")
    for t in range(5):  # the first state, then four steps whose cost never came
        gate.on_charges([Charge(0, t, 0.0 if t == 0 else math.nan, t == 0)], 0)
    assert gate.verdict(0.0).stop is not None and not gate.latch.latched
    assert not gate.latch.latched and gate.verdict(SPENT_HOLD_LATCH_S - 0.1).stop is not None
    stop = gate.verdict(SPENT_HOLD_LATCH_S + 0.1).stop
    assert gate.latch.latched and "budget_held: episode 0:" in stop, stop
    assert "4 of its 4 steps were charged the worst case" in stop and "reset starts a new account" in stop
    # The operator's reset ends that account (as the monitor's reset does): the robot moves,
    # and what it spends from there is charged from 0.
    assert "budget_held" in gate.reset()
    assert gate.verdict(SPENT_HOLD_LATCH_S + 0.2).stop is None and gate.account.accumulated == 0.0
    for t in range(5, 10):
        gate.on_charges([Charge(0, t, math.nan, False)], 0)
    assert gate.verdict(10.0).stop is not None and not gate.latch.latched
    # A robot that ends the episode in time: the next one moves, nothing latched.
    gate.on_charges([Charge(1, 0, 0.0)], 0)
    assert gate.verdict(10.0 + SPENT_HOLD_LATCH_S + 1).stop is None and not gate.latch.latched


def test_costs_that_never_came_do_not_stretch_the_measured_stop_distance():
    """The io chaos soak: a held robot whose episode message was lost kept publishing states,
    some of whose costs were lost; counting those unknown costs as motion measured a stop
    5 483 steps long, and budget_margin latched for good. Only reported costs measure it."""
    from algd_runtime.deploy.safety import Charge, StopDistance

    account = BudgetAccount(Budget(50.0, 1.0, 2), distance=StopDistance(2))
    for t in range(4):
        account.charge(Charge(0, t, 0.0))
    account.distance.stop_decided(3)
    account.charge(Charge(0, 4, 1.0))  # the robot costs one more step after the stop
    for t in range(5, 500):  # then stands still; one in ten of its costs is lost
        account.charge(Charge(0, t, math.nan if t % 10 == 0 else 0.0, t % 10 != 0))
    assert account.worst_charged == 49
    account.charge(Charge(0, 10, 1.0, refund=True))  # step 10's cost came late, and it did cost: it counts
    assert account.worst_charged == 48 and account.accumulated == 2.0 + 48 * 1.0
    account.distance.episode_ended()
    assert account.distance.worst == 10 - 3 and account.steps_ahead == 8  # not 499 - 3


def test_the_operators_reset_abandons_the_stop_being_measured():
    """The io soak's episode_lost: the robot's next episode began unannounced while the nodes
    held a spent one; after the operator's reset its motion was measured as the old stop
    (4 050 steps) and budget_margin latched for good. The reset abandons that measurement,
    on the controller (budget_held) and on the monitor alike."""
    from algd_runtime.deploy.safety import SPENT_HOLD_LATCH_S, Charge, StopDistance

    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0, 2), distance=StopDistance(2)), None, "episode")
    for t in range(5):
        gate.on_charges([Charge(0, t, 0.0 if t == 0 else 1.0)], 0)
    assert gate.verdict(0.0).stop  # spent: the stop is decided at step 4
    gate.verdict(SPENT_HOLD_LATCH_S + 1)  # held, the robot never ends the episode: budget_held
    gate.reset()
    for t in range(5, 8):  # the operator lets it move: it costs again
        gate.on_charges([Charge(0, t, 1.0)], 0)
    gate.account.distance.episode_ended()
    assert gate.account.distance.worst <= 0 and gate.account.steps_ahead == 2
    monitor = BudgetMonitor(MonitorConfig(5.0, max_step_cost=1.0, steps_ahead=2, stop_latch="episode"),
                            distance=StopDistance(2))
    for _ in range(6):
        monitor.update(1.0)
    monitor.reset_stop()
    for _ in range(3):
        monitor.update(1.0)
    monitor.end_episode()
    assert monitor.distance.worst <= 0


def test_any_operator_reset_abandons_the_stop_being_measured_on_the_controller():
    """The twelfth session's chaos soak: a budget stop was decided, then the monitor was
    suspended and the controller held the robot 11 s (monitor_lost) in the same episode; after
    the operator's reset the robot moved and cost again, and that motion was measured as the
    old stop: 4 430 steps, budget_margin latched (886 of 5). Only budget_held resets abandoned
    the measurement; now any reset does, as the monitor's always did."""
    from algd_runtime.deploy.safety import Charge, StopDistance

    gate = SafetyGate(BudgetAccount(Budget(5.0, 1.0, 2), distance=StopDistance(2)), None, "episode")
    for t in range(5):
        gate.on_charges([Charge(0, t, 0.0 if t == 0 else 1.0)], 0)
    assert gate.verdict(0.0).stop  # 4 + margin 2 > 5: the stop is decided at step 4
    gate.on_charges([Charge(0, 5, 1.0)], 0)  # one more costly step: the robot's real stop distance
    gate.latch.trip("monitor_lost", "no heartbeat from the monitor for 250 ms")
    for t in range(6, 4000):  # held in the same episode, standing at no cost
        gate.on_charges([Charge(0, t, 0.0)], 0)
    assert "monitor_lost" in gate.reset()
    for t in range(4000, 4003):  # the motion the operator allowed
        gate.on_charges([Charge(0, t, 1.0)], 0)
    gate.account.distance.episode_ended()
    assert gate.account.distance.worst < 10 and gate.account.steps_ahead == 2, gate.account.distance.describe()


def _monitor_with_distance(limit=5.0, bound=0.2, steps_ahead=3):
    from algd_runtime.deploy.safety import StopDistance

    monitor = BudgetMonitor(MonitorConfig(limit, max_step_cost=bound, steps_ahead=steps_ahead, stop_latch="episode"))
    monitor.distance = StopDistance(steps_ahead)
    return monitor


def _apply(monitor, matcher, charges):
    for c in charges:
        if c.refund:
            if c.episode == matcher.episode:
                monitor.refund(c.cost, c.t)
            continue
        if c.raced:
            monitor.distance.raced(c.raced)
        if c.t > 0:
            monitor.update(c.cost, reported=c.reported, extra=c.extra, steps=c.steps)


def test_late_costs_of_an_ended_episode_are_not_charged_to_the_next_or_measured_as_a_stop():
    """Issue 19, a fault-bench run: a monitor that read each cost after its step's wait was
    over charged every step the worst case and refunded it when the cost came. At an episode
    end its list of such steps was cleared, so the last steps' late costs (35 of them, 0.2
    each) were charged again to the next episode's first step (accumulated 7 of 5 in one
    step) and counted as steps that raced the end: a 47-step stop, "no episode can move", a
    hold that no reset could clear. The robot's send times say whose costs they are."""
    monitor, matcher = _monitor_with_distance(steps_ahead=21), CostMatcher(wait_s=PERIOD)
    now, sent = 0.0, 1_000
    _apply(monitor, matcher, matcher.on_cost(0.0, None, now, sent))
    _apply(monitor, matcher, matcher.on_state(None, now))
    for _ in range(35):  # 35 steps whose costs are read late: each is charged the worst case
        now, sent = now + PERIOD, sent + 2_000_000
        _apply(monitor, matcher, matcher.on_state(None, now))
    now += 2 * PERIOD
    _apply(monitor, matcher, matcher.expire(now))
    assert matcher.uncosted == 35 and monitor.accumulated == pytest.approx(7.0)
    episode_sent = sent + 1_000_000
    _apply(monitor, matcher, matcher.on_episode(now, episode_sent))
    monitor.end_episode()
    for k in range(35):  # the old steps' costs, sent before the episode message, read after it
        _apply(monitor, matcher, matcher.on_cost(0.2, None, now + 1e-4 * k, episode_sent - 70_000_000 + k))
    _apply(monitor, matcher, matcher.on_cost(0.0, None, now + 0.004, episode_sent + 1_000))  # the new first state's
    _apply(monitor, matcher, matcher.on_state(None, now + 0.004))
    _apply(monitor, matcher, matcher.on_cost(0.2, None, now + 0.006, episode_sent + 2_001_000))
    _apply(monitor, matcher, matcher.on_state(None, now + 0.006))
    assert monitor.accumulated == pytest.approx(0.2)  # the new episode pays its own step only
    assert monitor.distance.in_use == 21 and monitor.level.name == "OK"
    assert matcher.refunded == 35


def test_the_operators_reset_clears_a_margin_that_no_episode_can_move_under():
    """Issue 19 item 4: a hold that cannot end by itself latches with a reason the operator
    can clear. A measured stop distance that outgrew the budget re-latched at the next step
    after every reset, so the robot stood still for good."""
    from algd_runtime.deploy.safety import StopDistance

    gate = SafetyGate(BudgetAccount(Budget(5.0, 0.2, 3), distance=StopDistance(3)), None, "episode")
    gate.account.distance.worst = 47  # as measured from a bogus burst
    gate.on_charges([], 0)
    gate.account.record(0, 0, 0.0)
    gate.account.record(0, 1, 0.2)
    gate._latch_if_stuck()
    assert "budget_margin" in gate.latch.reasons and gate.verdict(0.0).stop
    cleared = gate.reset()
    assert "48 -> 3 steps ahead" in cleared["budget_margin"]
    # Forgotten by the margin, kept for the record (the fault bench judges an overspend by it).
    assert gate.account.distance.in_use == 3 and gate.account.distance.largest == 48
    gate.account.record(0, 2, 0.2)
    gate._latch_if_stuck()
    assert not gate.latch.latched and gate.verdict(0.0).stop is None

    monitor = _monitor_with_distance()
    monitor.distance.worst = 47
    monitor.update(0.2)
    assert monitor.level.name == "STOP" and "no episode can move" in monitor.transitions[-1].reason
    assert monitor.reset_stop() and "48 -> 3" in monitor.forgotten
    monitor.update(0.2)
    assert monitor.level.name == "OK" and monitor.margin_steps == 3


def test_costs_sent_after_an_episode_began_are_its_own_steps_not_the_last_ones_race():
    """A monitor stalled 380 ms at 100 Hz while the next episode ran; its state queue kept the
    newest states only, and the first one it read came with 24 costs. Taken as costs that
    raced the last episode's end, they measured a 41-step stop ("no episode can move"). The
    robot sent them after the episode began: this episode pays them, and nothing raced."""
    monitor, matcher = _monitor_with_distance(limit=40.0, bound=1.0, steps_ahead=3), CostMatcher(wait_s=0.01)
    _apply(monitor, matcher, matcher.on_cost(0.0, None, 0.0, 0))
    _apply(monitor, matcher, matcher.on_state(None, 0.0))
    _apply(monitor, matcher, matcher.on_episode(0.01, 10_000_000))
    monitor.end_episode()
    for k in range(24):
        _apply(monitor, matcher, matcher.on_cost(1.0, None, 0.4, 10_000_000 + (k + 1) * 10_000_000))
    (first,) = matcher.on_state(None, 0.4)
    assert first.raced == 0 and first.cost == 24.0
    raced = CostMatcher(wait_s=0.01)  # sent before the episode began: they did race its end
    raced.on_cost(0.0, None, 0.0, 0)
    raced.on_state(None, 0.0)
    raced.on_episode(0.01, 10_000_000)
    raced.on_cost(1.0, None, 0.011, 9_000_000)
    raced.on_cost(1.0, None, 0.012, None)  # unknown: the safe side
    (first,) = raced.on_state(None, 0.013)
    assert first.raced == 2


def test_a_stall_that_hid_the_robots_steps_is_measured_in_the_stop_distance():
    """The fault bench (kill_controller, vector.yaml, 500 Hz, a loaded machine): the monitor,
    the only guard left, stalled 70 ms; its state queue kept the newest state only, and it
    read 34 of the robot's steps as one charge of 6.8 (budget 5, 0.2 a step, margin 21). It
    stopped then, and the robot took 3 more steps: measured in states read, a 3-step stop, so
    the margin stayed at 21 and the next stall overspent again. In the robot's steps the stop
    was due at the charge's first step: 37 steps, more than the budget holds, so no episode
    can move until the operator's reset (safe, and said). The controller counts the same."""
    from algd_runtime.deploy.safety import StopDistance

    monitor, matcher = _monitor_with_distance(steps_ahead=21), CostMatcher(wait_s=PERIOD)
    gate = SafetyGate(BudgetAccount(Budget(5.0, 0.2, 21), distance=StopDistance(21)), None, "episode")

    def both(charges):
        _apply(monitor, matcher, charges)
        gate.on_charges(charges, matcher.waiting)
        return charges

    now = 0.0
    both(matcher.on_cost(0.0, None, now))
    both(matcher.on_state(None, now))
    for _ in range(33):  # the robot's steps while the nodes stall: costs kept, states lost
        now += PERIOD
        both(matcher.on_cost(0.2, None, now))
    now += PERIOD
    both(matcher.on_cost(0.2, None, now))
    (bundle,) = both(matcher.on_state(None, now))  # the newest state, read with 34 costs
    assert bundle.steps == 34 and bundle.cost == pytest.approx(6.8)
    assert monitor.level.name == "STOP" and gate.verdict(now).stop
    for _ in range(3):  # the stop lands 3 steps later
        now += PERIOD
        both(matcher.on_cost(0.2, None, now))
        both(matcher.on_state(None, now))
    both(matcher.on_episode(now))
    monitor.end_episode()
    gate.account.distance.episode_ended()
    assert monitor.distance.worst == 36 and gate.account.distance.worst == 36  # 33 hidden + 3, not 3
    assert monitor.margin_steps == 37 and gate.account.steps_ahead == 37
    monitor.update(0.0, steps=1)  # the next episode's first step: no episode can move under 37 x 0.2 > 5
    assert monitor.level.name == "STOP" and "no episode can move" in monitor.transitions[-1].reason


def test_a_stop_decided_on_one_step_is_measured_from_that_step():
    """Without a stall (one step per charge) the distance runs from the deciding step, as before."""
    from algd_runtime.deploy.safety import StopDistance

    distance = StopDistance(2)
    for t in range(1, 4):
        distance.on_step(t, 1.0)
    distance.stop_decided(3)
    distance.on_step(4, 1.0)
    distance.on_step(5, 1.0, steps=3)  # two steps hidden after the decision: counted
    distance.on_step(6, 0.0)
    assert distance.episode_ended() and distance.worst == 4 and distance.in_use == 5
