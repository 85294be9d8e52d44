"""Every command-line entry point. The commands with their own parser live here
(algd-train, algd-eval, algd-sign, algd-finetune, algd-bench, algd-import-reference); the
others hand over to their module, imported only when run (a robot install has no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence



def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _parse_shift(items: Sequence[str]) -> dict[str, float]:
    """--shift mass=1.5 --shift action_delay=2 -> {"mass": 1.5, "action_delay": 2}."""
    shift = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--shift: expected NAME=VALUE, got {item!r}")
        try:
            shift[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"--shift {key}: expected a number, got {value!r}") from None
    return shift


# -- algd-train ---------------------------------------------------------------------------
def train_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-train", description="Train an ALGD policy online.")
    p.add_argument("--task", help="task name (default: the config's, else PointHazard-v0)")
    p.add_argument("--config", type=Path, help="YAML config (default: configs/<task>.yaml if present)")
    p.add_argument("--steps", type=int, help="total environment steps (overrides the config)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--preset", help="a task config's preset: cpu (what a CPU finishes; the default without "
                   "--device cuda) or paper (the paper's settings, sized for a GPU)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/<task>-seed<S>/policy.pt")
    p.add_argument("--force", action="store_true", help="start over in a folder that holds a run (its files are removed)")
    p.add_argument("--shift", action="append", metavar="NAME=VALUE", help="domain-shift parameter")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from algd_runtime.learn.checkpoint import CheckpointError
    from algd_runtime.learn.config import ConfigError, config_from_dict, load_config, read_presets
    from algd_runtime.data import task_config

    if args.out.exists() and not args.out.is_dir():
        return _fail(f"--out: {args.out} is a file; expected the folder that holds the runs (nothing was written)")
    overrides: dict = {}
    if args.task:
        overrides["task"] = args.task
    if args.steps is not None:
        overrides["total_steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device:
        overrides["device"] = args.device
    try:
        if args.shift:
            overrides["shift"] = _parse_shift(args.shift)
        config_path = args.config or (task_config(args.task) if args.task else None)
        if args.preset and not config_path:
            raise ConfigError(f"--preset {args.preset}: no config to take it from (give --task or --config)")
        cfg = load_config(config_path, overrides, args.preset) if config_path else config_from_dict(overrides)
        presets = read_presets(config_path) if config_path else {}
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))

    from algd_runtime.learn.trainer import Trainer

    run_dir = args.out / f"{cfg.task}-seed{cfg.seed}"
    try:
        if args.resume and args.force:
            raise ValueError("--resume and --force: expected one of them (continue the run, or start over)")
        trainer = Trainer(cfg, run_dir, resume=args.resume, progress=not args.no_progress, force=args.force)
        cfg = trainer.cfg  # what will actually run (a resume runs the run's own config)
        print(f"config: {config_path or 'the built-in defaults (no shipped config for this task)'}", flush=True)
        if cfg.preset:
            why = "named" if args.preset else f"the default {'with' if cfg.device == 'cuda' else 'without'} --device cuda"
            others = ", ".join(f"--preset {n}" for n in presets if n != cfg.preset)
            print(f"preset: {cfg.preset} ({why}): {presets.get(cfg.preset, '')}"
                  + (f"; the others: {others}" if others else ""), flush=True)
        print(f"training {cfg.task} ({cfg.algo.variant}, seed {cfg.seed}, {cfg.total_steps} steps, "
              f"cost limit {trainer.spec.cost_limit:g} per {trainer.spec.cost_semantics}) -> {run_dir}",
              flush=True)
        summary = trainer.run()
    except (CheckpointError, ConfigError, ValueError) as exc:
        return _fail(str(exc))
    ev = summary["eval"]
    if ev is not None:
        print(f"final eval: return {ev.return_mean:.2f} ± {ev.return_std:.2f}, cost {ev.cost_mean:.2f} ± "
              f"{ev.cost_std:.2f} (limit {ev.cost_limit:g}, {'within' if ev.within_limit else 'OVER'})")
    print(f"saved {summary['policy']} after {summary['env_steps']} steps in {summary['elapsed_s']:.0f} s")
    return 130 if summary["interrupted"] else 0


# -- algd-eval ----------------------------------------------------------------------------
def eval_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-eval", description="Evaluate a policy.pt on its task.")
    p.add_argument("policy", type=Path)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--task", help="evaluate on another task with the same sizes")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--shift", action="append", metavar="NAME=VALUE", help="domain-shift parameter")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of x_K = 0")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)
    if args.episodes < 1:
        return _fail(f"--episodes: expected a value >= 1, got {args.episodes}")

    from algd_runtime.learn.checkpoint import CheckpointError, agent_from_checkpoint, load_checkpoint
    from algd_runtime.sim import make_task
    from algd_runtime.sim.conventions import apply_conventions
    from algd_runtime.learn.evaluation import evaluate

    try:
        ckpt = load_checkpoint(args.policy)
        agent = agent_from_checkpoint(ckpt, args.device, with_optimizers=False)
        spec = agent.spec
        shift = dict(spec.shift)
        shift.update(_parse_shift(args.shift))
        conventions = ckpt["config"].get("conventions", "robot")
        env = apply_conventions(make_task(args.task or spec.name, seed=args.seed, budget=spec.budget, **shift), conventions,
                                ckpt["config"].get("seed"))
    except (CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    es = env.task_spec
    if (es.obs_dim, es.act_dim) != (spec.obs_dim, spec.act_dim):
        return _fail(f"--task {es.name}: obs/act sizes {es.obs_dim}/{es.act_dim} do not match the "
                     f"policy's {spec.obs_dim}/{spec.act_dim}")
    res = evaluate(lambda o: agent.act(o, deterministic=not args.stochastic), env, args.episodes, args.seed)
    print(f"policy:  {args.policy} ({ckpt.get('origin', '?')}, lambda {agent.lam:.3f})")
    print(f"task:    {es.name}" + (f" shift {shift}" if shift else ""))
    print(f"return:  {res.return_mean:.2f} ± {res.return_std:.2f} over {args.episodes} episodes")
    print(f"cost:    {res.cost_mean:.2f} ± {res.cost_std:.2f} (limit {res.cost_limit:g} per "
          f"{es.cost_semantics}; {'within' if res.within_limit else 'OVER'} the limit, "
          f"{res.violations}/{args.episodes} episodes over)")
    bundle = args.policy.parent / "bundle"
    if (bundle / "manifest.yaml").is_file():  # what the robot will be given: would it take it?
        print(f"bundle:  {bundle}: {_bundle_trust(bundle)}")
    return 0


def _bundle_trust(bundle: Path, public_key: Path | None = None) -> str:
    from algd_runtime.contract.bundle import BundleError
    from algd_runtime.contract.signing import default_public_key_path, inspect_signature

    key = public_key or default_public_key_path()
    try:
        if not key.expanduser().is_file():
            return f"no public key at {key}: the nodes could not check who signed it"
        found = inspect_signature(bundle, key)
    except BundleError as exc:
        return f"NOT DEPLOYABLE: {exc}"
    return (f"signed by key {found.key_id} (trusted: {key})" if found.trusted
            else f"NOT TRUSTED, the controller refuses it: {found.reason}")


# -- algd-sign ----------------------------------------------------------------------------
def sign_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-sign", description=(
        "Sign a bundle (algd-export signs the bundles it writes), check who signed one, or make a key pair."))
    p.add_argument("bundle", type=Path, nargs="?")
    p.add_argument("--key", type=Path, help="the private signing key (default: ~/.config/algd-runtime/"
                                            "bundle_signing.key)")
    p.add_argument("--verify", action="store_true", help="say who signed BUNDLE; exit 1 unless the public key did")
    p.add_argument("--public-key", type=Path, help="with --verify: the trusted public key (default: "
                                                   "~/.config/algd-runtime/bundle_signing.pub)")
    p.add_argument("--new-key", type=Path, metavar="FILE", help="make a key pair: FILE and FILE's .pub")
    args = p.parse_args(argv)

    from algd_runtime.contract.bundle import BundleError
    from algd_runtime.contract.signing import create_signing_key, default_signing_key_path, sign_bundle

    if args.new_key:
        try:
            key, pub = create_signing_key(args.new_key)
        except FileExistsError:
            return _fail(f"--new-key: {args.new_key} exists; a key is never overwritten")
        print(f"created {key} (private: keep it where bundles are exported) and {pub} (copy it to the robot)")
        return 0
    if args.bundle is None:
        return _fail("expected a bundle folder (or --new-key FILE)")
    if args.verify:
        verdict = _bundle_trust(args.bundle, args.public_key)
        print(f"{args.bundle}: {verdict}")
        return 0 if verdict.startswith("signed by") else 1
    try:
        key_id = sign_bundle(args.bundle, args.key or default_signing_key_path())
    except BundleError as exc:
        return _fail(str(exc))
    print(f"signed {args.bundle}/signature.json with key {key_id}")
    return 0


# -- algd-finetune ------------------------------------------------------------------------
def finetune_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-finetune", description=(
        "Continue ALGD training from a deployed policy on a shifted or real system, under the budget guard; "
        "writes a new policy.pt and a before/after report with plots."))
    p.add_argument("policy", type=Path, help="the deployed policy.pt")
    p.add_argument("--target", required=True, help="sim (the policy's task), sim:TASK, ros (namespace /algd) or "
                   "ros:NAMESPACE (a robot speaking the controller's topics, e.g. algd-sim in lockstep)")
    p.add_argument("--shift", action="append", metavar="NAME=VALUE", help="sim target: domain-shift parameter")
    p.add_argument("--steps", type=int, default=12000, help="environment steps on the target (default 12000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run folder (default: runs/finetune/<task>-seed<S>)")
    p.add_argument("--reset", action="append", default=[], choices=["critics", "lambda"],
                   help="start this afresh instead of keeping the source's (repeatable)")
    p.add_argument("--keep-replay", action="store_true", help="start from the source run's replay")
    p.add_argument("--data", type=Path, action="append", default=[], metavar="LOG.mcap",
                   help="a recorded run on the target (monitor's MCAP log) to add to the replay")
    p.add_argument("--no-guard", action="store_true", help="no budget guard (simulation only!)")
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes before and after (default 20)")
    p.add_argument("--warmup", type=int, default=400, help="target steps before the first update (default 400)")
    p.add_argument("--critic-warmup", type=int, default=2000,
                   help="target steps after --warmup in which only the critics and lambda learn (default 2000)")
    p.add_argument("--actor-lr-scale", type=float, default=0.3,
                   help="the actor's learning rate as a fraction of training's (default 0.3)")
    p.add_argument("--timeout", type=float, default=10.0, help="ros: seconds to wait for the robot")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning run in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from algd_runtime.learn.checkpoint import CheckpointError, load_checkpoint
    from algd_runtime.learn.finetune import FinetuneOptions, finetune, parse_target
    from algd_runtime.learn.guard import GuardConfig

    try:
        target = parse_target(args.target, _parse_shift(args.shift))
        if target.kind == "ros" and args.no_guard:
            return _fail("--no-guard: refused for a ros target; the guard is what keeps a robot within its budget")
        opts = FinetuneOptions(target, steps=args.steps, seed=args.seed, reset=tuple(dict.fromkeys(args.reset)),
                               keep_replay=args.keep_replay, data=tuple(args.data),
                               guard=None if args.no_guard else GuardConfig(), eval_episodes=args.eval_episodes,
                               warmup_steps=args.warmup, critic_warmup_steps=args.critic_warmup,
                               actor_lr_scale=args.actor_lr_scale, device=args.device, timeout_s=args.timeout)
        for path in opts.data:
            if not path.is_file():
                return _fail(f"--data: no such file {path}")
        if target.kind == "sim":
            name = target.task or load_checkpoint(args.policy)["task_spec"]["name"]
        else:
            name = "ros" + target.namespace.replace("/", "-")
        out = args.out or Path("runs") / "finetune" / f"{name}-seed{args.seed}"
        report = finetune(args.policy, out, opts, resume=args.resume, progress=not args.no_progress)
    except (CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    except TimeoutError as exc:
        return _fail(str(exc), 3)
    if report.get("interrupted"):
        print(f"interrupted: saved {report['policy']}; continue with --resume --out {out}")
        return 130
    return 0


# -- algd-bench ---------------------------------------------------------------------------
def bench_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-bench", description="Benchmarks that print numbers.")
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="env steps/s and gradient updates/s")
    t.add_argument("--task", action="append", help="task(s) (default: PointHazard-v0, SafetyPointGoal1-v0)")
    t.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    t.add_argument("--batch", type=int, help="batch size (default: the config's, else 256)")
    t.add_argument("--config", type=Path, help="take network sizes from this config (default: the paper's)")
    t.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    e = sub.add_parser("envs", help="collection steps/s with 1, 4, 8 copies of a task (gymnasium vector envs)")
    e.add_argument("--task", default="SafetyPointGoal1-v0")
    e.add_argument("--num-envs", type=int, action="append", help="copies (default: 1, 4 and 8)")
    e.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    e.add_argument("--config", type=Path, help="take the denoiser's size from this config (default: the paper's)")
    e.add_argument("--sync", action="store_true", help="step the copies in this process (default: one process each)")
    i = sub.add_parser("infer", help="inference latency of a bundle, against torch eager")
    i.add_argument("bundle", type=Path)
    i.add_argument("--policy", type=Path, help="policy.pt for the torch baseline (default: beside the bundle)")
    i.add_argument("--iters", type=int, default=2000)
    i.add_argument("--provider", action="append", choices=["cpu", "cuda", "tensorrt"],
                   help="providers to time (default: every one available)")
    i.add_argument("--guidance", type=float, default=0.3, help="w for the guided cases")
    g = sub.add_parser("guidance", help="return and cost on the task against run-time lambda, guidance scale "
                                        "and best-of-N (with and without the shield)")
    g.add_argument("bundle", type=Path, nargs="+", help="bundle(s): one per training seed, each beside its policy.pt")
    g.add_argument("--episodes", type=int, default=5, help="episodes per block")
    g.add_argument("--blocks", type=int, default=2, help="blocks of episodes per policy and setting")
    g.add_argument("--lambda", action="append", dest="lambdas", metavar="VALUE",
                   help="the multiplier: 'own' (the bundle's), a value, or '<k>xrate': k times the policy's "
                        "exchange rate |grad_a Q| / |grad_a Qc| (default: own, 1, 10 and 2xrate)")
    g.add_argument("--scale", type=float, action="append", dest="scales", help="guidance scale (default: 0, 0.3, 1)")
    g.add_argument("--best-of", type=int, action="append", help="best-of-N candidates (default: 4 and 16)")
    g.add_argument("--out", type=Path, help="write guidance.csv and guidance.png here")
    lp = sub.add_parser("loop", help="closed loop sim <-> controller (<-> monitor) over DDS on loopback")
    lp.add_argument("bundle", type=Path)
    lp.add_argument("--rate", type=float, action="append", help="control rate(s) in Hz (default: 500 and 1000)")
    lp.add_argument("--seconds", type=float, default=60.0)
    lp.add_argument("--provider", choices=["cpu", "cuda", "tensorrt", "auto"], default="cpu")
    lp.add_argument("--no-monitor", dest="monitor", action="store_false",
                    help="sim and controller only (the controller's interlock off)")
    lp.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside the graph")
    lp.add_argument("--realtime", type=int, default=0, metavar="PRIORITY",
                    help="run the nodes SCHED_FIFO at this priority (1-99; needs CAP_SYS_NICE): realtime_priority")
    lp.add_argument("--pin", action="store_true",
                    help="the controller on a CPU of its own (the last), the sim and the monitor on the first (their cpu_affinity)")
    lp.add_argument("--guidance", type=float, default=0.0, metavar="W",
                    help="guided reverse diffusion: the controller's guidance_scale (0: unguided)")
    lp.add_argument("--io", type=Path, metavar="FILE",
                    help="the robot speaks standard messages (an io file; its rate_hz set to each --rate)")
    lp.add_argument("--slice", type=int, metavar="US", dest="slice_us",
                    help="the nodes' sched_slice_us (default: theirs; 0: the kernel's slice)")
    lp.add_argument("--executor", choices=("lean", "rclpy"),
                    help="the nodes' executor (default: theirs, lean; rclpy: rclpy's single-threaded one)")
    sf = sub.add_parser("safety", help="fault matrix: controller, monitor and sim as processes, one fault per run")
    sf.add_argument("bundle", type=Path)
    sf.add_argument("--fault", action="append",
                    help="fault, or fault@rate (default: every fault at 500 Hz and the baseline at 100 and 1000 Hz)")
    sf.add_argument("--rate", type=float, action="append", help="control rate(s) in Hz for faults without @rate")
    sf.add_argument("--seconds", type=float, default=8.0, help="run time after warm-up per cell")
    sf.add_argument("--workdir", type=Path, help="keep each run's logs and summaries here (default: a temp folder)")
    sf.add_argument("--io", type=Path, metavar="FILE",
                    help="the robot speaks standard messages (an io file): its own faults too, at 100, 500 and 1000 Hz")
    sf.add_argument("--load", type=int, default=0, metavar="N", help="N CPU-bound processes beside each run")
    ch = sub.add_parser("chaos", help="soak: the graph for a long time, a random fault every --every seconds, "
                                      "each followed by the operator's reset")
    ch.add_argument("bundle", type=Path)
    ch.add_argument("--io", type=Path, metavar="FILE", help="the robot speaks standard messages (an io file)")
    ch.add_argument("--minutes", type=float, default=30.0)
    ch.add_argument("--rate", type=float, default=500.0, help="control rate in Hz")
    ch.add_argument("--every", type=float, default=30.0, metavar="S", help="seconds between faults (>= 10)")
    ch.add_argument("--seed", type=int, default=0, help="which faults, in which order")
    ch.add_argument("--fault", action="append", help="draw from these faults only (default: all of the contract's)")
    ch.add_argument("--workdir", type=Path, help="keep the logs, summaries and chaos.json here")
    ch.add_argument("--load", type=int, default=0, metavar="N", help="N CPU-bound processes beside the graph")
    args = p.parse_args(argv)
    if args.what == "safety":
        return _bench_safety(args)
    if args.what == "chaos":
        return _bench_chaos(args)
    if args.what == "infer":
        return _bench_infer(args)
    if args.what == "guidance":
        return _bench_guidance(args)
    if args.what == "envs":
        return _bench_envs(args)
    if args.what == "loop":
        from algd_runtime.tools.bench import bench_loop

        if not (args.bundle / "manifest.yaml").is_file():
            return _fail(f"{args.bundle}: no manifest.yaml (run algd-export first)")
        if args.load < 0:
            return _fail(f"--load: expected a count >= 0, got {args.load}")
        if not 0 <= args.realtime <= 99:
            return _fail(f"--realtime: expected a priority in 1..99 (0: off), got {args.realtime}")
        if args.io is not None and not args.io.is_file():
            return _fail(f"--io: expected an io file (see config/io/), got {args.io}")
        from algd_runtime.ros.realtime import slice_refusal

        refused = slice_refusal(args.slice_us) if args.slice_us else None
        if refused:
            return _fail("--slice: " + refused.removeprefix("sched_slice_us: "))
        if args.io is not None and not args.monitor:
            return _fail("--no-monitor with --io: a robot on standard messages holds until it hears the monitor's "
                         "e-stop state (SAFETY.md); run --io with the monitor")
        bench_loop(str(args.bundle), args.rate or [500.0, 1000.0], args.seconds, args.provider, args.monitor,
                   args.load, args.realtime, args.guidance, args.pin, str(args.io) if args.io else None, args.slice_us,
                   args.executor)
        return 0

    import torch

    from algd_runtime.tools.bench import bench_train
    from algd_runtime.learn.config import AlgoConfig, ConfigError, load_config

    tasks = args.task or ["PointHazard-v0", "SafetyPointGoal1-v0"]
    try:
        algo = load_config(args.config).algo if args.config else AlgoConfig()
        if args.batch is not None:
            algo.batch_size = args.batch
        if args.threads:
            torch.set_num_threads(args.threads)
        bench_train(tasks, algo, seconds=args.seconds, device=args.device)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    return 0


def _bench_envs(args) -> int:
    from algd_runtime.tools.bench import bench_envs
    from algd_runtime.learn.config import AlgoConfig, ConfigError, load_config
    from algd_runtime.sim import TASK_NAMES

    counts = args.num_envs or [1, 4, 8]
    if args.task not in TASK_NAMES:
        return _fail(f"--task: expected one of {sorted(TASK_NAMES)}, got {args.task!r}")
    if any(n < 1 for n in counts):
        return _fail(f"--num-envs: expected values >= 1, got {counts}")
    try:
        algo = load_config(args.config).algo if args.config else AlgoConfig()
    except ConfigError as exc:
        return _fail(str(exc))
    bench_envs(args.task, counts, algo, args.seconds, asynchronous=not args.sync)
    return 0


def _check_graph_bench(args) -> None:
    """What algd-bench safety and chaos check before starting a graph (ValueError, BundleError)."""
    from algd_runtime.deploy.runtime import PolicyRuntime

    PolicyRuntime.load(str(args.bundle), provider="cpu")  # a bad bundle fails here, with its reason
    if args.load < 0:
        raise ValueError(f"--load: expected a count >= 0, got {args.load}")
    if args.io is not None and not args.io.is_file():
        raise ValueError(f"--io: {args.io} is not a file")


def _bench_safety(args) -> int:
    from algd_runtime.tools.faults import bench_safety
    from algd_runtime.contract.bundle import BundleError

    try:
        _check_graph_bench(args)
        rows = bench_safety(args.bundle, args.fault, args.rate, args.seconds, workdir=args.workdir, io=args.io,
                            load=args.load)
    except (BundleError, ValueError) as exc:
        return _fail(str(exc))
    failed = [f"{r['fault']}@{r['rate_hz']:g}" for r in rows if not r["ok"]]
    if failed:
        print(f"expectations failed in: {', '.join(failed)}")
    return 1 if failed else 0


def _bench_chaos(args) -> int:
    from algd_runtime.tools.chaos import bench_chaos
    from algd_runtime.contract.bundle import BundleError

    try:
        _check_graph_bench(args)
        if not (args.minutes > 0 and args.rate > 0):
            raise ValueError(f"--minutes and --rate: expected values > 0, got {args.minutes}, {args.rate}")
        if not args.every >= 10:
            raise ValueError(f"--every: expected >= 10 seconds (a fault, its recovery and motion again), "
                             f"got {args.every}")
        from algd_runtime.tools.chaos import fault_pool

        fault_pool(args.io, args.fault)  # a misspelled fault fails before the graph starts
        r = bench_chaos(args.bundle, args.minutes, args.rate, args.io, args.every, args.seed, args.workdir, args.load,
                        faults=args.fault)
    except (BundleError, ValueError) as exc:
        return _fail(str(exc))
    return 0 if r["ok"] else 1


def _bench_infer(args) -> int:
    from algd_runtime.tools.bench import bench_infer
    from algd_runtime.contract.bundle import BundleError

    policy = args.policy or args.bundle.parent / "policy.pt"
    if not policy.is_file():
        print(f"note: no {policy}; timing ONNX Runtime only (give --policy for the torch baseline)")
        policy = None
    try:
        bench_infer(str(args.bundle), str(policy) if policy else None, args.iters, args.provider, args.guidance)
    except (BundleError, ValueError) as exc:
        return _fail(str(exc))
    return 0


def _bench_guidance(args) -> int:
    from algd_runtime.learn.checkpoint import CheckpointError
    from algd_runtime.tools.guidance import bench_guidance
    from algd_runtime.contract.bundle import BundleError

    for name, value in (("--episodes", args.episodes), ("--blocks", args.blocks)):
        if value < 1:
            return _fail(f"{name}: expected a count >= 1, got {value}")
    scales, best_of = args.scales or [0.0, 0.3, 1.0], args.best_of or [4, 16]
    lambdas = args.lambdas or ["own", "1", "10", "2xrate"]
    if min(scales) < 0 or min(best_of) < 1:
        return _fail("--scale: expected values >= 0; --best-of: expected counts >= 1")
    pairs = []
    for bundle in args.bundle:
        if not (bundle / "manifest.yaml").is_file():
            return _fail(f"{bundle}: no manifest.yaml (run algd-export first)")
        policy = bundle.parent / "policy.pt"
        if not policy.is_file():
            return _fail(f"{bundle}: no {policy} beside it (the task, its budget and layout come from it)")
        pairs.append((bundle, policy))
    try:
        bench_guidance(pairs, args.episodes, args.blocks, lambdas, scales, best_of, args.out)
    except (BundleError, CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    return 0


# -- algd-import-reference -------------------------------------------------------------------
def import_reference_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-import-reference",
                                description="Build a policy.pt from the reference code's three .pth files.")
    p.add_argument("--actor", required=True, type=Path, help="actor_*.pth")
    p.add_argument("--critics", required=True, type=Path, help="critics_*.pth")
    p.add_argument("--safety-critics", required=True, type=Path, help="safetycritics_*.pth")
    p.add_argument("--task", required=True, help="the task the model was trained on")
    p.add_argument("--lambda", dest="lam", type=float, default=0.6931,
                   help="Lagrange multiplier to store (the reference does not save it)")
    p.add_argument("-o", "--out", type=Path, default=Path("policy.pt"))
    args = p.parse_args(argv)

    from algd_runtime.learn.checkpoint import CheckpointError
    from algd_runtime.learn.reference import import_reference

    try:
        out = import_reference(args.actor, args.critics, args.safety_critics, args.task, args.out, args.lam)
    except (CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    print(f"wrote {out}")
    return 0


# -- the commands whose parser lives with their module --------------------------------------
def _hand_over(module: str):
    def main(argv: Sequence[str] | None = None) -> int:
        import importlib

        return importlib.import_module(f"algd_runtime.{module}").main(argv)

    main.__name__ = f"{module.rsplit('.', 1)[-1]}_main"
    main.__doc__ = f"algd_runtime.{module}.main"
    return main


sweep_main = _hand_over("tools.sweep")
diagnose_main = _hand_over("tools.diagnose")
demo_main = _hand_over("tools.demo")
export_main = _hand_over("export.cli")
controller_main = _hand_over("ros.controller_node")
monitor_main = _hand_over("ros.monitor_node")
sim_main = _hand_over("ros.sim_node")
launch_main = _hand_over("ros.launcher")
reset_main = _hand_over("ros.reset_cli")


_COMMANDS = {"train": train_main, "eval": eval_main, "bench": bench_main, "finetune": finetune_main,
             "import-reference": import_reference_main}

if __name__ == "__main__":  # python -m algd_runtime.cli train|eval|bench|import-reference ...
    if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
        sys.exit(_fail(f"usage: python -m algd_runtime.cli {{{','.join(_COMMANDS)}}} ..."))
    sys.exit(_COMMANDS[sys.argv[1]](sys.argv[2:]))
