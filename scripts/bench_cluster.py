"""Vectorized groups as SLURM jobs against the in-process vectorized launcher, as wall-time ratios (docs/scaling.md).

Each sweep runs as 2 stacked groups (hydra.launcher.max_members = half its jobs) both ways, whole `train.py -m`
commands, alternated ``--repeats`` times; the median of each is reported:

(a) the 64-value λ sweep (weight decay, 100 epochs), 2 groups of 32;
(b) the 4×4 dropout1 × dropout2 grid on Fashion-MNIST (2 epochs), 2 groups of 8.

``--quick`` runs the same commands, smallest (the test suite's): 16 λ values, a 2×2 grid of 1 epoch on 6,000 images.

Needs a SLURM cluster (SLURM_CONF; `eval "$(scripts/slurm_local.sh start)"`) and, for (b), data/FashionMNIST.
The SLURM jobs get 1 CPU each (the 2 groups run side by side); the in-process launcher has every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from regularization.machine import cpu_model  # noqa: E402

SWEEPS = {
    "lambda_64": ["+experiment=weight_decay", "reg.lambd=range(0,10,0.15625)", "hydra.launcher.max_members=32"],
    "dropout_4x4": [
        "+experiment=dropout",
        "reg.dropout1=0,0.2,0.5,0.8",
        "reg.dropout2=0,0.2,0.5,0.8",
        "trainer.epochs=2",
        "hydra.launcher.max_members=8",
    ],
}
QUICK = {
    "lambda_64": ["+experiment=weight_decay", "reg.lambd=range(0,10,0.625)", "hydra.launcher.max_members=8"],
    "dropout_4x4": [
        "+experiment=dropout",
        "reg.dropout1=0,0.5",
        "reg.dropout2=0,0.5",
        "trainer.epochs=1",
        "data.n_train=6000",
        "data.n_test=1000",
        "hydra.launcher.max_members=2",
    ],
}
LAUNCHERS = {
    "in_process": ["hydra/launcher=vectorized"],
    "slurm_2_groups": [
        "hydra/launcher=vectorized_slurm",
        "hydra.launcher.gpus_per_task=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=4",
    ],
}


def wall(args: list[str], sweep_dir: Path) -> tuple[float, list[float]]:
    """Seconds for the whole command, as a user waits for it, and each group's own training time (its wall_s)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={sweep_dir}", "trainer.progress=false"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    metrics = [json.loads(m.read_text()) for m in sweep_dir.glob("*/metrics.json")]
    groups = sorted({m["group_wall_s"] for m in metrics})  # a member's wall_s is its share of its group's
    return elapsed, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--quick", action="store_true", help="16 λ values, a 2×2 dropout grid of 1 epoch on 6,000 images")
    args = parser.parse_args()
    sweeps = QUICK if args.quick else SWEEPS
    if not os.environ.get("SLURM_CONF"):
        sys.exit('SLURM_CONF is not set: eval "$(scripts/slurm_local.sh start)" first')
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sweeps:
            times: dict[str, list[float]] = {launcher: [] for launcher in LAUNCHERS}
            groups: dict[str, list[list[float]]] = {launcher: [] for launcher in LAUNCHERS}
            for r in range(args.repeats):
                for launcher, extra in LAUNCHERS.items():
                    elapsed, group_walls = wall([*sweeps[name], *extra], Path(tmp) / f"{name}-{launcher}-{r}")
                    times[launcher].append(elapsed)
                    groups[launcher].append(group_walls)
            median = {launcher: statistics.median(t) for launcher, t in times.items()}
            ratio = median["slurm_2_groups"] / median["in_process"]
            rows[name] = {"times_s": times, "median_s": median, "slurm_over_in_process": ratio, "group_wall_s": groups}
    machine = {
        "cpu": cpu_model(),  # timings differ between CPU models: every number names its CPU
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({"machine": machine, "quick": args.quick, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
