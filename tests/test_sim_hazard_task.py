"""PointHazard-v0: the toy task's dynamics, reward, cost, episode ends and domain shift."""

import math
import time

import numpy as np
import pytest

from algd_runtime.sim import make_task
from algd_runtime.sim.hazard_task import EPISODE_LENGTH, GOAL_BONUS, scripted_action

NAME = "PointHazard-v0"


def _episode(env, policy, seed):
    obs, info = env.reset(seed=seed)
    ret, costs, steps = 0.0, [], []
    while True:
        obs, r, c, term, trunc, step_info = env.step(policy(obs))
        ret += r
        costs.append(c)
        steps.append((obs, r, c, term, trunc, step_info))
        if term or trunc:
            return ret, costs, steps, info


def _displacement(n_steps, action=(1.0, 0.0), **shift):
    env = make_task(NAME, seed=0, **shift)
    obs, _ = env.reset()
    start = obs[:2].copy()
    xs = []
    for _ in range(n_steps):
        obs, *_ = env.step(np.array(action))
        xs.append(float(obs[0] - start[0]))
    return np.array(xs)


def test_spec_and_observation_layout():
    env = make_task(NAME, seed=0)
    spec = env.task_spec
    assert (spec.obs_dim, spec.act_dim, spec.episode_length) == (8, 2, EPISODE_LENGTH)
    assert spec.cost_limit == 5.0 and spec.cost_semantics == "episode"
    assert spec.act_low == (-1.0, -1.0) and spec.act_high == (1.0, 1.0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (8,)
    pos = obs[:2].astype(np.float64)
    np.testing.assert_allclose(obs[2:4], 0.0)
    np.testing.assert_allclose(obs[4:6], info["goal"] - pos, atol=1e-5)
    np.testing.assert_allclose(obs[6:8], info["hazard"] - pos, atol=1e-5)
    assert pos[0] < -1.0 and info["goal"][0] > 1.0 and abs(info["hazard"][0]) < 0.2


def test_same_seed_same_trajectory_and_reset_seed_reseeds():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (120, 2))

    def run(env, seed=None):
        out = [np.concatenate([env.reset(seed=seed)[0], [0.0, 0.0]])]
        for a in actions:
            obs, r, c, term, trunc, _ = env.step(a)
            out.append(np.concatenate([obs, [r, c]]))
            if term or trunc:
                break
        return np.array(out)

    a, b = run(make_task(NAME, seed=7)), run(make_task(NAME, seed=7))
    np.testing.assert_array_equal(a, b)
    other = make_task(NAME, seed=8)
    assert not np.array_equal(run(other)[0], a[0])
    np.testing.assert_array_equal(run(other, seed=7), a)  # reset(seed=...) reseeds


def test_actions_outside_bounds_are_clipped():
    big = _displacement(10, action=(5.0, 0.0))
    np.testing.assert_array_equal(big, _displacement(10, action=(1.0, 0.0)))


def test_cost_is_one_exactly_inside_the_hazard():
    env = make_task(NAME, seed=1)
    obs, info = env.reset()
    hazard, radius = info["hazard"], info["hazard_radius"]
    seen = set()
    for _ in range(80):
        # Drive to the hazard centre, then beyond it: in, then out again.
        target = obs[6:8] + np.array([1.0, 0.0]) if seen == {0.0, 1.0} else obs[6:8]
        obs, r, cost, term, trunc, info = env.step(np.clip(3 * target - 0.5 * obs[2:4], -1, 1))
        inside = math.dist(obs[:2], hazard) < radius
        assert cost == (1.0 if inside else 0.0)
        assert info["in_hazard"] == inside
        seen.add(cost)
    assert seen == {0.0, 1.0}


def test_straight_violates_around_satisfies_and_goal_terminates_with_bonus():
    env = make_task(NAME, seed=0)
    limit = env.task_spec.cost_limit
    for seed in range(5):
        ret_s, cost_s, steps_s, _ = _episode(env, lambda o: scripted_action(o, "straight"), seed)
        ret_a, cost_a, steps_a, _ = _episode(env, lambda o: scripted_action(o, "around"), seed)
        assert sum(cost_s) > 2 * limit and sum(cost_a) == 0.0
        for steps, ret in ((steps_s, ret_s), (steps_a, ret_a)):
            obs, r, c, term, trunc, info = steps[-1]
            assert term and not trunc and info["goal_reached"] and len(steps) < EPISODE_LENGTH
            assert r > GOAL_BONUS and 15.0 < ret < 35.0
            assert not any(s[3] for s in steps[:-1])
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(2))


