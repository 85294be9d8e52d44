"""Sim-to-real fine-tuning: continue ALGD training from a deployed policy on the target system.

The target is a shifted simulation (`sim`, `sim:TASK` with shift parameters) or anything
that speaks the controller's topics (`ros`, `ros:NAMESPACE`, through RosEnv). What carries
over from the source run is chosen: the critics and lambda (kept unless reset), the source
replay (dropped unless kept: it holds the old system's transitions) and recorded MCAP logs of
runs on the target (added to the replay). The budget guard (guard.py) shields and ends
episodes before their budget is spent, while fine-tuning and while evaluating on a robot.

Before and after training the policy is evaluated on the target with the same episode
seeds; report.json / report.md and the plots say what changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import CheckpointError, agent_from_checkpoint, load_checkpoint
from algd_runtime.learn.config import config_from_dict
from algd_runtime.learn.evaluation import EvalResult, evaluate
from algd_runtime.learn.guard import BudgetGuard, GuardConfig
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.learn.trainer import Trainer

RESETTABLE = ("critics", "lambda")
REPORT_JSON, REPORT_MD, BEFORE_JSON, BEST_FILE = "report.json", "report.md", "before.json", "best.pt"


@dataclass
class Target:
    kind: str  # "sim" | "ros"
    task: str | None = None  # sim: None means the policy's own task
    namespace: str = "/algd"  # ros
    shift: dict = field(default_factory=dict)  # sim

    def describe(self) -> str:
        if self.kind == "ros":
            return f"ros:{self.namespace}"
        shift = ", ".join(f"{k}={v}" for k, v in self.shift.items())
        return f"sim:{self.task}" + (f" ({shift})" if shift else " (no shift)")


def parse_target(text: str, shift: dict | None = None) -> Target:
    """--target sim | sim:TASK | ros | ros:NAMESPACE; shift applies to sim targets only."""
    kind, _, rest = text.partition(":")
    if kind == "sim":
        return Target("sim", task=rest or None, shift=dict(shift or {}))
    if kind == "ros":
        if shift:
            raise ValueError("--shift: a ros target is shifted by the robot itself (e.g. algd-sim's "
                             "parameters); --shift is for sim targets")
        return Target("ros", namespace="/" + (rest or "algd").strip("/"))
    raise ValueError(f"--target: expected sim, sim:TASK, ros or ros:NAMESPACE, got {text!r}")


@dataclass
class FinetuneOptions:
    target: Target
    steps: int = 12000  # environment steps on the target
    seed: int = 0
    reset: tuple[str, ...] = ()  # of RESETTABLE: start these afresh instead of keeping them
    keep_replay: bool = False  # start from the source run's replay (the old system's data)
    data: tuple[Path, ...] = ()  # MCAP logs recorded on the target, added to the replay
    guard: GuardConfig | None = field(default_factory=GuardConfig)
    eval_episodes: int = 20
    warmup_steps: int = 400  # target steps before the first update
    # Conservative by default: the critics (and lambda) learn the new system first, and the
    # actor then moves at a fraction of its training learning rate.
    critic_warmup_steps: int = 2000  # target steps after warmup_steps before the first actor update
    actor_lr_scale: float = 0.3
    device: str = "cpu"
    timeout_s: float = 10.0  # ros: how long to wait for the robot

    def __post_init__(self) -> None:
        bad = [r for r in self.reset if r not in RESETTABLE]
        if bad:
            raise ValueError(f"--reset: expected some of {', '.join(RESETTABLE)}, got {', '.join(bad)}")
        if self.steps < 1:
            raise ValueError(f"--steps: expected >= 1, got {self.steps}")
        if self.eval_episodes < 1:
            raise ValueError(f"--eval-episodes: expected >= 1, got {self.eval_episodes}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup: expected >= 0, got {self.warmup_steps}")
        if self.critic_warmup_steps < 0:
            raise ValueError(f"--critic-warmup: expected >= 0, got {self.critic_warmup_steps}")
        if not 0 < self.actor_lr_scale <= 1:
            raise ValueError(f"--actor-lr-scale: expected 0 < value <= 1, got {self.actor_lr_scale}")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout: expected a number of seconds > 0, got {self.timeout_s}")


# -- what the run starts from ----------------------------------------------------------------
def start_agent(ckpt: dict, spec, reset: tuple[str, ...], device: str) -> ALGDAgent:
    """The source agent on the target's spec, with the chosen parts started afresh."""
    agent = agent_from_checkpoint(ckpt, device)
    agent.spec = spec
    if "critics" in reset:
        fresh = ALGDAgent(spec, agent.cfg, device)
        fresh.policy.load_state_dict(agent.policy.state_dict())
        fresh.actor_opt.load_state_dict(agent.actor_opt.state_dict())
        fresh.log_lambda.data.copy_(agent.log_lambda.data)
        fresh.lambda_opt.load_state_dict(agent.lambda_opt.state_dict())
        agent = fresh
    if "lambda" in reset:
        agent.log_lambda.data.fill_(math.log(agent.cfg.init_lambda))
        agent.lambda_opt.state.clear()
    return agent


