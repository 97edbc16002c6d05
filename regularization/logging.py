"""Where a run's numbers go: TensorBoard scalars, the console, and metrics.json."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

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


class RunLogger:
    """TensorBoard event files in the job dir, plus one console line per evaluation (unless ``console=False``)."""

    def __init__(self, log_dir: Path, epochs: int, console: bool = True, purge_step: int | None = None) -> None:
        # purge_step: TensorBoard hides events at or after this step written before (by a run that died).
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
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
        self.writer.flush()
        self.writer.close()
