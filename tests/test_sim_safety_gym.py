"""The Safety-Gymnasium adapter on the eight tasks the ALGD authors use (or their v1s)."""

import math

import numpy as np
import pytest

from algd_runtime.sim import TaskSpec, make_task

NAV = ["SafetyPointGoal1-v0", "SafetyPointButton1-v0", "SafetyCarButton1-v0",
       "SafetyPointPush1-v0"]
VEL = {"SafetyHopperVelocity-v1": 82.748, "SafetyHalfCheetahVelocity-v1": 151.989,
       "SafetyAntVelocity-v1": 103.115, "SafetyHumanoidVelocity-v1": 20.140}


def _rollout(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    spec = env.task_spec
    obs, _ = env.reset()
    out = []
    for _ in range(steps):
        a = rng.uniform(spec.act_low, spec.act_high)
        step = env.step(a)
        out.append(step)
        if step[3] or step[4]:
            env.reset()
    return obs, out


@pytest.mark.parametrize("name", NAV + list(VEL))
def test_task_resets_steps_and_has_its_budget(name):
    env = make_task(name, seed=0)
    try:
        spec = env.task_spec
        assert isinstance(spec, TaskSpec) and spec.name == name
        obs0, steps = _rollout(env, 20)
        assert obs0.dtype == np.float32 and obs0.shape == (spec.obs_dim,)
        assert env.observation_space.shape == (spec.obs_dim,)
        assert env.action_space.shape == (spec.act_dim,)
        for obs, reward, cost, terminated, truncated, info in steps:
            assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
            assert type(reward) is float and type(cost) is float and cost >= 0.0
            assert isinstance(terminated, bool) and isinstance(truncated, bool)
        if name in NAV:
            assert (spec.episode_length, spec.cost_limit) == (400, 10.0)
            assert spec.cost_semantics == "episode" and spec.cost_mask_always_one
            assert spec.target_cost == pytest.approx(2.455, abs=1e-3)
        else:
            assert spec.episode_length == 1000
            assert spec.cost_limit == VEL[name] and spec.cost_semantics == "discounted"
            assert spec.cost_gamma == 0.99 and not spec.cost_mask_always_one
            # The ALGD velocity cost (speed), not Safety-Gymnasium's 0/1 indicator.
            for *_, cost, _t, _u, info in steps:
                vy = info.get("y_velocity", 0.0)
                assert cost == pytest.approx(math.hypot(info["x_velocity"], vy))
                assert info["cost_indicator"] in (0.0, 1.0)
            assert any(0.0 < s[2] != 1.0 for s in steps)
    finally:
        env.close()


def test_same_seed_same_trajectory_and_navigation_episode_length():
    a, b = make_task("SafetyPointGoal1-v0", seed=3), make_task("SafetyPointGoal1-v0", seed=3)
    oa, sa = _rollout(a, 30)
    ob, sb = _rollout(b, 30)
    np.testing.assert_array_equal(oa, ob)
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:5] == y[1:5]
    # A different seed gives a different layout.
    c = make_task("SafetyPointGoal1-v0", seed=4)
    assert not np.array_equal(c.reset()[0], oa)
    # 400-step episodes, not Safety-Gymnasium's registered 1000.
    a.reset(seed=0)
    for t in range(400):
        *_, terminated, truncated, _ = a.step(np.zeros(2))
        if truncated:
            break
    assert t == 399 and truncated
    with pytest.raises(RuntimeError, match="reset"):
        a.step(np.zeros(2))


def test_navigation_shift_supports_noise_and_delay_but_rejects_model_edits():
    with pytest.raises(ValueError, match="'mass'.*not supported.*obs_noise, action_delay"):
        make_task("SafetyPointGoal1-v0", mass=2.0)
    clean = make_task("SafetyPointGoal1-v0", seed=1)
    noisy = make_task("SafetyPointGoal1-v0", seed=1, obs_noise=0.05, action_delay=1)
    assert noisy.task_spec.shift == {"obs_noise": 0.05, "action_delay": 1}
    diff = noisy.reset()[0] - clean.reset()[0]
    assert 0.01 < float(np.std(diff)) < 0.1
    *_, info = noisy.step(np.ones(2))
    np.testing.assert_array_equal(info["applied_action"], np.zeros(2))


def test_velocity_task_model_shift_scales_the_model():
    nominal = make_task("SafetyHopperVelocity-v1")
    heavy = make_task("SafetyHopperVelocity-v1", mass=2.0, actuator_gain=0.5)
    m0, m1 = nominal.unwrapped._env.unwrapped.model, heavy.unwrapped._env.unwrapped.model
    np.testing.assert_allclose(m1.body_mass[1:], 2.0 * m0.body_mass[1:])
    np.testing.assert_allclose(m1.actuator_gear[:, 0], 0.5 * m0.actuator_gear[:, 0])


@pytest.mark.parametrize("name", ["SafetyPointGoal1-v0", "SafetyHopperVelocity-v1"])
def test_the_benchmarks_own_budget_keeps_native_costs_and_1000_step_episodes(name):
    env = make_task(name, seed=0, budget="safety_gymnasium")
    spec = env.task_spec
    assert (spec.episode_length, spec.cost_limit, spec.cost_semantics, spec.budget) == (
        1000, 25.0, "episode", "safety_gymnasium")
    assert TaskSpec.from_dict(spec.to_dict()) == spec  # checkpoints and bundles keep it
    paper = make_task(name, seed=0)
    assert paper.task_spec.budget == "algd"
    _, ours = _rollout(env, 300)
    _, theirs = _rollout(paper, 300)
    for (o1, r1, c1, *_), (o2, r2, c2, _, _, info) in zip(ours, theirs):
        np.testing.assert_allclose(o1, o2)  # the same system ...
        assert r1 == r2
        assert c1 == info.get("cost_indicator", c2)  # ... and Safety-Gymnasium's own cost
    if name.startswith("SafetyPoint"):  # never terminates: the time limit ends it
        ends = [i for i, step in enumerate(_rollout(env, 1000)[1]) if step[4]]
        assert ends == [999]
    with pytest.raises(ValueError, match="budget: expected one of"):
        make_task(name, budget="omnisafe")
    with pytest.raises(ValueError, match="budget: PointHazard-v0 has one budget"):
        make_task("PointHazard-v0", budget="safety_gymnasium")
