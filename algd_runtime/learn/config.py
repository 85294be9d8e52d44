"""Typed training configuration loaded from YAML.

Every bad key or value is a ConfigError that names the field (dotted path) and says what
was expected, so a typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from algd_runtime.contract.yamlfile import load_yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the field."""


@dataclass
class AlgoConfig:
    """ALGD hyper-parameters; defaults are the reference code's (ALGD.md)."""

    variant: str = "vesde"  # "vesde" | "ddpm"
    diffusion_steps: int = 5  # K
    score_hidden: int = 128  # denoiser trunk width (3 layers)
    time_embed_dim: int = 16
    critic_hidden: int = 256
    qc_ensemble: int = 4  # M cost critics
    qc_risk_k: float = 1.0  # Qc_risk = mean + k * std
    rho: float = 1.0
    beta: float = 1.0
    score_mc_samples: int = 4  # N
    score_loss_weight: float = 0.1
    ddpm_guidance_scale: float = 0.05
    gamma: float = 0.99
    cost_gamma: float = 0.99
    tau: float = 0.005
    target_update_every: int = 2
    lr: float = 3e-4
    qc_lr: float = 3e-4
    lambda_lr: float = 3e-4
    init_lambda: float = 0.6931
    # How the multiplier learns. "critic" (the paper): Adam on log lambda against Qc_risk at
    # replay actions, every update. "episode_cost": lambda += episode_dual_lr * (J - d) / d
    # after each finished episode, J its measured cost and d the limit (projected at 0).
    dual: str = "critic"
    # Soft-update rate of the cost critics' targets (the paper: tau). Their values reach the
    # cost scale in about 2 / (qc_tau (1 - cost_gamma)) updates (BENCHMARKS.md).
    qc_tau: float = 0.005
    episode_dual_lr: float = 0.05
    # Clip the episode dual step's (J - d) / d at this value (0: no clip), so that one
    # episode stuck in a hazard (J = 36 d on PointGoal1) moves lambda by at most
    # episode_dual_lr * clip instead of 36 times that (BENCHMARKS.md, ablations).
    episode_dual_clip: float = 0.0
    batch_size: int = 256
    # grad_a L_A by hand (fastpath.py) instead of by autograd: the same update, faster
    fast_update: bool = True
    # What the networks compute in: "fp32"; "bf16" (fp32 master weights, optimiser state,
    # losses and lambda); "auto": bf16 where the CPU or GPU has native bf16, else fp32
    # (precision.py, BENCHMARKS.md "Mixed precision").
    precision: str = "fp32"


