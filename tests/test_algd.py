"""The ALGD maths: energy, risk, score target, dual update, schedules, one full update."""

import math

import numpy as np
import pytest
import torch

from algd_runtime.learn.algd import ALGDAgent, augmented_lagrangian, risk_adjusted
from algd_runtime.learn.config import AlgoConfig
from algd_runtime.learn.diffusion import DDPMPolicy, VESDEPolicy
from algd_runtime.sim.spec import TaskSpec

SPEC = TaskSpec(name="unit", obs_dim=3, act_dim=2, act_low=(-1.0, -2.0), act_high=(1.0, 2.0),
                episode_length=400, cost_limit=10.0, cost_semantics="episode")
SMALL = dict(score_hidden=16, critic_hidden=16, batch_size=8)


def make_agent(**kw) -> ALGDAgent:
    torch.manual_seed(0)
    return ALGDAgent(SPEC, AlgoConfig(**{**SMALL, **kw}))


def test_energy_matches_hand_computed_values():
    q = torch.tensor([[2.0], [2.0]])
    qc = torch.tensor([[3.0], [1.0]])
    la = augmented_lagrangian(q, qc, lam=0.5, h=2.455, rho=1.0)
    # active: -2 + ((0.5 + (3 - 2.455))^2 - 0.25) / 2 = -2 + (1.045^2 - 0.25) / 2
    assert la[0, 0].item() == pytest.approx(-2.0 + (1.045**2 - 0.25) / 2, abs=1e-6)
    # inactive (lam + rho (qc - h) < 0): only -lam^2 / (2 rho) remains
    assert la[1, 0].item() == pytest.approx(-2.0 - 0.125, abs=1e-6)
    # rho scales the penalty: rho = 2 -> ((0.5 + 2 * 0.545)^2 - 0.25) / 4
    la2 = augmented_lagrangian(q[:1], qc[:1], lam=0.5, h=2.455, rho=2.0)
    assert la2.item() == pytest.approx(-2.0 + ((0.5 + 2 * 0.545) ** 2 - 0.25) / 4, abs=1e-6)


def test_navigation_budget_is_converted_to_a_per_step_target():
    agent = make_agent()
    expected = 10 * (1 - 0.99**400) / (1 - 0.99) / 400
    assert agent.h == pytest.approx(expected)
    assert agent.h == pytest.approx(2.455, abs=1e-3)


def test_risk_is_mean_plus_k_unbiased_std():
    qcs = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)
    std = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)
    assert risk_adjusted(qcs, 1.0).item() == pytest.approx(2.5 + std, abs=1e-6)
    assert risk_adjusted(qcs, 0.0).item() == pytest.approx(2.5, abs=1e-6)
    assert risk_adjusted(qcs[:1], 1.0).item() == pytest.approx(1.0)


