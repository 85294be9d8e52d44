"""A training run's folder: what it holds, when a new run may write into it, which config a
resumed run takes, and the logs it appends (CSV, and TensorBoard where installed)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any, Callable

from algd_runtime.learn.checkpoint import CheckpointError, load_checkpoint
from algd_runtime.learn.config import TrainConfig

POLICY_FILE = "policy.pt"
# What a run writes in its folder: what --force removes to start over (nothing else).
RUN_FILES = ("policy.pt", "progress.csv", "train.csv", "episodes.csv", "tb", "replay-*.npz")
# Config changes a resumed run takes (printed): they change how long or where it runs, not
# what it learns. Any other change is refused.
RESUME_MAY_CHANGE = ("total_steps", "device", "num_threads", "eval_every", "eval_episodes", "log_every",
                     "checkpoint_every", "preset")  # preset: a name; what it sets is compared key by key

EVAL_FIELDS = ["step", "time_s", "cpu_s", "return_mean", "return_std", "cost_mean", "cost_std", "cost_limit",
               "violations", "episodes", "lambda", "grad_steps"]
TRAIN_FIELDS = ["step", "time_s", "episodes", "train_return", "train_cost", "lambda", "critic_loss",
                "cost_critic_loss", "actor_loss", "score_loss", "lambda_loss", "q_policy",
                "qc_policy", "qc_replay", "grad_steps", "steps_per_s"]
EPISODE_FIELDS = ["step", "episode", "return", "cost", "cost_limit", "length", "ended_by_guard", "shielded_steps"]


def check_run_dir(run_dir: Path, resume: bool, force: bool, echo: Callable[[str], None]) -> None:
    """A new run never writes into another one: a folder holding a run needs --resume (to
    continue it) or --force (to start over: the run's own files are removed, nothing else)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out: {run_dir} is a file; expected a folder for the run (nothing was written)")
    if resume or not run_dir.is_dir():
        return
    ours = _run_files(run_dir)
    if not ours:
        return
    if not force:
        what = "a finished or interrupted run" if (run_dir / POLICY_FILE).exists() else "a run's files"
        raise ValueError(f"{run_dir} holds {what} ({', '.join(sorted(p.name for p in ours)[:4])}); continue it "
                         f"with --resume, or start over with --force (nothing was changed)")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    echo(f"--force: removed the earlier run in {run_dir} ({len(ours)} files and folders)")


def _run_files(run_dir: Path) -> list[Path]:
    return [p for pattern in RUN_FILES for p in run_dir.glob(pattern)]


def read_resume_checkpoint(run_dir: Path, echo: Callable[[str], None]) -> dict | None:
    """The checkpoint a --resume continues from, or None (and said) where the folder holds no
    run yet. A folder with a run's files but no policy.pt is refused."""
    policy_path = run_dir / POLICY_FILE
    if not policy_path.exists():
        if _run_files(run_dir):
            raise ValueError(f"--resume: {run_dir} has no {POLICY_FILE} to resume from, but holds a run's "
                             f"files; start over with --force (nothing was changed)")
        echo(f"--resume: no {policy_path} yet; starting a new run")
        return None
    ckpt = load_checkpoint(policy_path)
    if ckpt.get("origin") not in ("trained", "finetune") or not ckpt.get("train_state"):
        raise CheckpointError(f"{policy_path}: holds no training state to resume from")
    return ckpt


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "shift" else {f"{prefix}{k}": v})
    return out


def resumed_config(stored: TrainConfig, given: TrainConfig, where: Path, echo: Callable[[str], None]) -> TrainConfig:
    """The run's own config, with the changes a resume may take (RESUME_MAY_CHANGE) applied
    and printed; any other change is refused, listed."""
    old, new = _flat(stored.to_dict()), _flat(given.to_dict())
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        listed = ", ".join(f"{k} (run: {a!r}, given: {b!r})" for k, (a, b) in list(refused.items())[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise ValueError(f"--resume: the config differs from the run's in {where}: {listed}{more}; resume with the "
                         f"run's config, or start over with --force (may change on resume: "
                         f"{', '.join(RESUME_MAY_CHANGE)})")
    for k, (a, b) in changed.items():
        setattr(stored, k, b)
        echo(f"resume: {k} {a!r} -> {b!r}")
    return stored


class CsvLog:
    """Appends rows; on resume drops rows written after the checkpoint's step."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None):
        self.path, self.fields = path, fields
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            self._rewrite(rows)
        else:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)


class RunLog:
    """The run's three CSV logs (progress.csv: evaluations, train.csv: update statistics,
    episodes.csv: training episodes) and TensorBoard's copy of the first two."""

    def __init__(self, run_dir: Path, resume_step: int | None, echo: Callable[[str], None]):
        self.evaluations = CsvLog(run_dir / "progress.csv", EVAL_FIELDS, resume_step)
        self.training = CsvLog(run_dir / "train.csv", TRAIN_FIELDS, resume_step)
        self.episodes = CsvLog(run_dir / "episodes.csv", EPISODE_FIELDS, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            echo("tensorboard not installed: CSV logs only")
            self.tb = None
        else:
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)

    def train(self, row: dict[str, Any]) -> None:
        self.training.write(row)
        self._scalars("train", row, [k for k in row if k != "step"])

    def evaluation(self, row: dict[str, Any]) -> None:
        self.evaluations.write(row)
        self._scalars("eval", row, ["return_mean", "cost_mean", "lambda", "violations"])

    def episode(self, row: dict[str, Any]) -> None:
        self.episodes.write(row)

    def _scalars(self, group: str, row: dict[str, Any], keys: list[str]) -> None:
        if self.tb is not None:
            for k in keys:
                self.tb.add_scalar(f"{group}/{k}", row[k], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
