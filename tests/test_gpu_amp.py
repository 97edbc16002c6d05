"""16-mixed's loss scaling with the steps it skips (issue 21, item 6). 16-mixed needs CUDA, so its GradScaler is
replaced by a fake with the interface Step uses, which skips (an overflow) or takes every step."""

from __future__ import annotations

import torch

from regularization.data import load_data
from regularization.engine import make_optimizer, make_penalty, make_step, train_epoch
from regularization.models import build_model

CPU = torch.device("cpu")


class FakeScaler:
    """torch.amp.GradScaler as Step calls it, with a scale of 1: ``skip`` makes every step find an inf gradient,
    so the optimizer does not step (as GradScaler.step does then)."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.found_inf = skip, {}

    def scale(self, objective: torch.Tensor) -> torch.Tensor:
        return objective

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.found_inf = {"cuda:0": torch.tensor(1.0 if self.skip else 0.0)}
        if not self.skip:
            optimizer.step()

    def _found_inf_per_device(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        return self.found_inf

    def update(self) -> None:
        self.found_inf = {}  # as GradScaler.update resets its per-optimizer state


def proximal_epoch(make_cfg, skip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = make_cfg("reg=l1", "reg.lambd=5", "reg.impl=proximal", "optim.lr=0.01")
    data = load_data(cfg, CPU)
    model = build_model(cfg, data.num_inputs, data.num_outputs)
    penalty, before = make_penalty(cfg, model), model.weight.detach().clone()
    step = make_step(cfg, model, data)
    step.scaler = FakeScaler(skip)
    train_epoch(model, data, make_optimizer(cfg, model, penalty), penalty, 5, torch.Generator().manual_seed(0), step=step)
    return before, model.weight.detach()


def test_proximal_l1_does_not_shrink_after_a_step_the_scaler_skipped(make_cfg):
    before, after = proximal_epoch(make_cfg, skip=True)
    assert torch.equal(after, before)


def test_proximal_l1_shrinks_after_a_step_the_scaler_took(make_cfg):
    before, after = proximal_epoch(make_cfg, skip=False)
    assert after.abs().sum() < before.abs().sum() and (after == 0).any()  # the shrinkage, its exact zeros
