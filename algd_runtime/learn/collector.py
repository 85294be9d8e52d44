"""Collecting experience: the training task (one copy, or cfg.num_envs stepping together),
stepped with the agent's policy through the budget guard where there is one, each transition
written to the replay, and the episodes in progress kept so that a resume rebuilds them.

A resumed episode is rebuilt exactly: reset with its seed, then its actions replayed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from algd_runtime.learn.config import TrainConfig
from algd_runtime.learn.guard import BudgetGuard
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.sim import make_task
from algd_runtime.sim.conventions import apply_conventions


def make_training_task(cfg: TrainConfig):
    """One copy of the training task (module level: worker processes unpickle it)."""
    return apply_conventions(make_task(cfg.task, seed=cfg.seed, budget=cfg.budget, **cfg.shift), cfg.conventions,
                             cfg.seed)


def make_eval_task(cfg: TrainConfig):
    """The run's evaluation task (its own seed stream; under the reference conventions the
    training layout)."""
    return apply_conventions(make_task(cfg.task, seed=cfg.seed + 1, budget=cfg.budget, **cfg.shift), cfg.conventions,
                             cfg.seed)


def episode_seed(run_seed: int, episode: int) -> int:
    """Reset seed of training episode `episode`: independent streams per run seed."""
    return int(np.random.SeedSequence([run_seed, episode]).generate_state(1)[0])


@dataclass
class Episode:
    seed: int
    obs: np.ndarray
    actions: list = field(default_factory=list)
    ret: float = 0.0
    costs: list = field(default_factory=list)


@dataclass
class Finished:
    """A training episode that ended at this step."""
    episode: Episode
    index: int  # 0 for the run's first episode
    ended_by_guard: bool


class Collector:
    def __init__(self, cfg: TrainConfig, env, replay: ReplayBuffer, guard: BudgetGuard | None):
        self.cfg, self.env, self.replay, self.guard = cfg, env, replay, guard
        self.episodes = 0  # training episodes finished
        self.vec = None  # copies of the task stepping together (cfg.num_envs > 1)
        if cfg.num_envs > 1:
            if guard is not None:
                raise ValueError("num_envs: the budget guard steps one task; expected 1 with a guard")
            if not getattr(env, "replayable", True):
                raise ValueError("num_envs: a robot is one task; expected 1")
            from algd_runtime.sim.vector import make_vector_task

            self.vec = make_vector_task(functools.partial(make_training_task, cfg), cfg.num_envs, cfg.seed,
                                        asynchronous=cfg.vector_envs == "async")
        self.episode: Episode | None = None  # one task
        self.running: list[Episode] = []  # copies

    def start(self) -> None:
        """A new run's first episodes."""
        if self.vec is None:
            self.episode = self._new_episode()
        else:
            self.running = [Episode(seed=s["seed"], obs=o)
                            for s, o in zip(self.vec.get_attr("episode_state"), self.vec.reset()[0])]

    def step(self, act: Callable[[np.ndarray], np.ndarray],
             act_batch: Callable[[np.ndarray], np.ndarray]) -> Iterator[Finished | None]:
        """One step of every copy. Yields once per transition, after it is in the replay (the
        caller's updates run there), with the episode it ended, if any."""
        if self.vec is None:
            yield from self._step_one(act)
        else:
            yield from self._step_copies(act_batch)

    def _step_one(self, act) -> Iterator[Finished | None]:
        ep = self.episode
        action = act(ep.obs)
        if self.guard is not None:
            action = self.guard.act(ep.obs, action)
        next_obs, r, c, term, trunc, info = self.env.step(action)
        if not info.get("no_transition"):  # a robot that ended the episode itself: nothing to learn
            self.replay.add(ep.obs, action, r, c, next_obs, term)
        ep.actions.append(action)
        ep.obs, ep.ret = next_obs, ep.ret + r
        ep.costs.append(c)
        guard_ends = self.guard is not None and not (term or trunc) and self.guard.after_step(c)
        if not (term or trunc or guard_ends):
            yield None
            return
        yield self._finished(ep, guard_ends)
        self.episode = self._new_episode()

    def _step_copies(self, act_batch) -> Iterator[Finished | None]:
        """One batched policy call, then each copy's transition in turn."""
        actions = act_batch(np.stack([ep.obs for ep in self.running]))
        next_obs, rewards, terms, truncs, info = self.vec.step(actions)
        for i, ep in enumerate(self.running):
            done = bool(terms[i] or truncs[i])
            # A finished copy has already reset: its last observation and cost are in final_*.
            last_obs = info["final_observation"][i] if done else next_obs[i]
            cost = float(info["final_info"][i]["cost"] if done else info["cost"][i])
            self.replay.add(ep.obs, actions[i], float(rewards[i]), cost, last_obs, bool(terms[i]))
            ep.actions.append(actions[i])
            ep.obs, ep.ret = next_obs[i], ep.ret + float(rewards[i])
            ep.costs.append(cost)
            if not done:
                yield None
                continue
            yield self._finished(ep, False)
            self.running[i] = Episode(seed=-1, obs=next_obs[i])

    def _finished(self, ep: Episode, ended_by_guard: bool) -> Finished:
        self.episodes += 1
        return Finished(ep, self.episodes - 1, ended_by_guard)

    def _new_episode(self, seed: int | None = None) -> Episode:
        seed = episode_seed(self.cfg.seed, self.episodes) if seed is None else seed
        obs, _ = self.env.reset(seed=seed)
        if self.guard is not None:
            self.guard.begin_episode()
        return Episode(seed=seed, obs=obs)

    # -- resume ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The episodes in progress, for a checkpoint (tensors, not numpy arrays: policy.pt
        is read with weights_only=True)."""
        if self.vec is None:
            ep = self.episode
            return {"episodes": self.episodes,
                    "episode": {"seed": ep.seed, "obs": torch.from_numpy(ep.obs.copy()),
                                "actions": torch.from_numpy(self._actions(ep.actions)), "ret": ep.ret,
                                "costs": list(ep.costs)}}
        return {"episodes": self.episodes,
                "copies": [{"episodes": s["episodes"], "seed": s["seed"], "obs": torch.from_numpy(ep.obs.copy()),
                            "actions": torch.from_numpy(self._actions(s["actions"])), "ret": ep.ret,
                            "costs": list(ep.costs)}
                           for s, ep in zip(self.vec.get_attr("episode_state"), self.running)]}

    def _actions(self, actions) -> np.ndarray:
        return np.array(actions, np.float32).reshape(-1, self.env.task_spec.act_dim)

    def restore(self, ts: dict[str, Any]) -> str:
        """Rebuild the episodes in progress from a checkpoint's training state; returns how
        (for the resume message)."""
        self.episodes = ts["episodes"]
        if self.vec is not None:  # each copy replays its episode in its own process
            copies = ts["copies"]
            self.vec.set_attr("episode_state", [{"episodes": c["episodes"], "seed": c["seed"],
                                                 "actions": c["actions"].numpy()} for c in copies])
            self.running = [Episode(seed=c["seed"], obs=c["obs"].numpy(), actions=list(c["actions"].numpy()),
                                    ret=c["ret"], costs=list(c["costs"])) for c in copies]
            return f" ({len(copies)} copies)"
        if not getattr(self.env, "replayable", True):  # a robot: start a fresh episode instead
            self.episode = self._new_episode()
            return " (new episode)"
        # Rebuild the episode in progress by replaying its actions from its reset seed.
        ep = ts["episode"]
        self.episode = self._new_episode(seed=ep["seed"])
        actions = list(ep["actions"].numpy())
        for a in actions:
            self.episode.obs = self.env.step(a)[0]
        self.episode.actions = actions
        self.episode.ret, self.episode.costs = ep["ret"], list(ep["costs"])
        if not np.array_equal(self.episode.obs, ep["obs"].numpy()):
            self.episode = self._new_episode()
            return "; the environment did not replay deterministically, so a fresh episode starts"
        if self.guard is not None:
            self.guard.restore(self.episode.costs)
        return ""

    def close(self) -> None:
        if self.vec is not None:
            self.vec.close()
