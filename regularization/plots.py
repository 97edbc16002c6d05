"""Figures of a run and of a sweep, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

A sweep's jobs come grouped into settings (a setting = the job's swept values without ``seed``). With several
seeds, a line is the mean over the seeds and the band (or error bar) around it their min-max spread; the legend's
title says which. Every panel with more than one line has a legend beside its axes, inside the panel's slot (or,
for many values of one numeric key, a colour bar). Text is at least 9 pt at the PNG's native size (DPI 100).

Panels of a sweep: the loss curves (and, for classification, the accuracy curves) of every setting, one panel per
value of a key when the settings are too many for one; the chosen metric (``Sweep.metric``, with its train
counterpart) against each numeric swept key, one line per combination of the other swept keys (a method key such
as ``reg`` or ``reg.impl`` then gets one line per method), lines at the same x dodged apart; a heat map for a grid
over two numeric keys, each cell's mean and std; ‖w‖₂ against λ; the sparsity when the sweep has a weight penalty;
and with a baseline, the gain over it (comparison.png, and a gain heat map for a grid). Diverged settings get a
red × at their x, runs flagged ``unstable`` a red ring. Size-like keys (model.hidden1, data.n_train) get a log axis.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox, offset_copy

from regularization.logging import atomic_file, log

DPI = 100
SLOT = (7.0, 3.8)  # inches per panel: the axes, and room on their right for the legend
# The axes inside a slot, in inches: tick labels and the y label on the left, the x label below, the title
# above, the legend to the right. A legend wider than the right margin narrows the axes (``fit_in_slot``).
MARGINS = {"left": 0.8, "right": 2.3, "bottom": 0.55, "top": 0.4}
COLUMNS = 3  # panels per row of summary.png
MAX_MARKERS = 48  # a line through more settings than this is drawn without markers
MAX_LEGEND = 24  # a one-numeric-key sweep with more values gets a colour bar instead of a legend entry per value
MAX_LINES = 6  # more settings than this over two or more keys: curve panels faceted by the first key
LABEL_WIDTH = 30  # legend labels wrap at this many characters (between key=value pairs)
# At DPI 100 a point is 1.39 px: 9 pt text is 12.5 px tall in the PNG, the least that reads at its native size.
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "legend.title_fontsize": 9}  # fmt: skip
DODGE = 4.0  # points between the error bars of lines at the same x
SIZE_KEY = re.compile(r"(hidden\d*|n_\w+|num_\w+|\w*size|width|epochs)$")  # keys whose values are sizes: log axis
DIVERGED = {"color": "tab:red", "marker": "x", "ms": 8, "mew": 2, "ls": "none"}
UNSTABLE = {"mfc": "none", "mec": "tab:red", "marker": "o", "ms": 10, "mew": 1.5, "ls": "none"}
Panel = tuple[str, Callable[[Axes], None]]


@dataclass
class Setting:
    """The completed jobs of one setting: its swept values (without the seed), eval histories and final metrics."""

    label: str
    keys: dict[str, Any] = field(default_factory=dict)
    histories: list[list[dict]] = field(default_factory=list)
    finals: list[dict] = field(default_factory=list)
    diverged: int = 0  # jobs of the setting whose loss went non-finite (not among the finals)


@dataclass
class Sweep:
    """What the plots need to know about a sweep besides its settings."""

    settings: list[Setting]
    swept: list[str]  # the keys besides the seed whose value differs between settings, in name order
    classification: bool = False
    penalized: bool = False  # some job has a weight penalty: plot the sparsity
    metric: str = "test_loss"  # the metrics.json field of the metric-vs-key panels, the heat map and the comparison
    baseline: str | None = None  # KEY=VALUE the comparison's gains are over
    comparison: list[dict] | None = None  # regularization.comparison.compare's rows
    diverged: list[Setting] = field(default_factory=list)  # settings with a diverged job (some with no completed one)

    @property
    def numeric(self) -> list[str]:
        """The swept keys with a number in every setting."""
        return [k for k in self.swept if all(is_number(s.keys.get(k)) for s in self.settings)]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def values_label(keys: dict[str, Any], swept: Sequence[str]) -> str:
    """The setting's swept values by their full keys: ``reg.lambd=3, reg.impl=weight_decay``."""
    return ", ".join(f"{k.lstrip('+~')}={fmt(keys.get(k))}" for k in swept) or "all"


def wrapped(label: str) -> str:
    """A legend label over lines of at most LABEL_WIDTH characters, broken between its key=value pairs."""
    return textwrap.fill(label, LABEL_WIDTH, break_long_words=False, break_on_hyphens=False)


def key_label(key: str) -> str:
    return rf"$\lambda$ ({key})" if key.endswith("lambd") else key