def test_truncates_at_episode_length():
    env = make_task(NAME, seed=0)
    env.reset()
    for t in range(EPISODE_LENGTH):
        obs, r, c, term, trunc, _ = env.step(np.zeros(2))
        assert not term
        assert trunc == (t == EPISODE_LENGTH - 1)
        assert r == pytest.approx(0.0, abs=1e-9)  # zero force: the point stays put


def test_random_policy_returns_about_zero():
    from algd_runtime.sim import random_policy_baseline

    res = random_policy_baseline(NAME, episodes=10, seed=0)
    assert abs(res["mean_return"]) < 3.0 and res["mean_length"] == EPISODE_LENGTH
    assert res["mean_cost"] <= res["cost_limit"]


def test_actuator_gain_mass_friction_change_displacement():
    nominal = _displacement(10)
    assert nominal[-1] > 0.2
    assert _displacement(10, actuator_gain=2.0)[-1] > 1.5 * nominal[-1]
    assert _displacement(10, actuator_gain=0.5)[-1] < 0.7 * nominal[-1]
    assert _displacement(10, mass=3.0)[-1] < 0.8 * nominal[-1]
    assert _displacement(10, mass=0.5)[-1] > nominal[-1]
    assert _displacement(10, friction=3.0)[-1] < 0.6 * nominal[-1]
    assert _displacement(10, friction=0.5)[-1] > nominal[-1]
    np.testing.assert_array_equal(_displacement(10, mass=1.0, friction=1.0), nominal)


def test_action_delay_lags_the_applied_action():
    nominal = _displacement(6)
    delayed = _displacement(6, action_delay=2)
    np.testing.assert_array_equal(delayed[:2], 0.0)  # first 2 steps apply the neutral action
    assert delayed[2] > 0.0
    np.testing.assert_allclose(delayed[2:], nominal[:4], atol=1e-12)
    env = make_task(NAME, seed=0, action_delay=1)
    env.reset()
    env.step(np.array([0.3, -0.2]))
    *_, info = env.step(np.array([0.0, 0.0]))
    np.testing.assert_allclose(info["applied_action"], [0.3, -0.2])


def test_obs_noise_is_gaussian_and_seeded():
    clean, noisy = make_task(NAME, seed=2), make_task(NAME, seed=2, obs_noise=0.1)
    clean0 = clean.reset()[0]
    diffs = [noisy.reset()[0] - clean0]
    for _ in range(100):
        diffs.append(noisy.step(np.ones(2))[0] - clean.step(np.ones(2))[0])
    std = float(np.std(diffs))
    assert 0.08 < std < 0.12
    again = make_task(NAME, seed=2, obs_noise=0.1)
    np.testing.assert_array_equal(again.reset()[0], noisy.reset(seed=2)[0])
    assert not np.array_equal(again.reset(seed=2)[0], clean0)


@pytest.mark.parametrize("shift, param", [
    ({"mass": -1.0}, "mass"), ({"mass": 0}, "mass"), ({"friction": -0.1}, "friction"),
    ({"actuator_gain": float("nan")}, "actuator_gain"), ({"obs_noise": -0.5}, "obs_noise"),
    ({"action_delay": 1.5}, "action_delay"), ({"action_delay": -1}, "action_delay"),
    ({"mass": "heavy"}, "mass"),
])
def test_bad_shift_values_name_the_parameter(shift, param):
    with pytest.raises(ValueError, match=f"shift parameter '{param}': expected"):
        make_task(NAME, **shift)


def test_unknown_shift_key_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_task(NAME, gravity=2.0)
    msg = str(err.value)
    assert "'gravity'" in msg
    for key in ("mass", "friction", "actuator_gain", "obs_noise", "action_delay"):
        assert key in msg


def test_spec_records_the_shift():
    env = make_task(NAME, seed=0, mass=2, action_delay=3, obs_noise=0.01)
    assert env.task_spec.shift == {"mass": 2.0, "action_delay": 3, "obs_noise": 0.01}
    assert make_task(NAME).task_spec.shift == {}


def test_speed_sanity(capsys):
    env = make_task(NAME, seed=0)
    env.reset()
    n, t0 = 0, time.perf_counter()
    while n < 3000:
        *_, term, trunc, _ = env.step(np.array([0.5, 0.1]))
        n += 1
        if term or trunc:
            env.reset()
    rate = n / (time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[speed] {NAME}: {rate:,.0f} env steps/s")