def start_replay(ckpt: dict, policy_path: Path, capacity: int, spec, keep_replay: bool,
                 data: tuple[Path, ...], echo: Callable[[str], None]) -> ReplayBuffer:
    replay = ReplayBuffer(capacity, spec.obs_dim, spec.act_dim)
    if keep_replay:
        name = ckpt.get("replay_file")
        if not name or not (policy_path.parent / name).is_file():
            raise CheckpointError(f"--keep-replay: {policy_path} names no replay file beside it "
                                  f"({name or 'none saved'})")
        source = ReplayBuffer.load(policy_path.parent / name)
        n = min(source.size, capacity)
        for f in ("obs", "action", "reward", "cost", "next_obs", "done"):
            getattr(replay, f)[:n] = getattr(source, f)[source.size - n:source.size]
        replay.size, replay.pos = n, n % capacity
        echo(f"replay: {n} transitions from the source run")
    for path in data:
        from algd_runtime.learn.logdata import add_mcap_to_replay  # needs the [ros] extra

        added = add_mcap_to_replay(path, replay, spec)
        echo(f"replay: {added} transitions from {path}")
    return replay


def target_envs(target: Target, spec, seed: int, timeout_s: float):
    """(training env, evaluation env); on a robot both are the same RosEnv."""
    if target.kind == "ros":
        from algd_runtime.learn.ros_env import RosEnv  # needs the [ros] extra

        env = RosEnv(spec, target.namespace, timeout_s=timeout_s)
        return env, env
    from algd_runtime.sim import make_task

    task = target.task or spec.name
    env = make_task(task, seed=seed, budget=spec.budget, **target.shift)
    es = env.task_spec
    if (es.obs_dim, es.act_dim) != (spec.obs_dim, spec.act_dim):
        raise ValueError(f"--target {target.describe()}: observation/action sizes {es.obs_dim}/{es.act_dim} do "
                         f"not match the policy's {spec.obs_dim}/{spec.act_dim}")
    return env, make_task(task, seed=seed + 1, budget=spec.budget, **target.shift)


