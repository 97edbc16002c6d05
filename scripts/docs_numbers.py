"""Rerun what the tables of README.md and docs/ report, and write the tables between their markers.

Each table sits between ``<!-- numbers:NAME -->`` and ``<!-- /numbers -->`` in its file; this script
replaces what is between them with a fresh table, the command that produced it, the CPU model (fp32 digits
differ between CPU models), torch and the date. Accuracy and loss tables carry no times (speed is bench.py's).
Nothing outside the markers changes, so a table cannot drift from what the code gives today.

    python scripts/docs_numbers.py                   # every table (minutes: real Fashion-MNIST runs, the benchmark)
    python scripts/docs_numbers.py --only fidelity-weight-decay fidelity-dropout
    python scripts/docs_numbers.py --bench-json outputs/bench/bench-<time>.json   # the speed table from a bench run
    python scripts/docs_numbers.py --fast --root COPY --data-root TINY            # tiny runs into a copy (the test)

``--fast`` shrinks every run (few epochs, few seeds) so that tests/test_docs.py can check, in seconds, that
each table is regenerated and lands between its markers. Its numbers are not meant for the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- numbers:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.DOTALL)


def machine(load: bool = False) -> str:
    """The CPU model (fp32 results differ across models), torch, the date, and, for a table with times, the load
    others put on the machine (which skews wall times)."""
    import torch

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from regularization.machine import cpu_model

    named = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {date.today().isoformat()}"
    return f"{named}, load average {os.getloadavg()[0]:.1f}" if load else named


def run_sweep(args: list[str], workdir: Path) -> tuple[Path, str]:
    """``python train.py -m ARGS`` into a fresh sweep dir; the dir and the console output."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return out, proc.stdout + proc.stderr


def sweep(args: list[str], workdir: Path) -> list[dict]:
    """``python train.py -m ARGS`` into a fresh sweep dir; each job's overrides and metrics.json."""
    out, _ = run_sweep(args, workdir)
    jobs = []
    for job in sorted(p for p in out.iterdir() if (p / "metrics.json").exists()):
        overrides = dict(line.removeprefix("- ").split("=", 1) for line in (job / ".hydra" / "overrides.yaml").read_text().splitlines())
        jobs.append({"overrides": overrides, **json.loads((job / "metrics.json").read_text())})
    return jobs


