"""algd-sweep: tasks x seeds x override sets, each a training run, as Ray tasks.

    algd-sweep --task SafetyPointGoal1-v0 --seeds 1 2 3 --set algo.dual=critic --set algo.dual=episode_cost
    algd-sweep ... --address ray://head:10001      (a cluster: OUT must be shared storage)

Ray runs embedded on this machine by default (`ray.init()`), on a cluster with --address;
the code is the same. Each trial is an ordinary run folder OUT/<trial>/ (policy.pt,
progress.csv, tb/...), so a killed sweep started again skips finished trials and resumes
unfinished ones exactly (the trainer's resume). At the end (and with --report alone) the
trials are aggregated into OUT/sweep.md, sweep.csv and sweep.png: the last evaluation's
return and cost, mean +- std over seeds, per task and override set, and the curves.
`tensorboard --logdir OUT` shows every trial.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml


# -- trials ------------------------------------------------------------------------------------
def parse_set(text: str) -> dict[str, Any]:
    """'algo.dual=critic,algo.lr=0.001' -> {'algo.dual': 'critic', 'algo.lr': 0.001}."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def set_label(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"


def trial_config(base: dict, task: str, seed: int, overrides: dict[str, Any], steps: int | None) -> dict:
    """The trial's config as a plain dict (validated by the caller)."""
    import copy

    data = copy.deepcopy(base)
    data.update(task=task, seed=seed)
    if steps is not None:
        data["total_steps"] = steps
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def trial_name(task: str, seed: int, index: int) -> str:
    return f"{task}-set{index}-seed{seed}"


def finished(run_dir: Path, total_steps: int) -> bool:
    """The trial's policy.pt says it ran all its steps."""
    policy = run_dir / "policy.pt"
    if not policy.exists():
        return False
    from algd_runtime.checkpoint import load_checkpoint

    state = load_checkpoint(policy).get("train_state") or {}
    return int(state.get("env_steps", 0)) >= total_steps


def run_trial(config: dict, run_dir: str, threads: int) -> dict:
    """One training run (resumed if its folder holds one); runs inside a Ray worker."""
    from algd_runtime.config import config_from_dict
    from algd_runtime.trainer import Trainer

    cfg = config_from_dict(config)
    cfg.num_threads = threads
    trainer = Trainer(cfg, run_dir, resume=True, progress=False, echo=lambda m: None)
    summary = trainer.run()
    ev = summary["eval"]
    return {"env_steps": summary["env_steps"], "elapsed_s": summary["elapsed_s"],
            "return": ev.return_mean if ev else math.nan, "cost": ev.cost_mean if ev else math.nan}


