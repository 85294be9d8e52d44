"""Fine-tuning on a shifted system: the budget guard, what carries over, the report (no ROS)."""

import json

import numpy as np
import pytest
import torch
from conftest import small_policy

from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint
from algd_runtime.cli import finetune_main
from algd_runtime.learn.config import TrainConfig
from algd_runtime.learn.evaluation import evaluate
from algd_runtime.learn.finetune import FinetuneOptions, finetune, parse_target, start_agent
from algd_runtime.learn.guard import BudgetGuard, GuardConfig
from algd_runtime.sim import make_task
from algd_runtime.learn.trainer import Trainer

# A hazard three times as wide covers the start: every step of a naive policy costs 1.
ENGULFED = {"hazard_scale": 3.0}


def test_hazard_scale_widens_the_hazard_and_is_validated():
    nominal, wide = make_task("PointHazard-v0", seed=0), make_task("PointHazard-v0", seed=0, hazard_scale=1.5)
    assert wide.hazard_radius == pytest.approx(1.5 * nominal.hazard_radius)
    assert wide.task_spec.shift == {"hazard_scale": 1.5}
    with pytest.raises(ValueError, match="hazard_scale.*expected a finite number > 0"):
        make_task("PointHazard-v0", hazard_scale=0.0)


def test_guard_ends_an_episode_before_its_budget_is_overspent(tmp_path):
    agent = small_policy(tmp_path / "p.pt")
    guard = BudgetGuard(agent)
    env = make_task("PointHazard-v0", seed=0, **ENGULFED)
    obs, _ = env.reset(seed=1)
    guard.begin_episode()
    spent, steps = 0.0, 0
    while True:
        obs, r, c, term, trunc, _ = env.step(guard.act(obs, np.zeros(2, np.float32)))
        spent, steps = spent + c, steps + 1
        if term or trunc or guard.after_step(c):
            break
    assert 0 < spent <= env.task_spec.cost_limit and steps < 200  # ended early, within the budget
    assert guard.stops == 1 and guard.monitor.transitions[-1].new == "STOP"
    guard.begin_episode()  # a guard STOP ends one episode, not the run
    assert guard.monitor.level.name == "OK" and guard.monitor.accumulated == 0.0


def test_shield_picks_the_lowest_risk_candidate_at_error(tmp_path):
    agent = small_policy(tmp_path / "p.pt")
    guard = BudgetGuard(agent, GuardConfig(candidates=32))
    obs = make_task("PointHazard-v0").reset(seed=3)[0]
    proposed = np.array([0.9, -0.9], np.float32)
    assert np.array_equal(guard.act(obs, proposed), proposed)  # OK: untouched
    guard.begin_episode()
    guard.monitor.update(0.0, predicted_cost_to_go=0.9 * agent.spec.cost_limit)  # forecast -> ERROR
    torch.manual_seed(0)
    chosen = guard.act(obs, proposed)
    o = torch.as_tensor(obs)[None]
    risk = lambda a: float(agent.qc_risk(o, torch.as_tensor(a)[None]).detach())  # noqa: E731
    assert guard.shielded == 1 and risk(chosen) <= risk(proposed)
    torch.manual_seed(0)  # the same candidates: none is safer than the choice
    cands = agent.policy.sample(o.expand(32, -1)).detach()
    assert risk(chosen) <= min(risk(c.numpy()) for c in cands) + 1e-6


def test_trainer_with_guard_keeps_every_training_episode_within_budget(tmp_path):
    agent = small_policy(tmp_path / "p.pt")
    cfg = TrainConfig(task="PointHazard-v0", shift=ENGULFED, total_steps=400, warmup_steps=400, eval_every=0,
                      checkpoint_every=0, log_every=100, algo=agent.cfg)
    Trainer(cfg, tmp_path / "guarded", progress=False, agent=agent, guard=GuardConfig(),
            echo=lambda s: None).run()
    rows = [json.loads(json.dumps(r)) for r in _csv(tmp_path / "guarded" / "episodes.csv")]
    assert rows and all(float(r["cost"]) <= 5.0 for r in rows)
    assert sum(int(r["ended_by_guard"]) for r in rows) >= len(rows) - 1
    # The same run without the guard overspends: the guard is what made the difference.
    Trainer(cfg, tmp_path / "free", progress=False, agent=small_policy(tmp_path / "q.pt"),
            echo=lambda s: None).run()
    assert max(float(r["cost"]) for r in _csv(tmp_path / "free" / "episodes.csv")) > 5.0


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_start_agent_resets_what_is_asked_and_keeps_the_rest(tmp_path):
    small_policy(tmp_path / "p.pt")
    ckpt = load_checkpoint(tmp_path / "p.pt")
    source = agent_from_checkpoint(ckpt)
    spec = make_task("PointHazard-v0", **ENGULFED).task_spec
    kept = start_agent(ckpt, spec, (), "cpu")
    fresh = start_agent(ckpt, spec, ("critics", "lambda"), "cpu")
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert kept.spec.shift == ENGULFED and same(kept.critic, source.critic) and kept.lam == pytest.approx(source.lam)
    assert same(fresh.policy, source.policy) and not same(fresh.critic, source.critic)
    assert not same(fresh.cost_critics, source.cost_critics)
    assert fresh.lam == pytest.approx(fresh.cfg.init_lambda, rel=1e-4) != pytest.approx(source.lam)


