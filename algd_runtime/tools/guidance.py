"""algd-bench guidance: what run-time guidance buys on a task.

An exported bundle drives its task through ONNX Runtime, as the controller runs it, under
each setting that the monitor's escalation can ask for: the multiplier lambda (the
bundle's own, a value, or a multiple of the policy's exchange rate: median |grad_a Q| /
median |grad_a Qc| at its own actions, how strongly each pulls) and the guidance scale, and best-of-N with and without the shield (the
candidates whose cost risk fits what is left of the episode's budget). For each setting:
return and cost per episode, as the mean and a 95 % interval over units (one unit: one
policy's mean over one block of evaluation episodes), the share of episodes over the
limit, and the decision time. Several bundles (training seeds) make the interval honest.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Setting:
    name: str
    act: dict  # PolicyRuntime.act's arguments but the multiplier
    shield: bool = False  # remaining_budget: the limit less the episode's cost so far
    lam: str = "own"  # the multiplier: "own" (the bundle's), a value ("10") or "2xrate" (2 x the exchange rate)


@dataclass
class Outcome:
    setting: Setting
    returns: list = field(default_factory=list)  # per unit
    costs: list = field(default_factory=list)  # per unit
    over: int = 0
    episodes: int = 0
    act_ms: list = field(default_factory=list)


def settings(lambdas: list[str], scales: list[float], best_of: list[int]) -> list[Setting]:
    """The grid: every lambda x guidance scale (unguided once: lambda acts only through the
    guidance), then best-of-N without and with the shield."""
    for lam in lambdas:
        lambda_value(lam, 1.0, 1.0)  # a bad one is refused before anything runs
    out = [Setting("unguided", {"guidance_scale": 0.0})] if 0.0 in scales else []
    out += [Setting(f"lambda {lam}, w {w:g}", {"guidance_scale": w}, lam=lam)
            for lam in lambdas for w in scales if w != 0.0]
    for n in best_of:
        out.append(Setting(f"best-of-{n}", {"mode": "best_of_n", "n": n}))
        out.append(Setting(f"best-of-{n}, shield", {"mode": "best_of_n", "n": n}, shield=True))
    return out


def lambda_value(spec: str, own: float, rate: float) -> float:
    """The multiplier a spec asks for: "own", a value >= 0, or "<k>xrate"."""
    try:
        value = own if spec == "own" else (float(spec[:-5]) * rate if spec.endswith("xrate") else float(spec))
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"--lambda: expected 'own', a value >= 0 or '<k>xrate' (e.g. 2xrate), got {spec!r}")
    return value


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal 95 % interval (0 for one value)."""
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(half)


def run_block(rt, env, setting: Setting, episodes: int, seed: int, outcome: Outcome, rate: float) -> None:
    """`episodes` episodes (reset seeds seed, seed + 1, ...) under one setting, into `outcome`."""
    spec = env.task_spec
    kw = dict(setting.act, lagrange_multiplier=lambda_value(setting.lam, rt.lagrange_multiplier, rate))
    returns, costs = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        ret, ep_costs = 0.0, []
        while True:
            if setting.shield:
                kw["remaining_budget"] = max(0.0, spec.cost_limit - spec.episode_cost(ep_costs))
            t0 = time.perf_counter()
            action = rt.act(obs, **kw).action
            outcome.act_ms.append(1e3 * (time.perf_counter() - t0))
            obs, r, c, term, trunc, _ = env.step(action)
            ret += r
            ep_costs.append(c)
            if term or trunc:
                break
        returns.append(ret)
        costs.append(spec.episode_cost(ep_costs))
    outcome.returns.append(float(np.mean(returns)))
    outcome.costs.append(float(np.mean(costs)))
    outcome.over += sum(c > spec.cost_limit for c in costs)
    outcome.episodes += episodes


def bench_guidance(pairs: list[tuple[Path, Path]], episodes: int, blocks: int, lambdas: list[str],
                   scales: list[float], best_of: list[int], out: Path | None = None,
                   echo=print) -> list[Outcome]:
    """pairs: (bundle, the policy.pt it was exported from: the task, its budget and layout
    conventions). Every setting sees the same reset seeds."""
    from algd_runtime.learn.algd import exchange_rate
    from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint, policy_task
    from algd_runtime.deploy.runtime import PolicyRuntime
    from algd_runtime.sim.spec import TaskSpec

    grid = settings(lambdas, scales, best_of)
    outcomes = [Outcome(s) for s in grid]
    limit = None
    for bundle, policy in pairs:
        ckpt = load_checkpoint(policy)
        spec = TaskSpec.from_dict(ckpt["task_spec"])
        env = policy_task(ckpt)
        rt = PolicyRuntime.load(bundle, provider="cpu")
        limit = env.task_spec.cost_limit
        rate = rt.exchange_rate or exchange_rate(agent_from_checkpoint(ckpt, with_optimizers=False), env)
        echo(f"{bundle}: {spec.name}, lambda {rt.lagrange_multiplier:.4g}, exchange rate {rate:.3g}, cost limit "
             f"{limit:g} per {env.task_spec.cost_semantics}, {blocks} block(s) of {episodes} episodes per setting")
        for block in range(blocks):
            seed = 2_000_000 + 1000 * block
            for s, o in zip(grid, outcomes):
                run_block(rt, env, s, episodes, seed, o, rate)
        env.close()
    header = f"{'setting':<24} {'return (95% CI)':>22} {'cost (95% CI)':>20} {'over limit':>10} {'act p50 ms':>10}"
    echo(header)
    echo("-" * len(header))
    for o in outcomes:
        (r, rh), (c, ch) = interval(o.returns), interval(o.costs)
        echo(f"{o.setting.name:<24} {r:>12.1f} ± {rh:<7.1f} {c:>10.2f} ± {ch:<7.2f} "
             f"{100.0 * o.over / max(o.episodes, 1):>9.0f}% {np.median(o.act_ms):>10.3f}")
    echo(f"units per setting: {len(pairs)} polic{'y' if len(pairs) == 1 else 'ies'} x {blocks} block(s); "
         f"interval: mean ± 1.96 standard errors over units")
    if out is not None:
        _write(outcomes, out, limit, lambdas, scales)
    return outcomes


def _write(outcomes: list[Outcome], out: Path, limit: float | None, lambdas: list[str],
           scales: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "guidance.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "lambda", "guidance_scale", "mode", "n", "shield", "return_mean", "return_ci95",
                    "cost_mean", "cost_ci95", "over_limit_pct", "episodes", "act_p50_ms"])
        for o in outcomes:
            (r, rh), (c, ch) = interval(o.returns), interval(o.costs)
            s = o.setting
            w.writerow([s.name, s.lam, s.act.get("guidance_scale", 0.0), s.act.get("mode", "deterministic"),
                        s.act.get("n", 1), s.shield, r, rh, c, ch, 100.0 * o.over / max(o.episodes, 1), o.episodes,
                        float(np.median(o.act_ms))])
    from algd_runtime.learn import plots

    guided = {(o.setting.lam, o.setting.act["guidance_scale"]): o for o in outcomes if o.setting.act.get("mode") is None}
    lines = {lam: [(w, *interval(o.costs), *interval(o.returns)) for w in scales
                   if (o := guided.get(("own", 0.0) if w == 0.0 else (lam, w))) is not None]
             for lam in lambdas}
    plots.guidance_curves(lines, limit, out / "guidance.png")
