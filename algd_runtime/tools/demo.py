"""algd-demo (`make demo`): the whole pipeline on the toy hazard task, in about 8 minutes.

    train (configs/PointHazard-v0.yaml; a finished policy in the output folder is reused, an
           unfinished one resumed, and training stops at --train-minutes whatever happens)
      -> export (skipped when the bundle already holds this policy)
      -> sim robot + controller + monitor as three ROS 2 processes for --seconds
      -> a report: control rate, latency, episode returns and costs against the budget,
         monitor transitions; PNG plots; MCAP logs of the run.

Every file lands in --out (default runs/demo). Discovery stays on this machine unless the
caller set ROS_AUTOMATIC_DISCOVERY_RANGE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

TASK = "PointHazard-v0"
NAMESPACE = "algd_demo"


# -- 1. train ------------------------------------------------------------------------------------
def ensure_policy(out: Path, seed: int, minutes: float, echo: Callable[[str], None],
                  config: Path | None = None) -> Path:
    from algd_runtime.learn.checkpoint import load_checkpoint
    from algd_runtime.data import task_config
    from algd_runtime.learn.config import load_config
    from algd_runtime.learn.trainer import Trainer

    cfg = load_config(config or task_config(TASK), {"seed": seed})
    if cfg.task != TASK:
        raise ValueError(f"--config: task: expected {TASK} (the demo's sim robot), got {cfg.task}")
    run_dir = out / f"{TASK}-seed{seed}"
    policy = run_dir / "policy.pt"
    if policy.is_file():
        done = (load_checkpoint(policy).get("train_state") or {}).get("env_steps", 0)
        if done >= cfg.total_steps:
            echo(f"[1/4] train: reusing {policy} ({done} steps; delete it to train again)")
            return policy
        echo(f"[1/4] train: resuming {policy} at step {done} of {cfg.total_steps}")
    else:
        echo(f"[1/4] train: {TASK}, seed {seed}, {cfg.total_steps} steps (configs/{TASK}.yaml: about 5-6 "
             f"minutes on 2 CPU cores; at most {minutes:g})")
    # An unfinished run is resumed; one killed before its first checkpoint starts over.
    trainer = Trainer(cfg, run_dir, resume=policy.is_file(), force=not policy.is_file())
    timer = threading.Timer(minutes * 60.0, trainer.request_stop)
    timer.daemon = True
    timer.start()
    try:
        summary = trainer.run()
    finally:
        timer.cancel()
    if summary["interrupted"]:
        echo(f"      training stopped at the {minutes:g}-minute bound after {summary['env_steps']} steps; "
             f"the demo goes on with this policy (run it again to continue training)")
    ev = summary["eval"]
    if ev is not None:
        echo(f"      final evaluation: return {ev.return_mean:.2f}, cost {ev.cost_mean:.2f} (limit {ev.cost_limit:g})")
    return policy


# -- 2. export -----------------------------------------------------------------------------------
def ensure_bundle(policy: Path, bundle: Path, echo: Callable[[str], None]) -> Path:

    from algd_runtime.learn.checkpoint import load_checkpoint
    from algd_runtime.export.exporter import export_bundle

    from algd_runtime.contract.bundle import BundleError, read_manifest

    created = load_checkpoint(policy).get("created")
    try:  # a bundle that no longer verifies (edited, or from an older export) is made again
        held = (read_manifest(bundle).get("source") or {}).get("created") if bundle.is_dir() else None
    except BundleError:
        held = None
    if held == created:
        echo(f"[2/4] export: {bundle} already holds this policy")
        return bundle
    echo(f"[2/4] export: {policy} -> {bundle} (ONNX, parity on 1000 observations)")
    m = export_bundle(policy, bundle, force=True)  # the demo's own bundle, made again each run
    echo(f"      parity max abs error {max(m['parity']['max_abs_error'].values()):.1e} (tolerance "
         f"{m['parity']['tolerance']:g})")
    return bundle


# -- 3. the ROS 2 graph --------------------------------------------------------------------------
def run_graph(bundle: Path, out: Path, seconds: float, rate: float, seed: int,
              echo: Callable[[str], None]) -> dict:
    from algd_runtime.ros.launcher import default_params, node_command, stop_nodes

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    files = {n: logs / f"{n}.json" for n in ("sim", "controller", "monitor")}
    for f in list(files.values()) + list(logs.glob("*.mcap")):
        f.unlink(missing_ok=True)
    params = default_params()
    from algd_runtime.contract.keys import create_key

    key = out / "operator.key"  # the demo's own operator key (algd-reset --key runs/demo/operator.key)
    if not key.is_file():
        create_key(key)
    safety = {"operator_key_file": key, "stop_latch": "episode"}
    commands = {
        # lockstep with a one-period timeout: the sim keeps its rate, and a late action is
        # replaced by the held one as on a robot, but an on-time answer is never missed.
        "sim": node_command("sim", NAMESPACE, params, None, seed=seed, rate_hz=float(rate), lockstep="true",
                            lockstep_timeout_s=1.0 / rate, summary_file=files["sim"]),
        # Per-episode budgets and a sim that resets itself: a spent budget stops the rest of
        # its episode (on a robot the default, stop_latch:=operator, waits for a person).
        "controller": node_command("controller", NAMESPACE, params, str(bundle), provider="cpu",
                                   control_rate_hz=float(rate), obs_timeout_s=3.0 / rate, task=TASK,
                                   summary_file=files["controller"], record=logs / "controller.mcap", **safety),
        "monitor": node_command("monitor", NAMESPACE, params, str(bundle), summary_file=files["monitor"],
                                record=logs / "monitor.mcap", state_file=logs / "monitor_state.json", **safety),
    }
    echo(f"[3/4] run: sim robot + controller + monitor in /{NAMESPACE} at {rate:g} Hz for {seconds:g} s "
         f"(ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID', '0')}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']})")
    procs = {}
    try:
        # Controller and monitor first, so the sim's first episode has someone listening.
        for name in ("controller", "monitor", "sim"):
            with open(logs / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(commands[name], env=env, stdout=log, stderr=subprocess.STDOUT)
            if name == "monitor":
                time.sleep(2.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"node(s) exited early: {dead}; see {logs}/<node>.log")
            time.sleep(min(10.0, seconds - (time.monotonic() - t0)) if seconds > 0 else 0.1)
            echo(f"      {min(time.monotonic() - t0, seconds):5.0f} / {seconds:g} s")
    finally:
        stop_nodes(procs, timeout=20.0)
    missing = [n for n, f in files.items() if not f.is_file()]
    if missing:
        raise RuntimeError(f"no summary from {', '.join(missing)}; see {logs}/<node>.log")
    return {n: json.loads(f.read_text()) for n, f in files.items()} | {"seconds": seconds, "rate_hz": rate}


def safety_checks(controller: dict, monitor: dict, sim: dict) -> list[str]:
    """What guarded the run, from what each node reports it ran with (SAFETY.md has the
    whole contract)."""
    c = controller.get("safety") or {}
    bound = c.get("step_cost_bound")
    lines = [
        f"controller budget account: limit {c.get('budget'):g} per episode, step-cost margin "
        f"{bound if bound else 'the largest step cost seen'}; every action carries its lease",
        (f"monitor interlock: signed heartbeats at {monitor.get('heartbeat_rate_hz', 0):g} Hz, deadline "
         f"{c.get('monitor_timeout_s', 0) * 1e3:g} ms, lag {c.get('monitor_max_lag_s', 0) * 1e3:g} ms "
         f"(no live monitor, no motion)") if c.get("monitor_interlock") else "monitor interlock: OFF",
        f"independent monitor: escalation, shield, e-stop (re-sent every {monitor.get('estop_period_s', 0):g} s); "
        f"sequence gaps counted as the worst case",
        f"stop latch: {c.get('stop_latch')} (controller), {monitor.get('stop_latch')} (monitor); faults latch "
        f"until algd-reset",
        f"start-up hold {c.get('startup_hold_s', 0):g} s; safe action: {c.get('safe_action')}; actions clipped to "
        f"the bundle's bounds; robot command timeout {sim.get('cmd_timeout_s', 0):g} s",
        f"bundle: digest {str(c.get('bundle_digest'))[:16]} and manifest verified at load"
        f"{', task checked' if c.get('task_checked') else ''}"
        f"{', digest pinned' if c.get('digest_pinned') else ''}; operator key for resets",
    ]
    return lines


# -- 4. report -----------------------------------------------------------------------------------
def build_report(run: dict, policy: Path, bundle: Path, out: Path) -> dict:
    sim, ctl, mon = run["sim"], run["controller"], run["monitor"]
    limit = float(mon["limit"])
    costs, returns = [float(c) for c in sim["costs"]], [float(r) for r in sim["returns"]]
    seconds = run["seconds"]
    return {
        "policy": str(policy), "bundle": str(bundle), "seconds": seconds, "rate_hz": run["rate_hz"],
        "sim_steps_per_s": sim["steps"] / seconds,
        "controller_decisions_per_s": ctl["ticks"] / seconds,
        "fallbacks": ctl["fallbacks"] - ctl.get("fallback_no_observation", 0) - ctl.get("fallback_stop", 0),
        "fallbacks_by_reason": {k[9:]: v for k, v in ctl.items()
                                if k.startswith("fallback_") and v and k not in ("fallback_no_observation",
                                                                                 "fallback_stop")},
        "ticks_before_first_observation": ctl.get("fallback_no_observation", 0),
        "latency_ms": {"p50": sim["latency_p50_ms"], "p99": sim["latency_p99_ms"], "max": sim["latency_max_ms"],
                       "answered": sim["answered"], "controller_p50": ctl["latency_p50_ms"],
                       "controller_p99": ctl["latency_p99_ms"]},
        "episodes": len(costs), "returns": returns, "costs": costs, "cost_limit": limit,
        "return_mean": float(np.mean(returns)) if returns else float("nan"),
        "cost_mean": float(np.mean(costs)) if costs else float("nan"),
        "episodes_over_budget": int(sum(c > limit for c in costs)),
        "within_budget": bool(costs) and all(c <= limit for c in costs),
        "monitor_final_level": mon["level"], "transitions": mon["transitions"],
        "safety_checks": safety_checks(ctl, mon, sim), "stops": ctl.get("fallback_stop", 0),
        "latched_at_exit": ctl.get("latched", {}), "missed_steps": {"controller": ctl.get("missed_steps", 0),
                                                                   "monitor": mon.get("missed_steps", 0)},
        "mcap": sorted(str(p) for p in (out / "logs").glob("*.mcap")),
    }


def report_text(r: dict) -> str:
    lat = r["latency_ms"]
    lines = [
        f"# algd-runtime demo: {TASK}",
        "",
        f"- policy `{r['policy']}`, bundle `{r['bundle']}`",
        f"- control rate: {r['sim_steps_per_s']:.1f} steps/s at the robot, {r['controller_decisions_per_s']:.1f} "
        f"decisions/s at the controller (asked {r['rate_hz']:g} Hz, {r['seconds']:g} s); "
        f"{r['fallbacks']} fallbacks{' ' + str(r['fallbacks_by_reason']) if r['fallbacks'] else ''} after the first "
        f"observation",
        f"- observation -> action latency (measured at the robot): p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, "
        f"max {lat['max']:.3f} ms over {lat['answered']} observations; inside the controller p50 "
        f"{lat['controller_p50']:.3f} ms, p99 {lat['controller_p99']:.3f} ms",
        f"- episodes: {r['episodes']}, return {r['return_mean']:.2f} mean, cost {r['cost_mean']:.2f} mean, "
        f"max {max(r['costs'], default=float('nan')):g} against a budget of {r['cost_limit']:g} per episode: "
        + ("WITHIN the budget in every episode" if r["within_budget"]
           else f"{r['episodes_over_budget']} episode(s) OVER the budget" if r["episodes"]
           else f"NO episode finished (controller latched: {r['latched_at_exit'] or 'no'})"),
        f"- monitor: {len(r['transitions'])} transitions, final level {r['monitor_final_level']}",
        f"- safety checks active ({r['stops']} stop decisions, missed steps {r['missed_steps']}):",
        *[f"  - {c}" for c in r["safety_checks"]],
    ]
    lines += [f"  - episode {t['episode']}, step {t['step']}: {t['old']} -> {t['new']} ({t['reason']})"
              for t in r["transitions"][:30]]
    if len(r["transitions"]) > 30:
        lines.append(f"  - ... {len(r['transitions']) - 30} more in report.json")
    if r.get("plots"):
        lines.append(f"- plots: {', '.join(r['plots'])}")
    lines.append(f"- logs (MCAP): {', '.join(r['mcap']) or 'none'}")
    return "\n".join(lines) + "\n"


def write_outputs(r: dict, run_dir: Path, out: Path, echo: Callable[[str], None]) -> None:
    from algd_runtime.learn import plots
    from algd_runtime.contract.atomic import atomic_write

    try:
        r["plots"] = [str(p) for p in (
            plots.episodes(r["returns"], r["costs"], r["cost_limit"], out / "run_episodes.png",
                           f"{TASK} over ROS 2: {r['episodes']} episodes in {r['seconds']:g} s",
                           marked=sorted({t["episode"] for t in r["transitions"]
                                   if t["new"] != "OK" and t["episode"] < r["episodes"]}),
                           marked_label="monitor escalated"),
            plots.training_curves(run_dir, out / "training_curves.png", f"training {TASK}"))]
    except plots.MissingPlotting as exc:
        echo(f"no plots: {exc}")
    with atomic_write(out / "report.json", "w") as f:
        json.dump(r, f, indent=1)
    with atomic_write(out / "report.md", "w") as f:
        f.write(report_text(r))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=int, default=1, help="training seed (default 1)")
    p.add_argument("--train-minutes", type=float, default=10.0, help="upper bound on training time")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the ROS graph runs (default 60)")
    p.add_argument("--rate", type=float, default=100.0, help="control rate in Hz (default 100)")
    p.add_argument("--config", type=Path, help=f"training config (default configs/{TASK}.yaml)")
    args = p.parse_args(argv)
    for name in ("train_minutes", "seconds", "rate"):
        if not getattr(args, name) > 0:
            print(f"error: --{name.replace('_', '-')}: expected a value > 0, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    echo = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.monotonic()
    try:
        policy = ensure_policy(args.out, args.seed, args.train_minutes, echo, args.config)
        bundle = ensure_bundle(policy, args.out / "bundle", echo)
        run = run_graph(bundle, args.out, args.seconds, args.rate, seed=10_000 + args.seed, echo=echo)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    echo("[4/4] report")
    r = build_report(run, policy, bundle, args.out)
    write_outputs(r, policy.parent, args.out, echo)
    echo("")
    echo(report_text(r))
    echo(f"wrote {args.out}/report.md and report.json in {time.monotonic() - t0:.0f} s")
    return 0 if r["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
