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
(s) start-up: `python train.py -m reg.lambd=0,3` (what `make run` runs) as a whole process against
    `python -c "import torch"`, 5 of each in turns (medians); the least any torch program can take. Beside it,
    the floor of a program that trains with torch.optim: `import torch` plus one optimizer (its first
    construction imports torch._dynamo), against the same baseline.

For (a) and (c) it also reports the floor: the matmul FLOPs at the sgemm rate, the least time any code can take.
Both sweeps run through train.py's Hydra app in this process, with the same torch thread count; the basic
launcher's jobs do what a user's do (preflight, per-epoch checkpoints, event files, metrics.json).
``--profile`` prints where the fp32 and the bf16-mixed epoch spend their time (torch.profiler, top ops).

Prints a table and writes outputs/bench/bench-<time>.json.
Run: python scripts/bench.py [--quick] [--threads N] [--rows a,b,...] [--profile], or python scripts/bench.py --startup
for row (s) alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
        cells = (f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "times_s")
        print(f"{name:16s} " + "  ".join(cells))
    print(f"wrote {path}")
    return path


def run_dropout_sweep(name: str, args: list[str]) -> float:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return run_sweep([*args, f"hydra.sweep.dir={OUT / 'sweeps' / f'{name}-{stamp}'}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sweeps (16 λ values, a 2×2 dropout grid, 1 epoch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--startup", action="store_true", help="row (s) alone: start-up against import torch")
    parser.add_argument("--rows", default="abcdefghs", help="the rows to measure, e.g. e,f,g,h (default: all)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of an fp32 and a bf16-mixed epoch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 2 if args.quick else 3
    wanted = set(args.rows.replace(",", ""))
    load_before = os.getloadavg()  # other processes' load skews every number: recorded with them
    rows: dict[str, dict] = {}
    if args.startup:
        write_report(device, {"s_startup": startup_ratio()}, args.quick, load_before)
        return

    peak = sgemm_flops(device)
    if wanted & {"a", "d"}:
        chapter = median_time(chapter_epoch_fn(device), repeats, device=device)
        harness = median_time(harness_epoch_fn(device), 3 * repeats, device=device)  # short: more repeats, a steadier median

    if "b" in wanted:
        n_lambda = 16 if args.quick else 64
        lambd = f"reg.lambd=range(0,10,{10 / n_lambda})"
        lambda_basic, lambda_vec, lambda_times = sweep_ratio("lambda", ["+experiment=weight_decay", lambd], repeats)

    rates, epochs = ("0,0.5", 1) if args.quick else ("0,0.2,0.5,0.8", 2)
    dropout = ["+experiment=dropout", f"reg.dropout1={rates}", f"reg.dropout2={rates}", f"trainer.epochs={epochs}"]
    jobs = len(rates.split(",")) ** 2
    if wanted & {"c", "f"}:
        dropout_basic, dropout_vec, dropout_times = sweep_ratio("dropout", dropout)  # once: a minute a launcher
    if "f" in wanted:
        dropout_bf16 = run_dropout_sweep("dropout-vectorized-bf16", [*dropout, "hydra/launcher=vectorized", "trainer.precision=bf16-mixed"])
    if wanted & {"e", "h"}:
        precision = precision_epochs(device, 3 * repeats)
    if "g" in wanted:
        compiled = compile_epochs(device, 3 * repeats)

    peak = max(peak, sgemm_flops(device))  # timed again: the better of two, on a machine others may load
    # The floors: the matmul FLOPs at the sgemm rate and nothing else. (a): the epoch's; a floor / chapter
    # above the target would mean no implementation can reach it here. (c): every job's training and
    # per-epoch evaluation, the least time any launcher can take.
    floor_a = mlp_epoch_flops() / peak
    floor_c = jobs * epochs * (mlp_epoch_flops() + mlp_eval_flops()) / peak
    if "a" in wanted:
        rows["a_epoch"] = {
            "chapter_s": chapter,
            "harness_s": harness,
            "ratio": harness / chapter,
            "floor_s": floor_a,
            "floor_ratio": floor_a / chapter,
            "target": "<= 0.35",
        }
    if "b" in wanted:
        rows["b_lambda_sweep"] = {
            "jobs": n_lambda,
            "basic_s": lambda_basic,
            "vectorized_s": lambda_vec,
            "speedup": lambda_basic / lambda_vec,
            "target": ">= 20",
            "times_s": lambda_times,
        }
    if "c" in wanted:
        rows["c_dropout_sweep"] = {
            "jobs": jobs,
            "epochs": epochs,
            "basic_s": dropout_basic,
            "vectorized_s": dropout_vec,
            "speedup": dropout_basic / dropout_vec,
            "floor_s": floor_c,
            "max_speedup": dropout_basic / floor_c,
            "target": ">= 1.5",
            "times_s": dropout_times,
        }
    if "d" in wanted:
        achieved = mlp_epoch_flops() / harness
        rows["d_matmul_share"] = {"epoch_gflops": achieved / 1e9, "sgemm_gflops": peak / 1e9, "share": achieved / peak, "target": ">= 0.65"}
    if "e" in wanted:
        rows["e_bf16_epoch"] = {
            "fp32_s": precision["32"],
            "bf16_mixed_s": precision["bf16-mixed"],
            "ratio": precision["bf16-mixed"] / precision["32"],
            "target": "<= 0.6",
        }
    if "f" in wanted:
        rows["f_bf16_dropout_sweep"] = {
            "jobs": jobs,
            "epochs": epochs,
            "basic_fp32_s": dropout_basic,
            "vectorized_fp32_s": dropout_vec,
            "vectorized_bf16_s": dropout_bf16,
            "speedup_vs_basic_fp32": dropout_basic / dropout_bf16,
            "speedup_vs_vectorized_fp32": dropout_vec / dropout_bf16,
            "target": ">= 2 (vs basic fp32)",
        }
    if "g" in wanted:
        rows["g_compile_epoch"] = {
            "eager_s": compiled["eager"],
            "compiled_s": compiled["compiled"],
            "ratio": compiled["compiled"] / compiled["eager"],
            "first_epoch_s": compiled["first_s"],
            "compile_s": compiled["compile_s"],
        }
    if "h" in wanted:
        bf16_peak = sgemm_flops(device, dtype=torch.bfloat16)
        achieved_bf16 = mlp_epoch_flops() / precision["bf16-mixed"]
        rows["h_bf16_matmul_share"] = {
            "epoch_gflops": achieved_bf16 / 1e9,
            "bf16_gemm_gflops": bf16_peak / 1e9,
            "share": achieved_bf16 / bf16_peak,
        }
    if args.profile:
        profile_epochs(device)
    if "s" in wanted:
        rows["s_startup"] = startup_ratio()
    write_report(device, rows, args.quick, load_before)


if __name__ == "__main__":
    main()
