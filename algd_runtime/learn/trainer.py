"""The online off-policy loop: warm-up, updates, evaluation, logging, checkpoints, resume.

Exact resume: a checkpoint holds the networks, optimisers, multiplier, counters, the torch
and numpy RNG states, the replay (own file) and the episode in progress as (reset seed,
actions so far). Resuming resets the environment with that seed and replays the actions,
which rebuilds the simulator state exactly, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import csv
import functools
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import (CheckpointError, agent_from_checkpoint, load_checkpoint,
                                     save_checkpoint)
from algd_runtime.learn.config import TrainConfig, config_from_dict
from algd_runtime.learn.guard import BudgetGuard, GuardConfig
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.sim import make_task
from algd_runtime.sim.conventions import apply_conventions
from algd_runtime.sim.spec import TaskSpec

POLICY_FILE = "policy.pt"


def _make_training_task(cfg: TrainConfig):
    """One copy of the training task (module level: worker processes unpickle it)."""
    return apply_conventions(make_task(cfg.task, seed=cfg.seed, budget=cfg.budget, **cfg.shift), cfg.conventions,
                             cfg.seed)


def make_eval_task(cfg: TrainConfig):
    """The run's evaluation task (its own seed stream; under the reference conventions the
    training layout)."""
    return apply_conventions(make_task(cfg.task, seed=cfg.seed + 1, budget=cfg.budget, **cfg.shift), cfg.conventions,
                             cfg.seed)


def eval_seed_of(run_seed: int) -> int:
    """First reset seed of a run's evaluations (episode i resets with it + i)."""
    return 1_000_000 + run_seed * 1000


def episode_seed(run_seed: int, episode: int) -> int:
    """Reset seed of training episode `episode`: independent streams per run seed."""
    return int(np.random.SeedSequence([run_seed, episode]).generate_state(1)[0])


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


@dataclass
class _Episode:
    seed: int
    obs: np.ndarray
    actions: list = field(default_factory=list)
    ret: float = 0.0
    costs: list = field(default_factory=list)


class _CsvLog:
    """Appends rows; on resume drops rows written after the checkpoint's step."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None):
        self.path, self.fields = path, fields
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            self._rewrite(rows)
        else:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)


EVAL_FIELDS = ["step", "time_s", "cpu_s", "return_mean", "return_std", "cost_mean", "cost_std", "cost_limit",
                "violations", "episodes", "lambda", "grad_steps"]
_TRAIN_FIELDS = ["step", "time_s", "episodes", "train_return", "train_cost", "lambda", "critic_loss",
                 "cost_critic_loss", "actor_loss", "score_loss", "lambda_loss", "q_policy",
                 "qc_policy", "qc_replay", "grad_steps", "steps_per_s"]


_EPISODE_FIELDS = ["step", "episode", "return", "cost", "cost_limit", "length", "ended_by_guard", "shielded_steps"]


# What a run writes in its folder: what --force removes to start over (nothing else).
RUN_FILES = ("policy.pt", "progress.csv", "train.csv", "episodes.csv", "tb", "replay-*.npz")
# Config changes a resumed run takes (printed): they change how long or where it runs, not
# what it learns. Any other change is refused.
RESUME_MAY_CHANGE = ("total_steps", "device", "num_threads", "eval_every", "eval_episodes", "log_every",
                     "checkpoint_every", "preset")  # preset: a name; what it sets is compared key by key


def _check_run_dir(run_dir: Path, resume: bool, force: bool, echo: Callable[[str], None]) -> None:
    """A new run never writes into another one: a folder holding a run needs --resume (to
    continue it) or --force (to start over: the run's own files are removed, nothing else)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out: {run_dir} is a file; expected a folder for the run (nothing was written)")
    if resume or not run_dir.is_dir():
        return
    ours = [p for pattern in RUN_FILES for p in run_dir.glob(pattern)]
    if not ours:
        return
    if not force:
        what = "a finished or interrupted run" if (run_dir / POLICY_FILE).exists() else "a run's files"
        raise ValueError(f"{run_dir} holds {what} ({', '.join(sorted(p.name for p in ours)[:4])}); continue it "
                         f"with --resume, or start over with --force (nothing was changed)")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    echo(f"--force: removed the earlier run in {run_dir} ({len(ours)} files and folders)")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "shift" else {f"{prefix}{k}": v})
    return out


