"""Where a run's numbers go: TensorBoard scalars, the console, and metrics.json."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import scalar

log = logging.getLogger("regularization")

# Final metric -> TensorBoard tag. The train/test losses are full-dataset evaluations in eval mode;
# loss/objective is the running training objective (mean over the epoch's batches, penalty included).
TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "objective": "loss/objective",
    "train_acc": "acc/train",
    "test_acc": "acc/test",
    "weight_l2_norm": "weights/l2_norm",
    "sparsity": "weights/sparsity",
}


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old one or the new one, never a torn one:
    a temp file in the same dir, fsync, rename."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)  # NamedTemporaryFile makes it 0600; results are meant to be shared
    os.replace(f.name, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def format_metrics(metrics: dict[str, float | None]) -> str:
    names = {
        "train_loss": "train_loss",
        "test_loss": "test_loss",
        "train_acc": "train_acc",
        "test_acc": "test_acc",
        "weight_l2_norm": "|w|",
        "sparsity": "sparsity",
    }
    return "  ".join(f"{label} {metrics[key]:.4g}" for key, label in names.items() if metrics.get(key) is not None)


_file_ids = itertools.count()


class EventFile:
    """One TensorBoard event file, with the records torch's ``SummaryWriter(log_dir, purge_step=...)`` writes
    (its name, the file-version event, the purge marker, ``add_scalar``'s summaries), written in this thread.

    SummaryWriter hands every record to a writer thread and joins it on each flush and close; with one
    writer per job and a flush per epoch that handoff costs more than the writing (a sweep of 64 jobs
    keeps 64 such threads). The records go through tensorboard's own RecordWriter (length, CRCs).
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}"
        self.records = RecordWriter(open(log_dir / name, "wb"))  # noqa: SIM115 - closed by close()
        self.add(Event(file_version="brain.Event:2", source_metadata=SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")))
        if purge_step is not None:
            # TensorBoard hides the events at or after purge_step that earlier files of this dir hold.
            self.add(Event(step=purge_step, file_version="brain.Event:2"))
            self.add(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def add(self, event: Event) -> None:
        event.wall_time = time.time()
        self.records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add(Event(step=step, summary=scalar(tag, value)))

    def flush(self) -> None:
        self.records.flush()

    def close(self) -> None:
        self.records.close()


class RunLogger:
    """TensorBoard event files in the job dir, plus one console line per evaluation (unless ``console=False``)."""

    def __init__(self, log_dir: Path, epochs: int, console: bool = True, purge_step: int | None = None) -> None:
        # purge_step: TensorBoard hides events at or after this step written before (by a run that died).
        self.writer = EventFile(Path(log_dir), purge_step)
        self.epochs = epochs
        self.console = console

    def log_eval(self, epoch: int, metrics: dict[str, float | None]) -> None:
        for key, tag in TAGS.items():
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, epoch)
        if self.console:
            log.info("epoch %*d/%d  %s", len(str(self.epochs)), epoch, self.epochs, format_metrics(metrics))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
