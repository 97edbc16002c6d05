"""The commands the docs give, found and run as a user runs them (tests/test_docs.py).

Found: every line of a shell block (```sh, ```bash or a bare ```) of README.md and docs/*.md that runs ``train.py``
or a ``scripts/`` file, with ``\\``-continued lines joined, and every such command in the prose's inline code that
starts with the interpreter (`python train.py ...`). Its comment, or the paragraph or table row around it, is the
text that says what it does.

Run: as written, in a fresh working dir that holds a link to the Fashion-MNIST data, with the interpreter, `train.py`
and `scripts/` taken from this checkout, and only overrides appended that shrink the work (``SHRINK``). Commands of
one page that name a sweep another made (`outputs/multirun/<sweep>`) run after it in the same dir, as a user
following the page would.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = ("python", "python3", ".venv/bin/python")
SHELL_FENCES = ("", "sh", "bash", "shell", "console")
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`([^`]+)`")
PLACEHOLDER = re.compile(r"<([^<>]+)>")
# A sweep's dir named by the command that made it: `outputs/multirun/<sweep>`, `<sweep A>`, `<l1 sweep>`.
SWEEP_PLACEHOLDER = re.compile(r"(?:outputs/multirun/)?<([^<>]*sweep[^<>]*)>")


@dataclass(frozen=True)
class DocCommand:
    """One documented command: where it is, its text (continuations joined, comment cut) and the text beside it."""

    page: str
    line: int
    text: str
    beside: str
    fenced: bool
    numbers: str | None = None  # the docs_numbers table whose provenance line it is

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def script(self) -> str:
        """The file it runs: ``train.py`` or ``scripts/NAME``."""
        return next(w for w in self.inner_words if w == "train.py" or w.startswith("scripts/"))

    @property
    def inner_words(self) -> list[str]:
        """Its words, or for `eval "$(COMMAND)"` those of COMMAND."""
        words = self.words
        return shlex.split(words[1][2:-1]) if words[0] == "eval" else words

    @property
    def args(self) -> list[str]:
        """The words after the script."""
        words = self.inner_words
        return words[words.index(self.script) + 1 :]

    @property
    def is_sweep(self) -> bool:
        return self.script == "train.py" and "-m" in self.args

    @property
    def placeholders(self) -> list[str]:
        return PLACEHOLDER.findall(self.text)


def runs_our_code(text: str, prose: bool) -> bool:
    """Whether a shell line runs train.py or a script of scripts/ (an interpreter first, or the script itself)."""
    try:
        words = shlex.split(text)
    except ValueError:
        return False
    if not words:
        return False
    if words[0] == "eval" and len(words) == 2 and words[1].startswith("$(") and words[1].endswith(")"):
        return runs_our_code(words[1][2:-1], prose)  # eval "$(scripts/slurm_local.sh start)"
    if words[0] in PYTHONS:
        rest = words[1:]
        if rest[:2] == ["-m", "cProfile"]:
            rest = rest[2:]
        return bool(rest) and (rest[0] == "train.py" or rest[0].startswith("scripts/"))
    # `scripts/bench.py` alone in prose names a file; with arguments it is a command
    return words[0].startswith("scripts/") and (not prose or len(words) > 1)


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's command and its comment (a # outside quotes, at the start or after a blank)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def fenced_commands(page: str, lines: list[str]) -> list[DocCommand]:
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if match:
            fence = match[1] if fence is None else None
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, comment = split_comment(pending + line)
        pending = ""
        for part in text.split(" && "):  # each command of `a && b` on its own
            part = " ".join(part.split())
            if runs_our_code(part, prose=False):
                found.append(DocCommand(page, start, part, comment, fenced=True))
    return found


def prose_commands(page: str, lines: list[str]) -> list[DocCommand]:
    """Inline `python train.py ...` commands outside the fenced blocks, with their paragraph (or table row)."""
    found, fence = [], None
    paragraphs: list[tuple[int, str]] = []
    numbers = numbers_sections(lines)
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fence = None if fence else "open"
            paragraphs.append((number, ""))
            continue
        if fence:
            continue
        if not line.strip() or line.startswith("|"):  # a table row is a paragraph of its own
            paragraphs.append((number, line))
            paragraphs.append((number + 1, "") if line.startswith("|") else (number, ""))
        elif paragraphs and paragraphs[-1][1]:
            paragraphs[-1] = (paragraphs[-1][0], paragraphs[-1][1] + "\n" + line)
        else:
            paragraphs.append((number, line))
    for first, paragraph in paragraphs:
        for match in INLINE.finditer(paragraph):
            text = " ".join(match[1].split())
            if runs_our_code(text, prose=True):
                line = first + paragraph[: match.start()].count("\n")
                found.append(DocCommand(page, line, text, " ".join(paragraph.split()), fenced=False, numbers=numbers.get(line)))
    return found


def numbers_sections(lines: list[str]) -> dict[int, str]:
    """The lines between `<!-- numbers:NAME -->` and `<!-- /numbers -->`, each with its NAME."""
    inside, name = {}, None
    for number, line in enumerate(lines, 1):
        if match := re.match(r"<!-- numbers:([\w-]+) -->", line):
            name = match[1]
        elif line.startswith("<!-- /numbers -->"):
            name = None
        elif name:
            inside[number] = name
    return inside


def collect(docs: list[Path] = DOCS) -> list[DocCommand]:
    """Every documented command, in page order."""
    found = []
    for doc in docs:
        page = str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name
        lines = doc.read_text().splitlines()
        found += sorted(fenced_commands(page, lines) + prose_commands(page, lines), key=lambda c: c.line)
    return found


def normalized(cmd: DocCommand) -> str:
    """The command with the interpreter spelled one way: `python train.py` and `.venv/bin/python train.py` are one."""
    first, _, rest = cmd.text.partition(" ")
    return f"python {rest}" if first in PYTHONS else cmd.text


# --- running ---------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one command did: its exit status, its output, the dirs it added under outputs/, its working dir."""

    command: DocCommand
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    new_runs: list[Path] = field(default_factory=list)
    new_sweeps: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0  # time.time() when it started, to tell the files it wrote
    cpu_s: float = 0.0  # user + system seconds of the command and the children it waited for

    def tail(self, n: int = 15) -> str:
        return "\n".join((self.stdout + self.stderr).splitlines()[-n:])


