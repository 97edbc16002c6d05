"""The GPU claims, checked in one run on the first machine with CUDA (under 5 minutes on one GPU).

1. launchers: a 2-job λ sweep, 5 epochs, device=auto, under basic, joblib, submitit_local and vectorized: every
   job completes, on CUDA (its train.log says where it trained), and agrees with the basic launcher's numbers;
2. kill -9, then resume: bitwise equal to an uninterrupted run on CUDA (Adam on the weight-decay data; the dropout
   MLP, whose masks come from the CUDA RNG, when Fashion-MNIST is in data/);
3. trainer.deterministic: two runs with it on, two with it off; bitwise or how far apart;
4. bench.py's rows on this GPU: (a) the chapter's epoch against the harness's, (b) a 16-value λ sweep, basic
   against vectorized, (d) the matmul share;
5. a 256-job dropout1 × dropout2 sweep (1 epoch) under the vectorized launcher, against the jobs one after another
   (8 of them timed under the basic launcher, extrapolated to 256).

Prints a table and writes outputs/gpu_check/gpu_check-<time>.json. Run: python scripts/gpu_check.py
Without CUDA it stops at once and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "gpu_check"
DATA = ROOT / "data"
NO_CUDA = "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"
# A checkpoint after every epoch (no minimum interval), so that the kill lands between two checkpoints mid-run.
EVERY_EPOCH = "trainer.checkpoint_min_interval_s=0"
WEIGHT_DECAY_ADAM = ["+experiment=weight_decay", "optim=adam", "optim.lr=0.01", "reg.lambd=0.1", "trainer.eval_every=50", EVERY_EPOCH]


def require_cuda(available: bool) -> None:
    """Stop with a clear message (exit status 1) where there is no GPU to check."""
    if not available:
        raise SystemExit(NO_CUDA)


def has_fashion_mnist(root: Path = DATA) -> bool:
    return (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists() or (
        root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    ).exists()


def without_wall_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_s"}


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest relative difference |x − y| / (|y| + 1e-7) between two metrics.json's numbers (final values and
    every evaluation's); 0.0 is bitwise equal, inf where they differ in kind (status, number of evaluations, keys)."""
    if a.get("status") != b.get("status") or len(a.get("history", [])) != len(b.get("history", [])):
        return math.inf
    pairs = [(without_wall_time(a), without_wall_time(b))] + list(zip(a.get("history", []), b.get("history", []), strict=True))
    worst = 0.0
    for x, y in pairs:
        if x.keys() != y.keys():
            return math.inf
        for key, value in x.items():
            if isinstance(value, int | float) and isinstance(y[key], int | float):
                worst = max(worst, abs(value - y[key]) / (abs(y[key]) + 1e-7))
            elif key != "history" and value != y[key]:
                return math.inf
    return worst


def dropout_grid(n: int) -> list[str]:
    """Overrides of an n × n dropout1 × dropout2 sweep over rates in [0, 0.8)."""
    rates = ",".join(f"{0.8 * i / n:.4g}" for i in range(n))
    return [f"reg.dropout1={rates}", f"reg.dropout2={rates}"]


def format_table(rows: list[dict]) -> str:
    """One line a check: its name, ok / FAIL / n/a, its seconds, then its numbers."""
    lines = []
    for row in rows:
        verdict = {True: "ok", False: "FAIL", None: "n/a"}[row["ok"]]
        details = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k not in ("check", "ok", "s"))
        lines.append(f"{row['check']:34s} {verdict:5s} {row.get('s', 0.0):7.1f}s  {details}")
    return "\n".join(lines)


def train(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()) if sweep_dir.is_dir() else []


