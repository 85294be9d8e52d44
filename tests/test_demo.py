"""algd-demo end to end with a short training config: train, export, three ROS 2 processes,
report and plots; then again, reusing the policy and the bundle."""

import json
import os

import pytest

pytest.importorskip("rclpy")

from algd_runtime.tools.demo import main as demo_main  # noqa: E402

QUICK = """\
task: PointHazard-v0
total_steps: 300
warmup_steps: 100
min_replay: 100
updates_per_step: 1
eval_every: 0
eval_episodes: 2
checkpoint_every: 0
log_every: 100
num_threads: 1
algo:
  score_hidden: 32
  critic_hidden: 32
  batch_size: 32
"""


def test_demo_runs_the_pipeline_and_reports(tmp_path, capsys):
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    config = tmp_path / "quick.yaml"
    config.write_text(QUICK)
    out = tmp_path / "demo"
    args = ["--out", str(out), "--config", str(config), "--seconds", "6", "--rate", "100"]
    code = demo_main(args)
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # Episodes must have run, or "within budget" would be vacuous.
    assert report["episodes"] == len(report["costs"]) >= 1, text
    # A barely trained policy may overspend; the exit code says so, and so does the report.
    assert code == (0 if report["within_budget"] else 1)
    assert report["within_budget"] == all(c <= report["cost_limit"] for c in report["costs"])
    assert "[1/4] train: PointHazard-v0, seed 1, 300 steps" in text and "[2/4] export:" in text
    assert report["episodes"] == len(report["returns"]) >= 1 and report["cost_limit"] == 5.0
    # It moved, paced by the sim at about 100 Hz; how much of the 6 s it moved is the machine's
    # load (47 steps/s beside two training runs), not the demo's (speed is a benchmark's, not a test's).
    assert 0 < report["sim_steps_per_s"] <= 101
    assert report["latency_ms"]["answered"] > 100 and 0 < report["latency_ms"]["p50"] < 50
    assert "control rate:" in text and "observation -> action latency" in text and "monitor:" in text
    for name in ("run_episodes.png", "training_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {os.path.basename(p) for p in report["mcap"]} == {"controller.mcap", "monitor.mcap"}
    md = (out / "report.md").read_text()
    assert md.startswith("# algd-runtime demo")
    # The safety checks are the ones the nodes report they ran with.
    assert "- safety checks active" in md and "stop latch: episode (controller), episode (monitor)" in md
    assert "signed heartbeats at 100 Hz, deadline 250 ms" in md and "robot command timeout 0.5 s" in md
    assert "task checked" in md and report["safety_checks"][0].startswith("controller budget account: limit 5 ")

    # Again: the finished policy and its bundle are reused, not rebuilt.
    assert demo_main(args[:-4] + ["--seconds", "3"]) in (0, 1)
    text = capsys.readouterr().out
    assert "[1/4] train: reusing" in text and "already holds this policy" in text


def test_demo_refuses_bad_arguments(capsys):
    assert demo_main(["--seconds", "0"]) == 2
    assert "--seconds: expected a value > 0" in capsys.readouterr().err
