"""algd-diagnose: its measurements on hand-made inputs, and the command on a small policy."""

import numpy as np
import pytest
import torch

from algd_runtime.tools.diagnose import ascend_energy, discounted_tail, main, saturated_fraction
from conftest import small_policy


def test_the_discounted_tail_adds_the_value_after_the_cut():
    np.testing.assert_allclose(discounted_tail([1.0, 1.0, 1.0], 0.5), [1.75, 1.5, 1.0])
    np.testing.assert_allclose(discounted_tail([1.0, 1.0, 1.0], 0.5, after=8.0), [2.75, 3.5, 5.0])


def test_saturation_counts_components_at_either_bound():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
    actions = torch.tensor([[0.995, 1.0], [-1.0, 1.999], [0.0, 0.001]])
    assert saturated_fraction(actions, low, high) == pytest.approx(4 / 6)


def test_gradient_ascent_raises_the_energy_objective_and_keeps_actions_in_bounds(tmp_path):
    agent = small_policy(tmp_path / "policy.pt", updates=50)
    obs = torch.randn(64, agent.spec.obs_dim, generator=torch.Generator().manual_seed(0))
    start = torch.zeros(64, agent.spec.act_dim)
    ascent = ascend_energy(agent, obs, start)
    with torch.no_grad():
        before, after = -agent.energy(obs, start)[0], -agent.energy(obs, ascent)[0]
    assert float(after.mean()) > float(before.mean())
    assert (ascent >= torch.tensor(agent.spec.act_low)).all() and (ascent <= torch.tensor(agent.spec.act_high)).all()


def test_the_command_reports_critic_actor_bounds_and_exploration(tmp_path, capsys):
    small_policy(tmp_path / "policy.pt")
    assert main([str(tmp_path / "policy.pt"), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("episodes (length / return / cost): 200 steps", "critic:  Q(s,pi)", "cost:    Qc_risk(s,pi)",
                 "actor:   -L_A at the policy's action", "target:  exp(-L_A / beta)", "bounds:", "explore:"):
        assert line in out, line
    # the toy task's episodes end at the time limit: part of the measured value is the critic's
    assert "0% weight on the critic's value" not in out


def test_bad_input_is_named(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    small_policy(tmp_path / "policy.pt")
    assert main([str(tmp_path / "policy.pt"), "--episodes", "0"]) == 2
    assert "--episodes: expected a value >= 1, got 0" in capsys.readouterr().err
