"""Selection on the validation split (``data.val_size``) and early stopping (``trainer.early_stopping``).

The best epoch is the evaluation with the best ``trainer.early_stopping.metric`` (val_loss, lowest; or val_acc,
highest; the earliest of ties), never one chosen on the test set. metrics.json then reports the test metrics at
that epoch (``test_loss_at_best_val``, ``test_acc_at_best_val``). With early stopping, a job stops after
``patience`` evaluations in a row without a strictly better value, and its weights and final metrics are those
of the best epoch. Both launchers use ``EarlyStopping`` and ``selection_result``, once per job or member.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from omegaconf import DictConfig

from regularization.results import FINAL_KEYS

HIGHER_IS_BETTER = {"val_loss": False, "val_acc": True}
VAL_KEYS = ("val_loss", "val_acc")


def _better(value: float, best: float | None, metric: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if HIGHER_IS_BETTER[metric] else value < best)


@dataclass
class EarlyStopping:
    """One job's bookkeeping: the best value so far, its epoch, the evaluations since, and where it stopped."""

    metric: str
    patience: int
    best: float | None = None
    best_epoch: int | None = None
    waited: int = 0  # evaluations since the best one
    stopped_epoch: int | None = None

    @classmethod
    def of(cls, cfg: DictConfig) -> EarlyStopping | None:
        """The job's early stopping, or None when it is off (patience null or 0)."""
        stopping = cfg.trainer.early_stopping
        return cls(stopping.metric, stopping.patience) if stopping.patience else None

    def update(self, epoch: int, metrics: dict) -> bool:
        """Record an evaluation; returns whether it is the new best (its weights are then the ones to keep).
        The patience-th evaluation in a row without one sets ``stopped_epoch``."""
        value = metrics.get(self.metric)
        if value is not None and _better(value, self.best, self.metric):
            self.best, self.best_epoch, self.waited = value, epoch, 0
            return True
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_epoch = epoch
        return False

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def best_by_validation(history: list[dict], metric: str) -> dict | None:
    """The evaluation with the best validation metric (the earliest of ties), or None when none is finite."""
    best = None
    for h in history:
        value = h.get(metric)
        if value is not None and _better(value, None if best is None else best[metric], metric):
            best = h
    return best


def selection_result(history: list[dict], cfg: DictConfig, stopper: EarlyStopping | None, completed: bool) -> dict:
    """metrics.json's validation fields (none without data.val_size): the last evaluation's val_loss/val_acc,
    ``best_epoch`` by validation and the metrics there (``best_val_*``, ``test_*_at_best_val``); with early
    stopping ``stopped_epoch`` (None: it trained its whole budget) and, for a completed job, whose best weights
    were kept, the final metrics of the best epoch."""
    if not cfg.data.val_size:
        return {}
    last = history[-1] if history else {}
    best = best_by_validation(history, cfg.trainer.early_stopping.metric) or {}
    result = {key: last.get(key) for key in VAL_KEYS}
    result |= {"best_epoch": best.get("epoch"), "best_val_loss": best.get("val_loss"), "best_val_acc": best.get("val_acc")}
    result |= {"test_loss_at_best_val": best.get("test_loss"), "test_acc_at_best_val": best.get("test_acc")}
    if stopper is not None:
        result["stopped_epoch"] = stopper.stopped_epoch
        if completed and best:
            result |= {key: best.get(key) for key in (*FINAL_KEYS, *VAL_KEYS)}
    return result
