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
"""

from __future__ import annotations

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

    def __init__(self, agent) -> None:
        self.agent = agent

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, lam: torch.Tensor | float):
        agent = self.agent
        o = obs.shape[-1]
        q_min, grad_q = self._twin_q(obs, actions, o)
        qc_risk, dqc_j, pre = self._ensemble(obs, actions, o)
        rho, h = agent.cfg.rho, agent.h
        active = torch.clamp(lam + rho * (qc_risk - h), min=0.0)
        la = -q_min + (active**2 - lam**2) / (2.0 * rho)
        grad = -grad_q + self._ensemble_grad(active[None] * dqc_j, pre, o)
        return la, q_min, qc_risk, grad

    # -- twin reward critics (ReLU) ----------------------------------------------------------
    def _twin_q(self, obs, actions, o):
        c = self.agent.critic
        nets = ((c.linear1, c.linear2, c.linear3), (c.linear4, c.linear5, c.linear6))
        outs = []
        for l1, l2, l3 in nets:
            # [B, H] once per state + [B, N, H] for the actions
            pre1 = F.linear(obs, l1.weight[:, :o], l1.bias)[:, None, :] + actions @ l1.weight[:, o:].T
            pre2 = F.linear(torch.relu(pre1), l2.weight, l2.bias)
            q = F.linear(torch.relu(pre2), l3.weight, l3.bias)[..., 0]
            outs.append((q, pre1, pre2))
        (q1, p11, p12), (q2, p21, p22) = outs
        first = q1 <= q2
        q_min = torch.where(first, q1, q2)
        grad = actions.new_empty(actions.shape)
        # Back through the network that gave Q_min, on its rows only.
        for take, (l1, l2, l3), pre1, pre2 in ((first, nets[0], p11, p12), (~first, nets[1], p21, p22)):
            rows = take.nonzero(as_tuple=True)
            if rows[0].numel() == 0:
                continue
            g2 = _relu_back(l3.weight.expand(rows[0].numel(), -1), pre2[rows])  # dq/dpre2: [R, H]
            g1 = _relu_back(g2 @ l2.weight, pre1[rows])
            grad[rows] = (g1 @ l1.weight[:, o:]).to(grad.dtype)  # bf16 under autocast
        return q_min, grad

    # -- cost ensemble (SiLU) ---------------------------------------------------------------
    def _ensemble(self, obs, actions, o):
        e = self.agent.cost_critics
        w1 = e.nn1.weight  # [M, o + a, H]
        b, n, a = actions.shape
        m = w1.shape[0]
        # [M, B, 1, H] state part + [M, B, N, H] action part
        pre1 = (torch.matmul(obs, w1[:, :o, :]) + e.nn1.bias[:, None, :])[:, :, None, :] \
            + torch.matmul(actions.reshape(1, b * n, a), w1[:, o:, :]).reshape(m, b, n, -1)
        pre1 = pre1.reshape(m, b * n, -1)
        pre2 = torch.baddbmm(e.nn2.bias[:, None, :], F.silu(pre1), e.nn2.weight)
        qc = torch.baddbmm(e.nn3.bias[:, None, :], F.silu(pre2), e.nn3.weight)[..., 0].reshape(m, b, n)
        if m == 1:
            return qc[0], torch.ones_like(qc), (pre1, pre2)
        k = self.agent.cfg.qc_risk_k
        std, mean = torch.std_mean(qc, dim=0)
        # d(mean + k std)/d qc_j, std unbiased (as torch.std)
        dqc_j = 1.0 / m + k * (qc - mean) / ((m - 1) * std)
        return mean + k * std, dqc_j, (pre1, pre2)

    def _ensemble_grad(self, dqc, pre, o):
        """sum_j dL/dqc_j * dqc_j/da, dqc: [M, B, N]."""
        e = self.agent.cost_critics
        pre1, pre2 = pre
        m, b, n = dqc.shape
        g2 = _silu_back(dqc.reshape(m, b * n, 1) * e.nn3.weight.transpose(1, 2), pre2)  # [M, BN, H]
        g1 = _silu_back(torch.bmm(g2, e.nn2.weight.transpose(1, 2)), pre1)
        ga = torch.bmm(g1, e.nn1.weight[:, o:, :].transpose(1, 2)).sum(dim=0)  # [BN, a]
        return ga.reshape(b, n, -1)


class _EnergyOfAction(torch.autograd.Function):
    """L_A at the policy's actions, with the hand-made action gradient as its backward: the
    actor's loss flows back into the chain without a graph through the critics."""

    @staticmethod
    def forward(ctx, action, obs, energy_grad, lam):
        la, q_min, qc, grad = energy_grad(obs, action[:, None, :], lam)
        ctx.save_for_backward(grad[:, 0, :])
        return la[:, 0:1], q_min[:, 0:1], qc[:, 0:1]

    @staticmethod
    def backward(ctx, g_la, g_q, g_qc):
        (grad,) = ctx.saved_tensors
        return g_la * grad, None, None, None


def energy_of_action(energy_grad: EnergyGrad, obs, action, lam):
    """(L_A, Q_min, Qc_risk), each [B, 1]; only L_A carries a gradient (to the action)."""
    la, q_min, qc = _EnergyOfAction.apply(action, obs, energy_grad, lam)
    return la, q_min.detach(), qc.detach()
