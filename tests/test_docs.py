"""The docs stay true: their links resolve, the README's commands compose, and their tables regenerate."""

from __future__ import annotations

import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import ROOT

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
    assert all(f"| {reg} |" in written["mlp-comparison"] for reg in ("none", "l2", "dropout_scratch"))
    assert "| bf16-mixed |" in written["precision-dropout"] and "| 3 | bf16-mixed |" in written["precision-weight-decay"]
    assert {p.name for p in (copy / "docs" / "figures").iterdir()} == {"mlp_2x2x2_summary.png", "dropout_4x4_summary.png"}
    assert "torchvision imported: no" in written["startup-profile"]
    for f in before:  # outside the markers, the files are as they were
        assert MARKER.sub("", (copy / f).read_text()) == MARKER.sub("", (ROOT / f).read_text())
