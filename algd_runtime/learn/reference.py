"""Import models saved by the authors' reference code into one policy.pt.

The reference saves three state dicts: actor_*.pth (the diffusion policy, with its schedule
buffers), critics_*.pth (twin Q: linear1..6) and safetycritics_*.pth (cost ensemble: nn1..3).
Our networks use the same parameter names, so the import reads the sizes off the tensors,
checks them against the task, checks the schedule against ours, and loads the weights.
The reference does not save the multiplier; it is taken from the caller (default: the
reference's initial value).
"""

from __future__ import annotations

from pathlib import Path

import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import CheckpointError, save_checkpoint
from algd_runtime.learn.config import AlgoConfig, TrainConfig

_VE_BUFFERS = ("ve_sigmas", "ve_sigma2", "ve_delta_sigma2")
_DDPM_BUFFERS = ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod")


def _load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no such file {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{what} ({path}): not a readable state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} ({path}): expected a state dict of tensors")
    return dict(sd)


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{what}: missing parameter {key!r} (found: {', '.join(sorted(sd)[:8])} ...)")
    return sd[key]


def infer_algo(actor: dict, critics: dict, safety: dict) -> tuple[AlgoConfig, int, int]:
    """Variant and sizes from the tensors; returns (algo, obs_dim, act_dim)."""
    if all(k in actor for k in _VE_BUFFERS):
        variant = "vesde"
    elif all(k in actor for k in _DDPM_BUFFERS):
        variant = "ddpm"
    else:
        raise CheckpointError("actor: schedule buffers of neither variant found "
                              f"(VE-SDE needs {_VE_BUFFERS}, DDPM needs {_DDPM_BUFFERS})")
    steps, embed = _need(actor, "time_embedding.weight", "actor").shape
    hidden, d_in = _need(actor, "mlp.0.weight", "actor").shape
    act_dim = _need(actor, "score_head.weight", "actor").shape[0]
    obs_dim = d_in - act_dim - embed
    critic_hidden = _need(critics, "linear1.weight", "critics").shape[0]
    members = _need(safety, "nn1.weight", "safety critics").shape[0]
    algo = AlgoConfig(variant=variant, diffusion_steps=int(steps), score_hidden=int(hidden),
                      time_embed_dim=int(embed), critic_hidden=int(critic_hidden), qc_ensemble=int(members))
    return algo, int(obs_dim), int(act_dim)


def import_reference(actor_path: str | Path, critics_path: str | Path, safety_critics_path: str | Path,
                     task: str, out: str | Path, init_lambda: float = 0.6931) -> Path:
    """Build `out` (a policy.pt) from the three reference files and a task name."""
    from algd_runtime.sim import make_task

    actor = _load_state_dict(actor_path, "actor")
    critics = _load_state_dict(critics_path, "critics")
    safety = _load_state_dict(safety_critics_path, "safety critics")
    algo, obs_dim, act_dim = infer_algo(actor, critics, safety)
    if not init_lambda > 0:
        raise CheckpointError(f"lambda: expected a value > 0, got {init_lambda}")
    algo.init_lambda = float(init_lambda)
    env = make_task(task)
    spec = env.task_spec
    env.close()
    if (obs_dim, act_dim) != (spec.obs_dim, spec.act_dim):
        raise CheckpointError(
            f"actor: sized for obs_dim={obs_dim}, act_dim={act_dim}, but task {task} has "
            f"obs_dim={spec.obs_dim}, act_dim={spec.act_dim}")
    agent = ALGDAgent(spec, algo)
    theirs_buffers = {k: actor.pop(k) for k in (*_VE_BUFFERS, *_DDPM_BUFFERS) if k in actor}
    ours = agent.policy.state_dict()
    for k, v in theirs_buffers.items():
        if k in ours and not torch.allclose(ours[k], v.float(), rtol=1e-5, atol=1e-7):
            raise CheckpointError(f"actor: schedule buffer {k} differs from ours: {v.tolist()} vs {ours[k].tolist()}")
    actor.update({k: ours[k] for k in theirs_buffers if k in ours})
    for name, module, sd in (("actor", agent.policy, actor), ("critics", agent.critic, critics),
                             ("safety critics", agent.cost_critics, safety)):
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{name}: does not match the reference layout ({exc})") from None
    agent.critic_target.load_state_dict(agent.critic.state_dict())
    agent.cost_critics_target.load_state_dict(agent.cost_critics.state_dict())
    cfg = TrainConfig(task=task, algo=algo)
    return save_checkpoint(out, agent, cfg.to_dict(), origin="reference-import")
