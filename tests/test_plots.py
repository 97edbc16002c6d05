"""Sweep figures a reader can use at their native size: checked on matplotlib's objects (where things are drawn,
with what markers, scales and text sizes), not on pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from regularization.plots import DPI, SLOT, _slot, draw_figure, scale_for, sweep_panels
from regularization.summary import collect_jobs, collect_sweeps, comparison_rows, sweep_plot_data
from tests.test_summary import make_job


def panels_of(sweep_dir: Path, **kwargs) -> tuple[Figure, list, list[str]]:
    jobs = collect_jobs(sweep_dir)
    sweep = sweep_plot_data(jobs, **kwargs)
    if sweep.baseline:
        sweep.comparison = comparison_rows(jobs, sweep.metric, sweep.baseline)
    sweep.settings = [s for s in sweep.settings if s.finals]
    sweep.diverged = [s for s in sweep_plot_data(jobs).settings if s.diverged]
    panels = sweep_panels(sweep)
    fig, axes = draw_figure(panels)
    return fig, axes, [name for name, _ in panels]


def by_name(axes: list, names: list[str], name: str):
    return axes[names.index(name)]


def set_metric(job: Path, **values) -> None:
    path = job / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | values))


def test_legends_stay_inside_their_panel_and_text_reads_at_9_pt(tmp_path):
    """Two sweeps with a long name compared (the labels that ran into the next panel): every legend and every text
    lies inside its panel's slot, and no text is smaller than 9 pt."""
    for sweep in ("A", "B_weight_decay_sweep_with_a_rather_long_name"):
        for lambd in ("0", "1", "3"):
            for seed in (0, 1):
                make_job(tmp_path / sweep, [f"reg.lambd={lambd}", f"seed={seed}"], scale=1.0 + float(lambd) + seed)
    jobs = [j for d in ("A", "B_weight_decay_sweep_with_a_rather_long_name") for j in collect_jobs(tmp_path / d, sweep=d)]
    sweep = sweep_plot_data(jobs)
    fig, axes = draw_figure(sweep_panels(sweep))
    renderer = fig.canvas.get_renderer()
    for i, ax in enumerate(axes):
        slot = _slot(fig, i, min(3, len(axes))).transformed(fig.dpi_scale_trans)
        drawn = ax.get_tightbbox(renderer)
        assert slot.x0 <= drawn.x0 and drawn.x1 <= slot.x1 and slot.y0 <= drawn.y0 and drawn.y1 <= slot.y1, ax.get_title()
        assert ax.get_legend() is not None
    sizes = {t.get_fontsize() for t in fig.findobj(Text) if t.get_text()}
    assert min(sizes) >= 9
    assert fig.get_size_inches()[0] * DPI == pytest.approx(3 * SLOT[0] * DPI)


def test_one_epoch_curves_are_drawn_as_points(tmp_path):
    for lambd in ("0", "3"):
        job = make_job(tmp_path, [f"reg.lambd={lambd}"])
        metrics = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps(metrics | {"epochs": 1, "history": metrics["history"][:1]}))
    _, axes, names = panels_of(tmp_path)
    curves = by_name(axes, names, "curves.png")
    assert curves.lines and all(line.get_marker() == "o" for line in curves.lines)
    low, high = curves.get_xlim()
    assert [tick for tick in curves.get_xticks() if low <= tick <= high] == [1]  # whole epochs, not 0.9, 0.95, ...


@pytest.mark.parametrize(
    ("key", "values", "scale"),
    [("model.hidden1", [64, 256, 1024], "log"), ("data.n_train", [20, 80, 320], "log"), ("reg.dropout1", [0.1, 0.5, 0.9], "linear"),
     ("reg.lambd", [1, 3, 10], "linear")],
)  # fmt: skip
def test_size_like_keys_get_a_log_axis(key, values, scale):
    assert scale_for(values, key)["value"] == scale


