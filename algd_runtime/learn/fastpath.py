"""The energy L_A(s, a) and its action gradient grad_a L_A by hand, for the fast update.

The eager update gets grad_a L_A from autograd through both reward critics and the whole
cost ensemble. Only the action gradient is needed, which allows three exact savings:
- the first layer's state part is computed once per state and shared by its N Monte-Carlo
  actions (and its gradient is never formed: only the action columns are);
- of the twin critics only the smaller one, Q_min, carries a gradient, so each row goes back
  through one network instead of two;
- no autograd graph is built, kept or walked.
The math is the eager path's (tests/test_fastpath.py holds them equal to 1e-5); only the
order of the floating-point sums differs. At an exact tie Q1 == Q2 autograd splits the
gradient between the two; here it goes to Q1 (a tie has probability zero).

In bf16 the chain runs on bf16 copies of the critics (made again only when an optimiser
step or a load has changed a weight), and what is small and sensitive stays fp32: the
ensemble's mean and std, the penalty, L_A and the returned gradient.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F


# The fused backward kernels of the activations: one pass over memory instead of a chain of
# elementwise ops (which, not the matmuls, dominated a first version of this module).
_silu_back = torch.ops.aten.silu_backward


def _relu_back(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(grad, pre, 0.0)


class EnergyGrad:
    """Callable: (obs [B, o], actions [B, N, a], lam) -> (L_A, Q_min, Qc_risk, grad_a L_A),
    the first three [B, N], the gradient [B, N, a]. Reads the agent's current weights."""

    def __init__(self, agent, dtype: torch.dtype = torch.float32) -> None:
        self.agent, self.dtype = agent, dtype
        self._copies: tuple | None = None  # bf16: (critic, cost_critics) copies
        self._versions: tuple = ()

    def critics(self) -> tuple:
        """(critic, cost_critics) to compute with: the agent's own in fp32, else copies in
        self.dtype, refreshed when a weight's version (bumped by every in-place write:
        optimiser steps, soft updates, loads) has moved."""
        agent = self.agent
        if self.dtype == torch.float32:
            return agent.critic, agent.cost_critics
        sources = (agent.critic, agent.cost_critics)
        params = [p for m in sources for p in m.parameters()]
        versions = tuple(p._version for p in params)
        if versions != self._versions:
            if self._copies is None:
                self._copies = tuple(copy.deepcopy(m).to(self.dtype).requires_grad_(False) for m in sources)
            with torch.no_grad():
                for dst, src in zip((p for m in self._copies for p in m.parameters()), params):
                    dst.copy_(src)
            self._versions = versions
        return self._copies

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, lam: torch.Tensor | float):
        with torch.autocast(obs.device.type, enabled=False):  # each step's dtype is chosen here
            return self._energy(obs, actions, lam)

    def _energy(self, obs, actions, lam):
        agent, dt = self.agent, self.dtype
        critic, ensemble = self.critics()
        o = obs.shape[-1]
        q_min, grad_q = self._twin_q(critic, agent.critic, obs.float(), actions.float(), o)
        obs, actions = obs.to(dt), actions.to(dt)
        qc_risk, dqc_j, pre = self._ensemble(ensemble, agent.cost_critics.nn3, obs, actions, o)
        rho, h = agent.cfg.rho, agent.h
        active = torch.clamp(lam + rho * (qc_risk - h), min=0.0)
        la = -q_min + (active**2 - lam**2) / (2.0 * rho)
        grad = -grad_q + self._ensemble_grad(ensemble, (active[None] * dqc_j).to(dt), pre, o).float()
        return la, q_min, qc_risk, grad

    # -- twin reward critics (ReLU) ----------------------------------------------------------
    @staticmethod
    def _twin_q(c, master, obs, actions, o):
        """c: the layers to compute with; master: the fp32 ones, for the first layer (cheap:
        the state part once per state, the action part a few columns), whose rounding would
        flip ReLUs and whose transpose makes the gradient: a sum that cancels (bf16 lost up to
        a third of some rows' gradient there)."""
        nets = ((c.linear1, c.linear2, c.linear3), (c.linear4, c.linear5, c.linear6))
        firsts = (master.linear1, master.linear4)
        dt = c.linear2.weight.dtype
        outs = []
        for (_, l2, l3), l1 in zip(nets, firsts):
            # [B, H] once per state + [B, N, H] for the actions
            pre1 = F.linear(obs, l1.weight[:, :o], l1.bias)[:, None, :] + actions @ l1.weight[:, o:].T
            pre2 = F.linear(torch.relu(pre1).to(dt), l2.weight, l2.bias)
            q = F.linear(torch.relu(pre2), l3.weight, l3.bias)[..., 0].float()
            outs.append((q, pre1, pre2))
        (q1, p11, p12), (q2, p21, p22) = outs
        first = q1 <= q2
        q_min = torch.where(first, q1, q2)
        grad = actions.new_empty(actions.shape)
        # Back through the network that gave Q_min, on its rows only.
        for take, (_, l2, l3), l1, pre1, pre2 in ((first, nets[0], firsts[0], p11, p12),
                                                  (~first, nets[1], firsts[1], p21, p22)):
            rows = take.nonzero(as_tuple=True)
            if rows[0].numel() == 0:
                continue
            g2 = _relu_back(l3.weight.expand(rows[0].numel(), -1), pre2[rows])  # dq/dpre2: [R, H]
            g1 = _relu_back((g2 @ l2.weight).float(), pre1[rows])
            grad[rows] = g1 @ l1.weight[:, o:]
        return q_min, grad

    # -- cost ensemble (SiLU) ---------------------------------------------------------------
    def _ensemble(self, e, last, obs, actions, o):
        """e: the layers to compute with; last: the fp32 output layer. The members' outputs
        are compared (their std): in bf16 (8 bits) they would often round to one value."""
        w1 = e.nn1.weight  # [M, o + a, H]
        b, n, a = actions.shape
        m = w1.shape[0]
        # [M, B, 1, H] state part + [M, B, N, H] action part
        pre1 = (torch.matmul(obs, w1[:, :o, :]) + e.nn1.bias[:, None, :])[:, :, None, :] \
            + torch.matmul(actions.reshape(1, b * n, a), w1[:, o:, :]).reshape(m, b, n, -1)
        pre1 = pre1.reshape(m, b * n, -1)
        pre2 = torch.baddbmm(e.nn2.bias[:, None, :], F.silu(pre1), e.nn2.weight)
        qc = torch.baddbmm(last.bias[:, None, :], F.silu(pre2).float(), last.weight)[..., 0].reshape(m, b, n)
        if m == 1:
            return qc[0], torch.ones_like(qc), (pre1, pre2)
        k = self.agent.cfg.qc_risk_k
        std, mean = torch.std_mean(qc, dim=0)
        # d(mean + k std)/d qc_j, std unbiased (as torch.std)
        # Where the members agree (std 0) the std has no derivative; 0 there, as autograd takes it.
        dqc_j = 1.0 / m + k * torch.where(std > 0, (qc - mean) / ((m - 1) * std), 0.0)
        return mean + k * std, dqc_j, (pre1, pre2)

    @staticmethod
    def _ensemble_grad(e, dqc, pre, o):
        """sum_j dL/dqc_j * dqc_j/da, dqc: [M, B, N]."""
        pre1, pre2 = pre
        m, b, n = dqc.shape
        g2 = _silu_back(dqc.reshape(m, b * n, 1) * e.nn3.weight.transpose(1, 2), pre2)  # [M, BN, H]
        g1 = _silu_back(torch.bmm(g2, e.nn2.weight.transpose(1, 2)), pre1)
        ga = torch.bmm(g1, e.nn1.weight[:, o:, :].transpose(1, 2)).sum(dim=0)  # [BN, a]
        return ga.reshape(b, n, -1)


class _WithActionGradient(torch.autograd.Function):
    """L_A at the policy's actions, with the hand-made action gradient as its backward: the
    actor's loss flows back into the chain without a graph through the critics."""

    @staticmethod
    def forward(ctx, action, la, grad):
        ctx.save_for_backward(grad)
        return la.clone()

    @staticmethod
    def backward(ctx, g_la):
        (grad,) = ctx.saved_tensors
        return g_la * grad, None, None


def with_action_gradient(action: torch.Tensor, la: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """la [B, 1] (computed at `action` [B, a], with grad_a L_A `grad` [B, a]) as a function of
    `action` for autograd."""
    return _WithActionGradient.apply(action, la, grad)
