"""PolicyRuntime: verification errors, acting modes, NaN safety, no torch."""

import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint
from algd_runtime.contract.bundle import BundleError, sha256_file
from algd_runtime.deploy.runtime import PolicyRuntime


@pytest.fixture
def bundle(vesde_bundle, tmp_path):
    """A private copy that a test may damage."""
    return shutil.copytree(vesde_bundle, tmp_path / "bundle")


def edit_manifest(bundle, fn):
    """Edit the manifest and re-seal its digest, so the check behind the digest is the one tested."""
    path = bundle / "manifest.yaml"
    m = yaml.safe_load(path.read_text())
    fn(m)
    path.write_text(yaml.safe_dump(m))
    (bundle / "manifest.sha256").write_text(f"{sha256_file(path)}  manifest.yaml\n")


def test_deterministic_actions_match_torch(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    agent = agent_from_checkpoint(load_checkpoint(vesde_bundle.parent / "policy.pt"), with_optimizers=False)
    obs = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32) * 0.5
    res = rt.act(obs)
    ref = agent.policy.act_deterministic(torch.from_numpy(obs)).detach().numpy()
    assert res.valid.all() and np.abs(res.action - ref).max() < 1e-5
    single = rt.act(obs[3])
    assert single.action.shape == (2,) and np.allclose(single.action, res.action[3], atol=1e-6)
    assert rt.act(obs[3].astype(np.float64)).action.dtype == np.float32


