"""Integrity of what we deploy: the bundle digest, field-by-field manifest validation,
non-finite weights, the policy.pt checksum, actions inside the box, clean exports."""

import hashlib
import math
import os
import shutil
import time

import numpy as np
import onnx
import pytest
import torch
import yaml

from algd_runtime.learn.checkpoint import (CheckpointError, agent_from_checkpoint, load_checkpoint,
                                     payload_checksum, save_checkpoint)
from algd_runtime.cli import eval_main
from algd_runtime.export import exporter
from algd_runtime.export.exporter import ExportError, build_critics, build_denoiser, export_bundle
from algd_runtime.contract.bundle import BundleError, bundle_digest, sha256_file, validate_manifest
from algd_runtime.deploy.runtime import PolicyRuntime
from algd_runtime.sim import make_task
from algd_runtime.sim.spec import TaskSpec

from conftest import small_policy


@pytest.fixture
def bundle(vesde_bundle, tmp_path):
    """A private copy that a test may damage."""
    return shutil.copytree(vesde_bundle, tmp_path / "bundle")


def load(bundle, **kw):
    return PolicyRuntime.load(bundle, provider="cpu", **kw)


def reseal(bundle):
    """Rewrite manifest.sha256 as the exporter does (what someone editing on purpose would do)."""
    (bundle / "manifest.sha256").write_text(f"{sha256_file(bundle / 'manifest.yaml')}  manifest.yaml\n")


def edit(bundle, fn, seal=False):
    path = bundle / "manifest.yaml"
    m = yaml.safe_load(path.read_text())
    fn(m)
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    if seal:
        reseal(bundle)


DIGEST_MISMATCH = r"manifest.yaml: sha256 .* does not match manifest.sha256's .* \(edited after export\?\)"


# -- the digest ------------------------------------------------------------------------------
def test_digest_is_the_manifest_hash_in_sha256sum_format(vesde_bundle):
    digest = hashlib.sha256((vesde_bundle / "manifest.yaml").read_bytes()).hexdigest()
    assert (vesde_bundle / "manifest.sha256").read_text() == f"{digest}  manifest.yaml\n"
    assert bundle_digest(vesde_bundle) == digest and load(vesde_bundle).digest == digest
    assert sorted(p.name for p in vesde_bundle.iterdir()) == [
        "critics.onnx", "denoiser.onnx", "denoiser_unguided.onnx", "manifest.sha256", "manifest.yaml",
        "signature.json"]  # signature.json signs the digest: the one file the manifest does not list


def test_hand_edited_cost_limit_is_refused(bundle):
    text = (bundle / "manifest.yaml").read_text()
    assert "cost_limit: 5.0\n" in text
    (bundle / "manifest.yaml").write_text(text.replace("cost_limit: 5.0\n", "cost_limit: 500.0\n"))
    with pytest.raises(BundleError, match=DIGEST_MISMATCH):
        load(bundle)


def test_edited_act_high_is_refused(bundle):
    edit(bundle, lambda m: m.update(act_high=[2.0, 2.0]))
    with pytest.raises(BundleError, match=DIGEST_MISMATCH):
        load(bundle)


def test_edited_task_is_refused_by_the_digest_even_when_resealed(bundle):
    pinned = bundle_digest(bundle)
    edit(bundle, lambda m: m.update(task="SafetyPointGoal1-v0"))
    with pytest.raises(BundleError, match=DIGEST_MISMATCH):
        load(bundle)
    reseal(bundle)  # manifest.sha256 rewritten too: only the pinned digest still tells
    with pytest.raises(BundleError, match=rf"digest: expected {pinned}, got [0-9a-f]{{64}}"):
        load(bundle, expect_digest=pinned)


def test_missing_digest_file_is_refused(bundle):
    (bundle / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match=r"manifest.sha256: missing"):
        load(bundle)


@pytest.mark.parametrize("name", ["notes.txt", ".hidden", "policy.onnx"])
def test_stray_file_is_refused_by_name(bundle, name):
    (bundle / name).write_text("x")
    with pytest.raises(BundleError, match=rf"{name}: not part of the bundle"):
        load(bundle)


def test_expectations_task_dims_digest(vesde_bundle):
    digest = bundle_digest(vesde_bundle)
    rt = load(vesde_bundle, expect_digest=digest, expect_task="PointHazard-v0", expect_dims=(8, 2))
    assert rt.digest == digest
    with pytest.raises(BundleError, match=r"task: the bundle is for PointHazard-v0, expected SafetyPointGoal1-v0"):
        load(vesde_bundle, expect_task="SafetyPointGoal1-v0")
    with pytest.raises(BundleError, match=r"obs_dim/act_dim: the bundle has 8/2, expected 60/2"):
        load(vesde_bundle, expect_dims=(60, 2))
    with pytest.raises(BundleError, match=rf"digest: expected {'0' * 64}, got {digest}"):
        load(vesde_bundle, expect_digest="0" * 64)


