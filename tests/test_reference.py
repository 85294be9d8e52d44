"""Import of the reference code's three state-dict files."""

import numpy as np
import pytest
import torch

from algd_runtime.learn.checkpoint import CheckpointError, agent_from_checkpoint, load_checkpoint
from algd_runtime.cli import import_reference_main
from algd_runtime.learn.reference import import_reference

OBS, ACT, K, EMB, H, CH, M = 8, 2, 5, 16, 32, 24, 4  # PointHazard-v0 sizes, small widths


def reference_files(tmp_path, variant="vesde", obs=OBS):
    """State dicts with the key names and shapes the authors' code saves (written out here
    by hand, independent of our modules)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    actor = {"time_embedding.weight": r(K, EMB),
             "mlp.0.weight": r(H, obs + ACT + EMB), "mlp.0.bias": r(H),
             "mlp.2.weight": r(H, H), "mlp.2.bias": r(H), "mlp.4.weight": r(H, H), "mlp.4.bias": r(H),
             "eps_head.weight": r(ACT, H), "eps_head.bias": r(ACT),
             "score_head.weight": r(ACT, H), "score_head.bias": r(ACT)}
    if variant == "vesde":
        s = 0.01 * 100 ** torch.linspace(0, 1, K)
        actor.update(ve_sigmas=s, ve_sigma2=s**2, ve_delta_sigma2=s**2 - torch.cat([torch.zeros(1), s[:-1] ** 2]))
    else:
        b = torch.linspace(1e-4, 0.02, K)
        ab = torch.cumprod(1 - b, 0)
        actor.update(betas=b, alphas=1 - b, alphas_cumprod=ab, alphas_cumprod_prev=torch.cat([torch.ones(1), ab[:-1]]),
                     sqrt_alphas_cumprod=ab.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - ab).sqrt())
    critics = {}
    for i in (1, 4):
        critics |= {f"linear{i}.weight": r(CH, OBS + ACT), f"linear{i}.bias": r(CH),
                    f"linear{i + 1}.weight": r(CH, CH), f"linear{i + 1}.bias": r(CH),
                    f"linear{i + 2}.weight": r(1, CH), f"linear{i + 2}.bias": r(1)}
    safety = {"nn1.weight": r(M, OBS + ACT, CH), "nn1.bias": r(M, CH), "nn2.weight": r(M, CH, CH),
              "nn2.bias": r(M, CH), "nn3.weight": r(M, CH, 1), "nn3.bias": r(M, 1)}
    paths = []
    for name, sd in (("actor", actor), ("critics", critics), ("safetycritics", safety)):
        paths.append(tmp_path / f"{name}_.pth")
        torch.save(sd, paths[-1])
    return paths, actor, critics, safety


def np_score(actor, obs, action, k):
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    p = {key: v.numpy().astype(np.float64) for key, v in actor.items()}
    emb = np.broadcast_to(p["time_embedding.weight"][k], (obs.shape[0], EMB))
    h = np.concatenate([obs, action, emb], -1)
    for i in (0, 2, 4):
        h = relu(h @ p[f"mlp.{i}.weight"].T + p[f"mlp.{i}.bias"])
    return h @ p["score_head.weight"].T + p["score_head.bias"]


@pytest.mark.parametrize("variant", ["vesde", "ddpm"])
def test_import_builds_a_policy_that_computes_with_the_reference_weights(tmp_path, variant):
    (a, c, s), actor, critics, safety = reference_files(tmp_path, variant)
    out = import_reference(a, c, s, "PointHazard-v0", tmp_path / "policy.pt", init_lambda=1.5)
    ckpt = load_checkpoint(out)
    assert ckpt["origin"] == "reference-import" and ckpt["config"]["algo"]["variant"] == variant
    assert ckpt["config"]["algo"]["critic_hidden"] == CH and ckpt["config"]["algo"]["qc_ensemble"] == M
    agent = agent_from_checkpoint(ckpt)
    assert agent.lam == pytest.approx(1.5)
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(3, OBS)).astype(np.float32), rng.uniform(-1, 1, (3, ACT)).astype(np.float32)
    got = agent.policy.score(torch.from_numpy(obs), torch.from_numpy(act), torch.full((3,), 2)).detach().numpy()
    np.testing.assert_allclose(got, np_score(actor, obs, act, 2), rtol=1e-4, atol=1e-5)
    # Twin Q: Q1 from linear1..3 by hand.
    xu = np.concatenate([obs, act], -1)
    q1 = np.maximum(np.maximum(xu @ critics["linear1.weight"].numpy().T + critics["linear1.bias"].numpy(), 0)
                    @ critics["linear2.weight"].numpy().T + critics["linear2.bias"].numpy(), 0) \
        @ critics["linear3.weight"].numpy().T + critics["linear3.bias"].numpy()
    np.testing.assert_allclose(agent.critic(torch.from_numpy(obs), torch.from_numpy(act))[0].detach().numpy(), q1,
                               rtol=1e-4, atol=1e-5)
    # Cost ensemble member 2: weight [in, out] (x @ W + b), SiLU.
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    w = {k: v.numpy()[2] for k, v in safety.items()}
    qc2 = silu(silu(xu @ w["nn1.weight"] + w["nn1.bias"]) @ w["nn2.weight"] + w["nn2.bias"]) @ w["nn3.weight"] + w["nn3.bias"]
    np.testing.assert_allclose(agent.cost_critics(torch.from_numpy(obs), torch.from_numpy(act))[2].detach().numpy(),
                               qc2, rtol=1e-4, atol=1e-5)
    assert np.isfinite(agent.act(obs[0], deterministic=True)).all()


def test_import_refuses_a_model_of_the_wrong_size(tmp_path):
    (a, c, s), *_ = reference_files(tmp_path, obs=OBS + 3)
    with pytest.raises(CheckpointError, match=r"obs_dim=11, act_dim=2, but task PointHazard-v0 has obs_dim=8"):
        import_reference(a, c, s, "PointHazard-v0", tmp_path / "policy.pt")


def test_import_names_the_missing_parameter_and_bad_files(tmp_path, capsys):
    (a, c, s), actor, *_ = reference_files(tmp_path)
    del actor["score_head.weight"]
    torch.save(actor, a)
    with pytest.raises(CheckpointError, match=r"actor: missing parameter 'score_head.weight'"):
        import_reference(a, c, s, "PointHazard-v0", tmp_path / "policy.pt")
    c.write_bytes(b"not a torch file")
    rc = import_reference_main(["--actor", str(a), "--critics", str(c), "--safety-critics", str(s),
                                "--task", "PointHazard-v0", "-o", str(tmp_path / "p.pt")])
    assert rc == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()
