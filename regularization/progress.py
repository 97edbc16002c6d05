"""tqdm progress bars on stderr: one per run over epochs, and one over batches when an epoch is slow."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# An epoch's batch bar shows up only once the epoch has taken this long; fast epochs never draw it.
BATCH_BAR_DELAY_S = 1.5


def progress_enabled(requested: bool) -> bool:
    """Bars only when asked for (trainer.progress) and stderr is a terminal: logs and CI output stay clean."""
    return requested and sys.stderr.isatty()


class Progress:
    """The run's bars. Disabled, every method is a pass-through that costs nothing per batch."""

    def __init__(self, epochs: int, enabled: bool, done: int = 0, desc: str = "train") -> None:
        """``done``: epochs already trained (a resumed run)."""
        self.enabled = enabled
        self.bar = tqdm(total=epochs, initial=done, desc=desc, unit="epoch", file=sys.stderr, dynamic_ncols=True, disable=not enabled)

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """Route console logging through tqdm.write while the bar is up, so log lines don't tear it."""
        with logging_redirect_tqdm() if self.enabled else contextlib.nullcontext():
            try:
                yield self
            finally:
                self.bar.close()

    def batches(self, indices: Iterable, total: int) -> Iterable:
        """A nested bar over the epoch's batches that appears after BATCH_BAR_DELAY_S and vanishes at the end."""
        if not self.enabled:
            return indices
        return tqdm(indices, total=total, desc="batches", unit="batch", leave=False, file=sys.stderr, delay=BATCH_BAR_DELAY_S)

    def epoch_done(self, metrics: dict[str, float | None] | None) -> None:
        """Advance one epoch; after an evaluation, show its losses (already on the host: no extra sync)."""
        if metrics is not None:
            shown = {k: metrics.get(k) for k in ("train_loss", "test_loss", "test_acc")}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
        self.bar.update()
