"""bf16 training (precision.py): what it resolves to, and that its updates stay near fp32's."""

import numpy as np
import pytest
import torch

from algd_runtime.learn import precision
from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.config import AlgoConfig, ConfigError, load_config
from algd_runtime.sim.spec import TaskSpec

SPEC = TaskSpec("SafetyPointGoal1-v0", 12, 2, (-1.0, -1.0), (1.0, 1.0), 400, 10.0, cost_mask_always_one=True)


def batch(rng, b=64):
    return {"obs": rng.normal(size=(b, 12)).astype(np.float32), "action": rng.uniform(-1, 1, (b, 2)).astype(np.float32),
            "reward": rng.normal(size=b).astype(np.float32), "cost": (rng.random(b) < 0.3).astype(np.float32),
            "next_obs": rng.normal(size=(b, 12)).astype(np.float32), "done": (rng.random(b) < 0.05).astype(np.float32)}


def agent(prec: str, fast: bool = True, seed: int = 0) -> ALGDAgent:
    torch.manual_seed(seed)
    a = ALGDAgent(SPEC, AlgoConfig(score_hidden=64, critic_hidden=128, batch_size=64, fast_update=fast, precision=prec))
    with torch.no_grad():  # a multiplier and a budget that keep the penalty active on some rows
        a.log_lambda.fill_(0.5)
        a.h = 0.0
    return a


def flat(a: ALGDAgent) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for m in a.networks().values() for p in m.parameters()])


def test_precision_resolves_by_the_hardware_and_says_why(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.resolve("fp32", cpu) == (torch.float32, "fp32 (configured)")
    monkeypatch.setattr(precision, "cpu_flags", lambda: ["avx512f", "avx2"])
    assert precision.resolve("auto", cpu) == (torch.float32, "fp32 (auto: CPU has none of amx_bf16, avx512_bf16)")
    dtype, why = precision.resolve("bf16", cpu)
    assert dtype == torch.bfloat16 and "emulated, slower than fp32" in why
    monkeypatch.setattr(precision, "cpu_flags", lambda: ["avx512_bf16", "avx512f"])
    assert precision.resolve("auto", cpu) == (torch.bfloat16, "bf16 (auto: CPU has avx512_bf16)")
    assert precision.resolve("bf16", cpu) == (torch.bfloat16, "bf16 (configured)")
    with pytest.raises(ValueError, match="precision: expected one of fp32, bf16, auto, got 'fp16'"):
        precision.resolve("fp16", cpu)


def test_auto_on_a_cuda_device_follows_its_bf16_support(monkeypatch):
    """The CUDA branch, with torch's answers stood in for (no GPU lent)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert precision.resolve("auto", torch.device("cuda")) == (torch.bfloat16, "bf16 (auto: CUDA Stand-in GPU)")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert precision.resolve("auto", torch.device("cuda")) == (torch.float32, "fp32 (auto: CUDA Stand-in GPU)")
    assert precision.compute_in(torch.bfloat16, torch.device("cpu")).fast_dtype == torch.bfloat16


def test_a_misspelled_precision_is_refused_naming_the_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo:\n  precision: bf17\n")
    with pytest.raises(ConfigError, match="algo.precision"):
        load_config(f)


def test_the_bf16_energy_gradient_is_near_fp32_and_follows_each_optimiser_step():
    a32, a16 = agent("fp32"), agent("bf16")
    a16.load_state_dict(a32.state_dict())
    obs, actions = torch.randn(64, 12), torch.rand(64, 4, 2) * 2 - 1
    lam = a32.log_lambda.detach().exp()
    r32, r16 = a32.fast_energy(obs, actions, lam), a16.fast_energy(obs, actions, lam)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in the update: the path sets its own dtypes
        for x, y in zip(r16, a16.fast_energy(obs, actions, lam)):
            assert torch.equal(x, y)
    for x, y in zip(r32, r16):
        assert y.dtype == torch.float32  # what the score target and the actor read is fp32
    la, q_min, qc, grad = r32
    for ref, got in zip((la, q_min, qc), r16[:3]):
        assert float((got - ref).abs().max() / ref.abs().max()) < 0.02
    # Per row: the median within 2 %, and the tail no worse than torch's own bf16 (autograd
    # under autocast) does on the same networks: a ReLU net's action gradient is a sum with
    # cancellation, so some rows lose 20-40 % of their digits in any bf16 (measured).
    a = actions.reshape(-1, 2).clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_la, _, _ = a32.energy(obs[:, None].expand(64, 4, 12).reshape(-1, 12), a, lam)
    (autocast_grad,) = torch.autograd.grad(ref_la.float().sum(), a)
    scale = grad.norm(dim=-1).median()
    ours = ((r16[3] - grad).norm(dim=-1) / grad.norm(dim=-1)).median()
    tail = ((r16[3] - grad).norm(dim=-1) / scale).quantile(0.95)
    torch_tail = ((autocast_grad.reshape(grad.shape) - grad).norm(dim=-1) / scale).quantile(0.95)
    assert float(ours) < 0.02 and float(tail) <= 1.5 * float(torch_tail), (float(ours), float(tail), float(torch_tail))
    # An optimiser step moves the bf16 copies with it (a stale copy would keep the old energy).
    for m in (a16.critic, a16.cost_critics, a32.critic, a32.cost_critics):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1.5)
    after32, after16 = a32.fast_energy(obs, actions, lam)[0], a16.fast_energy(obs, actions, lam)[0]
    assert float((after32 - la).abs().max()) > 0.1
    assert float((after16 - after32).abs().max() / after32.abs().max()) < 0.02


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_updates_stay_near_fp32_over_twenty_steps(fast):
    """Same start, batches and noise: after 20 updates the bf16 weights differ from the fp32
    ones by a few per cent of how far training moved them, and every statistic agrees."""
    rng = np.random.default_rng(3)
    batches = [batch(rng) for _ in range(20)]
    runs = {}
    for prec in ("fp32", "bf16"):
        a = agent(prec, fast)
        start = flat(a)
        torch.manual_seed(1)
        stats = [a.update(b) for b in batches]
        runs[prec] = (start, flat(a), stats)
    (start, w32, s32), (_, w16, s16) = runs["fp32"], runs["bf16"]
    moved = float((w32 - start).norm())
    assert moved > 0.1  # training moved the weights: the comparison means something
    assert float((w16 - w32).norm()) / moved < 0.1
    for k in ("critic_loss", "cost_critic_loss", "score_loss", "q_policy", "qc_policy", "qc_replay", "lambda"):
        x, y = np.array([s[k] for s in s32]), np.array([s[k] for s in s16])
        assert np.all(np.abs(x - y) <= 0.03 * np.abs(x) + 1e-3), (k, x, y)