def mean_range(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def make_run(opts: argparse.Namespace) -> str:
    """The console table that `make run` (python train.py -m reg.lambd=0,3) ends with."""
    _, console = run_sweep(["reg.lambd=0,3", *(["trainer.epochs=3"] if opts.fast else [])], opts.workdir)
    lines = console.splitlines()
    start = next(i for i, line in enumerate(lines) if "Sweep summary" in line) + 1
    rows = [line.rstrip() for line in lines[start : start + 3]]
    return f"```\n{chr(10).join(rows)}\n```\n\n({machine(load=True)}; `wall_s` is each job's training time.)"


def weight_decay_rows(jobs: list[dict], key: str, values: tuple[str, ...], fmt: str) -> list[list[str]]:
    """One row per λ ∈ {0, 3} and value of key: λ, the value, ‖w‖ and the test loss (mean and range over the
    seeds, in fmt), and the mean train loss."""
    rows = []
    for lambd in ("0", "3"):
        for value in values:
            js = [j for j in jobs if j["overrides"]["reg.lambd"] == lambd and j["overrides"][key] == value]
            norm, test = (mean_range([j[m] for j in js], fmt) for m in ("weight_l2_norm", "test_loss"))
            rows.append([lambd, value, norm, test, format(statistics.mean(j["train_loss"] for j in js), ".2g")])
    return rows


def fidelity_weight_decay(opts: argparse.Namespace) -> str:
    """λ = 0 against λ = 3, both implementations of the L2 penalty, over seeds."""
    seeds, epochs = ("0,1", 3) if opts.fast else ("0,1,2,3,4", 100)
    args = ["reg.lambd=0,3", "reg.impl=penalty,weight_decay", f"seed={seeds}", f"trainer.epochs={epochs}"]
    rows = weight_decay_rows(sweep(args, opts.workdir), "reg.impl", ("penalty", "weight_decay"), ".3g")
    n = len(seeds.split(","))
    command = f"python train.py -m {' '.join(args)}"
    head = f"`{command}`: mean over {n} seeds (min–max), after {epochs} epochs. {machine()}.\n\n"
    return head + table(["λ", "reg.impl", "‖w‖", "test loss", "train loss"], rows)


def fidelity_dropout(opts: argparse.Namespace) -> str:
    """The dropout chapter's MLP, from-scratch and nn.Dropout, seed 0."""
    epochs = 1 if opts.fast else 10
    args = ["+experiment=dropout", "reg=dropout_scratch,dropout_builtin", f"trainer.epochs={epochs}", f"data.root={opts.data_root}"]
    jobs = sweep(args, opts.workdir)
    rows = [[j["overrides"]["reg"], f"{j['test_acc']:.4f}", f"{j['train_loss']:.3f}"] for j in jobs]  # no times: bench.py measures speed
    head = f"`python train.py -m +experiment=dropout reg=dropout_scratch,dropout_builtin`, seed 0, {epochs} epochs. {machine()}.\n\n"
    return head + table(["reg", "test accuracy", "train loss"], rows)


def dropout_recipe(opts: argparse.Namespace) -> str:
    """The chapter's preset against the rules-of-thumb preset."""
    epochs, seeds = (1, "0") if opts.fast else (10, opts.seeds)
    rows = []
    for preset in ("dropout", "dropout_recipe"):  # one sweep each: Hydra cannot set data.root over a swept preset
        js = sweep([f"+experiment={preset}", f"seed={seeds}", f"trainer.epochs={epochs}", f"data.root={opts.data_root}"], opts.workdir)
        rows.append([preset, mean_range([j["test_acc"] for j in js], ".4f"), mean_range([j["test_loss"] for j in js], ".4f")])
    head = f"`python train.py -m +experiment=dropout,dropout_recipe seed={seeds}`, {epochs} epochs. {machine()}.\n\n"
    return head + table(["preset", "test accuracy", "test loss"], rows)


def mlp_comparison(opts: argparse.Namespace) -> str:
    """The three-way comparison on the dropout chapter's MLP: no regularizer, L2 (reg_on_model/mlp_l2's λ), dropout."""
    epochs, seeds = (1, "0") if opts.fast else (10, "0,1,2")
    regs = ("none", "l2", "dropout_scratch")
    args = ["+experiment=dropout", f"reg={','.join(regs)}", f"seed={seeds}", f"trainer.epochs={epochs}", f"data.root={opts.data_root}"]
    jobs = sweep(args, opts.workdir)
    rows = []
    for reg in regs:
        js = [j for j in jobs if j["overrides"]["reg"] == reg]
        rows.append(
            [
                reg,
                mean_range([j["test_acc"] for j in js], ".4f"),
                mean_range([j["best_test_acc"] for j in js], ".4f"),
                format(statistics.mean(j["train_loss"] for j in js), ".3f"),
                format(statistics.mean(j["test_loss"] for j in js), ".3f"),
            ]
        )
    command = "python train.py -m +experiment=dropout reg=none,l2,dropout_scratch seed=0,1,2"
    head = f"`{command}`: mean over {len(seeds.split(','))} seeds (min–max), {epochs} epochs. {machine()}.\n\n"
    return head + table(["reg", "final test accuracy", "best-epoch test accuracy", "train loss", "test loss"], rows)


def precision_dropout(opts: argparse.Namespace) -> str:
    """The dropout chapter at fp32 and at bf16-mixed over seeds, each precision's seeds one vectorized group."""
    epochs, seeds = (1, "0,1") if opts.fast else (10, "0,1,2,3,4")
    precisions = "trainer.precision=32,bf16-mixed"
    args = ["+experiment=dropout", "hydra/launcher=vectorized", f"seed={seeds}", precisions, f"trainer.epochs={epochs}"]
    jobs = sweep([*args, f"data.root={opts.data_root}"], opts.workdir)
    rows, means = [], {}
    for precision in ("32", "bf16-mixed"):
        accs = [j["test_acc"] for j in jobs if j["overrides"]["trainer.precision"] == precision]
        means[precision] = statistics.mean(accs)
        spread = f"{means[precision]:.4f} ± {statistics.stdev(accs):.4f}"
        loss = statistics.mean(j["train_loss"] for j in jobs if j["overrides"]["trainer.precision"] == precision)
        rows.append([precision, ", ".join(f"{a:.4f}" for a in accs), spread, f"{loss:.3f}"])
    gap = abs(means["32"] - means["bf16-mixed"])
    head = f"`python train.py -m {' '.join(args)}`, {epochs} epochs. {machine()}.\n\n"
    tail = f"\n\nThe mean test accuracies differ by {gap:.4f} (asked: within 0.01)."
    return head + table(["precision", f"test accuracy, seeds {seeds}", "mean ± std", "train loss (mean)"], rows) + tail


def precision_weight_decay(opts: argparse.Namespace) -> str:
    """The weight-decay chapter at fp32 and at bf16-mixed: ‖w‖ and the losses at λ = 0 and 3."""
    epochs, seeds = (3, "0,1") if opts.fast else (100, "0,1,2,3,4")
    args = ["+experiment=weight_decay", "hydra/launcher=vectorized", "reg.lambd=0,3", f"seed={seeds}", "trainer.precision=32,bf16-mixed"]
    rows = weight_decay_rows(sweep([*args, f"trainer.epochs={epochs}"], opts.workdir), "trainer.precision", ("32", "bf16-mixed"), ".4g")
    head = f"`python train.py -m {' '.join(args)}`: mean over {len(seeds.split(','))} seeds (min–max), {epochs} epochs. {machine()}.\n\n"
    return head + table(["λ", "precision", "‖w‖", "test loss", "train loss"], rows)


FIGURES = {  # docs/figures/<name>.png: the summary.png of these sweeps
    "mlp_2x2x2_summary": ["reg.penalty=l2", "reg.lambd=0,0.001", "reg.dropout1=0,0.5", "reg.dropout2=0,0.5", "seed=0,1"],
    "dropout_4x4_summary": ["reg.dropout1=0,0.2,0.5,0.8", "reg.dropout2=0,0.2,0.5,0.8"],
}


def figures(opts: argparse.Namespace) -> str:
    """The two sweep figures of docs/outputs.md, redrawn from fresh sweeps (vectorized), with their commands."""
    epochs = 1 if opts.fast else 10
    lines = []
    for name, keys in FIGURES.items():
        args = ["+experiment=dropout", *keys, f"trainer.epochs={epochs}", "hydra/launcher=vectorized", f"data.root={opts.data_root}"]
        out, _ = run_sweep(args, opts.workdir)
        shutil.copyfile(out / "summary.png", opts.root / "docs" / "figures" / f"{name}.png")
        command = f"python train.py -m +experiment=dropout {' '.join(keys)} hydra/launcher=vectorized"
        lines.append(f"- `{name}.png`: `{command}` ({epochs} epochs)")
    return f"Drawn by `python scripts/docs_numbers.py --only figures`, {machine()}:\n\n" + "\n".join(lines)


# (phase, pattern of the profiled function: file suffix and name); cumulative times, so phases overlap
PHASES = [
    ("all imports", ("<frozen importlib._bootstrap>", "_find_and_load")),
    ("config compositions (Hydra's load_configuration)", ("config_loader_impl.py", "load_configuration")),
    ("training: engine.fit, both jobs", ("engine.py", "fit")),
    ("of which checkpoint writes", ("checkpoint.py", "save_checkpoint")),
    ("sweep summary: tables and plots", ("summary.py", "summarize_sweep")),
]


def profile(train_py: Path, args: list[str], workdir: Path) -> tuple[float, dict[str, tuple[int, float]], bool]:
    """cProfile of ``python TRAIN_PY -m ARGS``: the profiled total, each phase's (calls, cumulative seconds), and
    whether torchvision was imported."""
    import pstats

    out = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out / "prof"), str(train_py), "-m", *args, f"hydra.sweep.dir={out / 'sweep'}"]
    subprocess.run(cmd, cwd=train_py.parent, check=True, capture_output=True)
    stats = pstats.Stats(str(out / "prof")).stats  # (file, line, name) → (primitive calls, calls, tottime, cumtime, callers)
    phases = {}
    for phase, (file, name) in PHASES:
        hits = [(v[0], v[3]) for (f, _, n), v in stats.items() if f.endswith(file) and n == name]
        phases[phase] = (sum(c for c, _ in hits), sum(t for _, t in hits))
    torchvision = any("torchvision" in f for f, _, _ in stats)
    return pstats.Stats(str(out / "prof")).total_tt, phases, torchvision


