"""Sweep summary, read back from the job dirs alone (.hydra/{overrides,config,hydra}.yaml, metrics.json, event files):

summary.csv and summary.md with one row per job, named as its dir is (Hydra's override_dirname); with several
seeds per setting also mean ± std per setting (summary.md, summary_by_setting.csv); and the sweep's plots
(regularization.plots). ``compare_sweeps`` puts several sweeps into one table and one figure.

The metric the plots, the heat map and the comparison show is a choice (``summary.metric``, ``--metric``: any number
in metrics.json; by default the final test accuracy, or the test loss for regression). With a baseline
(``summary.baseline``, ``--baseline KEY=VALUE``) the summary also holds each setting's gain over it, paired by seed
(regularization.comparison): comparison.csv, a section of summary.md and comparison.png.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from regularization.comparison import ComparisonError, check_metric, compare, parse_baseline, same_value
from regularization.logging import TAGS, log, parse_override, write_text_atomic
from regularization.parallel import long_lived_heap_frozen
from regularization.results import SPIKE_FACTOR, stability

if TYPE_CHECKING:
    from regularization.plots import Sweep

# Each job's row: its name, one column per identifying key (``Job.keys``), then these.
METRIC_COLUMNS = [
    "status",
    "unstable",
    "epochs",
    "train_loss",
    "test_loss",
    "train_acc",
    "test_acc",
    "best_test_loss",
    "best_test_loss_epoch",
    "best_test_acc",
    "best_test_acc_epoch",
    "weight_l2_norm",
    "sparsity",
    "wall_s",
    "group_wall_s",
]
STATS = ["train_loss", "test_loss", "train_acc", "test_acc", "best_test_loss", "best_test_acc", "weight_l2_norm", "sparsity", "wall_s"]
SEED_KEY = "seed"
COMPARISON_COLUMNS = ["n_pairs", "gain_mean", "ci_low", "ci_high", "method"]
GROUPS = ("model", "reg", "data", "optim")  # the config groups whose choice identifies a run


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir under the sweep: the dirs that hold Hydra's .hydra/overrides.yaml."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml") if p.parent.parent != Path(sweep_dir))


def _yaml(path: Path) -> Any:
    # Plain YAML through libyaml: ~10× faster than through OmegaConf.load.
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def override_key(override: str) -> str:
    """``+reg.lambd=3`` -> ``reg.lambd``."""
    return parse_override(override).key_or_group.lstrip("+~")


@dataclass(frozen=True)
class Naming:
    """How Hydra names a job dir (``hydra.job.override_dirname``): its overrides sorted as written, without the
    excluded keys, joined by item_sep. The summary rows, the per-setting table, the TensorBoard run and the
    HParams trial (the run) carry the same name."""

    exclude_keys: frozenset[str] = frozenset()
    item_sep: str = ","
    kv_sep: str = "="

    def name(self, overrides: list[str]) -> str:
        parsed = [parse_override(o) for o in overrides]
        return get_overrides_dirname(parsed, list(self.exclude_keys), self.item_sep, self.kv_sep)

    def kept(self, overrides: list[str]) -> list[str]:
        return [o for o in overrides if parse_override(o).key_or_group not in self.exclude_keys]


def naming_of(job_dir: Path) -> Naming:
    """The naming in the job's .hydra/hydra.yaml (a sweep's jobs share it); Hydra's defaults without one."""
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.exists():
        return Naming()
    dirname = _yaml(path)["hydra"]["job"]["config"]["override_dirname"]
    return Naming(frozenset(dirname.get("exclude_keys") or ()), dirname.get("item_sep", ","), dirname.get("kv_sep", "="))


def as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def history_from_events(job_dir: Path) -> list[dict]:
    """The eval history (one dict per evaluated epoch) read back from the job's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(job_dir), size_guidance={SCALARS: 0}).Reload()
    by_epoch: dict[int, dict] = {}
    for key, tag in TAGS.items():
        if tag in events.Tags()[SCALARS]:
            for point in events.Scalars(tag):
                by_epoch.setdefault(point.step, {"epoch": point.step})[key] = point.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def _select(config: dict, key: str) -> Any:
    """A dotted key's value in a plain config dict; a config group (a dict with a name) by its preset's name."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node.get("name") if isinstance(node, dict) else node


