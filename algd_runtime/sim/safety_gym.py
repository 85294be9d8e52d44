"""Safety-Gymnasium tasks behind the sim/ task interface.

Budgets follow the ALGD authors (ALGD.md):
- navigation: 400-step episodes, at most 10 cost per episode, cost mask forced to 1;
- velocity: 1000-step episodes, discounted (0.99) cost sum under Hopper 82.748,
  HalfCheetah 151.989, Ant 103.115, Humanoid 20.140.
Those velocity budgets were set for cost = |x velocity| (planar speed where the robot
also moves in y). Safety-Gymnasium's v1 tasks instead return an indicator (speed above a
threshold), whose discounted sum never exceeds 100 and would make Hopper's 82.748 almost
free; so the velocity cost is recomputed from info as the authors define it, and the native
indicator is kept in info["cost_indicator"].

`budget="safety_gymnasium"` keeps the benchmark's own budget instead, the one OmniSafe and
most safe-RL papers report: native costs (the velocity indicator), Safety-Gymnasium's
1000-step episodes and at most 25 cost per episode. The side-by-side with OmniSafe's SACLag
uses it, so that both learners are held to one limit on one cost.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .base import TaskEnv
from .shift import MODEL_KEYS, NOMINAL, WRAPPER_KEYS, scale_model, validate_shift, wrap_shift
from .spec import TaskSpec


@dataclass(frozen=True)
class _Budget:
    episode_length: int
    cost_limit: float
    cost_semantics: str
    cost_mask_always_one: bool
    velocity: bool  # recompute the ALGD velocity cost


_NAV = _Budget(400, 10.0, "episode", True, False)


def _vel(limit: float) -> _Budget:
    return _Budget(1000, limit, "discounted", False, True)


BUDGETS: dict[str, _Budget] = {
    "SafetyPointGoal1-v0": _NAV,
    "SafetyPointButton1-v0": _NAV,
    "SafetyCarButton1-v0": _NAV,
    "SafetyPointPush1-v0": _NAV,
    "SafetyHopperVelocity-v1": _vel(82.748),
    "SafetyHalfCheetahVelocity-v1": _vel(151.989),
    "SafetyAntVelocity-v1": _vel(103.115),
    "SafetyHumanoidVelocity-v1": _vel(20.140),
}

BUDGET_SOURCES = ("algd", "safety_gymnasium")


def budget_of(name: str, source: str = "algd") -> _Budget:
    if source not in BUDGET_SOURCES:
        raise ValueError(f"budget: expected one of {BUDGET_SOURCES}, got {source!r}")
    if source == "algd":
        return BUDGETS[name]
    return _Budget(1000, 25.0, "episode", BUDGETS[name].cost_mask_always_one, velocity=False)


_SKYBOX = re.compile(r'<texture[^>]*type="skybox"[^>]*?(/>|>\s*</texture>)')


class _NoSkyboxModel:
    """mujoco.MjModel, except from_xml_string drops the skybox texture first."""

    def __init__(self, mujoco) -> None:
        self._mujoco = mujoco

    def from_xml_string(self, xml, *args, **kwargs):
        return self._mujoco.MjModel.from_xml_string(_SKYBOX.sub("", xml), *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._mujoco.MjModel, name)


class _MujocoNoSkybox:
    """Stands in for `mujoco` inside safety_gymnasium.world only."""

    def __init__(self, mujoco) -> None:
        self.MjModel = _NoSkyboxModel(mujoco)
        self._mujoco = mujoco

    def __getattr__(self, name):
        return getattr(self._mujoco, name)


def _import_safety_gymnasium():
    """Import with the 3.11 fix; make navigation resets cheap.

    Navigation tasks rebuild and recompile their MJCF on every reset, and decoding the six
    star_hd skybox PNGs takes ~0.9 s of that (the rest is ~20 ms). The skybox is only a
    render background: it changes no physics and no vector observation, so the world
    module compiles without it.
    """
    from . import sg_import_fix

    sg_import_fix.install()
    import mujoco
    import safety_gymnasium
    import safety_gymnasium.world as world

    if not isinstance(world.mujoco, _MujocoNoSkybox):
        world.mujoco = _MujocoNoSkybox(mujoco)
    return safety_gymnasium


class SafetyGymEnv(TaskEnv):
    """One Safety-Gymnasium task: float32 observations, float reward/cost, clipped actions."""

    def __init__(self, name: str, seed: int | None = 0, mass=1.0, friction=1.0,
                 actuator_gain=1.0, budget: str = "algd") -> None:
        from gymnasium.spaces import Box

        source, budget = budget, budget_of(name, budget)
        sg = _import_safety_gymnasium()
        self._budget = budget
        self._env = sg.make(name, max_episode_steps=budget.episode_length,
                            disable_env_checker=True)
        if (mass, friction, actuator_gain) != (1.0, 1.0, 1.0):
            scale_model(self._env.unwrapped.model, mass, friction, actuator_gain)
        obs_space, act_space = self._env.observation_space, self._env.action_space
        obs_dim, act_dim = int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
        self.task_spec = TaskSpec(
            name=name, obs_dim=obs_dim, act_dim=act_dim,
            act_low=tuple(float(x) for x in act_space.low.reshape(-1)),
            act_high=tuple(float(x) for x in act_space.high.reshape(-1)),
            episode_length=budget.episode_length, cost_limit=budget.cost_limit,
            cost_semantics=budget.cost_semantics, cost_gamma=0.99,
            cost_mask_always_one=budget.cost_mask_always_one,
            # No bound known: the velocity cost here is the speed (see velocity_cost), not
            # Safety-Gymnasium's 0/1 indicator; navigation costs add up over hazards.
            max_step_cost=None, budget=source,
        )
        self.observation_space = Box(
            obs_space.low.reshape(-1).astype(np.float32),
            obs_space.high.reshape(-1).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = Box(act_space.low.astype(np.float32),
                                act_space.high.astype(np.float32), dtype=np.float32)
        self._act_shape = act_space.shape
        self._next_seed = seed  # used by the first reset that is given none
        self._done = True

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        else:
            self._next_seed = None
        obs, info = self._env.reset(seed=seed, options=options)
        self._done = False
        return np.asarray(obs, dtype=np.float32).reshape(-1), dict(info)

    def step(self, action):
        if self._done:
            raise RuntimeError(f"{self.task_spec.name}: the episode is over; call reset()")
        a = self.clip_action(action).reshape(self._act_shape)
        obs, reward, cost, terminated, truncated, info = self._env.step(a)
        if self._budget.velocity:
            info["cost_indicator"] = float(cost)
            cost = velocity_cost(info)
        self._done = bool(terminated or truncated)
        return (np.asarray(obs, dtype=np.float32).reshape(-1), float(reward), float(cost),
                bool(terminated), bool(truncated), info)

    def close(self) -> None:
        self._env.close()


def velocity_cost(info: dict) -> float:
    """ALGD's velocity cost: planar speed where y velocity exists, else |x velocity|."""
    vx = float(info["x_velocity"])
    if "y_velocity" in info:
        return math.hypot(vx, float(info["y_velocity"]))
    return abs(vx)


def supported_shift(name: str) -> tuple[str, ...]:
    # Navigation worlds are recompiled every reset, so model edits would not last.
    return (MODEL_KEYS + WRAPPER_KEYS) if BUDGETS[name].velocity else WRAPPER_KEYS


def make_safety_gym(name: str, seed: int | None = 0, budget: str = "algd", **shift) -> TaskEnv:
    from dataclasses import replace

    shift = validate_shift(shift, supported_shift(name), name)
    model_kw = {k: shift.get(k, NOMINAL[k]) for k in MODEL_KEYS if k in shift}
    env = SafetyGymEnv(name, seed=seed, budget=budget, **model_kw)
    env.task_spec = replace(env.task_spec, shift=dict(shift))
    return wrap_shift(env, shift, seed)