def check_launchers(work: Path) -> list[dict]:
    sweep = ["-m", "+experiment=weight_decay", "reg.lambd=0,3", "trainer.epochs=5", "device=auto"]
    launchers = {
        "basic": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit_local": ["hydra/launcher=submitit_local"],
        "vectorized": ["hydra/launcher=vectorized"],
    }
    rows, reference = [], None
    for name, extra in launchers.items():
        start, sweep_dir = time.perf_counter(), work / "launchers" / name
        proc = train([*sweep, *extra, f"hydra.sweep.dir={sweep_dir}"], work)
        jobs = job_dirs(sweep_dir)
        results = {p.name: metrics(p) for p in jobs}
        on_cuda = bool(jobs) and all("cuda" in (p / "train.log").read_text() for p in jobs if (p / "train.log").exists())
        reference = reference or results
        diff = max((max_rel_diff(results.get(k, {}), reference[k]) for k in reference), default=math.inf)
        completed = len(results) == 2 and all(r["status"] == "completed" for r in results.values())
        ok = proc.returncode == 0 and completed and on_cuda and diff <= 1e-4
        rows.append(
            {"check": f"launcher {name}", "ok": ok, "s": time.perf_counter() - start, "on_cuda": on_cuda, "max_rel_diff_vs_basic": diff}
        )
        if proc.returncode != 0:
            rows[-1]["error"] = proc.stderr.strip().splitlines()[-1:] or proc.stdout.strip().splitlines()[-1:]
    return rows


def kill_then_resume(work: Path, name: str, args: list[str]) -> dict:
    """An uninterrupted run; the same run killed with SIGKILL after its first checkpoint, then resumed."""
    start = time.perf_counter()
    straight, killed = work / "resume" / name / "straight", work / "resume" / name / "killed"
    train([*args, f"hydra.run.dir={straight}"], work)
    log = open(work / f"{name}-killed.out", "w")  # noqa: SIM115 - the child writes to it until it is killed
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={killed}"], cwd=work, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    interrupted = not (killed / "metrics.json").exists() and (killed / "checkpoint.pt").exists()
    resumed = train([*args, f"hydra.run.dir={killed}"], work)
    diff = max_rel_diff(metrics(killed), metrics(straight)) if (killed / "metrics.json").exists() else math.inf
    bitwise = without_wall_time(metrics(killed)) == without_wall_time(metrics(straight)) if math.isfinite(diff) else False
    # A run that ended before the kill proves nothing: n/a, not ok.
    ok = (bitwise and "resuming from" in resumed.stdout + resumed.stderr) if interrupted else None
    return {
        "check": f"kill -9 + resume {name}",
        "ok": ok,
        "s": time.perf_counter() - start,
        "killed_mid_run": interrupted,
        "max_rel_diff": diff,
    }


def check_resume(work: Path) -> list[dict]:
    rows = [kill_then_resume(work, "weight_decay_adam", [*WEIGHT_DECAY_ADAM, "trainer.epochs=1500", "device=cuda"])]
    if has_fashion_mnist():
        dropout = ["+experiment=dropout", f"data.root={DATA}", "trainer.epochs=8", EVERY_EPOCH, "device=cuda"]
        rows.append(kill_then_resume(work, "dropout_mlp", dropout))
    return rows


def check_determinism(work: Path) -> list[dict]:
    """Two runs each with trainer.deterministic on and off: the dropout MLP (or, without Fashion-MNIST, an MLP on
    the synthetic data), whose masks, matmuls and cross-entropy all run on the GPU."""
    if has_fashion_mnist():
        args = ["+experiment=dropout", f"data.root={DATA}", "trainer.epochs=3", "device=cuda"]
    else:
        args = ["model=mlp", "reg=dropout_scratch", "data.n_train=2000", "trainer.epochs=20", "device=cuda"]
    rows = []
    for on in (True, False):
        start = time.perf_counter()
        runs = []
        for i in range(2):
            job = work / "deterministic" / f"{on}-{i}"
            train([*args, f"trainer.deterministic={str(on).lower()}", f"hydra.run.dir={job}"], work)
            runs.append(metrics(job) if (job / "metrics.json").exists() else {})
        diff = max_rel_diff(*runs)
        row = {"check": f"deterministic={str(on).lower()}: repeats", "ok": diff == 0.0 if on else None, "s": time.perf_counter() - start}
        rows.append(row | {"bitwise": diff == 0.0, "max_rel_diff": diff})
    return rows


