"""Preallocated replay buffer (numpy), saved to and restored from its own .npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from algd_runtime.contract.atomic import atomic_write

_FIELDS = ("obs", "action", "reward", "cost", "next_obs", "done")


class ReplayBuffer:
    """A ring buffer of transitions. `done` is 1.0 only for a true termination (not a time
    limit), so TD targets keep bootstrapping through truncations."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity, self.obs_dim, self.act_dim = int(capacity), obs_dim, act_dim
        self.obs = np.zeros((self.capacity, obs_dim), np.float32)
        self.action = np.zeros((self.capacity, act_dim), np.float32)
        self.reward = np.zeros((self.capacity,), np.float32)
        self.cost = np.zeros((self.capacity,), np.float32)
        self.next_obs = np.zeros((self.capacity, obs_dim), np.float32)
        self.done = np.zeros((self.capacity,), np.float32)
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, cost: float, next_obs, done: bool) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.next_obs[i] = obs, action, next_obs
        self.reward[i], self.cost[i], self.done[i] = reward, cost, float(done)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, size=batch)
        return {name: getattr(self, name)[idx] for name in _FIELDS}

    def save(self, path: str | Path) -> None:
        """Write only the filled part, atomically."""
        n = self.size
        arrays = {name: getattr(self, name)[:n] for name in _FIELDS}
        meta = np.array([self.capacity, self.obs_dim, self.act_dim, self.size, self.pos], np.int64)
        with atomic_write(path) as f:
            np.savez(f, meta=meta, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "ReplayBuffer":
        with np.load(path) as data:
            capacity, obs_dim, act_dim, size, pos = (int(v) for v in data["meta"])
            buf = cls(capacity, obs_dim, act_dim)
            for name in _FIELDS:
                getattr(buf, name)[:size] = data[name]
        buf.size, buf.pos = size, pos
        return buf
