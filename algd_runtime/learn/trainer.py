"""The online off-policy loop: warm-up, updates, evaluation, logging, checkpoints, resume.

The trainer schedules; the pieces do the work: the collector (collector.py) steps the task
and fills the replay, the agent (algd.py) updates, the run's folder (run_folder.py) guards
the folder and holds the logs, evaluation.py evaluates.

Exact resume: a checkpoint holds the networks, optimisers, multiplier, counters, the torch
and numpy RNG states, the replay (own file) and the episodes in progress as (reset seed,
actions so far), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import CheckpointError, agent_from_checkpoint, save_checkpoint
from algd_runtime.learn.collector import Collector, Finished, make_eval_task, make_training_task
from algd_runtime.learn.config import TrainConfig, config_from_dict
from algd_runtime.learn.evaluation import EvalResult, budget_words, eval_seed_of, evaluate
from algd_runtime.learn.guard import BudgetGuard, GuardConfig
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.learn.run_folder import (POLICY_FILE, RunLog, check_run_dir, read_resume_checkpoint,
                                           resumed_config)
from algd_runtime.sim.spec import TaskSpec


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
        check_run_dir(self.run_dir, resume, force, echo)
        device = cfg.device
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

        ckpt = read_resume_checkpoint(self.run_dir, echo) if resume else None
        if ckpt is not None:
            self.cfg = cfg = resumed_config(config_from_dict(ckpt["config"], check_task=False), cfg,
                                            self.policy_path, echo)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        if env is None:
            # Under the reference conventions training and evaluation share one layout.
            env, eval_env = make_training_task(cfg), make_eval_task(cfg)
        self.env, self.eval_env = env, eval_env
        self.spec: TaskSpec = self.env.task_spec
        self.eval_seed = eval_seed_of(cfg.seed)
        self.epoch_length = cfg.epoch_length or self.spec.episode_length
        self.replay = replay if replay is not None else ReplayBuffer(cfg.replay_size, self.spec.obs_dim,
                                                                     self.spec.act_dim)
        self.env_steps = self.updates_this_epoch = 0
        self.elapsed = 0.0
        self.cpu_s = 0.0  # this process's CPU time: equal compute on a shared machine (algd-sweep)
        self.recent: list[tuple[float, float]] = []  # (return, cost) of recent training episodes
        self._stop_requested = False

        self.agent = agent_from_checkpoint(ckpt, device) if ckpt is not None else (
            agent or ALGDAgent(self.spec, cfg.algo, device, cfg.conventions))
        self.guard = BudgetGuard(self.agent, guard) if guard else None
        self.collector = Collector(cfg, self.env, self.replay, self.guard)
        if ckpt is None:
            self.collector.start()
        else:
            self._restore(ckpt)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder
        self.log = RunLog(self.run_dir, self.env_steps if ckpt is not None else None, echo)

    # -- checkpoints ------------------------------------------------------------------------
    def _restore(self, ckpt: dict) -> None:
        ts = ckpt["train_state"]
        self.env_steps = ts["env_steps"]
        self.updates_this_epoch, self.elapsed = ts["updates_this_epoch"], ts["elapsed"]
        self.cpu_s = ts.get("cpu_s", 0.0)  # absent from checkpoints before it was logged
        self.recent = [tuple(x) for x in ts["recent"]]
        if ckpt.get("replay_file"):
            replay_path = self.run_dir / ckpt["replay_file"]
            if not replay_path.exists():
                raise CheckpointError(f"{replay_path}: replay file named by {self.policy_path} is missing")
            self.replay = self.collector.replay = ReplayBuffer.load(replay_path)
            if self.replay.size != min(ts["replay_size"], self.replay.capacity):
                raise CheckpointError(f"{replay_path}: holds {self.replay.size} transitions, "
                                      f"{self.policy_path} expects {ts['replay_size']}")
        elif self.env_steps > 0:
            self.echo("resume: the checkpoint has no replay file; continuing with an empty replay")
        torch.set_rng_state(ts["torch_rng"])
        if torch.cuda.is_available() and ts.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ts["cuda_rng"])
        self.rng.bit_generator.state = ts["numpy_rng"]
        how = self.collector.restore(ts)
        self.echo(f"resumed from {self.policy_path} at step {self.env_steps}{how}")

    def _train_state(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps, "updates_this_epoch": self.updates_this_epoch, "elapsed": self.elapsed,
            "cpu_s": self.cpu_s, "recent": [list(x) for x in self.recent], "replay_size": self.replay.size,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": self.rng.bit_generator.state,
            **self.collector.state(),
        }

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
                for finished in self.collector.step(self.agent.act, self.agent.act_batch):
                    self.env_steps += 1
                    self._maybe_update(acc)
                    if finished is not None:
                        self._log_episode(finished)
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
        self.log.close()
        self.collector.close()
        if interrupted:
            self.echo(f"interrupted at step {self.env_steps}: saved {self.policy_path}; "
                      f"continue with --resume")
        return {"policy": str(self.policy_path), "env_steps": self.env_steps, "interrupted": interrupted,
                "elapsed_s": self.elapsed, "lambda": self.agent.lam, "eval": last_eval}

    def _log_episode(self, finished: Finished) -> None:
        ep = finished.episode
        cost = self.spec.episode_cost(ep.costs)
        if self.agent.cfg.dual == "episode_cost" and self.agent.grad_steps > 0:
            self.agent.dual_from_episode(cost, self.spec.cost_limit)
        self.recent = (self.recent + [(ep.ret, cost)])[-20:]
        self.log.episode({"step": self.env_steps, "episode": finished.index, "return": ep.ret, "cost": cost,
                          "cost_limit": self.spec.cost_limit, "length": len(ep.costs),
                          "ended_by_guard": int(finished.ended_by_guard),
                          "shielded_steps": self.guard.shielded_in_episode if self.guard else 0})

    def _next_multiple(self, every: int) -> int:
        if every <= 0:
            return math.inf
        return (self.env_steps // every + 1) * every

    def _log_train(self, acc: dict[str, list[float]], now: float, rate: float) -> None:
        row = {k: float(np.mean(v)) for k, v in acc.items()}
        row.update(step=self.env_steps, time_s=round(now, 2), episodes=self.collector.episodes,
                   grad_steps=self.agent.grad_steps, steps_per_s=round(rate, 1))
        row["lambda"] = self.agent.lam
        if self.recent:
            row["train_return"] = float(np.mean([x[0] for x in self.recent]))
            row["train_cost"] = float(np.mean([x[1] for x in self.recent]))
        self.log.train(row)

    def _evaluate(self, now: float, bar) -> EvalResult:
        agent = self.agent
        res = evaluate(lambda o: agent.act(o, deterministic=True), self.eval_env,
                       self.cfg.eval_episodes, self.eval_seed)
        row = {"step": self.env_steps, "time_s": round(now, 2), "cpu_s": round(self.cpu_s, 2),
               "return_mean": res.return_mean,
               "return_std": res.return_std, "cost_mean": res.cost_mean, "cost_std": res.cost_std,
               "cost_limit": res.cost_limit, "violations": res.violations, "episodes": self.collector.episodes,
               "lambda": agent.lam, "grad_steps": agent.grad_steps}
        self.log.evaluation(row)
        msg = (f"step {self.env_steps}: eval return {res.return_mean:.2f} ± {res.return_std:.2f}, "
               f"cost {res.cost_mean:.2f} ± {res.cost_std:.2f} (limit {res.cost_limit:g}), "
               f"lambda {agent.lam:.3f}")
        (bar.write if bar is not None else self.echo)(msg)
        if self.on_evaluation is not None:
            self.on_evaluation(res, self)
        return res
