"""Shared fixtures: small trained policies and their exported bundles.

DDS discovery stays on this machine in every test, whoever runs pytest. The tests' nodes
(and the processes they start) use a private operator key and bundle signing key, and keep
their latches in a private state folder, never the user's."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
_private = tempfile.mkdtemp(prefix="algd-tests-")
atexit.register(shutil.rmtree, _private, ignore_errors=True)  # the key and latches go with the session
os.environ["XDG_STATE_HOME"] = os.path.join(_private, "state")
os.environ["ALGD_OPERATOR_KEY"] = os.path.join(_private, "operator.key")
# The bundle signing pair (algd-export signs, the nodes trust its .pub): the session's own.
os.environ["ALGD_SIGNING_KEY"] = os.path.join(_private, "bundle_signing.key")
os.environ["ALGD_BUNDLE_PUBLIC_KEY"] = os.path.join(_private, "bundle_signing.pub")
from algd_runtime.contract.keys import create_key  # noqa: E402

create_key(os.environ["ALGD_OPERATOR_KEY"])

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from algd_runtime.learn.algd import ALGDAgent  # noqa: E402
from algd_runtime.learn.checkpoint import save_checkpoint  # noqa: E402
from algd_runtime.learn.config import AlgoConfig, TrainConfig  # noqa: E402
from algd_runtime.sim import make_task  # noqa: E402


def small_policy(path, variant="vesde", updates=20, seed=0, **algo):
    """A PointHazard policy with small networks, nudged by a few updates on random data so
    its weights are not the initial ones."""
    torch.manual_seed(seed)
    spec = make_task("PointHazard-v0").task_spec
    cfg = AlgoConfig(**{"variant": variant, "score_hidden": 32, "critic_hidden": 32, "batch_size": 32, **algo})
    agent = ALGDAgent(spec, cfg)
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        agent.update({"obs": rng.normal(size=(32, 8)).astype(np.float32),
                      "action": rng.uniform(-1, 1, (32, 2)).astype(np.float32),
                      "reward": rng.normal(size=32).astype(np.float32),
                      "cost": (rng.random(32) < 0.3).astype(np.float32),
                      "next_obs": rng.normal(size=(32, 8)).astype(np.float32), "done": np.zeros(32, np.float32)})
    with torch.no_grad():
        agent.log_lambda.fill_(float(np.log(1.5)))  # a multiplier large enough to make the penalty active
    save_checkpoint(path, agent, TrainConfig(task=spec.name, algo=cfg).to_dict())
    return agent


@pytest.fixture(scope="session")
def vesde_bundle(tmp_path_factory):
    from algd_runtime.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("vesde")
    small_policy(root / "policy.pt", "vesde")
    export_bundle(root / "policy.pt", root / "bundle")
    return root / "bundle"