def _spread(rows: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over the seeds (rows), per column."""
    a = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    return a.mean(axis=0), a.min(axis=0), a.max(axis=0)


def _curve(histories: list[list[dict]], key: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The epochs that every seed evaluated, and the mean, min and max of ``key`` at them."""
    by_epoch = [{h["epoch"]: h for h in history} for history in histories]
    epochs = sorted(set.intersection(*(set(b) for b in by_epoch)))
    return (epochs, *_spread([[b[e].get(key) for e in epochs] for b in by_epoch]))


def _final(setting: Setting, metric: str) -> tuple[float, float, float]:
    mean, low, high = _spread([[f.get(metric)] for f in setting.finals])
    return float(mean[0]), float(low[0]), float(high[0])


def scale_for(values: Sequence[float], key: str | None = None) -> dict:
    """Axis scale kwargs: log when the values span two decades or more (a factor 4 for a size-like key: widths,
    example counts), symlog (linear near 0) when 0 is among them, else linear."""
    values = [v for v in values if math.isfinite(v)]
    positive = [v for v in values if v > 0]
    least = 4 if key is not None and SIZE_KEY.search(key) else 100
    if not positive or min(values) < 0 or max(positive) / min(positive) < least:
        return {"value": "linear"}
    if min(values) == 0:
        return {"value": "symlog", "linthresh": min(positive)}
    return {"value": "log"}


def set_x_scale(ax: Axes, values: Sequence[float], key: str | None = None) -> None:
    ax.set_xscale(**scale_for(values, key))


def readable_log_ticks(axis: Axis, low: float, high: float) -> None:
    """Labels a reader can use on a log axis, as plain numbers (not one lone 10⁰): within a decade at every
    1..9 × 10ⁿ, within two at 1, 2 and 5 × 10ⁿ, over wider ranges one label a decade (10ⁿ beyond 1e-4..1e5)."""
    if not (0 < low < high):
        return
    decades = math.log10(high / low)
    subs = tuple(range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0) if decades >= 2 else tuple(range(1, 10))))
    axis.set_minor_formatter(NullFormatter())
    plain = 1e-4 <= low and high <= 1e5
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}") if plain else LogFormatterSciNotation())


def _tidy_log_axes(ax: Axes) -> None:
    if ax.get_yscale() == "log":
        readable_log_ticks(ax.yaxis, *ax.get_ylim())
    if ax.get_xscale() == "log":
        readable_log_ticks(ax.xaxis, *ax.get_xlim())
    elif ax.get_xscale() == "symlog":  # λ with 0 among its values (none below it): no negative decades in the margin
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(left=max(ax.get_xlim()[0], -0.5 * ax.xaxis.get_transform().linthresh))


def legend_outside(ax: Axes, handles: list, labels: list[str], title: str | None = None) -> None:
    """The legend to the right of the axes, clear of the curves; two columns beyond 12 entries. ``fit_in_slot``
    narrows the axes where it would leave the panel's slot."""
    ncol = 1 if len(labels) <= 12 else 2
    ax.legend(handles, [wrapped(label) for label in labels], loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=ncol, title=title,
              borderaxespad=0.0, frameon=False, handlelength=1.6, columnspacing=1.0)  # fmt: skip


def _ordered(sweep: Sweep) -> bool:
    """One numeric swept key: its settings get a sequential colour map, by value."""
    return len(sweep.swept) == 1 and sweep.numeric == sweep.swept


def _colours(n: int, ordered: bool) -> list:
    if ordered:
        return [colormaps["viridis"](0.9 * i / max(n - 1, 1)) for i in range(n)]
    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _colour_bar(ax: Axes, sweep: Sweep) -> None:
    """A colour bar for the values of the one swept key, in place of a legend entry per value."""
    key = sweep.swept[0]
    values = [s.keys[key] for s in sweep.settings]
    positive = [v for v in values if v > 0]
    log_scale = scale_for(values, key)["value"] != "linear" and positive
    norm = LogNorm(min(positive), max(values)) if log_scale else Normalize(min(values), max(values))
    cax = ax.inset_axes((1.04, 0.0, 0.05, 1.0))
    ax.figure.colorbar(ScalarMappable(norm, colormaps["viridis"]), cax=cax, label=key_label(key))


def seeds_note(sweep: Sweep, spread: str) -> str | None:
    """The legend's title: what a line and its ``spread`` (band or bars) are, with the seeds the settings have."""
    counts = sorted({len(s.finals) for s in sweep.settings})
    if counts[-1] <= 1:
        return None
    seeds = str(counts[-1]) if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"
    return f"mean of {seeds} seeds, {spread}: min–max"