def startup_profile(opts: argparse.Namespace) -> str:
    """Where `python train.py -m reg.lambd=0,3` spends its time, from cProfile."""
    args = ["reg.lambd=0,3", *(["trainer.epochs=3"] if opts.fast else [])]
    total, phases, torchvision = profile(ROOT / "train.py", args, opts.workdir)
    rows = [[phase, str(calls), f"{seconds:.2f} s", f"{seconds / total:.0%}"] for phase, (calls, seconds) in phases.items()]
    head = (
        f"`python -m cProfile train.py -m {' '.join(args)}`: {total:.2f} s profiled; torchvision imported: "
        f"{'yes' if torchvision else 'no'}. {machine(load=True)}.\n\n"
    )
    return head + table(["phase", "calls", "cumulative", "share"], rows)


def seconds_ratio(num: float, den: float, ratio: float, ratio_spec: str = ".2f", time_spec: str = ".3g") -> str:
    """A bench row's cell, ``num s / den s = ratio``; a ratio_spec ending in × (".2f×") prints the sign."""
    sign = "×" if ratio_spec.endswith("×") else ""
    return f"{num:{time_spec}} s / {den:{time_spec}} s = {ratio:{ratio_spec.rstrip('×')}}{sign}"


def speed(opts: argparse.Namespace) -> str:
    """scripts/bench.py's rows: a given bench JSON, else a fresh full run (--fast: row (s) alone)."""
    path = opts.bench_json
    if path is None:
        cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), *(["--startup"] if opts.fast else [])]
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        path = Path(re.search(r"wrote (\S+)", out).group(1))
    report = json.loads(Path(path).read_text())
    r = report["results"]
    rows = []
    if "a_epoch" in r:
        a = r["a_epoch"]
        rows.append(["(a) MLP epoch, harness / chapter pipeline", seconds_ratio(a["harness_s"], a["chapter_s"], a["ratio"]), a["target"]])
    if "b_lambda_sweep" in r:
        b = r["b_lambda_sweep"]
        label = f"(b) λ sweep, {b['jobs']} values, basic / vectorized"
        rows.append([label, seconds_ratio(b["basic_s"], b["vectorized_s"], b["speedup"], ".1f×"), b["target"]])
    if "c_dropout_sweep" in r:
        c = r["c_dropout_sweep"]
        label = f"(c) dropout sweep, {c['jobs']} jobs × {c['epochs']} epochs, basic / vectorized"
        rows.append([label, seconds_ratio(c["basic_s"], c["vectorized_s"], c["speedup"], ".2f×"), c["target"]])
    if "d_matmul_share" in r:
        d = r["d_matmul_share"]
        measured = f"{d['epoch_gflops']:.0f} / {d['sgemm_gflops']:.0f} GFLOP/s = {d['share']:.0%}"
        rows.append(["(d) epoch FLOP rate / sgemm", measured, d["target"]])
    if "e_bf16_epoch" in r:
        e = r["e_bf16_epoch"]
        rows.append(["(e) MLP epoch, bf16-mixed / fp32", seconds_ratio(e["bf16_mixed_s"], e["fp32_s"], e["ratio"]), e["target"]])
    if "f_bf16_dropout_sweep" in r:
        f = r["f_bf16_dropout_sweep"]
        label = f"(f) dropout sweep, {f['jobs']} jobs × {f['epochs']} epochs: basic fp32 / vectorized bf16-mixed"
        rows.append([label, seconds_ratio(f["basic_fp32_s"], f["vectorized_bf16_s"], f["speedup_vs_basic_fp32"], ".2f×"), f["target"]])
        measured = seconds_ratio(f["vectorized_fp32_s"], f["vectorized_bf16_s"], f["speedup_vs_vectorized_fp32"], ".2f×")
        rows.append(["(f) the same, vectorized fp32 / vectorized bf16-mixed", measured, "—"])
    if "g_compile_epoch" in r:
        g = r["g_compile_epoch"]
        measured = f"{seconds_ratio(g['compiled_s'], g['eager_s'], g['ratio'])}; compiling: {g['compile_s']:.0f} s"
        rows.append(["(g) MLP epoch after warm-up, compiled / eager", measured, "—"])
    if "h_bf16_matmul_share" in r:
        h = r["h_bf16_matmul_share"]
        measured = f"{h['epoch_gflops']:.0f} / {h['bf16_gemm_gflops']:.0f} GFLOP/s = {h['share']:.0%}"
        rows.append(["(h) bf16-mixed epoch FLOP rate / bf16 GEMM", measured, "—"])
    if "i_lambda_vs_ensemble" in r:
        i = r["i_lambda_vs_ensemble"]
        label = f"(i) {i['jobs']}-λ sweep, vectorized / torch.func ensemble, whole processes"
        rows.append([label, seconds_ratio(i["ours_process_s"], i["ensemble_process_s"], i["process_ratio"]), "<= 1"])
        measured = seconds_ratio(i["ours_inproc_s"], i["ensemble_inproc_s"], i["inproc_ratio"])
        rows.append(["(i) the same, in-process", f"{measured}; final ‖w‖, test loss within {i['max_rel_diff']:.1g}", "—"])
    if "j_dropout_vs_ensemble" in r:
        j = r["j_dropout_vs_ensemble"]
        for tag, name in (("fp32", "fp32"), ("bf16", "bf16-mixed")):
            label = f"(j) dropout grid, {j['jobs']} jobs × {j['epochs']} epochs at {name}, vectorized / ensemble, whole processes"
            measured = seconds_ratio(j[f"{tag}_ours_process_s"], j[f"{tag}_ensemble_process_s"], j[f"{tag}_process_ratio"])
            rows.append([label, measured, "<= 1"])
    if "k_per_job_overhead" in r:
        k = r["k_per_job_overhead"]
        small, large = sorted((key for key in k if key.startswith("sweep_")), key=lambda key: int(key.split("_")[1]))
        n_small, n_large = (int(key.split("_")[1]) for key in (small, large))
        for prefix, where in (("", "the disk's temp dir"), ("ram_", "a RAM disk (/dev/shm)")):
            if f"{prefix}per_job_ms" not in k:
                continue
            per_job = k[prefix + "per_job_ms"]
            measured = f"({k[prefix + large]:.3g} s − {k[prefix + small]:.3g} s) / {n_large - n_small} = {per_job:.1f} ms a job"
            measured += f"; {n_large} / {n_small}: {k[prefix + 'large_over_small']:.2f}×"
            if f"{prefix}file_creation_ms" in k:  # the floor: a job's 2 dirs and 6 files, created there
                measured += f"; creating a job's dirs and files there: {k[prefix + 'file_creation_ms']:.2f} ms"
            label = f"(k) per-job overhead, {n_large}- against {n_small}-λ sweep, whole processes, into {where}"
            rows.append([label, measured, k["target"]])
    s = r["s_startup"]
    label = "(s) `train.py -m reg.lambd=0,3` / `import torch`, whole processes"
    rows.append([label, seconds_ratio(s["make_run_s"], s["import_torch_s"], s["ratio"], ".2f×", ".2f"), s["target"]])
    if "optimizer_floor_s" in s:
        label = "(s) floor: `import torch` + one `torch.optim.SGD` / `import torch`"
        rows.append([label, seconds_ratio(s["optimizer_floor_s"], s["import_torch_s"], s["floor_ratio"], ".2f×", ".2f"), "—"])
    load = report["load_average_before_after"]
    head = (
        f"{report['machine']}, {report['device']}, torch {report['torch']}, {report['threads']} threads, "
        f"{report.get('date', 'date not recorded')}; load average {load[0][0]:.2f} before, {load[1][0]:.2f} after.\n\n"
    )
    return head + table(["row", "measured", "target"], rows)


