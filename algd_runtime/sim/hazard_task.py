"""PointHazard-v0: a small, fast MuJoCo task of our own (model in assets/point_hazard.xml).

A point robot starts on the left, the goal is on the right, a hazard disc sits on the
straight line between them. The greedy straight path costs ~15-25 per episode, over the
limit of 5; a detour around the disc costs 0 and loses little reward. Learnable by an
off-policy agent in a few tens of thousands of steps, and ~10^4 steps/s on one core.

Observation (float32, 8): [x, y, vx, vy, goal_x - x, goal_y - y, hazard_x - x, hazard_y - y]
Action (2): force in x and y, in [-1, 1] (times the motor gear).
Reward: 5 x (previous goal distance - current distance) per step (~14 for the whole
approach), +10 on reaching the goal (terminated=True). Cost: 1 per step with the robot
centre inside the hazard disc. Episodes are truncated after 200 steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import TaskEnv
from .shift import MODEL_KEYS, NOMINAL, TASK_KEYS, WRAPPER_KEYS, scale_model, validate_shift, wrap_shift
from .spec import TaskSpec

NAME = "PointHazard-v0"
XML_PATH = Path(__file__).parent / "assets" / "point_hazard.xml"

EPISODE_LENGTH = 200
COST_LIMIT = 5.0
FRAME_SKIP = 5  # 5 x 0.01 s = 0.05 s per control step
PROGRESS_SCALE = 5.0
GOAL_BONUS = 10.0
START = (-1.5, 0.0)
GOAL = (1.5, 0.0)
HAZARD = (0.0, 0.0)
# Uniform jitter half-widths (x, y): start and goal also move across the line, so the
# detour side varies, but the straight line always crosses the disc well inside.
START_JITTER = (0.15, 0.2)
GOAL_JITTER = (0.15, 0.2)
HAZARD_JITTER = (0.1, 0.1)

SUPPORTED_SHIFT = MODEL_KEYS + WRAPPER_KEYS + TASK_KEYS


class PointHazardEnv(TaskEnv):
    """The bare task (no noise/delay wrappers; make_task adds those)."""

    def __init__(self, seed: int | None = 0, mass=1.0, friction=1.0, actuator_gain=1.0, hazard_scale=1.0):
        import mujoco  # lazily: `import algd_runtime.sim` stays cheap
        from gymnasium.spaces import Box

        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(XML_PATH))
        self.data = mujoco.MjData(self.model)
        robot = self.model.body("robot").id
        scale_model(self.model, mass, friction, actuator_gain, bodies=[robot])
        self.model.geom("hazard").size[0] *= hazard_scale  # drawn and costed at the same size
        self.hazard_radius = float(self.model.geom("hazard").size[0])
        self.goal_radius = float(self.model.geom("goal").size[0])
        self._goal_mocap = int(self.model.body("goal").mocapid[0])
        self._hazard_mocap = int(self.model.body("hazard").mocapid[0])

        self.task_spec = TaskSpec(
            name=NAME, obs_dim=8, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0),
            episode_length=EPISODE_LENGTH, cost_limit=COST_LIMIT, cost_semantics="episode",
            cost_gamma=0.99, cost_mask_always_one=False, max_step_cost=1.0,  # 1 per step inside the hazard
        )
        self.observation_space = Box(-np.inf, np.inf, (8,), np.float32)
        self.action_space = Box(-1.0, 1.0, (2,), np.float32)
        self._rng = np.random.default_rng(seed)
        self.goal = np.array(GOAL)
        self.hazard = np.array(HAZARD)
        self._t = 0
        self._prev_dist = 0.0
        self._done = True

    # -- helpers ---------------------------------------------------------------------
    def _jitter(self, centre, half) -> np.ndarray:
        return np.asarray(centre) + self._rng.uniform(-1.0, 1.0, 2) * np.asarray(half)

    def _obs(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        x, y = q[0], q[1]
        return np.array(
            [x, y, v[0], v[1], self.goal[0] - x, self.goal[1] - y,
             self.hazard[0] - x, self.hazard[1] - y],
            dtype=np.float32,
        )

    # -- API -------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        start = self._jitter(START, START_JITTER)
        self.goal = self._jitter(GOAL, GOAL_JITTER)
        self.hazard = self._jitter(HAZARD, HAZARD_JITTER)
        self._mj.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = start
        self.data.mocap_pos[self._goal_mocap, :2] = self.goal
        self.data.mocap_pos[self._hazard_mocap, :2] = self.hazard
        self._mj.mj_forward(self.model, self.data)
        self._t = 0
        self._prev_dist = float(np.hypot(*(self.goal - start)))
        self._done = False
        info = {"goal": self.goal.copy(), "hazard": self.hazard.copy(),
                "hazard_radius": self.hazard_radius}
        return self._obs(), info

    def step(self, action):
        if self._done:
            raise RuntimeError(f"{NAME}: the episode is over; call reset() before step()")
        self.data.ctrl[:] = self.clip_action(action)
        self._mj.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        x, y = float(self.data.qpos[0]), float(self.data.qpos[1])
        dist = math.hypot(self.goal[0] - x, self.goal[1] - y)
        reward = PROGRESS_SCALE * (self._prev_dist - dist)
        self._prev_dist = dist
        in_hazard = math.hypot(self.hazard[0] - x, self.hazard[1] - y) < self.hazard_radius
        cost = 1.0 if in_hazard else 0.0
        terminated = dist < self.goal_radius
        if terminated:
            reward += GOAL_BONUS
        self._t += 1
        truncated = (not terminated) and self._t >= EPISODE_LENGTH
        self._done = terminated or truncated
        info = {"goal_reached": terminated, "in_hazard": in_hazard}
        return self._obs(), float(reward), cost, terminated, truncated, info


def make_point_hazard(seed: int | None = 0, **shift) -> TaskEnv:
    """PointHazard-v0 with domain shift applied (model edits, then noise/delay wrappers)."""
    shift = validate_shift(shift, SUPPORTED_SHIFT, NAME)
    model_kw = {k: shift.get(k, NOMINAL[k]) for k in MODEL_KEYS + TASK_KEYS}
    env = PointHazardEnv(seed=seed, **model_kw)
    env.task_spec = _with_shift(env.task_spec, shift)
    return wrap_shift(env, shift, seed)


def _with_shift(spec: TaskSpec, shift: dict) -> TaskSpec:
    from dataclasses import replace

    return replace(spec, shift=dict(shift))


# -- scripted policies (tests, baselines, reports) -------------------------------------
def scripted_action(obs, mode: str = "around", hazard_radius: float = 0.55) -> np.ndarray:
    """A PD controller on the observation: "straight" heads for the goal through the
    hazard; "around" heads for a waypoint 0.3 m beside the disc while the line to the goal
    passes within 0.1 m of it (the gap between the two is the hysteresis), then for the goal."""
    obs = np.asarray(obs, dtype=np.float64)
    vel, to_goal, to_hazard = obs[2:4], obs[4:6], obs[6:8]
    target = to_goal
    if mode == "around":
        g = to_goal / (np.linalg.norm(to_goal) + 1e-9)
        ahead = float(to_hazard @ g)  # hazard centre's distance along the goal direction
        lateral = to_hazard - ahead * g  # from the robot's line to the hazard centre
        gap = float(np.linalg.norm(lateral))
        if ahead > 0.0 and gap < hazard_radius + 0.1:
            # Pass on the side the robot is already on (any side if dead centre).
            side = -lateral / gap if gap > 1e-6 else np.array([-g[1], g[0]])
            target = to_hazard + side * (hazard_radius + 0.3)
    elif mode != "straight":
        raise ValueError(f"mode: expected 'straight' or 'around', got {mode!r}")
    return np.clip(3.0 * target - 0.5 * vel, -1.0, 1.0)
