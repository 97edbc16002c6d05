"""Rebuild a sweep's summary (summary.csv, summary.md, plots) from its job dirs alone, or compare several sweeps.

    python scripts/summarize.py outputs/multirun/2026-01-01_12-00-00_1234
    python scripts/summarize.py SWEEP_DIR SWEEP_DIR ... --out outputs/comparison
    python scripts/summarize.py SWEEP_DIR --baseline reg.lambd=0 --metric best_test_acc

Works on a sweep that crashed or ran elsewhere: it reads each job's .hydra/*.yaml, metrics.json and event
files, as the end-of-sweep callback does. With several sweep dirs, each is summarized in its own dir and all
of them together in one table and one figure in --out: every job named <sweep dir name>/<job name>, the
sweep being one more key that sets jobs apart (a line or colour per sweep in the plots).

--metric picks what the plots, the heat map and the comparison show (any number in metrics.json). --baseline
KEY=VALUE adds each setting's gain over that setting, paired by seed, with a 95% interval: comparison.csv, a
section of summary.md and comparison.png. With several sweeps, the comparison is made in --out, where the sweep
is a key too (--baseline sweep=NAME compares the sweeps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from regularization.comparison import ComparisonError  # noqa: E402
from regularization.summary import compare_sweeps, console_report, job_dirs, summarize_sweep  # noqa: E402


def outputs(out_dir: Path) -> list[str]:
    """The tables and plots a summary writes, by name."""
    return sorted({p.name for pattern in ("summary*", "*.png", "comparison.csv") for p in out_dir.glob(pattern)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP_DIR", help="a multirun dir, e.g. outputs/multirun/<time>")
    parser.add_argument("--out", type=Path, default=Path("outputs/comparison"), help="where several sweeps' comparison goes")
    parser.add_argument("--metric", help="the metrics.json field that plots and comparison show (default test_acc; regression test_loss)")
    parser.add_argument("--baseline", metavar="KEY=VALUE", help="compare every setting with this one, paired by seed (e.g. reg.lambd=0)")
    args = parser.parse_args(argv)
    for sweep_dir in args.sweep_dirs:
        if not sweep_dir.is_dir():
            parser.error(f"{sweep_dir} is not a directory")
        if not job_dirs(sweep_dir):
            parser.error(f"no job dirs in {sweep_dir}: expected subdirs with .hydra/overrides.yaml, as `python train.py -m ...` writes")
    several = len(args.sweep_dirs) > 1
    try:
        for sweep_dir in args.sweep_dirs:
            report = summarize_sweep(sweep_dir, args.metric, None if several else args.baseline)
            print(f"{sweep_dir}:\n{console_report(report)}\n")
        written = {d: outputs(d) for d in args.sweep_dirs}
        if several:
            report = compare_sweeps(args.sweep_dirs, args.out, args.metric, args.baseline)
            print(f"All {len(args.sweep_dirs)} sweeps:\n{console_report(report)}\n")
            written[args.out] = outputs(args.out)
    except ComparisonError as e:
        parser.error(f"--{e}")
    for out_dir, names in written.items():
        print(f"Wrote into {out_dir}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
