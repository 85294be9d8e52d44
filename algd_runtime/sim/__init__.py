"""Tasks: Safety-Gymnasium adapter, the toy hazard task, domain shift.

    from algd_runtime.sim import make_task, TASK_NAMES, TaskSpec, UnknownTaskError
    env = make_task("PointHazard-v0", seed=0, obs_noise=0.01)
    obs, info = env.reset()
    obs, reward, cost, terminated, truncated, info = env.step(action)

Importing this package is cheap (numpy only); simulators load when a task is made.
"""

from .base import TaskEnv, TaskWrapper
from .spec import COST_SEMANTICS, TaskSpec
from .tasks import TASK_NAMES, UnknownTaskError, make_task, random_policy_baseline

__all__ = [
    "COST_SEMANTICS",
    "TASK_NAMES",
    "TaskEnv",
    "TaskSpec",
    "TaskWrapper",
    "UnknownTaskError",
    "make_task",
    "random_policy_baseline",
]
