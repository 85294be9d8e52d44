"""algd-sweep: tasks x seeds x override sets, each a training run, as Ray tasks.

    algd-sweep --task SafetyPointGoal1-v0 --seeds 1 2 3 --set algo.dual=critic --set algo.dual=episode_cost
    algd-sweep ... --address ray://head:10001      (a cluster: OUT must be shared storage)

Ray runs embedded on this machine by default (`ray.init()`), on a cluster with --address;
the code is the same. Each trial is an ordinary run folder OUT/<trial>/ (policy.pt,
progress.csv, tb/...), so a killed sweep started again skips finished trials and resumes
unfinished ALGD ones exactly (the trainer's resume); an unfinished SACLag trial starts again
from step 0 (OmniSafe has no resume). At the end (and with --report alone) the
trials are aggregated into OUT/sweep.md, sweep.csv and sweep.png: the last evaluation's
return and cost, mean +- std over seeds, per task and override set, and the curves.
`tensorboard --logdir OUT` shows every trial.

With --baseline saclag each task and seed also gets an OmniSafe SACLag trial (its own
environment, scripts/baseline-venv.sh), scheduled with the ALGD trials so that both run at
the same time on the same machine, and evaluated with ALGD's evaluator at the same limit
(algd_runtime/tools/omnisafe.py). The report then compares them at equal steps and at equal
wall-clock.
"""

from __future__ import annotations

import argparse
import csv
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from algd_runtime.tools.omnisafe import BaselineError, omnisafe_run_folder


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


def split_name(text: str) -> tuple[str | None, str]:
    """'ALGD:algo.dual=critic' -> ('ALGD', 'algo.dual=critic'): an optional name for the
    set in reports and plots (a key never holds ':')."""
    name, sep, rest = text.partition(":")
    if sep and "=" not in name and name.strip():
        return name.strip(), rest
    return None, text


def set_label(overrides: dict[str, Any], name: str | None = None) -> str:
    return name or ",".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"


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


BASELINE_LABEL = {"saclag": "SACLag (OmniSafe 0.5.0)"}
# How each learner's own training log measures cost (sweep.md's "own log" table).
OWN_COST = {"algd": "the config's budget (train.csv)",
            "saclag": "Safety-Gymnasium's native cost per 1000-step episode (OmniSafe's EpCost)"}
STOP_GRACE_S = 120.0  # how long a stopped sweep waits for its trials to save


def trial_name(task: str, seed: int, index: int | str) -> str:
    return f"{task}-set{index}-seed{seed}" if isinstance(index, int) else f"{task}-{index}-seed{seed}"


def finished(run_dir: Path, total_steps: int, system: str = "algd") -> bool:
    """ALGD: the trial's policy.pt says it ran all its steps. A baseline: its evaluated
    progress.csv (written once, at the end) reaches them."""
    if system != "algd":
        rows = _read_progress(run_dir)
        return bool(rows) and rows[-1]["step"] >= total_steps
    policy = run_dir / "policy.pt"
    if not policy.exists():
        return False
    from algd_runtime.learn.checkpoint import load_checkpoint

    state = load_checkpoint(policy).get("train_state") or {}
    return int(state.get("env_steps", 0)) >= total_steps


def run_trial(config: dict, run_dir: str, threads: int, system: str = "algd") -> dict:
    """One training run (resumed if its folder holds one); runs inside a Ray worker."""
    from algd_runtime.learn.config import config_from_dict

    cfg = config_from_dict(config)
    cfg.num_threads = threads
    if system == "saclag":
        return _run_saclag(cfg, config, Path(run_dir), threads)
    from algd_runtime.learn.trainer import Trainer

    trainer = Trainer(cfg, run_dir, resume=True, progress=False, echo=lambda m: None)
    summary = trainer.run()
    ev = summary["eval"]
    return {"env_steps": summary["env_steps"], "elapsed_s": summary["elapsed_s"],
            "return": ev.return_mean if ev else math.nan, "cost": ev.cost_mean if ev else math.nan}


