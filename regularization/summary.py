"""Sweep summary, read back from the job dirs alone (.hydra/{overrides,config,hydra}.yaml, metrics.json, event files):

summary.csv and summary.md with one row per job, named as its dir is (Hydra's override_dirname); with several
seeds per setting also mean ± std per setting (summary.md, summary_by_setting.csv); and the sweep's plots
(regularization.plots). ``compare_sweeps`` puts several sweeps into one table and one figure.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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

    def row(self) -> dict[str, Any]:
        # A metrics.json from before the spike rule: the flag from its history.
        unstable = self.metrics["unstable"] if "unstable" in self.metrics else stability(self.metrics.get("history") or [])["unstable"]
        return {"job": self.name} | self.keys | {key: self.metrics.get(key) for key in METRIC_COLUMNS} | {"unstable": unstable}


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


def setting_stats(setting: str, jobs: list[Job]) -> dict[str, Any]:
    """Mean and sample std (n−1) of the final metrics over the setting's completed jobs, with the setting's keys."""
    done = [j for j in jobs if j.completed]
    keys = {k: v for k, v in jobs[0].keys.items() if k != SEED_KEY}
    stats: dict[str, Any] = {"setting": setting, **keys, "completed": len(done), "jobs": len(jobs)}
    stats["unstable"] = sum(row["unstable"] is True for row in (j.row() for j in done))
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


def _grid(cells: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]) + "\n"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def mean_std_table(stats: list[dict[str, Any]], markdown: bool) -> str:
    """Mean ± std per setting; the seeds column counts completed of all jobs."""
    cols = [k for k in STATS if any(s[f"{k}_mean"] is not None for s in stats)]
    cells = [["setting", "seeds", "unstable", *cols]]
    cells += [[s["setting"], f"{s['completed']}/{s['jobs']}", str(s["unstable"]), *(_mean_std(s, k) for k in cols)] for s in stats]
    return _grid(cells, markdown)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):  # unstable: the flag stands out
        return "YES" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _present(rows: list[dict[str, Any]]) -> list[str]:
    """The job's name and the metric columns that hold a value in some row (accuracy is absent for regression, say)."""
    return ["job"] + [c for c in METRIC_COLUMNS if any(r.get(c) is not None for r in rows)]


def job_table(rows: list[dict[str, Any]], markdown: bool) -> str:
    cols = _present(rows)
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


def write_summary(out_dir: Path, rows: list[dict[str, Any]], stats: list[dict[str, Any]] | None = None) -> None:
    """summary.csv and summary.md (per job); with ``stats``, also mean ± std per setting."""
    write_text_atomic(Path(out_dir) / "summary.csv", _csv(rows, _columns(rows)))
    md = job_table(rows, markdown=True)
    md += f"\nunstable: the train loss rose above {SPIKE_FACTOR}× its lowest earlier value (docs/outputs.md).\n"
    if stats:
        md += "\n### Mean ± std over seeds (completed jobs; std with n−1)\n\n" + mean_std_table(stats, markdown=True)
        write_text_atomic(Path(out_dir) / "summary_by_setting.csv", _csv(stats, _columns(stats)))
    write_text_atomic(Path(out_dir) / "summary.md", md)


def sweep_plot_data(jobs: list[Job]) -> Sweep:
    """The completed jobs of each setting, as the plots take them (failed and diverged jobs are left out)."""
    from regularization.plots import Setting, Sweep, values_label  # matplotlib, imported when a sweep ends (Hydra starts faster)

    swept = swept_keys(jobs)
    settings = []
    for group in group_by_setting(jobs).values():
        done = [j for j in group if j.completed]
        keys = {k: group[0].keys.get(k) for k in swept}
        settings.append(Setting(values_label(keys, swept), keys, [j.metrics.get("history") or [] for j in done], [j.metrics for j in done]))
    classification = any(j.metrics.get("test_acc") is not None for j in jobs if j.completed)
    penalized = any(_select(j.config, "reg.penalty") in ("l1", "l2") for j in jobs)
    return Sweep(settings, swept, classification, penalized)


def summarize_jobs(out_dir: Path, jobs: list[Job]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Write the tables and plots of these jobs into out_dir. Returns the per-job rows and, when some setting has
    several seeds, the per-setting stats."""
    rows = [job.row() for job in jobs]
    groups = group_by_setting(jobs)
    stats = [setting_stats(s, g) for s, g in groups.items()] if any(len(g) > 1 for g in groups.values()) else None
    write_summary(out_dir, rows, stats)
    from regularization.plots import save_sweep_plots  # matplotlib, imported when a sweep ends (and Hydra starts faster)

    save_sweep_plots(out_dir, sweep_plot_data(jobs))
    return rows, stats


def summarize_sweep(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Write the tables and plots of the sweep in sweep_dir, from its job dirs alone."""
    return summarize_jobs(sweep_dir, collect_jobs(sweep_dir))


def compare_sweeps(sweep_dirs: list[Path], out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Several sweeps in one table and one figure, in out_dir: every job named ``<sweep dir name>/<job name>``,
    with the sweep as one more swept key (a line or a colour per sweep)."""
    names = [Path(d).name for d in sweep_dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in sweep_dirs]
    jobs = [job for d, label in zip(sweep_dirs, labels, strict=True) for job in collect_jobs(d, sweep=label)]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return summarize_jobs(out_dir, jobs)


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    return summarize_sweep(sweep_dir)[0]


def console_report(rows: list[dict[str, Any]], stats: list[dict[str, Any]] | None) -> str:
    """The per-job table, then mean ± std per setting when there are seeds."""
    text = job_table(rows, markdown=False)
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
