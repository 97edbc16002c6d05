"""The docs stay true: their links resolve, the README's commands compose, and their tables regenerate."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from regularization.checkpoint import CHECKPOINT, GROUP_CHECKPOINT
from tests import doc_commands as dc
from tests.conftest import REAL_DATA, ROOT, real_data_root

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
MARKER = re.compile(r"<!-- numbers:([\w-]+) -->\n(.*?)<!-- /numbers -->", re.DOTALL)


def relative_links(doc: Path) -> list[str]:
    return [t for t in LINK.findall(doc.read_text()) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file(doc):
    missing = [t for t in relative_links(doc) if not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"


def test_the_readme_opens_with_the_two_set_up_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)[1]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ["make run", "make test"]
    assert len(text) <= 12_000, f"README.md has {len(text)} characters; depth belongs in docs/"


def readme_commands() -> list[list[str]]:
    """The arguments of every ``train.py`` command line in the README's shell blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    commands = []
    for line in (line for block in blocks for line in block.splitlines()):
        words = shlex.split(line, comments=True)
        if any(w.endswith("train.py") for w in words):
            commands.append(words[next(i for i, w in enumerate(words) if w.endswith("train.py")) + 1 :])
    return commands


def is_group(override: str) -> bool:
    """Whether an override line chooses a config (``reg=l2``, ``+experiment=dropout``, ``hydra/launcher=…``)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return "/" in key or (ROOT / "conf" / key).is_dir()


def jobs(args: list[str]) -> list[list[str]]:
    """The jobs a command line runs: itself, or with -m the jobs of the sweep as Hydra's basic sweeper splits them,
    where of jobs that choose the same configs and differ in plain values only the first and the last are kept."""
    if "-m" not in args:
        return [args]
    overrides = OverridesParser.create().parse_overrides([a for a in args if a != "-m"])
    by_choice: dict[tuple[str, ...], list[list[str]]] = {}
    for job in (job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch):
        by_choice.setdefault(tuple(o for o in job if is_group(o)), []).append(job)
    return [job for same in by_choice.values() for job in ([same[0], same[-1]] if len(same) > 1 else same)]


def test_every_readme_command_composes(monkeypatch, capsys):
    """Each job of each `train.py` line, run as `train.py JOB --cfg job`, exits 0. In this process: train.py's
    app with its config dir given as an absolute path (imported as a module, Hydra would look for a package)."""
    import train

    app = hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")(train.main.__wrapped__)
    commands = readme_commands()
    assert len(commands) >= 10  # the walk-through and the usage lines
    failed = []
    for args in commands:
        for job in jobs(args):
            GlobalHydra.instance().clear()
            monkeypatch.setattr(sys, "argv", ["train.py", *job, "--cfg", "job"])
            try:
                app()
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    failed.append(" ".join(job))
    GlobalHydra.instance().clear()
    assert not failed, f"these README jobs do not compose: {failed}\n{capsys.readouterr().err[-3000:]}"


DATE = re.compile(r"(?<![/_\w-])20\d\d-\d\d-\d\d(?![_\w])")  # a measurement's date, not a run dir's name
CPU_MODEL = re.compile(r"Intel|AMD|NVIDIA|H100|H200")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_dated_measurement_names_its_cpu_model(doc):
    """fp32 results differ between CPU models (oneDNN/MKL pick other kernels), so a paragraph that dates a
    measurement names the CPU (or GPU) model it ran on, not only x86_64."""
    paragraphs = re.split(r"\n\s*\n", doc.read_text())
    unnamed = [p[:120] for p in paragraphs if DATE.search(p) and not CPU_MODEL.search(p)]
    assert not unnamed, f"{doc.name}: measurements without a CPU model: {unnamed}"


def test_cpu_model_is_the_model_name_from_cpuinfo(tmp_path):
    from regularization.machine import cpu_model

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"
    assert cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())  # no /proc: the platform's words


FAKE_BENCH = {
    "device": "cpu",
    "machine": "test machine",
    "torch": "x",
    "threads": 2,
    "date": "2026-11-28",
    "load_average_before_after": [[0.5, 0.5, 0.5], [0.7, 0.6, 0.5]],
    "results": {
        "e_bf16_epoch": {"fp32_s": 2.0, "bf16_mixed_s": 1.5, "ratio": 0.75, "target": "<= 0.6"},
        "s_startup": {"make_run_s": 3.21, "import_torch_s": 1.6, "ratio": 2.00625, "target": "<= 2.0"},
        "k_per_job_overhead": {
            **{"sweep_64_s": 3.0, "sweep_1024_s": 10.68, "per_job_ms": 8.0, "large_over_small": 3.56},
            **{"ram_sweep_64_s": 2.8, "ram_sweep_1024_s": 7.6, "ram_per_job_ms": 5.0, "ram_large_over_small": 2.71},
            "target": "per_job_ms < 5, large_over_small <= 3",
        },
    },
}


@pytest.mark.slow
def test_docs_numbers_regenerates_every_table_between_its_markers(tmp_path, tiny_fashion_root):
    """The fast mode of scripts/docs_numbers.py, into a copy: every marked table is rewritten with what the
    runs gave, and nothing outside the markers changes."""
    copy = tmp_path / "copy"
    (copy / "docs" / "figures").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    for page in (ROOT / "docs").glob("*.md"):
        shutil.copy(page, copy / "docs" / page.name)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(FAKE_BENCH))
    args = ["--fast", "--root", str(copy), "--data-root", str(tiny_fashion_root), "--bench-json", str(bench)]
    # eight short train.py processes: under a minute on an idle 2-core machine, far more on a busy one
    subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_numbers.py"), *args], check=True, timeout=1800)
    before = {p.relative_to(copy): MARKER.findall((ROOT / p.relative_to(copy)).read_text()) for p in copy.rglob("*.md")}
    after = {p.relative_to(copy): MARKER.findall(p.read_text()) for p in copy.rglob("*.md")}
    written = {name: body for blocks in after.values() for name, body in blocks}
    sections = {
        "make-run",
        "fidelity-weight-decay",
        "fidelity-dropout",
        "dropout-recipe",
        "speed",
        "startup-profile",
        "mlp-comparison",
        "figures",
        "precision-dropout",
        "precision-weight-decay",
    }
    assert set(written) == sections
    assert all(len(after[f]) == len(before[f]) for f in before)
    assert "reg.lambd=3" in written["make-run"] and "completed" in written["make-run"]
    from regularization.machine import cpu_model

    assert all(cpu_model() in body for name, body in written.items() if name != "speed")  # the speed table: the bench's machine
    assert "load average" not in written["fidelity-dropout"] and "wall" not in written["fidelity-dropout"]  # no times
    assert "after 3 epochs" in written["fidelity-weight-decay"] and "| 3 | weight_decay |" in written["fidelity-weight-decay"]
    assert "| dropout_builtin |" in written["fidelity-dropout"] and "| dropout_recipe |" in written["dropout-recipe"]
    assert "3.21 s / 1.60 s = 2.01×" in written["speed"] and "1.5 s / 2 s = 0.75" in written["speed"]
    assert "into the disk's temp dir | (10.7 s − 3 s) / 960 = 8.0 ms a job; 1024 / 64: 3.56×" in written["speed"]
    assert "into a RAM disk (/dev/shm) | (7.6 s − 2.8 s) / 960 = 5.0 ms a job; 1024 / 64: 2.71×" in written["speed"]
    assert all(f"| {reg} |" in written["mlp-comparison"] for reg in ("none", "l2", "dropout_scratch"))
    assert "| bf16-mixed |" in written["precision-dropout"] and "| 3 | bf16-mixed |" in written["precision-weight-decay"]
    assert {p.name for p in (copy / "docs" / "figures").iterdir()} == {"mlp_2x2x2_summary.png", "dropout_4x4_summary.png"}
    assert "torchvision imported: no" in written["startup-profile"]
    for f in before:  # outside the markers, the files are as they were
        assert MARKER.sub("", (copy / f).read_text()) == MARKER.sub("", (ROOT / f).read_text())


# --- The docs are executable: every documented train.py and scripts/ command runs as written ---------------------

COMMANDS = dc.collect()
# Why no test runs a command, by its script: the explicit list the collection test holds every command to.
NOT_RUN = {
    "scripts/docs_numbers.py": "rewrites the docs' tables in place; test_docs_numbers_regenerates_every_table_between_its_markers "
    "runs it (--fast, into a copy)",
    "scripts/bench.py": "a benchmark of minutes, even with --quick (`make bench`); tests/test_bench.py checks its FLOP counts",
    "scripts/slurm_local.sh": "starts or stops this machine's SLURM cluster: .ci/run does both around the suite",
    "python scripts/gpu_check.py --device cpu": "tests/test_gpu_check.py runs it, shrunk with --size tiny",
    # by the whole command
    "python train.py -m hydra/launcher=vectorized_slurm hydra.launcher.max_members=64 hydra.launcher.array_parallelism=N "
    "+experiment=dropout 'reg.dropout1=range(0,0.9,0.036)' 'reg.dropout2=range(0,0.9,0.036)' 'seed=range(16)'": "10,000 jobs, "
    "157 SLURM group jobs even when shrunk; the same launcher runs, shrunk, in scaling.md's local-cluster command",
}
PROVENANCE = (
    "the command that table {} was made with: scripts/docs_numbers.py writes it from the arguments it runs, and "
    "test_docs_numbers_regenerates_every_table_between_its_markers runs them"
)
# Commands that fail for a bug another branch is fixing, with the finding and the branch: reported as expected
# failures; one that passes fails the test, so that its line here is deleted.
KNOWN_FAILURES: dict[str, str] = {}  # e.g. "python train.py -m ...": "issue 19 finding 1 (branch dirs)"
# Placeholders a user replaces, and what the test puts there (sweep dirs: see sweep_producers).
FILLS = {"hydra.launcher.array_parallelism=N": "hydra.launcher.array_parallelism=2"}
UNFILLABLE = re.compile(r"<[^<>]*>|\.\.\.|…|\[-")
# The shrinking overrides: one epoch (past a warmup), 500 Fashion-MNIST images of each split (beside a validation
# set), 2 trials of a search.
FASHION_IMAGES = 500
SEARCH_TRIALS = 2
SHRINK_CLUSTER_BENCH = ["--repeats", "1", "--quick"]
RUN_DIR_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+")


def needs(cmd: dc.DocCommand) -> list[str]:
    """What a command needs beyond this machine: a SLURM cluster, a `gpu` partition in it, CUDA."""
    launcher = next((a.split("=", 1)[1] for a in cmd.args if a.startswith("hydra/launcher=")), "basic")
    found = []
    if launcher in ("slurm", "vectorized_slurm") or cmd.script == "scripts/bench_cluster.py":
        found.append("slurm")
    if "hydra.launcher.partition=gpu" in cmd.args:
        found.append("gpu partition")
    if cmd.script == "scripts/gpu_check.py" and "--device" not in cmd.args:
        found.append("cuda")
    return found


def why_not_run(cmd: dc.DocCommand) -> str | None:
    if cmd.numbers:
        return PROVENANCE.format(cmd.numbers)
    return NOT_RUN.get(cmd.script) or NOT_RUN.get(dc.normalized(cmd))


def runnable_here(cmd: dc.DocCommand) -> bool:
    return why_not_run(cmd) is None and not needs(cmd)


def sweep_producers(cmd: dc.DocCommand) -> list[dc.DocCommand]:
    """The commands whose sweep dirs fill cmd's `<sweep>` placeholders: the nearest sweeps before it on its page,
    oldest first. A placeholder that says which sweep (`<l1 sweep>`) must find its word in that command."""
    names = dc.SWEEP_PLACEHOLDER.findall(cmd.text)
    if not names:
        return []
    earlier = [c for c in COMMANDS if c.page == cmd.page and c.line < cmd.line and c.is_sweep and runnable_here(c)]
    if len(earlier) < len(names):
        raise ValueError(f"{cmd.where}: {len(names)} sweep placeholders, but only {len(earlier)} sweeps run before it on its page")
    chosen = earlier[-len(names) :]
    for i, name in enumerate(names):
        word = name.replace("sweep", "").strip()
        if len(word) > 1:  # `<sweep A>` is a label; `<l1 sweep>` names its sweep: the nearest earlier one with that word
            named = [c for c in earlier if word in c.text]
            if not named:
                raise ValueError(f"{cmd.where}: <{name}>: no sweep before it on its page has {word!r}")
            chosen[i] = named[-1]
    return chosen


def unfillable(cmd: dc.DocCommand) -> list[str]:
    """The placeholders of cmd that the test cannot fill."""
    text = cmd.text
    for placeholder, value in FILLS.items():
        text = text.replace(placeholder, value)
    try:
        sweep_producers(cmd)
        text = dc.SWEEP_PLACEHOLDER.sub("SWEEP", text)
    except ValueError as err:
        return [str(err)]
    return UNFILLABLE.findall(text)


def not_executable(cmd: dc.DocCommand) -> bool:
    """A script named first, without the interpreter, that is not an executable file."""
    first = cmd.words[0].removeprefix("$(")
    return first.startswith("scripts/") and not os.access(ROOT / first, os.X_OK)


def test_every_documented_command_is_run_or_says_why_not():
    """Collection: each `train.py`/`scripts/` command of README.md and docs/*.md is run by
    test_documented_command_runs_as_written, by test_documented_cluster_or_gpu_command (SLURM, CUDA), or is listed
    with its reason; its placeholders can be filled; the lists name no command that is gone."""
    assert len(COMMANDS) >= 60, f"found only {len(COMMANDS)} documented commands: is the collector broken?"
    problems = [f"{c.where}: `{c.text}`: cannot fill {u}" for c in COMMANDS if why_not_run(c) is None for u in unfillable(c)]
    known = {dc.normalized(c) for c in COMMANDS}
    for name, keys in (("KNOWN_FAILURES", KNOWN_FAILURES), ("CLAIMS", CLAIMS)):
        problems += [f"{name} names a command no doc has: {k}" for k in keys if k not in known]
    problems += [f"NOT_RUN names no documented command: {s}" for s in NOT_RUN if s not in {c.script for c in COMMANDS} | known]
    problems += [f"{c.where}: `{c.text}` cannot run as written: {c.words[0]} is not executable" for c in COMMANDS if not_executable(c)]
    untested = [c for c in COMMANDS if why_not_run(c) is None and not runnable_here(c) and not set(needs(c)) & {"slurm", "cuda"}]
    problems += [f"{c.where}: `{c.text}` is run by no test" for c in untested]
    assert not problems, "\n".join(problems)


def test_the_collector_finds_fenced_prose_continued_and_chained_commands(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "Run `python train.py reg.lambd=3` or see `scripts/summarize.py`.\n\n"
        "```sh\n"
        "make run   # python train.py in a comment is no command\n"
        "python train.py -m reg.lambd=0,3 \\\n    seed=0,1   # two seeds\n"
        'eval "$(scripts/slurm_local.sh start)" && .venv/bin/python scripts/bench_cluster.py --repeats 3\n'
        "```\n\n"
        "```python\nsubprocess.run(['python', 'train.py'])\n```\n"
    )
    found = [(c.text, c.beside, c.fenced) for c in dc.collect([doc])]
    assert [(t, f) for t, _, f in found] == [
        ("python train.py reg.lambd=3", False),
        ("python train.py -m reg.lambd=0,3 seed=0,1", True),
        ('eval "$(scripts/slurm_local.sh start)"', True),
        (".venv/bin/python scripts/bench_cluster.py --repeats 3", True),
    ]
    assert found[1][1] == "two seeds"


@dataclass
class Plan:
    """How a command runs: what is appended to it, and what it must do (its config, unshrunk, for the text's claims)."""

    cmd: dc.DocCommand
    shrink: list[str]
    config: DictConfig | None  # the first job's config as documented (train.py commands)
    jobs: int | None  # the jobs its sweep runs, shrunk

    @property
    def fashion(self) -> bool:
        return self.config is not None and self.config.data.name == "fashion_mnist"


def first_job(args: list[str]) -> tuple[list[str], int]:
    """The overrides of a command line's first job, and how many jobs its grid has (Hydra's basic sweeper's split)."""
    from hydra._internal.utils import get_args_parser

    overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(args).overrides)
    job = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in overrides
        if not o.is_interval_sweep() and not (o.is_sweep_override() and "tag(" in o.input_line)
    ]
    grid = [o for o in overrides if not o.is_interval_sweep() and "tag(" not in o.input_line]
    return job, sum(len(batch) for batch in BasicSweeper.split_arguments(grid, None))


def plan(cmd: dc.DocCommand) -> Plan:
    if cmd.script == "scripts/bench_cluster.py":
        return Plan(cmd, SHRINK_CLUSTER_BENCH, None, None)
    if cmd.script != "train.py":
        return Plan(cmd, [], None, None)
    job, grid = first_job([a for a in cmd.args if a not in ("-m", "--cfg", "job")])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose("config", overrides=job, return_hydra_config=True)
    GlobalHydra.instance().clear()
    if "--cfg" in cmd.args:
        return Plan(cmd, [], config, None)
    search = "n_trials" in config.hydra.sweeper
    # fewer epochs than a warmup, or fewer images than the validation set holds out, would not run at all
    shrink = [f"trainer.epochs={1 + OmegaConf.select(config, 'optim.warmup_epochs', default=0)}"]
    if config.data.name == "fashion_mnist":
        val_size = OmegaConf.select(config, "data.val_size", default=0) or 0
        shrink += [f"data.n_train={FASHION_IMAGES + val_size}", f"data.n_test={FASHION_IMAGES}"]
    shrink += [f"hydra.sweeper.n_trials={SEARCH_TRIALS}"] if search else []
    jobs = (SEARCH_TRIALS * config.optimize_seeds if search else grid) if cmd.is_sweep else None
    return Plan(cmd, shrink, config, jobs)


def words_to_run(p: Plan, done: dict[str, dc.Outcome]) -> list[str]:
    """The command's words, its placeholders filled (a sweep's dir from the outcome of the command that made it),
    and the shrinking overrides appended."""
    text = p.cmd.text
    for placeholder, value in FILLS.items():
        text = text.replace(placeholder, value)
    producers = iter(sweep_producers(p.cmd))

    def fill(match: re.Match) -> str:
        producer = next(producers)
        made = done[dc.normalized(producer)].new_sweeps
        if len(made) != 1:
            raise ValueError(f"cannot fill <{match[1]}>: `{producer.text}` ({producer.where}) left {len(made)} sweep dirs")
        return str(made[0].relative_to(made[0].parents[2]))  # outputs/multirun/NAME, from the working dir

    return shlex.split(dc.SWEEP_PLACEHOLDER.sub(fill, text)) + p.shrink


def run_unit(plans: list[Plan], cwd: Path, data: Path | None) -> dict[str, dc.Outcome]:
    """Run the commands in order in one fresh working dir holding a link to the data."""
    cwd.mkdir(parents=True)
    if data is not None:
        (cwd / "data").symlink_to(data)
    done: dict[str, dc.Outcome] = {}
    for p in plans:
        try:
            words = words_to_run(p, done)
        except ValueError as err:
            done[dc.normalized(p.cmd)] = dc.Outcome(p.cmd, [], -1, "", str(err), cwd)
            continue
        done[dc.normalized(p.cmd)] = dc.run(p.cmd, words, cwd, timeout=600)
    return done


def units(commands: list[dc.DocCommand]) -> list[list[dc.DocCommand]]:
    """The commands grouped so that a command runs after the sweeps its placeholders name, in their dir: groups that
    share a command are one; each group in page order; the longest groups first (2 run at a time)."""
    groups: list[dict[str, dc.DocCommand]] = []
    for cmd in commands:
        members = {dc.normalized(c): c for c in [*sweep_producers(cmd), cmd]}
        overlapping = [g for g in groups if g.keys() & members.keys()]
        for g in overlapping:
            members |= g
            groups.remove(g)
        groups.append(members)
    ordered = [sorted(g.values(), key=lambda c: (c.page, c.line)) for g in groups]
    return sorted(ordered, key=len, reverse=True)


class DocRuns:
    """The documented commands that this session's selected tests check. In one pytest process, all of them start when
    the first is asked for, 2 at a time. In an xdist worker, which runs only some of the tests (each unit's tests
    together: they share an xdist_group), a unit runs when its first test asks for it, and no other beside it."""

    def __init__(self, commands: list[dc.DocCommand], tmp: Path, ahead: bool) -> None:
        self.data = REAL_DATA if (REAL_DATA / "FashionMNIST" / "raw").is_dir() else None
        self.units = units(commands)
        self.plans = {dc.normalized(c): plan(c) for u in self.units for c in u}
        self.tmp = tmp
        self.pool = ThreadPoolExecutor(max_workers=2 if ahead else 1)
        self.futures: dict[str, Future] = {}
        if ahead:
            for unit in self.units:
                self.start(unit)

    def start(self, unit: list[dc.DocCommand]) -> None:
        i = self.units.index(unit)
        future = self.pool.submit(run_unit, [self.plans[dc.normalized(c)] for c in unit], self.tmp / f"unit{i}", self.data)
        self.futures |= {dc.normalized(c): future for c in unit}

    def outcome(self, cmd: dc.DocCommand) -> tuple[Plan, dc.Outcome]:
        key = dc.normalized(cmd)
        if key not in self.futures:
            self.start(next(u for u in self.units if key in {dc.normalized(c) for c in u}))
        return self.plans[key], self.futures[key].result()[key]


LOCAL: dict[str, dc.DocCommand] = {}  # the first place of each command (spelled with python or .venv/bin/python)
ELSEWHERE: dict[str, dc.DocCommand] = {}
for _cmd in COMMANDS:
    if why_not_run(_cmd) is None:
        (LOCAL if runnable_here(_cmd) else ELSEWHERE).setdefault(dc.normalized(_cmd), _cmd)


@pytest.fixture(scope="session")
def doc_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocRuns]:
    selected = [
        item.callspec.params["cmd"] for item in request.session.items if item.originalname == "test_documented_command_runs_as_written"
    ]
    runs = DocRuns(selected, tmp_path_factory.mktemp("docs"), ahead="PYTEST_XDIST_WORKER" not in os.environ)
    yield runs
    runs.pool.shutdown(cancel_futures=True)


def command_id(cmd: dc.DocCommand) -> str:
    return f"{cmd.where} {cmd.text.split(' ', 1)[1][:70]}"


def places(cmd: dc.DocCommand) -> str:
    """Every place a command is documented at."""
    return ", ".join(c.where for c in COMMANDS if dc.normalized(c) == dc.normalized(cmd))


# Under xdist (make test), each unit's commands in one worker, in page order: a command runs in the dir of the sweeps it names.
UNIT = {dc.normalized(c): f"docs-unit{i}" for i, unit in enumerate(units(list(LOCAL.values()))) for c in unit}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [pytest.param(c, marks=pytest.mark.xdist_group(UNIT[k])) for k, c in LOCAL.items()], ids=command_id)
def test_documented_command_runs_as_written(cmd: dc.DocCommand, doc_runs: DocRuns) -> None:
    """The command, as written plus the overrides that shrink it, in a fresh working dir: it exits 0 and does what
    the text beside it says (the dirs and files it names, the jobs of its sweep, its claims in CLAIMS)."""
    p, out = doc_runs.outcome(cmd)
    if p.fashion:
        real_data_root()  # skips without Fashion-MNIST (make data); fails when REQUIRE_FASHION_MNIST=1
    problems = check(p, out)
    print(f"{places(cmd)}: {out.cpu_s:.1f} CPU-s, {out.seconds:.1f} s wall")  # the suite's time budget, per command
    known = KNOWN_FAILURES.get(dc.normalized(cmd))
    report = f"{places(cmd)}: `{cmd.text}`, run as `{shlex.join(out.argv)}` in {out.cwd}:\n" + "\n".join(problems)
    if problems and known:
        pytest.xfail(f"{known}\n{report}")
    assert not problems, report
    assert not known, f"{places(cmd)} passes now: delete its line from KNOWN_FAILURES ({known})"


def check(p: Plan, out: dc.Outcome) -> list[str]:
    """What went wrong, against what the docs say a command does; empty when it did all of it."""
    if out.returncode != 0:
        return [f"exited {out.returncode} after {out.seconds:.0f} s:\n{out.tail()}"]
    cmd = p.cmd
    problems = []
    if cmd.script == "train.py":
        problems += check_train(p, out)
    elif cmd.script == "scripts/summarize.py":
        problems += check_summarize(p, out)
    for claim, verify in CLAIMS.get(dc.normalized(cmd), []):
        problems += [f"the docs say {claim}, but {why}" for why in verify(p, out)]
    problems += claims_in_comment(p)
    return problems


def check_train(p: Plan, out: dc.Outcome) -> list[str]:
    if "--cfg" in p.cmd.args:  # prints the composed config and writes nothing
        printed = yaml.safe_load(out.stdout) or {}
        problems = [] if {"model", "reg", "data", "optim", "trainer"} <= set(printed) else [f"printed no config: {out.stdout[:200]!r}"]
        return problems + ([f"wrote {out.new_runs + out.new_sweeps}"] if out.new_runs or out.new_sweeps else [])
    if not p.cmd.is_sweep:  # a run: one dir under outputs/runs/<overrides>/<date>_<time>_<pid>/ (README: Outputs)
        if len(out.new_runs) != 1 or out.new_sweeps:
            return [f"made {len(out.new_runs)} dirs in outputs/runs and {len(out.new_sweeps)} in outputs/multirun, not 1 run dir"]
        return check_job(out.new_runs[0], single=True) + check_name(out.new_runs[0])
    if len(out.new_sweeps) != 1 or out.new_runs:  # a sweep: one dir under outputs/multirun/<date>_<time>_<pid>/
        dirs = ", ".join(p.name for p in out.new_sweeps)
        return [f"made {len(out.new_sweeps)} sweep dirs in outputs/multirun ({dirs}) and {len(out.new_runs)} run dirs, not 1 sweep dir"]
    sweep = out.new_sweeps[0]
    missing = [f for f in ("summary.csv", "summary.md", "summary.png") if not (sweep / f).is_file()]
    if missing:
        return [f"{sweep} has no {', '.join(missing)}"]
    rows = dc.summary_rows(sweep)
    problems = check_name(sweep)
    if len(rows) != p.jobs:
        problems.append(f"its summary has {len(rows)} jobs, the command runs {p.jobs}")
    problems += [f"job {r['job']} ended {r['status']}" for r in rows if r["status"] != "completed"]
    stacked = str(p.config.hydra.launcher._target_).split(".")[-1].startswith("Vectorized")
    for row in rows:
        problems += check_job(sweep / row["job"], single=False, stacked=stacked)
    if stacked and not any(sweep.glob(f"*/{GROUP_CHECKPOINT}")):  # in each group's first member's dir (docs/scaling.md)
        problems.append(f"no job dir of {sweep.name} holds a {GROUP_CHECKPOINT}")
    return problems


