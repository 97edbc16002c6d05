"""Where a run's numbers go: TensorBoard scalars, the console, and metrics.json."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import logging
import math
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import google_crc32c
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.api_pb2 import Status
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

log = logging.getLogger("regularization")

# Final metric -> TensorBoard tag. The train/test losses are full-dataset evaluations in eval mode;
# loss/objective is the running training objective (mean over the epoch's batches, penalty included).
TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "objective": "loss/objective",
    "train_acc": "acc/train",
    "test_acc": "acc/test",
    "val_loss": "loss/val",  # with data.val_size
    "val_acc": "acc/val",
    "weight_l2_norm": "weights/l2_norm",
    "sparsity": "weights/sparsity",
}


# The keys that define an experiment, flattened; a config group (model, reg, ...) stands for its preset's name.
# Keys missing from a job's config (reg.dropout1 without dropout) are left out of its row.
HPARAM_KEYS = (
    "model",
    "reg",
    "reg.penalty",
    "reg.impl",
    "reg.lambd",
    "reg.dropout1",
    "reg.dropout2",
    "optim",
    "optim.lr",
    "data",
    "data.batch_size",
    "seed",
    "trainer.epochs",
    "trainer.precision",  # these change the numbers a run gives
    "trainer.compile",
    "trainer.matmul_precision",
)
HParam = bool | int | float | str
# metrics.json status -> the HParams session's status (a diverged run is a failed session). An interrupted
# run gets no session end: it is not over, and the run that resumes it ends the session.
SESSION_STATUS = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "failed": "STATUS_FAILURE"}


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file written so that a reader sees the old one or the new one, never a torn one:
    a temp file in the same dir, fsync, rename. On Ctrl-C or an error mid-write the old file stands and
    no temp file is left.

    The temp file comes from mkstemp, not NamedTemporaryFile, whose wrapper closes in a Python ``__del__``:
    a Ctrl-C that lands in a ``__del__`` is printed and dropped ("Exception ignored"), and a run writing a
    checkpoint every epoch then trained on (seen once in 100 Ctrl-Cs).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj) + "\n")


def write_texts_atomic(files: list[tuple[Path, str]]) -> None:
    """``write_text_atomic`` for many files at once: each written to a temp file in its dir, then one sync of their
    filesystems for all of them (an fsync took ~4 ms a file here: a journal commit each, most of writing a
    1,024-job group's results), then each renamed into place. A reader sees each old file or its new one, whole."""
    temps: list[str] = []
    try:
        for path, text in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            temps.append(tmp)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
        sync_filesystems({Path(tmp).parent for tmp in temps})
        for (path, _), tmp in zip(files, temps, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:  # the ones not renamed yet
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def sync_filesystems(dirs: set[Path]) -> None:
    """Flush what was written to the filesystems of ``dirs``: Linux's syncfs, once per filesystem (ctypes: the os
    module lacks it); elsewhere os.sync, every filesystem's."""
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    for d in {os.stat(d).st_dev: d for d in dirs}.values():
        fd = os.open(d, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), f"syncfs failed for {d}")
        finally:
            os.close(fd)


def json_text(obj: Any, indent: str = "") -> str:
    """``json.dumps(obj, indent=2)``, except that a dict of a list of dicts (metrics.json's history) is one line:
    each piece comes from the C encoder (with an indent, json.dumps runs the pure-Python one: ~1 ms per 10 epochs of
    history, most of writing a vectorized sweep's results)."""
    inner = indent + "  "
    if isinstance(obj, dict) and obj:
        return "{\n" + ",\n".join(f"{inner}{json.dumps(str(k))}: {json_text(v, inner)}" for k, v in obj.items()) + f"\n{indent}}}"
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(f"{inner}{json.dumps(v)}" for v in obj) + f"\n{indent}]"
    return json.dumps(obj)


# The metrics of an evaluation's log line, in order, and their labels.
LINE_LABELS = {
    "train_loss": "train_loss",
    "test_loss": "test_loss",
    "train_acc": "train_acc",
    "test_acc": "test_acc",
    "val_loss": "val_loss",
    "val_acc": "val_acc",
    "weight_l2_norm": "|w|",
    "sparsity": "sparsity",
}


def format_metrics(metrics: dict[str, float | None]) -> str:
    return "  ".join([f"{label} {metrics[key]:.4g}" for key, label in LINE_LABELS.items() if metrics.get(key) is not None])


_file_ids = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C, as tensorboard's ``masked_crc32c`` computes it: rotate right by 15, add a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class Records(RecordWriter):
    """tensorboard's RecordWriter (length, its CRC, the data, its CRC), with the CRCs from google-crc32c's C code:
    tensorboard computes them in a pure-Python loop over the bytes, ~10 µs an event, more than the rest of writing it."""

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._writer.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))


