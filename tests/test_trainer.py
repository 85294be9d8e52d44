"""The training loop: exact resume, logs, Ctrl-C."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from algd_runtime.learn.checkpoint import load_checkpoint
from algd_runtime.learn.config import config_from_dict
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.learn.trainer import Trainer

TINY = {
    "task": "PointHazard-v0", "seed": 3, "warmup_steps": 100, "min_replay": 64, "updates_per_step": 1,
    "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 0, "log_every": 100, "num_threads": 1,
    "algo": {"score_hidden": 16, "critic_hidden": 16, "batch_size": 32},
}


def run(run_dir, steps, resume=False):
    cfg = config_from_dict({**TINY, "total_steps": steps})
    trainer = Trainer(cfg, run_dir, resume=resume, progress=False, echo=lambda m: None)
    summary = trainer.run()
    return trainer, summary


def test_resume_mid_episode_reproduces_the_uninterrupted_run_exactly(tmp_path):
    # 330 is mid-episode (episodes last up to 200 steps): the resume must rebuild it.
    straight, _ = run(tmp_path / "straight", 600)
    first, _ = run(tmp_path / "split", 330)
    assert first.collector.episode.actions, "the checkpoint should fall inside an episode"
    resumed, summary = run(tmp_path / "split", 600, resume=True)
    assert summary["env_steps"] == 600 and resumed.agent.grad_steps == straight.agent.grad_steps
    for name, module in straight.agent.networks().items():
        for (k, a), b in zip(module.state_dict().items(), resumed.agent.networks()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} differs after resume"
    assert straight.agent.lam == resumed.agent.lam
    np.testing.assert_array_equal(straight.replay.obs[:600], resumed.replay.obs[:600])
    # And the files say the same: policy.pt names a replay file with all 600 transitions.
    ckpt = load_checkpoint(tmp_path / "split" / "policy.pt")
    assert ckpt["train_state"]["env_steps"] == 600
    assert ReplayBuffer.load(tmp_path / "split" / ckpt["replay_file"]).size == 600
    assert len(list((tmp_path / "split").glob("replay-*.npz"))) == 1


def test_a_cuda_machine_s_random_state_is_saved_and_restored(tmp_path, monkeypatch):
    """The checkpoint's CUDA RNG branch, with torch.cuda stood in for (no GPU lent)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.arange(4, dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    cfg = config_from_dict({**TINY, "total_steps": 150})  # device cpu: only the RNG branch is CUDA's
    Trainer(cfg, tmp_path, progress=False, echo=lambda m: None).run()
    assert torch.equal(load_checkpoint(tmp_path / "policy.pt")["train_state"]["cuda_rng"][0], torch.arange(4))
    Trainer(config_from_dict({**TINY, "total_steps": 200}), tmp_path, resume=True, progress=False, echo=lambda m: None)
    assert len(restored) == 1 and torch.equal(restored[0][0], torch.arange(4, dtype=torch.uint8))


def test_logs_are_written_and_trimmed_on_resume(tmp_path):
    run(tmp_path, 300)
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert [int(r["step"]) for r in rows] == [100, 200, 300]
    assert all(float(r["critic_loss"]) >= 0 for r in rows[1:])
    evals = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert [int(e["step"]) for e in evals] == [300] and float(evals[0]["cost_limit"]) == 5.0
    assert (tmp_path / "tb").is_dir()
    # Rows from after the checkpoint (a run that died before saving) are dropped on resume.
    with open(tmp_path / "train.csv", "a") as f:
        f.write("900,1.0\n")
    run(tmp_path, 400, resume=True)
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert [int(r["step"]) for r in rows] == [100, 200, 300, 400]


