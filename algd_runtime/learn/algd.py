"""ALGD: the augmented-Lagrangian energy, the Monte-Carlo score target, and one gradient step
of critics, actor and dual variable (ALGD.md, "Training, per gradient step")."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch.nn import functional as F

from algd_runtime.learn.config import AlgoConfig
from algd_runtime.learn.diffusion import DiffusionPolicy, make_policy
from algd_runtime.learn.fastpath import EnergyGrad, with_action_gradient
from algd_runtime.learn.networks import CostEnsemble, TwinQ
from algd_runtime.learn.precision import compute_in, resolve
from algd_runtime.sim.spec import TaskSpec


def augmented_lagrangian(q_min: torch.Tensor, qc_risk: torch.Tensor, lam: torch.Tensor | float,
                         h: float, rho: float) -> torch.Tensor:
    """L_A = -Q_min + (1/(2 rho)) (max(0, lam + rho (Qc_risk - h))^2 - lam^2)."""
    penalty = (torch.clamp(lam + rho * (qc_risk - h), min=0.0) ** 2 - lam**2) / (2.0 * rho)
    return -q_min + penalty


def risk_adjusted(qcs: torch.Tensor, k: float) -> torch.Tensor:
    """Qc_risk = mean_j Qc_j + k std_j Qc_j over the ensemble axis 0 (std 0 for one member)."""
    qcs = qcs.float()  # the members' spread is small beside their values: bf16 would round it away
    if qcs.shape[0] == 1:
        return qcs[0]
    std, mean = torch.std_mean(qcs, dim=0)
    return mean + k * std


LAMBDA_FLOOR = 1e-8  # lambda is kept as log lambda: 0 is stored as this


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


class ALGDAgent:
    """Networks, optimisers and the multiplier of one ALGD learner."""

    def __init__(self, spec: TaskSpec, algo: AlgoConfig, device: str | torch.device = "cpu",
                 conventions: str = "robot"):
        self.spec, self.cfg, self.device = spec, algo, torch.device(device)
        self.conventions = conventions
        # The budget h follows the cost discount the critics are trained with.
        self.h = dataclasses.replace(spec, cost_gamma=algo.cost_gamma).target_cost
        o, a = spec.obs_dim, spec.act_dim
        self.policy: DiffusionPolicy = make_policy(
            algo.variant, o, a, spec.act_low, spec.act_high, algo.score_hidden,
            algo.diffusion_steps, algo.time_embed_dim, algo.ddpm_guidance_scale).to(self.device)
        self.critic = TwinQ(o, a, algo.critic_hidden).to(self.device)
        self.cost_critics = CostEnsemble(o, a, algo.qc_ensemble, algo.critic_hidden).to(self.device)
        if conventions == "reference":
            self.cost_critics.reference_init()
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.cost_critics_target = copy.deepcopy(self.cost_critics).requires_grad_(False)
        self.log_lambda = torch.tensor(math.log(algo.init_lambda), device=self.device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=algo.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=algo.lr)
        self.cost_opt = torch.optim.Adam(self.cost_critics.parameters(), lr=algo.qc_lr)
        self.lambda_opt = torch.optim.Adam([self.log_lambda], lr=algo.lambda_lr)
        self.grad_steps = 0
        # What the networks compute in (precision.py): fp32, or bf16 with fp32 master weights.
        self.dtype, self.precision = resolve(algo.precision, self.device)
        self.fast_energy = EnergyGrad(self, self.dtype)  # the fast update's L_A and grad_a L_A

    @property
    def lam(self) -> float:
        return float(self.log_lambda.detach().exp())

    # -- the energy and its score target ------------------------------------------------
    def qc_risk(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return risk_adjusted(self.cost_critics(obs, action), self.cfg.qc_risk_k)

    def energy(self, obs: torch.Tensor, action: torch.Tensor, lam: torch.Tensor | float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_A, Q_min, Qc_risk), each [B, 1]; lam defaults to the current multiplier (detached)."""
        if lam is None:
            lam = self.log_lambda.detach().exp()
        q1, q2 = self.critic(obs, action)
        q_min = torch.min(q1, q2)
        qc = self.qc_risk(obs, action)
        return augmented_lagrangian(q_min, qc, lam, self.h, self.cfg.rho), q_min, qc

    def energy_grad(self, obs: torch.Tensor, action: torch.Tensor, lam: float | None = None) -> torch.Tensor:
        """grad_a L_A(s, a, lam) by autograd (the reference for the exported analytic gradient)."""
        with torch.enable_grad():
            a = action.detach().requires_grad_(True)
            la, _, _ = self.energy(obs.detach(), a, lam)
            return torch.autograd.grad(la.sum(), a)[0]

    def score_target(self, obs: torch.Tensor, a_tau: torch.Tensor, tau: torch.Tensor,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """phi* = -(1/beta) sum_i w_i grad_a L_A(s, a^(i)), a^(i) = a_tau + sigma_tau eps_i,
        w = softmax_i(-L_A(s, a^(i)) / beta); detached. noise: eps, [B, N, act] (drawn if None)."""
        samples = self.score_samples(a_tau, tau, noise)
        b, n, act_dim = samples.shape
        if self.cfg.fast_update:
            la, _, _, grad = self.fast_energy(obs.detach(), samples, self.log_lambda.detach().exp())
            return self.score_from(la, grad)
        samples = samples.reshape(b * n, act_dim).requires_grad_(True)
        obs_rep = obs[:, None, :].expand(b, n, obs.shape[-1]).reshape(b * n, -1)
        la, _, _ = self.energy(obs_rep, samples)
        (grad,) = torch.autograd.grad(la.sum(), samples)
        return self.score_from(la.detach().view(b, n), grad.view(b, n, act_dim)).detach()

    def score_samples(self, a_tau: torch.Tensor, tau: torch.Tensor, noise: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """a^(i) = a_tau + sigma_tau eps_i, [B, N, act] (eps drawn if noise is None)."""
        b, act_dim = a_tau.shape
        if noise is None:
            noise = torch.randn(b, self.cfg.score_mc_samples, act_dim, device=a_tau.device)
        sigma = self.policy.score_target_sigma(tau).view(b, 1, 1)
        return a_tau.detach()[:, None, :] + sigma * noise

    def score_from(self, la: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """phi* from L_A [B, N] and grad_a L_A [B, N, act] at the samples."""
        beta = self.cfg.beta
        weights = torch.softmax(-la / beta, dim=1)
        return -(weights[:, :, None] * grad).sum(dim=1) / beta

    # -- one gradient step ----------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray], repeat_index: int | None = None,
               actor: bool = True) -> dict[str, float]:
        """One gradient step. repeat_index: which of this env step's updates it is; the
        reference conventions time the target updates by it, ours by the global count."""
        t = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        obs, action, next_obs = t["obs"], t["action"], t["next_obs"]
        reward, cost = t["reward"][:, None], t["cost"][:, None]
        mask = 1.0 - t["done"][:, None]
        # One autocast region per phase: autocast keeps its bf16 casts of the weights until its
        # region ends, so a later phase in the same region would see the weights from before
        # this step's optimiser updates.
        with compute_in(self.dtype, self.device):
            stats = self.update_critics(obs, action, reward, cost, next_obs, mask)
        if actor:  # False while the critics warm up (fine-tuning)
            with compute_in(self.dtype, self.device):
                stats.update(self.update_actor(obs))
        with compute_in(self.dtype, self.device):
            stats.update(self.update_dual(obs, action, step=self.cfg.dual == "critic"))
        phase = repeat_index if self.conventions == "reference" and repeat_index is not None else self.grad_steps
        if phase % self.cfg.target_update_every == 0:
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            soft_update(self.cost_critics_target, self.cost_critics, self.cfg.qc_tau)
        self.grad_steps += 1
        return stats

    def update_critics(self, obs, action, reward, cost, next_obs, mask) -> dict[str, float]:
        with torch.no_grad():
            next_action = self.policy.sample(next_obs)
            q1_t, q2_t = self.critic_target(next_obs, next_action)
            q_target = reward + self.cfg.gamma * mask * torch.min(q1_t, q2_t)
            qc_target = self.cost_target(cost, next_obs, next_action, mask)
        q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, q_target) + F.mse_loss(q2, q_target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        cost_loss = F.mse_loss(self.cost_critics(obs, action), qc_target)
        self.cost_opt.zero_grad(set_to_none=True)
        cost_loss.backward()
        self.cost_opt.step()
        return {"critic_loss": critic_loss.item(), "cost_critic_loss": cost_loss.item()}

    @torch.no_grad()
    def cost_target(self, cost, next_obs, next_action, mask) -> torch.Tensor:
        """The cost critics' TD target, [M, B, 1]. Costs are >= 0, so is their discounted sum:
        the target is held at >= 0, or an actor that seeks low Qc drags the critics below 0
        through its next actions (seen on SafetyPointGoal1: Qc -1.2 where the truth was 5.6).
        The reference code does not clamp (docs/CONVENTIONS.md)."""
        cost_mask = torch.ones_like(mask) if self.spec.cost_mask_always_one else mask
        target = cost + self.cfg.cost_gamma * cost_mask * self.cost_critics_target(next_obs, next_action)
        return target if self.conventions == "reference" else target.clamp(min=0.0)

    def update_actor(self, obs) -> dict[str, float]:
        a0, a_tau, tau = self.policy.sample_with_tau(obs)
        if self.cfg.fast_update:
            # One pass of the energy for the policy's action and the score target's samples.
            samples = self.score_samples(a_tau, tau)
            both = torch.cat([a0.detach()[:, None, :], samples], dim=1)
            la_all, q_all, qc_all, grad_all = self.fast_energy(obs.detach(), both, self.log_lambda.detach().exp())
            la = with_action_gradient(a0, la_all[:, :1], grad_all[:, 0])
            q_min, qc = q_all[:, :1], qc_all[:, :1]
            phi_star = self.score_from(la_all[:, 1:], grad_all[:, 1:])
        else:
            la, q_min, qc = self.energy(obs, a0)
            phi_star = self.score_target(obs, a_tau, tau)
        actor_loss = la.mean()
        score_loss = F.mse_loss(self.policy.score(obs, a_tau, tau), phi_star)
        total = actor_loss + self.cfg.score_loss_weight * score_loss
        # Gradients for the actor only: the critics are fixed in this step.
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.actor_opt.step()
        return {"actor_loss": actor_loss.item(), "score_loss": score_loss.item(),
                "q_policy": q_min.mean().item(), "qc_policy": qc.mean().item()}

    def update_dual(self, obs, action, step: bool = True) -> dict[str, float]:
        """The paper's dual step (step=False: only measure Qc_risk at the replay actions)."""
        with torch.no_grad():
            qc = self.qc_risk(obs, action)
        lam_loss = (self.log_lambda.exp() * (self.h - qc)).mean()
        if step:
            self.lambda_opt.zero_grad(set_to_none=True)
            lam_loss.backward()
            self.lambda_opt.step()
        return {"lambda": self.lam, "lambda_loss": lam_loss.item(), "qc_replay": qc.mean().item()}

    def dual_from_episode(self, episode_cost: float, limit: float) -> float:
        """The "episode_cost" dual step: projected ascent on lambda itself from a measured
        episode cost. Unlike Adam on log lambda it moves by the size of the violation, and it
        does not wait for the cost critic to learn the cost (which lags the truth by tens of
        thousands of updates early in training)."""
        violation = (episode_cost - limit) / limit
        if self.cfg.episode_dual_clip > 0:
            violation = min(violation, self.cfg.episode_dual_clip)
        lam = max(LAMBDA_FLOOR, self.lam + self.cfg.episode_dual_lr * violation)
        with torch.no_grad():
            self.log_lambda.fill_(math.log(lam))
        return lam

    # -- acting -----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)[None]
        a = self.policy.act_deterministic(o) if deterministic else self.policy.sample(o)
        return a[0].cpu().numpy()

    @torch.no_grad()
    def act_batch(self, obs: np.ndarray) -> np.ndarray:
        """One stochastic action per row of obs [n, obs_dim], in one call."""
        o = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        return self.policy.sample(o).cpu().numpy()

    # -- state ----------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target,
                "cost_critics": self.cost_critics, "cost_critics_target": self.cost_critics_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt, "cost": self.cost_opt,
                "lambda": self.lambda_opt}

    def state_dict(self) -> dict:
        return {
            "networks": {k: m.state_dict() for k, m in self.networks().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "log_lambda": float(self.log_lambda.detach()),
            "grad_steps": self.grad_steps,
        }

    def load_state_dict(self, state: dict, with_optimizers: bool = True) -> None:
        for k, m in self.networks().items():
            m.load_state_dict(state["networks"][k])
        if with_optimizers and state.get("optimizers"):
            for k, o in self.optimizers().items():
                o.load_state_dict(state["optimizers"][k])
        with torch.no_grad():
            self.log_lambda.fill_(state["log_lambda"])
        self.grad_steps = int(state.get("grad_steps", 0))


def exchange_rate(agent, env, steps: int = 600, seed: int = 5) -> float:
    """median |grad_a Q_min| / median |grad_a Qc_risk| at the policy's own (deterministic)
    actions over a rollout: how many units of cost gradient one unit of reward gradient is
    worth to this policy's critics. The monitor's WARN asks for a multiplier of a few times it
    (BENCHMARKS.md, "What run-time guidance buys"); the export measures it."""
    observations = []
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        observations.append(obs)
        obs, _, _, term, trunc, _ = env.step(agent.act(obs, deterministic=True))
        if term or trunc:
            obs, _ = env.reset()
    o = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=agent.device)
    with torch.no_grad():
        act = agent.policy.act_deterministic(o)
    a = act.clone().requires_grad_(True)
    (gq,) = torch.autograd.grad(torch.min(*agent.critic(o, a)).sum(), a)
    a = act.clone().requires_grad_(True)
    (gc,) = torch.autograd.grad(agent.qc_risk(o, a).sum(), a)
    return float(gq.norm(dim=1).median() / gc.norm(dim=1).median().clamp(min=1e-12))
