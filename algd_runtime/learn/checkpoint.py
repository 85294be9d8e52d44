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
    checksum                                        payload_checksum() of all the rest
Written atomically; loaded with weights_only=True (no code runs on load).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.contract.atomic import atomic_write
from algd_runtime.learn.config import ConfigError, config_from_dict
from algd_runtime.sim.spec import TaskSpec

SCHEMA = "algd-runtime/policy"
SCHEMA_VERSION = 1
_REQUIRED = ("task_spec", "config", "agent")


class CheckpointError(ValueError):
    """A policy file cannot be used; the message says which file and what is wrong."""


def library_versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__)}


def _feed(h, obj: Any) -> None:
    """Hash obj by value with a type tag and a length prefix on each part, so that different
    structures cannot give the same byte stream; stable across a torch.save/load round trip."""
    def part(tag: str, data: bytes) -> None:
        h.update(f"{tag}{len(data)}:".encode())
        h.update(data)

    if isinstance(obj, dict):
        part("dict", str(len(obj)).encode())
        for key in sorted(obj, key=str):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # torch.Size is a tuple
        part("list", str(len(obj)).encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        part("tensor", f"{t.dtype}{list(t.shape)}".encode())
        # As raw bytes: works for every dtype (bool, bfloat16, ...) that numpy may lack.
        part("bytes", t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        part("ndarray", f"{a.dtype.str}{list(a.shape)}".encode())
        part("bytes", a.tobytes())
    elif obj is None or isinstance(obj, (bool, np.bool_)):
        part("const", repr(None if obj is None else bool(obj)).encode())
    elif isinstance(obj, (int, np.integer)):
        part("int", str(int(obj)).encode())
    elif isinstance(obj, (float, np.floating)):
        part("float", float(obj).hex().encode())  # exact, NaN included
    elif isinstance(obj, str):
        part("str", obj.encode())
    else:
        part("repr", repr(obj).encode())


def payload_checksum(payload: dict[str, Any]) -> str:
    """sha256 over a canonical serialisation of a checkpoint's entries, "checksum" excluded."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


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
    payload["checksum"] = payload_checksum(payload)
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a policy.pt; every failure is a CheckpointError naming the problem."""
    path = Path(path)
    if path.is_dir():
        bundle = " (a bundle: give the policy.pt it was exported from)" if (path / "manifest.yaml").is_file() else ""
        raise CheckpointError(f"{path}: a folder, not a policy file{bundle}; expected the policy.pt algd-train wrote")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such policy file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a torn or foreign file
        raise CheckpointError(f"{path}: not a policy.pt written by algd-train (torch.load: {type(exc).__name__}: "
                              f"{exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        got = ckpt.get("schema") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: schema: expected {SCHEMA!r}, got {got!r}")
    version = ckpt.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: missing entries: {', '.join(missing)}")
    # Files written before checksums existed have none; they load as before, unverified.
    if "checksum" in ckpt and payload_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"{path}: checksum mismatch: the file was modified after it was written")
    return ckpt


def check_finite(state: dict[str, Any]) -> None:
    """Refuse NaN / Inf in the networks and the multiplier: a policy trained into NaN must
    not reach an export or a robot."""
    for net, sd in state["networks"].items():
        for name, t in sd.items():
            if torch.is_tensor(t) and t.is_floating_point():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise CheckpointError(f"agent.{net}.{name}: {bad} non-finite value{'s' * (bad > 1)}")
    log_lambda = state.get("log_lambda")
    if log_lambda is not None and not math.isfinite(float(log_lambda)):
        raise CheckpointError(f"agent.log_lambda: not finite ({float(log_lambda)})")


def policy_task(ckpt: dict[str, Any], seed: int = 0):
    """The task a checkpoint's policy acts in: its task spec (the shift it was trained or
    fine-tuned for) under its run's conventions."""
    from algd_runtime.sim import make_task
    from algd_runtime.sim.conventions import apply_conventions
    from algd_runtime.sim.spec import TaskSpec

    spec = TaskSpec.from_dict(ckpt["task_spec"])
    return apply_conventions(make_task(spec.name, seed=seed, budget=spec.budget, **spec.shift),
                             ckpt["config"].get("conventions", "robot"), ckpt["config"].get("seed"))


def agent_from_checkpoint(ckpt: dict[str, Any], device: str = "cpu",
                          with_optimizers: bool = True) -> ALGDAgent:
    try:
        cfg = config_from_dict(ckpt["config"], check_task=False)
    except ConfigError as exc:
        raise CheckpointError(f"config stored in the checkpoint: {exc}") from None
    spec = TaskSpec.from_dict(ckpt["task_spec"])
    try:
        check_finite(ckpt["agent"])
    except (KeyError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"agent: not a stored agent ({type(exc).__name__}: {exc})") from None
    agent = ALGDAgent(spec, cfg.algo, device, cfg.conventions)
    try:
        agent.load_state_dict(ckpt["agent"], with_optimizers=with_optimizers)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"agent: the stored networks do not fit the stored config ({exc})") from None
    return agent
