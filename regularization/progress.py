"""tqdm progress bars on stderr: one per run over epochs, and one over batches when an epoch is slow; for a
vectorized group, where it stands in the sweep (group k of N, seconds per epoch, ETAs), as a bar and as log lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("regularization")
clock = time.perf_counter  # GroupProgress's pace (a name of this module's own: tests replace it, not tqdm's clock)

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


@dataclass(frozen=True)
class SweepPosition:
    """Where a vectorized group stands in its sweep: group ``group`` (from 1) of ``groups``, and the epochs of the
    groups that train after it on its device (one after another there; groups on other GPUs train alongside)."""

    group: int = 1
    groups: int = 1
    later_epochs: int = 0


SINGLE_GROUP = SweepPosition()  # a group trained on its own


def duration(seconds: float) -> str:
    """``[h:]mm:ss``, as tqdm writes its ETA."""
    return tqdm.format_interval(seconds)


class GroupProgress:
    """A group's progress over its epochs: one log line per epoch (group k of N, s/epoch, the ETA of the group and
    of the sweep), and with ``enabled`` a tqdm bar that shows the same. The sweep's ETA is an estimate: the later
    groups are assumed to train at this group's seconds per epoch."""

    def __init__(self, position: SweepPosition, epochs: int, enabled: bool, done: int = 0) -> None:
        """``done``: epochs already trained (a resumed group); the pace is measured on the epochs trained here."""
        self.position, self.epochs, self.first = position, epochs, done
        self.start = clock()
        desc = f"group {position.group}/{position.groups}"
        self.bar = tqdm(total=epochs, initial=done, desc=desc, unit="epoch", file=sys.stderr, dynamic_ncols=True, disable=not enabled)

    def estimate(self, epoch: int) -> tuple[float, float, float]:
        """Seconds per epoch so far, and the seconds left for the group and for the sweep, after ``epoch``."""
        per_epoch = (clock() - self.start) / max(1, epoch - self.first)
        group_left = per_epoch * (self.epochs - epoch)
        return per_epoch, group_left, group_left + per_epoch * self.position.later_epochs

    def epoch_done(self, epoch: int, detail: str) -> None:
        """Log the epoch's line (``detail``: what the group's members did) and advance the bar."""
        per_epoch, group_left, sweep_left = self.estimate(epoch)
        p = self.position
        log.info(
            "group %d of %d, epoch %d/%d (%.3g s/epoch; ETA group %s, sweep ~%s): %s",
            *(p.group, p.groups, epoch, self.epochs, per_epoch, duration(group_left), duration(sweep_left), detail),
        )
        self.bar.set_postfix_str(f"sweep ~{duration(sweep_left)}", refresh=False)
        self.bar.update(epoch - self.bar.n)

    def __enter__(self) -> GroupProgress:
        """Console logging goes through tqdm.write while the bar is up, so log lines don't tear it."""
        self.redirect = logging_redirect_tqdm() if not self.bar.disable else contextlib.nullcontext()
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.redirect.__exit__(*exc)
