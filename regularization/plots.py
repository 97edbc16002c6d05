"""Figures of a run and of a sweep, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

A sweep's jobs come grouped into settings (a setting = the job's swept values without ``seed``). With several
seeds, a line is the mean over the seeds and the band (or error bar) around it their min-max spread. Every
panel with more than one line has a legend outside its axes (or, for many values of one numeric key, a colour bar).

Panels of a sweep: the loss curves (and, for classification, the accuracy curves) of every setting; the final
test and train metric against each numeric swept key, one line per combination of the other swept keys (a method
key such as ``reg`` or ``reg.impl`` then gets one line per method); a heat map for a grid over two numeric keys;
‖w‖₂ against λ; and the sparsity when the sweep has a weight penalty.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from regularization.logging import atomic_file, log

DPI = 100
SLOT = (7.0, 3.8)  # inches per panel: the axes, and room on their right for the legend
# The axes inside a slot, in inches: tick labels and the y label on the left, the x label below, the title
# above, the legend to the right. Fixed, so the figure is drawn once (tight_layout would draw it twice).
MARGINS = {"left": 0.8, "right": 2.3, "bottom": 0.55, "top": 0.4}
COLUMNS = 3  # panels per row of summary.png
MAX_LEGEND = 24  # a one-numeric-key sweep with more values gets a colour bar instead of a legend entry per value
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
    metric: str = "test_loss"  # the metrics.json field of the heat map and the comparison
    baseline: str | None = None  # KEY=VALUE the comparison's gains are over
    comparison: list[dict] | None = None  # regularization.comparison.compare's rows

    @property
    def numeric(self) -> list[str]:
        """The swept keys with a number in every setting."""
        return [k for k in self.swept if all(is_number(s.keys.get(k)) for s in self.settings)]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def short_key(key: str, swept: Sequence[str]) -> str:
    """``reg.lambd`` -> ``lambd`` unless another swept key ends the same way; ``+experiment`` -> ``experiment``."""
    key = key.lstrip("+~")
    tail = key.rsplit(".", 1)[-1]
    return tail if sum(k.lstrip("+~").rsplit(".", 1)[-1] == tail for k in swept) == 1 else key


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def values_label(keys: dict[str, Any], swept: Sequence[str]) -> str:
    return ", ".join(f"{short_key(k, swept)}={fmt(keys.get(k))}" for k in swept) or "all"


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


def scale_for(values: Sequence[float]) -> dict:
    """Axis scale kwargs: log when the values span two decades or more, symlog (linear near 0) when 0 is
    among them, else linear."""
    values = [v for v in values if math.isfinite(v)]
    positive = [v for v in values if v > 0]
    if not positive or min(values) < 0 or max(positive) / min(positive) < 100:
        return {"value": "linear"}
    if min(values) == 0:
        return {"value": "symlog", "linthresh": min(positive)}
    return {"value": "log"}


def set_x_scale(ax: Axes, values: Sequence[float]) -> None:
    ax.set_xscale(**scale_for(values))


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
    elif ax.get_xscale() == "symlog":  # λ with 0 among its values
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def legend_outside(ax: Axes, handles: list, labels: list[str], title: str | None = None) -> None:
    """The legend to the right of the axes, clear of the curves; two columns beyond 16 entries."""
    ncol = 1 if len(labels) <= 16 else 2
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", ncol=ncol, title=title,
              title_fontsize="x-small", borderaxespad=0.0, frameon=False)  # fmt: skip


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
    log_scale = scale_for(values)["value"] != "linear" and positive
    norm = LogNorm(min(positive), max(values)) if log_scale else Normalize(min(values), max(values))
    cax = ax.inset_axes((1.04, 0.0, 0.05, 1.0))
    ax.figure.colorbar(ScalarMappable(norm, colormaps["viridis"]), cax=cax, label=key_label(key))


def seeds_note(sweep: Sweep) -> str | None:
    counts = {len(s.finals) for s in sweep.settings}
    return f"mean of {max(counts)} seeds, band: min–max" if max(counts) > 1 else None


def draw_curves(ax: Axes, sweep: Sweep, metric: str = "loss") -> None:
    """Test ``metric`` (solid) and train (dashed, same colour) against the epoch, a line per setting: loss on a
    log y axis, accuracy on a linear one."""
    settings = sweep.settings
    colours = _colours(len(settings), _ordered(sweep))
    for key, style in ((f"test_{metric}", "-"), (f"train_{metric}", "--")):
        for setting, colour in zip(settings, colours, strict=True):
            epochs, mean, low, high = _curve(setting.histories, key)
            ax.plot(epochs, mean, style, color=colour, lw=1.3)
            if len(setting.histories) > 1:
                ax.fill_between(epochs, low, high, color=colour, alpha=0.12, lw=0)
    name = "loss" if metric == "loss" else "accuracy"
    ax.set(xlabel="epoch", ylabel=name, yscale="log" if metric == "loss" else "linear")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"test {name} (solid), train {name} (dashed)", y=1.0)
    ax.grid(alpha=0.3, lw=0.5)
    if len(settings) > MAX_LEGEND and _ordered(sweep):
        _colour_bar(ax, sweep)
    elif len(settings) > 1:
        handles = [Line2D([], [], color=c, lw=1.3) for c in colours]
        legend_outside(ax, handles, [s.label for s in settings], seeds_note(sweep))


def _lines(sweep: Sweep, x: str) -> dict[str, list[Setting]]:
    """The settings as lines against key x: one line per combination of the other swept keys, by value of x."""
    others = [k for k in sweep.swept if k != x]
    lines: dict[str, list[Setting]] = {}
    for setting in sweep.settings:
        lines.setdefault(values_label(setting.keys, others) if others else "", []).append(setting)
    return lines


def _positions(sweep: Sweep, x: str) -> tuple[dict[Any, float], list[str] | None]:
    """Where each value of x goes: itself for a numeric key, else evenly spaced categories (with their labels)."""
    values = list(dict.fromkeys(s.keys.get(x) for s in sweep.settings))
    if x in sweep.numeric:
        return {v: v for v in values}, None
    return {v: float(i) for i, v in enumerate(values)}, [fmt(v) for v in values]


def draw_vs_key(ax: Axes, sweep: Sweep, x: str, metrics: dict[str, str], ylabel: str, title: str) -> None:
    """Final metrics against key x: one colour per line (combination of the other swept keys), one marker and
    line style per metric; points are the mean over seeds, error bars their min-max."""
    lines = _lines(sweep, x)
    at, categories = _positions(sweep, x)
    colours = _colours(len(lines), ordered=False)
    styles = list(zip(metrics.items(), ("-", "--", ":"), "os^", strict=False))
    for settings, colour in zip(lines.values(), colours, strict=True):
        settings = sorted(settings, key=lambda s: at[s.keys.get(x)])
        xs = [at[s.keys.get(x)] for s in settings]
        for (metric, _), style, marker in styles:
            mean, low, high = np.array([_final(s, metric) for s in settings]).T
            ls = style if categories is None else "none"  # categories are not a scale: no line between them
            ax.errorbar(xs, mean, yerr=[mean - low, high - mean], ls=ls, marker=marker, ms=4, capsize=2, lw=1.2, color=colour)
    if categories is None:
        set_x_scale(ax, list(at))
    else:
        ax.set_xticks(list(at.values()), categories, rotation=20 if max(map(len, categories)) > 8 else 0, fontsize="small")
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set(xlabel=key_label(x), ylabel=ylabel)
    ax.set_title(title, y=1.0)
    ax.grid(alpha=0.3, lw=0.5)
    handles, labels = [], []
    if len(styles) > 1:  # which metric is which
        handles += [Line2D([], [], color="0.3", ls=style, marker=marker, ms=4) for _, style, marker in styles]
        labels += [name for (_, name), _, _ in styles]
    if len(lines) > 1:
        handles += [Line2D([], [], color=c, lw=2) for c in colours]
        labels += list(lines)
    if handles:
        legend_outside(ax, handles, labels, seeds_note(sweep))


def draw_final_vs_key(ax: Axes, sweep: Sweep, x: str) -> None:
    """Final test and train accuracy (classification) or loss (log y) against key x."""
    if sweep.classification:
        draw_vs_key(ax, sweep, x, {"test_acc": "test", "train_acc": "train"}, "final accuracy", f"final accuracy vs {x}")
    else:
        draw_vs_key(ax, sweep, x, {"test_loss": "test", "train_loss": "train"}, "final loss", f"final loss vs {x}")
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


def draw_heat_map(ax: Axes, sweep: Sweep, rows: str, cols: str) -> None:
    """The final test metric (mean over seeds) on the grid of two numeric keys, each cell annotated."""
    metric = "test_acc" if sweep.classification else "test_loss"
    row_values = sorted({s.keys[rows] for s in sweep.settings})
    col_values = sorted({s.keys[cols] for s in sweep.settings})
    grid = np.full((len(row_values), len(col_values)), np.nan)
    for s in sweep.settings:
        grid[row_values.index(s.keys[rows]), col_values.index(s.keys[cols])] = _final(s, metric)[0]
    finite = grid[np.isfinite(grid)]
    norm = LogNorm() if metric == "test_loss" and finite.size and finite.min() > 0 else None
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis" if sweep.classification else "viridis_r", norm=norm)
    ax.set_xticks(range(len(col_values)), [fmt(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [fmt(v) for v in row_values])
    middle = np.nanmean(grid) if finite.size else 0
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            dark = (value < middle) == sweep.classification
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize="x-small", color="white" if dark else "black")
    ax.set(xlabel=cols, ylabel=rows)
    name = "test accuracy" if sweep.classification else "test loss"
    ax.set_title(f"final {name} (mean over seeds)", y=1.0)
    ax.figure.colorbar(image, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)), label=name)


def sweep_panels(sweep: Sweep) -> list[Panel]:
    """The panels of a sweep, by file name: see the module docstring."""
    panels: list[Panel] = [("curves.png", lambda ax: draw_curves(ax, sweep))]
    if sweep.classification:
        panels.append(("accuracy.png", lambda ax: draw_curves(ax, sweep, "acc")))
    numeric = sweep.numeric
    for x in numeric or sweep.swept:  # a panel per numeric key; with none, one per categorical key
        panels.append((f"final_vs_{x.lstrip('+')}.png", lambda ax, x=x: draw_final_vs_key(ax, sweep, x)))
    if len(numeric) == 2 and len(sweep.swept) == 2:
        panels.append(("heat_map.png", lambda ax: draw_heat_map(ax, sweep, *numeric)))
    lambd = next((k for k in numeric if k.endswith("lambd")), None)
    if lambd is not None:
        panels.append((f"weight_norm_vs_{lambd}.png", lambda ax: draw_weight_norm(ax, sweep, lambd)))
    if sweep.penalized and numeric:
        x = lambd or numeric[0]
        panels.append((f"sparsity_vs_{x}.png", lambda ax: draw_sparsity(ax, sweep, x)))
    return panels


def _slot_axes(fig: Figure, i: int, columns: int) -> Axes:
    """The axes of panel i in a grid of SLOT-sized slots, ``columns`` a row, placed with MARGINS."""
    width, height = fig.get_size_inches()
    row, col = divmod(i, columns)
    left = col * SLOT[0] + MARGINS["left"]
    bottom = height - (row + 1) * SLOT[1] + MARGINS["bottom"]
    w = SLOT[0] - MARGINS["left"] - MARGINS["right"]
    h = SLOT[1] - MARGINS["bottom"] - MARGINS["top"]
    return fig.add_axes((left / width, bottom / height, w / width, h / height))


def _write_png(path: Path, rgba: np.ndarray) -> Path:
    with atomic_file(path, "wb") as f:
        imsave(f, rgba, format="png", dpi=DPI)
    return path


def draw_panels(out_dir: Path, panels: list[Panel]) -> list[Path]:
    """Draw the panels once, in a grid of COLUMNS a row; each panel's PNG is its slot cut from that canvas, and
    summary.png (with more than one panel) the whole grid."""
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(SLOT[0] * columns, SLOT[1] * rows), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    for i, (_, draw) in enumerate(panels):
        ax = _slot_axes(fig, i, columns)
        draw(ax)
        _tidy_log_axes(ax)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    w, h = round(SLOT[0] * DPI), round(SLOT[1] * DPI)
    paths = []
    for i, (name, _) in enumerate(panels):
        row, col = divmod(i, columns)
        paths.append(_write_png(Path(out_dir) / name, rgba[row * h : (row + 1) * h, col * w : (col + 1) * w]))
    if len(panels) > 1:
        paths.append(_write_png(Path(out_dir) / "summary.png", rgba))
    return paths


def save_sweep_plots(sweep_dir: Path, sweep: Sweep) -> list[Path]:
    """The sweep's panels (``sweep_panels``) as PNGs, and summary.png with all of them. Settings hold completed
    jobs only; empty ones are skipped."""
    settings = [s for s in sweep.settings if s.finals]
    if not settings:
        log.warning("no completed job in %s: no plots", sweep_dir)
        return []
    swept = [k for k in sweep.swept if len({fmt(s.keys.get(k)) for s in settings}) > 1]
    sweep = Sweep(settings, swept, sweep.classification, sweep.penalized)
    return draw_panels(sweep_dir, sweep_panels(sweep))


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
        fig = Figure(figsize=(5.0 * len(metrics), 3.8), dpi=DPI)
        for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
            draw_curves(ax, run, metric)
            _tidy_log_axes(ax)
        fig.suptitle(textwrap.fill(title.replace(",", ", "), 90), fontsize="medium")
        fig.tight_layout()
        path = Path(out_dir) / "curves.png"
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        return path
    except Exception:  # noqa: BLE001
        log.warning("could not draw %s", Path(out_dir) / "curves.png", exc_info=True)
        return None
