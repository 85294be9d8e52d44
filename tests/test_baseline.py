"""The SACLag baseline's side of algd-sweep, without OmniSafe: its saved actor read back, its
run evaluated exactly as an ALGD trial is, and the equal-wall-clock report."""

import csv

import numpy as np
import pytest
import torch

from algd_runtime.tools import omnisafe as baseline
from algd_runtime.sim import make_task
from algd_runtime.tools.sweep import aggregate, finished
from algd_runtime.learn.evaluation import eval_seed_of, evaluate

TASK = "PointHazard-v0"


def omnisafe_actor(obs_dim: int, act_dim: int, seed: int) -> torch.nn.Sequential:
    """The layout of OmniSafe's GaussianSACActor.net: Linear/ReLU, mean and log std heads."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(obs_dim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 2 * act_dim))


def saved_pi(net: torch.nn.Sequential) -> dict:
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def test_the_saved_actor_acts_as_tanh_of_its_mean_head():
    net = omnisafe_actor(5, 2, seed=0)
    act = baseline.SACLagActor(saved_pi(net))
    obs = np.random.default_rng(0).normal(size=5).astype(np.float32)
    expected = torch.tanh(net(torch.as_tensor(obs))[:2]).detach().numpy()
    np.testing.assert_allclose(act(obs), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(baseline.BaselineError, match="net.<i>.weight"):
        baseline.SACLagActor({"mu.weight": torch.zeros(1)})


def test_the_limit_is_carried_to_native_episodes_at_the_same_cost_per_step():
    assert baseline.native_cost_limit(10.0, 400, "episode") == pytest.approx(25.0)
    with pytest.raises(baseline.BaselineError, match="cost_semantics 'episode'"):
        baseline.native_cost_limit(82.748, 1000, "discounted")


def fake_omnisafe_run(folder, obs_dim, act_dim):
    """Two epochs of 500 steps, the actor saved after each, as OmniSafe lays them out."""
    (folder / "torch_save").mkdir(parents=True)
    rows = []
    for epoch in range(2):
        torch.save({"pi": saved_pi(omnisafe_actor(obs_dim, act_dim, seed=epoch))},
                   folder / "torch_save" / f"epoch-{epoch + 1}.pt")
        rows.append({"Train/Epoch": epoch, "TotalEnvSteps": 500 * (epoch + 1), "Time/Total": 7.5 * (epoch + 1),
                     "Metrics/LagrangeMultiplier": 0.1 * epoch})
    with (folder / "progress.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_a_saclag_run_is_evaluated_on_the_same_episodes_as_an_algd_trial(tmp_path):
    spec = make_task(TASK).task_spec
    folder = tmp_path / "omnisafe" / f"SACLag-{{{TASK}}}" / "seed-001-x"
    fake_omnisafe_run(folder, spec.obs_dim, spec.act_dim)
    assert baseline.omnisafe_run_folder(tmp_path / "omnisafe") == folder
    config = {"task": TASK, "seed": 3, "total_steps": 1000, "eval_episodes": 2}
    run_dir = tmp_path / "trial"
    assert not finished(run_dir, 1000, "saclag")

    baseline.evaluate_saclag(folder, config, run_dir)

    with (run_dir / "progress.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), float(r["time_s"]), float(r["lambda"])) for r in rows] == [(500, 7.5, 0.0),
                                                                                        (1000, 15.0, 0.1)]
    # The same task copy, reset seeds and episode count an ALGD trial of seed 3 evaluates on.
    act = baseline.SACLagActor(saved_pi(omnisafe_actor(spec.obs_dim, spec.act_dim, seed=1)))
    direct = evaluate(act, make_task(TASK, seed=4), 2, eval_seed_of(3))
    assert float(rows[1]["return_mean"]) == pytest.approx(direct.return_mean)
    assert float(rows[1]["cost_mean"]) == pytest.approx(direct.cost_mean)
    assert float(rows[1]["cost_limit"]) == spec.cost_limit
    assert finished(run_dir, 1000, "saclag") and not finished(run_dir, 1001, "saclag")


def test_a_missing_baseline_environment_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ALGD_BASELINE_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(baseline.BaselineError, match="scripts/baseline-venv.sh"):
        baseline.train_saclag(TASK, 1, 1000, 500, 25.0, tmp_path / "out")


def write_progress(folder, points):
    folder.mkdir(parents=True)
    with (folder / "progress.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "time_s", "return_mean", "cost_mean", "cost_limit"])
        w.writeheader()
        for step, time_s, ret, cost in points:
            w.writerow({"step": step, "time_s": time_s, "return_mean": ret, "cost_mean": cost, "cost_limit": 10})


def test_the_report_compares_at_equal_steps_and_at_the_fastest_groups_wall_clock(tmp_path):
    trials = []
    for system, label, seconds, ret in (("algd", "defaults", 20.0, 5.0), ("saclag", "SACLag", 10.0, 1.0)):
        for seed in (1, 2):
            name = f"{TASK}-{system}-seed{seed}"
            write_progress(tmp_path / name, [(1000 * i, seconds * i, ret * i + seed, 2.0) for i in (1, 2, 3)])
            trials.append({"task": TASK, "set": label, "name": name, "system": system, "seed": seed})
    (tmp_path / f"{TASK}-algd-seed1" / "train.csv").write_text("step,train_return,train_cost\n3000,7.5,1.25\n")
    rows = aggregate(tmp_path, trials)
    assert {r["set"]: (r["steps"], r["return_mean"]) for r in rows} == {"defaults": (3000, 16.5),
                                                                       "SACLag": (3000, 4.5)}
    report = (tmp_path / "sweep.md").read_text()
    equal_time = report.split("## At equal wall-clock")[1]
    # SACLag's groups finished in 30 s; ALGD's last evaluation within 30 s is at 1000 steps.
    assert "| PointHazard-v0 | defaults | 2 | 1000 | 20 | 6.50 ± 0.71 |" in equal_time
    assert "| PointHazard-v0 | SACLag | 2 | 3000 | 30 | 4.50 ± 0.71 |" in equal_time
    assert "| PointHazard-v0 | defaults | 1 | 3000 | 7.50 | 1.25 |" in report.split("## Each system's own log")[1]
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