@dataclass
class Job:
    """One job dir: its overrides, its metrics.json (or, without one, what its event files hold) and its config."""

    dir: Path
    overrides: list[str]
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    naming: Naming = field(default_factory=Naming)
    sweep: str | None = None  # the sweep dir's name, when several sweeps are compared
    sweep_keys: tuple[str, ...] = ()  # keys that other jobs of the sweep override: this job's values of them too

    @property
    def name(self) -> str:
        """Hydra's override_dirname: the job dir's name (``sweep/name`` when sweeps are compared), or the dir's own
        name for a job without overrides."""
        name = self.naming.name(self.overrides) or self.dir.name
        return f"{self.sweep}/{name}" if self.sweep else name

    @property
    def setting(self) -> str:
        """The name without the seed: the jobs of a setting differ by their seed alone."""
        name = self.naming.name([o for o in self.overrides if override_key(o) != SEED_KEY]) or "all"
        return f"{self.sweep}/{name}" if self.sweep else name

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"

    @functools.cached_property
    def keys(self) -> dict[str, Any]:
        """The values that identify the run: the group choices, then every key its overrides set (bar the excluded
        ones), then the seed; parsed (numbers as numbers), from its config where the key is there."""
        overridden = {override_key(o): o for o in self.naming.kept(self.overrides) if not parse_override(o).is_delete()}
        values: dict[str, Any] = {"sweep": self.sweep} if self.sweep else {}
        named = {*overridden, *self.sweep_keys} - {*GROUPS, SEED_KEY}
        for key in [*GROUPS, *sorted(named), SEED_KEY]:
            value = _select(self.config, key)
            if value is None and key in overridden:
                value = parse_override(overridden[key]).value()
            if value is not None:
                values[key] = value
        return values

    def metric(self, key: str) -> Any:
        """A metrics.json field; no sparsity for a run without a weight penalty (it has no penalized weights)."""
        if key == "sparsity" and _select(self.config, "reg.penalty") == "none":
            return None
        return self.metrics.get(key)

    def row(self) -> dict[str, Any]:
        # A metrics.json from before the spike rule: the flag from its history.
        unstable = self.metrics["unstable"] if "unstable" in self.metrics else stability(self.metrics.get("history") or [])["unstable"]
        return {"job": self.name} | self.keys | {key: self.metric(key) for key in METRIC_COLUMNS} | {"unstable": unstable}


def read_job(job_dir: Path, naming: Naming | None = None) -> Job:
    """A job as its dir records it. Without metrics.json (a job killed mid-run) it is ``failed``, and its
    last evaluation in the event files fills in the final metrics; without a history in metrics.json
    the history comes from the event files."""
    overrides = _yaml(job_dir / ".hydra" / "overrides.yaml") or []
    config_path = job_dir / ".hydra" / "config.yaml"
    config = _yaml(config_path) if config_path.exists() else {}
    metrics_path = job_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"status": "failed"}
    if "history" not in metrics and any(job_dir.glob("events.out.tfevents.*")):
        metrics["history"] = history_from_events(job_dir)
        if not metrics_path.exists() and metrics["history"]:
            last = metrics["history"][-1]
            metrics |= {key: last.get(key) for key in STATS if key in last} | {"epochs": last["epoch"]}
    return Job(job_dir, overrides, metrics, config or {}, naming or naming_of(job_dir))


def _natural(job: Job) -> list[tuple]:
    """Sort key: by the name's overrides in order, numbers by value (λ = 3 before λ = 10)."""
    parts: list[tuple] = [(job.sweep or "",)]
    for override in sorted(job.naming.kept(job.overrides)):
        value = override.split("=", 1)[-1]
        number = as_number(value)
        parts.append((override_key(override), 0 if number is not None else 1, number or 0.0, value))
    return parts


def collect_jobs(sweep_dir: Path, sweep: str | None = None) -> list[Job]:
    """The sweep's jobs, in name order; each knows the keys any job of the sweep overrides (``Job.keys``)."""
    dirs = job_dirs(sweep_dir)
    naming = naming_of(dirs[0]) if dirs else Naming()  # a sweep's jobs share their hydra config
    jobs = [read_job(d, naming) for d in dirs]
    union = tuple(sorted({override_key(o) for job in jobs for o in naming.kept(job.overrides)}))
    return sorted((dataclasses.replace(job, sweep=sweep, sweep_keys=union) for job in jobs), key=_natural)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's summary rows, one per job."""
    return [job.row() for job in collect_jobs(sweep_dir)]


