"""OmniSafe's SACLag on a Safety-Gymnasium task: the baseline ALGD is compared with
(BENCHMARKS.md). Runs in the baseline's own environment, made by scripts/baseline-venv.sh:

    .venv-omnisafe/bin/python baseline/saclag.py --task SafetyPointGoal1-v0 --seed 1 \\
        --steps 100000 --cost-limit 25 --out runs/baseline

The multiplier learns from the first epoch (OmniSafe's default waits 100 epochs, 200k
steps, so its runs would be unconstrained for our whole budget), from 0.001 at an Adam rate
of 1e-4 per update: OmniSafe's own PointGoal1 rate (5e-7, from 0) moves it by at most ~0.05
in 100k updates, which would leave it unconstrained all the same. Safety-Gymnasium's own
episodes are used (PointGoal1: 1000 steps; ALGD's 400-step episodes with a limit of 10 spend
the same 0.025 per step as 25 per 1000 steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="SafetyPointGoal1-v0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100_000, help="environment steps")
    p.add_argument("--cost-limit", type=float, default=25.0, help="per Safety-Gymnasium episode")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--epoch-steps", type=int, default=2000, help="env steps per OmniSafe epoch (a log row)")
    p.add_argument("--start-learning", type=int, default=10_000, help="random-action steps before learning")
    p.add_argument("--lambda-lr", type=float, default=1e-4, help="Adam rate of the Lagrange multiplier")
    p.add_argument("--lambda-init", type=float, default=0.001, help="initial Lagrange multiplier")
    p.add_argument("--save-every-epoch", action=argparse.BooleanOptionalAction, default=True,
                   help="save the actor after every epoch (default: yes; algd-sweep and the evaluator score each "
                        "one, so without them only the final actor can be scored)")
    p.add_argument("--out", type=Path, default=Path("runs/baseline"))
    args = p.parse_args(argv)
    for name in ("steps", "epoch_steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a value >= 1, got {getattr(args, name)}")
    if args.lambda_lr <= 0 or args.lambda_init < 0:
        p.error(f"--lambda-lr / --lambda-init: expected > 0 / >= 0, got {args.lambda_lr} / {args.lambda_init}")
    if args.cost_limit <= 0:
        p.error(f"--cost-limit: expected a value > 0, got {args.cost_limit}")

    # Safety-Gymnasium 1.0.0 does not import on Python 3.11 without our fix. Loaded by path:
    # this environment has OmniSafe, not algd_runtime.
    spec = importlib.util.spec_from_file_location("sg_import_fix", ROOT / "algd_runtime" / "sim" / "sg_import_fix.py")
    sg_import_fix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sg_import_fix)

    sg_import_fix.install()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import omnisafe

    cfgs = {
        "seed": args.seed,
        "train_cfgs": {"total_steps": args.steps, "torch_threads": args.threads, "device": "cpu",
                       "vector_env_nums": 1},
        "algo_cfgs": {"steps_per_epoch": args.epoch_steps, "warmup_epochs": 0,
                      "start_learning_steps": args.start_learning},
        "lagrange_cfgs": {"cost_limit": args.cost_limit, "lambda_lr": args.lambda_lr,
                          "lagrangian_multiplier_init": args.lambda_init},
        "logger_cfgs": {"log_dir": str(args.out.resolve()), "use_wandb": False, "use_tensorboard": True,
                        **({"save_model_freq": 1} if args.save_every_epoch else {})},
    }
    # Said at the start: ALGD's runs of the same task may be held to another limit (algd-train prints its own).
    print(f"budget: cost limit {args.cost_limit:g} on Safety-Gymnasium's native cost summed over a 1000-step episode "
          f"(OmniSafe's SACLag)", flush=True)
    omnisafe.Agent("SACLag", args.task, custom_cfgs=cfgs).learn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