@pytest.mark.parametrize("text, error", [
    ("gym", "--target: expected sim, sim:TASK, ros or ros:NAMESPACE"),
])
def test_bad_target_is_named(text, error):
    with pytest.raises(ValueError, match=error):
        parse_target(text)


def test_targets_parse():
    assert parse_target("sim", {"mass": 2.0}).shift == {"mass": 2.0}
    assert parse_target("sim:PointHazard-v0").task == "PointHazard-v0"
    assert parse_target("ros:/robot1/").namespace == "/robot1"
    with pytest.raises(ValueError, match="--shift: a ros target is shifted by the robot"):
        parse_target("ros", {"mass": 2.0})
    with pytest.raises(ValueError, match="--reset: expected some of critics, lambda, got replay"):
        FinetuneOptions(parse_target("sim"), reset=("replay",))
    with pytest.raises(ValueError, match="--warmup: expected >= 0, got -1"):
        FinetuneOptions(parse_target("sim"), warmup_steps=-1)


def test_finetune_on_a_shifted_sim_writes_policy_report_and_plots(tmp_path):
    small_policy(tmp_path / "p.pt")
    opts = FinetuneOptions(parse_target("sim", ENGULFED), steps=300, seed=3, eval_episodes=3, warmup_steps=100)
    report = finetune(tmp_path / "p.pt", tmp_path / "ft", opts, progress=False, echo=lambda s: None)
    out = tmp_path / "ft"
    tuned = load_checkpoint(out / "policy.pt")
    assert tuned["origin"] == "finetune" and tuned["task_spec"]["shift"] == ENGULFED
    assert tuned["train_state"]["env_steps"] == 300
    # "before" is the source policy on the target, with the seeds "after" uses too.
    source = agent_from_checkpoint(load_checkpoint(tmp_path / "p.pt"))
    env = make_task("PointHazard-v0", seed=4, **ENGULFED)
    direct = evaluate(lambda o: source.act(o, deterministic=True), env, 3, 2_000_000 + 3 * 1000)
    assert report["before"]["costs"] == direct.costs and report["before"]["returns"] == pytest.approx(direct.returns)
    assert report["training_episodes"]["over_limit"] == 0 and report["training_episodes"]["ended_by_guard"] > 0
    assert json.loads((out / "report.json").read_text())["after"]["episodes"] == 3
    assert "| before |" in (out / "report.md").read_text()
    assert set(report["plots"]) == {"before_after.png", "finetune_episodes.png", "training_curves.png"}
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetune_keep_replay_starts_from_the_source_runs_data(tmp_path):
    cfg = TrainConfig(task="PointHazard-v0", total_steps=150, warmup_steps=150, eval_every=0, checkpoint_every=0,
                      log_every=50)
    cfg.algo.score_hidden = cfg.algo.critic_hidden = 32
    Trainer(cfg, tmp_path / "src", progress=False, echo=lambda s: None).run()
    lines = []
    opts = FinetuneOptions(parse_target("sim", {"mass": 1.5}), steps=20, eval_episodes=1, warmup_steps=20,
                           keep_replay=True)
    finetune(tmp_path / "src" / "policy.pt", tmp_path / "ft", opts, progress=False, echo=lines.append)
    assert "replay: 150 transitions from the source run" in lines