def _diverged_entries(sweep: Sweep) -> tuple[list, list[str]]:
    """Legend entries for the settings with diverged jobs."""
    if not sweep.diverged:
        return [], []
    names = ", ".join(f"{s.label} ({s.diverged})" for s in sweep.diverged)
    return [Line2D([], [], color="0.3", **{k: v for k, v in DIVERGED.items() if k != "color"})], [f"diverged (jobs): {names}"]


def draw_curves(ax: Axes, sweep: Sweep, metric: str = "loss", title: str = "") -> None:
    """Test ``metric`` (solid) and train (dashed, same colour) against the epoch, a line per setting: loss on a
    log y axis, accuracy on a linear one. Curves of three evaluations or fewer get markers (one is a point)."""
    settings = sweep.settings
    colours = _colours(len(settings), _ordered(sweep))
    name = "loss" if metric == "loss" else "accuracy"
    ax.set(xlabel="epoch", ylabel=name, yscale="log" if metric == "loss" else "linear")
    short = False
    for key, style in ((f"test_{metric}", "-"), (f"train_{metric}", "--")):
        curves = [_curve(setting.histories, key) for setting in settings]
        short |= any(len(epochs) <= 3 for epochs, *_ in curves)
        if len(settings) > MAX_LEGEND and not short:  # one artist for all the lines: a 1,024-line plot in 0.1 s, not 2 s
            ax.add_collection(LineCollection([np.column_stack(c[:2]) for c in curves], colors=colours, linestyles=style, lw=1.3))
            ax.autoscale_view()
        else:
            for (epochs, mean, _, _), colour in zip(curves, colours, strict=True):
                ax.plot(epochs, mean, style, color=colour, lw=1.3, marker="o" if len(epochs) <= 3 else None, ms=4)
        for setting, (epochs, _, low, high), colour in zip(settings, curves, colours, strict=True):
            if len(setting.histories) > 1:
                ax.fill_between(epochs, low, high, color=colour, alpha=0.12, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    low, high = ax.get_xlim()
    if high - low < 2:  # one or two epochs: whole epochs for ticks, not fractions of one
        ax.set_xlim(math.floor(low + 0.5) - 0.5, math.ceil(high - 0.5) + 0.5)
    ax.set_title(f"{title}test {name} (solid), train {name} (dashed)", y=1.0)
    ax.grid(alpha=0.3, lw=0.5)
    handles, labels = _diverged_entries(sweep)
    if len(settings) > MAX_LEGEND and _ordered(sweep):
        _colour_bar(ax, sweep)
    elif len(settings) > 1 or handles:
        handles = [Line2D([], [], color=c, lw=1.3, marker="o" if short else None, ms=4) for c in colours] + handles
        legend_outside(ax, handles, [s.label for s in settings] + labels, seeds_note(sweep, "band"))


def _lines(sweep: Sweep, x: str) -> dict[str, list[Setting]]:
    """The settings as lines against key x: one line per combination of the other swept keys, by value of x."""
    others = [k for k in sweep.swept if k != x]
    lines: dict[str, list[Setting]] = {}
    for setting in sweep.settings:
        lines.setdefault(values_label(setting.keys, others) if others else "", []).append(setting)
    return lines


def _positions(values: list[Any], numeric: bool) -> tuple[dict[Any, float], list[str] | None]:
    """Where each value of a key goes: itself for a numeric key, else evenly spaced categories (with their labels)."""
    values = list(dict.fromkeys(values))
    if numeric:
        return {v: v for v in values}, None
    return {v: float(i) for i, v in enumerate(values)}, [fmt(v) for v in values]


def dodged_errorbar(ax: Axes, i: int, n: int, xs: Sequence[float], mean: np.ndarray, low: np.ndarray, high: np.ndarray, **style) -> None:
    """Line i of n with its error bars [low, high], shifted sideways by DODGE points a line (centred on x), so that
    bars at the same x stay apart on any axis scale."""
    shift = offset_copy(ax.transData, fig=ax.figure, x=(i - (n - 1) / 2) * DODGE, units="points")
    ax.errorbar(xs, mean, yerr=[mean - low, high - mean], transform=shift, **style)
    # A shifted artist does not count for autoscaling: its points in data coordinates do (x even where y is missing).
    ax.update_datalim(np.column_stack([xs, np.zeros(len(xs))]), updatey=False)
    for ys in (mean, low, high):
        points = np.column_stack([xs, ys])
        ax.update_datalim(points[np.isfinite(points).all(axis=1)])
    ax.autoscale_view()


def _x_axis(ax: Axes, x: str, at: dict[Any, float], categories: list[str] | None) -> None:
    if categories is None:
        set_x_scale(ax, list(at), x)
    else:
        ax.set_xticks(list(at.values()), categories, rotation=20 if max(map(len, categories)) > 8 else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(key_label(x))


def _mark_diverged(ax: Axes, sweep: Sweep, x: str, at: dict[Any, float], colour_of: dict[str, Any]) -> tuple[list, list[str]]:
    """A × at the top of the axes, at the x of each setting with a diverged job, in its line's colour."""
    others = [k for k in sweep.swept if k != x]
    for setting in sweep.diverged:
        if setting.keys.get(x) in at:
            colour = colour_of.get(values_label(setting.keys, others) if others else "", "0.3")
            ax.plot([at[setting.keys.get(x)]], [0.96], transform=ax.get_xaxis_transform(), clip_on=False, **DIVERGED | {"color": colour})
    return _diverged_entries(sweep)


def _mark_unstable(ax: Axes, sweep: Sweep, x: str, at: dict[Any, float], metric: str) -> tuple[list, list[str]]:
    """A red ring around the mean of each setting that has a run flagged unstable (metrics.json ``unstable``)."""
    flagged = [s for s in sweep.settings if any(f.get("unstable", False) for f in s.finals)]
    for setting in flagged:
        ax.plot([at[setting.keys.get(x)]], [_final(setting, metric)[0]], **UNSTABLE)
    return ([Line2D([], [], **UNSTABLE)], ["has a run flagged unstable"]) if flagged else ([], [])


def draw_vs_key(ax: Axes, sweep: Sweep, x: str, metrics: dict[str, str], ylabel: str, title: str) -> None:
    """Final metrics against key x: one colour per line (combination of the other swept keys), one marker and
    line style per metric; points are the mean over seeds, error bars their min-max, dodged sideways."""
    lines = _lines(sweep, x)
    at, categories = _positions([s.keys.get(x) for s in [*sweep.settings, *sweep.diverged]], x in sweep.numeric)
    colours = _colours(len(lines), ordered=False)
    dense = max(map(len, lines.values())) > MAX_MARKERS  # a regularization path of thousands of λ: a line, not a blob of markers
    styles = list(zip(metrics.items(), ("-", "--", ":"), "os^" if not dense else [None] * 3, strict=False))
    n = len(lines) * len(styles)
    for i, (settings, colour) in enumerate(zip(lines.values(), colours, strict=True)):
        settings = sorted(settings, key=lambda s: at[s.keys.get(x)])
        xs = [at[s.keys.get(x)] for s in settings]
        for j, ((metric, _), style, marker) in enumerate(styles):
            mean, low, high = np.array([_final(s, metric) for s in settings]).T
            ls = style if categories is None else "none"  # categories are not a scale: no line between them
            look = {"ls": ls, "marker": marker, "ms": 4, "capsize": 0 if dense else 2, "lw": 1.2, "color": colour}
            dodged_errorbar(ax, i * len(styles) + j, n, xs, mean, low, high, **look)
    _x_axis(ax, x, at, categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title, y=1.0)
    ax.grid(alpha=0.3, lw=0.5)
    handles, labels = [], []
    if len(styles) > 1:  # which metric is which
        handles += [Line2D([], [], color="0.3", ls=style, marker=marker, ms=4) for _, style, marker in styles]
        labels += [name for (_, name), _, _ in styles]
    if len(lines) > 1:
        handles += [Line2D([], [], color=c, lw=2) for c in colours]
        labels += list(lines)
    for extra_handles, extra_labels in (_mark_diverged(ax, sweep, x, at, dict(zip(lines, colours, strict=True))),
                                        _mark_unstable(ax, sweep, x, at, next(iter(metrics)))):  # fmt: skip
        handles += extra_handles
        labels += extra_labels
    note = seeds_note(sweep, "bars")
    if handles or note:  # one line with bars: the legend's title alone says what they are
        legend_outside(ax, handles, labels, note)


def metric_pair(sweep: Sweep) -> dict[str, str]:
    """The sweep's metric, and beside a test_* metric its train_* counterpart where the jobs have one."""
    metric = sweep.metric
    train = "train_" + metric.removeprefix("test_")
    if metric.startswith("test_") and any(f.get(train) is not None for s in sweep.settings for f in s.finals):
        return {metric: metric, train: train}
    return {metric: metric}


def quantity(metrics: list[str]) -> str:
    """The y axis' name for metrics drawn on it: the metric, or what test_loss and train_loss both are (loss)."""
    if len(metrics) == 1:
        return metrics[0]
    kinds = {m.rsplit("_", 1)[-1] for m in metrics}
    return {"acc": "accuracy"}.get(kind := kinds.pop(), kind) if len(kinds) == 1 else " / ".join(metrics)


def draw_final_vs_key(ax: Axes, sweep: Sweep, x: str) -> None:
    """The sweep's metric (and its train counterpart) against key x; losses on a log y axis."""
    metrics = metric_pair(sweep)
    draw_vs_key(ax, sweep, x, metrics, quantity(list(metrics)), f"{' and '.join(metrics)} vs {x}")
    if "loss" in sweep.metric:
        ax.set_yscale("log")


def draw_weight_norm(ax: Axes, sweep: Sweep, x: str) -> None:
    """‖w‖₂ of the penalized weights at the end of training, against key x (λ)."""
    draw_vs_key(ax, sweep, x, {"weight_l2_norm": r"$\|\mathbf{w}\|_2$"}, r"$\|\mathbf{w}\|_2$", rf"final $\|\mathbf{{w}}\|_2$ vs {x}")
    norms = [f["weight_l2_norm"] for s in sweep.settings for f in s.finals if f.get("weight_l2_norm") is not None]
    ax.set_yscale(**scale_for(norms))


def draw_sparsity(ax: Axes, sweep: Sweep, x: str) -> None:
    """The final fraction of penalized weights below the sparsity threshold, against key x."""
    draw_vs_key(ax, sweep, x, {"sparsity": "sparsity"}, "fraction of |w| < threshold", f"final sparsity vs {x}")
    ax.set_ylim(bottom=0)


def baseline_key(sweep: Sweep) -> tuple[str, Any]:
    """The baseline's key and the value its setting has (the comparison's rows hold the other values)."""
    key, text = sweep.baseline.split("=", 1)
    key = key.strip().lstrip("+")
    values = [s.keys.get(key) for s in [*sweep.settings, *sweep.diverged]]
    return key, next((v for v in values if fmt(v) == text.strip() or (is_number(v) and _same_number(v, text))), text.strip())


def _same_number(value: float, text: str) -> bool:
    try:
        return float(text) == float(value)
    except ValueError:
        return False


def draw_gain(ax: Axes, sweep: Sweep) -> None:
    """comparison.png: the gain over the baseline against the baseline's key, one line per value of the other swept
    keys, with its 95% interval as bars (dodged), a zero line, and the baseline itself as a star at 0."""
    key, base = baseline_key(sweep)
    rows = sweep.comparison or []
    others = [k for k in rows[0] if k not in (key, "n_pairs", "gain_mean", "ci_low", "ci_high", "method")] if rows else []
    lines: dict[str, list[dict]] = {}
    for row in rows:
        lines.setdefault(values_label(row, others) if others else "", []).append(row)
    numeric = is_number(base) and all(is_number(r[key]) for r in rows)
    at, categories = _positions([base, *(r[key] for r in rows)], numeric)
    if numeric:
        at, categories = dict(sorted(at.items())), None
    colours = _colours(len(lines), ordered=False)
    ax.axhline(0.0, color="0.2", lw=1.0, ls=":")
    for i, (line, colour) in enumerate(zip(lines.values(), colours, strict=True)):
        done = sorted((r for r in line if r["gain_mean"] is not None), key=lambda r: at[r[key]])
        mean = np.array([r["gain_mean"] for r in done], dtype=float)
        low = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for r in done], dtype=float)
        high = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for r in done], dtype=float)
        xs = [at[r[key]] for r in done]
        style = {"ls": "-" if numeric else "none", "marker": "o", "ms": 4, "capsize": 3, "lw": 1.2, "color": colour}
        dodged_errorbar(ax, i, len(lines), xs, mean, low, high, **style)
        for r in line:  # no gain to show: the setting's jobs (or the baseline's) diverged or failed
            if r["gain_mean"] is None:
                ax.plot([at[r[key]]], [0.96], transform=ax.get_xaxis_transform(), clip_on=False, **DIVERGED | {"color": colour})
    ax.plot([at[base]], [0.0], marker="*", ms=11, color="black", ls="none")
    _x_axis(ax, key, at, categories)
    ax.set_ylabel(f"gain in {sweep.metric}")
    ax.set_title(f"{sweep.metric} − {sweep.metric}({key}={fmt(base)}), paired by seed", y=1.0)
    ax.grid(alpha=0.3, lw=0.5)
    welch = any(r["method"] == "Welch" for r in rows)
    handles = [Line2D([], [], marker="*", ms=11, color="black", ls="none"), Line2D([], [], color="0.2", lw=1.0, ls=":")]
    labels = [f"baseline {key}={fmt(base)}", "no gain"]
    if any(r["gain_mean"] is None for r in rows):
        handles.append(Line2D([], [], **DIVERGED | {"color": "0.3"}))
        labels.append("no pair completed (diverged or failed)")
    if len(lines) > 1:
        handles += [Line2D([], [], color=c, lw=2) for c in colours]
        labels += list(lines)
    legend_outside(ax, handles, labels, "mean over pairs, bars: 95% CI" + (" (Welch where unpaired)" if welch else ""))


