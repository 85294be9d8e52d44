"""The budget guard for learning on a real (or shifted) system: the monitor's logic applied
to the learner's own episodes, so that exploration never spends more than the budget.

Each step the guard feeds BudgetMonitor the step's cost and the cost critic's prediction
for the (observation, action) just taken, exactly as the ROS monitor node does, and acts
on the level:

    ERROR -> shield: the action becomes the lowest-risk (Qc_risk) of the proposed action and
             `candidates` fresh policy samples;
    STOP  -> end the episode now: the budget is spent, or one more step at the step-cost
             margin (the task's bound, else the largest one-step cost seen) could overspend
             it: safety.budget_verdict, the rule the controller and the monitor use (stop_on="budget";
             "forecast" also stops when the forecast reaches stop_at x limit). Ending before
             that step is what keeps an episode within its budget.

The trainer stores the step that triggered STOP as truncated (not terminal): the task did
not end, the guard did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algd_runtime.deploy.monitor import BudgetMonitor, Level, MonitorConfig


@dataclass
class GuardConfig:
    warn_at: float = 0.5
    error_at: float = 0.8
    stop_at: float = 1.0
    stop_on: str = "budget"  # "budget" | "forecast" (see monitor.py)
    candidates: int = 16  # policy samples the shield picks from
    forecast: bool = True  # add the cost critic's prediction to the accumulated cost

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates: expected >= 1, got {self.candidates}")


class BudgetGuard:
    def __init__(self, agent, cfg: GuardConfig | None = None) -> None:
        self.agent, self.cfg, self.spec = agent, cfg or GuardConfig(), agent.spec
        self.monitor = BudgetMonitor(MonitorConfig(cost_limit=self.spec.cost_limit, warn_at=self.cfg.warn_at,
                                                   error_at=self.cfg.error_at, stop_at=self.cfg.stop_at,
                                                   stop_on=self.cfg.stop_on, stop_latch="episode",
                                                   max_step_cost=self.spec.max_step_cost))
        self.shielded = self.shielded_in_episode = 0
        self.stops = 0
        self._t, self._predicted, self._started = 0, 0.0, False

    def begin_episode(self) -> None:
        if self._started:
            self.monitor.end_episode()  # a guard STOP ends one episode, not the run
        self._started, self._t, self.shielded_in_episode = True, 0, 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, proposed: np.ndarray) -> np.ndarray:
        """The action to take: the proposed one, or at ERROR the shield's choice."""
        agent = self.agent
        o = torch.as_tensor(np.asarray(obs, np.float32), device=agent.device)[None]
        action = torch.as_tensor(np.asarray(proposed, np.float32), device=agent.device)[None]
        if self.monitor.level >= Level.ERROR:
            n = self.cfg.candidates
            cands = torch.cat([action, agent.policy.sample(o.expand(n, -1))])
            risk = agent.qc_risk(o.expand(n + 1, -1), cands)[:, 0]
            action = cands[int(torch.argmin(risk))][None]
            self.shielded += 1
            self.shielded_in_episode += 1
        if self.cfg.forecast:
            self._predicted = float(agent.cost_critics(o, action).mean())
        return action[0].cpu().numpy()

    def after_step(self, cost: float) -> bool:
        """Account the step's cost; True: end the episode now."""
        weight = 1.0 if self.spec.cost_semantics == "episode" else self.spec.cost_gamma ** self._t
        self._t += 1
        self.monitor.update(weight * float(cost), weight * self._predicted)
        if self.monitor.level == Level.STOP:
            self.stops += 1
            return True
        return False

    def restore(self, costs) -> None:
        """Rebuild the episode's accounting from its costs so far (exact resume)."""
        self.begin_episode()
        for c in costs:
            self._predicted = 0.0
            self.after_step(c)
