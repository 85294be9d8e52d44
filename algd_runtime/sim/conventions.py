"""The authors' reference conventions, as an option (`conventions: reference` in a training
config). The defaults (`robot`) are what a robot needs; `reference` reproduces the paper's
setting where a user wants to compare with it. docs/CONVENTIONS.md has the whole table.

What this wrapper changes on the task side (the agent side, the target-update phase, the
cost-ensemble initialisation and the unclamped cost target, is in algd.py):
- navigation: one fixed layout (every reset uses the run's first seed), and reaching the
  goal ends the episode as a terminal state;
- velocity: the time limit is a terminal state too (done = terminated or truncated), where
  `robot` bootstraps through it (a time limit says nothing about the state);
- Ant and Humanoid: the observation is cut to the reference's 27 / 45 values (joint
  positions without x, y and joint velocities).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .base import TaskEnv, TaskWrapper

CONVENTIONS = ("robot", "reference")
REFERENCE_OBS_DIMS = {"SafetyAntVelocity-v1": 27, "SafetyHumanoidVelocity-v1": 45}


def check_conventions(value: str) -> str:
    if value not in CONVENTIONS:
        raise ValueError(f"conventions: expected one of {CONVENTIONS}, got {value!r}")
    return value


class ReferenceConventions(TaskWrapper):
    def __init__(self, env: TaskEnv, layout_seed: int | None = None) -> None:
        super().__init__(env)
        spec = env.task_spec
        self.velocity = spec.name.startswith("Safety") and spec.name.endswith("Velocity-v1")
        self.navigation = spec.name.startswith("Safety") and not self.velocity
        self.obs_dim = REFERENCE_OBS_DIMS.get(spec.name, spec.obs_dim)
        self._spec = dataclasses.replace(spec, obs_dim=self.obs_dim)
        self._layout_seed = layout_seed  # None: the first seed a reset is given
        if self.obs_dim != spec.obs_dim:
            from gymnasium.spaces import Box

            space = env.observation_space
            self._space = Box(space.low[: self.obs_dim], space.high[: self.obs_dim], dtype=np.float32)
        else:
            self._space = env.observation_space

    @property
    def task_spec(self):  # type: ignore[override]
        return self._spec

    @task_spec.setter
    def task_spec(self, spec) -> None:
        self._spec = spec

    @property
    def observation_space(self):  # type: ignore[override]
        return self._space

    def reset(self, seed: int | None = None, options: dict | None = None):
        if self.navigation:
            # One layout for the whole run: the first seed this task was reset with.
            if self._layout_seed is None:
                self._layout_seed = seed
            seed = self._layout_seed
        obs, info = self.env.reset(seed=seed, options=options)
        return obs[: self.obs_dim], info

    def step(self, action):
        obs, reward, cost, terminated, truncated, info = self.env.step(action)
        if self.navigation and info.get("goal_met"):
            terminated = True
        if self.velocity and truncated:
            terminated, truncated = True, False
        return obs[: self.obs_dim], reward, cost, terminated, truncated, info


def apply_conventions(env: TaskEnv, conventions: str, layout_seed: int | None = None) -> TaskEnv:
    if check_conventions(conventions) == "reference":
        return ReferenceConventions(env, layout_seed)
    return env
