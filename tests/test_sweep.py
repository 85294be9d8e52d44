"""algd-sweep on an embedded local Ray: a tiny sweep (toy task, 2 seeds), run twice; a sweep
stopped by Ctrl-C or SIGTERM saves its trials."""

import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from algd_runtime.sweep import main, parse_set  # noqa: E402

TINY = """\
task: PointHazard-v0
warmup_steps: 100
min_replay: 64
updates_per_step: 1
eval_every: 150
eval_episodes: 1
checkpoint_every: 0
log_every: 100
algo:
  score_hidden: 16
  critic_hidden: 16
  batch_size: 32
"""


@pytest.mark.slow  # Ray's start-up and two trials: about a minute, more on a busy machine
def test_a_tiny_sweep_runs_on_local_ray_aggregates_and_skips_finished_trials(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "sweep"
    args = ["--task", "PointHazard-v0", "--seeds", "1", "2", "--steps", "300", "--config", str(config),
            "--out", str(out), "--num-cpus", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 trials, 0 finished before, 2 to run" in text and "[2/2]" in text
    assert "| PointHazard-v0 | defaults | 2 | 300 |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    policies = sorted(out.glob("*/policy.pt"))
    assert len(policies) == 2 and all((p.parent / "tb").is_dir() for p in policies)
    stamps = [p.stat().st_mtime_ns for p in policies]

    assert main(args) == 0  # again: nothing re-runs
    assert "2 finished before, 0 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in policies] == stamps


def test_override_sets_are_checked_before_anything_runs(tmp_path, capsys):
    assert parse_set("algo.dual=episode_cost,algo.lr=0.001") == {"algo.dual": "episode_cost", "algo.lr": 0.001}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set("algo.dual")
    assert main(["--task", "PointHazard-v0", "--set", "algo.dual=pid", "--out", str(tmp_path)]) == 2
    assert "algo.dual" in capsys.readouterr().err


def test_progress_reads_each_systems_own_log(tmp_path):
    from algd_runtime.sweep import progress_line

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.csv").write_text("step,time_s\n1000,3\n2500,9\n")
    omni = tmp_path / "b" / "omnisafe" / "SACLag-{T}" / "seed-001-x"
    omni.mkdir(parents=True)
    (omni / "progress.csv").write_text("TotalEnvSteps,Time/Total\n5000,20\n")
    trials = [{"name": "a", "system": "algd", "total_steps": 10_000},
              {"name": "b", "system": "saclag", "total_steps": 10_000},
              {"name": "c", "system": "algd", "total_steps": 10_000}]
    assert progress_line(tmp_path, trials, 120) == "[2 min] a 25%, b 50%, c 0%"


def test_an_override_set_may_carry_a_name_for_reports():
    from algd_runtime.sweep import set_label, split_name

    name, text = split_name("ALGD UTD 1:updates_per_step=1,algo.dual=episode_cost")
    assert name == "ALGD UTD 1" and parse_set(text) == {"updates_per_step": 1, "algo.dual": "episode_cost"}
    assert split_name("algo.dual=critic") == (None, "algo.dual=critic")
    assert set_label(parse_set(text), name) == "ALGD UTD 1"
    assert set_label({"algo.lr": 0.001}) == "algo.lr=0.001" and set_label({}) == "defaults"


@pytest.mark.slow  # Ray's start-up and a trial stopped mid-run: about a minute
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_saves_its_trials_and_exits(tmp_path, sig):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "algd_runtime.sweep", "--task", "PointHazard-v0", "--seeds", "1", "--steps",
           "10000000", "--config", str(config), "--out", str(out), "--num-cpus", "1", "--progress-every", "1"]
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        train_log = out / "PointHazard-v0-set0-seed1" / "train.csv"
        deadline = time.monotonic() + 180
        while not (train_log.exists() and len(train_log.read_text().splitlines()) > 2):
            assert sweep.poll() is None and time.monotonic() < deadline, "the trial did not start logging"
            time.sleep(0.5)
        sweep.send_signal(sig)
        text, _ = sweep.communicate(timeout=180)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, text
    assert "stopping 1 trials" in text and "stopped at step" in text
    from algd_runtime.checkpoint import load_checkpoint

    steps = load_checkpoint(out / "PointHazard-v0-set0-seed1" / "policy.pt")["train_state"]["env_steps"]
    assert 200 <= steps < 10_000_000  # saved mid-run, so that the next run resumes it
