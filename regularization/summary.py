"""Sweep summary, read back from the job dirs alone (.hydra/overrides.yaml, metrics.json, event files):

summary.csv and summary.md with one row per job; with several seeds per setting also mean ± std per
setting (summary.md, summary_by_setting.csv); and the sweep's plots (regularization.plots).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regularization.logging import TAGS, log, write_text_atomic
from regularization.parallel import long_lived_heap_frozen

if TYPE_CHECKING:
    from regularization.plots import Setting

COLUMNS = ["job", "status", "epochs", "train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm", "sparsity", "wall_s"]
STATS = ["train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm", "sparsity", "wall_s"]
SEED_KEY = "seed"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir under the sweep: the dirs that hold Hydra's .hydra/overrides.yaml."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml") if p.parent.parent != Path(sweep_dir))


def override_key(override: str) -> str:
    """``+reg.lambd=3`` -> ``reg.lambd``."""
    return override.split("=", 1)[0].lstrip("+~")


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


@dataclass
class Job:
    """One job dir: its overrides and its metrics.json (or, without one, what its event files hold)."""

    dir: Path
    overrides: list[str]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return ",".join(self.overrides) or self.dir.name

    @property
    def setting(self) -> str:
        """The overrides without the seed: the jobs of a setting differ by their seed alone."""
        return ",".join(o for o in self.overrides if override_key(o) != SEED_KEY)

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"

    def row(self) -> dict[str, Any]:
        return {key: self.metrics.get(key) for key in COLUMNS} | {"job": self.name}


def read_job(job_dir: Path) -> Job:
    """A job as its dir records it. Without metrics.json (a job killed mid-run) it is ``failed``, and its
    last evaluation in the event files fills in the final metrics; without a history in metrics.json
    the history comes from the event files."""
    # A list of "key=value" strings: read as plain YAML, ~10× faster than through OmegaConf.load.
    overrides = yaml.load((job_dir / ".hydra" / "overrides.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or []
    metrics_path = job_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"status": "failed"}
    if "history" not in metrics and any(job_dir.glob("events.out.tfevents.*")):
        metrics["history"] = history_from_events(job_dir)
        if not metrics_path.exists() and metrics["history"]:
            last = metrics["history"][-1]
            metrics |= {key: last.get(key) for key in STATS if key in last} | {"epochs": last["epoch"]}
    return Job(job_dir, overrides, metrics)


def _natural(job: Job) -> list[tuple]:
    """Sort key: overrides in order, numbers by value (λ = 3 before λ = 10)."""
    parts = []
    for override in job.overrides:
        value = override.split("=", 1)[-1]
        number = as_number(value)
        parts.append((override_key(override), 0 if number is not None else 1, number or 0.0, value))
    return parts


def collect_jobs(sweep_dir: Path) -> list[Job]:
    return sorted((read_job(d) for d in job_dirs(sweep_dir)), key=_natural)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's summary rows, one per job."""
    return [job.row() for job in collect_jobs(sweep_dir)]


