"""Sweep summary: one row per job, read back from the job dirs alone (.hydra/overrides.yaml, metrics.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from regularization.logging import log, write_text_atomic

COLUMNS = ["job", "status", "epochs", "train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm", "sparsity", "wall_s"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir under the sweep: the dirs that hold Hydra's .hydra/overrides.yaml."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml") if p.parent.parent != Path(sweep_dir))


def load_job(job_dir: Path) -> dict[str, Any]:
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    metrics_path = job_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"status": "failed"}
    row = {key: metrics.get(key) for key in COLUMNS}
    row["job"] = ",".join(overrides) or job_dir.name
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    return [load_job(d) for d in job_dirs(sweep_dir)]


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


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(sweep_dir) / "summary.csv", buf.getvalue())
    write_text_atomic(Path(sweep_dir) / "summary.md", markdown_table(rows))


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = collect(sweep_dir)
    write_summary(sweep_dir, rows)
    return rows


class SweepSummary(Callback):
    """At the end of a multirun: write summary.csv and summary.md into the sweep dir and print the table.

    As a Hydra callback it runs under any launcher. A sweep with failed jobs then exits with status 1.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        log.info("Sweep summary (%s):\n%s", sweep_dir / "summary.md", console_table(rows))
        failed = [r["job"] for r in rows if r["status"] == "failed"]
        if failed:  # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings
            raise SystemExit(f"{len(failed)} of {len(rows)} jobs failed ({'; '.join(failed)}): see traceback.txt in their job dirs")
