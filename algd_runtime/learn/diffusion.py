"""Diffusion policies: the K-step reverse chain over a latent x, action = tanh(x) * scale + bias.

Two variants (ALGD.md):
- VE-SDE: sigma_k geometric from 0.01 to 1.0; x <- x + dsigma2_k * phi(s, a_k, k) + sqrt(dsigma2_k) eps.
- DDPM: linear betas 1e-4..0.02; posterior mean from the eps head plus 0.05 * phi / |phi|.

The chain takes its randomness as arguments (initial latent, per-step noise) so that the
same function serves training, evaluation and the parity reference of the ONNX export.
Schedule buffer names match the reference code so its state dicts load unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

from algd_runtime.learn.networks import Denoiser

VARIANTS = ("vesde", "ddpm")
# (grad_fn(obs, a) -> grad_a L_A, guidance weight w)
Guide = Tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float]


class DiffusionPolicy(Denoiser):
    """Base: action squashing, chain driver, sampling helpers. Subclasses give the step."""

    variant = ""

    def __init__(self, obs_dim: int, act_dim: int, act_low: Sequence[float],
                 act_high: Sequence[float], hidden: int = 128, steps: int = 5, embed_dim: int = 16):
        super().__init__(obs_dim, act_dim, hidden, steps, embed_dim)
        low = torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.as_tensor(act_high, dtype=torch.float32)
        # Derived from the task spec, so not part of the state dict.
        self.register_buffer("action_scale", (high - low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2.0, persistent=False)

    # -- pieces every variant shares ---------------------------------------------------
    def latent_to_action(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.action_scale + self.action_bias

    def step_index(self, k: int, batch: int) -> torch.Tensor:
        return torch.full((batch,), k, dtype=torch.long, device=self.action_scale.device)

    @property
    def initial_std(self) -> float:
        raise NotImplementedError

    def reverse_step(self, obs: torch.Tensor, x: torch.Tensor, k: int, noise: torch.Tensor | None,
                     guide: Guide | None = None) -> torch.Tensor:
        """One reverse step. guide = (grad_fn, w): grad_fn(obs, a) is grad_a L_A, and each
        step also follows -w * grad_a L_A (the deployment-time guidance; w = 0 is a no-op)."""
        raise NotImplementedError

    def score_target_sigma(self, tau: torch.Tensor) -> torch.Tensor:
        """Spread of the Monte-Carlo samples a^(i) = a_tau + sigma_tau eps_i, per sample."""
        raise NotImplementedError

    # -- the chain -----------------------------------------------------------------------
    def chain(self, obs: torch.Tensor, x_init: torch.Tensor, noises: torch.Tensor | None,
              tau: torch.Tensor | None = None, guide: Guide | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run steps K-1 .. 0 from x_init; noises[k] ([B, act]) is added after step k > 0.

        noises=None runs the deterministic chain. If tau ([B] step indices) is given, also
        returns a_tau, the squashed action right after step tau[b] for each sample b.
        """
        x, a_tau = x_init, None
        if tau is not None:
            a_tau = torch.zeros_like(x_init)
        for k in reversed(range(self.steps)):
            x = self.reverse_step(obs, x, k, None if noises is None or k == 0 else noises[k], guide)
            if tau is not None:
                a_tau = torch.where((tau == k)[:, None], self.latent_to_action(x), a_tau)
        return self.latent_to_action(x), a_tau

    def draw_noise(self, batch: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial latent x_K ~ N(0, initial_std^2) and per-step noise, [B, act] and [K, B, act]."""
        dev = self.action_scale.device
        x_init = torch.randn(batch, self.act_dim, device=dev, generator=generator) * self.initial_std
        noises = torch.randn(self.steps, batch, self.act_dim, device=dev, generator=generator)
        return x_init, noises

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A stochastic action per observation."""
        x_init, noises = self.draw_noise(obs.shape[0], generator)
        return self.chain(obs, x_init, noises)[0]

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """Evaluation: start from x_K = 0 and add no noise."""
        x_init = torch.zeros(obs.shape[0], self.act_dim, device=obs.device)
        return self.chain(obs, x_init, None)[0]

    def sample_with_tau(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: (a_0, a_tau, tau) with tau uniform over the K steps, with gradients."""
        batch = obs.shape[0]
        x_init, noises = self.draw_noise(batch)
        tau = torch.randint(0, self.steps, (batch,), device=obs.device)
        a0, a_tau = self.chain(obs, x_init, noises, tau=tau)
        return a0, a_tau, tau


class VESDEPolicy(DiffusionPolicy):
    variant = "vesde"

    def __init__(self, *args, sigma_min: float = 0.01, sigma_max: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        t = torch.linspace(0.0, 1.0, self.steps)
        sigmas = sigma_min * (sigma_max / sigma_min) ** t
        sigma2 = sigmas**2
        self.register_buffer("ve_sigmas", sigmas)
        self.register_buffer("ve_sigma2", sigma2)
        self.register_buffer("ve_delta_sigma2", sigma2 - torch.cat([sigma2.new_zeros(1), sigma2[:-1]]))

    @property
    def initial_std(self) -> float:
        return float(self.ve_sigmas[-1])

    def reverse_step(self, obs, x, k, noise, guide=None):
        d2 = self.ve_delta_sigma2[k].clamp(min=1e-8)
        a = self.latent_to_action(x)
        phi = self.score(obs, a, self.step_index(k, x.shape[0]))
        if guide is not None:
            grad_fn, w = guide
            phi = phi - w * grad_fn(obs, a)
        x = x + d2 * phi
        return x if noise is None else x + d2.sqrt() * noise

    def score_target_sigma(self, tau):
        return self.ve_sigmas[tau]


class DDPMPolicy(DiffusionPolicy):
    variant = "ddpm"

    def __init__(self, *args, beta_start: float = 1e-4, beta_end: float = 0.02,
                 guidance_scale: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_scale = guidance_scale
        betas = torch.linspace(beta_start, beta_end, self.steps)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1), abar[:-1]])
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alphas_cumprod", abar)
        self.register_buffer("alphas_cumprod_prev", abar_prev)
        self.register_buffer("sqrt_alphas_cumprod", abar.sqrt())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt())

    @property
    def initial_std(self) -> float:
        return 1.0

    def reverse_step(self, obs, x, k, noise, guide=None):
        kk = self.step_index(k, x.shape[0])
        beta, alpha = self.betas[k], self.alphas[k]
        abar, abar_prev = self.alphas_cumprod[k], self.alphas_cumprod_prev[k]
        eps = self.eps(obs, x, kk)
        x0_pred = (x - (1.0 - abar).sqrt() * eps) / (abar + 1e-8).sqrt()
        coef_x0 = abar_prev.sqrt() * beta / (1.0 - abar + 1e-8)
        coef_x = alpha.sqrt() * (1.0 - abar_prev) / (1.0 - abar + 1e-8)
        mean = coef_x0 * x0_pred + coef_x * x
        a = self.latent_to_action(x)
        if self.guidance_scale != 0.0:
            phi = self.score(obs, a, kk)
            mean = mean + self.guidance_scale * phi / (phi.norm(dim=-1, keepdim=True) + 1e-8)
        if guide is not None:  # the same normalised step, along -grad_a L_A
            grad_fn, w = guide
            grad = grad_fn(obs, a)
            mean = mean - w * self.guidance_scale * grad / (grad.norm(dim=-1, keepdim=True) + 1e-8)
        if noise is None:
            return mean
        var = beta * (1.0 - abar_prev) / (1.0 - abar + 1e-8)
        return mean + (var + 1e-8).sqrt() * noise

    def score_target_sigma(self, tau):
        return (1.0 - self.alphas_cumprod[tau] + 1e-8).sqrt()


def make_policy(variant: str, obs_dim: int, act_dim: int, act_low, act_high, hidden: int = 128,
                steps: int = 5, embed_dim: int = 16, ddpm_guidance_scale: float = 0.05) -> DiffusionPolicy:
    if variant == "vesde":
        return VESDEPolicy(obs_dim, act_dim, act_low, act_high, hidden, steps, embed_dim)
    if variant == "ddpm":
        return DDPMPolicy(obs_dim, act_dim, act_low, act_high, hidden, steps, embed_dim,
                          guidance_scale=ddpm_guidance_scale)
    raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