class EventFile:
    """One TensorBoard event file, with the records torch's ``SummaryWriter(log_dir, purge_step=...)`` writes
    (its name, the file-version event, the purge marker), written in this thread. ``add_scalars`` writes the
    scalars of one step as one event with a value per tag (``add_scalar``'s ``simple_value`` summaries, merged
    as tf.summary.merge merges them): TensorBoard reads each value as its tag's point at that step.

    SummaryWriter hands every record to a writer thread and joins it on each flush and close; with one
    writer per job and a flush per epoch that handoff costs more than the writing (a sweep of 64 jobs
    keeps 64 such threads). The records go through tensorboard's own RecordWriter (length, CRCs).
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}"
        self.scalar_events: dict[tuple[str, ...], Event] = {}
        self.records = Records(open(log_dir / name, "wb"))  # noqa: SIM115 - closed by close()
        self.add(Event(file_version="brain.Event:2", source_metadata=SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")))
        if purge_step is not None:
            self.purge_from(purge_step)  # what earlier files of this dir hold at or after purge_step
        self.flush()

    def add(self, event: Event) -> None:
        event.wall_time = time.time()
        self.records.write(event.SerializeToString())

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Each tag's scalar at this step, in one event: an event kept for these tags, its step and values set (half
        the time of building one: a 1,024-λ sweep writes 102,400 of them)."""
        tags = tuple(values)
        event = self.scalar_events.get(tags)
        if event is None:
            event = self.scalar_events[tags] = Event(summary=Summary(value=[Summary.Value(tag=tag) for tag in tags]))
        event.step = step
        for value, v in zip(event.summary.value, values.values(), strict=True):
            value.simple_value = v
        self.add(event)

    def purge_from(self, step: int) -> None:
        """TensorBoard hides the events at or after ``step`` written before this marker (in this file or earlier ones)."""
        self.add(Event(step=step, file_version="brain.Event:2"))
        self.add(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def flush(self) -> None:
        self.records.flush()

    def close(self) -> None:
        self.records.close()


def _hparam_value(node: Any) -> HParam | None:
    """A config value as TensorBoard stores it: a group by its preset's ``name``, an enum by its value."""
    if isinstance(node, (DictConfig, dict)):
        node = node.get("name")
    if isinstance(node, Enum):
        node = node.value
    if node is None or isinstance(node, HParam):
        return node
    return str(node)  # lists and the like: the HParams tab compares them as strings


def saved_hydra_config(job_dir: Path) -> DictConfig | None:
    """The ``hydra`` node that Hydra saved into the job's .hydra/hydra.yaml, if it did."""
    path = Path(job_dir) / ".hydra" / "hydra.yaml"
    return OmegaConf.load(path).hydra if path.exists() else None


# ``dotted.key=number``, the line of most of a large sweep's jobs (reg.lambd=0.00123), in the subset of Hydra's
# grammar (OverrideLexer.g4: INT, FLOAT) that needs no parser: no underscores, no inf/nan, no leading zeros.
_PLAIN_NUMBER = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)="
    r"(?:(?P<int>[+-]?(?:0|[1-9][0-9]*))|(?P<float>[+-]?(?:(?:0|[1-9][0-9]*)?\.[0-9]+|(?:0|[1-9][0-9]*)\.?)(?:[eE][+-]?[0-9]+)?))"
)


@functools.lru_cache(maxsize=65536)
def parse_override(line: str) -> Override:
    """Hydra's parse of one override line, by one parser built once, once per distinct line (a sweep's jobs
    share most of theirs; building the parser takes longer than parsing a job's overrides). A key set to a
    number is built as Hydra's visitor builds it, without the parser: each of a 1,024-λ sweep's lines is
    distinct, and parsing one took milliseconds."""
    match = _PLAIN_NUMBER.fullmatch(line)
    if match is None:
        return _overrides_parser().parse_overrides([line])[0]
    value = int(match["int"]) if match["int"] is not None else float(match["float"])
    return Override(OverrideType.CHANGE, match["key"], ValueType.ELEMENT, value, input_line=line)


