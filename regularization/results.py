"""What a run's result holds besides its history: the last evaluation's metrics, the best epoch's, and whether
training had settled by the end of its budget."""

from __future__ import annotations

import math

FINAL_KEYS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm", "sparsity")
# Not converged: the train loss still moved by more than this fraction over the last tenth of the epochs.
CONVERGENCE_TOL = 0.01
CONVERGENCE_WINDOW = 0.1


def final_metrics(history: list[dict]) -> dict[str, float | None]:
    """The last evaluation's metrics (None where the run never evaluated)."""
    final = history[-1] if history else {}
    return {key: final.get(key) for key in FINAL_KEYS}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def best_metrics(history: list[dict]) -> dict[str, float | int | None]:
    """The best evaluation by each test metric: ``best_test_loss`` (lowest) at ``best_test_loss_epoch``, and
    ``best_test_acc`` (highest) at ``best_test_acc_epoch`` for classification (None for regression)."""
    best: dict[str, float | int | None] = {}
    for key, pick in (("test_loss", min), ("test_acc", max)):
        evaluated = [h for h in history if _finite(h.get(key))]
        top = pick(evaluated, key=lambda h: h[key]) if evaluated else None  # noqa: B023 - used at once
        best[f"best_{key}"] = top[key] if top else None
        best[f"best_{key}_epoch"] = top["epoch"] if top else None
    return best


def train_loss_change(history: list[dict], epochs: int) -> float | None:
    """Relative change of the train loss over the last CONVERGENCE_WINDOW of the epochs (at least the last two
    evaluations): (L_end − L_start) / L_start; None with fewer than two evaluations."""
    points = [h for h in history if _finite(h.get("train_loss"))]
    if len(points) < 2:
        return None
    end = points[-1]
    window_start = end["epoch"] - max(1, math.ceil(CONVERGENCE_WINDOW * epochs))
    start = next((h for h in points if h["epoch"] >= window_start), points[-2])
    start = start if start is not end else points[-2]
    if start["train_loss"] == 0:
        return 0.0 if end["train_loss"] == 0 else math.inf
    return (end["train_loss"] - start["train_loss"]) / start["train_loss"]


def converged(history: list[dict], epochs: int) -> bool | None:
    """Whether the train loss had settled: |train_loss_change| ≤ CONVERGENCE_TOL. None when it cannot be told."""
    change = train_loss_change(history, epochs)
    return None if change is None else abs(change) <= CONVERGENCE_TOL


def run_result(history: list[dict]) -> dict:
    """The metrics.json fields drawn from the history: the last evaluation's metrics and the best epoch's."""
    return final_metrics(history) | best_metrics(history)
