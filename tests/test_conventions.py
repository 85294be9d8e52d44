"""`conventions: reference` reproduces the authors' code where it differs from our defaults
(docs/CONVENTIONS.md); `robot` (the default) leaves the task and the agent as they are."""

import numpy as np
import pytest
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.config import AlgoConfig, ConfigError, config_from_dict
from algd_runtime.sim import make_task
from algd_runtime.sim.base import TaskEnv
from algd_runtime.sim.conventions import ReferenceConventions, apply_conventions
from algd_runtime.sim.spec import TaskSpec


class Scripted(TaskEnv):
    """A task whose steps say what the test wants: (truncated, goal_met) per step."""

    def __init__(self, name: str, script: list[tuple[bool, bool]], obs_dim: int = 4) -> None:
        from gymnasium.spaces import Box

        self.task_spec = TaskSpec(name, obs_dim, 1, (-1.0,), (1.0,), 10, 10.0,
                                  cost_mask_always_one=not name.endswith("Velocity-v1"))
        self.observation_space = Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = Box(-1.0, 1.0, (1,), np.float32)
        self.script, self.seeds = list(script), []

    def reset(self, seed=None, options=None):
        self.seeds.append(seed)
        return np.arange(self.task_spec.obs_dim, dtype=np.float32), {}

    def step(self, action):
        trunc, goal = self.script.pop(0)
        return np.arange(self.task_spec.obs_dim, dtype=np.float32), 1.0, 0.0, False, trunc, {"goal_met": goal}


def test_the_config_names_the_switch_and_its_values():
    assert config_from_dict({}).conventions == "robot"
    assert config_from_dict({"conventions": "reference"}).conventions == "reference"
    with pytest.raises(ConfigError, match="conventions"):
        config_from_dict({"conventions": "paper"})


def test_velocity_time_limit_is_terminal_only_under_the_reference():
    ref = apply_conventions(Scripted("SafetyHopperVelocity-v1", [(True, False)]), "reference")
    assert ref.step([0.0])[3:5] == (True, False)
    robot = apply_conventions(Scripted("SafetyHopperVelocity-v1", [(True, False)]), "robot")
    assert robot.step([0.0])[3:5] == (False, True)


def test_navigation_goal_ends_the_episode_and_the_layout_is_fixed_under_the_reference():
    inner = Scripted("SafetyPointGoal1-v0", [(False, False), (False, True)])
    ref = ReferenceConventions(inner, layout_seed=7)
    ref.reset(seed=1)
    ref.reset(seed=2)
    assert inner.seeds == [7, 7]
    assert ref.step([0.0])[3] is False and ref.step([0.0])[3] is True
    first_seed = ReferenceConventions(Scripted("SafetyPointGoal1-v0", []))
    first_seed.reset(seed=5)
    first_seed.reset(seed=6)
    assert first_seed.env.seeds == [5, 5]


def test_real_point_goal_layout_is_the_same_every_episode_only_under_the_reference():
    def first_obs(conventions, seeds):
        env = apply_conventions(make_task("SafetyPointGoal1-v0", seed=0), conventions, 0)
        try:
            return [env.reset(seed=s)[0] for s in seeds]
        finally:
            env.close()

    a, b = first_obs("reference", [10, 11])
    np.testing.assert_array_equal(a, b)
    a, b = first_obs("robot", [10, 11])
    assert not np.array_equal(a, b)


@pytest.mark.slow
def test_humanoid_observation_is_cut_to_the_reference_45():
    raw = make_task("SafetyHumanoidVelocity-v1", seed=0)
    ref = apply_conventions(make_task("SafetyHumanoidVelocity-v1", seed=0), "reference")
    try:
        assert raw.task_spec.obs_dim == 376 and ref.task_spec.obs_dim == 45
        assert ref.observation_space.shape == (45,)
        np.testing.assert_array_equal(ref.reset(seed=3)[0], raw.reset(seed=3)[0][:45])
    finally:
        raw.close()
        ref.close()


def _target_updates(conventions: str, repeat_indices: list[int]) -> list[int]:
    """At which updates the critic target moved."""
    torch.manual_seed(0)
    spec = make_task("PointHazard-v0").task_spec
    agent = ALGDAgent(spec, AlgoConfig(score_hidden=16, critic_hidden=16, batch_size=8, target_update_every=2),
                      conventions=conventions)
    rng = np.random.default_rng(0)
    moved = []
    for n, i in enumerate(repeat_indices):
        before = [p.clone() for p in agent.critic_target.parameters()]
        agent.update({"obs": rng.normal(size=(8, 8)).astype(np.float32),
                      "action": rng.uniform(-1, 1, (8, 2)).astype(np.float32),
                      "reward": rng.normal(size=8).astype(np.float32), "cost": np.zeros(8, np.float32),
                      "next_obs": rng.normal(size=(8, 8)).astype(np.float32), "done": np.zeros(8, np.float32)},
                     repeat_index=i)
        if any(not torch.equal(a, b) for a, b in zip(before, agent.critic_target.parameters())):
            moved.append(n)
    return moved


def test_target_update_phase_follows_the_repeat_index_only_under_the_reference():
    # Three updates per env step, targets every 2nd: the reference moves them at repeats 0 and
    # 2 of every env step, we at every 2nd update overall.
    repeats = [0, 1, 2, 0, 1, 2]
    assert _target_updates("reference", repeats) == [0, 2, 3, 5]
    assert _target_updates("robot", repeats) == [0, 2, 4]


def test_cost_ensemble_init_is_untruncated_only_under_the_reference():
    spec = make_task("PointHazard-v0").task_spec
    algo = AlgoConfig(score_hidden=16, critic_hidden=256)

    def largest_in_std(conventions):
        torch.manual_seed(0)
        layer = ALGDAgent(spec, algo, conventions=conventions).cost_critics.nn2
        return float(layer.weight.detach().abs().max() / layer.init_std)

    assert largest_in_std("robot") <= 2.0
    assert largest_in_std("reference") > 3.0  # 262 144 normal draws: some beyond 3 std


def test_cost_targets_are_held_at_zero_or_above_except_under_the_reference():
    spec = make_task("PointHazard-v0").task_spec
    out = {}
    for conventions in ("robot", "reference"):
        torch.manual_seed(0)
        agent = ALGDAgent(spec, AlgoConfig(score_hidden=16, critic_hidden=16), conventions=conventions)
        with torch.no_grad():
            agent.cost_critics_target.nn3.bias.fill_(-5.0)  # a critic that went below zero
        b = 8
        out[conventions] = agent.cost_target(torch.zeros(b, 1), torch.randn(b, 8), torch.rand(b, 2), torch.ones(b, 1))
    assert (out["robot"] == 0).all()
    assert (out["reference"] < -4).all()