def dirs_under(cwd: Path, where: str) -> set[Path]:
    """The run dirs (outputs/runs/<overrides or job>/<date>_<time>_<pid>) or sweep dirs (outputs/multirun/<date>_<time>_<pid>)."""
    base = cwd / "outputs" / where
    return {p for p in base.glob("*/*" if where == "runs" else "*") if p.is_dir()} if base.is_dir() else set()


def argv_of(words: list[str]) -> list[str]:
    """The command's words with this checkout's interpreter, train.py and scripts/ (the working dir is elsewhere)."""
    out = []
    for i, word in enumerate(words):
        if i == 0 and word in PYTHONS:
            out.append(sys.executable)
        elif word == "train.py" or word.startswith("scripts/"):
            out.append(str(ROOT / word))
        else:
            out.append(word)
    return out


def run(cmd: DocCommand, words: list[str], cwd: Path, timeout: float = 600) -> Outcome:
    """Run one command (its words, placeholders filled and shrinking overrides appended) in cwd."""
    before_runs, before_sweeps = dirs_under(cwd, "runs"), dirs_under(cwd, "multirun")
    argv = argv_of(words)
    started, start = time.time(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # its CPU time too, with its children's that it waited for
        timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        stdout, stderr = (f.seek(0) or f.read() for f in (out, err))
    if code == -9:
        stderr += f"\nkilled after {timeout} s"
    seconds = time.perf_counter() - start
    return Outcome(
        cmd,
        argv,
        code,
        stdout,
        stderr,
        cwd,
        sorted(dirs_under(cwd, "runs") - before_runs),
        sorted(dirs_under(cwd, "multirun") - before_sweeps),
        seconds,
        started,
        usage.ru_utime + usage.ru_stime,
    )


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())
