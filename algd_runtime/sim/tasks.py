"""The task registry: make_task, TASK_NAMES, and a random-policy baseline.

Nothing heavy is imported here: mujoco, gymnasium and safety_gymnasium load only when a
task is made.
"""

from __future__ import annotations

import numpy as np

from .base import TaskEnv

HAZARD_TASKS = ("PointHazard-v0",)
SAFETY_GYM_TASKS = (
    "SafetyPointGoal1-v0",
    "SafetyPointButton1-v0",
    "SafetyCarButton1-v0",
    "SafetyPointPush1-v0",
    "SafetyHopperVelocity-v1",
    "SafetyHalfCheetahVelocity-v1",
    "SafetyAntVelocity-v1",
    "SafetyHumanoidVelocity-v1",
)
TASK_NAMES = HAZARD_TASKS + SAFETY_GYM_TASKS


class UnknownTaskError(ValueError):
    """A task name that make_task does not know; the message lists the known ones."""

    def __init__(self, name) -> None:
        super().__init__(f"unknown task {name!r}: expected one of {', '.join(TASK_NAMES)}")
        self.name = name


def make_task(name: str, seed: int | None = 0, budget: str = "algd", **shift) -> TaskEnv:
    """Make a task. `seed` seeds the first reset (and the noise stream); `budget` says whose
    safety budget it keeps (Safety-Gymnasium tasks: "algd" or "safety_gymnasium", see
    sim/safety_gym.py); `shift` holds domain-shift parameters: mass, friction,
    actuator_gain, obs_noise, action_delay."""
    if name in HAZARD_TASKS:
        from .hazard_task import make_point_hazard

        if budget != "algd":
            raise ValueError(f"budget: {name} has one budget; expected 'algd', got {budget!r}")
        return make_point_hazard(seed=seed, **shift)
    if name in SAFETY_GYM_TASKS:
        from .safety_gym import make_safety_gym

        return make_safety_gym(name, seed=seed, budget=budget, **shift)
    raise UnknownTaskError(name)


def random_policy_baseline(name: str, episodes: int = 20, seed: int = 0, **shift) -> dict:
    """Mean (and std) return and cost of uniformly random actions.

    Cost is in the units of the task's cost_limit (episode sum, or discounted sum).
    """
    env = make_task(name, seed=seed, **shift)
    spec = env.task_spec
    rng = np.random.default_rng([seed, 7])
    low, high = np.asarray(spec.act_low), np.asarray(spec.act_high)
    returns, costs, lengths = [], [], []
    try:
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            ret, ep_costs, done = 0.0, [], False
            while not done:
                _, r, c, term, trunc, _ = env.step(rng.uniform(low, high))
                ret += r
                ep_costs.append(c)
                done = term or trunc
            returns.append(ret)
            costs.append(spec.episode_cost(ep_costs))
            lengths.append(len(ep_costs))
    finally:
        env.close()
    return {
        "task": name,
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_cost": float(np.mean(costs)),
        "std_cost": float(np.std(costs)),
        "mean_length": float(np.mean(lengths)),
        "cost_limit": spec.cost_limit,
    }