@dataclass
class TrainConfig:
    """One training run."""

    task: str = "PointHazard-v0"
    shift: dict = field(default_factory=dict)  # domain-shift parameters for make_task
    seed: int = 0
    device: str = "cpu"  # "cpu" | "cuda"
    total_steps: int = 100_000  # environment steps, warm-up included
    warmup_steps: int = 5000  # steps with the untrained policy before any update
    min_replay: int = 1000  # no update until the replay holds more than this
    updates_per_step: int = 10
    first_epoch_update_cap: int = 5  # at most this many updates per env step in the first epoch
    epoch_length: int = 0  # 0: the task's episode length
    replay_size: int = 1_000_000
    eval_every: int = 5000  # env steps between evaluations (0: only at the end)
    eval_episodes: int = 5
    checkpoint_every: int = 10_000  # env steps; the save happens at the next episode end
    save_replay: bool = True
    log_every: int = 1000  # env steps between training-loss log rows
    num_threads: int = 0  # torch intra-op threads; 0: leave torch's default
    # "robot" (default) or "reference": the authors' code's conventions (docs/CONVENTIONS.md)
    conventions: str = "robot"
    # Whose safety budget a Safety-Gymnasium task keeps: "algd" (the paper's, default) or
    # "safety_gymnasium" (native costs, 1000-step episodes, 25 per episode; sim/safety_gym.py)
    budget: str = "algd"
    # Copies of the task stepping together (gymnasium AsyncVectorEnv, one process each) with
    # one batched policy call per step; updates_per_step stays per env step.
    num_envs: int = 1
    # "sync": the copies step in this process (fastest on a few cores, BENCHMARKS.md);
    # "async": one process per copy (AsyncVectorEnv), for machines with a core per copy.
    vector_envs: str = "sync"
    # Env steps before the first actor update: the critics (and lambda) learn the system
    # first. 0 for training from scratch; fine-tuning delays the actor (finetune.py).
    actor_delay_steps: int = 0
    # Which of the task config's presets built this run ("": a config without presets).
    preset: str = ""
    algo: AlgoConfig = field(default_factory=AlgoConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "algo.variant": ("vesde", "ddpm"),
    "device": ("cpu", "cuda"),
    "conventions": ("robot", "reference"),
    "budget": ("algd", "safety_gymnasium"),
    "vector_envs": ("sync", "async"),
    "algo.dual": ("critic", "episode_cost"),
    "algo.precision": ("fp32", "bf16", "auto"),
}
_POSITIVE = {
    "algo.diffusion_steps", "algo.score_hidden", "algo.time_embed_dim", "algo.critic_hidden",
    "algo.qc_ensemble", "algo.rho", "algo.beta", "algo.score_mc_samples", "algo.lr",
    "algo.qc_lr", "algo.lambda_lr", "algo.init_lambda", "algo.batch_size",
    "algo.target_update_every", "total_steps", "updates_per_step", "replay_size",
    "eval_episodes", "first_epoch_update_cap", "num_envs",
}
_NON_NEGATIVE = {
    "algo.qc_risk_k", "algo.score_loss_weight", "algo.episode_dual_lr", "algo.episode_dual_clip", "algo.ddpm_guidance_scale", "warmup_steps",
    "min_replay", "actor_delay_steps", "epoch_length", "eval_every", "checkpoint_every", "log_every", "num_threads",
    "seed",
}
_UNIT_INTERVAL = {"algo.gamma", "algo.cost_gamma", "algo.tau", "algo.qc_tau"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check value against the field's type; ints are accepted where floats are expected."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")


def _check_range(path: str, value: Any) -> None:
    if path in _CHOICES and value not in _CHOICES[path]:
        raise ConfigError(f"{path}: expected one of {list(_CHOICES[path])}, got {value!r}")
    if path in _POSITIVE and not value > 0:
        raise ConfigError(f"{path}: expected a value > 0, got {value!r}")
    if path in _NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{path}: expected a value >= 0, got {value!r}")
    if path in _UNIT_INTERVAL and not 0.0 < value <= 1.0:
        raise ConfigError(f"{path}: expected a value in (0, 1], got {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known keys: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, tp)
            _check_range(path, kwargs[key])
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None, check_task: bool = True) -> TrainConfig:
    """Build a validated TrainConfig; raises ConfigError naming the bad field."""
    cfg = _build(TrainConfig, data or {}, "")
    if cfg.total_steps % cfg.num_envs:
        # The copies step together, so a run would end past total_steps and past the run it
        # is compared with.
        raise ConfigError(f"total_steps: expected a multiple of num_envs ({cfg.num_envs}), "
                          f"got {cfg.total_steps}")
    if check_task:
        from algd_runtime.sim import TASK_NAMES

        if cfg.task not in TASK_NAMES:
            raise ConfigError(f"task: unknown task {cfg.task!r} (known: {', '.join(TASK_NAMES)})")
    return cfg


def default_preset(device: str) -> str:
    """The preset a task config runs with unless one is named: the paper's on a GPU, the one
    a CPU can finish elsewhere."""
    return "paper" if device == "cuda" else "cpu"


def read_presets(path: str | Path) -> dict[str, str]:
    """A config's presets: {name: what it is (its `about`)}; empty without presets."""
    presets = _read_mapping(Path(path)).get("presets") or {}
    return {name: str((p or {}).get("about", "")) for name, p in presets.items()} if isinstance(presets, dict) else {}


def _read_mapping(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _with_preset(path: Path, data: dict, presets, name: str) -> dict:
    """data with the preset's keys over it (`algo` merged key by key)."""
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"preset: {path} has no presets to pick {name!r} from")
    if name not in presets:
        raise ConfigError(f"preset: expected one of {', '.join(presets)} ({path}), got {name!r}")
    chosen = dict(presets[name] or {})
    chosen.pop("about", None)
    out = dict(data)
    for key, value in chosen.items():
        out[key] = {**(out.get(key) or {}), **value} if key == "algo" and isinstance(value, dict) else value
    out["preset"] = name
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, preset: str | None = None) -> TrainConfig:
    """Load a YAML file, apply its preset (`preset`, else default_preset of the device) where
    it has presets, then top-level overrides (from the command line), validate."""
    path = Path(path)
    data = _read_mapping(path)
    presets = data.pop("presets", None)
    overrides = overrides or {}
    if presets is not None or preset is not None:
        name = preset or default_preset(str(overrides.get("device", data.get("device", "cpu"))))
        data = _with_preset(path, data, presets, name)
    data.update(overrides)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
