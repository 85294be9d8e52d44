"""The task interface every simulator in sim/ presents, and a delegating wrapper.

A task steps with the safe-RL 6-tuple (obs, reward, cost, terminated, truncated, info):
obs is a float32 vector of shape (obs_dim,), reward and cost are Python floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .spec import TaskSpec


class TaskEnv:
    """Base class: subclasses set task_spec, observation_space, action_space."""

    task_spec: TaskSpec
    observation_space: Any
    action_space: Any

    def reset(self, seed: int | None = None, options: dict | None = None):
        raise NotImplementedError

    def step(self, action):
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def unwrapped(self) -> "TaskEnv":
        return self

    def clip_action(self, action) -> np.ndarray:
        """Actions outside the box are clipped (never an error: policies overshoot)."""
        a = np.asarray(action, dtype=np.float64).reshape(self.task_spec.act_dim)
        return np.clip(a, self._act_low, self._act_high)

    @property
    def _act_low(self) -> np.ndarray:
        return np.asarray(self.task_spec.act_low, dtype=np.float64)

    @property
    def _act_high(self) -> np.ndarray:
        return np.asarray(self.task_spec.act_high, dtype=np.float64)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TaskWrapper(TaskEnv):
    """Delegates everything to the wrapped task; subclasses override what they change."""

    def __init__(self, env: TaskEnv) -> None:
        self.env = env

    @property
    def task_spec(self) -> TaskSpec:  # type: ignore[override]
        return self.env.task_spec

    @task_spec.setter
    def task_spec(self, spec: TaskSpec) -> None:
        self.env.task_spec = spec

    @property
    def observation_space(self):  # type: ignore[override]
        return self.env.observation_space

    @property
    def action_space(self):  # type: ignore[override]
        return self.env.action_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()

    @property
    def unwrapped(self) -> TaskEnv:
        return self.env.unwrapped

    def __getattr__(self, name):
        # Task-specific extras (e.g. the toy task's model/data) stay reachable.
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)