@functools.cache
def _overrides_parser() -> OverridesParser:
    return OverridesParser.create()


def run_hparams(cfg: DictConfig, hydra: DictConfig | None = None) -> dict[str, HParam]:
    """This job's hyperparameters, flattened: the swept (overridden) keys plus HPARAM_KEYS.

    ``hydra`` is the job's hydra config (default: HydraConfig's, inside a Hydra job). A key from the
    command line that is not in the config (``+experiment=weight_decay``) keeps its override's value.
    Keys that ``override_dirname`` leaves out (device, data.root, ...) stay out here too.
    """
    if hydra is None and HydraConfig.initialized():
        hydra = HydraConfig.get()
    if hydra is None:
        return hparams_of(cfg, [], set())
    return hparams_of(cfg, hydra.overrides.task, set(hydra.job.config.override_dirname.exclude_keys))


def hparams_of(cfg: DictConfig | dict, overrides: Iterable[str], excluded: set[str]) -> dict[str, HParam]:
    """``run_hparams`` from the job's task overrides and override_dirname's exclude_keys; ``cfg`` may be the job's
    values as plain data (resolved, enums kept), which the vectorized launcher has for each job."""

    def select(key: str) -> Any:
        if isinstance(cfg, DictConfig):
            return OmegaConf.select(cfg, key, default=None)
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    values = {key: _hparam_value(select(key)) for key in HPARAM_KEYS}
    for override in map(parse_override, overrides):
        key = override.key_or_group
        if key in excluded or override.is_delete():
            continue
        value = _hparam_value(select(key))
        values[key] = value if value is not None else override.get_value_element_as_str()
    return {key: value for key, value in values.items() if value is not None}


def _session_end(status: str) -> Summary:
    """The HParams session-end summary with the run's status (torch's ``hparams`` always says success)."""
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)), version=hp_metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=hp_metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=hp_metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))])


@dataclass
class JobLog:
    """Where Hydra's job logging writes a job's log (``<job name>.log`` in its dir, by default), and its format."""

    path: Path
    formatter: logging.Formatter
    lines: list[tuple[float, str, tuple]] = field(default_factory=list)  # (time, msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append((time.time(), msg, args))

    def write(self) -> None:
        """All the lines at once (a logging.FileHandler would flush after each), each formatted from one LogRecord
        given its time, message and arguments: making a record per line (the process, the thread, ...) took a
        third of logging a vectorized sweep's evaluations."""
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "", (), None)
        with open(self.path, "a", encoding="utf-8") as f:
            for created, record.msg, record.args in self.lines:
                record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0  # as LogRecord sets them
                record.relativeCreated = (created - logging._startTime) * 1000
                f.write(self.formatter.format(record) + "\n")


def job_log(hydra: DictConfig | None) -> JobLog | None:
    """The log file that ``hydra.job_logging`` gives a job (its ``logging.FileHandler``'s file and formatter),
    for a job whose lines don't pass through Hydra's logging: a member of a vectorized group. None when the
    job logging writes no file (``hydra/job_logging=disabled``, say), as then a job run alone gets none."""
    handler = _file_handler(hydra)
    return JobLog(Path(handler[1].filename), handler[2]) if handler is not None else None


def job_log_template(hydra: DictConfig | None) -> tuple[Any, logging.Formatter] | None:
    """``job_log``'s file name as the config holds it (interpolations unresolved: ``${hydra.runtime.output_dir}/...``)
    and its formatter, or None."""
    handler = _file_handler(hydra)
    return (handler[1]._get_node("filename")._value(), handler[2]) if handler is not None else None


def _file_handler(hydra: DictConfig | None) -> tuple[str, DictConfig, logging.Formatter] | None:
    """The job logging's first ``logging.FileHandler``: its name, its config, and its formatter."""
    config = hydra.get("job_logging") if hydra is not None else None
    for name, handler in (config.get("handlers") or {}).items() if config else ():
        if handler.get("class") == "logging.FileHandler":
            fmt = config.get("formatters", {}).get(handler.get("formatter"), {})
            return name, handler, SecondCachedFormatter(fmt.get("format"), fmt.get("datefmt"))
    return None