def _resumed_config(stored: TrainConfig, given: TrainConfig, where: Path, echo: Callable[[str], None]) -> TrainConfig:
    """The run's own config, with the changes a resume may take (RESUME_MAY_CHANGE) applied
    and printed; any other change is refused, listed."""
    old, new = _flat(stored.to_dict()), _flat(given.to_dict())
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        listed = ", ".join(f"{k} (run: {a!r}, given: {b!r})" for k, (a, b) in list(refused.items())[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise ValueError(f"--resume: the config differs from the run's in {where}: {listed}{more}; resume with the "
                         f"run's config, or start over with --force (may change on resume: "
                         f"{', '.join(RESUME_MAY_CHANGE)})")
    for k, (a, b) in changed.items():
        setattr(stored, k, b)
        echo(f"resume: {k} {a!r} -> {b!r}")
    return stored


def budget_words(spec: TaskSpec) -> str:
    """What a run is held to, in words: two runs held to different limits must say so."""
    if spec.cost_semantics == "discounted":
        return (f"cost limit {spec.cost_limit:g} on the discounted cost sum (gamma_c {spec.cost_gamma:g}) of a "
                f"{spec.episode_length}-step episode")
    return f"cost limit {spec.cost_limit:g} on the cost summed over a {spec.episode_length}-step episode"


class Trainer:
    """Trains `cfg` in `run_dir`. Fine-tuning passes what it starts from: `env` (and
    `eval_env`, else no evaluation) instead of cfg.task, an `agent`, a `replay`, and a
    `guard` config that puts the budget guard (guard.py) between the policy and the task."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, echo: Callable[[str], None] = print, *, force: bool = False, env=None,
                 eval_env=None,
                 agent: ALGDAgent | None = None, replay: ReplayBuffer | None = None,
                 guard: GuardConfig | None = None, origin: str = "trained",
                 on_evaluation: Callable[[EvalResult, "Trainer"], None] | None = None):
        self.cfg, self.run_dir, self.echo, self.progress = cfg, Path(run_dir), echo, progress
        self.origin = origin
        self.on_evaluation = on_evaluation  # called after each evaluation (fine-tuning keeps its best)
        self.policy_path = self.run_dir / POLICY_FILE
        _check_run_dir(self.run_dir, resume, force, echo)
        device = cfg.device
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

        ckpt = self._read_resume_checkpoint() if resume else None
        if ckpt is not None:
            self.cfg = cfg = _resumed_config(config_from_dict(ckpt["config"], check_task=False), cfg,
                                             self.policy_path, echo)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        if env is None:
            # Under the reference conventions training and evaluation share one layout.
            env, eval_env = _make_training_task(cfg), make_eval_task(cfg)
        self.env, self.eval_env = env, eval_env
        self.spec: TaskSpec = self.env.task_spec
        self.vec = None  # copies of the task stepping together (cfg.num_envs > 1)
        if cfg.num_envs > 1:
            if guard is not None:
                raise ValueError("num_envs: the budget guard steps one task; expected 1 with a guard")
            if not getattr(self.env, "replayable", True):
                raise ValueError("num_envs: a robot is one task; expected 1")
            from algd_runtime.sim.vector import make_vector_task

            self.vec = make_vector_task(functools.partial(_make_training_task, cfg), cfg.num_envs, cfg.seed,
                                        asynchronous=cfg.vector_envs == "async")
        self.eval_seed = eval_seed_of(cfg.seed)
        self.epoch_length = cfg.epoch_length or self.spec.episode_length
        self.replay = replay if replay is not None else ReplayBuffer(cfg.replay_size, self.spec.obs_dim,
                                                                     self.spec.act_dim)
        self.env_steps = self.episodes = self.updates_this_epoch = 0
        self.elapsed = 0.0
        self.cpu_s = 0.0  # this process's CPU time: equal compute on a shared machine (algd-sweep)
        self.recent: list[tuple[float, float]] = []  # (return, cost) of recent training episodes
        self._stop_requested = False

        if ckpt is None:
            self.agent = agent or ALGDAgent(self.spec, cfg.algo, device, cfg.conventions)
            self.guard = BudgetGuard(self.agent, guard) if guard else None
            if self.vec is None:
                self.episode = self._new_episode()
            else:
                self.running = [_Episode(seed=s["seed"], obs=o)
                                for s, o in zip(self.vec.get_attr("episode_state"), self.vec.reset()[0])]
        else:
            self.agent = agent_from_checkpoint(ckpt, device)
            self.guard = BudgetGuard(self.agent, guard) if guard else None
            self._restore(ckpt)
        resume_step = self.env_steps if ckpt is not None else None
        self.run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder
        self.eval_log = _CsvLog(self.run_dir / "progress.csv", EVAL_FIELDS, resume_step)
        self.train_log = _CsvLog(self.run_dir / "train.csv", _TRAIN_FIELDS, resume_step)
        self.episode_log = _CsvLog(self.run_dir / "episodes.csv", _EPISODE_FIELDS, resume_step)
        self.tb = self._tensorboard()

    # -- resume ---------------------------------------------------------------------------
    def _read_resume_checkpoint(self) -> dict | None:
        if not self.policy_path.exists() and any(p for pattern in RUN_FILES for p in self.run_dir.glob(pattern)):
            raise ValueError(f"--resume: {self.run_dir} has no {POLICY_FILE} to resume from, but holds a run's "
                             f"files; start over with --force (nothing was changed)")
        if not self.policy_path.exists():
            self.echo(f"--resume: no {self.policy_path} yet; starting a new run")
            return None
        ckpt = load_checkpoint(self.policy_path)
        if ckpt.get("origin") not in ("trained", "finetune") or not ckpt.get("train_state"):
            raise CheckpointError(f"{self.policy_path}: holds no training state to resume from")
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        ts = ckpt["train_state"]
        self.env_steps, self.episodes = ts["env_steps"], ts["episodes"]
        self.updates_this_epoch, self.elapsed = ts["updates_this_epoch"], ts["elapsed"]
        self.cpu_s = ts.get("cpu_s", 0.0)  # absent from checkpoints before it was logged
        self.recent = [tuple(x) for x in ts["recent"]]
        if ckpt.get("replay_file"):
            replay_path = self.run_dir / ckpt["replay_file"]
            if not replay_path.exists():
                raise CheckpointError(f"{replay_path}: replay file named by {self.policy_path} is missing")
            self.replay = ReplayBuffer.load(replay_path)
            if self.replay.size != min(ts["replay_size"], self.replay.capacity):
                raise CheckpointError(f"{replay_path}: holds {self.replay.size} transitions, "
                                      f"{self.policy_path} expects {ts['replay_size']}")
        elif self.env_steps > 0:
            self.echo("resume: the checkpoint has no replay file; continuing with an empty replay")
        torch.set_rng_state(ts["torch_rng"])
        if torch.cuda.is_available() and ts.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ts["cuda_rng"])
        self.rng.bit_generator.state = ts["numpy_rng"]
        if self.vec is not None:  # each copy replays its episode in its own process
            copies = ts["copies"]
            self.vec.set_attr("episode_state", [{"episodes": c["episodes"], "seed": c["seed"],
                                                 "actions": c["actions"].numpy()} for c in copies])
            self.running = [_Episode(seed=c["seed"], obs=c["obs"].numpy(), actions=list(c["actions"].numpy()),
                                     ret=c["ret"], costs=list(c["costs"])) for c in copies]
            self.echo(f"resumed from {self.policy_path} at step {self.env_steps} ({len(copies)} copies)")
            return
        # Rebuild the episode in progress by replaying its actions from its reset seed.
        ep = ts["episode"]
        if not getattr(self.env, "replayable", True):  # a robot: start a fresh episode instead
            self.episode = self._new_episode()
            self.echo(f"resumed from {self.policy_path} at step {self.env_steps} (new episode)")
            return
        self.episode = self._new_episode(seed=ep["seed"])
        actions = list(ep["actions"].numpy())
        for a in actions:
            self.episode.obs = self.env.step(a)[0]
        self.episode.actions = actions
        self.episode.ret, self.episode.costs = ep["ret"], list(ep["costs"])
        if not np.array_equal(self.episode.obs, ep["obs"].numpy()):
            self.echo("resume: the environment did not replay deterministically; starting a fresh episode")
            self.episode = self._new_episode()
        elif self.guard is not None:
            self.guard.restore(self.episode.costs)
        self.echo(f"resumed from {self.policy_path} at step {self.env_steps}")

    def _train_state(self) -> dict[str, Any]:
        state = {
            "env_steps": self.env_steps, "episodes": self.episodes,
            "updates_this_epoch": self.updates_this_epoch, "elapsed": self.elapsed, "cpu_s": self.cpu_s,
            "recent": [list(x) for x in self.recent], "replay_size": self.replay.size,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": self.rng.bit_generator.state,
        }
        # Tensors, not numpy arrays: policy.pt is read with weights_only=True.
        if self.vec is None:
            ep = self.episode
            state["episode"] = {"seed": ep.seed, "obs": torch.from_numpy(ep.obs.copy()),
                                "actions": torch.from_numpy(self._actions(ep.actions)), "ret": ep.ret,
                                "costs": list(ep.costs)}
        else:
            state["copies"] = [{"episodes": s["episodes"], "seed": s["seed"], "obs": torch.from_numpy(ep.obs.copy()),
                                "actions": torch.from_numpy(self._actions(s["actions"])), "ret": ep.ret,
                                "costs": list(ep.costs)}
                               for s, ep in zip(self.vec.get_attr("episode_state"), self.running)]
        return state

    def _actions(self, actions) -> np.ndarray:
        return np.array(actions, np.float32).reshape(-1, self.spec.act_dim)

    def save(self) -> Path:
        """Replay first, under a name that carries the step, then policy.pt (which names it):
        a crash in between leaves the previous pair intact."""
        replay_name = None
        if self.cfg.save_replay:
            replay_name = f"replay-{self.env_steps:010d}.npz"
            self.replay.save(self.run_dir / replay_name)
        save_checkpoint(self.policy_path, self.agent, self.cfg.to_dict(), self._train_state(), replay_name,
                        origin=self.origin)
        for old in self.run_dir.glob("replay-*.npz"):
            if old.name != replay_name:
                old.unlink()
        return self.policy_path

    # -- the loop ---------------------------------------------------------------------------
    def _new_episode(self, seed: int | None = None) -> _Episode:
        seed = episode_seed(self.cfg.seed, self.episodes) if seed is None else seed
        obs, _ = self.env.reset(seed=seed)
        if self.guard is not None:
            self.guard.begin_episode()
        return _Episode(seed=seed, obs=obs)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.echo("tensorboard not installed: CSV logs only")
            return None
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.env_steps or None)

    def _maybe_update(self, acc: dict[str, list[float]]) -> None:
        cfg = self.cfg
        since = self.env_steps - cfg.warmup_steps - 1  # 0 at the first post-warm-up step
        if since < 0:
            return
        if since % self.epoch_length == 0:
            self.updates_this_epoch = 0
        if len(self.replay) <= cfg.min_replay:
            return
        # The reference schedule: in the first epoch at most `cap` updates per env step.
        if self.updates_this_epoch > cfg.first_epoch_update_cap * since:
            return
        for i in range(cfg.updates_per_step):
            stats = self.agent.update(self.replay.sample(cfg.algo.batch_size, self.rng), repeat_index=i,
                                      actor=self.env_steps > cfg.actor_delay_steps)
            for k, v in stats.items():
                acc.setdefault(k, []).append(v)
        self.updates_this_epoch += cfg.updates_per_step

    def _install_stop_handlers(self) -> dict:
        """Ctrl-C / SIGTERM finish the current step, save and return (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(self) -> None:
        """Finish the current step, save and return from run() (e.g. at a time limit)."""
        self._stop_requested = True

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.echo(f"budget: {budget_words(self.spec)} ({cfg.budget} budget)")
        self.echo(f"updates: {'fast' if cfg.algo.fast_update else 'eager'}, networks in {self.agent.precision}")
        bar = None
        if self.progress:
            from algd_runtime.learn.progress import progress_bar

            bar = progress_bar(cfg.total_steps, self.env_steps, f"{cfg.task} seed {cfg.seed}")
        handlers = self._install_stop_handlers()
        acc: dict[str, list[float]] = {}
        last_eval: EvalResult | None = None
        t0, steps0, elapsed0 = time.perf_counter(), self.env_steps, self.elapsed
        c0, cpu0 = time.process_time(), self.cpu_s
        next_ckpt = self._next_multiple(cfg.checkpoint_every)
        next_eval = self._next_multiple(cfg.eval_every)
        next_log = self._next_multiple(cfg.log_every)
        try:
            while self.env_steps < cfg.total_steps and not self._stop_requested:
                before = self.env_steps
                if self.vec is None:
                    self._step_one(acc)
                else:
                    self._step_copies(acc)
                if bar is not None:
                    bar.update(self.env_steps - before)
                self.elapsed = now = elapsed0 + time.perf_counter() - t0
                self.cpu_s = cpu0 + time.process_time() - c0
                if self.env_steps >= next_log:
                    next_log += cfg.log_every
                    rate = (self.env_steps - steps0) / max(time.perf_counter() - t0, 1e-9)
                    self._log_train(acc, now, rate)
                    acc = {}
                    if bar is not None and self.recent:
                        bar.set_postfix(lam=f"{self.agent.lam:.3f}", ret=f"{self.recent[-1][0]:.1f}",
                                        cost=f"{self.recent[-1][1]:.1f}", refresh=False)
                if self.env_steps >= next_eval and self.env_steps < cfg.total_steps and self.eval_env is not None:
                    next_eval += cfg.eval_every
                    last_eval = self._evaluate(now, bar)
                if self.env_steps >= next_ckpt and self.env_steps < cfg.total_steps:
                    next_ckpt += cfg.checkpoint_every
                    self.save()
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            if bar is not None:
                bar.close()
        self.elapsed = elapsed0 + time.perf_counter() - t0
        self.cpu_s = cpu0 + time.process_time() - c0
        interrupted = self._stop_requested
        if not interrupted and self.eval_env is not None:
            last_eval = self._evaluate(self.elapsed, None)
        self.save()
        if self.tb is not None:
            self.tb.close()
        if self.vec is not None:
            self.vec.close()
        if interrupted:
            self.echo(f"interrupted at step {self.env_steps}: saved {self.policy_path}; "
                      f"continue with --resume")
        return {"policy": str(self.policy_path), "env_steps": self.env_steps, "interrupted": interrupted,
                "elapsed_s": self.elapsed, "lambda": self.agent.lam, "eval": last_eval}

    def _step_one(self, acc: dict[str, list[float]]) -> None:
        ep = self.episode
        action = self.agent.act(ep.obs)
        if self.guard is not None:
            action = self.guard.act(ep.obs, action)
        next_obs, r, c, term, trunc, info = self.env.step(action)
        if not info.get("no_transition"):  # a robot that ended the episode itself: nothing to learn
            self.replay.add(ep.obs, action, r, c, next_obs, term)
        ep.actions.append(action)
        ep.obs, ep.ret = next_obs, ep.ret + r
        ep.costs.append(c)
        self.env_steps += 1
        guard_ends = self.guard is not None and not (term or trunc) and self.guard.after_step(c)
        self._maybe_update(acc)
        if term or trunc or guard_ends:
            self._log_episode(ep, guard_ends)
            self.episode = self._new_episode()

    def _step_copies(self, acc: dict[str, list[float]]) -> None:
        """One step of every copy: one batched policy call, then each copy's transition in
        turn (its replay entry, its share of the updates, its episode's end)."""
        actions = self.agent.act_batch(np.stack([ep.obs for ep in self.running]))
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
            self.env_steps += 1
            self._maybe_update(acc)
            if done:
                self._log_episode(ep, False)
                self.running[i] = _Episode(seed=-1, obs=next_obs[i])

    def _log_episode(self, ep: _Episode, ended_by_guard: bool) -> None:
        cost = self.spec.episode_cost(ep.costs)
        if self.agent.cfg.dual == "episode_cost" and self.agent.grad_steps > 0:
            self.agent.dual_from_episode(cost, self.spec.cost_limit)
        self.recent = (self.recent + [(ep.ret, cost)])[-20:]
        self.episode_log.write({"step": self.env_steps, "episode": self.episodes, "return": ep.ret, "cost": cost,
                                "cost_limit": self.spec.cost_limit, "length": len(ep.costs),
                                "ended_by_guard": int(ended_by_guard),
                                "shielded_steps": self.guard.shielded_in_episode if self.guard else 0})
        self.episodes += 1

    def _next_multiple(self, every: int) -> int:
        if every <= 0:
            return math.inf
        return (self.env_steps // every + 1) * every

    def _log_train(self, acc: dict[str, list[float]], now: float, rate: float) -> None:
        row = {k: float(np.mean(v)) for k, v in acc.items()}
        row.update(step=self.env_steps, time_s=round(now, 2), episodes=self.episodes,
                   grad_steps=self.agent.grad_steps, steps_per_s=round(rate, 1))
        row["lambda"] = self.agent.lam
        if self.recent:
            row["train_return"] = float(np.mean([x[0] for x in self.recent]))
            row["train_cost"] = float(np.mean([x[1] for x in self.recent]))
        self.train_log.write(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, self.env_steps)

    def _evaluate(self, now: float, bar) -> EvalResult:
        agent = self.agent
        res = evaluate(lambda o: agent.act(o, deterministic=True), self.eval_env,
                       self.cfg.eval_episodes, self.eval_seed)
        row = {"step": self.env_steps, "time_s": round(now, 2), "cpu_s": round(self.cpu_s, 2),
               "return_mean": res.return_mean,
               "return_std": res.return_std, "cost_mean": res.cost_mean, "cost_std": res.cost_std,
               "cost_limit": res.cost_limit, "violations": res.violations, "episodes": self.episodes,
               "lambda": agent.lam, "grad_steps": agent.grad_steps}
        self.eval_log.write(row)
        if self.tb is not None:
            for k in ("return_mean", "cost_mean", "lambda", "violations"):
                self.tb.add_scalar(f"eval/{k}", row[k], self.env_steps)
        msg = (f"step {self.env_steps}: eval return {res.return_mean:.2f} ± {res.return_std:.2f}, "
               f"cost {res.cost_mean:.2f} ± {res.cost_std:.2f} (limit {res.cost_limit:g}), "
               f"lambda {agent.lam:.3f}")
        (bar.write if bar is not None else self.echo)(msg)
        if self.on_evaluation is not None:
            self.on_evaluation(res, self)
        return res
