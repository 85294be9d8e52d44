"""The three networks of ALGD, in the reference layout and sizes.

Parameter names match the authors' code (linear1..6, nn1..3, time_embedding, mlp, eps_head,
score_head) so their saved state dicts load without renaming.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight, gain=1.0)
        nn.init.zeros_(module.bias)


class Denoiser(nn.Module):
    """Shared trunk (state, action or latent, step embedding -> 3 x hidden ReLU) with a
    score head phi_theta(s, a, k) and an eps head (used by the DDPM variant)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 128, steps: int = 5,
                 embed_dim: int = 16):
        super().__init__()
        self.obs_dim, self.act_dim, self.steps = obs_dim, act_dim, steps
        self.time_embedding = nn.Embedding(steps, embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(obs_dim + act_dim + embed_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        self.eps_head = nn.Linear(hidden, act_dim)
        self.score_head = nn.Linear(hidden, act_dim)
        self.apply(_xavier_init)

    def _trunk(self, obs: torch.Tensor, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([obs, x, self.time_embedding(k)], dim=-1))

    def score(self, obs: torch.Tensor, action: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """phi_theta(s, a, k): the learned score over squashed actions."""
        return self.score_head(self._trunk(obs, action, k))

    def eps(self, obs: torch.Tensor, latent: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The DDPM noise prediction, taken on the latent."""
        return self.eps_head(self._trunk(obs, latent, k))


class TwinQ(nn.Module):
    """Twin reward critics Q1, Q2 (2 hidden ReLU layers each)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        d = obs_dim + act_dim
        self.linear1, self.linear2, self.linear3 = nn.Linear(d, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.linear4, self.linear5, self.linear6 = nn.Linear(d, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.apply(_xavier_init)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xu = torch.cat([obs, action], dim=-1)
        q1 = self.linear3(F.relu(self.linear2(F.relu(self.linear1(xu)))))
        q2 = self.linear6(F.relu(self.linear5(F.relu(self.linear4(xu)))))
        return q1, q2


class EnsembleLinear(nn.Module):
    """M independent linear layers applied in one batched matmul: weight [M, in, out]."""

    def __init__(self, in_features: int, out_features: int, members: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features))
        # Normal, std 1 / (2 sqrt(in)), cut at 2 std: what the reference's init intends.
        nn.init.trunc_normal_(self.weight, std=self.init_std, a=-2 * self.init_std, b=2 * self.init_std)

    @property
    def init_std(self) -> float:
        return 1.0 / (2.0 * math.sqrt(self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, in] (shared input) or [M, B, in]; out: [M, B, out]
        return torch.matmul(x, self.weight) + self.bias[:, None, :]


class CostEnsemble(nn.Module):
    """M cost critics Qc_j(s, a) (2 hidden SiLU layers); forward returns [M, B, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, members: int = 4, hidden: int = 256):
        super().__init__()
        self.members = members
        self.nn1 = EnsembleLinear(obs_dim + act_dim, hidden, members)
        self.nn2 = EnsembleLinear(hidden, hidden, members)
        self.nn3 = EnsembleLinear(hidden, 1, members)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        xu = torch.cat([obs, action], dim=-1)
        return self.nn3(F.silu(self.nn2(F.silu(self.nn1(xu)))))

    @torch.no_grad()
    def reference_init(self) -> None:
        """What the reference code does: its truncation loop rebinds a local name and never
        writes back, so its weights are an untruncated normal with the same std."""
        for layer in (self.nn1, self.nn2, self.nn3):
            nn.init.normal_(layer.weight, std=layer.init_std)
            layer.bias.zero_()
