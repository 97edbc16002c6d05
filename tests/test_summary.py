"""Sweep summary from job dirs alone: per-job rows, mean ± std per setting, plots, scripts/summarize.py."""

from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image

from regularization.logging import RunLogger
from regularization.plots import draw_curves, set_x_scale
from regularization.summary import collect_jobs, console_report, summarize_sweep, sweep_settings, swept_key

ROOT = Path(__file__).resolve().parents[1]


def fake_history(scale: float, epochs: int = 4) -> list[dict]:
    """Losses that fall with the epoch; ‖w‖ = scale."""
    return [{"epoch": e, "train_loss": scale / e, "test_loss": 2 * scale / e, "weight_l2_norm": scale} for e in range(1, epochs + 1)]


def make_job(sweep: Path, overrides: list[str], status: str | None = "completed", scale: float = 1.0) -> Path:
    """A job dir as a Hydra multirun leaves it: .hydra/overrides.yaml and (unless status is None) metrics.json."""
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status == "failed":
        metrics = {"status": "failed", "error": "RuntimeError: boom"}
    elif status is not None:
        history = fake_history(scale)
        if status == "diverged":
            history = history[:1]
        metrics = {"status": status, "epochs": history[-1]["epoch"], **history[-1], "wall_s": 0.5, "history": history}
        del metrics["epoch"]
        metrics |= {"train_acc": None, "test_acc": None}
    if status is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def lambda_sweep(tmp_path: Path) -> Path:
    """λ ∈ {0.001, 0.1, 10} × seeds {0, 1}, plus λ = 30 diverged and λ = 100 failed."""
    sweep = tmp_path / "sweep"
    for lambd in ("0.001", "0.1", "10"):
        for seed in (0, 1):
            make_job(sweep, [f"reg.lambd={lambd}", f"seed={seed}"], scale=float(lambd) + seed)
    make_job(sweep, ["reg.lambd=30", "seed=0"], status="diverged")
    make_job(sweep, ["reg.lambd=100", "seed=0"], status="failed")
    return sweep


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100