def _grid_of(sweep: Sweep, rows: str, cols: str, value: Callable[[Setting], float]) -> tuple[list, list, np.ndarray]:
    row_values = sorted({s.keys[rows] for s in sweep.settings})
    col_values = sorted({s.keys[cols] for s in sweep.settings})
    grid = np.full((len(row_values), len(col_values)), np.nan)
    for s in sweep.settings:
        grid[row_values.index(s.keys[rows]), col_values.index(s.keys[cols])] = value(s)
    return row_values, col_values, grid


def _cell_text(ax: Axes, image: Any, grid: np.ndarray, texts: dict[tuple[int, int], str]) -> None:
    """Each cell's text, white on a dark cell and black on a light one (by the luminance of its colour)."""
    for (i, j), text in texts.items():
        value = grid[i, j]
        if math.isfinite(value):
            r, g, b, _ = image.cmap(image.norm(value))
            colour = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
        else:
            colour = "tab:red"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour, linespacing=1.1)


def _heat_axes(ax: Axes, image: Any, rows: str, cols: str, row_values: list, col_values: list, label: str) -> None:
    ax.set_xticks(range(len(col_values)), [fmt(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [fmt(v) for v in row_values])
    ax.set(xlabel=cols, ylabel=rows)
    bar = ax.figure.colorbar(image, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)), label=label)
    if isinstance(image.norm, LogNorm):
        readable_log_ticks(bar.ax.yaxis, image.norm.vmin, image.norm.vmax)


