"""Evaluating a policy on a task: episodes with fixed start states, their return and cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from algd_runtime.learn.guard import BudgetGuard
from algd_runtime.sim.spec import TaskSpec


def eval_seed_of(run_seed: int) -> int:
    """First reset seed of a run's evaluations (episode i resets with it + i)."""
    return 1_000_000 + run_seed * 1000


@dataclass
class EvalResult:
    returns: list[float]
    costs: list[float]
    cost_limit: float
    ended_by_guard: int = 0  # episodes the budget guard ended early (guarded evaluation only)
    shielded_steps: int = 0

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    @property
    def cost_mean(self) -> float:
        return float(np.mean(self.costs))

    @property
    def cost_std(self) -> float:
        return float(np.std(self.costs))

    @property
    def violations(self) -> int:
        return int(sum(c > self.cost_limit for c in self.costs))

    @property
    def within_limit(self) -> bool:
        return self.cost_mean <= self.cost_limit


def evaluate(act: Callable[[np.ndarray], np.ndarray], env, episodes: int, seed: int,
             guard: BudgetGuard | None = None) -> EvalResult:
    """Run `episodes` episodes with `act`; episode i resets with seed + i, so repeated
    evaluations see the same start states. With a `guard` (on a real system) the guard may
    shield actions and end an episode before its budget is spent."""
    spec: TaskSpec = env.task_spec
    returns, costs, ended, shielded = [], [], 0, 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        if guard is not None:
            guard.begin_episode()
        ret, ep_costs = 0.0, []
        while True:
            action = act(obs)
            if guard is not None:
                action = guard.act(obs, action)
            obs, r, c, term, trunc, _ = env.step(action)
            ret += r
            ep_costs.append(c)
            if term or trunc:
                break
            if guard is not None and guard.after_step(c):
                ended += 1
                break
        returns.append(ret)
        costs.append(spec.episode_cost(ep_costs))
        shielded += guard.shielded_in_episode if guard is not None else 0
    return EvalResult(returns, costs, spec.cost_limit, ended, shielded)


def budget_words(spec: TaskSpec) -> str:
    """What a run is held to, in words: two runs held to different limits must say so."""
    if spec.cost_semantics == "discounted":
        return (f"cost limit {spec.cost_limit:g} on the discounted cost sum (gamma_c {spec.cost_gamma:g}) of a "
                f"{spec.episode_length}-step episode")
    return f"cost limit {spec.cost_limit:g} on the cost summed over a {spec.episode_length}-step episode"