def check_bench() -> list[dict]:
    """bench.py's rows on this GPU: (a) and (d) need Fashion-MNIST; (b) is the 16-value λ sweep, timed once."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="bench")
    device, rows = torch.device("cuda"), []
    start = time.perf_counter()
    basic, vectorized, _ = bench["sweep_ratio"]("gpu-check-lambda", ["+experiment=weight_decay", "reg.lambd=range(0,10,0.625)"])
    rows.append({"check": "bench (b) 16-value λ sweep", "ok": None, "s": time.perf_counter() - start, "basic_s": basic})
    rows[-1] |= {"vectorized_s": vectorized, "speedup": basic / vectorized}
    if has_fashion_mnist():
        start = time.perf_counter()
        peak = bench["sgemm_flops"](device)
        chapter = bench["median_time"](bench["chapter_epoch_fn"](device), 3, device=device)
        harness = bench["median_time"](bench["harness_epoch_fn"](device), 5, device=device)
        share = bench["mlp_epoch_flops"]() / harness / peak
        row = {"check": "bench (a) epoch, (d) matmul share", "ok": None, "s": time.perf_counter() - start, "chapter_s": chapter}
        rows.append(row | {"harness_s": harness, "ratio": harness / chapter, "sgemm_tflops": peak / 1e12, "matmul_share": share})
    return rows


def check_dropout_sweep(work: Path) -> list[dict]:
    """256 jobs (16 × 16 dropout rates, 1 epoch) as one vectorized group, against the basic launcher's time per
    job on 8 of them, times 256."""
    if not has_fashion_mnist():
        return [{"check": "256-job dropout sweep", "ok": None, "skipped": f"Fashion-MNIST not in {DATA}"}]
    base = ["-m", "+experiment=dropout", f"data.root={DATA}", "trainer.epochs=1", "device=cuda"]
    start = time.perf_counter()
    vec_dir = work / "dropout256" / "vectorized"
    args = [*base, *dropout_grid(16), "hydra/launcher=vectorized", "hydra.launcher.max_members=256", f"hydra.sweep.dir={vec_dir}"]
    proc = train(args, work, timeout=300)
    vectorized = time.perf_counter() - start
    completed = sum(metrics(p).get("status") == "completed" for p in job_dirs(vec_dir))
    start = time.perf_counter()
    train([*base, "reg.dropout1=0,0.05", "reg.dropout2=0,0.05,0.1,0.15", f"hydra.sweep.dir={work / 'dropout256' / 'basic'}"], work)
    per_job = (time.perf_counter() - start) / 8
    row = {"check": "256-job dropout sweep", "ok": proc.returncode == 0 and completed == 256, "s": vectorized + 8 * per_job}
    return [
        row
        | {
            "completed": completed,
            "vectorized_s": vectorized,
            "one_after_another_s_est": 256 * per_job,
            "speedup": 256 * per_job / vectorized,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=OUT / "runs", help="where the check's runs write (default: %(default)s)")
    args = parser.parse_args()
    require_cuda(torch.cuda.is_available())
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work / stamp
    work.mkdir(parents=True)
    rows: list[dict] = []
    for check in (check_launchers, check_resume, check_determinism, check_dropout_sweep):
        new = check(work)
        print(format_table(new), flush=True)
        rows += new
    rows += check_bench()
    report = {
        "device": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
    }
    path = OUT / f"gpu_check-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{report['device']} ×{report['gpus']}, torch {report['torch']}, CUDA {report['cuda']}")
    print(format_table(rows))
    print(f"wrote {path}")
    if any(row["ok"] is False for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
