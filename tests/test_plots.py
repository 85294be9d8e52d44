"""The report plots say what they show: their own title, no negative costs, every bar seen."""

import pytest

pytest.importorskip("matplotlib")
from algd_runtime.learn import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    kept = []

    def keep(fig, out):
        kept.append(fig)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def test_training_curves_carry_their_title_and_cost_bars_stop_at_zero(tmp_path, figures):
    (tmp_path / "progress.csv").write_text(
        "step,return_mean,return_std,cost_mean,cost_std,cost_limit\n"
        "1000,-2.0,3.0,1.0,4.0,5.0\n2000,1.0,1.0,0.0,0.0,5.0\n")
    plots.training_curves(tmp_path, tmp_path / "curves.png", title="my run")
    fig = figures[0]
    assert fig._suptitle.get_text() == "my run"
    return_ax, cost_ax = fig.axes[:2]
    assert [ax.get_title() for ax in fig.axes] == ["return", "cost per episode", "Lagrange multiplier"]
    cost_bars = cost_ax.containers[0].lines[2][0].get_segments()  # (x, low) .. (x, high) per point
    assert [seg[0][1] for seg in cost_bars] == [0.0, 0.0]  # 1 - min(4, 1), not 1 - 4
    return_bars = return_ax.containers[0].lines[2][0].get_segments()
    assert [seg[0][1] for seg in return_bars] == [-5.0, 0.0]  # returns may go below 0


def test_zero_cost_bars_are_drawn_with_an_outline(tmp_path, figures):
    plots.episodes([1.0, 2.0], [0.0, 3.0], 2.0, tmp_path / "e.png", "episodes")
    bars = figures[0].axes[1].patches
    assert bars[0].get_height() == 0 and bars[0].get_linewidth() > 0 and bars[0].get_edgecolor()[3] > 0


def test_saving_a_plot_releases_its_figure(tmp_path):
    import matplotlib.pyplot as plt

    from algd_runtime.learn.plots import _save

    before = len(plt.get_fignums())
    fig, _ = plt.subplots()
    _save(fig, tmp_path / "x.png")
    assert (tmp_path / "x.png").is_file() and len(plt.get_fignums()) == before