class SecondCachedFormatter(logging.Formatter):
    """logging.Formatter, with the time's text made once a second: a line took 1.95 µs, 1.27 µs with the cache (strftime
    is the difference), and a vectorized group writes its members' lines of the same seconds (102,400 for 1,024)."""

    _second: int | None = None
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(datefmt or self.default_time_format, self.converter(record.created))
        if datefmt or not self.default_msec_format:
            return self._text
        return self.default_msec_format % (self._text, record.msecs)


def job_logs(hydras: list[DictConfig | None]) -> list[JobLog | None]:
    """``job_log`` of each job of a group: looked up in full for the first, then, for jobs whose file handler sits
    where the first's does, only its file name (the rest is the sweep's: looking up each job's took 0.5 ms)."""
    first = _file_handler(hydras[0])
    if first is None:
        return [job_log(hydra) for hydra in hydras]
    logs: list[JobLog | None] = []
    for hydra in hydras:
        handler = OmegaConf.select(hydra, f"job_logging.handlers.{first[0]}", default=None)
        same = handler is not None and handler.get("class") == "logging.FileHandler"
        logs.append(JobLog(Path(handler.filename), first[2]) if same else job_log(hydra))
    return logs


class RunLogger:
    """TensorBoard event files in the job dir, plus one console line per evaluation (unless ``console=False``),
    or one line in ``job_log``, written at ``close``.

    The run is also one HParams session: ``log_hparams`` at the start, the session's end (with its
    status) at ``close``. Its metrics are the run's own scalars, so the HParams tab shows their
    last values: the final train/test loss, accuracy and ‖w‖.
    """

    def __init__(
        self, log_dir: Path, epochs: int, console: bool = True, purge_step: int | None = None, job_log: JobLog | None = None
    ) -> None:
        # purge_step: TensorBoard hides events at or after this step written before (by a run that died).
        self.writer = EventFile(Path(log_dir), purge_step)
        self.epochs = epochs
        self.console = console
        self.job_log = job_log

    def log_eval(self, epoch: int, metrics: dict[str, float | None]) -> None:
        values = {tag: metrics[key] for key, tag in TAGS.items() if metrics.get(key) is not None and math.isfinite(metrics[key])}
        self.writer.add_scalars(values, epoch)
        line = ("epoch %*d/%d  %s", len(str(self.epochs)), epoch, self.epochs, format_metrics(metrics))
        if self.console:
            log.info(*line)
        if self.job_log is not None:
            self.job_log.info(*line)

    def flush(self) -> None:
        self.writer.flush()

    def purge_from(self, epoch: int) -> None:
        """TensorBoard hides what this run logged at or after ``epoch`` (past the checkpoint it stopped at)."""
        self.writer.purge_from(epoch)
        self.writer.flush()

    def log_result(self, result: dict) -> None:
        """The run's flag as a scalar at its last epoch, so the HParams tab can sort and filter by it: ``run/unstable``
        (1: the train loss spiked, ``results.first_spike``). Only for a run that is over: an interrupted one's
        resumed run writes it."""
        if result["status"] in ("completed", "diverged") and result.get("unstable") is not None:
            self.writer.add_scalars({"run/unstable": float(result["unstable"])}, result["epochs"])

    def log_hparams(self, hparams: dict[str, HParam]) -> None:
        """Write the session-start summary into this run's own event file, as Lightning's TensorBoardLogger does.

        No experiment summary: TensorBoard then builds the experiment from every run's session start,
        so a sweep whose jobs have different keys shows all of them (with one experiment summary
        per run it would pick one run's keys for all).
        """
        _, session_start, _ = hparams_summaries(hparams, {})
        self.writer.add(Event(summary=session_start))

    def close(self, status: str | None = None) -> None:
        """Flush and close; with a final metrics.json status, first end the HParams session with it."""
        if status in SESSION_STATUS:
            self.writer.add(Event(summary=_session_end(SESSION_STATUS[status])))
        self.writer.close()
        if self.job_log is not None:
            if status is not None:
                self.job_log.info("%s", status)
            self.job_log.write()
