"""Speed of the harness, in one process on the current device (cuda if available, else cpu).

(a) one Fashion-MNIST MLP epoch (lr 0.5, batch 256, dropout 0.2/0.5): the chapter's pipeline (torchvision
    dataset + ToTensor + DataLoader, a copy to the device per batch, loss.sum().backward(), per-batch metrics
    read to the host) against the harness's engine.train_epoch on device-resident data;
(b) a 64-value λ sweep of the weight-decay experiment: `train.py -m` with the basic launcher (jobs one after
    another) against hydra/launcher=vectorized, both run in this process after an untimed one-job warm-up of
    each, in turns (the first of each pair alternating), 3 times each (medians);
(c) a 4×4 dropout1 × dropout2 sweep on Fashion-MNIST, 2 epochs: basic against vectorized, once each;
(d) the harness epoch's FLOP rate (forward + backward matmuls) as a share of a large sgemm's, timed here;
(e) the harness epoch at trainer.precision=bf16-mixed against fp32;
(f) the 4×4 dropout sweep of (c) with the vectorized launcher at bf16-mixed, against (c)'s basic and vectorized
    launchers at fp32;
(g) the harness epoch with trainer.compile=true against eager, after warm-up, and the compile time;
(h) the bf16-mixed epoch's FLOP rate as a share of a large bf16 GEMM's, timed here;
(i) the issue's λ sweep (λ = 0 and 63 values log-spaced 1e-3..10, 100 epochs), vectorized with every artifact,
    against scripts/func_ensemble.py (a torch.func ensemble: no artifacts), whole processes and in-process, in turns,
    3 times each (medians); the ensemble's final ‖w‖ and test loss against ours (the same models: within 1e-4);
(j) the 4×4 dropout grid of (c), vectorized against the torch.func ensemble, at fp32 and at bf16-mixed, once each;
(k) the per-job overhead: (t(1024-λ sweep) − t(64-λ sweep)) / 960, whole processes, vectorized, in turns;
(s) start-up: `python train.py -m reg.lambd=0,3` (what `make run` runs) as a whole process against
    `python -c "import torch"`, 5 of each in turns (medians); the least any torch program can take. Beside it,
    the floor of a program that trains with torch.optim: `import torch` plus one optimizer (its first
    construction imports torch._dynamo), against the same baseline.

For (a) and (c) it also reports the floor: the matmul FLOPs at the sgemm rate, the least time any code can take.
Both sweeps run through train.py's Hydra app in this process, with the same torch thread count; the basic
launcher's jobs do what a user's do (preflight, per-epoch checkpoints, event files, metrics.json).
``--profile`` prints where the fp32 and the bf16-mixed epoch spend their time (torch.profiler, top ops).

Prints a table and writes outputs/bench/bench-<time>.json.
Run: python scripts/bench.py [--quick] [--threads N] [--rows a,b,...,k,s] [--profile], or python scripts/bench.py --startup
for row (s) alone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import regularization  # noqa: E402
from regularization.data import load_data  # noqa: E402
from regularization.engine import make_optimizer, make_penalty, make_step, seed_everything, train_epoch  # noqa: E402
from regularization.logging import write_json_atomic  # noqa: E402
from regularization.machine import cpu_model  # noqa: E402
from regularization.models import build_model  # noqa: E402
from regularization.step import Step  # noqa: E402

OUT = ROOT / "outputs" / "bench"
ENSEMBLE = runpy.run_path(str(ROOT / "scripts" / "func_ensemble.py"), run_name="func_ensemble")  # its λ values


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of fn over `repeats` calls after `warmup` untimed ones (synchronizing a GPU)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# (a) The chapter's pipeline, written as d2l writes it (train_epoch_ch3 with the from-scratch sgd updater).
def chapter_epoch_fn(device: torch.device) -> Callable[[], None]:
    train_iter = DataLoader(
        FashionMNIST(str(ROOT / "data"), train=True, transform=transforms.ToTensor()), batch_size=256, shuffle=True, num_workers=0
    )
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10)
    ).to(device)
    loss = nn.CrossEntropyLoss(reduction="none")
    lr = 0.5

    def sgd(params, batch_size: int) -> None:
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad / batch_size
                p.grad.zero_()

    def epoch() -> None:
        net.train()
        metric = [0.0, 0.0, 0]  # d2l's Accumulator: loss sum, correct, examples
        for X, y in train_iter:
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741  (d2l's name)
            l.sum().backward()
            sgd(net.parameters(), X.shape[0])
            metric[0] += float(l.sum())
            metric[1] += float((y_hat.argmax(1) == y).sum())
            metric[2] += y.numel()

    return epoch


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def harness_epoch(device: torch.device, precision: str = "32", compile: bool = False) -> tuple[Callable[[], None], Step]:
    """engine.train_epoch of the dropout experiment at the given precision and compilation, and its step."""
    cfg = compose_cfg(["+experiment=dropout", f"data.root={ROOT / 'data'}", f"trainer.precision={precision}", f"trainer.compile={compile}"])
    seed_everything(0)
    data = load_data(cfg, device)
    model = build_model(cfg, data.num_inputs, data.num_outputs).to(device)
    penalty = make_penalty(cfg, model)
    optimizer = make_optimizer(cfg, model, penalty)
    step = make_step(cfg, model, data)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda: train_epoch(model, data, optimizer, penalty, cfg.data.batch_size, generator, step=step).item(), step


def harness_epoch_fn(device: torch.device) -> Callable[[], None]:
    return harness_epoch(device)[0]


MLP = (784, 256, 256, 10)


def mlp_epoch_flops(n: int = 60000, sizes: tuple[int, ...] = MLP) -> float:
    """Forward 2·n·in·out per layer; backward 2·n·in·out for ∂W and again for ∂X (not for the first layer's input)."""
    layers = list(zip(sizes, sizes[1:], strict=False))
    return sum(2 * n * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(layers))


def mlp_eval_flops(n: int = 70000, sizes: tuple[int, ...] = MLP) -> float:
    """One evaluation: the forward pass over the train and test sets, 2·n·Σ in·out."""
    return sum(2 * n * i * o for i, o in zip(sizes, sizes[1:], strict=False))


def sgemm_flops(device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """The FLOP rate of an n×n by n×n matmul in dtype (sgemm in fp32)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_time(lambda: a @ b, repeats=5, warmup=2, device=device)


# (e), (g), (h) The harness epoch at another precision, or compiled.
def precision_epochs(device: torch.device, repeats: int) -> dict[str, float]:
    """Median epoch times at fp32 and bf16-mixed, taken in turns so that a change in the machine's load hits both."""
    fns = {p: harness_epoch(device, p)[0] for p in ("32", "bf16-mixed")}
    times: dict[str, list[float]] = {p: [] for p in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for p, fn in fns.items():
            times[p].append(median_time(fn, 1, warmup=0, device=device))
    return {p: statistics.median(t) for p, t in times.items()}


def compile_epochs(device: torch.device, repeats: int) -> dict[str, float]:
    """The first compiled epoch (it compiles), the compiled step's compile_s, and the median steady epoch, compiled and eager."""
    compiled, step = harness_epoch(device, compile=True)
    eager = harness_epoch(device)[0]
    first = median_time(compiled, 1, warmup=0, device=device)
    eager()
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    for _ in range(repeats):
        times["compiled"].append(median_time(compiled, 1, warmup=0, device=device))
        times["eager"].append(median_time(eager, 1, warmup=0, device=device))
    return {"first_s": first, "compile_s": step.compile_s} | {k: statistics.median(t) for k, t in times.items()}


def profile_epochs(device: torch.device, rows: int = 15) -> None:
    """Where one epoch's time goes at fp32 and at bf16-mixed: torch.profiler's top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for precision in ("32", "bf16-mixed"):
        fn = harness_epoch(device, precision)[0]
        fn()
        with profile(activities=activities) as prof:
            fn()
        print(f"\n# one epoch at trainer.precision={precision}")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows))


# (b), (c) Sweeps through train.py, in this process.
def task(cfg) -> float:
    """train.py's main (defined here: Hydra finds conf/ relative to the task function's file)."""
    return regularization.run(cfg)


def run_sweep(args: list[str]) -> float:
    """Wall time of `python train.py -m ARGS`, run in this process (console output discarded)."""
    GlobalHydra.instance().clear()
    # conf/ by its absolute path: the script may be run (or loaded with runpy) from any working dir.
    main = hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")(task)
    argv = sys.argv
    sys.argv = ["train.py", "-m", *args]
    out = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
    except SystemExit as e:
        raise RuntimeError(f"train.py -m {' '.join(args)} failed:\n{out.getvalue()[-2000:]}") from e
    finally:
        sys.argv = argv
    return time.perf_counter() - start


LAUNCHERS = {"basic": [], "vectorized": ["hydra/launcher=vectorized"]}


def sweep_ratio(name: str, args: list[str], repeats: int = 1) -> tuple[float, float, dict[str, list[float]]]:
    """Median wall times of the sweep under the basic and the vectorized launcher, each into a fresh sweep dir;
    and every time measured.

    Fair to both: before either is timed, each launcher runs the sweep's constant overrides as a one-job sweep,
    untimed, so the process's one-time costs (a CUDA context, cuBLAS handles, lazy imports, Hydra's first
    composition) are paid by neither timed side; then the two take turns, the one that goes first alternating.
    """
    times: dict[str, list[float]] = {launcher: [] for launcher in LAUNCHERS}

    def sweep(launcher: str, sweep_args: list[str], tag: str) -> float:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return run_sweep([*sweep_args, f"hydra.sweep.dir={OUT / 'sweeps' / f'{name}-{tag}{launcher}-{stamp}'}", *LAUNCHERS[launcher]])

    one_job = [arg for arg in args if "," not in arg]  # the swept overrides dropped
    for launcher in LAUNCHERS:
        sweep(launcher, one_job, "warmup-")
    for i in range(repeats):
        for launcher in list(LAUNCHERS)[:: 1 if i % 2 == 0 else -1]:
            times[launcher].append(sweep(launcher, args, ""))
    return statistics.median(times["basic"]), statistics.median(times["vectorized"]), times


# (s) Start-up, as whole processes.
def process_time(argv: list[str]) -> float:
    """Wall time of a fresh process running argv in the repository root (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


# torch.optim's first optimizer imports torch._dynamo (Optimizer.__init__ is wrapped in torch._disable_dynamo, which
# imports it on its first call): the least any torch program that trains with torch.optim takes.
OPTIMIZER_FLOOR = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"


def startup_ratio(repeats: int = 5) -> dict:
    """`python train.py -m reg.lambd=0,3` (into a fresh sweep dir each time) against `python -c "import torch"`,
    and the optimizer floor (``OPTIMIZER_FLOOR``) against the same, in turns, so that all see the same load;
    medians of `repeats` each."""
    times: dict[str, list[float]] = {"make_run": [], "import_torch": [], "optimizer_floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            times["import_torch"].append(process_time([sys.executable, "-c", "import torch"]))
            times["optimizer_floor"].append(process_time([sys.executable, "-c", OPTIMIZER_FLOOR]))
            sweep = ["train.py", "-m", "reg.lambd=0,3", f"hydra.sweep.dir={Path(tmp) / str(i)}", "trainer.progress=false"]
            times["make_run"].append(process_time([sys.executable, *sweep]))
    make_run, import_torch, floor = (statistics.median(times[k]) for k in ("make_run", "import_torch", "optimizer_floor"))
    return {
        "make_run_s": make_run,
        "import_torch_s": import_torch,
        "ratio": make_run / import_torch,
        "optimizer_floor_s": floor,
        "floor_ratio": floor / import_torch,
        "target": "<= 2.0",
        "times_s": times,
    }


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores"


def write_report(device: torch.device, rows: dict[str, dict], quick: bool, load_before: tuple[float, ...]) -> Path:
    """Print the rows and write them, with the machine and the load, to outputs/bench/bench-<time>.json."""
    machine = machine_name(device)
    report = {
        "device": str(device),
        "machine": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": quick,
        "date": datetime.now().strftime("%Y-%m-%d"),
        "load_average_before_after": [load_before, os.getloadavg()],
        "results": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, report)
    print(f"device {device} ({machine}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, row in rows.items():
        cells = (f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if not k.endswith("times_s"))
        print(f"{name:16s} " + "  ".join(cells))
    print(f"wrote {path}")
    return path


def run_dropout_sweep(name: str, args: list[str]) -> float:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return run_sweep([*args, f"hydra.sweep.dir={OUT / 'sweeps' / f'{name}-{stamp}'}"])


# (i), (j), (k) The vectorized launcher against a torch.func ensemble (scripts/func_ensemble.py), and per job.
def lambda_args(n: int) -> list[str]:
    """The weight-decay sweep of the issue: λ = 0 and n − 1 values log-spaced from 1e-3 to 10, 100 epochs."""
    return ["+experiment=weight_decay", f"reg.lambd={','.join(ENSEMBLE['lambdas'](n))}"]


def train_process(args: list[str], root: Path | None = None) -> float:
    """Wall time of `python train.py -m ARGS` as a fresh process, into a fresh sweep dir (in ``root``, else the
    system's temp dir)."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        return process_time([sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={tmp}"])


def ensemble_process(args: list[str]) -> tuple[float, dict]:
    """Wall time of `python scripts/func_ensemble.py ARGS` as a fresh process, and what it printed."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "func_ensemble.py"), *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - start, json.loads(out.stdout)


def sweep_results(sweep_dir: Path, key: str, values: list[str]) -> list[dict]:
    return [json.loads((sweep_dir / f"{key}={v}" / "metrics.json").read_text()) for v in values]


def max_rel_diff(ensemble: dict, ours: list[dict], keys: tuple[str, ...] = ("weight_l2_norm", "test_loss")) -> float:
    """The largest relative difference between the ensemble's and our final values (the same models: ≤ 1e-4)."""
    return max(abs(e - r[k]) / abs(r[k]) for k in keys for e, r in zip(ensemble[k], ours, strict=True))


def against_ensemble(name: str, ours_args: list[str], ensemble_args: list[str], repeats: int) -> dict[str, list]:
    """Ours (vectorized) and the ensemble, in turns: each as a whole process, ours also in this process (its
    sweep dir kept, for the agreement check), the ensemble's in-process time as it reports it."""
    times: dict[str, list] = {"ours_process": [], "ensemble_process": [], "ours_inproc": [], "ensemble_inproc": [], "dirs": []}
    for _ in range(repeats):
        times["ours_process"].append(train_process(ours_args))
        elapsed, result = ensemble_process(ensemble_args)
        times["ensemble_process"].append(elapsed)
        times["ensemble_inproc"].append(result["run_s"])
        sweep_dir = OUT / "sweeps" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
        times["ours_inproc"].append(run_sweep([*ours_args, f"hydra.sweep.dir={sweep_dir}"]))
        times["dirs"].append(sweep_dir)
    times["ensemble_result"] = [result]
    return times


def ensemble_row(t: dict[str, list], **extra: object) -> dict:
    """Medians of ``against_ensemble``'s times and their ratios (ours / the ensemble: ≤ 1 is the target)."""
    med = {k: statistics.median(t[k]) for k in ("ours_process", "ensemble_process", "ours_inproc", "ensemble_inproc")}
    return {
        **extra,
        "ours_process_s": med["ours_process"],
        "ensemble_process_s": med["ensemble_process"],
        "process_ratio": med["ours_process"] / med["ensemble_process"],
        "ours_inproc_s": med["ours_inproc"],
        "ensemble_inproc_s": med["ensemble_inproc"],
        "inproc_ratio": med["ours_inproc"] / med["ensemble_inproc"],
        "target": "process_ratio <= 1",
        "times_s": {k: t[k] for k in med},
    }


@dataclass
class Bench:
    """What the rows share: the device, the repeats, and the measurements that two rows read (each taken once)."""

    device: torch.device
    quick: bool
    repeats: int
    peak_before: float

    @functools.cached_property
    def peak(self) -> float:
        """The sgemm rate, timed again when first needed: the better of two, on a machine others may load."""
        return max(self.peak_before, sgemm_flops(self.device))

    @functools.cached_property
    def epochs(self) -> tuple[float, float]:
        """(a), (d): the chapter's epoch and the harness's."""
        chapter = median_time(chapter_epoch_fn(self.device), self.repeats, device=self.device)
        harness = median_time(harness_epoch_fn(self.device), 3 * self.repeats, device=self.device)  # short: more repeats
        return chapter, harness

    @functools.cached_property
    def dropout(self) -> tuple[list[str], int, int]:
        """(c), (f), (j): the dropout grid's overrides, its jobs and its epochs."""
        rates, epochs = ("0,0.5", 1) if self.quick else ("0,0.2,0.5,0.8", 2)
        args = ["+experiment=dropout", f"reg.dropout1={rates}", f"reg.dropout2={rates}", f"trainer.epochs={epochs}"]
        return args, len(rates.split(",")) ** 2, epochs

    @functools.cached_property
    def dropout_sweeps(self) -> tuple[float, float, dict[str, list[float]]]:
        """(c), (f): the grid on the basic and the vectorized launcher, once each (a minute a launcher)."""
        return sweep_ratio("dropout", self.dropout[0])

    @functools.cached_property
    def precision(self) -> dict[str, float]:
        """(e), (h): the harness epoch at fp32 and bf16-mixed."""
        return precision_epochs(self.device, 3 * self.repeats)


def row_a(b: Bench) -> dict:
    """One MLP epoch: the harness against the chapter's pipeline, and the floor (its matmuls at the sgemm rate)."""
    chapter, harness = b.epochs
    floor = mlp_epoch_flops() / b.peak  # above the target × chapter, no implementation could reach the target here
    return {
        "chapter_s": chapter,
        "harness_s": harness,
        "ratio": harness / chapter,
        "floor_s": floor,
        "floor_ratio": floor / chapter,
        "target": "<= 0.35",
    }


def row_b(b: Bench) -> dict:
    """A λ sweep, range(0, 10, 10/n): the basic launcher against the vectorized one, in this process."""
    n = 16 if b.quick else 64
    basic, vectorized, times = sweep_ratio("lambda", ["+experiment=weight_decay", f"reg.lambd=range(0,10,{10 / n})"], b.repeats)
    return {"jobs": n, "basic_s": basic, "vectorized_s": vectorized, "speedup": basic / vectorized, "target": ">= 20", "times_s": times}


def row_c(b: Bench) -> dict:
    """The dropout grid: basic against vectorized, and the floor: every job's training and per-epoch evaluation at
    the sgemm rate, the least time any launcher can take."""
    (basic, vectorized, times), (_, jobs, epochs) = b.dropout_sweeps, b.dropout
    floor = jobs * epochs * (mlp_epoch_flops() + mlp_eval_flops()) / b.peak
    return {
        "jobs": jobs,
        "epochs": epochs,
        "basic_s": basic,
        "vectorized_s": vectorized,
        "speedup": basic / vectorized,
        "floor_s": floor,
        "max_speedup": basic / floor,
        "target": ">= 1.5",
        "times_s": times,
    }


def row_d(b: Bench) -> dict:
    """The harness epoch's matmul FLOP rate as a share of the sgemm's."""
    achieved = mlp_epoch_flops() / b.epochs[1]
    return {"epoch_gflops": achieved / 1e9, "sgemm_gflops": b.peak / 1e9, "share": achieved / b.peak, "target": ">= 0.65"}


def row_e(b: Bench) -> dict:
    """The harness epoch at bf16-mixed against fp32."""
    p = b.precision
    return {"fp32_s": p["32"], "bf16_mixed_s": p["bf16-mixed"], "ratio": p["bf16-mixed"] / p["32"], "target": "<= 0.6"}


def row_f(b: Bench) -> dict:
    """The dropout grid, vectorized at bf16-mixed, against (c)'s basic and vectorized launchers at fp32."""
    (basic, vectorized, _), (args, jobs, epochs) = b.dropout_sweeps, b.dropout
    bf16 = run_dropout_sweep("dropout-vectorized-bf16", [*args, "hydra/launcher=vectorized", "trainer.precision=bf16-mixed"])
    return {
        "jobs": jobs,
        "epochs": epochs,
        "basic_fp32_s": basic,
        "vectorized_fp32_s": vectorized,
        "vectorized_bf16_s": bf16,
        "speedup_vs_basic_fp32": basic / bf16,
        "speedup_vs_vectorized_fp32": vectorized / bf16,
        "target": ">= 2 (vs basic fp32)",
    }


def row_g(b: Bench) -> dict:
    """The harness epoch compiled against eager, after warm-up, and the compile time."""
    c = compile_epochs(b.device, 3 * b.repeats)
    return {
        "eager_s": c["eager"],
        "compiled_s": c["compiled"],
        "ratio": c["compiled"] / c["eager"],
        "first_epoch_s": c["first_s"],
        "compile_s": c["compile_s"],
    }


def row_h(b: Bench) -> dict:
    """The bf16-mixed epoch's matmul FLOP rate as a share of a large bf16 GEMM's."""
    peak = sgemm_flops(b.device, dtype=torch.bfloat16)
    achieved = mlp_epoch_flops() / b.precision["bf16-mixed"]
    return {"epoch_gflops": achieved / 1e9, "bf16_gemm_gflops": peak / 1e9, "share": achieved / peak}


def row_i(b: Bench) -> dict:
    """The issue's λ sweep (0 and log-spaced 1e-3..10, 100 epochs), vectorized with every artifact, against the
    torch.func ensemble; ``max_rel_diff``: the ensemble's final ‖w‖ and test loss against ours (the same models)."""
    n = 16 if b.quick else 64
    t = against_ensemble("lambda-ensemble", [*lambda_args(n), "hydra/launcher=vectorized"], ["lambda", "--n", str(n)], b.repeats)
    ours = sweep_results(t["dirs"][-1], "reg.lambd", ENSEMBLE["lambdas"](n))
    return ensemble_row(t, jobs=n, max_rel_diff=max_rel_diff(t["ensemble_result"][0], ours))


def row_j(b: Bench) -> dict:
    """The dropout grid of (c), vectorized at fp32 and bf16-mixed, against the torch.func ensemble at the same
    precision, once each (its masks differ: the mean test accuracies side by side)."""
    args, jobs, epochs = b.dropout
    rates = args[1].split("=")[1]
    row: dict = {"jobs": jobs, "epochs": epochs, "target": "process_ratio <= 1"}
    for precision, tag in (("32", "fp32"), ("bf16-mixed", "bf16")):
        t = against_ensemble(
            f"dropout-ensemble-{precision}",
            [*args, "hydra/launcher=vectorized", f"trainer.precision={precision}"],
            ["dropout", "--rates", rates, "--epochs", str(epochs), "--precision", precision],
            repeats=1,
        )
        ours = [json.loads(p.read_text())["test_acc"] for p in t["dirs"][-1].glob("*/metrics.json")]
        accuracies = {
            "ours_mean_test_acc": statistics.mean(ours),
            "ensemble_mean_test_acc": statistics.mean(t["ensemble_result"][0]["test_acc"]),
        }
        row |= {f"{tag}_{k}": v for k, v in ensemble_row(t, **accuracies).items() if k != "target"}
    return row


# A RAM disk, where creating a file costs what the kernel's code costs, not what the disk makes it cost: Linux's /dev/shm.
RAM_DISK = Path("/dev/shm")


def file_creation_ms(root: Path | None, jobs: int = 256) -> float:
    """What creating a job's dirs and files costs in ``root`` alone (the system's temp dir when None): the job dir,
    its .hydra dir, and 6 empty files (.hydra's 3, the event file, the job log, metrics.json), in ms a job."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        start = time.perf_counter()
        for k in range(jobs):
            hydra = Path(tmp) / str(k) / ".hydra"
            hydra.mkdir(parents=True)
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml", "../events", "../train.log", "../metrics.json"):
                (hydra / name).touch()
        return 1000 * (time.perf_counter() - start) / jobs


def row_k(b: Bench) -> dict:
    """Per-job overhead, whole process: (t(1024-λ sweep) − t(64-λ sweep)) / 960, in turns, vectorized. Each sweep runs
    into the disk's temp dir and, where there is one, into a RAM disk: a job creates 2 dirs and 6 files, and what
    that costs is the disk's (on the dev machine's virtual disk, 0.1 to 6 ms a job, changing by the minute), so
    the row reports that floor beside it (``file_creation_ms``, measured before each 1,024-λ sweep, medians)."""
    small, large = (16, 256) if b.quick else (64, 1024)
    places = {"disk": None, "ram": RAM_DISK} if RAM_DISK.is_dir() else {"disk": None}
    times: dict[str, list[float]] = {f"{where}_{n}": [] for where in places for n in (small, large)}
    files: dict[str, list[float]] = {where: [] for where in places}
    for _ in range(b.repeats):
        for where, root in places.items():
            for n in (small, large):
                if n == large:
                    files[where].append(file_creation_ms(root))
                times[f"{where}_{n}"].append(train_process([*lambda_args(n), "hydra/launcher=vectorized"], root))
    row: dict = {}
    for where in places:
        t_small, t_large = statistics.median(times[f"{where}_{small}"]), statistics.median(times[f"{where}_{large}"])
        prefix = "" if where == "disk" else "ram_"
        row |= {
            f"{prefix}sweep_{small}_s": t_small,
            f"{prefix}sweep_{large}_s": t_large,
            f"{prefix}per_job_ms": 1000 * (t_large - t_small) / (large - small),
            f"{prefix}large_over_small": t_large / t_small,
            f"{prefix}file_creation_ms": statistics.median(files[where]),
        }
    return row | {"target": "per_job_ms < 5, large_over_small <= 3", "times_s": times}


def row_s(b: Bench) -> dict:
    return startup_ratio()


ROWS: dict[str, tuple[str, Callable[[Bench], dict]]] = {
    "a": ("a_epoch", row_a),
    "b": ("b_lambda_sweep", row_b),
    "c": ("c_dropout_sweep", row_c),
    "d": ("d_matmul_share", row_d),
    "e": ("e_bf16_epoch", row_e),
    "f": ("f_bf16_dropout_sweep", row_f),
    "g": ("g_compile_epoch", row_g),
    "h": ("h_bf16_matmul_share", row_h),
    "i": ("i_lambda_vs_ensemble", row_i),
    "j": ("j_dropout_vs_ensemble", row_j),
    "k": ("k_per_job_overhead", row_k),
    "s": ("s_startup", row_s),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sweeps (16 λ values, a 2×2 dropout grid, 1 epoch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--startup", action="store_true", help="row (s) alone: start-up against import torch")
    parser.add_argument("--rows", default="".join(ROWS), help="the rows to measure, e.g. e,f,g,h (default: all)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of an fp32 and a bf16-mixed epoch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_before = os.getloadavg()  # other processes' load skews every number: recorded with them
    wanted = "s" if args.startup else args.rows.replace(",", "")
    bench = Bench(device, args.quick, 2 if args.quick else 3, sgemm_flops(device) if wanted != "s" else 0.0)
    rows = {name: row(bench) for letter, (name, row) in ROWS.items() if letter in wanted}
    if args.profile:
        profile_epochs(device)
    write_report(device, rows, args.quick, load_before)


if __name__ == "__main__":
    main()