def draw_heat_map(ax: Axes, sweep: Sweep, rows: str, cols: str) -> None:
    """The sweep's metric on the grid of two numeric keys: each cell its mean and (with seeds) std over the seeds;
    a diverged cell says so, a cell with a run flagged unstable carries a "!"."""
    metric = sweep.metric
    row_values, col_values, grid = _grid_of(sweep, rows, cols, lambda s: _final(s, metric)[0])
    finite = grid[np.isfinite(grid)]
    lower_is_better = "loss" in metric
    norm = LogNorm() if lower_is_better and finite.size and finite.min() > 0 else None
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r" if lower_is_better else "viridis", norm=norm)
    texts = {}
    for s in sweep.settings:
        at = (row_values.index(s.keys[rows]), col_values.index(s.keys[cols]))
        values = [f[metric] for f in s.finals if f.get(metric) is not None]
        text = f"{np.mean(values):.3g}" + (f"\n±{np.std(values, ddof=1):.2g}" if len(values) > 1 else "") if values else "-"
        texts[at] = text + ("!" if any(f.get("unstable", False) for f in s.finals) else "")
    for s in sweep.diverged:
        if s.keys.get(rows) in row_values and s.keys.get(cols) in col_values and not s.finals:
            texts[(row_values.index(s.keys[rows]), col_values.index(s.keys[cols]))] = "diverged"
    _cell_text(ax, image, grid, texts)
    counts = {len(s.finals) for s in sweep.settings}
    spread = f"mean ± std of {max(counts)} seeds" if max(counts) > 1 else "1 seed"
    flagged = "; !: an unstable run" if any("!" in t for t in texts.values()) else ""
    ax.set_title(f"{metric}: {spread}{flagged}", y=1.0)
    _heat_axes(ax, image, rows, cols, row_values, col_values, metric)