def group_by_setting(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by their overrides minus the seed, in the jobs' order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.setting, []).append(job)
    return groups


def swept_key(jobs: list[Job]) -> str | None:
    """The one key besides the seed whose value differs between jobs, if it is numeric in every job; else None."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            values.setdefault(override_key(override), set()).add(override.split("=", 1)[-1])
    varying = [k for k, v in values.items() if k != SEED_KEY and len(v) > 1]
    if len(varying) != 1:
        return None
    key = varying[0]
    numeric = all(any(override_key(o) == key and as_number(o.split("=", 1)[-1]) is not None for o in job.overrides) for job in jobs)
    return key if numeric else None


def _value_of(job: Job, key: str) -> float:
    return next(float(o.split("=", 1)[-1]) for o in job.overrides if override_key(o) == key)


def setting_stats(setting: str, jobs: list[Job]) -> dict[str, Any]:
    """Mean and sample std (n−1) of the final metrics over the setting's completed jobs."""
    done = [j for j in jobs if j.completed]
    stats: dict[str, Any] = {"setting": setting or "all", "completed": len(done), "jobs": len(jobs)}
    for key in STATS:
        values = [j.metrics[key] for j in done if j.metrics.get(key) is not None and math.isfinite(j.metrics[key])]
        stats[f"{key}_mean"] = statistics.fmean(values) if values else None
        stats[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return stats


def _mean_std(stats: dict[str, Any], key: str) -> str:
    mean, std = stats[f"{key}_mean"], stats[f"{key}_std"]
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def mean_std_table(stats: list[dict[str, Any]], markdown: bool) -> str:
    """Mean ± std per setting; the seeds column counts completed of all jobs."""
    cols = [k for k in STATS if any(s[f"{k}_mean"] is not None for s in stats)]
    cells = [["setting", "seeds", *cols]]
    cells += [[s["setting"], f"{s['completed']}/{s['jobs']}", *(_mean_std(s, k) for k in cols)] for s in stats]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]) + "\n"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _present(rows: list[dict[str, Any]]) -> list[str]:
    """The columns that hold a value in some row (accuracy is absent for regression, say)."""
    return [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = _present(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def console_table(rows: list[dict[str, Any]]) -> str:
    cols = _present(rows)
    cells = [cols] + [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def _csv(rows: list[dict[str, Any]], fieldnames: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], stats: list[dict[str, Any]] | None = None) -> None:
    """summary.csv and summary.md (per job); with ``stats``, also mean ± std per setting."""
    write_text_atomic(Path(sweep_dir) / "summary.csv", _csv(rows, COLUMNS))
    md = markdown_table(rows)
    if stats:
        md += "\n### Mean ± std over seeds (completed jobs; std with n−1)\n\n" + mean_std_table(stats, markdown=True)
        write_text_atomic(Path(sweep_dir) / "summary_by_setting.csv", _csv(stats, list(stats[0])))
    write_text_atomic(Path(sweep_dir) / "summary.md", md)


def sweep_settings(jobs: list[Job], key: str | None) -> list[Setting]:
    """The completed jobs of each setting, as the plots take them (failed and diverged jobs are left out)."""
    from regularization.plots import Setting

    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    settings = []
    for group in group_by_setting(jobs).values():
        done = [j for j in group if j.completed]
        label = ",".join(o for o in group[0].overrides if o not in shared and override_key(o) != SEED_KEY)  # what sets it apart
        value = _value_of(group[0], key) if key is not None else None
        settings.append(Setting(label, value, [j.metrics.get("history") or [] for j in done], [j.metrics for j in done]))
    return sorted(settings, key=lambda s: s.value) if key is not None else settings


def summarize_sweep(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Write the tables and plots of the sweep in sweep_dir, from its job dirs alone.

    Returns the per-job rows and, when some setting has several seeds, the per-setting stats.
    """
    jobs = collect_jobs(sweep_dir)
    rows = [job.row() for job in jobs]
    groups = group_by_setting(jobs)
    stats = [setting_stats(s, g) for s, g in groups.items()] if any(len(g) > 1 for g in groups.values()) else None
    write_summary(sweep_dir, rows, stats)
    key = swept_key(jobs)
    classification = any(j.metrics.get("test_acc") is not None for j in jobs if j.completed)
    from regularization.plots import save_sweep_plots  # matplotlib, imported when a sweep ends (and Hydra starts faster)

    save_sweep_plots(sweep_dir, sweep_settings(jobs, key), key, classification)
    return rows, stats


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    return summarize_sweep(sweep_dir)[0]


def console_report(rows: list[dict[str, Any]], stats: list[dict[str, Any]] | None) -> str:
    """The per-job table, then mean ± std per setting when there are seeds."""
    text = console_table(rows)
    if stats:
        text += "\n\nMean ± std over seeds (completed jobs):\n" + mean_std_table(stats, markdown=False)
    return text


class SweepSummary(Callback):
    """At the end of a multirun: write summary.csv, summary.md and the plots into the sweep dir and print the tables.

    As a Hydra callback it runs under any launcher. A sweep with failed jobs then exits with status 1.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        with long_lived_heap_frozen():
            rows, stats = summarize_sweep(sweep_dir)
        log.info("Sweep summary (%s):\n%s", sweep_dir / "summary.md", console_report(rows, stats))
        failed = [r["job"] for r in rows if r["status"] == "failed"]
        if failed:  # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings
            raise SystemExit(f"{len(failed)} of {len(rows)} jobs failed ({'; '.join(failed)}): see traceback.txt in their job dirs")
