"""algd-bench train: how fast the pieces of a training run are on this machine."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np
import torch


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Calls fn (which returns how many units it did) until `seconds` pass; units per second."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: str) -> str:
    return (f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {device}")


def bench_train(tasks: list[str], algo, seconds: float = 5.0, device: str = "cpu") -> list[dict]:
    """algo: an AlgoConfig (network sizes, batch size) to time the gradient updates with."""
    from algd_runtime.algd import ALGDAgent
    from algd_runtime.replay import ReplayBuffer
    from algd_runtime.sim import make_task

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    batch = algo.batch_size
    print(machine_line(device))
    print(f"networks: {algo.variant}, K={algo.diffusion_steps}, denoiser width {algo.score_hidden}, "
          f"critic width {algo.critic_hidden}, {algo.qc_ensemble} cost critics, N={algo.score_mc_samples}")
    header = (f"{'task':<28} {'obs':>4} {'act':>4} {'env steps/s':>12} {'act+step/s':>11} "
              f"{'updates/s':>10} {'batch':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in tasks:
        env = make_task(name, seed=0)
        spec = env.task_spec
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        low, high = np.array(spec.act_low), np.array(spec.act_high)

        def env_steps(n: int = 200, policy=None) -> int:
            for _ in range(n):
                a = rng.uniform(low, high).astype(np.float32) if policy is None else policy()
                _, _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()
            return n

        agent = ALGDAgent(spec, algo, device)
        obs = np.zeros(spec.obs_dim, np.float32)
        raw = _rate(env_steps, seconds)
        acting = _rate(lambda: env_steps(50, lambda: agent.act(obs)), seconds)
        replay = ReplayBuffer(10_000, spec.obs_dim, spec.act_dim)
        for _ in range(5000):
            replay.add(rng.normal(size=spec.obs_dim), rng.uniform(low, high), rng.normal(),
                       float(rng.random() < 0.1), rng.normal(size=spec.obs_dim), False)

        def updates(n: int = 5) -> int:
            for _ in range(n):
                agent.update(replay.sample(batch, rng))
            if device == "cuda":
                torch.cuda.synchronize()
            return n

        ups = _rate(updates, seconds)
        env.close()
        row = {"task": name, "obs": spec.obs_dim, "act": spec.act_dim, "env_steps_per_s": raw,
               "act_step_per_s": acting, "updates_per_s": ups, "batch": batch}
        rows.append(row)
        print(f"{name:<28} {spec.obs_dim:>4} {spec.act_dim:>4} {raw:>12.0f} {acting:>11.0f} "
              f"{ups:>10.1f} {batch:>6}", flush=True)
    return rows
