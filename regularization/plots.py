"""Figures of a run and of a sweep, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

A sweep's jobs come grouped into settings (a setting = the job's overrides without ``seed``). With
several seeds, a line is the mean over the seeds and the band around it their min-max spread.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator

from regularization.logging import atomic_file, log

DPI = 100
PANEL = (5.0, 3.6)  # inches per panel
MAX_LEGEND = 12


@dataclass
class Setting:
    """The completed jobs of one setting: their eval histories (metrics.json "history") and final metrics."""

    label: str
    value: float | None = None  # the swept key's value, in a one-numeric-key sweep
    histories: list[list[dict]] = field(default_factory=list)
    finals: list[dict] = field(default_factory=list)


def _spread(rows: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over the seeds (rows), per column."""
    a = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    return a.mean(axis=0), a.min(axis=0), a.max(axis=0)


def _curve(histories: list[list[dict]], key: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The epochs that every seed evaluated, and the mean, min and max of ``key`` at them."""
    by_epoch = [{h["epoch"]: h for h in history} for history in histories]
    epochs = sorted(set.intersection(*(set(b) for b in by_epoch)))
    return (epochs, *_spread([[b[e].get(key) for e in epochs] for b in by_epoch]))


def _colours(settings: list[Setting]) -> list:
    """Ordered settings (a numeric sweep) get a sequential colour map, others the categorical cycle."""
    cmap: Colormap = colormaps["viridis"] if settings and settings[0].value is not None else colormaps["tab10"]
    if settings and settings[0].value is not None:
        return [cmap(0.9 * i / max(len(settings) - 1, 1)) for i in range(len(settings))]
    return [cmap(i % 10) for i in range(len(settings))]


def _label(setting: Setting) -> str:
    n = len(setting.finals)
    return f"{setting.label or 'all'} ({n} seeds)" if n > 1 else setting.label or "run"


def set_title(ax: Axes, title: str) -> None:
    """The title just above the axes. Given y, matplotlib places it there; without, it measures the x axis's
    tick labels at every draw to keep clear of them, which made up half of a sweep figure's drawing time."""
    ax.set_title(title, y=1.0)


def draw_curves(ax: Axes, settings: list[Setting]) -> None:
    """Test loss against epoch (solid), train loss (dashed, same colour), log y.

    Each style's curves are one LineCollection (one artist, drawn in one call, not one per curve); the legend
    gets a proxy line per setting.
    """
    colours = _colours(settings)
    for key, style in (("test_loss", "-"), ("train_loss", "--")):
        curves = []
        for setting, colour in zip(settings, colours, strict=True):
            epochs, mean, low, high = _curve(setting.histories, key)
            curves.append(np.column_stack([epochs, mean]))
            if len(setting.histories) > 1:
                ax.fill_between(epochs, low, high, color=colour, alpha=0.15, lw=0)
        ax.add_collection(LineCollection(curves, colors=colours, linestyles=style, lw=1.3))
    ax.set(yscale="log", xlabel="epoch", ylabel="loss")
    set_title(ax, "test loss (solid), train loss (dashed)")
    ax.autoscale_view()
    if len(settings) <= MAX_LEGEND:  # beyond that a legend hides the curves; summary.md names the settings
        proxies = [Line2D([], [], color=colour, lw=1.3) for colour in colours]
        ax.legend(proxies, [_label(s) for s in settings], fontsize="x-small", ncol=2 if len(settings) > 6 else 1)
    ax.grid(alpha=0.3, lw=0.5)


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


def _key_label(key: str) -> str:
    return rf"$\lambda$ ({key})" if key.endswith("lambd") else key


def _draw_vs_key(ax: Axes, settings: list[Setting], key: str, metrics: dict[str, str]) -> None:
    """Final metrics against the swept key's value: mean over seeds, error bars from min to max."""
    x = [s.value for s in settings]
    for (metric, name), marker in zip(metrics.items(), "os^", strict=False):
        # Per setting, the mean, min and max of the metric over its seeds (one column of seed rows each).
        mean, low, high = np.array([_spread([[f.get(metric)] for f in s.finals]) for s in settings])[:, :, 0].T
        if any(len(s.finals) > 1 for s in settings):
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker=marker, ms=4, capsize=2, lw=1.2, label=name)
        else:  # one seed each: no spread to show
            ax.plot(x, mean, marker=marker, ms=4, lw=1.2, label=name)
    set_x_scale(ax, x)
    ax.set_xlabel(_key_label(key))
    ax.grid(alpha=0.3, lw=0.5)