# name: (file, generator)
SECTIONS: dict[str, tuple[str, Callable[[argparse.Namespace], str]]] = {
    "make-run": ("README.md", make_run),
    "fidelity-weight-decay": ("README.md", fidelity_weight_decay),
    "fidelity-dropout": ("README.md", fidelity_dropout),
    "dropout-recipe": ("docs/dropout-guidance.md", dropout_recipe),
    "speed": ("docs/speed.md", speed),
    "startup-profile": ("docs/speed.md", startup_profile),
    "mlp-comparison": ("docs/study.md", mlp_comparison),
    "precision-dropout": ("docs/precision.md", precision_dropout),
    "precision-weight-decay": ("docs/precision.md", precision_weight_decay),
    "figures": ("docs/outputs.md", figures),
}


def write_section(path: Path, name: str, body: str) -> None:
    """Replace what is between the markers called name in path with body."""
    text = path.read_text()
    found = [m for m in MARKER.finditer(text) if m["name"] == name]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected one <!-- numbers:{name} --> … <!-- /numbers --> block, found {len(found)}")
    m = found[0]
    path.write_text(text[: m.start("body")] + body.rstrip("\n") + "\n" + text[m.end("body") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="regenerate these tables only")
    parser.add_argument("--fast", action="store_true", help="tiny runs: checks the plumbing, not numbers for the docs")
    parser.add_argument("--root", type=Path, default=ROOT, help="where README.md and docs/ are (default: this checkout)")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data", help="Fashion-MNIST's data.root")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the dropout-recipe table")
    parser.add_argument("--bench-json", type=Path, help="a scripts/bench.py report to draw the speed table from")
    opts = parser.parse_args()
    opts.data_root = opts.data_root.resolve()
    with tempfile.TemporaryDirectory() as workdir:
        opts.workdir = Path(workdir)
        for name in opts.only or SECTIONS:
            file, generate = SECTIONS[name]
            write_section(opts.root / file, name, generate(opts))
            print(f"{file}: {name}")


if __name__ == "__main__":
    main()
