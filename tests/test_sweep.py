"""algd-sweep on an embedded local Ray: a tiny sweep (toy task, 2 seeds), run twice; a sweep
stopped by Ctrl-C or SIGTERM saves its trials."""

import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from algd_runtime.tools.sweep import main, parse_set  # noqa: E402

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

    longer = [a if a != "300" else "600" for a in args]  # the same trials asked for more steps
    assert main(longer + ["--report"]) == 1  # a report over unfinished trials is not a success
    assert "2 of 2 trials unfinished" in capsys.readouterr().err


def test_override_sets_are_checked_before_anything_runs(tmp_path, capsys):
    assert parse_set("algo.dual=episode_cost,algo.lr=0.001") == {"algo.dual": "episode_cost", "algo.lr": 0.001}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set("algo.dual")
    assert main(["--task", "PointHazard-v0", "--set", "algo.dual=pid", "--out", str(tmp_path)]) == 2
    assert "algo.dual" in capsys.readouterr().err


def test_progress_reads_each_systems_own_log(tmp_path):
    from algd_runtime.tools.sweep import progress_line

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
    from algd_runtime.tools.sweep import set_label, split_name

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
    cmd = [sys.executable, "-m", "algd_runtime.tools.sweep", "--task", "PointHazard-v0", "--seeds", "1", "--steps",
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
    from algd_runtime.learn.checkpoint import load_checkpoint

    steps = load_checkpoint(out / "PointHazard-v0-set0-seed1" / "policy.pt")["train_state"]["env_steps"]
    assert 200 <= steps < 10_000_000  # saved mid-run, so that the next run resumes it


def test_a_baseline_that_cannot_keep_the_budget_is_refused_before_anything_runs(tmp_path, capsys):
    """SafetyHalfCheetahVelocity-v1's paper budget is discounted; SACLag keeps an episode sum."""
    from algd_runtime.tools.sweep import main

    assert main(["--task", "SafetyHalfCheetahVelocity-v1", "--baseline", "saclag", "--seeds", "1",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert ("--baseline saclag on SafetyHalfCheetahVelocity-v1: the SACLag baseline constrains the summed episode "
            "cost; this task's budget is 'discounted'") in err and "--set budget=safety_gymnasium" in err, err
    assert not (tmp_path / "s").exists()


def test_a_failed_trial_names_its_own_exception_not_rays_wrapper():
    from algd_runtime.tools.sweep import failure_cause

    class RayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray::run_trial() (pid=1, ip=127.0.0.1)\n  File ...\nsomething")
            self.cause = cause

    assert failure_cause(RayTaskError(ValueError("budget is 'discounted'"))) == "ValueError: budget is 'discounted'"
    assert failure_cause(RuntimeError("ray::run_trial()\n  File x\nBaselineError: no")) == "BaselineError: no"


def test_the_equal_steps_table_sets_trials_at_the_step_all_reached(tmp_path):
    """ALGD stopped at 10k and SACLag ran to 30k: both are read at 10k."""
    from algd_runtime.tools.sweep import aggregate

    def progress(name, rows):
        (tmp_path / name).mkdir()
        lines = ["step,time_s,return_mean,cost_mean,cost_limit"] + [f"{s},{s / 10},{r},{c},25" for s, r, c in rows]
        (tmp_path / name / "progress.csv").write_text("\n".join(lines) + "\n")

    progress("algd", [(5000, 1.0, 30.0), (10000, 2.0, 20.0)])
    progress("sac", [(10000, 5.0, 10.0), (20000, 8.0, 5.0), (30000, 9.0, 4.0)])
    trials = [{"task": "T", "set": "ALGD", "seed": 1, "name": "algd", "system": "algd"},
              {"task": "T", "set": "SACLag", "seed": 1, "name": "sac", "system": "saclag"}]
    rows = {r["set"]: r for r in aggregate(tmp_path, trials)}
    assert rows["ALGD"]["steps"] == rows["SACLag"]["steps"] == 10000
    assert rows["SACLag"]["return_mean"] == 5.0 and rows["SACLag"]["cost_mean"] == 10.0


def test_the_report_compares_at_equal_cpu_time_where_trials_logged_it(tmp_path):
    """UTD 1 was starved by its neighbour (slow in wall-clock, cheap in CPU time); UTD 10 was
    not. Equal wall-clock and equal compute then cut the curves at different points."""
    from algd_runtime.tools.sweep import aggregate

    def progress(name, rows):
        (tmp_path / name).mkdir()
        lines = ["step,time_s,cpu_s,return_mean,cost_mean,cost_limit"] + [
            f"{s},{w},{c},{r},1,25" for s, w, c, r in rows]
        (tmp_path / name / "progress.csv").write_text("\n".join(lines) + "\n")

    progress("utd1", [(1000, 40, 10, 1.0), (2000, 80, 20, 2.0), (3000, 120, 30, 3.0)])
    progress("utd10", [(1000, 30, 30, 5.0), (2000, 60, 60, 6.0)])
    trials = [{"task": "T", "set": "utd1", "seed": 1, "name": "utd1", "system": "algd"},
              {"task": "T", "set": "utd10", "seed": 1, "name": "utd10", "system": "algd"}]
    aggregate(tmp_path, trials)
    report = (tmp_path / "sweep.md").read_text()
    wall, cpu = report.split("## At equal wall-clock")[1].split("## At equal compute")
    # wall-clock: utd10 finished in 60 s, when utd1 had reached 1000 steps (40 s)
    assert "| T | utd1 | 1 | 1000 | 40 | 1.00 ± 0.00 |" in wall
    # compute: utd1 finished on 30 CPU s, when utd10 had reached 1000 steps (30 CPU s)
    assert "| T | utd1 | 1 | 3000 | 30 | 3.00 ± 0.00 |" in cpu
    assert "| T | utd10 | 1 | 1000 | 30 | 5.00 ± 0.00 |" in cpu
