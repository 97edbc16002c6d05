"""Paired comparisons against a baseline (regularization.comparison), the metric as a choice, and the CLI and config
that ask for them: statistics against hand values and scipy, errors that name what is there, a sweep end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy import stats

from regularization.comparison import ComparisonError, available_metrics, compare, gain
from regularization.summary import SweepSummary, check_baseline_against_overrides, summarize_sweep
from tests.conftest import run_train
from tests.test_summary import run_summarize_script

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def test_the_gain_is_paired_by_seed_with_a_student_t_interval():
    baseline = {0: 1.0, 1: 2.0, 2: 3.0}
    other = {2: 3.9, 0: 1.5, 1: 2.1}  # in another order: paired by seed, not by position
    result = gain(baseline, other)
    # d = 0.5, 0.1, 0.9: mean 0.5, sample std 0.4, half-width t₀.₉₇₅,₂ · 0.4 / √3
    half = T_975_2 * 0.4 / math.sqrt(3)
    assert (result.n_pairs, result.method) == (3, "paired t")
    assert (result.mean, result.low, result.high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))


def test_pairing_removes_the_spread_that_seeds_share():
    """A constant gain of 0.1 on seeds whose own values spread widely: paired, the interval is the point."""
    baseline = {0: 0.70, 1: 0.80, 2: 0.90}
    result = gain(baseline, {s: v + 0.1 for s, v in baseline.items()})
    assert (result.mean, result.low, result.high) == pytest.approx((0.1, 0.1, 0.1))
    unpaired = gain(baseline, {s + 3: v + 0.1 for s, v in baseline.items()})
    assert unpaired.method == "Welch" and unpaired.low < 0 < unpaired.high  # the same numbers without pairs: no sign


def test_unpaired_seeds_fall_back_to_welchs_interval():
    baseline, other = {0: 1.0, 1: 2.0, 2: 4.0}, {3: 3.0, 4: 5.0, 5: 6.0, 6: 8.0}
    result = gain(baseline, other)
    assert (result.n_pairs, result.method) == (0, "Welch")
    a, b = [3.0, 5.0, 6.0, 8.0], [1.0, 2.0, 4.0]
    va, vb = stats.tvar(a) / 4, stats.tvar(b) / 3  # Welch–Satterthwaite degrees of freedom, by hand
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = sum(a) / 4 - sum(b) / 3
    assert (result.mean, result.low, result.high) == pytest.approx((diff, diff - half, diff + half))


def test_one_pair_has_a_gain_and_no_interval():
    result = gain({0: 1.0}, {0: 1.5})
    assert (result.mean, result.n_pairs, result.method) == (0.5, 1, "one pair") and math.isnan(result.low)


def records(values: dict[tuple[float, float], list[float]]) -> list[tuple[dict, float]]:
    """(λ, rate) -> the metric for seeds 0, 1, ...: compare's input."""
    return [({"reg.lambd": lambd, "reg.dropout1": rate, "seed": s}, v) for (lambd, rate), vs in values.items() for s, v in enumerate(vs)]


def test_every_setting_against_the_baseline_with_the_same_other_keys():
    table = {(0.0, 0.2): [0.80, 0.82], (1.0, 0.2): [0.85, 0.86], (0.0, 0.5): [0.70, 0.72], (1.0, 0.5): [0.71, 0.75]}
    rows = compare(records(table), ["reg.dropout1", "reg.lambd"], "reg.lambd=0")
    assert [(r["reg.dropout1"], r["reg.lambd"], r["n_pairs"]) for r in rows] == [(0.2, 1.0, 2), (0.5, 1.0, 2)]
    assert [r["gain_mean"] for r in rows] == pytest.approx([0.045, 0.02])  # (0.05 + 0.04) / 2, (0.01 + 0.03) / 2


def test_a_lost_seed_leaves_its_pair_out():
    table = {(0.0, 0.2): [0.80, 0.82, 0.81], (1.0, 0.2): [0.85, None, 0.83]}  # seed 1 diverged
    (row,) = compare(records(table), ["reg.lambd"], "reg.lambd=0")
    assert (row["n_pairs"], row["gain_mean"]) == (2, pytest.approx(0.035))


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ("reg.lambd=5", "baseline: reg.lambd=5 matches no job; reg.lambd takes 0, 1"),
        ("reg.lamd=0", "baseline: reg.lamd is not a swept key of this sweep; swept keys: reg.lambd"),
        ("reg.lambd", "baseline: expected KEY=VALUE"),
    ],
)
def test_a_baseline_the_sweep_does_not_have_is_named_with_what_it_has(baseline, message):
    with pytest.raises(ComparisonError, match=message):
        compare(records({(0.0, 0.2): [0.8], (1.0, 0.2): [0.9]}), ["reg.lambd"], baseline)


def test_the_metrics_are_the_numbers_of_metrics_json():
    metrics = [{"status": "completed", "epochs": 3, "test_acc": 0.8, "best_test_acc": 0.81, "best_test_acc_epoch": 2, "val_acc": 0.7,
                "test_acc_at_best_val": 0.79, "wall_s": 1.0, "unstable": False, "train_acc": None}]  # fmt: skip
    assert available_metrics(metrics) == ["best_test_acc", "test_acc", "test_acc_at_best_val", "val_acc"]


