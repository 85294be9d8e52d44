"""Several copies of a task stepping together, through gymnasium's vector API.

`GymTask` presents one of our tasks as a gymnasium Env (the cost travels in info["cost"]),
so that `gymnasium.vector.AsyncVectorEnv` (one process per copy: MuJoCo releases no GIL) or
`SyncVectorEnv` can step them. Each copy draws its reset seeds from its own stream
(`copy_seed(run_seed, index, episode)`), so a vector run is reproducible; `episode_state`
(get and set through the vector env's `get_attr` / `set_attr`) is what an exact resume needs:
the episode's seed and the actions taken, replayed on MuJoCo's deterministic physics.
"""

from __future__ import annotations

from typing import Callable

import gymnasium
import numpy as np

from .base import TaskEnv


def copy_seed(run_seed: int, index: int, episode: int) -> int:
    """The reset seed of a copy's episode: distinct per copy and episode, fixed by the run."""
    return int(np.random.SeedSequence([run_seed, index, episode]).generate_state(1)[0])


class GymTask(gymnasium.Env):
    def __init__(self, make: Callable[[], TaskEnv], run_seed: int, index: int) -> None:
        self.task = make()
        self.observation_space = self.task.observation_space
        self.action_space = self.task.action_space
        self.run_seed, self.index = run_seed, index
        self.episodes = 0  # episodes started by this copy
        self._seed: int | None = None
        self._actions: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seed = copy_seed(self.run_seed, self.index, self.episodes) if seed is None else seed
        self.episodes += 1
        self._seed, self._actions = seed, []
        obs, info = self.task.reset(seed=seed)
        return obs, info

    def step(self, action):
        obs, reward, cost, terminated, truncated, info = self.task.step(action)
        self._actions.append(np.array(action, np.float32))
        return obs, reward, terminated, truncated, {**_numeric(info), "cost": cost}

    @property
    def episode_state(self) -> dict:
        return {"episodes": self.episodes, "seed": self._seed, "actions": np.array(self._actions, np.float32)}

    @episode_state.setter
    def episode_state(self, state: dict) -> None:
        """Rebuild the episode in progress: reset with its seed, replay its actions."""
        self.episodes = int(state["episodes"]) - 1
        self.reset(seed=state["seed"])
        for a in state["actions"]:
            self.step(a)

    def close(self) -> None:
        self.task.close()


def _numeric(info: dict) -> dict:
    """The vector env stacks infos into arrays: keep what stacks (numbers and flags)."""
    return {k: v for k, v in info.items() if isinstance(v, (bool, int, float, np.bool_, np.number))}


def make_vector_task(make: Callable[[], TaskEnv], num_envs: int, run_seed: int,
                     asynchronous: bool = True) -> gymnasium.vector.VectorEnv:
    """num_envs copies of a task; asynchronous: one worker process per copy."""
    fns = [lambda i=i: GymTask(make, run_seed, i) for i in range(num_envs)]
    if asynchronous and num_envs > 1:
        return gymnasium.vector.AsyncVectorEnv(fns, context="spawn")
    return gymnasium.vector.SyncVectorEnv(fns)