def draw_gain_heat_map(ax: Axes, sweep: Sweep, rows: str, cols: str) -> None:
    """The gain over the baseline on the grid: each cell its mean over seed pairs and its 95% interval; the
    baseline's cells are 0 by definition."""
    key, base = baseline_key(sweep)
    gains = {(r.get(rows), r.get(cols)): r for r in sweep.comparison or []}
    row_values, col_values, grid = _grid_of(sweep, rows, cols, lambda s: 0.0 if s.keys.get(key) == base else np.nan)
    texts = {}
    for (i, r_value), (j, c_value) in ((a, b) for a in enumerate(row_values) for b in enumerate(col_values)):
        row = gains.get((r_value, c_value))
        if row is not None and row["gain_mean"] is not None:
            grid[i, j] = row["gain_mean"]
            ci = f"\n[{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]" if row["ci_low"] is not None else ""
            texts[(i, j)] = f"{row['gain_mean']:+.3g}{ci}"
        elif grid[i, j] == 0.0:
            texts[(i, j)] = "baseline"
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="RdBu" if "loss" not in sweep.metric else "RdBu_r",
                      norm=Normalize(-limit or -1, limit or 1))  # fmt: skip
    _cell_text(ax, image, grid, texts)
    ax.set_title(f"gain in {sweep.metric} over {key}={fmt(base)}: mean [95% CI]", y=1.0)
    _heat_axes(ax, image, rows, cols, row_values, col_values, f"gain in {sweep.metric}")