def test_cli_names_bad_input(tmp_path, capsys):
    small_policy(tmp_path / "p.pt")
    assert finetune_main([str(tmp_path / "p.pt"), "--target", "ros", "--no-guard"]) == 2
    assert "--no-guard: refused for a ros target" in capsys.readouterr().err
    assert finetune_main([str(tmp_path / "p.pt"), "--target", "sim", "--shift", "gravity=2"]) == 2
    assert "unknown shift parameter 'gravity'" in capsys.readouterr().err
    assert finetune_main([str(tmp_path / "missing.pt"), "--target", "sim"]) == 2
    assert "no such policy file" in capsys.readouterr().err
    assert finetune_main([str(tmp_path / "p.pt"), "--target", "sim", "--data", str(tmp_path / "x.mcap")]) == 2
    assert "--data: no such file" in capsys.readouterr().err


def test_the_actor_waits_for_the_critics_and_moves_at_a_fraction_of_its_rate(tmp_path):
    small_policy(tmp_path / "p.pt")
    source = load_checkpoint(tmp_path / "p.pt")
    opts = FinetuneOptions(parse_target("sim", ENGULFED), steps=250, seed=3, eval_episodes=2, warmup_steps=100)
    report = finetune(tmp_path / "p.pt", tmp_path / "ft", opts, progress=False, echo=lambda s: None)
    tuned = load_checkpoint(tmp_path / "ft" / "policy.pt")
    # 250 steps < warmup 100 + critic warm-up 2000: the critics learned, the actor did not move.
    src, out = source["agent"], tuned["agent"]
    for k, v in src["networks"]["policy"].items():
        assert torch.equal(out["networks"]["policy"][k], v), k
    assert any(not torch.equal(out["networks"]["critic"][k], v) for k, v in src["networks"]["critic"].items())
    assert out["optimizers"]["actor"]["param_groups"][0]["lr"] == pytest.approx(0.3 * tuned["config"]["algo"]["lr"])
    assert {"worse", "return_change", "why"} <= set(report["comparison"]) and "best" in report
    assert "95 % CI" in (tmp_path / "ft" / "report.md").read_text()
    # 250 steps < 100 warm-up + 2000 critic warm-up: the report says the actor never learned.
    assert "the actor did not learn: --steps 250" in (tmp_path / "ft" / "report.md").read_text()


def test_worse_after_fine_tuning_is_said_and_the_best_policy_within_budget_kept(tmp_path):
    from algd_runtime.learn.finetune import BestPolicy, compare
    from algd_runtime.learn.evaluation import EvalResult

    before = EvalResult(returns=[10.0, 11.0, 9.5, 10.5], costs=[1.0, 2.0, 0.0, 1.0], cost_limit=5.0)
    worse = EvalResult(returns=[4.0, 5.0, 3.0, 4.5], costs=[1.0, 1.0, 0.0, 2.0], cost_limit=5.0)
    over = EvalResult(returns=[10.0, 11.0, 9.5, 10.5], costs=[9.0, 8.0, 7.0, 9.0], cost_limit=5.0)
    assert compare(before, worse)["worse"] and "return -6.12" in compare(before, worse)["why"]
    assert compare(before, over)["worse"] and "over the limit" in compare(before, over)["why"]
    assert not compare(before, before)["worse"]
    # Return lost while an over-budget source came within the limit: still a warning, with the gain.
    within = compare(over, worse)
    assert within["worse"] and "while the cost came within the limit 5 (8.25 -> 1.00)" in within["why"]

    agent = small_policy(tmp_path / "p.pt")
    best = BestPolicy(tmp_path, tmp_path / "p.pt", before, echo=lambda s: None)
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "p.pt").read_bytes()  # the source, so far
    trainer = type("T", (), {"agent": agent, "cfg": TrainConfig(task="PointHazard-v0"), "env_steps": 200})()
    best.consider(over, trainer)  # a higher return over the budget is not "best"
    assert best.describe()["from"] == "the source policy"
    best.consider(EvalResult(returns=[12.0] * 4, costs=[1.0] * 4, cost_limit=5.0), trainer)
    assert best.describe()["from"] == "fine-tuned, step 200" and load_checkpoint(tmp_path / "best.pt")["origin"] == "finetune"


def test_finetune_never_writes_over_its_source_or_into_a_file(tmp_path):
    """Issue 20: --out the source run folder overwrote the source policy.pt."""
    run = tmp_path / "run"
    run.mkdir()
    small_policy(run / "policy.pt", updates=2)
    (tmp_path / "f").write_text("x")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert finetune_main([str(run / "policy.pt"), "--target", "sim", "--out", str(run)]) == 2
    assert finetune_main([str(run / "policy.pt"), "--target", "sim", "--out", str(tmp_path / "f")]) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before and (tmp_path / "f").read_text() == "x"