def test_ctrl_c_saves_and_exits_cleanly_then_resumes(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "algd_runtime.cli", "train", "--config", "configs/smoke.yaml",
           "--steps", "100000", "--out", str(tmp_path), "--no-progress"]
    root = Path(__file__).parent.parent
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_csv = tmp_path / "PointHazard-v0-seed0" / "train.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not train_csv.exists() or len(train_csv.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted at step" in out
    ckpt = load_checkpoint(tmp_path / "PointHazard-v0-seed0" / "policy.pt")
    steps = ckpt["train_state"]["env_steps"]
    assert 500 < steps < 100000  # past the warm-up, far from the end
    out = subprocess.run(cmd[:-3] + ["--steps", str(steps + 50), "--out", str(tmp_path), "--no-progress", "--resume"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed from" in out.stdout and load_checkpoint(tmp_path / "PointHazard-v0-seed0" / "policy.pt")["train_state"]["env_steps"] == steps + 50


@pytest.mark.parametrize("task", ["SafetyPointGoal1-v0", "SafetyHopperVelocity-v1"])
def test_safety_gymnasium_tasks_train_and_resume_exactly(tmp_path, task):
    """Real Safety-Gymnasium through the trainer: a navigation task (cost mask forced to 1,
    per-episode budget) and a velocity task (discounted budget, terminations)."""
    cfg = {**TINY, "task": task, "warmup_steps": 60, "min_replay": 32, "log_every": 50}

    def go(run_dir, steps, resume=False):
        t = Trainer(config_from_dict({**cfg, "total_steps": steps}), run_dir, resume=resume, progress=False,
                    echo=lambda m: None)
        return t, t.run()

    straight, summary = go(tmp_path / "a", 140)
    assert summary["eval"] is not None and np.isfinite(summary["eval"].return_mean)
    assert straight.agent.spec.cost_mask_always_one == (task == "SafetyPointGoal1-v0")
    go(tmp_path / "b", 90)
    resumed, _ = go(tmp_path / "b", 140, resume=True)
    for (k, a), b in zip(straight.agent.policy.state_dict().items(), resumed.agent.policy.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("vector_envs", ["sync", "async"])
def test_copies_of_the_task_train_and_resume_exactly(tmp_path, vector_envs):
    """num_envs: 2 (in this process, or two worker processes; one batched policy call per
    step) stops mid-episode and resumes to the same parameters as the uninterrupted run."""
    def run2(run_dir, steps, resume=False):
        cfg = config_from_dict({**TINY, "total_steps": steps, "num_envs": 2, "vector_envs": vector_envs})
        trainer = Trainer(cfg, run_dir, resume=resume, progress=False, echo=lambda m: None)
        return trainer, trainer.run()

    straight, summary = run2(tmp_path / "straight", 400)
    assert summary["env_steps"] == 400 and straight.replay.size == 400
    first, _ = run2(tmp_path / "split", 210)
    assert any(ep.actions for ep in first.collector.running), "the checkpoint should fall inside an episode"
    resumed, _ = run2(tmp_path / "split", 400, resume=True)
    assert resumed.agent.grad_steps == straight.agent.grad_steps > 0
    for p, q in zip(straight.agent.policy.parameters(), resumed.agent.policy.parameters()):
        assert torch.equal(p, q)
    rows = list(csv.DictReader((tmp_path / "straight" / "episodes.csv").open()))
    assert rows, "episodes of both copies are logged"


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_folder_is_never_trained_over_without_resume_or_force(tmp_path):
    """Issue 20: training into a finished run started from step 0, overwrote policy.pt and
    emptied progress.csv."""
    run(tmp_path / "r", 200)
    before = _tree(tmp_path)
    cfg = config_from_dict({**TINY, "total_steps": 300, "algo": {**TINY["algo"], "variant": "ddpm"}})
    with pytest.raises(ValueError, match=r"holds a finished or interrupted run \(.*policy.pt.*\); continue it with "
                                         r"--resume, or start over with --force \(nothing was changed\)"):
        Trainer(cfg, tmp_path / "r", progress=False, echo=lambda m: None)
    # --resume with another config: refused, the changed keys listed
    with pytest.raises(ValueError, match=r"--resume: the config differs from the run's .*algo.variant \(run: 'vesde', "
                                         r"given: 'ddpm'\)"):
        Trainer(cfg, tmp_path / "r", resume=True, progress=False, echo=lambda m: None)
    assert _tree(tmp_path) == before
    # ... except what a resume may change, which it applies and says
    said = []
    t = Trainer(config_from_dict({**TINY, "total_steps": 300}), tmp_path / "r", resume=True, progress=False,
                echo=said.append)
    assert t.cfg.total_steps == 300 and "resume: total_steps 200 -> 300" in said
    # --force starts over: the run's own files go, nothing else
    (tmp_path / "r" / "notes.txt").write_text("mine")
    said.clear()
    t = Trainer(cfg, tmp_path / "r", force=True, progress=False, echo=said.append)
    assert t.env_steps == 0 and not (tmp_path / "r" / "policy.pt").exists()
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine" and any("--force: removed" in m for m in said)


def test_a_refused_run_leaves_no_folder_and_a_file_is_no_run_folder(tmp_path):
    cfg = config_from_dict({**TINY, "total_steps": 100, "device": "cuda"})
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="device: 'cuda' was asked for"):
        Trainer(cfg, tmp_path / "new", progress=False, echo=lambda m: None)
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"--out: .*f is a file; expected a folder for the run"):
        Trainer(config_from_dict({**TINY, "total_steps": 100}), tmp_path / "f", progress=False, echo=lambda m: None)
