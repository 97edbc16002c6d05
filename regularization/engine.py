"""Training and evaluation: fit a model to a Dataset, evaluate in eval mode, write the results."""

from __future__ import annotations

import math
import random
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from regularization.config import impl_of, resolve_device, validate
from regularization.data import Dataset, check_data, load_data, minibatches
from regularization.logging import RunLogger, log, write_json_atomic
from regularization.models import build_model, penalized_params
from regularization.regularizers import WeightPenalty, max_norm_linear_, sparsity, weight_norm

EVAL_BATCH = 8192


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over examples of (ŷ − y)²/2, the chapter's squared loss."""
    return (y_hat - y.reshape(y_hat.shape)).pow(2).mean() / 2


def loss_fn(data: Dataset):
    return F.cross_entropy if data.is_classification else squared_loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: DictConfig, model: nn.Module, penalty: WeightPenalty) -> torch.optim.Optimizer:
    groups = penalty.param_groups(list(model.parameters()))
    if cfg.optim.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.optim.lr)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.get("momentum", 0.0), nesterov=cfg.optim.get("nesterov", False))


def make_penalty(cfg: DictConfig, model: nn.Module) -> WeightPenalty:
    reg = cfg.reg
    return WeightPenalty(reg.penalty.value, reg.lambd, impl_of(reg), penalized_params(model, reg.penalize_bias))


def train_epoch(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    penalty: WeightPenalty,
    batch_size: int,
    generator: torch.Generator,
    max_norm: float | None = None,
) -> torch.Tensor:
    """One shuffled pass over the training set; returns the mean objective (loss + λ·Ω) on the device.

    With ``max_norm`` = c, every step ends by projecting each unit's incoming weights onto ‖w_j‖₂ ≤ c.
    """
    model.train()
    loss = loss_fn(data)
    lr = optimizer.param_groups[0]["lr"]
    total = torch.zeros((), device=data.X_train.device)
    for idx in minibatches(len(data.X_train), batch_size, generator):
        data_loss = loss(model(data.X_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        (data_loss + penalty.loss_term()).backward()
        optimizer.step()
        penalty.after_step(lr)
        if max_norm is not None:
            max_norm_linear_(model, max_norm)
        with torch.no_grad():
            total += (data_loss + penalty.value()) * len(idx)
    return total / len(data.X_train)


@torch.inference_mode()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, classification: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean loss (and accuracy) over the whole set, in eval mode, summed on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=X.device)
    correct = torch.zeros((), device=X.device)
    for start in range(0, len(X), EVAL_BATCH):
        y_hat, target = model(X[start : start + EVAL_BATCH]), y[start : start + EVAL_BATCH]
        if classification:
            loss_sum += F.cross_entropy(y_hat, target, reduction="sum")
            correct += (y_hat.argmax(dim=1) == target).sum()
        else:
            loss_sum += squared_loss(y_hat, target) * len(target)
    n = len(X)
    return loss_sum / n, (correct / n if classification else None)


def evaluate_all(model: nn.Module, data: Dataset, penalty: WeightPenalty, objective: torch.Tensor) -> dict[str, float | None]:
    """Full-set train and test metrics and the weights' norm, read from the device in one transfer."""
    cls = data.is_classification
    train_loss, train_acc = evaluate(model, data.X_train, data.y_train, cls)
    test_loss, test_acc = evaluate(model, data.X_test, data.y_test, cls)
    values = {"train_loss": train_loss, "test_loss": test_loss, "objective": objective, "weight_l2_norm": weight_norm(penalty.params)}
    if cls:
        values |= {"train_acc": train_acc, "test_acc": test_acc}
    if penalty.kind == "l1":
        values["sparsity"] = sparsity(penalty.params)
    host = torch.stack([v.float().to(objective.device) for v in values.values()]).tolist()
    metrics: dict[str, float | None] = {"train_acc": None, "test_acc": None}
    metrics |= dict(zip(values, host, strict=True))
    return metrics


def fit(cfg: DictConfig, data: Dataset, model: nn.Module, logger: RunLogger) -> dict:
    """Train for cfg.trainer.epochs; evaluate every eval_every epochs and at the end.

    Stops at the first epoch whose objective is not finite, with status ``diverged``.
    """
    penalty = make_penalty(cfg, model)
    optimizer = make_optimizer(cfg, model, penalty)
    generator = torch.Generator(device=data.X_train.device).manual_seed(cfg.seed)
    epochs, every = cfg.trainer.epochs, cfg.trainer.eval_every
    history: list[dict] = []
    result: dict = {"status": "completed", "epochs": epochs}
    for epoch in range(1, epochs + 1):
        objective = train_epoch(model, data, optimizer, penalty, cfg.data.batch_size, generator, cfg.reg.max_norm)
        if not math.isfinite(objective.item()):
            log.warning("epoch %d: the training objective is not finite; stopping (status diverged)", epoch)
            result |= {"status": "diverged", "epochs": epoch}
            break
        if epoch % every == 0 or epoch == epochs:
            metrics = evaluate_all(model, data, penalty, objective)
            logger.log_eval(epoch, metrics)
            history.append({"epoch": epoch, **metrics})
    final = history[-1] if history else {}
    result |= {k: final.get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_l2_norm")}
    if penalty.kind == "l1":
        result["sparsity"] = final.get("sparsity")
    result["history"] = history
    return result


def preflight(cfg: DictConfig) -> torch.device:
    """Everything checked before training: the config's values, the device and the data."""
    validate(cfg)
    device = resolve_device(cfg.device)
    check_data(cfg)
    return device


def run(cfg: DictConfig) -> float:
    """Check, train and write one Hydra job's results; returns the final test loss (NaN if none).

    A job that raises writes status ``failed`` and its traceback into its dir. In a multirun it then
    returns NaN so that the other jobs go on (the sweep summary reports it and the sweep exits non-zero).
    """
    device = preflight(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train(cfg, device, out_dir)
    except Exception:
        (out_dir / "traceback.txt").write_text(traceback.format_exc())
        write_json_atomic(out_dir / "metrics.json", {"status": "failed", "error": traceback.format_exc(limit=0).strip()})
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed; traceback in %s", out_dir / "traceback.txt")
        return math.nan


def train(cfg: DictConfig, device: torch.device, out_dir: Path) -> float:
    """Train one job into out_dir (event files, metrics.json); returns the final test loss."""
    seed_everything(cfg.seed)
    data = load_data(cfg, device)
    model = build_model(cfg, data.num_inputs, data.num_outputs).to(device)
    logger = RunLogger(out_dir, cfg.trainer.epochs)
    start = time.perf_counter()
    try:
        result = fit(cfg, data, model, logger)
    finally:
        logger.close()
    result["wall_s"] = time.perf_counter() - start
    path = out_dir / "metrics.json"
    write_json_atomic(path, result)
    log.info("%s: %s", result["status"], path)
    test_loss = result.get("test_loss")
    return test_loss if test_loss is not None else math.nan