# -- the run -----------------------------------------------------------------------------------
def finetune(policy_path: str | Path, out_dir: str | Path, opts: FinetuneOptions, resume: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    policy_path, out_dir = Path(policy_path), Path(out_dir)
    ckpt = load_checkpoint(policy_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out: {out_dir} is a file; expected a folder for the fine-tuned run (nothing was written)")
    if out_dir.resolve() == policy_path.resolve().parent:
        raise ValueError(f"--out: {out_dir} holds the policy being fine-tuned ({policy_path}); fine-tuning never "
                         f"writes over its source: choose another folder (nothing was written)")
    cfg = config_from_dict(ckpt["config"], check_task=False)
    source = agent_from_checkpoint(ckpt, opts.device, with_optimizers=False)
    target = opts.target
    env, eval_env = target_envs(target, source.spec, opts.seed, opts.timeout_s)
    if target.kind == "sim" and target.task is None:
        target = dataclasses.replace(target, task=source.spec.name)
    try:
        spec = dataclasses.replace(env.task_spec) if target.kind == "sim" else source.spec
        cfg = dataclasses.replace(
            cfg, task=spec.name, shift=dict(target.shift), seed=opts.seed, device=opts.device,
            total_steps=opts.steps, warmup_steps=opts.warmup_steps,
            actor_delay_steps=opts.warmup_steps + opts.critic_warmup_steps,
            min_replay=min(cfg.min_replay, opts.warmup_steps),
            eval_every=max(opts.steps // 5, 1) if target.kind == "sim" else 0,
            checkpoint_every=max(opts.steps // 3, 1))
        out_dir.mkdir(parents=True, exist_ok=True)
        guard = (lambda agent: BudgetGuard(agent, opts.guard)) if opts.guard else (lambda agent: None)
        # On a robot the evaluations are guarded as well: a policy that breaks the budget on
        # the target must not be allowed to, just to be measured.
        eval_guard = guard if target.kind == "ros" else (lambda agent: None)
        eval_seed = 2_000_000 + opts.seed * 1000

        before = _load_before(out_dir) if resume else None
        if before is None:
            echo(f"before: evaluating {policy_path} on {target.describe()} ({opts.eval_episodes} episodes)")
            source.spec = spec
            before = evaluate(lambda o: source.act(o, deterministic=True), eval_env, opts.eval_episodes,
                              eval_seed, eval_guard(source))
            (out_dir / BEFORE_JSON).write_text(json.dumps(dataclasses.asdict(before)))
        echo(_eval_line("before", before))

        agent = start_agent(ckpt, spec, tuple(opts.reset), opts.device)
        for group in agent.actor_opt.param_groups:
            group["lr"] = cfg.algo.lr * opts.actor_lr_scale
        best = BestPolicy(out_dir, policy_path, before, echo)
        replay = None if resume else start_replay(ckpt, policy_path, cfg.replay_size, spec, opts.keep_replay,
                                                  tuple(opts.data), echo)
        trainer = Trainer(cfg, out_dir, resume=resume, progress=progress, echo=echo, env=env,
                          eval_env=eval_env if target.kind == "sim" else None, agent=agent, replay=replay,
                          guard=opts.guard, origin="finetune", on_evaluation=best.consider)
        trainer.eval_seed = eval_seed  # evaluations during training see the same start states as before/after
        kept = {part: "reset" if part in opts.reset else "kept" for part in RESETTABLE}
        echo(f"fine-tuning on {target.describe()} for {opts.steps} steps (critics {kept['critics']}, lambda "
             f"{kept['lambda']} = {trainer.agent.lam:.3f}, replay {len(trainer.replay)} transitions, guard "
             f"{'on' if opts.guard else 'off'}) -> {out_dir}")
        t0 = time.perf_counter()
        summary = trainer.run()
        elapsed = time.perf_counter() - t0
        if summary["interrupted"]:
            return {"interrupted": True, "policy": summary["policy"]}
        tuned = trainer.agent
        after = evaluate(lambda o: tuned.act(o, deterministic=True), eval_env, opts.eval_episodes, eval_seed,
                         eval_guard(tuned))
        echo(_eval_line("after", after))
        best.consider(after, trainer)
    finally:
        env.close()
        if eval_env is not env:
            eval_env.close()
    report = _report(policy_path, out_dir, dataclasses.replace(opts, target=target), before, after, trainer,
                     elapsed)
    report["best"] = best.describe()
    report["comparison"] = compare(before, after)
    if trainer.cfg.actor_delay_steps >= opts.steps:
        report["comparison"]["note"] = (f"the actor did not learn: --steps {opts.steps} <= --warmup "
                                        f"{opts.warmup_steps} + --critic-warmup {opts.critic_warmup_steps}; "
                                        "only the critics and lambda were fitted")
    if report["comparison"]["note"]:
        echo(f"NOTE: {report['comparison']['note']}")
    if report["comparison"]["worse"]:
        echo(f"WARNING: fine-tuning made the policy WORSE on {target.describe()}: "
             f"{report['comparison']['why']}. Deploy {report['best']['path']} ({report['best']['from']}) instead.")
    report["plots"] = write_plots(out_dir, report, echo)
    write_report(out_dir, report)
    echo(f"wrote {trainer.policy_path}, {out_dir / REPORT_MD} and {len(report['plots'])} plots")
    return report


class BestPolicy:
    """best.pt: the best policy by evaluation within the budget among the source, every
    evaluation while fine-tuning and the final one (same start states each time)."""

    def __init__(self, out_dir: Path, source: Path, before: EvalResult, echo: Callable[[str], None]) -> None:
        self.path, self.echo = out_dir / BEST_FILE, echo
        self.score, self.origin = -math.inf, "none within the budget"
        if before.within_limit and not self.path.exists():
            self._write(lambda f: f.write(source.read_bytes()))
        if before.within_limit:
            self.score, self.origin = before.return_mean, "the source policy"

    def consider(self, res: EvalResult, trainer) -> None:
        if res.within_limit and res.return_mean > self.score:
            from algd_runtime.learn.checkpoint import save_checkpoint

            save_checkpoint(self.path, trainer.agent, trainer.cfg.to_dict(), origin="finetune")
            self.score, self.origin = res.return_mean, f"fine-tuned, step {trainer.env_steps}"

    def _write(self, fill) -> None:
        from algd_runtime.contract.atomic import atomic_write

        with atomic_write(self.path, "wb") as f:
            fill(f)

    def describe(self) -> dict:
        return {"path": str(self.path) if math.isfinite(self.score) else None, "from": self.origin,
                "return": self.score if math.isfinite(self.score) else None}


def mean_ci(values, seed: int = 0, level: float = 0.95, resamples: int = 4000) -> tuple[float, float, float]:
    """Mean and its percentile-bootstrap confidence interval."""
    import numpy as np

    x = np.asarray(values, float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean()), float(x.mean())
    means = np.random.default_rng(seed).choice(x, (resamples, len(x))).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def compare(before: EvalResult, after: EvalResult) -> dict:
    """After vs before on the same start states: paired differences with 95 % intervals.
    Worse: the return's interval lies below 0, or the cost went over the limit. A return
    lost while an over-budget source came within the limit is still worse (other seeds may
    get both), and the warning says what was gained."""
    d_ret = [a - b for a, b in zip(after.returns, before.returns)]
    d_cost = [a - b for a, b in zip(after.costs, before.costs)]
    ret, cost = mean_ci(d_ret), mean_ci(d_cost)
    why, note = [], ""
    if ret[2] < 0:
        gained = (f", while the cost came within the limit {after.cost_limit:g} ({before.cost_mean:.2f} -> "
                  f"{after.cost_mean:.2f})" if not before.within_limit and after.within_limit else "")
        why.append(f"return {ret[0]:+.2f} (95 % CI {ret[1]:+.2f} .. {ret[2]:+.2f}){gained}")
    if before.within_limit and not after.within_limit:
        why.append(f"cost {after.cost_mean:.2f} is over the limit {after.cost_limit:g} (it was {before.cost_mean:.2f})")
    return {"return_change": ret, "cost_change": cost, "before_return_ci": mean_ci(before.returns),
            "after_return_ci": mean_ci(after.returns), "before_cost_ci": mean_ci(before.costs),
            "after_cost_ci": mean_ci(after.costs), "worse": bool(why), "why": "; ".join(why), "note": note}


def write_plots(out_dir: Path, report: dict, echo: Callable[[str], None]) -> list[str]:
    from algd_runtime.learn import plots

    episodes = read_csv(out_dir / "episodes.csv")
    try:
        paths = [
            plots.before_after(report["before"], report["after"], out_dir / "before_after.png",
                               f"{report['target']}: before and after fine-tuning"),
            plots.episodes([float(r["return"]) for r in episodes], [float(r["cost"]) for r in episodes],
                           report["training_episodes"]["cost_limit"], out_dir / "finetune_episodes.png",
                           f"fine-tuning episodes on {report['target']}",
                           marked=[i for i, r in enumerate(episodes) if int(r["ended_by_guard"])],
                           marked_label="ended by the guard"),
        ]
        if (out_dir / "progress.csv").is_file() and read_csv(out_dir / "progress.csv"):
            paths.append(plots.training_curves(out_dir, out_dir / "training_curves.png", "fine-tuning"))
    except plots.MissingPlotting as exc:
        echo(f"no plots: {exc}")
        return []
    return [p.name for p in paths]


def _load_before(out_dir: Path) -> EvalResult | None:
    path = out_dir / BEFORE_JSON
    return EvalResult(**json.loads(path.read_text())) if path.is_file() else None


def _eval_line(name: str, r: EvalResult) -> str:
    guarded = f", {r.ended_by_guard} ended by the guard, {r.shielded_steps} shielded steps" if (
        r.ended_by_guard or r.shielded_steps) else ""
    return (f"{name}: return {r.return_mean:.2f} ± {r.return_std:.2f}, cost {r.cost_mean:.2f} ± {r.cost_std:.2f} "
            f"(limit {r.cost_limit:g}), {r.violations}/{len(r.costs)} episodes over{guarded}")


def _summary(r: EvalResult) -> dict:
    return {"return_mean": r.return_mean, "return_std": r.return_std, "cost_mean": r.cost_mean,
            "cost_std": r.cost_std, "cost_limit": r.cost_limit, "violations": r.violations,
            "episodes": len(r.costs), "within_limit": r.within_limit, "ended_by_guard": r.ended_by_guard,
            "shielded_steps": r.shielded_steps, "returns": r.returns, "costs": r.costs}


def _report(policy_path, out_dir, opts, before, after, trainer, elapsed) -> dict:
    episodes = read_csv(out_dir / "episodes.csv")
    costs = [float(r["cost"]) for r in episodes]
    limit = trainer.spec.cost_limit
    return {
        "source": str(policy_path), "policy": str(trainer.policy_path), "target": opts.target.describe(),
        "seed": opts.seed, "steps": trainer.env_steps, "elapsed_s": round(elapsed, 1),
        "reset": list(opts.reset), "keep_replay": opts.keep_replay, "data": [str(p) for p in opts.data],
        "guard": dataclasses.asdict(opts.guard) if opts.guard else None,
        "lambda": trainer.agent.lam,
        "training_episodes": {
            "episodes": len(episodes), "over_limit": int(sum(c > limit for c in costs)),
            "ended_by_guard": int(sum(int(r["ended_by_guard"]) for r in episodes)),
            "shielded_steps": int(sum(int(r["shielded_steps"]) for r in episodes)),
            "max_cost": max(costs, default=0.0), "cost_limit": limit},
        "before": _summary(before), "after": _summary(after),
    }


def read_csv(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_report(out_dir: Path, report: dict) -> None:
    from algd_runtime.contract.atomic import atomic_write

    with atomic_write(out_dir / REPORT_JSON, "w") as f:
        json.dump(report, f, indent=1)
    b, a, t = report["before"], report["after"], report["training_episodes"]
    cmp, best = report["comparison"], report["best"]

    def ci(key):
        m, lo, hi = cmp[key]
        return f"{m:+.2f} (95 % CI {lo:+.2f} .. {hi:+.2f})"

    lines = [
        f"# Fine-tuning report: {report['target']}",
        "",
    ]
    if cmp["worse"]:
        lines += [f"**WARNING: fine-tuning made the policy worse: {cmp['why']}.** "
                  f"Deploy `{best['path']}` ({best['from']}), not the fine-tuned policy.", ""]
    if cmp.get("note"):
        lines += [f"**NOTE: {cmp['note']}.**", ""]
    lines += [
        f"- source policy: `{report['source']}`",
        f"- fine-tuned policy: `{report['policy']}` ({report['steps']} steps in {report['elapsed_s']:.0f} s, "
        f"seed {report['seed']}, lambda now {report['lambda']:.3f})",
        f"- started from: critics {'reset' if 'critics' in report['reset'] else 'kept'}, lambda "
        f"{'reset' if 'lambda' in report['reset'] else 'kept'}, source replay "
        f"{'kept' if report['keep_replay'] else 'dropped'}" + (f", logs {', '.join(report['data'])}"
                                                               if report["data"] else ""),
        f"- budget guard: {'on' if report['guard'] else 'off'}",
        "",
        "| on the target | return | cost (limit %g) | episodes over the limit |" % b["cost_limit"],
        "| --- | --- | --- | --- |",
        f"| before | {b['return_mean']:.2f} ± {b['return_std']:.2f} | {b['cost_mean']:.2f} ± {b['cost_std']:.2f} "
        f"| {b['violations']}/{b['episodes']} |",
        f"| after | {a['return_mean']:.2f} ± {a['return_std']:.2f} | {a['cost_mean']:.2f} ± {a['cost_std']:.2f} "
        f"| {a['violations']}/{a['episodes']} |",
        "",
        f"Change on the same start states (after - before, paired): return {ci('return_change')}, "
        f"cost {ci('cost_change')} (bootstrap intervals).",
        "",
        f"Best within the budget: {best['from']}" + (f", `{best['path']}` (return {best['return']:.2f})"
                                                      if best["path"] else "") + ".",
        "",
        f"While fine-tuning: {t['episodes']} episodes, {t['over_limit']} over the limit (worst {t['max_cost']:g}), "
        f"{t['ended_by_guard']} ended by the guard, {t['shielded_steps']} shielded steps.",
        "",
    ]
    with atomic_write(out_dir / REPORT_MD, "w") as f:
        f.write("\n".join(lines))
