"""policy.pt: one versioned file with all that inference, export and an exact resume need.

Layout (schema_version 1), a dict:
    schema, schema_version, created, versions       identification
    task_spec                                       TaskSpec.to_dict()
    config                                          TrainConfig.to_dict()
    agent                                           ALGDAgent.state_dict(): networks (+ targets),
                                                    optimisers, log_lambda, grad_steps
    train_state                                     counters, RNG states, the episode in progress
    replay_file                                     name of the replay .npz beside it, or None
    origin                                          "trained" | "reference-import" | "finetune"
Written atomically; loaded with weights_only=True (no code runs on load).
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import torch

from algd_runtime.algd import ALGDAgent
from algd_runtime.atomic import atomic_write
from algd_runtime.config import ConfigError, config_from_dict
from algd_runtime.sim.spec import TaskSpec

SCHEMA = "algd-runtime/policy"
SCHEMA_VERSION = 1
_REQUIRED = ("task_spec", "config", "agent")


class CheckpointError(ValueError):
    """A policy file cannot be used; the message says which file and what is wrong."""


def library_versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__)}


def save_checkpoint(path: str | Path, agent: ALGDAgent, config: dict[str, Any],
                    train_state: dict[str, Any] | None = None, replay_file: str | None = None,
                    origin: str = "trained") -> Path:
    path = Path(path)
    payload = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "origin": origin,
        "task_spec": agent.spec.to_dict(),
        "config": config,
        "agent": agent.state_dict(),
        "train_state": train_state or {},
        "replay_file": replay_file,
    }
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a policy.pt; every failure is a CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such policy file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a torn or foreign file
        raise CheckpointError(f"{path}: not a readable policy.pt ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        got = ckpt.get("schema") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: schema: expected {SCHEMA!r}, got {got!r}")
    version = ckpt.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: missing entries: {', '.join(missing)}")
    return ckpt


def agent_from_checkpoint(ckpt: dict[str, Any], device: str = "cpu",
                          with_optimizers: bool = True) -> ALGDAgent:
    try:
        cfg = config_from_dict(ckpt["config"], check_task=False)
    except ConfigError as exc:
        raise CheckpointError(f"config stored in the checkpoint: {exc}") from None
    spec = TaskSpec.from_dict(ckpt["task_spec"])
    agent = ALGDAgent(spec, cfg.algo, device)
    try:
        agent.load_state_dict(ckpt["agent"], with_optimizers=with_optimizers)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"agent: the stored networks do not fit the stored config ({exc})") from None
    return agent
