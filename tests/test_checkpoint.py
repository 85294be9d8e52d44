"""policy.pt: round trip, clear errors, and atomic writes that a crash cannot tear."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import (CheckpointError, agent_from_checkpoint, load_checkpoint,
                                     save_checkpoint)
from algd_runtime.learn.config import AlgoConfig, TrainConfig
from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.sim.spec import TaskSpec

SPEC = TaskSpec(name="PointHazard-v0", obs_dim=8, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0),
                episode_length=200, cost_limit=5.0)


def trained_agent(variant="vesde") -> ALGDAgent:
    torch.manual_seed(0)
    algo = AlgoConfig(variant=variant, score_hidden=16, critic_hidden=16, batch_size=8)
    agent = ALGDAgent(SPEC, algo)
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(8, 8)).astype(np.float32), "action": rng.uniform(-1, 1, (8, 2)).astype(np.float32),
             "reward": np.ones(8, np.float32), "cost": np.ones(8, np.float32),
             "next_obs": rng.normal(size=(8, 8)).astype(np.float32), "done": np.zeros(8, np.float32)}
    for _ in range(3):
        agent.update(batch)
    return agent


def config_for(agent):
    return TrainConfig(task=SPEC.name, algo=agent.cfg).to_dict()


@pytest.mark.parametrize("variant", ["vesde", "ddpm"])
def test_round_trip_restores_networks_optimisers_and_lambda(tmp_path, variant):
    agent = trained_agent(variant)
    path = save_checkpoint(tmp_path / "policy.pt", agent, config_for(agent), {"env_steps": 5})
    ckpt = load_checkpoint(path)
    back = agent_from_checkpoint(ckpt)
    assert back.lam == pytest.approx(agent.lam) and back.grad_steps == agent.grad_steps == 3
    for name, module in agent.networks().items():
        for (k, a), (_, b) in zip(module.state_dict().items(), back.networks()[name].state_dict().items()):
            assert torch.equal(a, b), f"{name}.{k}"
    for name, opt in agent.optimizers().items():
        s1, s2 = opt.state_dict()["state"], back.optimizers()[name].state_dict()["state"]
        assert s1.keys() == s2.keys() and all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    obs = np.linspace(-1, 1, 8).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), back.act(obs, deterministic=True))
    assert ckpt["train_state"] == {"env_steps": 5} and ckpt["task_spec"]["cost_limit"] == 5.0


def test_wrong_schema_version_and_foreign_and_torn_files(tmp_path):
    agent = trained_agent()
    path = save_checkpoint(tmp_path / "policy.pt", agent, config_for(agent))
    ckpt = torch.load(path, weights_only=True)
    ckpt["schema_version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"schema_version: expected 1, got 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"schema: expected 'algd-runtime/policy'"):
        load_checkpoint(tmp_path / "foreign.pt")
    data = path.read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a policy.pt written by algd-train"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(CheckpointError, match="no such policy file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_write_cut_off_midway_leaves_previous_file_intact(tmp_path, monkeypatch):
    agent = trained_agent()
    path = save_checkpoint(tmp_path / "policy.pt", agent, config_for(agent))
    before = path.read_bytes()

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, agent, config_for(agent))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["policy.pt"]  # the temp file is gone
    load_checkpoint(path)


WRITER = """
import sys, torch
from algd_runtime.contract.atomic import atomic_write
path, marker = sys.argv[1], sys.argv[2]
big = {"blob": torch.arange(20_000_000, dtype=torch.float32)}
open(marker, "w").close()
while True:
    with atomic_write(path) as f:
        torch.save(big, f)
"""


def test_process_killed_while_writing_leaves_a_loadable_file(tmp_path):
    """SIGKILL in the middle of (80 MB) writes: the target is always the old or new whole file."""
    path = tmp_path / "policy.pt"
    agent = trained_agent()
    save_checkpoint(path, agent, config_for(agent))
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(marker)])
    try:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        # Kill while a temp file is being written (not just between writes).
        while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    obj = torch.load(path, weights_only=True)  # either our checkpoint or a whole blob file
    assert ("schema" in obj) or obj["blob"].numel() == 20_000_000


def test_replay_round_trip(tmp_path):
    buf = ReplayBuffer(10, 3, 2)
    rng = np.random.default_rng(0)
    for i in range(13):  # wraps around
        buf.add(rng.normal(size=3), rng.normal(size=2), float(i), float(i % 2), rng.normal(size=3), i == 12)
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    assert (back.size, back.pos, back.capacity) == (10, 3, 10)
    for name in ("obs", "action", "reward", "cost", "next_obs", "done"):
        np.testing.assert_array_equal(getattr(back, name), getattr(buf, name))
    s1 = buf.sample(4, np.random.default_rng(1))
    s2 = back.sample(4, np.random.default_rng(1))
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