def test_a_size_sweep_is_drawn_on_a_log_axis(tmp_path):
    for hidden in ("64", "256", "1024"):
        make_job(tmp_path, [f"model.hidden1={hidden}"], scale=100 / float(hidden))
    _, axes, names = panels_of(tmp_path)
    assert by_name(axes, names, "final_vs_model.hidden1.png").get_xscale() == "log"


def grid_sweep(tmp_path: Path, seeds: int = 2) -> Path:
    for lambd in ("0", "1", "3"):
        for lr in ("0.1", "0.2", "0.3"):
            for seed in range(seeds):
                make_job(tmp_path, [f"reg.lambd={lambd}", f"optim.lr={lr}", f"seed={seed}"], scale=1 + float(lambd) + float(lr) + seed)
    return tmp_path


def test_error_bars_at_the_same_x_are_dodged_and_the_legend_says_what_they_are(tmp_path):
    _, axes, names = panels_of(grid_sweep(tmp_path))
    ax = by_name(axes, names, "final_vs_reg.lambd.png")
    means = [line for line in ax.lines if line.get_linestyle() == "-" and len(line.get_xdata()) == 3]  # a test-loss line per lr
    assert len(means) == 3
    x_pixels = [line.get_transform().transform((line.get_xdata()[0], line.get_ydata()[0]))[0] for line in means]
    assert len({round(x, 1) for x in x_pixels}) == 3  # λ = 0 for each lr, drawn side by side
    assert ax.get_legend().get_title().get_text() == "mean of 2 seeds, bars: min–max"
    assert by_name(axes, names, "curves_optim.lr=0.1.png").get_legend().get_title().get_text() == "mean of 2 seeds, band: min–max"
    assert [t.get_text() for t in ax.get_legend().get_texts()][2:] == ["optim.lr=0.1", "optim.lr=0.2", "optim.lr=0.3"]


def test_one_seed_is_not_called_a_mean(tmp_path):
    _, axes, names = panels_of(grid_sweep(tmp_path, seeds=1))
    assert by_name(axes, names, "final_vs_reg.lambd.png").get_legend().get_title().get_text() == ""
    assert by_name(axes, names, "heat_map.png").get_title() == "test_loss: 1 seed"


def test_nine_settings_are_faceted_and_the_heat_map_shows_spread_and_gain(tmp_path):
    _, axes, names = panels_of(grid_sweep(tmp_path), baseline="reg.lambd=0")
    assert "curves.png" not in names
    assert [n for n in names if n.startswith("curves")] == ["curves_optim.lr=0.1.png", "curves_optim.lr=0.2.png", "curves_optim.lr=0.3.png"]
    assert len(by_name(axes, names, "curves_optim.lr=0.1.png").get_legend().get_texts()) == 3  # one line per λ
    heat = by_name(axes, names, "heat_map.png")
    assert heat.get_title() == "test_loss: mean ± std of 2 seeds" and all("±" in t.get_text() for t in heat.texts)
    gain = by_name(axes, names, "gain_heat_map.png")
    assert sum(t.get_text() == "baseline" for t in gain.texts) == 3 and sum("[" in t.get_text() for t in gain.texts) == 6
    comparison = by_name(axes, names, "comparison.png")
    assert any(list(line.get_ydata()) == [0, 0] for line in comparison.lines)  # the zero line
    assert comparison.get_title() == "test_loss − test_loss(reg.lambd=0), paired by seed"


def test_diverged_settings_and_unstable_runs_are_marked(tmp_path):
    for lambd in ("0.1", "1", "10"):
        for seed in (0, 1):
            make_job(tmp_path, [f"reg.lambd={lambd}", f"seed={seed}"], scale=float(lambd) + seed)
    make_job(tmp_path, ["reg.lambd=30", "seed=0"], status="diverged")
    make_job(tmp_path, ["reg.lambd=30", "seed=1"], status="diverged")
    set_metric(tmp_path / "reg.lambd=1,seed=0", unstable=True)
    _, axes, names = panels_of(tmp_path, baseline="reg.lambd=0.1")
    ax = by_name(axes, names, "final_vs_reg.lambd.png")
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 30  # at λ = 30, which has no result
    rings = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
    assert len(rings) == 1 and rings[0].get_xdata()[0] == 1
    labels = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
    assert "diverged (jobs): reg.lambd=30 (2)" in labels and "has a run flagged unstable" in labels
    comparison = by_name(axes, names, "comparison.png")
    assert [line.get_xdata()[0] for line in comparison.lines if line.get_marker() == "x"] == [30]  # no gain to draw there