def draw_final_vs_key(ax: Axes, settings: list[Setting], key: str, classification: bool) -> None:
    """Final train and test loss (log y) or, for classification, accuracy, against the swept key."""
    if classification:
        _draw_vs_key(ax, settings, key, {"train_acc": "train accuracy", "test_acc": "test accuracy"})
        ax.set(ylabel="accuracy")
        set_title(ax, f"final accuracy vs {key}")
    else:
        _draw_vs_key(ax, settings, key, {"train_loss": "train loss", "test_loss": "test loss"})
        ax.set(yscale="log", ylabel="loss")
        set_title(ax, f"final loss vs {key}")
    ax.legend(fontsize="small")


def draw_weight_norm(ax: Axes, settings: list[Setting], key: str) -> None:
    """‖w‖₂ of the penalized weights at the end of training, against λ."""
    _draw_vs_key(ax, settings, key, {"weight_l2_norm": r"$\|\mathbf{w}\|_2$"})
    ax.set_yscale(**scale_for([f["weight_l2_norm"] for s in settings for f in s.finals if f.get("weight_l2_norm") is not None]))
    ax.set(ylabel=r"$\|\mathbf{w}\|_2$")
    set_title(ax, rf"final $\|\mathbf{{w}}\|_2$ vs {key}")


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


# A sweep panel's axes inside its PANEL-sized slot, in inches: room for tick labels and the y label on the
# left, the x label below, the title above. Fixed, so the figure is drawn once: tight_layout would draw it
# a second time to measure it, and separate figures per panel would draw every panel twice.
MARGINS = {"left": 0.75, "right": 0.2, "bottom": 0.55, "top": 0.4}


def _panel_axes(fig: Figure, i: int) -> Axes:
    """The axes of panel i of a row of PANEL-sized slots, placed with MARGINS."""
    width, height = fig.get_size_inches()
    left = i * PANEL[0] + MARGINS["left"]
    w = PANEL[0] - MARGINS["left"] - MARGINS["right"]
    h = PANEL[1] - MARGINS["bottom"] - MARGINS["top"]
    return fig.add_axes((left / width, MARGINS["bottom"] / height, w / width, h / height))


def _write_png(path: Path, rgba: np.ndarray) -> Path:
    with atomic_file(path, "wb") as f:
        imsave(f, rgba, format="png", dpi=DPI)
    return path


def save_sweep_plots(sweep_dir: Path, settings: list[Setting], key: str | None, classification: bool) -> list[Path]:
    """curves.png; for a one-numeric-key sweep also final_vs_KEY.png; for a λ sweep weight_norm_vs_KEY.png;
    and summary.png with all of them side by side. Settings hold completed jobs only; empty ones are skipped.

    The panels are drawn once, side by side in one figure; each panel's PNG is its slot cut from that canvas.
    """
    settings = [s for s in settings if s.finals]
    if not settings:
        log.warning("no completed job in %s: no plots", sweep_dir)
        return []
    panels = [("curves.png", lambda ax: draw_curves(ax, settings))]
    if key is not None:
        panels.append((f"final_vs_{key}.png", lambda ax: draw_final_vs_key(ax, settings, key, classification)))
        if key.endswith("lambd"):
            panels.append((f"weight_norm_vs_{key}.png", lambda ax: draw_weight_norm(ax, settings, key)))
    fig = Figure(figsize=(PANEL[0] * len(panels), PANEL[1]), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    for i, (_, draw) in enumerate(panels):
        draw(_panel_axes(fig, i))
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) if axis.get_scale() == "log"):
        axis.set_minor_locator(LogLocator(subs=(2, 5)))  # 2 minor ticks a decade: 8 took a third of the drawing
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    slot = rgba.shape[1] // len(panels)
    paths = [_write_png(Path(sweep_dir) / name, rgba[:, i * slot : (i + 1) * slot]) for i, (name, _) in enumerate(panels)]
    if len(panels) > 1:
        paths.append(_write_png(Path(sweep_dir) / "summary.png", rgba))
    return paths


def save_run_curves(out_dir: Path, history: list[dict]) -> Path | None:
    """The chapter's figure for one run: train and test loss against epoch, log y, as out_dir/curves.png.

    A figure is a convenience: failing to draw it only warns, since the run's results are already written.
    """
    if not history:
        return None
    try:
        fig = Figure(figsize=PANEL)
        ax = fig.add_subplot()
        epochs = [h["epoch"] for h in history]
        for key, style in (("train_loss", "--"), ("test_loss", "-")):
            ax.plot(epochs, [h.get(key) for h in history], style, lw=1.5, label=key.replace("_", " "))
        ax.set(yscale="log", xlabel="epoch", ylabel="loss")
        ax.set_title(textwrap.fill(Path(out_dir).name.replace(",", ", "), 60), fontsize="small")  # a sweep job's dir: its overrides
        ax.legend()
        ax.grid(alpha=0.3, lw=0.5)
        return _save(fig, Path(out_dir) / "curves.png")
    except Exception:  # noqa: BLE001
        log.warning("could not draw %s", Path(out_dir) / "curves.png", exc_info=True)
        return None