def test_corrupted_file_is_named(bundle):
    data = bytearray((bundle / "denoiser.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "denoiser.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"denoiser.onnx: sha256 .* does not match manifest.yaml"):
        PolicyRuntime.load(bundle, provider="cpu")


def test_truncated_file_is_named(bundle):
    data = (bundle / "critics.onnx").read_bytes()
    (bundle / "critics.onnx").write_bytes(data[:100])
    with pytest.raises(BundleError, match=r"critics.onnx: 100 bytes, manifest.yaml says \d+"):
        PolicyRuntime.load(bundle, provider="cpu")


def test_wrong_hash_in_manifest(bundle):
    edit_manifest(bundle, lambda m: m["files"]["critics"].update(sha256="0" * 64))
    with pytest.raises(BundleError, match=r"critics.onnx: sha256 .* does not match manifest.yaml's 0000"):
        PolicyRuntime.load(bundle, provider="cpu")


def test_wrong_schema_version(bundle):
    edit_manifest(bundle, lambda m: m.update(schema_version=7))
    with pytest.raises(BundleError, match=r"schema_version: expected 1, got 7"):
        PolicyRuntime.load(bundle, provider="cpu")


def test_manifest_size_disagreeing_with_the_graph(bundle):
    edit_manifest(bundle, lambda m: m.update(obs_dim=9))
    with pytest.raises(BundleError, match=r"observation has 8 features, manifest.yaml says 9"):
        PolicyRuntime.load(bundle, provider="cpu")


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest"):
        PolicyRuntime.load(tmp_path, provider="cpu")


def test_wrong_observation_size_and_dtype(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    with pytest.raises(ValueError, match=r"observation: expected shape \(8,\) or \(B, 8\), got \(9,\)"):
        rt.act(np.zeros(9, np.float32))
    with pytest.raises(ValueError, match=r"observation: expected a float array, got dtype int64"):
        rt.act(np.zeros(8, np.int64))
    with pytest.raises(ValueError, match=r"action: expected shape \(2,\) or \(B, 2\)"):
        rt.evaluate(np.zeros(8, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="mode: expected one of"):
        rt.act(np.zeros(8, np.float32), mode="greedy")


@pytest.mark.parametrize("mode", ["deterministic", "stochastic", "best_of_n"])
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_nan_or_inf_observation_never_gives_nan_action(vesde_bundle, mode, w):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    obs = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    obs[1, 3] = np.nan
    obs[2, 0] = np.inf
    res = rt.act(obs, mode=mode, guidance_scale=w, n=4, seed=0)
    assert res.valid.tolist() == [True, False, False, True]
    assert np.isfinite(res.action).all()
    np.testing.assert_array_equal(res.action[1], [0.0, 0.0])  # the centre of the action box
    assert not rt.act(np.full(8, np.nan, np.float32)).valid[0]


def test_stochastic_is_seeded(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    obs = np.zeros((3, 8), np.float32)
    a = rt.act(obs, mode="stochastic", seed=5).action
    assert np.array_equal(a, rt.act(obs, mode="stochastic", seed=5).action)
    assert not np.array_equal(a, rt.act(obs, mode="stochastic", seed=6).action)


def test_best_of_n_picks_the_lowest_energy_and_respects_the_budget(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    obs = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32) * 0.5
    res = rt.act(obs, mode="best_of_n", n=8, seed=11)
    # Rebuild the same candidates and check the choice.
    rt.rng = np.random.default_rng(11)
    cand = rt._chain(np.repeat(obs, 8, axis=0), True, rt.lagrange_multiplier, 0.0)
    ev = rt.evaluate(np.repeat(obs, 8, axis=0), cand)
    energy, risk = ev["energy"].reshape(3, 8), ev["qc_risk"].reshape(3, 8)
    np.testing.assert_allclose(res.energy, energy.min(1), rtol=1e-6)
    # No candidate fits an impossible budget: the safest one is taken and it says so.
    tight = rt.act(obs, mode="best_of_n", n=8, seed=11, remaining_budget=-1e9)
    assert not tight.fits_budget.any()
    np.testing.assert_allclose(tight.qc_risk, risk.min(1), rtol=1e-6)
    # A budget between the candidates' risks excludes the risky ones.
    budget = float(np.median(risk))
    mid = rt.act(obs, mode="best_of_n", n=8, seed=11, remaining_budget=budget)
    assert (mid.qc_risk[mid.fits_budget] <= budget).all()
    loose = rt.act(obs, mode="best_of_n", n=8, seed=11, remaining_budget=1e9)
    np.testing.assert_array_equal(loose.action, res.action)


def test_evaluate_matches_torch(vesde_bundle):
    rt = PolicyRuntime.load(vesde_bundle, provider="cpu")
    agent = agent_from_checkpoint(load_checkpoint(vesde_bundle.parent / "policy.pt"), with_optimizers=False)
    obs = np.random.default_rng(3).normal(size=(16, 8)).astype(np.float32)
    act = np.random.default_rng(4).uniform(-1, 1, (16, 2)).astype(np.float32)
    ev = rt.evaluate(obs, act)
    la, q, qc = agent.energy(torch.from_numpy(obs), torch.from_numpy(act))
    np.testing.assert_allclose(ev["q_min"], q.detach().numpy()[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ev["qc_risk"], qc.detach().numpy()[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ev["energy"], la.detach().numpy()[:, 0], rtol=1e-5, atol=1e-5)


def test_bound_io_path_gives_the_same_results(vesde_bundle):
    plain = PolicyRuntime.load(vesde_bundle, provider="cpu")
    bound = PolicyRuntime.load(vesde_bundle, provider="cpu", bind_io=True)
    obs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    for kw in ({}, {"guidance_scale": 0.3}, {"mode": "best_of_n", "n": 4, "seed": 1}):
        np.testing.assert_array_equal(plain.act(obs, **kw).action, bound.act(obs, **kw).action)
    first = bound.evaluate(obs, np.zeros((5, 2), np.float32))["q_min"].copy()
    bound.evaluate(obs * 2, np.ones((5, 2), np.float32))
    assert np.array_equal(first, bound.evaluate(obs, np.zeros((5, 2), np.float32))["q_min"])


def test_unavailable_or_unknown_provider(vesde_bundle):
    with pytest.raises(BundleError, match="provider: expected one of"):
        PolicyRuntime.load(vesde_bundle, provider="tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BundleError, match="CUDAExecutionProvider is not in this onnxruntime"):
            PolicyRuntime.load(vesde_bundle, provider="cuda")


def test_provider_order_on_a_machine_with_cuda_and_tensorrt(monkeypatch):
    """What `provider` resolves to where onnxruntime-gpu lists CUDA and TensorRT (no GPU here:
    the list is stood in for)."""
    import onnxruntime as ort

    from algd_runtime.deploy.sessions import resolve_providers

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


def test_the_cuda_path_captures_one_session_per_graph_and_batch_size(vesde_bundle, monkeypatch):
    """On CUDA each graph and batch size gets its own session with CUDA-graph capture, run
    through IO binding. The same code here, with ONNX Runtime's CPU provider standing in for
    CUDA (no GPU lent): which sessions are opened, with what, and that the answers match."""
    import onnxruntime as ort

    from algd_runtime.deploy import sessions

    plain = PolicyRuntime.load(vesde_bundle, provider="cpu")
    real = ort.InferenceSession
    opened = []

    def session(path, so, providers):
        opened.append((Path(path).name, providers))
        return real(path, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    bound_runner = sessions.BoundRunner
    monkeypatch.setattr(sessions, "BoundRunner", lambda s, feeds, device: bound_runner(s, feeds, "cpu"))
    rt = PolicyRuntime.load(vesde_bundle, provider="auto")
    assert rt.bind_io and rt.providers[0] == "CUDAExecutionProvider"
    loaded = len(opened)
    assert all(p == ["CUDAExecutionProvider", "CPUExecutionProvider"] for _, p in opened)
    obs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    for batch in (obs, obs[:1], obs):  # the third call reuses the first's captured session
        np.testing.assert_allclose(rt.act(batch).action, plain.act(batch).action, rtol=1e-6, atol=1e-6)
    captured = opened[loaded:]
    assert captured and all(p[0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}) for _, p in captured)
    names = [n for n, _ in captured]
    assert len(names) == 2 * len(set(names))  # one per graph and batch size (3 and 1), none again for the third


NO_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, Block())
import numpy as np
from algd_runtime.deploy.runtime import PolicyRuntime
rt = PolicyRuntime.load(sys.argv[1], provider="cpu")
res = rt.act(np.zeros(8, np.float32), mode="best_of_n", n=4, guidance_scale=0.2, seed=0)
assert res.valid.all() and np.isfinite(res.action).all()
print("acted", res.action.tolist(), "torch loaded:", "torch" in sys.modules)
"""


def test_runtime_loads_and_acts_where_torch_cannot_be_imported(vesde_bundle):
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(vesde_bundle)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "acted" in out.stdout and "torch loaded: False" in out.stdout
