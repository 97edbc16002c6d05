"""What a run's result holds besides its history: the last evaluation's metrics, the best epoch's, and whether
its training loss spiked (an unstable run)."""

from __future__ import annotations

import math

FINAL_KEYS = ("train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm", "sparsity")
# A spike: an evaluated train loss above SPIKE_FACTOR × the lowest train loss of the evaluations before it, by
# more than SPIKE_FLOOR × the first evaluation's (a loss that has fallen near zero may wiggle by its own size).
SPIKE_FACTOR = 2.0
SPIKE_FLOOR = 0.01


def final_metrics(history: list[dict]) -> dict[str, float | None]:
    """The last evaluation's metrics (None where the run never evaluated), and ``acc_gap``, the generalization
    gap train_acc − test_acc (None for regression): how far the run overfits."""
    final = history[-1] if history else {}
    metrics = {key: final.get(key) for key in FINAL_KEYS}
    accs = metrics["train_acc"], metrics["test_acc"]
    return metrics | {"acc_gap": accs[0] - accs[1] if None not in accs else None}


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


def first_spike(history: list[dict]) -> int | None:
    """The first evaluated epoch t whose train loss L_t exceeds SPIKE_FACTOR · m_t, m_t = min_{s<t} L_s, with
    L_t − m_t > SPIKE_FLOOR · L_1 (L_1: the first evaluation's); None when there is none.

    The train loss is the full training set's, in eval mode: it moves with the weights, not with the batches' noise.
    A non-finite loss is a divergence (status diverged), not a spike."""
    finite = [h for h in history if _finite(h.get("train_loss"))]
    lowest = math.inf
    for h in finite:
        loss = h["train_loss"]
        if loss > SPIKE_FACTOR * lowest and loss - lowest > SPIKE_FLOOR * finite[0]["train_loss"]:
            return h["epoch"]
        lowest = min(lowest, loss)
    return None


def stability(history: list[dict]) -> dict[str, bool | int | None]:
    """``unstable``: whether the train loss spiked (``first_spike``; None with fewer than two evaluations to tell),
    and ``spike_epoch``: where it first did."""
    epoch = first_spike(history)
    evaluated = sum(_finite(h.get("train_loss")) for h in history)
    return {"unstable": epoch is not None if evaluated > 1 else None, "spike_epoch": epoch}


def run_result(history: list[dict]) -> dict:
    """The metrics.json fields drawn from the history: the last evaluation's metrics, the best epoch's, and whether
    the train loss spiked."""
    return final_metrics(history) | best_metrics(history) | stability(history)