def test_the_metric_drawn_is_the_chosen_one_and_named(tmp_path):
    for lambd in ("0", "3"):
        job = make_job(tmp_path, [f"reg.lambd={lambd}"])
        set_metric(job, test_acc=0.8, train_acc=0.9, best_test_acc=0.85 + float(lambd) / 100)
    _, axes, names = panels_of(tmp_path, metric="best_test_acc")
    ax = by_name(axes, names, "final_vs_reg.lambd.png")
    assert (ax.get_title(), ax.get_ylabel()) == ("best_test_acc vs reg.lambd", "best_test_acc")
    assert [round(y, 2) for y in ax.lines[0].get_ydata()] == [0.85, 0.88]
    _, axes, names = panels_of(tmp_path)  # test_acc, and train_acc beside it: the axis names what both are
    ax = by_name(axes, names, "final_vs_reg.lambd.png")
    assert (ax.get_title(), ax.get_ylabel()) == ("test_acc and train_acc vs reg.lambd", "accuracy")


def test_compared_sweeps_name_a_constant_that_differs_between_them(tmp_path):
    config = {"model": {"name": "linear"}, "seed": 0}
    for sweep, impl in (("a", "penalty"), ("b", "weight_decay")):
        for lambd in ("0", "3"):
            overrides = [f"reg.lambd={lambd}"] + ([f"reg.impl={impl}"] if sweep == "b" else [])
            job = make_job(tmp_path / sweep, overrides, config=config | {"reg": {"name": "l2", "lambd": float(lambd), "impl": impl}})
            (job / ".hydra" / "hydra.yaml").write_text(  # a sweep leaves its constant keys out of its job names
                "hydra:\n  job:\n    config:\n      override_dirname:\n        exclude_keys: [reg.impl]\n"
            )
    jobs = collect_sweeps([tmp_path / "a", tmp_path / "b"])
    labels = [s.label for s in sweep_plot_data(jobs).settings]
    sweeps = (("a", "penalty"), ("b", "weight_decay"))
    assert labels == [f"sweep={s}, reg.impl={impl}, reg.lambd={lambd}" for s, impl in sweeps for lambd in "03"]


def test_a_regularization_path_of_many_settings_is_a_line_on_an_axis_with_no_negative_lambdas(tmp_path):
    """λ = 0 and 59 values up to 10 (a symlog axis): no tick left of 0 (λ is never negative), and a path through
    more than MAX_MARKERS settings is drawn as lines without markers; the curves are one collection, coloured by λ."""
    from matplotlib.collections import LineCollection

    from regularization.plots import MAX_MARKERS

    lambdas = [0.0] + [10 ** (-3 + 4 * i / 58) for i in range(59)]
    assert len(lambdas) > MAX_MARKERS
    for lambd in lambdas:
        make_job(tmp_path, [f"reg.lambd={lambd:.6g}"], scale=1.0 + lambd)
    _, axes, names = panels_of(tmp_path)
    path = by_name(axes, names, "final_vs_reg.lambd.png")
    assert path.get_xscale() == "symlog"
    low, high = path.get_xlim()
    assert low < 0 and not [t for t in path.get_xticks() if low <= t < 0]
    assert path.lines and all(line.get_marker() in (None, "None", "") for line in path.lines)
    curves = by_name(axes, names, "curves.png")
    assert [len(c.get_segments()) for c in curves.collections if isinstance(c, LineCollection)] == [60, 60]  # test, train
