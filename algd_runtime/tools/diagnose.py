"""algd-diagnose: why a run learns or does not, read from one of its checkpoints.

    algd-diagnose runs/<run>/policy.pt [--episodes 3]

Rolls the deterministic policy out on the run's evaluation task and answers four questions:
- Are the critics right? Q(s, pi(s)) against the discounted return that followed, and
  Qc(s, pi(s)) against the discounted cost. Where a time limit cut an episode, the tail
  after the cut is the critics' own value there (as in the TD target); the report says how
  much of the measured value that tail is.
- Does the actor do what the critics ask? Projected gradient ascent on -L_A from the policy's
  action, and the best of 256 uniform actions: how much -L_A the policy leaves on the table.
- How broad is the target the score is matched to (exp(-L_A / beta) over uniform actions)?
- How many action components sit at the bound (tanh saturated)?
- How widely does the policy explore while training (the spread of its stochastic samples)?
A calibrated critic with an actor at its optimum points at exploration or a local optimum;
a large gap points at the actor; a miscalibrated critic points at the critics.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

UNIFORM_CANDIDATES = 256
ASCENT_STEPS = 100
MAX_STATES = 2000  # states drawn from the rollouts for the action searches


def discounted_tail(values: Sequence[float], gamma: float, after: float = 0.0) -> np.ndarray:
    """G_t = sum_k gamma^k v_{t+k} to the end of the episode, plus gamma^(T-t) * after (the
    value of what follows the episode's end), for every t."""
    out, g = np.empty(len(values)), after
    for t in range(len(values) - 1, -1, -1):
        g = values[t] + gamma * g
        out[t] = g
    return out


def saturated_fraction(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor, within: float = 0.98) -> float:
    """Share of action components within 2 % of the range's ends."""
    centre, half = (low + high) / 2, (high - low) / 2
    return float(((actions - centre).abs() / half > within).float().mean())


def ascend_energy(agent, obs: torch.Tensor, action: torch.Tensor, steps: int = ASCENT_STEPS) -> torch.Tensor:
    """The action after projected gradient ascent on -L_A(s, a) from `action`, within the bounds."""
    low = torch.as_tensor(agent.spec.act_low, dtype=action.dtype)
    high = torch.as_tensor(agent.spec.act_high, dtype=action.dtype)
    a = action.clone().requires_grad_(True)
    opt = torch.optim.Adam([a], lr=0.02 * float((high - low).mean() / 2))
    for _ in range(steps):
        loss = agent.energy(obs, a)[0].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            a.copy_(torch.maximum(torch.minimum(a, high), low))
    return a.detach()


@dataclass
class Diagnosis:
    episodes: list[tuple[int, float, float]]  # (length, return, episode cost)
    q_policy: float
    real_return: float  # discounted, from the same states
    bootstrap_share: float  # mean gamma^(T-t) of cut-off episodes' states (0: all terminated)
    q_corr: float
    qc_policy: float
    real_cost: float
    lam: float
    neg_energy_policy: float  # -L_A at the policy's action
    neg_energy_ascent: float
    neg_energy_uniform: float  # best of UNIFORM_CANDIDATES uniform actions
    target_ess: float  # effective sample size of exp(-L_A / beta) over those actions
    beta: float
    saturated: float
    sample_spread: float  # std of stochastic samples, in half-ranges per component

    def report(self) -> str:
        ep = ", ".join(f"{n} steps / {r:.1f} / cost {c:.1f}" for n, r, c in self.episodes)
        gap = self.neg_energy_ascent - self.neg_energy_policy
        return "\n".join([
            f"episodes (length / return / cost): {ep}",
            f"critic:  Q(s,pi) {self.q_policy:.3f} against the discounted return {self.real_return:.3f} "
            f"(ratio {_ratio(self.q_policy, self.real_return)}, correlation {self.q_corr:.2f}; "
            f"{self.bootstrap_share:.0%} weight on the critic's value after a time limit)",
            f"cost:    Qc_risk(s,pi) {self.qc_policy:.3f} against the discounted cost {self.real_cost:.3f}; "
            f"lambda {self.lam:.4g}",
            f"actor:   -L_A at the policy's action {self.neg_energy_policy:.3f}, after gradient ascent "
            f"{self.neg_energy_ascent:.3f} (gap {gap:.3f}), best of {UNIFORM_CANDIDATES} uniform "
            f"{self.neg_energy_uniform:.3f}",
            f"target:  exp(-L_A / beta) (beta {self.beta:g}) over the {UNIFORM_CANDIDATES} uniform actions has an "
            f"effective sample size of {self.target_ess:.1f} (1: a point mass, {UNIFORM_CANDIDATES}: flat)",
            f"bounds:  {self.saturated:.0%} of action components at the bound",
            f"explore: training samples spread {self.sample_spread:.3f} half-ranges per component",
        ])


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if abs(b) > 1e-9 else "n/a"


def diagnose(policy: str | Path, episodes: int = 3, seed: int | None = None) -> Diagnosis:
    from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint
    from algd_runtime.learn.config import config_from_dict
    from algd_runtime.learn.collector import make_eval_task
    from algd_runtime.learn.evaluation import eval_seed_of

    ckpt = load_checkpoint(policy)
    agent = agent_from_checkpoint(ckpt, with_optimizers=False)
    cfg = config_from_dict(ckpt["config"], check_task=False)
    env = make_eval_task(cfg)
    spec = env.task_spec
    first = eval_seed_of(cfg.seed) if seed is None else seed
    gamma, gamma_c = agent.cfg.gamma, agent.cfg.cost_gamma
    states, actions, returns, costs, weights, summary = [], [], [], [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=first + i)
        ep_s, ep_a, ep_r, ep_c = [], [], [], []
        while True:
            with torch.no_grad():
                a = agent.policy.act_deterministic(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            ep_s.append(obs)
            ep_a.append(a)
            obs, r, c, term, trunc, _ = env.step(a)
            ep_r.append(r)
            ep_c.append(c)
            if term or trunc:
                break
        summary.append((len(ep_r), float(sum(ep_r)), float(spec.episode_cost(ep_c))))
        after_q = after_qc = 0.0
        if not term:  # cut by the time limit: what follows is the critics' value, as in training
            with torch.no_grad():
                last = torch.as_tensor(obs, dtype=torch.float32)[None]
                _, q_end, qc_end = agent.energy(last, agent.policy.act_deterministic(last))
            after_q, after_qc = float(q_end), float(qc_end)
        states += ep_s
        actions += ep_a
        returns += list(discounted_tail(ep_r, gamma, after_q))
        costs += list(discounted_tail(ep_c, gamma_c, after_qc))
        weights += list(gamma ** np.arange(len(ep_r), 0, -1) * (not term))
    s = torch.as_tensor(np.array(states), dtype=torch.float32)
    a = torch.as_tensor(np.array(actions), dtype=torch.float32)
    low = torch.as_tensor(spec.act_low, dtype=torch.float32)
    high = torch.as_tensor(spec.act_high, dtype=torch.float32)
    with torch.no_grad():
        neg_la, q, qc = (x.squeeze(-1) for x in agent.energy(s, a))
        neg_la = -neg_la
    q_corr = float(np.corrcoef(q.numpy(), returns)[0, 1]) if len(returns) > 1 and np.std(returns) > 0 else math.nan

    pick = torch.randperm(len(s), generator=torch.Generator().manual_seed(0))[:MAX_STATES]
    s, a, neg_la_pick = s[pick], a[pick], neg_la[pick]
    ascent = ascend_energy(agent, s, a)
    with torch.no_grad():
        neg_la_ascent = -agent.energy(s, ascent)[0].squeeze(-1)
        n = UNIFORM_CANDIDATES
        uniform = low + (high - low) * torch.rand(len(s) * n, len(low), generator=torch.Generator().manual_seed(1))
        neg_la_uniform = (-agent.energy(s.repeat_interleave(n, 0), uniform)[0]).view(len(s), n)
        best_uniform = neg_la_uniform.max(dim=1).values
        weights_b = torch.softmax(neg_la_uniform / agent.cfg.beta, dim=1)
        ess = float((1.0 / (weights_b**2).sum(dim=1)).mean())
        m = 32
        samples = agent.policy.sample(s.repeat_interleave(m, 0)).view(len(s), m, -1)
        spread = float((samples.std(dim=1) / ((high - low) / 2)).mean())
    return Diagnosis(
        episodes=summary, q_policy=float(q.mean()), real_return=float(np.mean(returns)),
        bootstrap_share=float(np.mean(weights)), q_corr=q_corr,
        qc_policy=float(qc.mean()), real_cost=float(np.mean(costs)), lam=agent.lam,
        neg_energy_policy=float(neg_la_pick.mean()), neg_energy_ascent=float(neg_la_ascent.mean()),
        neg_energy_uniform=float(best_uniform.mean()), target_ess=ess, beta=agent.cfg.beta, saturated=saturated_fraction(a, low, high),
        sample_spread=spread)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-diagnose", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("policy", type=Path, help="a training checkpoint (policy.pt)")
    p.add_argument("--episodes", type=int, default=3, help="deterministic episodes to roll out")
    p.add_argument("--seed", type=int, help="first reset seed (default: the run's evaluation seeds)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print(f"error: --episodes: expected a value >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from algd_runtime.learn.checkpoint import CheckpointError

    try:
        result = diagnose(args.policy, args.episodes, args.seed)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.policy}:")
    print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