def facets(sweep: Sweep) -> list[tuple[str, Sweep]]:
    """The sweep as one panel's worth of curves, or with more than MAX_LINES settings over two or more keys, one
    sweep per value of the first key (named ``key=value``), its lines the other keys' combinations."""
    if len(sweep.settings) <= MAX_LINES or len(sweep.swept) < 2:
        return [("", sweep)]
    key, rest = sweep.swept[0], sweep.swept[1:]
    parts = []
    for value in dict.fromkeys(s.keys.get(key) for s in sweep.settings):
        chosen = [dataclasses.replace(s, label=values_label(s.keys, rest)) for s in sweep.settings if s.keys.get(key) == value]
        diverged = [dataclasses.replace(d, label=values_label(d.keys, rest)) for d in sweep.diverged if d.keys.get(key) == value]
        part = Sweep(chosen, rest, sweep.classification, sweep.penalized, sweep.metric, diverged=diverged)
        parts.append((f"{key.lstrip('+~')}={fmt(value)}", part))
    return parts


def sweep_panels(sweep: Sweep) -> list[Panel]:
    """The panels of a sweep, by file name: see the module docstring."""
    panels: list[Panel] = []
    for name, part in facets(sweep):
        suffix, title = (f"_{name}", f"{name}: ") if name else ("", "")
        panels.append((f"curves{suffix}.png", lambda ax, part=part, title=title: draw_curves(ax, part, title=title)))
        if sweep.classification:
            panels.append((f"accuracy{suffix}.png", lambda ax, part=part, title=title: draw_curves(ax, part, "acc", title)))
    numeric = sweep.numeric
    for x in numeric or sweep.swept:  # a panel per numeric key; with none, one per categorical key
        panels.append((f"final_vs_{x.lstrip('+')}.png", lambda ax, x=x: draw_final_vs_key(ax, sweep, x)))
    grid = len(numeric) == 2 and len(sweep.swept) == 2
    if grid:
        panels.append(("heat_map.png", lambda ax: draw_heat_map(ax, sweep, *numeric)))
    lambd = next((k for k in numeric if k.endswith("lambd")), None)
    if lambd is not None:
        panels.append((f"weight_norm_vs_{lambd}.png", lambda ax: draw_weight_norm(ax, sweep, lambd)))
    if sweep.penalized and numeric:
        x = lambd or numeric[0]
        panels.append((f"sparsity_vs_{x}.png", lambda ax: draw_sparsity(ax, sweep, x)))
    if sweep.comparison:
        panels.append(("comparison.png", lambda ax: draw_gain(ax, sweep)))
        if grid:
            panels.append(("gain_heat_map.png", lambda ax: draw_gain_heat_map(ax, sweep, *numeric)))
    return panels


def _slot(fig: Figure, i: int, columns: int) -> Bbox:
    """Panel i's slot in the figure, in inches from the bottom left: a grid of SLOT-sized slots, ``columns`` a row."""
    height = fig.get_size_inches()[1]
    row, col = divmod(i, columns)
    return Bbox.from_bounds(col * SLOT[0], height - (row + 1) * SLOT[1], *SLOT)


def _slot_axes(fig: Figure, slot: Bbox) -> Axes:
    """The axes inside a slot, placed with MARGINS."""
    width, height = fig.get_size_inches()
    w = SLOT[0] - MARGINS["left"] - MARGINS["right"]
    h = SLOT[1] - MARGINS["bottom"] - MARGINS["top"]
    return fig.add_axes(((slot.x0 + MARGINS["left"]) / width, (slot.y0 + MARGINS["bottom"]) / height, w / width, h / height))


def fit_in_slot(ax: Axes, slot: Bbox, renderer: Any) -> None:
    """Narrow (or lower) the axes until everything drawn with them, legend and colour bar included, lies inside
    the slot: a panel's text never runs into the next panel or past the figure's edge."""
    pad = 0.05 * DPI  # pixels kept clear at the slot's edges
    box = slot.transformed(ax.figure.dpi_scale_trans)
    for _ in range(3):  # the legend moves with the axes; a second pass settles wrapped tick labels
        drawn = ax.get_tightbbox(renderer)
        left, right = max(0.0, box.x0 + pad - drawn.x0), max(0.0, drawn.x1 - (box.x1 - pad))
        below, above = max(0.0, box.y0 + pad - drawn.y0), max(0.0, drawn.y1 - (box.y1 - pad))
        if not (left or right or below or above):
            return
        pos = ax.get_position().transformed(ax.figure.transFigure)
        x0, x1 = pos.x0 + left, max(pos.x1 - right, pos.x0 + left + 0.2 * box.width)
        y0, y1 = pos.y0 + below, max(pos.y1 - above, pos.y0 + below + 0.2 * box.height)
        ax.set_position(Bbox.from_extents(x0, y0, x1, y1).transformed(ax.figure.transFigure.inverted()))


