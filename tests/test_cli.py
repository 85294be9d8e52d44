"""The commands as users run them: algd-train (smoke config), algd-eval, algd-bench."""

import csv
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def cli(name, *args, timeout=300):
    return subprocess.run([str(BIN / name), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_smoke_config_trains_writes_policy_and_eval_reads_it(tmp_path):
    t0 = time.time()
    out = cli("algd-train", "--config", "configs/smoke.yaml", "--out", tmp_path, "--no-progress")
    took = time.time() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    policy = tmp_path / "PointHazard-v0-seed0" / "policy.pt"
    assert policy.is_file() and f"saved {policy}" in out.stdout
    assert "budget: cost limit 5 on the cost summed over a 200-step episode (algd budget)" in out.stdout, out.stdout
    assert "updates: fast, networks in fp32 (configured)" in out.stdout, out.stdout
    assert re.search(r"final eval: return -?[\d.]+ ± [\d.]+, cost [\d.]+ ± [\d.]+ \(limit 5", out.stdout)
    print(f"smoke training took {took:.0f} s")
    ev = cli("algd-eval", policy, "--episodes", "3")
    assert ev.returncode == 0, ev.stderr
    m = re.search(r"return:\s+(-?[\d.]+) ± ([\d.]+) over 3 episodes", ev.stdout)
    assert m, ev.stdout
    assert re.search(r"cost:\s+[\d.]+ ± [\d.]+ \(limit 5 per episode; (within|OVER) the limit", ev.stdout)
    # A shifted evaluation of the same policy runs too and reports the shift.
    ev2 = cli("algd-eval", policy, "--episodes", "2", "--shift", "actuator_gain=2.0")
    assert ev2.returncode == 0 and "actuator_gain" in ev2.stdout, ev2.stderr


def test_bad_config_and_bad_policy_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: PointHazard-v0\nalgo:\n  lr: fast\n")
    out = cli("algd-train", "--config", bad, "--out", tmp_path)
    assert out.returncode == 2 and "algo.lr: expected a number, got 'fast'" in out.stderr
    out = cli("algd-train", "--task", "NoSuchTask-v0", "--out", tmp_path)
    assert out.returncode == 2 and "task: unknown task 'NoSuchTask-v0'" in out.stderr
    (tmp_path / "junk.pt").write_bytes(b"junk")
    out = cli("algd-eval", tmp_path / "junk.pt")
    assert out.returncode == 2 and "not a policy.pt written by algd-train" in out.stderr and "Traceback" not in out.stderr


def test_train_on_a_cpu_takes_the_cpu_preset_and_says_so(tmp_path):
    out = cli("algd-train", "--task", "SafetyHopperVelocity-v1", "--steps", "1", "--out", tmp_path, "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^preset: cpu \(the default without --device cuda\): 3 updates per env step.*; the others: "
                     r"--preset paper$", out.stdout, re.M), out.stdout
    out = cli("algd-train", "--task", "SafetyHopperVelocity-v1", "--steps", "1", "--preset", "paper", "--out",
              tmp_path / "p", "--no-progress")
    assert out.returncode == 0 and "preset: paper (named): the paper's settings" in out.stdout, out.stdout + out.stderr
    assert "updates: fast, networks in fp32 (configured)" in out.stdout
    out = cli("algd-train", "--task", "SafetyHopperVelocity-v1", "--preset", "gpu", "--out", tmp_path / "g")
    assert out.returncode == 2 and "preset: expected one of paper, cpu" in out.stderr and not (tmp_path / "g").exists()


def test_bench_train_prints_a_table_with_rates():
    out = cli("algd-bench", "train", "--task", "PointHazard-v0", "--seconds", "0.5", "--batch", "32")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("PointHazard-v0"))
    env_rate, act_rate, eager, fast = (float(x) for x in row.split()[3:7])
    assert env_rate > 100 and act_rate > 10 and eager > 0 and fast > 0  # figures, not targets (a loaded machine)
    # The ratios are of the unrounded rates, measured in one run; the rates print with one
    # decimal, so a ratio read back from them is off by up to that rounding (a loaded machine's
    # eager 1.5 upd/s made 10.22x read as 10.4x).
    def close(printed: str, num: float, den: float) -> bool:
        slack = (num / den) * (0.05 / num + 0.05 / den) + 0.005
        return printed.endswith("x") and abs(float(printed[:-1]) - num / den) <= slack

    assert close(row.split()[7], fast, eager)  # the ratio of the two paths
    bf16 = float(row.split()[8])  # precision bf16, beside them in the same run
    assert bf16 > 0 and close(row.split()[9], bf16, eager)
    assert out.stdout.startswith("machine:") and "critic width 256" in out.stdout
    assert re.search(r"^CPU flags: .*; torch CPU capability \w+; precision auto: (bf16|fp32) \(auto: CPU has .*\)$",
                     out.stdout, re.M), out.stdout


def test_bench_loop_refuses_an_io_robot_without_its_monitor_and_a_missing_io_file(vesde_bundle, tmp_path):
    out = cli("algd-bench", "loop", str(vesde_bundle), "--io", str(ROOT / "config" / "io" / "standard.yaml"),
              "--no-monitor")
    assert out.returncode == 2 and "--no-monitor with --io: a robot on standard messages holds until it hears the " \
                                   "monitor's e-stop state" in out.stderr, out.stderr
    out = cli("algd-bench", "loop", str(vesde_bundle), "--io", str(tmp_path / "none.yaml"))
    assert out.returncode == 2 and f"--io: expected an io file (see config/io/), got {tmp_path / 'none.yaml'}" in out.stderr


def test_bench_infer_times_each_escalation_level_against_the_shipped_period(vesde_bundle):
    from algd_runtime.tools.bench import escalation_cases

    rate, levels = escalation_cases(0.5, 3.0)  # from the shipped parameter file, as the monitor composes it
    assert rate == 500.0 and [name for name, _ in levels] == ["OK", "WARN", "ERROR"]
    assert levels[0][1] == {"mode": "deterministic", "n": 16, "lagrange_multiplier": None, "guidance_scale": 0.0,
                            "remaining_budget": None}
    assert levels[1][1] == {**levels[0][1], "lagrange_multiplier": 1.0, "guidance_scale": 1.0}  # lambda x 2
    _, with_rate = escalation_cases(0.5, 3.0, exchange_rate=2.5)  # the bundle's exchange rate x 4, when larger
    assert with_rate[1][1]["lagrange_multiplier"] == 10.0
    assert levels[2][1] == {**levels[0][1], "mode": "best_of_n", "remaining_budget": 3.0}
    out = cli("algd-bench", "infer", vesde_bundle, "--iters", "50", "--provider", "cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "escalation levels at the shipped rate (500 Hz: a period of 2000 us" in out.stdout
    found = re.findall(r"^  (OK|WARN|ERROR) +(.+?) +p50 +[\d.]+ us  p99 +([\d.]+) us +([\d.]+) % of the period",
                       out.stdout, re.M)
    assert [f[0] for f in found] == ["OK", "WARN", "ERROR"], out.stdout
    assert [f[1] for f in found] == ["deterministic", "deterministic, guided w 1", "best-of-16"]
    for _, _, p99, share in found:
        assert float(share) == pytest.approx(100 * float(p99) / 2000, abs=0.1)
    # judged paced, one decision per period; the back-to-back figures beside each level
    assert "one decision per period as the controller makes them" in out.stdout
    assert len(re.findall(r"of the period.*\(back to back: p50 [\d.]+ us, p99 [\d.]+ us\)$", out.stdout, re.M)) == 3


def test_bench_guidance_runs_each_setting_on_the_task_and_writes_its_curves(vesde_bundle, tmp_path):
    out = cli("algd-bench", "guidance", vesde_bundle, "--episodes", "1", "--blocks", "2", "--lambda", "own",
              "--lambda", "10", "--lambda", "2xrate", "--scale", "0", "--scale", "1", "--best-of", "4",
              "--out", tmp_path / "g")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"bundle: PointHazard-v0, lambda [\d.e+-]+, exchange rate [\d.e+-]+, cost limit 5 per episode",
                     out.stdout), out.stdout
    rows = re.findall(r"^(unguided|lambda \S+, w \S+|best-of-4(?:, shield)?) +(-?[\d.]+) ± ([\d.]+) +([\d.]+) ± "
                      r"([\d.]+) +(\d+)% +([\d.]+)$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["unguided", "lambda own, w 1", "lambda 10, w 1", "lambda 2xrate, w 1", "best-of-4",
                                    "best-of-4, shield"]
    assert "units per setting: 1 policy x 2 block(s)" in out.stdout
    with (tmp_path / "g" / "guidance.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["setting"] for r in table] == [r[0] for r in rows] and all(r["episodes"] == "2" for r in table)
    assert (tmp_path / "g" / "guidance.png").stat().st_size > 1000
    lone = tmp_path / "lone"
    shutil.copytree(vesde_bundle, lone / "bundle")
    out = cli("algd-bench", "guidance", lone / "bundle")
    assert out.returncode == 2 and f"no {lone / 'policy.pt'} beside it" in out.stderr
    out = cli("algd-bench", "guidance", vesde_bundle, "--lambda", "twice")
    assert out.returncode == 2 and "--lambda: expected 'own', a value >= 0 or '<k>xrate' (e.g. 2xrate), got 'twice'" \
        in out.stderr


def test_guidance_grid_and_interval():
    from algd_runtime.tools.guidance import interval, lambda_value, settings

    grid = settings(["own", "10"], [0.0, 0.5], [8])
    assert [s.name for s in grid] == ["unguided", "lambda own, w 0.5", "lambda 10, w 0.5", "best-of-8",
                                      "best-of-8, shield"]
    assert grid[2].lam == "10" and grid[2].act == {"guidance_scale": 0.5} and grid[4].shield
    assert lambda_value("own", 0.3, 4.0) == 0.3 and lambda_value("10", 0.3, 4.0) == 10.0
    assert lambda_value("2xrate", 0.3, 4.0) == 8.0 and lambda_value("0.5xrate", 0.3, 4.0) == 2.0
    for bad in ("-1", "xrate", "nan"):
        with pytest.raises(ValueError, match="--lambda: expected"):
            lambda_value(bad, 0.3, 4.0)
    mean, half = interval([1.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(1.96 * (2 ** 0.5) / (2 ** 0.5))
    assert interval([4.0]) == (4.0, 0.0)