def test_agent_energy_uses_min_q_and_risk_of_the_ensemble():
    agent = make_agent()
    obs, act = torch.randn(5, 3), torch.rand(5, 2)
    la, q_min, qc = agent.energy(obs, act, lam=0.7)
    q1, q2 = agent.critic(obs, act)
    qcs = agent.cost_critics(obs, act)
    assert torch.allclose(q_min, torch.min(q1, q2))
    assert torch.allclose(qc, qcs.mean(0) + qcs.std(0))
    manual = -q_min + (torch.clamp(0.7 + (qc - agent.h), min=0) ** 2 - 0.49) / 2
    assert torch.allclose(la, manual, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_score_target_sign_and_softmax_weights(beta):
    """With L_A(a) = |a - c|^2 / 2, phi* = -(1/beta) sum_i w_i (a_i - c), w = softmax(-L_i/beta)."""
    agent = make_agent(beta=beta, score_mc_samples=4, fast_update=False)  # a stand-in energy: the eager path
    c = torch.tensor([0.3, -0.4])

    def quadratic_energy(obs, action, lam=None):
        la = 0.5 * ((action - c) ** 2).sum(-1, keepdim=True)
        return la, -la, torch.zeros_like(la)

    agent.energy = quadratic_energy
    b = 6
    obs, a_tau = torch.randn(b, 3), torch.rand(b, 2) * 2 - 1
    tau = torch.tensor([0, 1, 2, 3, 4, 2])
    noise = torch.randn(b, 4, 2)
    phi = agent.score_target(obs, a_tau, tau, noise=noise).numpy()

    sig = agent.policy.ve_sigmas[tau].numpy()[:, None, None]
    samples = a_tau.numpy()[:, None, :] + sig * noise.numpy()
    la = 0.5 * ((samples - c.numpy()) ** 2).sum(-1)
    w = np.exp(-la / beta)
    w /= w.sum(1, keepdims=True)
    expected = -(w[:, :, None] * (samples - c.numpy())).sum(1) / beta
    np.testing.assert_allclose(phi, expected, rtol=1e-5, atol=1e-6)
    # The target points downhill, toward the minimum c, where the spread is small.
    small = (tau <= 1).numpy()
    toward = (c.numpy() - a_tau.numpy())[small]
    assert ((phi[small] * toward).sum(-1) > 0).all()


def test_score_target_with_real_critics_equals_autograd_per_sample():
    agent = make_agent(score_mc_samples=3)
    obs, a_tau = torch.randn(4, 3), torch.rand(4, 2)
    tau = torch.tensor([4, 3, 2, 1])
    noise = torch.randn(4, 3, 2)
    phi = agent.score_target(obs, a_tau, tau, noise=noise)
    for b in range(4):
        grads, energies = [], []
        for i in range(3):
            a = (a_tau[b] + agent.policy.ve_sigmas[tau[b]] * noise[b, i]).clone().requires_grad_(True)
            la, _, _ = agent.energy(obs[b:b + 1], a[None])
            grads.append(torch.autograd.grad(la.sum(), a)[0])
            energies.append(la.item())
        w = torch.softmax(-torch.tensor(energies), 0)
        expected = -(w[:, None] * torch.stack(grads)).sum(0)
        assert torch.allclose(phi[b], expected, atol=1e-5)


def _dual_steps(agent: ALGDAgent, cost_bias: float, steps: int = 20) -> list[float]:
    with torch.no_grad():
        agent.cost_critics.nn3.weight.zero_()
        agent.cost_critics.nn3.bias.fill_(cost_bias)  # every member predicts cost_bias
    obs, act = torch.randn(16, 3), torch.rand(16, 2)
    lams = [agent.lam]
    for _ in range(steps):
        agent.update_dual(obs, act)
        lams.append(agent.lam)
    return lams


def test_lambda_rises_over_budget_and_falls_under_it():
    over = _dual_steps(make_agent(lambda_lr=0.01), cost_bias=50.0)
    under = _dual_steps(make_agent(lambda_lr=0.01), cost_bias=0.0)
    assert all(b > a for a, b in zip(over, over[1:])), over
    assert all(b < a for a, b in zip(under, under[1:])), under
    assert over[0] == pytest.approx(0.6931, rel=1e-4) and under[0] == pytest.approx(0.6931, rel=1e-4)


def test_ve_schedule_is_geometric_from_001_to_1():
    pol = VESDEPolicy(3, 2, (-1, -1), (1, 1), hidden=8, steps=5)
    s = pol.ve_sigmas.numpy()
    np.testing.assert_allclose(s, 0.01 * 100 ** np.linspace(0, 1, 5), rtol=1e-6)
    np.testing.assert_allclose(np.cumsum(pol.ve_delta_sigma2.numpy()), s**2, rtol=1e-5)
    assert pol.initial_std == pytest.approx(1.0)


def test_ddpm_schedule_is_linear_betas():
    pol = DDPMPolicy(3, 2, (-1, -1), (1, 1), hidden=8, steps=5)
    np.testing.assert_allclose(pol.betas.numpy(), np.linspace(1e-4, 0.02, 5), rtol=1e-6)
    np.testing.assert_allclose(pol.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 5)), rtol=1e-6)


def test_ve_deterministic_chain_matches_the_update_rule():
    torch.manual_seed(1)
    pol = VESDEPolicy(3, 2, (-1, -2), (1, 2), hidden=8, steps=5)
    obs = torch.randn(4, 3)
    x = torch.zeros(4, 2)
    with torch.no_grad():
        for k in reversed(range(5)):
            a = torch.tanh(x) * torch.tensor([1.0, 2.0])
            x = x + pol.ve_delta_sigma2[k] * pol.score(obs, a, torch.full((4,), k))
        expected = torch.tanh(x) * torch.tensor([1.0, 2.0])
        assert torch.allclose(pol.act_deterministic(obs), expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["vesde", "ddpm"])
def test_sampling_is_reproducible_and_in_bounds(variant):
    agent = make_agent(variant=variant)
    obs = torch.randn(64, 3)
    x0, noises = agent.policy.draw_noise(64, torch.Generator().manual_seed(3))
    a1 = agent.policy.chain(obs, x0, noises)[0]
    x0b, noisesb = agent.policy.draw_noise(64, torch.Generator().manual_seed(3))
    a2 = agent.policy.chain(obs, x0b, noisesb)[0]
    assert torch.equal(a1, a2)
    assert (a1[:, 1].abs() <= 2.0).all() and (a1[:, 0].abs() <= 1.0).all()
    a0, a_tau, tau = agent.policy.sample_with_tau(obs)
    assert a0.requires_grad and a_tau.shape == (64, 2) and set(tau.tolist()) <= set(range(5))
    assert not torch.equal(a_tau, torch.zeros_like(a_tau))