# -- aggregation -------------------------------------------------------------------------------
def _read_progress(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def aggregate(out: Path, trials: list[dict]) -> list[dict]:
    """OUT/sweep.csv, sweep.md and sweep.png from the trials' progress.csv files."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in trials:
        groups.setdefault((t["task"], t["set"]), []).append(t)
    rows = []
    for (task, label), members in groups.items():
        finals = [p[-1] for p in (_read_progress(out / m["name"]) for m in members) if p]
        ret, ret_sd = _mean_std([f["return_mean"] for f in finals])
        cost, cost_sd = _mean_std([f["cost_mean"] for f in finals])
        limit = finals[0]["cost_limit"] if finals else math.nan
        rows.append({"task": task, "set": label, "seeds": len(finals), "steps": int(min((f["step"] for f in finals),
                                                                                          default=0)),
                     "return_mean": ret, "return_std": ret_sd, "cost_mean": cost, "cost_std": cost_sd,
                     "cost_limit": limit})
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["task"])
        w.writeheader()
        w.writerows(rows)
    lines = ["# algd-sweep", "", "Last evaluation of each trial; mean ± std over seeds.", "",
             "| task | overrides | seeds | steps | return | cost | limit |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['task']} | {r['set']} | {r['seeds']} | {r['steps']} | {r['return_mean']:.2f} ± {r['return_std']:.2f} "
              f"| {r['cost_mean']:.2f} ± {r['cost_std']:.2f} | {r['cost_limit']:g} |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    _plot(out, groups)
    return rows


def _plot(out: Path, groups: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({task for task, _ in groups})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        ax_r, ax_c = axes[row]
        limit = None
        for (t, label), members in sorted(groups.items()):
            if t != task:
                continue
            curves = [p for p in (_read_progress(out / m["name"]) for m in members) if p]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = np.array([curves[0][i]["step"] for i in range(n)])
            for ax, key in ((ax_r, "return_mean"), (ax_c, "cost_mean")):
                values = np.array([[c[i][key] for i in range(n)] for c in curves])
                mean, sd = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(n)
                ax.plot(steps, mean, label=f"{label} ({len(values)} seeds)")
                ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
            limit = curves[0][0].get("cost_limit", limit)
        if limit is not None:
            ax_c.axhline(limit, color="red", linestyle="--", label=f"limit {limit:g}")
        ax_r.set_title(f"{task}: evaluation return")
        ax_c.set_title(f"{task}: evaluation cost")
        for ax in (ax_r, ax_c):
            ax.set_xlabel("environment steps")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=90)
    plt.close(fig)


# -- the command -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--task", action="append", required=True, help="task (repeat for several)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="one override set (repeat for several; default: the config as it is)")
    p.add_argument("--config", type=Path, help="base config (default: configs/<task>.yaml where it exists)")
    p.add_argument("--steps", type=int, help="total environment steps per trial")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs Ray reserves for a trial (its torch threads)")
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use (default: all)")
    p.add_argument("--report", action="store_true", help="only aggregate the trials already in OUT")
    args = p.parse_args(argv)

    from algd_runtime.cli import task_config_path
    from algd_runtime.config import ConfigError, config_from_dict, load_config

    try:
        sets = [parse_set(s) for s in args.set] or [{}]
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps: expected a value >= 1, got {args.steps}")
        if args.cpus_per_trial < 1:
            raise ValueError(f"--cpus-per-trial: expected a value >= 1, got {args.cpus_per_trial}")
        trials = []
        for task in args.task:
            path = args.config or task_config_path(task)
            base = load_config(path, {"task": task}).to_dict() if path else config_from_dict({"task": task}).to_dict()
            for index, overrides in enumerate(sets):
                for seed in args.seeds:
                    config = trial_config(base, task, seed, overrides, args.steps)
                    cfg = config_from_dict(config)  # a bad key or value stops here, naming it
                    trials.append({"task": task, "seed": seed, "set": set_label(overrides), "config": config,
                                   "total_steps": cfg.total_steps, "name": trial_name(task, seed, index)})
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        _run(args, trials)
    rows = aggregate(args.out, trials)
    print((args.out / "sweep.md").read_text(), end="")
    print(f"wrote {args.out / 'sweep.md'}, sweep.csv, sweep.png (tensorboard --logdir {args.out})")
    return 0 if all(r["seeds"] for r in rows) else 1


def _run(args, trials: list[dict]) -> None:
    import ray

    todo = [t for t in trials if not finished(args.out / t["name"], t["total_steps"])]
    print(f"algd-sweep: {len(trials)} trials, {len(trials) - len(todo)} finished before, {len(todo)} to run "
          f"-> {args.out}", flush=True)
    if not todo:
        return
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=args.cpus_per_trial, max_retries=0)(run_trial)
        pending = {remote.remote(t["config"], str((args.out / t["name"]).resolve()), args.cpus_per_trial): t
                   for t in todo}
        t0, done = time.monotonic(), 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(ready[0])
            done += 1
            try:
                res = ray.get(ready[0])
                print(f"[{done}/{len(todo)}] {trial['name']}: return {res['return']:.2f}, cost {res['cost']:.2f} "
                      f"after {res['env_steps']} steps ({res['elapsed_s']:.0f} s; sweep {time.monotonic() - t0:.0f} s)",
                      flush=True)
            except ray.exceptions.RayError as exc:
                print(f"[{done}/{len(todo)}] {trial['name']}: FAILED ({str(exc).splitlines()[0]}); "
                      f"run again to resume it", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