def group_by_setting(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by their name without the seed, in the jobs' order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.setting, []).append(job)
    return groups


def swept_keys(jobs: list[Job]) -> list[str]:
    """The identifying keys besides the seed whose value differs between jobs, in name order (the sweep first)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for key, value in job.keys.items():
            values.setdefault(key, set()).add(repr(value))
    keys = {k for k, v in values.items() if k != SEED_KEY and (len(v) > 1 or any(k not in j.keys for j in jobs))}
    return sorted(keys, key=lambda k: (k != "sweep", k.lstrip("+~")))


def untied_keys(swept: list[str], jobs: list[Job]) -> list[str]:
    """The swept keys less those tied to an earlier one ('model.hidden2=${model.hidden1}': the same value in every
    job): a plot's axes, one per independent key; the labels name the tied keys too."""
    return [k for i, k in enumerate(swept) if not any(all(j.keys.get(k) == j.keys.get(t) for j in jobs) for t in swept[:i])]


def setting_stats(setting: str, jobs: list[Job], metric: str | None = None) -> dict[str, Any]:
    """Mean and sample std (n−1) of the final metrics (STATS and the chosen metric) over the setting's completed
    jobs, with the setting's keys."""
    done = [j for j in jobs if j.completed]
    keys = {k: v for k, v in jobs[0].keys.items() if k != SEED_KEY}
    stats: dict[str, Any] = {"setting": setting, **keys, "completed": len(done), "jobs": len(jobs)}
    stats["unstable"] = sum(row["unstable"] is True for row in (j.row() for j in done))
    for key in _stat_keys(metric):
        values = [v for j in done if is_finite(v := j.metric(key))]
        stats[f"{key}_mean"] = statistics.fmean(values) if values else None
        stats[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return stats


def _stat_keys(metric: str | None) -> list[str]:
    return STATS if metric is None or metric in STATS else [*STATS, metric]


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mean_std(stats: dict[str, Any], key: str) -> str:
    mean, std = stats[f"{key}_mean"], stats[f"{key}_std"]
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def _grid(cells: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]) + "\n"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _hidden(rows: list[dict[str, Any]]) -> set[str]:
    """Columns that mean nothing in a table of these jobs: a stacked member's wall_s (its share of its group's time)."""
    return {"wall_s"} if any(r.get("group_wall_s") is not None for r in rows) else set()


def mean_std_table(stats: list[dict[str, Any]], markdown: bool, hidden: set[str] = frozenset()) -> str:
    """Mean ± std per setting; the seeds column counts completed of all jobs."""
    keys = [k.removesuffix("_mean") for k in stats[0] if k.endswith("_mean")]
    cols = [k for k in keys if k not in hidden and any(s[f"{k}_mean"] is not None for s in stats)]
    cells = [["setting", "seeds", "unstable", *cols]]
    cells += [[s["setting"], f"{s['completed']}/{s['jobs']}", str(s["unstable"]), *(_mean_std(s, k) for k in cols)] for s in stats]
    return _grid(cells, markdown)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):  # unstable: the flag stands out
        return "YES" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _present(rows: list[dict[str, Any]], metric: str | None) -> list[str]:
    """The job's name and the metric columns (and the chosen metric) that hold a value in some row (accuracy is
    absent for regression, say), less the ``_hidden`` ones."""
    columns = METRIC_COLUMNS if metric is None or metric in METRIC_COLUMNS else [*METRIC_COLUMNS, metric]
    return ["job"] + [c for c in columns if c not in _hidden(rows) and any(r.get(c) is not None for r in rows)]


def job_table(rows: list[dict[str, Any]], markdown: bool, metric: str | None = None) -> str:
    cols = _present(rows, metric)
    return _grid([cols] + [[_cell(r.get(c)) for c in cols] for r in rows], markdown)


