"""The GPU claims, checked in one run on the first machine with CUDA (sized for 5 minutes on one GPU, estimated).

1. launchers: a 2-job λ sweep, 5 epochs, under basic, joblib, submitit_local and vectorized: every job completes,
   on the device asked for (its train.log says where it trained), and agrees with the basic launcher's numbers;
2. kill -9, then resume: bitwise equal to an uninterrupted run (Adam on the weight-decay data; the dropout MLP,
   whose masks come from the device's RNG);
3. trainer.deterministic: two runs with it on, two with it off; bitwise or how far apart;
4. bench.py's rows on this device: (b) a 16-value λ sweep, basic against vectorized, (a) the chapter's epoch against
   the harness's, (d) the matmul share;
5. trainer.compile=true (on CUDA mode reduce-overhead, as train.py compiles there): a sweep over two dropout rates
   under basic (compiled once: the second job's compile_s is 0) and under vectorized, each against the same run eager;
6. trainer.precision: bf16-mixed (and 16-mixed on CUDA, basic only) against fp32 over a few seeds, basic and vectorized:
   the seeds' mean within 3 standard errors of fp32's, the standard error from fp32's seed-to-seed spread in that run;
7. an n × n dropout1 × dropout2 sweep (1 epoch; 16 × 16 on a GPU) as one vectorized group, against the jobs one after
   another (a few of them run under the basic launcher, extrapolated); both sides in-process training time.

Prints a table and writes outputs/gpu_check/gpu_check-<time>.json after every check (a crash or a Ctrl-C leaves
the rows so far). A run that passes its time limit is a failed row, never a crash.

    python scripts/gpu_check.py                # on a machine with CUDA (without one it stops at once and says so)
    python scripts/gpu_check.py --device cpu   # every row that does not need CUDA, sized for a CPU (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import runpy
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the package is next to it
from regularization.logging import write_json_atomic  # noqa: E402

OUT = ROOT / "outputs" / "gpu_check"
DATA = ROOT / "data"
NO_CUDA = (
    "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU, "
    "or pass --device cpu for the rows that do not need one"
)
# metrics.json keys that are not results: wall times, and the vectorized launcher's bookkeeping of its group.
NOT_RESULTS = frozenset(
    {"wall_s", "group_wall_s", "group_size", "compile_s", "group_compile_s", "peak_memory_bytes", "group_peak_memory_bytes"}
)
WEIGHT_DECAY_ADAM = ["+experiment=weight_decay", "optim=adam", "optim.lr=0.01", "reg.lambd=0.1", "trainer.eval_every=50"]
# The dropout MLP without Fashion-MNIST (or on a CPU, where the real data would not fit the time): synthetic data.
SYNTHETIC_MLP = ["model=mlp", "reg=dropout_scratch", "data.n_train=2000", "data.batch_size=100", "model.hidden1=64", "model.hidden2=64"]


@dataclass(frozen=True)
class Sizes:
    """How big each row is. ``gpu`` is sized for 5 minutes on one GPU (estimated, not timed yet: no GPU has run it):
    about 24 train.py processes whose start-up dominates (the launcher and resume rows are small fixed runs; a few
    seconds each), the dropout rows' Fashion-MNIST epochs (about 60 of the MLP, a 256-member group's one epoch, 8
    one-epoch jobs: well under a second each on a GPU), and two cold compiles (tens of seconds each). ``cpu`` runs
    the same rows on a CPU, the dropout rows on synthetic data (the compile rows' graph is the same at any MLP size);
    ``tiny`` is the test suite's: the same logic, smallest."""

    launchers: tuple[str, ...] = ("basic", "joblib", "submitit_local", "vectorized")
    launcher_epochs: int = 5
    resume_epochs: int = 400  # the weight-decay run killed mid-way (4 steps an epoch)
    resume_runs: tuple[str, ...] = ("weight_decay_adam", "dropout_mlp")
    real_data: bool = True  # the dropout rows on Fashion-MNIST when it is in data/ (else the synthetic MLP)
    dropout_epochs: int = 10  # the dropout MLP's resume run
    determinism_epochs: int = 3
    deterministic: tuple[bool, ...] = (True, False)  # the repeat pairs run: with trainer.deterministic on, off
    grid: int = 16  # the dropout sweep: grid × grid jobs as one vectorized group
    basic_sample: int = 8  # of which these run under the basic launcher
    compile_epochs: int = 1  # the compile rows: two dropout rates, compiled and eager, under basic and vectorized
    precision_seeds: int = 3  # the precision rows: seeds 0..n-1 at fp32 and each mixed precision
    precision_epochs: int = 1
    bench_lambdas: int = 16
    bench_epoch: bool = True  # bench (a) and (d): an epoch of the chapter's MLP, timed
    timeout_s: float = 240.0  # one train.py run


CPU_SIZES = Sizes(
    real_data=False,
    dropout_epochs=20,
    determinism_epochs=2,
    precision_seeds=3,
    grid=8,
    basic_sample=4,
    bench_epoch=False,
    timeout_s=120.0,
)
SIZES = {
    "gpu": Sizes(),
    "cpu": CPU_SIZES,
    "tiny": replace(  # the CPU run shrunk to the fewest runs that still exercise every check (the tests' size)
        CPU_SIZES,
        launchers=("basic", "vectorized"),
        launcher_epochs=2,
        resume_epochs=200,
        resume_runs=("weight_decay_adam",),
        determinism_epochs=1,
        deterministic=(True,),
        compile_epochs=1,
        precision_seeds=2,
        precision_epochs=1,
        grid=2,
        basic_sample=2,
        bench_lambdas=2,
        timeout_s=60.0,
    ),
}


@dataclass(frozen=True)
class Check:
    """Where the runs write, on which device, at which sizes."""

    work: Path
    device: str  # "cuda" or "cpu"
    sizes: Sizes

    def dropout_args(self) -> list[str]:
        """The dropout MLP: the chapter's on Fashion-MNIST, or the synthetic one."""
        if self.sizes.real_data and has_fashion_mnist():
            return ["+experiment=dropout", f"data.root={DATA}"]
        return SYNTHETIC_MLP

    def train(self, args: list[str]) -> subprocess.CompletedProcess:
        return train([*args, f"device={self.device}"], self.work, self.sizes.timeout_s)


def require_cuda(available: bool) -> None:
    """Stop with a clear message (exit status 1) where there is no GPU to check."""
    if not available:
        raise SystemExit(NO_CUDA)


def has_fashion_mnist(root: Path = DATA) -> bool:
    return (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists() or (
        root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    ).exists()


def results_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_RESULTS}


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest relative difference |x − y| / (|y| + 1e-7) between two metrics.json's numbers (final values and
    every evaluation's; wall times and a vectorized group's bookkeeping left out); 0.0 is bitwise equal, inf where
    they differ in kind (status, number of evaluations, keys)."""
    if a.get("status") != b.get("status") or len(a.get("history", [])) != len(b.get("history", [])):
        return math.inf
    pairs = [(results_only(a), results_only(b))] + list(zip(a.get("history", []), b.get("history", []), strict=True))
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


TIMED_OUT = 124  # the return code of a run stopped at its time limit (as timeout(1) exits)


def train(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in cwd. Past ``timeout`` seconds the run and every process it started (joblib's
    and submitit's workers) are killed, and it comes back with return code 124 and a line saying so."""
    argv = [sys.executable, str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(argv, TIMED_OUT, out, f"{err}\ngpu_check: timed out after {timeout:g} s")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def last_error(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def metrics(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()) if sweep_dir.is_dir() else []


def trained_on(job_dir: Path, device: str) -> bool:
    """Whether the job's train.log says it trained on ``device`` (cuda: any index)."""
    log = job_dir / "train.log"
    return log.exists() and f"on {device}" in log.read_text()


def check_launchers(c: Check) -> list[dict]:
    sweep = ["-m", "+experiment=weight_decay", "reg.lambd=0,3", f"trainer.epochs={c.sizes.launcher_epochs}"]
    # device=auto on a GPU: the launchers' choice of device is what is checked there.
    device = "auto" if c.device == "cuda" else c.device
    extras = {
        "basic": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit_local": ["hydra/launcher=submitit_local"],
        "vectorized": ["hydra/launcher=vectorized"],
    }
    rows, reference = [], None
    for name in c.sizes.launchers:
        start, sweep_dir = time.perf_counter(), c.work / "launchers" / name
        proc = train([*sweep, *extras[name], f"device={device}", f"hydra.sweep.dir={sweep_dir}"], c.work, c.sizes.timeout_s)
        jobs = job_dirs(sweep_dir)
        results = {p.name: metrics(p) for p in jobs}
        on_device = bool(jobs) and all(trained_on(p, c.device) for p in jobs)
        reference = reference or results
        diff = max((max_rel_diff(results.get(k, {}), reference[k]) for k in reference), default=math.inf)
        completed = len(results) == 2 and all(r.get("status") == "completed" for r in results.values())
        ok = proc.returncode == 0 and completed and on_device and diff <= 1e-4
        row = {"check": f"launcher {name}", "ok": ok, "s": time.perf_counter() - start, f"on_{c.device}": on_device}
        rows.append(row | {"max_rel_diff_vs_basic": diff})
        if proc.returncode != 0:
            rows[-1]["error"] = last_error(proc)
    return rows


def kill_then_resume(c: Check, name: str, args: list[str]) -> dict:
    """An uninterrupted run; the same run killed with SIGKILL after its first checkpoint, then resumed."""
    start = time.perf_counter()
    straight, killed = c.work / "resume" / name / "straight", c.work / "resume" / name / "killed"
    first = c.train([*args, f"hydra.run.dir={straight}"])
    log = open(c.work / f"{name}-killed.out", "w")  # noqa: SIM115 - the child writes to it until it is killed
    argv = [sys.executable, str(ROOT / "train.py"), *args, f"device={c.device}", f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(argv, cwd=c.work, stdout=log, stderr=log)
    deadline = time.monotonic() + c.sizes.timeout_s
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    interrupted = not (killed / "metrics.json").exists() and (killed / "checkpoint.pt").exists()
    resumed = c.train([*args, f"hydra.run.dir={killed}"])
    diff = max_rel_diff(metrics(killed), metrics(straight)) if metrics(killed) and metrics(straight) else math.inf
    bitwise = math.isfinite(diff) and results_only(metrics(killed)) == results_only(metrics(straight))
    # A run that ended before the kill proves nothing: n/a, not ok.
    ok = (bitwise and "resuming from" in resumed.stdout + resumed.stderr) if interrupted else None
    if TIMED_OUT in (first.returncode, resumed.returncode) or not (straight / "checkpoint.pt").exists():
        ok = False  # a run that never got going is a failure, not a kill that came late
    row = {"check": f"kill -9 + resume {name}", "ok": ok, "s": time.perf_counter() - start, "killed_mid_run": interrupted}
    row["max_rel_diff"] = diff
    if ok is False:
        row["error"] = last_error(resumed if first.returncode == 0 else first)
    return row


def ten_checkpoints(epochs: int) -> list[str]:
    """A run of ``epochs`` with a checkpoint every tenth of it (no minimum interval): the kill after the first one
    lands between two checkpoints with most of the run to come, and the run fsyncs 10 checkpoints, not one an epoch."""
    return [f"trainer.epochs={epochs}", f"trainer.checkpoint_every={max(1, epochs // 10)}", "trainer.checkpoint_min_interval_s=0"]


def check_resume(c: Check) -> list[dict]:
    runs = {
        "weight_decay_adam": [*WEIGHT_DECAY_ADAM, *ten_checkpoints(c.sizes.resume_epochs)],
        "dropout_mlp": [*c.dropout_args(), *ten_checkpoints(c.sizes.dropout_epochs)],
    }
    return [kill_then_resume(c, name, runs[name]) for name in c.sizes.resume_runs]


def check_determinism(c: Check) -> list[dict]:
    """Two runs each with trainer.deterministic on and off: the dropout MLP, whose masks, matmuls and cross-entropy
    all run on the device."""
    args = [*c.dropout_args(), f"trainer.epochs={c.sizes.determinism_epochs}"]
    rows = []
    for on in c.sizes.deterministic:
        start = time.perf_counter()
        runs, procs = [], []
        for i in range(2):
            job = c.work / "deterministic" / f"{on}-{i}"
            procs.append(c.train([*args, f"trainer.deterministic={str(on).lower()}", f"hydra.run.dir={job}"]))
            runs.append(metrics(job))
        diff = max_rel_diff(*runs) if all(runs) else math.inf
        ran = all(p.returncode == 0 for p in procs)
        row = {"check": f"deterministic={str(on).lower()}: repeats", "ok": (ran and diff == 0.0) if on else (None if ran else False)}
        rows.append(row | {"s": time.perf_counter() - start, "bitwise": diff == 0.0, "max_rel_diff": diff})
        if not ran:
            rows[-1]["error"] = last_error(next(p for p in procs if p.returncode != 0))
    return rows


# Compiled against eager, final metrics (FINAL), relative. Under the vectorized launcher the dropout uniforms are
# drawn eagerly and handed to the compiled graph, so both runs apply the same masks and differ only by fp32 rounding
# (inductor fuses and reorders the elementwise work): bitwise on the CPU (measured), and 1e-4 is the launcher row's
# bound for two GEMM kernels. Another stream of masks from the same initial weights moves the final losses by 1.5e-4
# to 7.6e-3 (the CPU run's MLP, 3 epochs, 8 pairs), so a compiled step that applied other masks fails it.
COMPILED_VECTORIZED_TOL = 1e-4
# Under the basic launcher the compiled graph draws its masks with inductor's random numbers, not eager's: the two
# runs differ as two streams of masks do (measured on the CPU run's MLP: up to 7.9e-3 on the final losses). 5e-2
# passes that with room; it fails a compiled step that trains otherwise (wrong gradients, a diverged or stalled
# run), not one that draws other masks.
COMPILED_BASIC_TOL = 5e-2
COMPILE_RATES = ("0.2", "0.5")  # reg.dropout1's two values: non-zero, so both jobs are the same graph
# The final metrics compared across compile and precision: what a user reads off a run. Discrete counts (sparsity:
# one weight crossing the threshold) and wall times are not compared; test_acc only where there are classes.
FINAL = ("train_loss", "test_loss", "test_acc", "weight_l2_norm")
FELL_BACK = "runs eagerly from here"  # Step.restart's log line when compile gave up


def job_value(job_dir: Path, key: str) -> Any:
    """A job's config value, from its .hydra/config.yaml."""
    return OmegaConf.select(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), key)


def final_rel_diff(a: dict, b: dict) -> float:
    """The largest relative difference |x − y| / (|y| + 1e-7) of two runs' final metrics (FINAL); inf where either
    did not complete."""
    if a.get("status") != "completed" or b.get("status") != "completed":
        return math.inf
    keys = [k for k in FINAL if isinstance(b.get(k), int | float)]
    return max((abs(a[k] - b[k]) / (abs(b[k]) + 1e-7) if isinstance(a.get(k), int | float) else math.inf for k in keys), default=math.inf)


def in_run_order(sweep_dir: Path) -> list[Path]:
    """A basic sweep's jobs in the order they ran (their dirs' names sort otherwise)."""
    return sorted(job_dirs(sweep_dir), key=lambda p: (p / "metrics.json").stat().st_mtime)


def judge_compiled(launcher: str, sweep_dir: Path, tolerance: float) -> dict:
    """The compile row from its sweep (two rates, compiled then eager): every job completed, compiled (compile_s > 0
    in the first), once (under basic the second compiled job's compile_s is 0: it reused the first job's graphs),
    without falling back to eager, its final metrics within ``tolerance`` of the eager job at the same rate."""
    jobs = in_run_order(sweep_dir)
    compiled = {job_value(p, "reg.dropout1"): metrics(p) for p in jobs if job_value(p, "trainer.compile")}
    eager = {job_value(p, "reg.dropout1"): metrics(p) for p in jobs if not job_value(p, "trainer.compile")}
    compile_s = [m.get("group_compile_s", m.get("compile_s", math.nan)) for m in compiled.values()]  # a group's whole
    diff = max((final_rel_diff(m, eager.get(rate, {})) for rate, m in compiled.items()), default=math.inf)
    fell_back = any(FELL_BACK in p.read_text() for p in sweep_dir.rglob("train.log"))
    once = len(compile_s) == len(COMPILE_RATES) and compile_s[0] > 0 and (launcher != "basic" or all(s == 0 for s in compile_s[1:]))
    row = {"check": f"compile {launcher}", "ok": once and not fell_back and diff <= tolerance and len(eager) == len(COMPILE_RATES)}
    row["compile_s"] = compile_s[0] if compile_s else math.nan
    if launcher == "basic":
        row["compile_s_second_job"] = compile_s[1] if len(compile_s) > 1 else math.nan
    return row | {"eager_fallback": fell_back, "max_rel_diff_vs_eager": diff, "tolerance": tolerance}


def check_compile(c: Check) -> list[dict]:
    """trainer.compile=true against eager: two dropout rates compiled, then the same eager, in one process a launcher:
    basic (the rates share one set of graphs: the second compiles nothing) and vectorized (a group each way).
    train.py compiles in mode reduce-overhead on CUDA, with inductor's default mode on a CPU."""
    rows = []
    for launcher, tolerance in (("basic", COMPILED_BASIC_TOL), ("vectorized", COMPILED_VECTORIZED_TOL)):
        start, sweep_dir = time.perf_counter(), c.work / "compile" / launcher
        args = ["-m", *c.dropout_args(), f"trainer.epochs={c.sizes.compile_epochs}", "trainer.compile=true,false"]
        args += [f"reg.dropout1={','.join(COMPILE_RATES)}", f"hydra.sweep.dir={sweep_dir}"]
        proc = c.train([*args, "hydra/launcher=vectorized"] if launcher == "vectorized" else args)
        row = judge_compiled(launcher, sweep_dir, tolerance)
        row |= {"ok": row["ok"] and proc.returncode == 0, "s": time.perf_counter() - start}
        rows.append(row | {"mode": "reduce-overhead" if c.device == "cuda" else "default"})
        if proc.returncode != 0:
            rows[-1]["error"] = last_error(proc)
    return rows


def seed_stats(values: dict[str, list[float]], precision: str) -> dict:
    """bf16-mixed's (16-mixed's) seeds against fp32's on one metric: the gap between the means, and the bound it must
    stay under, 3 standard errors of that difference, from fp32's seed-to-seed standard deviation σ: 3σ√(2/n)."""
    ref, other = values["32"], values[precision]
    sigma = statistics.stdev(ref) if len(ref) > 1 else math.nan
    gap = abs(statistics.fmean(other) - statistics.fmean(ref)) if ref and len(other) == len(ref) else math.inf
    return {"gap": gap, "sigma_32": sigma, "bound": 3 * sigma * math.sqrt(2 / len(ref)) if ref else math.nan}


def judge_precision(launcher: str, sweep_dir: Path, precision: str, seeds: int) -> dict:
    """A precision row from its sweep (seeds × precisions): every job completed; on each test metric the seeds' mean
    at ``precision`` within 3 standard errors of fp32's (``seed_stats``); and not bitwise fp32 (autocast applied)."""
    runs = {(job_value(p, "trainer.precision"), job_value(p, "seed")): metrics(p) for p in job_dirs(sweep_dir)}
    done = [runs.get((p, s), {}).get("status") == "completed" for p in ("32", precision) for s in range(seeds)]
    row: dict[str, Any] = {"check": f"precision {precision} {launcher}", "ok": False, "completed": sum(done)}
    if not all(done):
        return row
    worst = 0.0
    for key in ("test_loss", "test_acc"):
        values = {p: [runs[p, s][key] for s in range(seeds)] for p in ("32", precision) if runs[p, 0].get(key) is not None}
        if values:
            stats = seed_stats(values, precision)
            row |= {f"{key}_{k}": v for k, v in stats.items()}
            worst = max(worst, stats["gap"] / stats["bound"] if stats["bound"] > 0 else math.inf)
    pairs = [(runs[precision, s], runs["32", s]) for s in range(seeds)]
    same = all(final_rel_diff(a, b) == 0 and a.get("history") == b.get("history") for a, b in pairs)
    return row | {"ok": worst <= 1 and not same, "gap_over_bound": worst, "bitwise_fp32": same}


def check_precision(c: Check) -> list[dict]:
    """trainer.precision against fp32, seeds 0..n-1 of the dropout MLP, a sweep per launcher (fp32 and the mixed
    precisions in one process). 16-mixed needs CUDA and the basic launcher; bf16-mixed on CUDA a GPU with native bf16."""
    wanted = {"basic": ("bf16-mixed", "16-mixed"), "vectorized": ("bf16-mixed",)}
    why_not = {"16-mixed": None if c.device == "cuda" else "16-mixed needs CUDA"}
    if c.device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        why_not["bf16-mixed"] = "no native bf16 on this GPU (before Ampere)"
    seeds = c.sizes.precision_seeds
    rows = []
    for launcher, precisions in wanted.items():
        start, sweep_dir = time.perf_counter(), c.work / "precision" / launcher
        runnable = [p for p in precisions if why_not.get(p) is None]
        args = ["-m", *c.dropout_args(), f"trainer.epochs={c.sizes.precision_epochs}", f"seed=range(0,{seeds})"]
        args += ["hydra/launcher=vectorized"] if launcher == "vectorized" else []
        proc = c.train([*args, f"trainer.precision={','.join(('32', *runnable))}", f"hydra.sweep.dir={sweep_dir}"]) if runnable else None
        for precision in precisions:
            if precision not in runnable:
                rows.append({"check": f"precision {precision} {launcher}", "ok": None, "s": 0.0, "why": why_not[precision]})
                continue
            row = judge_precision(launcher, sweep_dir, precision, seeds)
            rows.append(row | {"ok": row["ok"] and proc.returncode == 0, "s": time.perf_counter() - start})
            if proc.returncode != 0:
                rows[-1]["error"] = last_error(proc)
    return rows


def check_bench(c: Check) -> list[dict]:
    """bench.py's rows on this device: (b) is the λ sweep, both launchers in this process after a warm-up of
    each; (a) and (d) need Fashion-MNIST."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="bench")
    with contextlib.chdir(ROOT):  # bench's relative paths (data/, outputs/bench/) are the repository's
        return bench_rows(bench, c)


def bench_rows(bench: dict, c: Check) -> list[dict]:
    device, rows = torch.device(c.device), []
    start = time.perf_counter()
    lambd = f"reg.lambd=range(0,10,{10 / c.sizes.bench_lambdas})"
    basic, vectorized, _ = bench["sweep_ratio"]("gpu-check-lambda", ["+experiment=weight_decay", lambd, f"device={c.device}"])
    row = {"check": f"bench (b) {c.sizes.bench_lambdas}-value λ sweep", "ok": None, "s": time.perf_counter() - start}
    rows.append(row | {"basic_s": basic, "vectorized_s": vectorized, "speedup": basic / vectorized})
    if c.sizes.bench_epoch and has_fashion_mnist():
        start = time.perf_counter()
        peak = bench["sgemm_flops"](device)
        chapter = bench["median_time"](bench["chapter_epoch_fn"](device), 3, device=device)
        harness = bench["median_time"](bench["harness_epoch_fn"](device), 5, device=device)
        share = bench["mlp_epoch_flops"]() / harness / peak
        row = {"check": "bench (a) epoch, (d) matmul share", "ok": None, "s": time.perf_counter() - start, "chapter_s": chapter}
        rows.append(row | {"harness_s": harness, "ratio": harness / chapter, "sgemm_tflops": peak / 1e12, "matmul_share": share})
    return rows


def one_after_another_s(walls: list[float], n_jobs: int) -> float:
    """The training time of n_jobs run one after another, from a few run so: the first job's warm-up (CUDA context,
    cuBLAS handles, allocator) paid once, as the vectorized group pays it once, then the median warm job's."""
    return walls[0] + (n_jobs - 1) * statistics.median(walls[1:] or walls)


def check_dropout_sweep(c: Check) -> list[dict]:
    """grid × grid jobs (dropout rates, 1 epoch) as one vectorized group, against a few of them under the basic
    launcher, extrapolated (``one_after_another_s``). Both sides are in-process training time from metrics.json
    (``group_wall_s``, each job's ``wall_s``): neither pays its process's start-up, both pay warm-up once."""
    n, k = c.sizes.grid**2, c.sizes.basic_sample
    base = ["-m", *c.dropout_args(), "trainer.epochs=1"]
    start = time.perf_counter()
    vec_dir = c.work / "dropout_sweep" / "vectorized"
    group = ["hydra/launcher=vectorized", f"hydra.launcher.max_members={n}"]
    proc = c.train([*base, *dropout_grid(c.sizes.grid), *group, f"hydra.sweep.dir={vec_dir}"])
    vectorized = [metrics(p) for p in job_dirs(vec_dir)]
    completed = sum(m.get("status") == "completed" for m in vectorized)
    rates = dropout_grid(c.sizes.grid)[0].removeprefix("reg.dropout1=").split(",")
    basic_dir = c.work / "dropout_sweep" / "basic"
    basic_proc = c.train([*base, "reg.dropout1=0", f"reg.dropout2={','.join(rates[:k])}", f"hydra.sweep.dir={basic_dir}"])
    # The basic jobs in the order they ran (their dirs' names sort otherwise).
    ran = sorted(job_dirs(basic_dir), key=lambda p: (p / "metrics.json").stat().st_mtime)
    walls = [m["wall_s"] for m in map(metrics, ran) if "wall_s" in m]
    ok = proc.returncode == 0 and completed == n and basic_proc.returncode == 0 and len(walls) == k
    row = {"check": f"{n}-job dropout sweep", "ok": ok, "s": time.perf_counter() - start, "completed": completed}
    if not ok:
        return [row | {"error": last_error(proc if proc.returncode else basic_proc)}]
    together = max(m["group_wall_s"] for m in vectorized)
    estimate = one_after_another_s(walls, n)
    return [row | {"vectorized_train_s": together, "one_after_another_train_s_est": estimate, "speedup": estimate / together}]


CHECKS: list[Callable[[Check], list[dict]]] = [
    check_launchers,
    check_resume,
    check_determinism,
    check_compile,
    check_precision,
    check_dropout_sweep,
    check_bench,
]


def run_check(check: Callable[[Check], list[dict]], c: Check) -> list[dict]:
    """A check's rows; one that raises is one failed row with its error, and the next check runs."""
    start = time.perf_counter()
    try:
        return check(c)
    except Exception as err:  # noqa: BLE001 - any error in a check is its failure, reported with the others
        error = "".join(traceback.format_exception_only(err)).strip().splitlines()[-1]
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return [{"check": name, "ok": False, "s": time.perf_counter() - start, "error": error}]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: every row that does not need CUDA, on the CPU")
    parser.add_argument("--size", choices=tuple(SIZES), default=None, help="the rows' sizes (default: gpu on cuda, cpu on cpu)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report and the runs go (default: %(default)s)")
    args = parser.parse_args()
    if args.device == "cuda":
        require_cuda(torch.cuda.is_available())
    sizes = SIZES[args.size or ("gpu" if args.device == "cuda" else "cpu")]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / "runs" / stamp
    work.mkdir(parents=True)
    c = Check(work.resolve(), args.device, sizes)
    report = {
        "device": device_name(args.device),
        "gpus": torch.cuda.device_count() if args.device == "cuda" else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size or ("gpu" if args.device == "cuda" else "cpu"),
        "sizes": dataclasses.asdict(sizes),
        "date": datetime.now().isoformat(timespec="seconds"),
        "load_average_before": os.getloadavg(),
        "rows": [],
    }
    path = args.out / f"gpu_check-{stamp}.json"
    start = time.perf_counter()
    for check in CHECKS:
        new = run_check(check, c)
        print(format_table(new), flush=True)
        report["rows"] += new
        report["total_s"] = time.perf_counter() - start
        write_json_atomic(path, json.loads(json.dumps(report, default=str)))  # after every check: nothing is lost
    print(f"\n{report['device']}, torch {report['torch']}, CUDA {report['cuda']}, {report['total_s']:.0f} s")
    print(format_table(report["rows"]))
    print(f"wrote {path}")
    if any(row["ok"] is False for row in report["rows"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
