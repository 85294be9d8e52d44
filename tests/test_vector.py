"""Copies of a task through gymnasium's vector API: reproducible, cost carried, resumable."""

import functools

import numpy as np

from algd_runtime.sim import make_task
from algd_runtime.sim.vector import GymTask, copy_seed, make_vector_task

MAKE = functools.partial(make_task, "PointHazard-v0", seed=0)


def run(vec, steps=60):
    rng = np.random.default_rng(0)
    obs, _ = vec.reset()
    trace = [obs]
    costs = []
    for _ in range(steps):
        obs, reward, term, trunc, info = vec.step(rng.uniform(-1, 1, (vec.num_envs, 2)).astype(np.float32))
        trace.append(obs)
        costs.append(info["cost"])
    return np.array(trace), np.array(costs)


def test_copies_are_reproducible_distinct_and_the_same_sync_or_async():
    sync = make_vector_task(MAKE, 2, run_seed=5, asynchronous=False)
    again = make_vector_task(MAKE, 2, run_seed=5, asynchronous=False)
    procs = make_vector_task(MAKE, 2, run_seed=5, asynchronous=True)
    try:
        (a, ca), (b, cb), (c, cc) = run(sync), run(again), run(procs)
    finally:
        for v in (sync, again, procs):
            v.close()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_allclose(ca, cc)
    assert not np.allclose(a[:, 0], a[:, 1]), "the two copies start from different seeds"
    assert ca.shape == (60, 2) and np.isfinite(ca).all()
    assert copy_seed(5, 0, 0) != copy_seed(5, 1, 0) != copy_seed(5, 0, 1)


def test_episode_state_rebuilds_the_episode_in_progress():
    rng = np.random.default_rng(1)
    first = GymTask(MAKE, run_seed=3, index=1)
    first.reset()
    for _ in range(25):
        first.step(rng.uniform(-1, 1, 2).astype(np.float32))
    state = first.episode_state
    second = GymTask(MAKE, run_seed=3, index=1)
    second.episode_state = state
    action = np.array([0.3, -0.2], np.float32)
    np.testing.assert_array_equal(first.step(action)[0], second.step(action)[0])
    assert second.episodes == first.episodes == 1