def _write_png(path: Path, rgba: np.ndarray) -> Path:
    with atomic_file(path, "wb") as f:
        imsave(f, rgba, format="png", dpi=DPI)
    return path


def draw_figure(panels: list[Panel]) -> tuple[Figure, list[Axes]]:
    """The panels drawn into one figure, in a grid of COLUMNS a row, each fitted to its slot."""
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(SLOT[0] * columns, SLOT[1] * rows), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    axes = []
    with rc_context(FONTS):
        for i, (_, draw) in enumerate(panels):
            slot = _slot(fig, i, columns)
            ax = _slot_axes(fig, slot)
            draw(ax)
            _tidy_log_axes(ax)
            fit_in_slot(ax, slot, canvas.get_renderer())
            axes.append(ax)
        canvas.draw()
    return fig, axes


def draw_panels(out_dir: Path, panels: list[Panel]) -> list[Path]:
    """Draw the panels once (``draw_figure``); each panel's PNG is its slot cut from that canvas, and
    summary.png (with more than one panel) the whole grid."""
    fig, _ = draw_figure(panels)
    rgba = np.asarray(fig.canvas.buffer_rgba())
    columns = min(COLUMNS, len(panels))
    w, h = round(SLOT[0] * DPI), round(SLOT[1] * DPI)
    paths = []
    for i, (name, _) in enumerate(panels):
        row, col = divmod(i, columns)
        paths.append(_write_png(Path(out_dir) / name, rgba[row * h : (row + 1) * h, col * w : (col + 1) * w]))
    if len(panels) > 1:
        paths.append(_write_png(Path(out_dir) / "summary.png", rgba))
    return paths


# The names of the PNGs a summary writes: those of an earlier summary of the same dir that this one does not
# write (curves.png once the curves are faceted, say) are removed, so that no figure there is stale.
PANEL_NAMES = ("summary.png", "curves*.png", "accuracy*.png", "final_vs_*.png", "heat_map.png", "gain_heat_map.png",
               "weight_norm_vs_*.png", "sparsity_vs_*.png", "comparison.png")  # fmt: skip


def save_sweep_plots(sweep_dir: Path, sweep: Sweep) -> list[Path]:
    """The sweep's panels (``sweep_panels``) as PNGs, and summary.png with all of them. Settings hold completed
    jobs only; empty ones are skipped, and marked where they diverged."""
    settings = [s for s in sweep.settings if s.finals]
    written = []
    if settings:
        swept = [k for k in sweep.swept if len({fmt(s.keys.get(k)) for s in settings}) > 1]
        diverged = [s for s in sweep.settings if s.diverged]
        sweep = Sweep(settings, swept, sweep.classification, sweep.penalized, sweep.metric, sweep.baseline, sweep.comparison, diverged)
        written = draw_panels(sweep_dir, sweep_panels(sweep))
    else:
        log.warning("no completed job in %s: no plots", sweep_dir)
    for stale in {p for pattern in PANEL_NAMES for p in Path(sweep_dir).glob(pattern)} - set(written):
        stale.unlink(missing_ok=True)
    return written


def save_run_curves(out_dir: Path, history: list[dict], title: str) -> Path | None:
    """One run's figure, titled with its overrides: train and test loss (log y) against the epoch, and for
    classification the accuracies beside them, as out_dir/curves.png.

    A figure is a convenience: failing to draw it only warns, since the run's results are already written.
    """
    if not history:
        return None
    try:
        run = Sweep([Setting("run", histories=[history], finals=[history[-1]])], [], classification=history[-1].get("test_acc") is not None)
        metrics = ["loss", "acc"] if run.classification else ["loss"]
        with rc_context(FONTS):
            fig = Figure(figsize=(5.0 * len(metrics), 3.8), dpi=DPI)
            for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
                draw_curves(ax, run, metric)
                _tidy_log_axes(ax)
            fig.suptitle(textwrap.fill(title.replace(",", ", "), 90))
            fig.tight_layout()
            path = Path(out_dir) / "curves.png"
            with atomic_file(path, "wb") as f:
                fig.savefig(f, format="png", dpi=DPI)
        return path
    except Exception:  # noqa: BLE001
        log.warning("could not draw %s", Path(out_dir) / "curves.png", exc_info=True)
        return None