# -- field-by-field validation (the digest is resealed, so the validation itself is tested) --
def _set(path, value):
    def fn(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value
    return fn


@pytest.mark.parametrize("path,value,match", [
    ("budget.cost_limit", 0.0, r"budget.cost_limit: expected a finite number > 0, got 0.0"),
    ("budget.cost_limit", math.inf, r"budget.cost_limit: expected a finite number > 0, got inf"),
    ("budget.semantics", "weekly", r"budget.semantics: expected 'episode' or 'discounted', got 'weekly'"),
    ("budget.max_step_cost", -1.0, r"budget.max_step_cost: expected a finite number > 0 or null, got -1.0"),
    ("act_low", [1.0, -1.0], r"act_low\[0\]: expected below act_high\[0\] = 1.0, got 1.0"),
    ("act_high", [1.0, 1.0, 1.0], r"act_high: expected a list of 2 finite numbers"),
    ("act_low", [-1.0, math.nan], r"act_low: expected a list of 2 finite numbers"),
    ("obs_dim", 0, r"obs_dim: expected an integer > 0, got 0"),
    ("act_dim", 2.5, r"act_dim: expected an integer > 0, got 2.5"),
    ("lagrange_multiplier", -0.5, r"lagrange_multiplier: expected a finite number >= 0, got -0.5"),
    ("exchange_rate", 0.0, r"exchange_rate: expected a finite number > 0 or null, got 0.0"),
    ("schedule.steps", 0, r"schedule.steps: expected an integer > 0, got 0"),
    ("schedule.initial_std", math.nan, r"schedule.initial_std: expected a finite number > 0, got nan"),
    ("task", "", r"task: expected a non-empty string, got ''"),
    ("parity.max_abs_error.critics_grad", 0.5, r"parity.max_abs_error.critics_grad: expected a finite number <= 0.0001"),
    ("parity.max_abs_error.deterministic_guided", math.nan, r"parity.max_abs_error.deterministic_guided"),
])
def test_manifest_field_validation(bundle, path, value, match):
    edit(bundle, _set(path, value), seal=True)
    with pytest.raises(BundleError, match=r"manifest.yaml: " + match):
        load(bundle)
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    with pytest.raises(BundleError, match=match):
        validate_manifest(m)


def test_max_step_cost_reaches_the_manifest_and_old_specs_still_load(vesde_bundle):
    assert make_task("PointHazard-v0").task_spec.max_step_cost == 1.0
    m = yaml.safe_load((vesde_bundle / "manifest.yaml").read_text())
    assert m["budget"]["max_step_cost"] == 1.0
    old = make_task("PointHazard-v0").task_spec.to_dict()
    del old["max_step_cost"]
    assert TaskSpec.from_dict(old).max_step_cost is None
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_step_cost: expected None or a finite value > 0"):
            TaskSpec.from_dict({**old, "max_step_cost": bad})


# -- non-finite weights --------------------------------------------------------------------------
def poison(module, n=3):
    """Make n values of the module's first parameter non-finite; return that parameter's name."""
    name, param = next(iter(module.named_parameters()))
    with torch.no_grad():
        flat = param.view(-1)
        flat[:n] = torch.tensor([math.nan, math.inf, -math.inf][:n])
    return name


def nan_policy(tmp_path):
    agent = small_policy(tmp_path / "policy.pt", updates=2)
    name = poison(agent.policy)
    cfg = load_checkpoint(tmp_path / "policy.pt")["config"]
    save_checkpoint(tmp_path / "policy.pt", agent, cfg)  # a well-formed file whose weights went NaN
    return tmp_path / "policy.pt", f"agent.policy.{name}"


def test_nan_checkpoint_refused_by_agent_eval_and_export(tmp_path, capsys):
    path, tensor = nan_policy(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{tensor}: 3 non-finite values"):
        agent_from_checkpoint(load_checkpoint(path))
    assert eval_main([str(path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tensor}: 3 non-finite values"), err
    with pytest.raises(CheckpointError, match=rf"{tensor}: 3 non-finite values"):
        export_bundle(path, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_non_finite_parity(tmp_path, monkeypatch):
    """Past the checkpoint check (as with a NaN only the graphs produce): NaN > tol is False."""
    small_policy(tmp_path / "policy.pt", updates=2)
    real = exporter.agent_from_checkpoint

    def poisoned(*a, **k):
        agent = real(*a, **k)
        poison(agent.policy)
        return agent

    monkeypatch.setattr(exporter, "agent_from_checkpoint", poisoned)
    with pytest.raises(ExportError, match=r"parity: non-finite error .*nan.*bundle not written"):
        export_bundle(tmp_path / "policy.pt", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt"]


@pytest.mark.parametrize("network,graph", [("policy", "denoiser_unguided"), ("cost_critics", "denoiser")])
def test_bundle_with_nan_weights_is_refused_at_load(bundle, vesde_bundle, network, graph):
    agent = agent_from_checkpoint(load_checkpoint(vesde_bundle.parent / "policy.pt"), with_optimizers=False)
    poison(getattr(agent, network))
    models = {"denoiser": build_denoiser(agent, True), "denoiser_unguided": build_denoiser(agent, False),
              "critics": build_critics(agent)}

    def update(m):
        for key, model in models.items():
            f = bundle / m["files"][key]["path"]
            onnx.save(model, f)
            m["files"][key].update(sha256=sha256_file(f), bytes=f.stat().st_size)

    edit(bundle, update, seal=True)  # every hash is right: only running the graphs can tell
    with pytest.raises(BundleError, match=rf"{graph}.onnx: non-finite output on a probe input \(non-finite weights\?\)"):
        load(bundle)


# -- policy.pt checksum ----------------------------------------------------------------------------
def test_policy_edited_after_writing_is_refused(tmp_path):
    small_policy(tmp_path / "policy.pt", updates=2)
    ckpt = torch.load(tmp_path / "policy.pt", weights_only=True)
    assert len(ckpt["checksum"]) == 64
    w = ckpt["agent"]["networks"]["policy"]
    key = next(k for k, v in w.items() if v.is_floating_point())
    w[key].view(-1)[0] += 0.5
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited.pt: checksum mismatch: the file was modified after it was written"):
        load_checkpoint(tmp_path / "edited.pt")
    del ckpt["checksum"]  # a file from before checksums: loads, unverified
    torch.save(ckpt, tmp_path / "old.pt")
    agent_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))


def test_checksum_sees_every_kind_of_value():
    base = {"b": torch.zeros(3, dtype=torch.bool), "h": torch.zeros(2, dtype=torch.bfloat16),
            "s": torch.tensor(1.0), "n": np.zeros(2), "x": [1, 2.0, "3", None, True], "t": (1,)}
    ref = payload_checksum(base)
    assert payload_checksum(dict(reversed(base.items()))) == ref  # key order does not matter
    changes = [("b", torch.tensor([False, True, False])), ("h", torch.tensor([0.0, 1.0], dtype=torch.bfloat16)),
               ("s", torch.tensor(1.5)), ("s", torch.tensor(1.0, dtype=torch.float64)), ("n", np.ones(2)),
               ("x", [1, 2.0, "3", None, False]), ("x", [1, 2, "3", None, True]), ("t", (1, 1))]
    for key, value in changes:
        assert payload_checksum({**base, key: value}) != ref, key


# -- actions inside the box --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["deterministic", "stochastic", "best_of_n"])
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_actions_never_leave_the_box(vesde_bundle, mode, w):
    rt = load(vesde_bundle)
    # Large observations saturate tanh, where float32 tanh * scale + bias overshoots by ~1e-7.
    obs = (np.random.default_rng(0).normal(size=(2000, 8)) * 100).astype(np.float32)
    a = rt.act(obs, mode=mode, guidance_scale=w, n=4, seed=0).action
    assert np.all(a >= rt.act_low) and np.all(a <= rt.act_high), (a.min(0), a.max(0))


# -- clean exports --------------------------------------------------------------------------------------
def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    small_policy(tmp_path / "policy.pt", updates=2)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(tmp_path / "policy.pt", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt"]


def test_export_modes_and_stale_temp_folders(tmp_path):
    small_policy(tmp_path / "policy.pt", updates=2)
    stale, fresh, other = tmp_path / ".bundle.k1LLed00", tmp_path / ".bundle.inprog00", tmp_path / ".bundle.v2.abc"
    for d in (stale, fresh, other):
        d.mkdir()
        (d / "denoiser.onnx").write_bytes(b"half")
    old = time.time() - 3600
    for d in (stale, other):
        os.utime(d, (old, old))
    umask = os.umask(0o077)  # the modes must not depend on the exporting user's umask
    try:
        export_bundle(tmp_path / "policy.pt", tmp_path / "bundle")
    finally:
        os.umask(umask)
    out = tmp_path / "bundle"
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        n: 0o644 for n in ("critics.onnx", "denoiser.onnx", "denoiser_unguided.onnx", "manifest.sha256",
                           "manifest.yaml", "signature.json")}
    assert not stale.exists() and fresh.exists() and other.exists()  # only ours, and only old ones
    load(out)
