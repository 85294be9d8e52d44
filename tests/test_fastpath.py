"""The fast update (grad_a L_A by hand, fastpath.py) equals the eager one (autograd)."""

import dataclasses

import numpy as np
import pytest
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.config import AlgoConfig
from algd_runtime.sim.spec import TaskSpec

SPEC = TaskSpec("SafetyPointGoal1-v0", 12, 2, (-1.0, -1.0), (1.0, 1.0), 400, 10.0, cost_mask_always_one=True)


def pair(**algo):
    torch.manual_seed(0)
    cfg = AlgoConfig(score_hidden=32, critic_hidden=48, batch_size=64, fast_update=False, **algo)
    eager = ALGDAgent(SPEC, cfg)
    fast = ALGDAgent(SPEC, dataclasses.replace(cfg, fast_update=True))
    fast.load_state_dict(eager.state_dict())
    with torch.no_grad():  # a multiplier and a budget that keep the penalty active on some rows
        for agent in (eager, fast):
            agent.log_lambda.fill_(0.5)
            agent.h = 0.0
    return eager, fast


def batch(rng, b=64):
    return {"obs": rng.normal(size=(b, 12)).astype(np.float32), "action": rng.uniform(-1, 1, (b, 2)).astype(np.float32),
            "reward": rng.normal(size=b).astype(np.float32), "cost": (rng.random(b) < 0.3).astype(np.float32),
            "next_obs": rng.normal(size=(b, 12)).astype(np.float32), "done": (rng.random(b) < 0.05).astype(np.float32)}


@pytest.mark.parametrize("members", [4, 1])
def test_energy_and_its_action_gradient_match_autograd(members):
    eager, fast = pair(qc_ensemble=members)
    obs, actions = torch.randn(64, 12), torch.rand(64, 4, 2) * 2 - 1
    lam = eager.log_lambda.detach().exp()
    la, q_min, qc, grad = fast.fast_energy(obs, actions, lam)
    a = actions.reshape(-1, 2).requires_grad_(True)
    ref_la, ref_q, ref_qc = eager.energy(obs[:, None].expand(64, 4, 12).reshape(-1, 12), a)
    (ref_grad,) = torch.autograd.grad(ref_la.sum(), a)
    for mine, ref in ((la, ref_la), (q_min, ref_q), (qc, ref_qc), (grad, ref_grad)):
        torch.testing.assert_close(mine.reshape(ref.shape), ref, atol=1e-5, rtol=1e-5)
    assert (ref_la > -ref_q + 1e-3).any(), "the penalty should be active somewhere, or the test is weak"


@pytest.mark.parametrize("variant", ["vesde", "ddpm"])
def test_updates_leave_the_same_networks_and_statistics(variant):
    eager, fast = pair(variant=variant)
    rng = np.random.default_rng(1)
    for step in range(5):
        b = batch(rng)
        torch.manual_seed(100 + step)
        s_eager = eager.update(b, repeat_index=0)
        torch.manual_seed(100 + step)
        s_fast = fast.update(b, repeat_index=0)
        for k, v in s_eager.items():
            assert s_fast[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
    for name, net in eager.networks().items():
        for p, q in zip(net.parameters(), fast.networks()[name].parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)
    assert eager.lam == pytest.approx(fast.lam, rel=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_members_that_agree_give_the_eager_gradient_not_nan(precision):
    """Cost critics with one output (std 0: in bf16, 8 bits, frequent; seen as NaN actions on
    Hopper right after the first updates): the std's derivative is 0 there, as autograd's."""
    eager, fast = pair()
    fast = ALGDAgent(SPEC, dataclasses.replace(fast.cfg, precision=precision))
    fast.h = eager.h
    with torch.no_grad():
        for agent in (eager, fast):
            for layer in (agent.cost_critics.nn1, agent.cost_critics.nn2, agent.cost_critics.nn3):
                layer.weight[:] = layer.weight[0]
                layer.bias[:] = layer.bias[0]
        fast.load_state_dict(eager.state_dict(), with_optimizers=False)
    obs, actions = torch.randn(64, 12), torch.rand(64, 4, 2) * 2 - 1
    la, _, _, grad = fast.fast_energy(obs, actions, 0.5)
    a = actions.reshape(-1, 2).requires_grad_(True)
    ref_la, _, _ = eager.energy(obs[:, None].expand(64, 4, 12).reshape(-1, 12), a, 0.5)
    (ref,) = torch.autograd.grad(ref_la.sum(), a)
    assert torch.isfinite(grad).all() and torch.isfinite(ref).all()
    tol = 1e-5 if precision == "fp32" else 0.1
    assert float((grad.reshape(ref.shape) - ref).norm() / ref.norm()) < tol
