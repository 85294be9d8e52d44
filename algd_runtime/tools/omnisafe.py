"""The SACLag baseline as a trial of algd-sweep: train in OmniSafe's own environment, then
judge its saved actors with ALGD's evaluator.

OmniSafe 0.5.0 runs in its own virtual environment (scripts/baseline-venv.sh) through
baseline/saclag.py. Its own evaluation (one native 1000-step episode per epoch) is kept in
its progress.csv as its native metric. For the side by side, every saved actor (one per
evaluation interval) is evaluated here with `trainer.evaluate`: the same task wrapper,
episode length, reset seeds and episode count as an ALGD trial of the same seed, written to
the trial's progress.csv in ALGD's columns, so one aggregation serves both systems.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from algd_runtime.contract.atomic import atomic_write

REPO = Path(__file__).resolve().parents[2]
SACLAG_SCRIPT = REPO / "baseline" / "saclag.py"
DEFAULT_PYTHON = REPO / ".venv-omnisafe" / "bin" / "python"
NATIVE_EPISODE_STEPS = 1000  # Safety-Gymnasium's own episode length, which OmniSafe trains on


class BaselineError(RuntimeError):
    pass


def native_cost_limit(cost_limit: float, episode_length: int, cost_semantics: str) -> float:
    """Our per-episode limit at the same cost per step over a native 1000-step episode."""
    if cost_semantics != "episode":
        raise BaselineError("the SACLag baseline constrains the summed episode cost; this task's budget is "
                            f"{cost_semantics!r} (expected a task with cost_semantics 'episode')")
    return cost_limit * NATIVE_EPISODE_STEPS / episode_length


def baseline_python() -> Path:
    path = Path(os.environ.get("ALGD_BASELINE_PYTHON", DEFAULT_PYTHON))
    if not path.exists():
        raise BaselineError(f"no baseline Python at {path}: run scripts/baseline-venv.sh "
                            "(or set ALGD_BASELINE_PYTHON)")
    return path


class SACLagActor:
    """OmniSafe's GaussianSACActor, deterministic: tanh of the mean head of its MLP
    (Linear/ReLU layers saved as net.<i>.weight/bias; the second half of the output is
    log std). The action space here is [-1, 1], where OmniSafe's ActionScale is the identity."""

    def __init__(self, state: dict[str, torch.Tensor]):
        indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("net.") and k.endswith(".weight")})
        if not indices:
            raise BaselineError("not an OmniSafe actor: no net.<i>.weight in the saved 'pi'")
        self.layers = [(state[f"net.{i}.weight"].float(), state[f"net.{i}.bias"].float()) for i in indices]

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, np.float32))
        for j, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if j < len(self.layers) - 1:
                x = torch.relu(x)
        mean = x[: x.shape[-1] // 2]
        return torch.tanh(mean).numpy()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def omnisafe_run_folder(out: Path) -> Path | None:
    """OmniSafe writes OUT/SACLag-{task}/seed-NNN-<time>/; the newest one."""
    found = sorted(out.glob("*/seed-*/progress.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def _completed(folder: Path | None, steps: int) -> bool:
    if folder is None:
        return False
    rows = _read_csv(folder / "progress.csv")
    return bool(rows) and int(float(rows[-1]["TotalEnvSteps"])) >= steps


def _die_with_parent() -> None:
    """In the child, before exec: Linux kills it when the Ray worker that started it dies
    (a stopped sweep must not leave OmniSafe training on)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train_saclag(task: str, seed: int, steps: int, epoch_steps: int, cost_limit: float, out: Path,
                 threads: int = 1) -> Path:
    """OmniSafe's SACLag in its own environment; reuses a completed run, restarts an
    unfinished one (OmniSafe cannot resume). Returns OmniSafe's run folder."""
    folder = omnisafe_run_folder(out)
    if _completed(folder, steps):
        return folder
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [str(baseline_python()), str(SACLAG_SCRIPT), "--task", task, "--seed", str(seed), "--steps", str(steps),
           "--cost-limit", repr(cost_limit), "--threads", str(threads), "--epoch-steps", str(epoch_steps),
           "--save-every-epoch", "--out", str(out)]
    with (out / "omnisafe.log").open("w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent).returncode
    folder = omnisafe_run_folder(out)
    if rc != 0 or not _completed(folder, steps):
        raise BaselineError(f"SACLag on {task} seed {seed} failed (exit {rc}); see {out / 'omnisafe.log'}")
    return folder


def evaluate_saclag(folder: Path, config: dict, run_dir: Path) -> Path:
    """Every saved actor of an OmniSafe run, evaluated as an ALGD trial of the same config
    would be; writes run_dir/progress.csv (ALGD's columns; lambda is OmniSafe's multiplier)."""
    from algd_runtime.learn.collector import make_eval_task
    from algd_runtime.learn.config import config_from_dict
    from algd_runtime.learn.evaluation import eval_seed_of, evaluate
    from algd_runtime.learn.run_folder import EVAL_FIELDS

    cfg = config_from_dict(config)
    env = make_eval_task(cfg)
    rows = []
    for epoch_row in _read_csv(folder / "progress.csv"):
        epoch = int(float(epoch_row["Train/Epoch"]))
        saved = folder / "torch_save" / f"epoch-{epoch + 1}.pt"  # saved after the epoch's log row
        if not saved.exists():
            continue
        act = SACLagActor(torch.load(saved, map_location="cpu", weights_only=True)["pi"])
        res = evaluate(act, env, cfg.eval_episodes, eval_seed_of(cfg.seed))
        rows.append({"step": int(float(epoch_row["TotalEnvSteps"])), "time_s": float(epoch_row["Time/Total"]),
                     "return_mean": res.return_mean, "return_std": res.return_std, "cost_mean": res.cost_mean,
                     "cost_std": res.cost_std, "cost_limit": res.cost_limit, "violations": res.violations,
                     "episodes": math.nan, "lambda": float(epoch_row.get("Metrics/LagrangeMultiplier", "nan")),
                     "grad_steps": math.nan})
        print(f"SACLag {cfg.task} seed {cfg.seed} step {rows[-1]['step']}: return {res.return_mean:.2f}, "
              f"cost {res.cost_mean:.2f}", file=sys.stderr, flush=True)
    if not rows:
        raise BaselineError(f"{folder}: no saved actors (torch_save/epoch-N.pt) to evaluate")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / "progress.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=EVAL_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return run_dir / "progress.csv"