def _run_saclag(cfg, config: dict, run_dir: Path, threads: int) -> dict:
    from algd_runtime.tools import omnisafe as baseline
    from algd_runtime.sim import make_task

    spec = make_task(cfg.task, seed=cfg.seed, budget=cfg.budget).task_spec
    limit = baseline.native_cost_limit(spec.cost_limit, spec.episode_length, spec.cost_semantics)
    folder = baseline.train_saclag(cfg.task, cfg.seed, cfg.total_steps, cfg.eval_every, limit,
                                   run_dir / "omnisafe", threads)
    baseline.evaluate_saclag(folder, config, run_dir)
    last = _read_progress(run_dir)[-1]
    return {"env_steps": int(last["step"]), "elapsed_s": last["time_s"], "return": last["return_mean"],
            "cost": last["cost_mean"]}


def trial_steps(run_dir: Path, system: str) -> int:
    """Environment steps a running trial has logged so far (0 before its first log row)."""
    if system == "algd":
        path = run_dir / "train.csv"
    else:
        folder = omnisafe_run_folder(run_dir / "omnisafe")
        path = folder / "progress.csv" if folder else run_dir / "missing"
    if not path.exists():
        return 0
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    key = "step" if system == "algd" else "TotalEnvSteps"
    return int(float(rows[-1][key])) if rows and rows[-1].get(key) else 0


def own_log(run_dir: Path, system: str) -> dict | None:
    """The last training-episode figures a trial's learner logged itself (None if none)."""
    if system == "algd":
        path, keys = run_dir / "train.csv", ("step", "train_return", "train_cost")
    else:
        folder = omnisafe_run_folder(run_dir / "omnisafe")
        path = folder / "progress.csv" if folder else run_dir / "missing"
        keys = ("TotalEnvSteps", "Metrics/EpRet", "Metrics/EpCost")
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(keys[1])]
    return dict(zip(("step", "return", "cost"), (float(rows[-1][k]) for k in keys))) if rows else None


def progress_line(out: Path, trials: list[dict], elapsed_s: float) -> str:
    """One line on the unfinished trials: steps logged of their total (queued ones at 0)."""
    parts = [f"{t['name']} {trial_steps(out / t['name'], t['system']) / t['total_steps']:.0%}" for t in trials]
    return f"[{elapsed_s / 60:.0f} min] " + ", ".join(parts)


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


def _summary(task: str, label: str, rows: list[dict]) -> dict:
    ret, ret_sd = _mean_std([r["return_mean"] for r in rows])
    cost, cost_sd = _mean_std([r["cost_mean"] for r in rows])
    time_s, _ = _mean_std([r.get("time_s", math.nan) for r in rows])
    cpu_s, _ = _mean_std([r.get("cpu_s", math.nan) for r in rows])
    return {"task": task, "set": label, "seeds": len(rows), "steps": int(min((r["step"] for r in rows), default=0)),
            "time_s": time_s, "cpu_s": cpu_s, "return_mean": ret, "return_std": ret_sd, "cost_mean": cost, "cost_std": cost_sd,
            "cost_limit": rows[0]["cost_limit"] if rows else math.nan}


def _table(rows: list[dict], clock: str = "time_s") -> list[str]:
    lines = [f"| task | trials | seeds | steps | {'CPU' if clock == 'cpu_s' else 'wall-clock'} (s) | return | cost | limit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    return lines + [f"| {r['task']} | {r['set']} | {r['seeds']} | {r['steps']} | {r[clock]:.0f} "
                    f"| {r['return_mean']:.2f} ± {r['return_std']:.2f} | {r['cost_mean']:.2f} ± {r['cost_std']:.2f} "
                    f"| {r['cost_limit']:g} |" for r in rows]


def _equal_time(curves: dict, clock: str) -> list[dict]:
    """Each group's last evaluations within the fastest group's mean final `clock` (time_s or
    cpu_s), per task where every trial logged that clock and at least two groups ran."""
    timed = []
    for task in sorted({task for task, _ in curves}):
        groups = {label: cs for (t, label), cs in curves.items() if t == task and cs}
        if len(groups) < 2 or not all(clock in c[-1] for cs in groups.values() for c in cs):
            continue
        budget = min(sum(c[-1][clock] for c in cs) / len(cs) for cs in groups.values())
        for label, cs in groups.items():
            within = [[row for row in c if row[clock] <= budget] for c in cs]
            if all(within):
                timed.append(_summary(task, label, [w[-1] for w in within]))
    return timed