def check_name(path: Path) -> list[str]:
    return [] if RUN_DIR_NAME.fullmatch(path.name) else [f"{path.name} is not named <date>_<time>_<pid>"]


def check_job(job: Path, single: bool, stacked: bool = False) -> list[str]:
    """A job's dir holds what docs/outputs.md lists (a stacked member's checkpoint is its group's), and its
    metrics.json says completed."""
    if not (job / "metrics.json").is_file():
        return [f"{job} has no metrics.json"]
    names = ["metrics.json", "train.log", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"]
    names += ([] if stacked else [CHECKPOINT]) + (["curves.png"] if single else [])
    problems = [f"{job.name} has no {n}" for n in names if not (job / n).exists()]
    problems += [] if any(job.glob("events.out.tfevents.*")) else [f"{job.name} has no TensorBoard event file"]
    status = dc.metrics(job)["status"]
    return problems + ([] if status == "completed" else [f"{job.name} ended {status}"])


def check_summarize(p: Plan, out: dc.Outcome) -> list[str]:
    """Each sweep's tables and plots rewritten in its dir; with several, one table of all their jobs in --out."""
    args = out.argv[2:]
    sweeps = [out.cwd / a for i, a in enumerate(args) if (out.cwd / a).is_dir() and (i == 0 or args[i - 1] != "--out")]
    problems = [f"{s} has no fresh {f}" for s in sweeps for f in ("summary.csv", "summary.md", "summary.png") if not fresh(s / f, out)]
    if len(sweeps) > 1:
        target = out.cwd / out.argv[out.argv.index("--out") + 1] if "--out" in out.argv else out.cwd / "outputs" / "comparison"
        if not fresh(target / "summary.csv", out):
            return problems + [f"wrote no {target}/summary.csv"]
        rows = len(dc.summary_rows(target))
        if rows != sum(len(dc.summary_rows(s)) for s in sweeps):
            problems.append(f"{target}/summary.csv has {rows} jobs, not those of the {len(sweeps)} sweeps")
    return problems


def fresh(path: Path, out: dc.Outcome) -> bool:
    return path.is_file() and path.stat().st_mtime >= out.started


COMMENT_NUMBERS = (
    (r"(\d+) epochs", "trainer.epochs"),
    (r"(\d+) TPE trials", "hydra.sweeper.n_trials"),
    (r"mean of (\d+) seeds", "optimize_seeds"),
)


def claims_in_comment(p: Plan) -> list[str]:
    """Numbers a block's comment states about the documented config: `10 epochs`, `20 TPE trials`, `mean of 3 seeds`."""
    if not p.cmd.fenced or p.config is None:
        return []
    cfg, problems = p.config, []
    for pattern, key in COMMENT_NUMBERS:
        for stated in re.findall(pattern, p.cmd.beside):
            actual = OmegaConf.select(cfg, key)
            if actual != int(stated):
                problems.append(f"its comment says {stated} for {key}, the config has {actual}")
    return problems


def in_sweep(name: str) -> Callable[[Plan, dc.Outcome], list[str]]:
    return lambda p, out: [] if (out.new_sweeps[0] / name).is_file() else [f"{out.new_sweeps[0].name} has no {name}"]


def in_file(name: str, text: str) -> Callable[[Plan, dc.Outcome], list[str]]:
    return lambda p, out: [] if text in (out.new_sweeps[0] / name).read_text() else [f"{name} has no {text}"]


def in_output(pattern: str) -> Callable[[Plan, dc.Outcome], list[str]]:
    return lambda p, out: [] if re.search(pattern, out.stdout + out.stderr) else [f"its output has no {pattern!r}"]


def in_config(**expected: object) -> Callable[[Plan, dc.Outcome], list[str]]:
    def verify(p: Plan, out: dc.Outcome) -> list[str]:
        selected = {k: OmegaConf.select(p.config, k.replace("__", ".")) for k in expected}
        actual = {k: getattr(v, "name", v) for k, v in selected.items()}  # an Enum by its name
        return [f"{k.replace('__', '.')} is {actual[k]}" for k, v in expected.items() if str(actual[k]) != str(v)]

    return verify


def best(*keys: str, within: tuple[float, float] | None = None) -> Callable[[Plan, dc.Outcome], list[str]]:
    """optimization_results.yaml names the best value of each searched key (in the range, when given)."""

    def verify(p: Plan, out: dc.Outcome) -> list[str]:
        path = out.new_sweeps[0] / "optimization_results.yaml"
        if not path.is_file():
            return [f"{out.new_sweeps[0].name} has no optimization_results.yaml"]
        params = yaml.safe_load(path.read_text())["best_params"]
        problems = [f"optimization_results.yaml has no best {k}" for k in keys if k not in params]
        if within:
            values = [float(r["job"].split(",")[0].split("=")[1]) for r in dc.summary_rows(out.new_sweeps[0])]
            problems += [f"it tried {keys[0]}={v}" for v in values if not within[0] <= v <= within[1]]
        return problems

    return verify


def seeds(*expected: int) -> Callable[[Plan, dc.Outcome], list[str]]:
    def verify(p: Plan, out: dc.Outcome) -> list[str]:
        found = sorted({int(r["job"].rsplit("seed=", 1)[1]) for r in dc.summary_rows(out.new_sweeps[0]) if "seed=" in r["job"]})
        return [] if found == list(expected) else [f"its jobs have seeds {found}"]

    return verify


STACKED = in_output(r"as 1 vectorized group")
# What the text beside a command says it does, beyond exiting 0 and writing its run or sweep dir.
CLAIMS: dict[str, list[tuple[str, Callable[[Plan, dc.Outcome], list[str]]]]] = {
    "python train.py": [("it is one run: weight decay, reg=l2, λ = 0", in_config(model__name="linear", reg__name="l2", reg__lambd=0.0))],
    "python train.py +experiment=dropout": [("it is from-scratch dropout", in_config(reg__name="dropout_scratch", model__name="mlp"))],
    "python train.py +experiment=dropout reg=dropout_builtin": [("it is nn.Dropout", in_config(reg__dropout="builtin"))],
    "python train.py +experiment=dropout reg=l2 reg.lambd=1e-4": [("SGD lr 0.5 with L2", in_config(optim__lr=0.5, reg__name="l2"))],
    "python train.py +experiment=dropout_recipe reg=none": [
        ("the recipe's optimizer (momentum 0.9, lr 0.05) without dropout", in_config(optim__momentum=0.9, optim__lr=0.05, reg__name="none"))
    ],
    "python train.py +experiment=dropout trainer.precision=bf16-mixed": [("bf16 matmuls", in_config(trainer__precision="bf16-mixed"))],
    "python train.py -m 'reg.lambd=range(0,10,0.5)' seed=0,1 hydra/launcher=vectorized": [("they train as one stacked model", STACKED)],
    "python train.py -m hydra/launcher=vectorized 'reg.lambd=range(0,10,0.25)'": [("the jobs are stacked into one group", STACKED)],
    "python train.py -m hparams_search=weight_decay_lambda optimize_seeds=3": [
        ("the best λ lands in optimization_results.yaml", best("reg.lambd")),
        ("each trial is the mean over seeds 0, 1, 2", seeds(0, 1, 2)),
    ],
    "python train.py -m hparams_search=weight_decay_lambda": [("log λ in [1e-2, 1e3]", best("reg.lambd", within=(1e-2, 1e3)))],
    "python train.py -m hparams_search=weight_decay_lambda 'reg.lambd=tag(log, interval(1, 500))'": [
        ("another range, [1, 500]", best("reg.lambd", within=(1, 500)))
    ],
    "python train.py -m hparams_search=dropout_rates": [
        ("an Optuna search over both rates, maximizing test accuracy", best("reg.dropout1", "reg.dropout2")),
        ("it maximizes test accuracy", in_config(optimize_metric="test_acc", optimize_direction="maximize")),
    ],
    "python train.py -m hydra/launcher=vectorized +experiment=dropout reg=none,l2,dropout_scratch seed=0,1,2": [
        ("summary.md has the mean ± std over the seeds per regularizer", in_file("summary.md", "±")),
    ],
    "python train.py -m reg.lambd=0,3 seed=0,1": [("with seeds, summary_by_setting.csv", in_sweep("summary_by_setting.csv"))],
    "python train.py -m hparams_search=weight_decay_lambda hydra.sweeper.n_trials=32 hydra.sweeper.n_jobs=16 hydra/launcher=vectorized": [
        ("each batch of trials trains as 1 vectorized group", in_output(f"Launching {SEARCH_TRIALS} jobs as 1 vectorized group"))
    ],
    "python -m cProfile train.py -m reg.lambd=0,3": [("it prints a profile", in_output(r"function calls"))],
}


def gpu_partition_missing() -> str | None:
    sinfo = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%P"], capture_output=True, text=True)
    return None if sinfo.returncode == 0 and sinfo.stdout.strip() else "the SLURM cluster has no partition named gpu"


def elsewhere_marks(cmd: dc.DocCommand) -> list[pytest.MarkDecorator]:
    found = needs(cmd)
    marks = [pytest.mark.slow]
    marks += [pytest.mark.slurm] if "slurm" in found else []
    marks += [pytest.mark.cuda] if "cuda" in found else []
    return marks


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=elsewhere_marks(c)) for c in ELSEWHERE.values()], ids=command_id)
def test_documented_cluster_or_gpu_command(cmd: dc.DocCommand, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A command for a SLURM cluster or a GPU, run as written (shrunk) where there is one: marked `slurm` (the
    cluster of scripts/slurm_local.sh) or `cuda` (skipped without CUDA)."""
    if "slurm" in needs(cmd):
        request.getfixturevalue("slurm_cluster")  # skips without a cluster; fails without one when REQUIRE_SLURM=1
    if "cuda" in needs(cmd) and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if "gpu partition" in needs(cmd) and (missing := gpu_partition_missing()):
        pytest.skip(missing)
    p = plan(cmd)
    if p.fashion or cmd.script in ("scripts/gpu_check.py", "scripts/bench_cluster.py"):
        real_data_root()
    out = run_unit([plan(c) for c in [*sweep_producers(cmd), cmd]], tmp_path / "cwd", REAL_DATA)[dc.normalized(cmd)]
    problems = check(p, out)
    assert not problems, f"{places(cmd)}: `{cmd.text}`, run as `{shlex.join(out.argv)}`:\n" + "\n".join(problems)