def test_the_command_line_check_refuses_a_baseline_value_the_sweep_does_not_run():
    check_baseline_against_overrides("reg.lambd=1e0", ["reg.lambd=0,1,3", "seed=0,1"])
    check_baseline_against_overrides("reg=none", ["reg=none,l2"])
    check_baseline_against_overrides("reg.lambd=5", ["reg.lambd=interval(0, 10)"])  # a search's: checked at the end
    with pytest.raises(ComparisonError, match="reg.lambd=5 matches no job; reg.lambd takes 0, 1, 3"):
        check_baseline_against_overrides("reg.lambd=5", ["reg.lambd=0,1,3"])


# ---- from job dirs and the command line ------------------------------------------------------------------------------


def make_job(sweep: Path, lambd: str, seed: int, acc: float, epochs: int = 2) -> None:
    """A completed classification job: its test accuracy ``acc`` at the end, ``acc + 0.01`` at its best epoch."""
    job = sweep / f"reg.lambd={lambd},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- reg.lambd={lambd}\n- seed={seed}\n")
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "train_acc": acc, "test_acc": acc} for e in range(1, epochs + 1)]
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    metrics = {"status": "completed", "epochs": epochs, **final, "best_test_acc": acc + 0.01, "history": history}
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def acc_sweep(tmp_path: Path) -> Path:
    """λ ∈ {0, 1, 3} × seeds 0, 1, 2; accuracy 0.80 + 0.01·seed at λ = 0, and λ adds 0.02·λ plus a little per seed."""
    sweep = tmp_path / "sweep"
    for lambd in (0, 1, 3):
        for seed in range(3):
            make_job(sweep, str(lambd), seed, 0.80 + 0.01 * seed + 0.02 * lambd + 0.001 * lambd * seed)
    return sweep


def test_summarize_writes_the_gains_their_table_and_their_plot(acc_sweep, monkeypatch, capsys):
    assert run_summarize_script(monkeypatch, str(acc_sweep), "--baseline", "reg.lambd=0", "--metric", "best_test_acc") == 0
    with open(acc_sweep / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["reg.lambd", "n_pairs", "gain_mean", "ci_low", "ci_high", "method"]
    assert [(r["reg.lambd"], r["n_pairs"], r["method"]) for r in rows] == [("1", "3", "paired t"), ("3", "3", "paired t")]
    assert float(rows[1]["gain_mean"]) == pytest.approx(0.063)  # 0.06 + 0.003 · mean seed 1
    assert float(rows[1]["ci_low"]) < 0.063 < float(rows[1]["ci_high"])
    md = (acc_sweep / "summary.md").read_text()
    assert "### Gain in best_test_acc over reg.lambd=0, paired by seed (95% CI)" in md
    assert "Metric of the plots and the comparison: best_test_acc" in md
    assert (acc_sweep / "comparison.png").stat().st_size > 0
    assert "Gain in best_test_acc over reg.lambd=0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "reg.lambd=5"], "--baseline: reg.lambd=5 matches no job; reg.lambd takes 0, 1, 3"),
        (["--metric", "best_tst_acc"], "--metric: 'best_tst_acc' is in no job's metrics.json; available: best_test_acc, test_acc, test_"),
    ],
)
def test_summarize_refuses_a_baseline_or_metric_the_sweep_lacks_before_writing(acc_sweep, monkeypatch, capsys, args, message):
    assert run_summarize_script(monkeypatch, str(acc_sweep), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (acc_sweep / "summary.md").exists()


def test_a_summary_without_a_baseline_leaves_no_stale_comparison(acc_sweep):
    summarize_sweep(acc_sweep, baseline="reg.lambd=0")
    summarize_sweep(acc_sweep)
    assert not (acc_sweep / "comparison.csv").exists() and not (acc_sweep / "comparison.png").exists()


def test_a_metric_no_job_has_fails_the_sweep_after_summarizing_it_with_the_default(acc_sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(acc_sweep)}}, "summary": {"baseline": None, "metric": "val_acc"}})
    with pytest.raises(SystemExit, match="summary.metric: 'val_acc' is in no job's metrics.json; available: best_test_acc"):
        SweepSummary().on_multirun_end(config)
    assert "Metric of the plots and the comparison: test_acc" in (acc_sweep / "summary.md").read_text()


@pytest.mark.slow
def test_a_sweep_compares_with_its_baseline_from_the_config(tmp_path):
    """summary.baseline and summary.metric on the command line, under the vectorized launcher (seconds)."""
    args = ["-m", "hydra/launcher=vectorized", "reg.lambd=0,1,3", "seed=0,1,2", "trainer.epochs=2", 'summary.baseline="reg.lambd=0"',
            "summary.metric=best_test_loss"]  # fmt: skip
    run_train(args, tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    with open(sweep / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["reg.lambd"]), int(r["n_pairs"])) for r in rows] == [(1.0, 3), (3.0, 3)]
    assert all(float(r["ci_low"]) <= float(r["gain_mean"]) <= float(r["ci_high"]) for r in rows)
    assert "### Gain in best_test_loss over reg.lambd=0" in (sweep / "summary.md").read_text()
    assert {"comparison.png", "summary.png", "final_vs_reg.lambd.png"} <= {p.name for p in sweep.glob("*.png")}
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir())[0] == "reg.lambd=0,seed=0"  # summary.* names no job


@pytest.mark.slow
def test_a_sweep_whose_baseline_it_does_not_run_stops_before_it_trains(tmp_path):
    proc = run_train(["-m", "reg.lambd=0,1", "trainer.epochs=1", 'summary.baseline="reg.lambd=5"'], tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "summary.baseline: reg.lambd=5 matches no job; reg.lambd takes 0, 1" in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()
