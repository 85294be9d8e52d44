"""Domain shift: validated parameters, MuJoCo model edits, and generic wrappers.

Model parameters (mass, friction, actuator_gain) multiply the compiled model's values, so
they need a model that lives as long as the task. Observation noise and action delay are
wrappers and work on any task.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Mapping

import numpy as np

from .base import TaskEnv, TaskWrapper

# Nominal values: a shift equal to these leaves the task unchanged.
NOMINAL: dict[str, float] = {
    "mass": 1.0,
    "friction": 1.0,
    "actuator_gain": 1.0,
    "obs_noise": 0.0,
    "action_delay": 0,
    "hazard_scale": 1.0,
}
MODEL_KEYS = ("mass", "friction", "actuator_gain")
# Task-specific: PointHazard-v0's keep-out disc (a real floor's marked zone is often larger
# than the one modelled in simulation).
TASK_KEYS = ("hazard_scale",)
WRAPPER_KEYS = ("obs_noise", "action_delay")

# What each value must be, as said in the error message.
_EXPECTED = {
    "mass": "a finite number > 0 (multiplier on body masses)",
    "friction": "a finite number >= 0 (multiplier on damping and friction)",
    "actuator_gain": "a finite number >= 0 (multiplier on motor gear)",
    "obs_noise": "a finite number >= 0 (std of Gaussian observation noise)",
    "action_delay": "an integer >= 0 (control steps of action lag)",
    "hazard_scale": "a finite number > 0 (multiplier on the hazard radius)",
}


def _bad(key: str, value) -> ValueError:
    return ValueError(f"shift parameter {key!r}: expected {_EXPECTED[key]}, got {value!r}")


def _check_value(key: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(key, value)
    v = float(value)
    if not math.isfinite(v):
        raise _bad(key, value)
    if key == "action_delay":
        if v < 0 or v != int(v):
            raise _bad(key, value)
        return int(v)
    if v < 0 or (key in ("mass", "hazard_scale") and v == 0):
        raise _bad(key, value)
    return v


def validate_shift(shift: Mapping, supported: Iterable[str], task: str) -> dict:
    """Check keys and values; return the shift with normalised types (float, int delay)."""
    supported = tuple(supported)
    out = {}
    for key, value in shift.items():
        if key not in NOMINAL:
            raise ValueError(
                f"unknown shift parameter {key!r} for {task}: expected one of "
                f"{', '.join(sorted(NOMINAL))}"
            )
        if key not in supported:
            raise ValueError(
                f"shift parameter {key!r} is not supported by {task} (its MuJoCo model is "
                f"rebuilt or not reachable); supported: {', '.join(supported)}"
            )
        out[key] = _check_value(key, value)
    return out


def scale_model(model, mass=1.0, friction=1.0, actuator_gain=1.0, bodies=None) -> None:
    """Multiply masses (and inertias, so shapes stay consistent), damping/friction, gear.

    bodies: body ids whose mass is scaled (default: every body but the world).
    """
    ids = np.arange(1, model.nbody) if bodies is None else np.asarray(bodies, dtype=int)
    if mass != 1.0:
        model.body_mass[ids] *= mass
        model.body_inertia[ids] *= mass
    if friction != 1.0:
        model.dof_damping[:] *= friction
        model.dof_frictionloss[:] *= friction
        model.geom_friction[:, 0] *= friction  # sliding friction only
    if actuator_gain != 1.0:
        model.actuator_gear[:] *= actuator_gain
    if mass != 1.0:
        # MuJoCo >= 2.3 takes the mass matrix of "simple" bodies (e.g. a point on slide
        # joints) from the compile-time dof_M0: without this the mass edit does nothing.
        import mujoco

        mujoco.mj_setConst(model, mujoco.MjData(model))


def _child_seed(seed: int | None, salt: int) -> np.random.SeedSequence:
    # A separate stream per wrapper, so adding noise never changes the task's own draws.
    return np.random.SeedSequence(None if seed is None else [int(seed), salt])


class ObsNoise(TaskWrapper):
    """Adds N(0, std^2) to every observation (reset and step), from its own seeded RNG."""

    _SALT = 0x5EED01

    def __init__(self, env: TaskEnv, std: float, seed: int | None = None) -> None:
        super().__init__(env)
        self.std = float(std)
        self._rng = np.random.default_rng(_child_seed(seed, self._SALT))

    def _noisy(self, obs: np.ndarray) -> np.ndarray:
        noise = self._rng.normal(0.0, self.std, size=obs.shape)
        return (obs + noise).astype(np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(_child_seed(seed, self._SALT))
        obs, info = self.env.reset(seed=seed, options=options)
        return self._noisy(obs), info

    def step(self, action):
        obs, reward, cost, terminated, truncated, info = self.env.step(action)
        return self._noisy(obs), reward, cost, terminated, truncated, info


class ActionDelay(TaskWrapper):
    """Applies the action given `delay` steps earlier; the first `delay` steps of an
    episode apply the neutral action (centre of the action box, zero for symmetric boxes)."""

    def __init__(self, env: TaskEnv, delay: int) -> None:
        super().__init__(env)
        self.delay = int(delay)
        spec = env.task_spec
        self._neutral = (np.asarray(spec.act_low) + np.asarray(spec.act_high)) / 2.0
        self._queue: deque = deque()

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._queue = deque(self._neutral.copy() for _ in range(self.delay))
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self._queue.append(self.env.unwrapped.clip_action(action))
        applied = self._queue.popleft()
        obs, reward, cost, terminated, truncated, info = self.env.step(applied)
        info["applied_action"] = applied
        return obs, reward, cost, terminated, truncated, info


def wrap_shift(env: TaskEnv, shift: Mapping, seed: int | None) -> TaskEnv:
    """Apply the wrapper-type shifts (delay innermost, so noise never sees the queue)."""
    delay = int(shift.get("action_delay", 0))
    if delay > 0:
        env = ActionDelay(env, delay)
    std = float(shift.get("obs_noise", 0.0))
    if std > 0.0:
        env = ObsNoise(env, std, seed)
    return env
