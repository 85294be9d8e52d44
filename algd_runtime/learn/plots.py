"""PNG plots for the demo and fine-tuning reports (matplotlib, no display needed).

Each function writes one figure and returns its path. matplotlib is imported lazily; without
it (it comes with the [train] extra) MissingPlotting says how to get it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

BUDGET_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
# An outline, so that a bar of height 0 (an episode without cost) still shows as a line.
BAR_STYLE = {"edgecolor": "black", "linewidth": 0.6}


class MissingPlotting(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingPlotting("plots need matplotlib: pip install 'algd-runtime[train]'") from None
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)  # pyplot keeps every figure it made until closed: a long run would grow
    return out


def training_curves(run_dir: str | Path, out: str | Path, title: str = "training") -> Path:
    """Evaluation return and cost (against the limit) and lambda over training steps, from
    a run folder's progress.csv and train.csv."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    ev, tr = _rows(run_dir / "progress.csv"), _rows(run_dir / "train.csv")
    if not ev and not tr:
        raise FileNotFoundError(f"{run_dir}: no progress.csv or train.csv to plot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, what, panel in ((axes[0], "return", "return"), (axes[1], "cost", "cost per episode")):
        if ev:
            mean, std = _col(ev, f"{what}_mean"), _col(ev, f"{what}_std")
            # Costs are >= 0: the bar below the mean stops at 0.
            below = [min(s, m) for m, s in zip(mean, std)] if what == "cost" else std
            ax.errorbar(_col(ev, "step"), mean, yerr=[below, std], marker="o", ms=3, capsize=2, label="evaluation")
        if tr:
            ax.plot(_col(tr, "step"), _col(tr, f"train_{what}"), alpha=0.6, label="training episodes")
        if ev and what == "cost":
            ax.axhline(_col(ev, "cost_limit")[0], label="budget", **BUDGET_STYLE)
        ax.set(title=panel, xlabel="environment steps")
        ax.legend(fontsize=8)
    ax = axes[2]
    if tr:
        ax.plot(_col(tr, "step"), _col(tr, "lambda"))
    ax.set(title="Lagrange multiplier", xlabel="environment steps")
    fig.suptitle(title)
    return _save(fig, Path(out))


def episodes(returns: Sequence[float], costs: Sequence[float], limit: float, out: str | Path, title: str,
             marked: Sequence[int] = (), marked_label: str = "") -> Path:
    """Return and cost of each episode in order, the cost against the budget line; `marked`
    episodes (e.g. ended by the guard) get a marker."""
    plt = _pyplot()
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = list(range(1, len(returns) + 1))
    ax_r.plot(x, returns, marker="o", ms=3)
    ax_r.set(title="return per episode", xlabel="episode")
    ax_c.bar(x, costs, color=["tab:orange" if c > limit else "tab:blue" for c in costs], **BAR_STYLE)
    ax_c.axhline(limit, label=f"budget {limit:g}", **BUDGET_STYLE)
    if marked:
        ax_c.scatter([x[i] for i in marked], [costs[i] for i in marked], marker="v", color="k", zorder=3,
                     label=marked_label)
    ax_c.set(title="cost per episode (orange: over the budget)", xlabel="episode")
    ax_c.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, Path(out))


def before_after(before: dict, after: dict, out: str | Path, title: str) -> Path:
    """Per-episode cost and return on the target, before and after fine-tuning (same seeds)."""
    plt = _pyplot()
    fig, (ax_c, ax_r) = plt.subplots(1, 2, figsize=(11, 3.6))
    n = len(before["costs"])
    x = list(range(1, n + 1))
    w = 0.4
    ax_c.bar([i - w / 2 for i in x], before["costs"], w, label="before", **BAR_STYLE)
    ax_c.bar([i + w / 2 for i in x], after["costs"], w, label="after", **BAR_STYLE)
    ax_c.axhline(before["cost_limit"], label=f"budget {before['cost_limit']:g}", **BUDGET_STYLE)
    ax_c.set(title="cost per evaluation episode", xlabel="episode (same start states)")
    ax_c.legend(fontsize=8)
    ax_r.bar([i - w / 2 for i in x], before["returns"], w, label="before", **BAR_STYLE)
    ax_r.bar([i + w / 2 for i in x], after["returns"], w, label="after", **BAR_STYLE)
    ax_r.set(title="return per evaluation episode", xlabel="episode")
    ax_r.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, Path(out))


def guidance_curves(lines: dict, limit: float | None, out: str | Path) -> Path:
    """Episode cost and return against the guidance scale, one line per lambda:
    lines = {lambda's name: [(w, cost mean, cost half-interval, return mean, return half-interval), ...]}.""" 
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in lines.items():
        w = [p[0] for p in points]
        axes[0].errorbar(w, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3,
                         label=f"lambda {name}")
        axes[1].errorbar(w, [p[3] for p in points], yerr=[p[4] for p in points], marker="o", capsize=3,
                         label=f"lambda {name}")
    if limit is not None:
        axes[0].axhline(limit, color="red", linestyle="--", label="limit")
    for ax, what in zip(axes, ("episode cost", "episode return")):
        ax.set_xlabel("guidance scale w")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    fig.suptitle("run-time guidance: cost and return (mean, 95 % interval)")
    return _save(fig, Path(out))