def aggregate(out: Path, trials: list[dict]) -> list[dict]:
    """OUT/sweep.csv, sweep.md and sweep.png from the trials' progress.csv files: the last
    evaluation of each group (equal steps) and, where groups took different times, each
    one's last evaluation within the fastest group's wall-clock (equal wall-clock)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in trials:
        groups.setdefault((t["task"], t["set"]), []).append(t)
    curves = {key: [p for p in (_read_progress(out / m["name"]) for m in members) if p]
              for key, members in groups.items()}
    # At equal steps: each trial's last evaluation at or before the step that every trial of
    # its task has reached (an unfinished trial is not set beside finished ones' later figures).
    reached = {}
    for (task, _), cs in curves.items():
        for c in cs:
            reached[task] = min(reached.get(task, math.inf), c[-1]["step"])
    rows = [_summary(task, label, [[r for r in c if r["step"] <= reached[task]][-1] for c in cs])
            for (task, label), cs in curves.items()]
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["task"])
        w.writeheader()
        w.writerows(rows)
    lines = ["# algd-sweep", "", "## At equal steps", "",
             "Each trial's last evaluation at or before the step every trial of its task reached; mean ± std over "
             "seeds; wall-clock is the trials' own.", ""]
    lines += _table(rows)
    for clock, title, words in (("time_s", "wall-clock", "wall-clock"),
                                ("cpu_s", "compute", "CPU time (each trial's own process: fair where trials "
                                 "shared the machine unevenly)")):
        timed = _equal_time(curves, clock)
        if timed:
            lines += ["", f"## At equal {title}", "",
                      f"Each trial's last evaluation within the fastest group's mean {words} on the task.", ""]
            lines += _table(timed, clock)
    own = [(t["task"], t["set"], t["seed"], own_log(out / t["name"], t.get("system", "algd")), t.get("system", "algd"))
           for t in trials]
    own = [row for row in own if row[3]]
    if own:
        lines += ["", "## Each system's own log", "",
                  "Training episodes as each learner logs them (ALGD: the last 20; OmniSafe's SAC: its 50-episode window), "
                  "on its own episodes and costs: each measures cost its own way (the column says how), so "
                  "compare costs across systems in the tables above, from one evaluator.", "",
                  "| task | trials | seed | step | return | cost | cost is |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {task} | {label} | {seed} | {log['step']:.0f} | {log['return']:.2f} | {log['cost']:.2f} "
                  f"| {OWN_COST[system]} |" for task, label, seed, log, system in own]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    _plot(out, curves)
    return rows


def _plot(out: Path, curves: dict) -> None:
    """Return and cost against environment steps and against wall-clock, mean +- std over
    seeds (a group's curves are cut to its shortest), the limit drawn on the cost panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({task for task, _ in curves})
    fig, axes = plt.subplots(len(tasks), 4, figsize=(20, 3.6 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        limit = None
        for (t, label), cs in sorted(curves.items()):
            if t != task or not cs:
                continue
            n = min(len(c) for c in cs)
            steps = np.array([cs[0][i]["step"] for i in range(n)])
            times = np.array([[c[i].get("time_s", np.nan) for i in range(n)] for c in cs]).mean(0) / 60
            for col, (key, x) in enumerate((("return_mean", steps), ("cost_mean", steps),
                                            ("return_mean", times), ("cost_mean", times))):
                values = np.array([[c[i][key] for i in range(n)] for c in cs])
                mean, sd = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(n)
                axes[row][col].plot(x, mean, label=f"{label} ({len(values)} seeds)")
                low = np.maximum(mean - sd, 0) if key == "cost_mean" else mean - sd  # costs are >= 0
                axes[row][col].fill_between(x, low, mean + sd, alpha=0.2)
            limit = cs[0][0].get("cost_limit", limit)
        for col, (what, xlabel) in enumerate((("return", "environment steps"), ("cost", "environment steps"),
                                              ("return", "wall-clock (min)"), ("cost", "wall-clock (min)"))):
            ax = axes[row][col]
            if what == "cost" and limit is not None:
                ax.axhline(limit, color="red", linestyle="--", label=f"limit {limit:g}")
            ax.set_title(f"{task}: evaluation {what}")
            ax.set_xlabel(xlabel)
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
    p.add_argument("--set", action="append", default=[], metavar="[NAME:]KEY=VALUE[,KEY=VALUE]",
                   help="one override set, named NAME in reports (repeat for several; default: the config as it is)")
    p.add_argument("--config", type=Path, help="base config (default: configs/<task>.yaml where it exists)")
    p.add_argument("--preset", help="the config's preset (cpu or paper; default: cpu, as algd-train without "
                   "--device cuda)")
    p.add_argument("--steps", type=int, help="total environment steps per trial")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs Ray reserves for a trial (its torch threads)")
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use (default: all)")
    p.add_argument("--baseline", choices=sorted(BASELINE_LABEL), action="append", default=[],
                   help="also run this baseline on each task and seed, beside the ALGD trials")
    p.add_argument("--report", action="store_true", help="only aggregate the trials already in OUT")
    p.add_argument("--progress-every", type=float, default=300.0, metavar="S",
                   help="seconds between progress lines while trials run")
    args = p.parse_args(argv)

    from algd_runtime.data import task_config
    from algd_runtime.learn.config import ConfigError, config_from_dict, load_config

    try:
        named = [split_name(s) for s in args.set] or [(None, "")]
        sets = [parse_set(text) for _, text in named]
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps: expected a value >= 1, got {args.steps}")
        if args.cpus_per_trial < 1:
            raise ValueError(f"--cpus-per-trial: expected a value >= 1, got {args.cpus_per_trial}")
        trials = []
        for task in args.task:
            path = args.config or task_config(task)
            if args.preset and not path:
                raise ConfigError(f"--preset {args.preset}: {task} has no config to take it from")
            base = (load_config(path, {"task": task}, args.preset) if path else config_from_dict({"task": task})).to_dict()
            for index, overrides in enumerate(sets):
                for seed in args.seeds:
                    config = trial_config(base, task, seed, overrides, args.steps)
                    cfg = config_from_dict(config)  # a bad key or value stops here, naming it
                    trials.append({"task": task, "seed": seed, "set": set_label(overrides, named[index][0]), "config": config,
                                   "total_steps": cfg.total_steps, "name": trial_name(task, seed, index),
                                   "system": "algd"})
            for system in args.baseline:
                _check_baseline(system, task, config_from_dict(trial_config(base, task, args.seeds[0], sets[0],
                                                                            args.steps)))
                for seed in args.seeds:
                    # the baseline is judged like the first ALGD set: steps, evaluation, limit
                    config = trial_config(base, task, seed, sets[0], args.steps)
                    trials.append({"task": task, "seed": seed, "set": BASELINE_LABEL[system], "config": config,
                                   "total_steps": config_from_dict(config).total_steps,
                                   "name": trial_name(task, seed, system), "system": system})
    except (ConfigError, ValueError, BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report and not _run(args, trials):
        print("algd-sweep: stopped; `algd-sweep ... --report` aggregates what is there", file=sys.stderr)
        return 130
    rows = aggregate(args.out, trials)
    print((args.out / "sweep.md").read_text(), end="")
    print(f"wrote {args.out / 'sweep.md'}, sweep.csv, sweep.png (tensorboard --logdir {args.out})")
    unfinished = [t["name"] for t in trials if not finished(args.out / t["name"], t["total_steps"], t["system"])]
    if unfinished:
        print(f"algd-sweep: {len(unfinished)} of {len(trials)} trials unfinished ({', '.join(unfinished)}): the "
              f"tables hold what they logged so far; run again without --report to finish them", file=sys.stderr)
        return 1
    return 0 if all(r["seeds"] for r in rows) else 1


def _run(args, trials: list[dict]) -> bool:
    """Runs the unfinished trials; False when stopped (Ctrl-C or SIGTERM) before they ended."""
    import ray

    todo = [t for t in trials if not finished(args.out / t["name"], t["total_steps"], t["system"])]
    # Interleave systems so that each baseline trial runs beside an ALGD trial (same load).
    todo.sort(key=lambda t: (t["task"], t["seed"]))
    print(f"algd-sweep: {len(trials)} trials, {len(trials) - len(todo)} finished before, {len(todo)} to run "
          f"-> {args.out}", flush=True)
    if not todo:
        return True
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    pending: dict = {}
    # Ctrl-C and SIGTERM set a flag that the loop reads at least once a second: an exception
    # raised wherever the signal lands could land inside Ray's own code (seen once: a sweep
    # that went on after its SIGINT).
    stop = _StopRequest()
    old = {sig: signal.signal(sig, stop.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        remote = ray.remote(num_cpus=args.cpus_per_trial, max_retries=0)(run_trial)
        pending.update({remote.remote(t["config"], str((args.out / t["name"]).resolve()), args.cpus_per_trial,
                                      t["system"]): t for t in todo})
        t0, done, shown = time.monotonic(), 0, time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, args.progress_every))
            if stop.requested:
                _stop_trials(ray, pending, args.out, stop)
                return False
            if not ready:
                if time.monotonic() - shown >= args.progress_every:
                    print(progress_line(args.out, list(pending.values()), time.monotonic() - t0), flush=True)
                    shown = time.monotonic()
                continue
            trial = pending.pop(ready[0])
            done += 1
            try:
                res = ray.get(ready[0])
                print(f"[{done}/{len(todo)}] {trial['name']}: return {res['return']:.2f}, cost {res['cost']:.2f} "
                      f"after {res['env_steps']} steps ({res['elapsed_s']:.0f} s; sweep {time.monotonic() - t0:.0f} s)",
                      flush=True)
            except ray.exceptions.RayError as exc:
                print(f"[{done}/{len(todo)}] {trial['name']}: FAILED: {failure_cause(exc)}; "
                      f"run again to resume it", flush=True)
        return True
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        ray.shutdown()


def failure_cause(exc: BaseException) -> str:
    """What went wrong inside a failed Ray task, in one line: its own exception, not Ray's
    wrapper ("ray::run_trial() ...")."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _check_baseline(system: str, task: str, cfg) -> None:
    """A baseline that cannot keep this task's budget is refused before anything runs."""
    from algd_runtime.tools import omnisafe as baseline
    from algd_runtime.sim import make_task

    env = make_task(task, seed=cfg.seed, budget=cfg.budget)
    try:
        spec = env.task_spec
        baseline.native_cost_limit(spec.cost_limit, spec.episode_length, spec.cost_semantics)
    except BaselineError as exc:
        raise BaselineError(f"--baseline {system} on {task}: {exc}; hold both systems to one per-episode "
                            f"budget with --set budget=safety_gymnasium (Safety-Gymnasium's own: 25 per episode), "
                            f"or run without --baseline") from None
    finally:
        env.close()


class _StopRequest:
    """The first Ctrl-C or SIGTERM asks the sweep to stop; a second stops the waiting."""

    def __init__(self) -> None:
        self.requested = False

    def on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _stop_trials(ray, pending: dict, out: Path, stop: _StopRequest) -> None:
    """Ctrl-C or SIGTERM: each running trial gets a KeyboardInterrupt (ray.cancel), on which
    an ALGD trial saves its checkpoint and returns (the trainer's own Ctrl-C) and a SACLag
    trial kills its OmniSafe process; queued trials never start. A second Ctrl-C, or
    STOP_GRACE_S without an answer, stops waiting."""
    print(f"algd-sweep: stopping {len(pending)} trials; unfinished ALGD trials resume on the next run, "
          f"SACLag trials start again from step 0 (Ctrl-C again to stop waiting)", flush=True)
    for ref in pending:
        ray.cancel(ref)
    try:
        deadline = time.monotonic() + STOP_GRACE_S
        left = list(pending)
        while left and time.monotonic() < deadline:
            _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
    except KeyboardInterrupt:
        pass
    for trial in pending.values():
        again = " (starts again from 0 on the next run)" if trial["system"] != "algd" else ""
        print(f"  {trial['name']}: stopped at step {trial_steps(out / trial['name'], trial['system'])}{again}",
              flush=True)

if __name__ == "__main__":
    sys.exit(main())
