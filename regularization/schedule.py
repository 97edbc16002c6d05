"""Learning-rate schedules (``optim.schedule``, ``optim.warmup_epochs``): one formula for both launchers.

The learning rate in epoch e + 1 (e = 0, 1, …: the epochs completed) is lr·f(e), with W = warmup_epochs,
T = epochs − W and e' = e − W:

    f(e) = (e + 1)/(W + 1)                  for e < W   (linear warmup: torch's LinearLR, start_factor 1/(W+1))
    f(e) = 1                                schedule=none
    f(e) = gamma^⌊e'/step_size⌋             schedule=step   (StepLR)
    f(e) = (1 + cos(π·e'/T))/2              schedule=cosine (CosineAnnealingLR, T_max = T, eta_min = 0)

``engine.fit`` steps a ``torch.optim.lr_scheduler.LambdaLR`` with f once per epoch (its state goes into the
checkpoint); the vectorized launcher sets lr_k·f(e) for every member k at the start of each epoch.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from omegaconf import DictConfig

from regularization.config import Schedule


def lr_factor(e: int, schedule: Schedule, warmup: int, epochs: int, step_size: int, gamma: float) -> float:
    """f(e): the factor on the learning rate in epoch e + 1 (see the module's docstring)."""
    if e < warmup:
        return (e + 1) / (warmup + 1)
    e -= warmup
    if schedule is Schedule.step:
        return gamma ** (e // step_size)
    if schedule is Schedule.cosine:
        return (1 + math.cos(math.pi * e / (epochs - warmup))) / 2
    return 1.0


def factor_of(cfg: DictConfig) -> partial[float]:
    """The job's f: e ↦ lr_factor(e, …) with its optim keys and trainer.epochs."""
    optim = cfg.optim
    return partial(
        lr_factor,
        schedule=optim.schedule,
        warmup=optim.warmup_epochs,
        epochs=cfg.trainer.epochs,
        step_size=optim.step_size,
        gamma=optim.gamma,
    )


def make_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR with the job's f, for engine.fit (which calls ``step()`` after every epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_of(cfg))