def test_rows_per_job_in_numeric_order_with_status(lambda_sweep):
    rows, _ = summarize_sweep(lambda_sweep)
    assert [r["job"] for r in rows] == [
        "reg.lambd=0.001,seed=0",
        "reg.lambd=0.001,seed=1",
        "reg.lambd=0.1,seed=0",
        "reg.lambd=0.1,seed=1",
        "reg.lambd=10,seed=0",
        "reg.lambd=10,seed=1",
        "reg.lambd=30,seed=0",
        "reg.lambd=100,seed=0",
    ]
    assert [r["status"] for r in rows[-2:]] == ["diverged", "failed"]
    with open(lambda_sweep / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert float(table[4]["weight_l2_norm"]) == 10.0 and table[7]["status"] == "failed"
    md = (lambda_sweep / "summary.md").read_text()
    assert "| reg.lambd=100,seed=0 | failed |" in md


def test_mean_and_std_per_setting_over_completed_seeds(lambda_sweep):
    rows, stats = summarize_sweep(lambda_sweep)
    by_setting = {s["setting"]: s for s in stats}
    assert set(by_setting) == {"reg.lambd=0.001", "reg.lambd=0.1", "reg.lambd=10", "reg.lambd=30", "reg.lambd=100"}
    s = by_setting["reg.lambd=10"]
    assert (s["completed"], s["jobs"]) == (2, 2)
    assert s["weight_l2_norm_mean"] == pytest.approx(10.5)  # ‖w‖ = 10 and 11
    assert s["weight_l2_norm_std"] == pytest.approx(0.5**0.5)  # sample std of {10, 11}
    assert s["test_loss_mean"] == pytest.approx((2 * 10 / 4 + 2 * 11 / 4) / 2)
    assert by_setting["reg.lambd=100"]["completed"] == 0 and by_setting["reg.lambd=100"]["test_loss_mean"] is None
    md = (lambda_sweep / "summary.md").read_text()
    assert "Mean ± std over seeds" in md and "| reg.lambd=10 | 2/2 |" in md and "10.5 ± 0.71" in md
    with open(lambda_sweep / "summary_by_setting.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert "Mean ± std over seeds" in console_report(rows, stats)


def test_no_mean_std_table_with_one_seed_per_setting(tmp_path):
    for lambd in ("0", "3"):
        make_job(tmp_path, [f"reg.lambd={lambd}"])
    _, stats = summarize_sweep(tmp_path)
    assert stats is None
    assert "Mean ± std" not in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "summary_by_setting.csv").exists()


def test_plots_of_a_lambda_sweep_are_pngs(lambda_sweep):
    summarize_sweep(lambda_sweep)
    for name in ("curves.png", "final_vs_reg.lambd.png", "weight_norm_vs_reg.lambd.png", "summary.png"):
        assert_png(lambda_sweep / name)


def test_failed_and_diverged_jobs_are_left_out_of_the_plots(lambda_sweep):
    jobs = collect_jobs(lambda_sweep)
    key = swept_key(jobs)
    assert key == "reg.lambd"
    settings = sweep_settings(jobs, key)
    assert [(s.value, len(s.finals)) for s in settings] == [(0.001, 2), (0.1, 2), (10, 2), (30, 0), (100, 0)]
    fig = Figure()
    ax = fig.add_subplot()
    draw_curves(ax, [s for s in settings if s.finals])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["reg.lambd=0.001 (2 seeds)", "reg.lambd=0.1 (2 seeds)", "reg.lambd=10 (2 seeds)"]
    test, train = (c for c in ax.collections if isinstance(c, LineCollection))
    assert len(test.get_segments()) == len(train.get_segments()) == 3  # a curve per setting
    assert test.get_linestyle() != train.get_linestyle()  # solid and dashed


def test_mean_curve_and_its_spread(tmp_path):
    make_job(tmp_path, ["reg.lambd=1", "seed=0"], scale=1.0)
    make_job(tmp_path, ["reg.lambd=1", "seed=1"], scale=3.0)
    fig = Figure()
    ax = fig.add_subplot()
    draw_curves(ax, sweep_settings(collect_jobs(tmp_path), None))
    test_curves = next(c for c in ax.collections if isinstance(c, LineCollection))
    assert list(test_curves.get_segments()[0][:, 1]) == pytest.approx([2 * 2 / e for e in range(1, 5)])  # mean of 2/e and 6/e
    bands = [c for c in ax.collections if not isinstance(c, LineCollection)]
    assert len(bands) == 2  # a min-max band around the test and the train curve


def test_log_x_when_the_values_span_decades():
    fig = Figure()
    linear, log_x, symlog = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    set_x_scale(linear, [0, 3])
    set_x_scale(log_x, [0.001, 0.1, 10])
    set_x_scale(symlog, [0, 0.01, 1])
    assert (linear.get_xscale(), log_x.get_xscale(), symlog.get_xscale()) == ("linear", "log", "symlog")


def test_classification_sweep_plots_accuracy_and_no_weight_norm(tmp_path):
    for rate in ("0.2", "0.5"):
        job = make_job(tmp_path, [f"reg.dropout1={rate}"])
        metrics = json.loads((job / "metrics.json").read_text())
        metrics |= {"train_acc": 0.9, "test_acc": 0.8}
        (job / "metrics.json").write_text(json.dumps(metrics))
    summarize_sweep(tmp_path)
    assert_png(tmp_path / "final_vs_reg.dropout1.png")
    assert not (tmp_path / "weight_norm_vs_reg.dropout1.png").exists()


def test_no_numeric_key_plot_for_two_varying_keys(tmp_path):
    make_job(tmp_path, ["reg.lambd=1", "optim.lr=0.1"])
    make_job(tmp_path, ["reg.lambd=3", "optim.lr=0.3"])
    summarize_sweep(tmp_path)
    assert_png(tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["curves.png"]


def test_a_job_without_metrics_json_is_read_back_from_its_event_files(tmp_path):
    """A job killed mid-run: failed, with its last evaluation from the event files, out of the plots."""
    make_job(tmp_path, ["reg.lambd=0"])
    killed = make_job(tmp_path, ["reg.lambd=3"], status=None)
    logger = RunLogger(killed, epochs=10)
    for epoch in (1, 2):
        logger.log_eval(epoch, {"train_loss": 4.0 / epoch, "test_loss": 8.0 / epoch, "weight_l2_norm": 1.5})
    logger.close()
    rows, _ = summarize_sweep(tmp_path)
    row = rows[1]
    assert (row["status"], row["epochs"], row["test_loss"], row["weight_l2_norm"]) == ("failed", 2, 4.0, 1.5)
    assert [s.label for s in sweep_settings(collect_jobs(tmp_path), "reg.lambd") if s.finals] == ["reg.lambd=0"]


def run_summarize_script(monkeypatch, *args: str) -> int:
    """scripts/summarize.py ARGS as `python scripts/summarize.py` runs it, in-process (no second torch import)."""
    monkeypatch.setattr(sys, "argv", ["summarize.py", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "scripts" / "summarize.py"), run_name="__main__")
    return exit_.value.code


def test_summarize_script_rebuilds_from_job_dirs(lambda_sweep, monkeypatch, capsys):
    assert run_summarize_script(monkeypatch, str(lambda_sweep)) == 0
    out = capsys.readouterr().out
    assert "reg.lambd=100,seed=0" in out and "Mean ± std" in out
    for name in ("summary.csv", "summary.md", "summary_by_setting.csv", "curves.png", "summary.png"):
        assert (lambda_sweep / name).exists()


def test_summarize_script_refuses_a_dir_without_jobs(tmp_path, monkeypatch, capsys):
    assert run_summarize_script(monkeypatch, str(tmp_path)) == 2
    assert "no job dirs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_each_panel_png_is_its_slot_of_the_summary(lambda_sweep):
    """The sweep figure is drawn once; every panel's PNG is its slot of summary.png, pixel for pixel."""
    summarize_sweep(lambda_sweep)
    names = ("curves.png", "final_vs_reg.lambd.png", "weight_norm_vs_reg.lambd.png")
    with Image.open(lambda_sweep / "summary.png") as summary:
        whole = np.asarray(summary)
    width = whole.shape[1] // len(names)
    for i, name in enumerate(names):
        with Image.open(lambda_sweep / name) as panel:
            assert np.array_equal(np.asarray(panel), whole[:, i * width : (i + 1) * width])
    assert len({np.asarray(Image.open(lambda_sweep / n)).tobytes() for n in names}) == 3  # three different panels


def test_long_lived_heap_frozen_still_collects_new_garbage():
    import gc
    import weakref

    from regularization.parallel import long_lived_heap_frozen

    class Node:
        pass

    with long_lived_heap_frozen():
        assert gc.get_freeze_count() > 0
        cycle = Node()
        cycle.self = cycle
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert ref() is None  # a cycle made inside the block is collected
    assert gc.get_freeze_count() == 0
