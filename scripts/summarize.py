"""Rebuild a sweep's summary (summary.csv, summary.md, plots) from its job dirs alone.

    python scripts/summarize.py outputs/multirun/2026-01-01_12-00-00-000000

Works on a sweep that crashed or ran elsewhere: it reads each job's .hydra/overrides.yaml,
metrics.json and event files, as the end-of-sweep callback does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from regularization.summary import console_report, job_dirs, summarize_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a multirun dir, e.g. outputs/multirun/<time>")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    if not job_dirs(args.sweep_dir):
        parser.error(f"no job dirs in {args.sweep_dir}: expected subdirs with .hydra/overrides.yaml, as `python train.py -m ...` writes")
    rows, stats = summarize_sweep(args.sweep_dir)
    print(console_report(rows, stats))
    print(f"\nWrote {args.sweep_dir / 'summary.md'}, summary.csv and the plots.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