@pytest.mark.parametrize("variant", ["vesde", "ddpm"])
def test_one_update_changes_every_trained_network_and_stays_finite(variant):
    agent = make_agent(variant=variant)
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(8, 3)).astype(np.float32),
             "action": rng.uniform(-1, 1, (8, 2)).astype(np.float32),
             "reward": rng.normal(size=8).astype(np.float32),
             "cost": (rng.random(8) < 0.5).astype(np.float32),
             "next_obs": rng.normal(size=(8, 3)).astype(np.float32),
             "done": np.zeros(8, np.float32)}
    before = {k: [p.clone() for p in m.parameters()] for k, m in agent.networks().items()}
    stats = agent.update(batch)
    assert all(np.isfinite(v) for v in stats.values())
    for name in ("policy", "critic", "cost_critics", "critic_target", "cost_critics_target"):
        after = list(agent.networks()[name].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before[name])), name
    # The second update skips the target update (every 2nd gradient step).
    targets = [p.clone() for p in agent.critic_target.parameters()]
    agent.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(agent.critic_target.parameters(), targets))


def test_episode_cost_dual_moves_lambda_by_the_size_of_the_violation():
    agent = make_agent(dual="episode_cost", episode_dual_lr=0.1, init_lambda=0.5)
    assert agent.dual_from_episode(20.0, 10.0) == pytest.approx(0.6)  # over by 100 %: +0.1
    assert agent.dual_from_episode(5.0, 10.0) == pytest.approx(0.55)  # under by 50 %: -0.05
    for _ in range(20):
        agent.dual_from_episode(0.0, 10.0)
    assert agent.lam == pytest.approx(1e-8)  # projected at 0 (stored as log lambda)
    assert agent.dual_from_episode(30.0, 10.0) == pytest.approx(0.2, abs=1e-6)  # and back at once


def test_clipped_episode_dual_bounds_the_step_of_one_outlier_episode():
    agent = make_agent(dual="episode_cost", episode_dual_lr=0.1, init_lambda=0.5, episode_dual_clip=1.0)
    assert agent.dual_from_episode(360.0, 10.0) == pytest.approx(0.6)  # 35x over: +0.1, not +3.5
    assert agent.dual_from_episode(15.0, 10.0) == pytest.approx(0.65)  # under the clip: as before
    assert agent.dual_from_episode(0.0, 10.0) == pytest.approx(0.55)  # below the limit: unclipped


def costly_batch(n: int) -> dict:
    """n random transitions of SPEC, every one with cost 1."""
    rng = np.random.default_rng(0)
    return {"obs": rng.normal(size=(n, SPEC.obs_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, SPEC.act_dim)).astype(np.float32),
            "reward": rng.normal(size=n).astype(np.float32), "cost": np.ones(n, np.float32),
            "next_obs": rng.normal(size=(n, SPEC.obs_dim)).astype(np.float32), "done": np.zeros(n, np.float32)}


def test_episode_cost_dual_leaves_lambda_to_the_episodes_not_to_the_updates():
    b = costly_batch(32)
    by_episode, by_critic = make_agent(dual="episode_cost"), make_agent()
    for _ in range(3):
        stats = by_episode.update(b)
        by_critic.update(b)
    assert by_episode.lam == pytest.approx(0.6931) and "qc_replay" in stats
    assert by_critic.lam != pytest.approx(0.6931)


def test_the_dual_rule_is_checked_by_name():
    from algd_runtime.learn.config import ConfigError, config_from_dict

    assert config_from_dict({"algo": {"dual": "episode_cost"}}).algo.dual == "episode_cost"
    with pytest.raises(ConfigError, match="algo.dual"):
        config_from_dict({"algo": {"dual": "pid"}})


def test_cost_critic_targets_follow_at_their_own_rate():
    b = costly_batch(8)
    agent = make_agent(qc_tau=1.0, tau=0.005)
    agent.update(b)  # grad step 0: the targets move
    for p, q in zip(agent.cost_critics.parameters(), agent.cost_critics_target.parameters()):
        assert torch.equal(p, q)  # qc_tau = 1: the cost targets are the critics
    assert any(not torch.equal(p, q) for p, q in zip(agent.critic.parameters(), agent.critic_target.parameters()))