def _csv(rows: list[dict[str, Any]], fieldnames: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of any row, in the order they first appear (keys that only some jobs have included)."""
    return list(dict.fromkeys(c for row in rows for c in row))


def write_summary(out_dir: Path, rows: list[dict[str, Any]], stats: list[dict[str, Any]] | None, metric: str, comparison: str = "") -> None:
    """summary.csv and summary.md (per job); with ``stats``, also mean ± std per setting; then the comparison's
    section of summary.md (``write_comparison``), if any."""
    write_text_atomic(Path(out_dir) / "summary.csv", _csv(rows, _columns(rows)))
    md = f"Metric of the plots and the comparison: {metric} (summary.metric, --metric).\n\n" + job_table(rows, markdown=True, metric=metric)
    md += f"\nunstable: the train loss rose above {SPIKE_FACTOR:g}× its lowest earlier value (docs/outputs.md).\n"
    if stats:
        md += "\n### Mean ± std over seeds (completed jobs; std with n−1)\n\n" + mean_std_table(stats, markdown=True, hidden=_hidden(rows))
        write_text_atomic(Path(out_dir) / "summary_by_setting.csv", _csv(stats, _columns(stats)))
    write_text_atomic(Path(out_dir) / "summary.md", md + comparison)


def sweep_plot_data(jobs: list[Job], metric: str | None = None, baseline: str | None = None) -> Sweep:
    """The completed jobs of each setting, as the plots take them; a setting whose jobs all failed or diverged
    has no finals, and its diverged count marks it."""
    from regularization.plots import Setting, Sweep, values_label  # matplotlib, imported when a sweep ends (Hydra starts faster)

    swept = swept_keys(jobs)
    axes = untied_keys(swept, jobs)
    settings = []
    for group in group_by_setting(jobs).values():
        done = [j for j in group if j.completed]
        label = values_label({k: group[0].keys.get(k) for k in swept}, swept)
        keys = {k: group[0].keys.get(k) for k in axes}
        diverged = sum(j.metrics.get("status") == "diverged" for j in group)
        histories = [j.metrics.get("history") or [] for j in done]
        settings.append(Setting(label, keys, histories, [j.metrics for j in done], diverged))
    classification = any(j.metrics.get("test_acc") is not None for j in jobs if j.completed)
    penalized = any(_select(j.config, "reg.penalty") in ("l1", "l2") for j in jobs)
    return Sweep(settings, axes, classification, penalized, metric or default_metric(jobs), baseline)


def default_metric(jobs: list[Job]) -> str:
    """The final test accuracy, or for regression (no accuracy) the final test loss."""
    return "test_acc" if any(j.metrics.get("test_acc") is not None for j in jobs if j.completed) else "test_loss"


def comparison_rows(jobs: list[Job], metric: str, baseline: str) -> list[dict[str, Any]]:
    """Each setting's gain in ``metric`` over the baseline (KEY=VALUE), paired by seed (regularization.comparison)."""
    swept = untied_keys(swept_keys(jobs), jobs)  # a tied key moves with its key: not another key to compare within
    records = [({k: j.keys.get(k) for k in [*swept, SEED_KEY]}, j.metrics.get(metric) if j.completed else None) for j in jobs]
    return compare(records, swept, baseline, SEED_KEY)


def _interval(row: dict[str, Any]) -> str:
    return f"[{row['ci_low']:+.4g}, {row['ci_high']:+.4g}]" if row["ci_low"] is not None else "-"


def comparison_table(rows: list[dict[str, Any]], metric: str, markdown: bool) -> str:
    """The gains, one row per compared setting: its keys, the pairs, the mean gain, its 95% CI and how it was had."""
    keys = [k for k in rows[0] if k not in COMPARISON_COLUMNS]
    cells = [[*keys, "pairs", f"gain in {metric}", "95% CI", "method"]]
    for r in rows:
        gain = "-" if r["gain_mean"] is None else f"{r['gain_mean']:+.4g}"
        cells.append([*(_cell(r[k]) for k in keys), str(r["n_pairs"]), gain, _interval(r), r["method"]])
    return _grid(cells, markdown)


def comparison_note(rows: list[dict[str, Any]], metric: str, baseline: str) -> str:
    """What the gain is, and where it is not paired by seed."""
    text = (f"gain = {metric}(setting, seed) − {metric}({baseline}, seed), for the same values of the other swept keys; "
            "mean over the seeds both completed, 95% CI from Student's t over the pairs.")  # fmt: skip
    if any(r["method"] == "Welch" for r in rows):
        text += (" Rows marked Welch: unpaired seeds (the two settings share fewer than two), so the gain is the "
                 "difference of their means and the interval Welch's (unequal variances).")  # fmt: skip
    return text


def write_comparison(out_dir: Path, rows: list[dict[str, Any]], metric: str, baseline: str) -> str:
    """comparison.csv; returns summary.md's section on it."""
    write_text_atomic(Path(out_dir) / "comparison.csv", _csv(rows, list(rows[0])))
    title = f"### Gain in {metric} over {baseline}, paired by seed (95% CI)"
    return f"\n{title}\n\n{comparison_table(rows, metric, markdown=True)}\n{comparison_note(rows, metric, baseline)}\n"


@dataclass
class Report:
    """What a summary wrote, for the console: the per-job rows, the per-setting stats (with seeds) and the gains
    over the baseline (with one)."""

    rows: list[dict[str, Any]]
    stats: list[dict[str, Any]] | None
    metric: str
    baseline: str | None = None
    comparison: list[dict[str, Any]] | None = None


def summarize_jobs(out_dir: Path, jobs: list[Job], metric: str | None = None, baseline: str | None = None) -> Report:
    """Write the tables and plots of these jobs into out_dir, showing ``metric`` (default: ``default_metric``), and
    with a baseline KEY=VALUE the gains over it. ComparisonError, before anything is written, for a metric that
    no job has or a baseline that matches no job."""
    done = [j.metrics for j in jobs if j.completed]
    if metric is not None and done:
        check_metric(metric, done)
    metric = metric or default_metric(jobs)
    comparison = comparison_rows(jobs, metric, baseline) if baseline else None
    rows = [job.row() | ({} if metric in METRIC_COLUMNS else {metric: job.metrics.get(metric)}) for job in jobs]
    groups = group_by_setting(jobs)
    stats = [setting_stats(s, g, metric) for s, g in groups.items()] if any(len(g) > 1 for g in groups.values()) else None
    if not comparison:  # no stale comparison beside a summary that has none (save_sweep_plots: nor its plot)
        (Path(out_dir) / "comparison.csv").unlink(missing_ok=True)
    write_summary(out_dir, rows, stats, metric, write_comparison(out_dir, comparison, metric, baseline) if comparison else "")
    from regularization.plots import save_sweep_plots  # matplotlib, imported when a sweep ends (and Hydra starts faster)

    sweep = sweep_plot_data(jobs, metric, baseline)
    sweep.comparison = comparison
    save_sweep_plots(out_dir, sweep)
    return Report(rows, stats, metric, baseline, comparison)


def summarize_sweep(sweep_dir: Path, metric: str | None = None, baseline: str | None = None) -> Report:
    """Write the tables and plots of the sweep in sweep_dir, from its job dirs alone."""
    return summarize_jobs(sweep_dir, collect_jobs(sweep_dir), metric, baseline)


def collect_sweeps(sweep_dirs: list[Path]) -> list[Job]:
    """The jobs of several sweeps, each named ``<sweep dir name>/<job name>``, with the sweep as one more key, and
    so is any key whose value differs between the sweeps."""
    names = [Path(d).name for d in sweep_dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in sweep_dirs]
    jobs = [job for d, label in zip(sweep_dirs, labels, strict=True) for job in collect_jobs(d, sweep=label)]
    # A key a sweep holds constant is left out of its job names, yet it may differ between the sweeps (reg.impl):
    # every key any job overrides is read from every job's config, and those that differ set the jobs apart.
    every = {override_key(o) for job in jobs for o in job.overrides if not parse_override(o).is_delete()} - {SEED_KEY}
    return [dataclasses.replace(job, sweep_keys=tuple(sorted({*job.sweep_keys, *every}))) for job in jobs]


def compare_sweeps(sweep_dirs: list[Path], out_dir: Path, metric: str | None = None, baseline: str | None = None) -> Report:
    """Several sweeps (``collect_sweeps``) in one table and one figure, in out_dir (a line or a colour per sweep)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return summarize_jobs(out_dir, collect_sweeps(sweep_dirs), metric, baseline)


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    return summarize_sweep(sweep_dir).rows


# A console table longer than this shows its first and last rows: summary.md and summary.csv hold every row.
CONSOLE_ROWS = 40


def console_report(report: Report) -> str:
    """The per-job table, then mean ± std per setting when there are seeds (each cut to ``CONSOLE_ROWS``), then the
    gains over the baseline."""
    text = _capped(report.rows, lambda part: job_table(part, markdown=False, metric=report.metric))
    if report.stats:
        stats = _capped(report.stats, lambda part: mean_std_table(part, markdown=False, hidden=_hidden(report.rows)))
        text += "\n\nMean ± std over seeds (completed jobs):\n" + stats
    if report.comparison:
        text += f"\n\nGain in {report.metric} over {report.baseline}, paired by seed:\n"
        text += comparison_table(report.comparison, report.metric, markdown=False)
        if any(r["method"] == "Welch" for r in report.comparison):
            text += "\nWelch: unpaired seeds (fewer than two in common); difference of means, Welch's interval."
    return text


def _capped(rows: list[dict[str, Any]], table: Callable[[list[dict[str, Any]]], str]) -> str:
    """table(rows), or, beyond CONSOLE_ROWS rows, the table of the first and last halves with a line between them
    that says how many rows it leaves out (a 10,000-job sweep would print 10,000 lines)."""
    if len(rows) <= CONSOLE_ROWS:
        return table(rows)
    half = CONSOLE_ROWS // 2
    lines = table(rows[:half] + rows[-half:]).splitlines()
    header = len(lines) - 2 * half  # the table's header lines
    gap = f"... {len(rows) - 2 * half} more rows (summary.md, summary.csv) ..."
    return "\n".join([*lines[: header + half], gap, *lines[header + half :]])


def check_baseline_against_overrides(baseline: str, overrides: list[str]) -> None:
    """Before a sweep trains: ComparisonError when the command line sweeps the baseline's key over values that do not
    include the baseline's (``summary.baseline=reg.lambd=5`` with ``reg.lambd=0,1,3``). A key the command line does
    not list (a search's, say) is checked when the sweep ends."""
    key, text = parse_baseline(baseline)
    for override in map(parse_override, overrides):
        if override_key(override.input_line) != key or override.is_delete():
            continue
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return  # a range or an interval: its values are known when the sweep ends
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]
        if not any(same_value(as_number(v) if as_number(v) is not None else v, text) for v in values):
            raise ComparisonError(f"baseline: {key}={text} matches no job; {key} takes {', '.join(values)}")


def _choice(config: DictConfig, key: str) -> str | None:
    return OmegaConf.select(config, f"summary.{key}", default=None)


class SweepSummary(Callback):
    """At the end of a multirun: write summary.csv, summary.md and the plots into the sweep dir and print the tables,
    for the metric ``summary.metric`` and with the gains over ``summary.baseline`` when set.

    As a Hydra callback it runs under any launcher. A sweep with failed jobs then exits with status 1, and so does one
    whose summary.metric or summary.baseline the jobs do not have (its summary then shows the default metric).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        baseline = _choice(config, "baseline")
        if baseline:
            try:
                check_baseline_against_overrides(baseline, list(config.hydra.overrides.task))
            except ComparisonError as e:  # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings
                raise SystemExit(f"Invalid config: summary.{e}") from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        error = None
        with long_lived_heap_frozen():
            try:
                report = summarize_sweep(sweep_dir, _choice(config, "metric"), _choice(config, "baseline"))
            except ComparisonError as e:
                error = f"summary.{e}"
                report = summarize_sweep(sweep_dir)
        log.info("Sweep summary (%s):\n%s", sweep_dir / "summary.md", console_report(report))
        failed = [r["job"] for r in report.rows if r["status"] == "failed"]
        if failed:  # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings
            raise SystemExit(f"{len(failed)} of {len(report.rows)} jobs failed ({'; '.join(failed)}): see traceback.txt in their job dirs")
        if error:
            raise SystemExit(f"{error} (the summary shows {report.metric}, without a comparison)")
