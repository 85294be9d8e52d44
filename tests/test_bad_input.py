"""Every command says what is wrong with bad input, and touches nothing (issue 20, item 3).

One table over the CLIs: each case runs the command as a user would, in a tree that holds a
user's work (a finished run, its policy and signed bundle, notes, a file, configs), and
shows the exit code, the error line (naming the field and what was expected), no
traceback, and that no file in the tree changed: the checksums of every file under it,
before and after, are equal, and no file or folder appeared or vanished."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from algd_runtime.contract.keys import create_key

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory, vesde_bundle):
    """A user's work: a finished run (runs/PointHazard-v0-seed1), a policy with its signed
    bundle, a bundle edited after signing, notes, a plain file, a torch file that is not a
    policy, configs with a key twice, an operator key, and a stand-in for a missing mujoco."""
    import torch

    root = tmp_path_factory.mktemp("work")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    done = subprocess.run([str(BIN / "algd-train"), "--task", "PointHazard-v0", "--steps", "200", "--seed", "1",
                           "--out", str(root / "runs"), "--no-progress"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copytree(vesde_bundle.parent, root / "pol", ignore=shutil.ignore_patterns("*.tmp"))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("my notes\n")
    (root / "afile.txt").write_text("a file\n")
    torch.save({"weights": [1, 2, 3]}, root / "notpolicy.pt")
    (root / "dup.yaml").write_text("task: PointHazard-v0\nseed: 1\nseed: 2\n")
    params = (ROOT / "launch" / "controller.yaml").read_text()
    (root / "dup_params.yaml").write_text(params.replace("    control_rate_hz: 500.0\n",
                                                         "    control_rate_hz: 500.0\n    control_rate_hz: 100.0\n", 1))
    edited = shutil.copytree(root / "pol" / "bundle", root / "edited")
    manifest = yaml.safe_load((edited / "manifest.yaml").read_text())
    manifest["budget"]["cost_limit"] = 50.0
    (edited / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    digest = hashlib.sha256((edited / "manifest.yaml").read_bytes()).hexdigest()
    (edited / "manifest.sha256").write_text(f"{digest}  manifest.yaml\n")
    create_key(root / "op.key")
    (root / "fake").mkdir()  # a robot-side install: the sim's modules are missing
    (root / "fake" / "mujoco.py").write_text("raise ImportError(\"No module named 'mujoco'\")\n")
    return root


RUN = "runs/PointHazard-v0-seed1"
# (id, command and arguments, exit code, what the error line must say, extra environment)
CASES = [
    ("export -o a folder of notes", ["algd-export", "pol/policy.pt", "-o", "notes"], 2,
     "-o: notes is not empty and holds no bundle", {}),
    ("export -o a bundle without --force", ["algd-export", "pol/policy.pt", "-o", "pol/bundle"], 2,
     "holds a bundle already; add --force to replace it (nothing was written)", {}),
    ("export -o the run folder", ["algd-export", f"{RUN}/policy.pt", "-o", RUN], 2,
     "holds the policy being exported", {}),
    ("export -o a file", ["algd-export", "pol/policy.pt", "-o", "afile.txt"], 2, "-o: afile.txt is a file", {}),
    ("export a bundle folder", ["algd-export", "pol/bundle"], 2, "a bundle: give the policy.pt", {}),
    ("export a torch file that is not a policy", ["algd-export", "notpolicy.pt", "-o", "new"], 2,
     "schema: expected 'algd-runtime/policy'", {}),
    ("eval a torch file that is not a policy", ["algd-eval", "notpolicy.pt"], 2,
     "schema: expected 'algd-runtime/policy'", {}),
    ("train into a finished run", ["algd-train", "--task", "PointHazard-v0", "--seed", "1", "--out", "runs",
                                   "--steps", "300"], 2, "with --resume, or start over with --force", {}),
    ("train --resume with another config", ["algd-train", "--task", "PointHazard-v0", "--seed", "1", "--out", "runs",
                                            "--resume", "--config", "configs_smoke.yaml"], 2,
     "--resume: the config differs from the run's", {}),
    ("train --out a file", ["algd-train", "--out", "afile.txt", "--steps", "100"], 2, "--out: afile.txt is a file", {}),
    ("train a refused shift", ["algd-train", "--shift", "gravity=2", "--out", "new"], 2,
     "unknown shift parameter 'gravity' for PointHazard-v0: expected one of", {}),
    ("train --device cuda without CUDA", ["algd-train", "--device", "cuda", "--out", "new", "--steps", "100"], 2,
     "device: 'cuda' was asked for but torch sees no CUDA device", {}),
    ("train a config with a key twice", ["algd-train", "--config", "dup.yaml", "--out", "new"], 2, "seed", {}),
    ("finetune into its source", ["algd-finetune", f"{RUN}/policy.pt", "--target", "sim", "--out", RUN], 2,
     "writes over its source", {}),
    ("finetune --out a file", ["algd-finetune", f"{RUN}/policy.pt", "--target", "sim", "--out", "afile.txt"], 2,
     "--out: afile.txt is a file", {}),
    ("finetune a bundle folder", ["algd-finetune", "pol/bundle", "--target", "sim"], 2,
     "a bundle: give the policy.pt", {}),
    ("launch a negative duration", ["algd-launch", "--bundle", "pol/bundle", "--duration", "-3", "--key", "op.key"], 2,
     "--duration", {}),
    ("launch a folder without a bundle", ["algd-launch", "--bundle", "notes", "--key", "op.key"], 2,
     "--bundle: notes holds no manifest.yaml", {}),
    ("launch a params file with a key twice", ["algd-launch", "--bundle", "pol/bundle", "--params-file",
                                               "dup_params.yaml", "--key", "op.key", "--duration", "1"], 2,
     "control_rate_hz", {}),
    ("launch --with-sim on a robot-side install", ["algd-launch", "--bundle", "pol/bundle", "--with-sim", "--key",
                                                   "op.key", "--duration", "1"], 2,
     "--with-sim: the sim robot needs mujoco, which is not installed", {"PYTHONPATH": "fake"}),
    ("verify an edited bundle", ["algd-sign", "edited", "--verify"], 1,
     "NOT TRUSTED, the controller refuses it", {}),
    ("chaos with faults too close", ["algd-bench", "chaos", "pol/bundle", "--every", "5"], 2,
     "--every: expected >= 10 seconds", {}),
]


@pytest.mark.parametrize("name, argv, code, says, extra", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_and_changes_nothing(tree, name, argv, code, says, extra):
    if name == "train --resume with another config":
        shutil.copy(ROOT / "configs" / "smoke.yaml", tree / "configs_smoke.yaml")
    before = snapshot(tree)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", **extra)
    if "PYTHONPATH" in extra:
        env["PYTHONPATH"] = str(tree / extra["PYTHONPATH"])
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == code, f"exit {out.returncode}, expected {code}:\n{text[-2000:]}"
    assert says in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert snapshot(tree) == before  # nothing written, changed or removed
