"""Which term of ALGD's actor loss moves a trained policy's actions, and where?

    .venv/bin/python scripts/actor_loss_terms.py RUN_DIR [--updates 3000]

Loads RUN_DIR/policy.pt and the newest RUN_DIR/replay-*.npz, freezes the critics, and trains
copies of the actor further with: the default mix (direct term + score_loss_weight x
score-matching), the direct term mean L_A(s, a_0) alone, the score-matching term alone, and
both at weight 1. Prints, on 2000 replay states, the share of deterministic action
components at the bound, the spread of stochastic samples, and Q(s, pi) before and after.
(BENCHMARKS.md, "Why ALGD's Hopper return stays low".)
"""

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint
from algd_runtime.tools.diagnose import saturated_fraction


def measure(agent, probe, low, high):
    with torch.no_grad():
        det = agent.policy.act_deterministic(probe)
        samples = agent.policy.sample(probe.repeat_interleave(16, 0)).view(len(probe), 16, -1)
        q = agent.energy(probe, det)[1].mean()
    spread = float((samples.std(dim=1) / ((high - low) / 2)).mean())
    return f"saturated {saturated_fraction(det, low, high):.0%}, spread {spread:.3f}, Q(s,pi) {float(q):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--updates", type=int, default=3000)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = agent_from_checkpoint(load_checkpoint(args.run / "policy.pt"))
    replay = np.load(sorted(args.run.glob("replay-*.npz"))[-1])
    obs = torch.as_tensor(replay["obs"], dtype=torch.float32)
    rng = np.random.default_rng(0)
    probe = obs[rng.choice(len(obs), 2000, replace=False)]
    low = torch.as_tensor(base.spec.act_low, dtype=torch.float32)
    high = torch.as_tensor(base.spec.act_high, dtype=torch.float32)
    print(f"{args.run} before: {measure(base, probe, low, high)}")
    w = base.cfg.score_loss_weight
    for name, direct, score in ((f"default (1 x direct + {w:g} x score)", 1.0, w), ("direct term only", 1.0, 0.0),
                                ("score-matching term only", 0.0, 1.0), ("1 x direct + 1 x score", 1.0, 1.0)):
        agent = copy.deepcopy(base)
        torch.manual_seed(1)
        for _ in range(args.updates):
            o = obs[torch.as_tensor(rng.integers(0, len(obs), base.cfg.batch_size))]
            a0, a_tau, tau = agent.policy.sample_with_tau(o)
            loss = direct * agent.energy(o, a0)[0].mean()
            if score:
                loss = loss + score * F.mse_loss(agent.policy.score(o, a_tau, tau), agent.score_target(o, a_tau, tau))
            agent.actor_opt.zero_grad()
            loss.backward()  # the critics get gradients too, but only the actor steps
            agent.actor_opt.step()
        print(f"  {name:38s} after {args.updates} actor updates: {measure(agent, probe, low, high)}")


if __name__ == "__main__":
    main()
