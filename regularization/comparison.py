"""Paired comparisons against a baseline setting: the gain of every setting over the baseline, with a 95% interval.

Jobs that share a seed share their initial weights and batch order, so the gain of a setting over the baseline is
measured per seed, d_s = m(setting, s) − m(baseline, s), and its interval is Student's t over those pairs:
d̄ ± t₀.₉₇₅,ₙ₋₁ · s_d / √n. Pairing removes the seed-to-seed spread that both settings share. Where fewer than
two seeds are common to both (the sweeps ran different seeds), the gain is the difference of the means with
Welch's interval (unequal variances), and the row says so (``n_pairs`` 0).

The baseline is a ``KEY=VALUE`` of a swept key (``reg.lambd=0``): each setting is compared with the baseline
setting that has the same values of the other swept keys (a gain per λ for each dropout rate, say).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
# metrics.json fields that are bookkeeping, not metrics of the model (epochs, times, group sizes).
NOT_METRICS = frozenset({"epochs", "wall_s", "group_wall_s", "group_size"})


class ComparisonError(ValueError):
    """A baseline or metric that the sweep does not have; the message names it and what is there."""


@dataclass(frozen=True)
class Gain:
    """m(setting) − m(baseline): its mean, 95% interval, the number of seed pairs (0: unpaired, Welch)."""

    mean: float
    low: float
    high: float
    n_pairs: int
    method: str  # "paired t", "Welch" or "one pair" (no interval)


def scipy_stats() -> Any:
    """scipy.stats, imported on first use: a sweep without a baseline needn't pay its 0.5 s import."""
    from scipy import stats

    return stats


def _interval(result: Any) -> tuple[float, float]:
    ci = result.confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def gain(baseline: dict[Any, float], other: dict[Any, float]) -> Gain | None:
    """The gain of ``other`` over ``baseline``, each a metric by seed: paired by seed when two or more seeds are
    common to both, else Welch's interval on the two groups. None when either side has no value."""
    common = sorted(baseline.keys() & other.keys(), key=str)
    if len(common) >= 2:
        diffs = [other[s] - baseline[s] for s in common]
        mean = statistics.fmean(diffs)
        if math.isclose(max(diffs), min(diffs), rel_tol=1e-9, abs_tol=1e-12):  # no spread (to rounding): the interval is the point
            return Gain(mean, mean, mean, len(common), "paired t")
        return Gain(mean, *_interval(scipy_stats().ttest_1samp(diffs, 0.0)), len(common), "paired t")
    a, b = list(other.values()), list(baseline.values())
    if not a or not b:
        return None
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(common) == 1 and len(a) == len(b) == 1:
        return Gain(mean, math.nan, math.nan, 1, "one pair")
    if len(a) < 2 or len(b) < 2:
        return Gain(mean, math.nan, math.nan, 0, "Welch")
    return Gain(mean, *_interval(scipy_stats().ttest_ind(a, b, equal_var=False)), 0, "Welch")


def parse_baseline(text: str) -> tuple[str, str]:
    """``reg.lambd=0`` -> (``reg.lambd``, ``0``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ComparisonError(f"baseline: expected KEY=VALUE (e.g. reg.lambd=0), got {text!r}")
    return key.strip().lstrip("+"), value.strip()


def same_value(value: Any, text: str) -> bool:
    """Whether a job's value of a key is the one written as text (``1e-4`` matches 0.0001; ``none`` matches none)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return str(value) == text


def available_metrics(metrics: list[dict[str, Any]]) -> list[str]:
    """The metrics.json fields with a number in some job: final, best-epoch and validation metrics alike."""
    found = {
        key
        for m in metrics
        for key, value in m.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in NOT_METRICS and not key.endswith("_epoch")
    }
    return sorted(found)


def check_metric(metric: str, metrics: list[dict[str, Any]]) -> None:
    available = available_metrics(metrics)
    if metric not in available:
        raise ComparisonError(f"metric: {metric!r} is in no job's metrics.json; available: {', '.join(available)}")


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


Record = tuple[dict[str, Any], float | None]  # a job's keys (swept ones and the seed) and its metric


def compare(records: list[Record], swept: list[str], baseline: str, seed_key: str = "seed") -> list[dict[str, Any]]:
    """The gain over the baseline of each setting, for each combination of the other swept keys.

    ``records``: one per job, its keys (the swept ones and the seed) and its metric (None unless it completed with
    a finite value). Returns one row per compared setting: the other keys, the baseline key, then n_pairs,
    gain_mean, ci_low, ci_high and method; the baseline's own setting is left out (its gain is 0 by definition).
    """
    key, text = parse_baseline(baseline)
    if key not in swept:
        raise ComparisonError(f"baseline: {key} is not a swept key of this sweep; swept keys: {', '.join(swept) or 'none'}")
    values = list(dict.fromkeys(keys.get(key) for keys, _ in records))
    if not any(same_value(v, text) for v in values):
        raise ComparisonError(f"baseline: {key}={text} matches no job; {key} takes {', '.join(_label(v) for v in values)}")
    others = [k for k in swept if k != key]
    by_setting: dict[tuple, dict[Any, float]] = {}
    for keys, metric in records:
        seeds = by_setting.setdefault(tuple(keys.get(k) for k in [*others, key]), {})
        if metric is not None and math.isfinite(metric):
            seeds[keys.get(seed_key)] = metric
    rows = []
    for setting, seeds in by_setting.items():
        *rest, value = setting
        if same_value(value, text):
            continue
        base = next((s for k, s in by_setting.items() if list(k[:-1]) == rest and same_value(k[-1], text)), None)
        result = gain(base, seeds) if base is not None else None
        row = dict(zip(others, rest, strict=True)) | {key: value}
        if result is None:
            row |= {"n_pairs": 0, "gain_mean": None, "ci_low": None, "ci_high": None, "method": "no result"}
        else:
            nan = math.isnan(result.low)
            row |= {"n_pairs": result.n_pairs, "gain_mean": result.mean, "ci_low": None if nan else result.low,
                    "ci_high": None if nan else result.high, "method": result.method}  # fmt: skip
        rows.append(row)
    return rows
