"""Training math in-process: λ means the same in both l2 implementations, proximal l1 gives zeros, eval mode."""

import json
import math
from pathlib import Path

import pytest
import torch

from regularization.data import load_data
from regularization.engine import evaluate, fit, preflight, seed_everything
from regularization.logging import RunLogger
from regularization.models import build_model, penalized_params


def train_model(cfg, out_dir):
    """fit() on the configured data and model, as engine.train does; returns (model, result)."""
    device = preflight(cfg)
    seed_everything(cfg.seed)
    data = load_data(cfg, device)
    model = build_model(cfg, data.num_inputs, data.num_outputs)
    logger = RunLogger(out_dir, cfg.trainer.epochs)
    try:
        return model, fit(cfg, data, model, logger), data
    finally:
        logger.close()


def test_l2_penalty_equals_weight_decay_under_sgd(make_cfg, tmp_path):
    """The same seed gives the same weights whether λ/2‖w‖² is in the loss or in SGD's weight_decay."""
    common = ["reg.lambd=3", "trainer.epochs=20", "seed=4"]
    by_loss, _, _ = train_model(make_cfg(*common, "reg.impl=penalty"), tmp_path / "a")
    by_decay, _, _ = train_model(make_cfg(*common, "reg.impl=weight_decay"), tmp_path / "b")
    assert torch.allclose(by_loss.weight, by_decay.weight, rtol=1e-5, atol=1e-6)
    assert torch.allclose(by_loss.bias, by_decay.bias, rtol=1e-5, atol=1e-6)  # the bias is not decayed in either


def test_penalize_bias_changes_only_the_bias_treatment(make_cfg, tmp_path):
    plain, _, _ = train_model(make_cfg("reg.lambd=3", "trainer.epochs=20"), tmp_path / "a")
    with_bias, _, _ = train_model(make_cfg("reg.lambd=3", "trainer.epochs=20", "reg.penalize_bias=true"), tmp_path / "b")
    assert abs(with_bias.bias.item()) < abs(plain.bias.item())


def test_weight_decay_shrinks_weights_and_test_loss(make_cfg, tmp_path):
    _, free, _ = train_model(make_cfg("reg.lambd=0"), tmp_path / "a")
    _, decayed, _ = train_model(make_cfg("reg.lambd=3"), tmp_path / "b")
    assert decayed["weight_l2_norm"] < free["weight_l2_norm"] / 10
    assert decayed["test_loss"] < free["test_loss"] / 10
    assert decayed["train_loss"] > free["train_loss"]


def test_proximal_l1_gives_exact_zeros_and_reports_sparsity(make_cfg, tmp_path):
    model, result, _ = train_model(make_cfg("reg=l1", "reg.lambd=5", "reg.impl=proximal"), tmp_path / "a")
    zeros = (model.weight == 0).float().mean().item()
    assert zeros > 0.9
    assert result["sparsity"] == pytest.approx((model.weight.abs() < 1e-3).float().mean().item())
    _, subgradient, _ = train_model(make_cfg("reg=l1", "reg.lambd=5", "reg.impl=subgradient"), tmp_path / "b")
    assert subgradient["sparsity"] < result["sparsity"]  # the subgradient only hovers around zero


def test_history_follows_eval_every(make_cfg, tmp_path):
    _, result, _ = train_model(make_cfg("trainer.epochs=7", "trainer.eval_every=3"), tmp_path / "a")
    assert [h["epoch"] for h in result["history"]] == [3, 6, 7]
    assert result["status"] == "completed" and result["train_acc"] is None


def test_divergence_stops_the_run(make_cfg, tmp_path):
    _, result, _ = train_model(make_cfg("optim.lr=1e6", "trainer.epochs=50"), tmp_path / "a")
    assert result["status"] == "diverged" and result["epochs"] < 50


def test_classification_learns_and_evaluates_in_eval_mode(make_cfg, tiny_fashion_root, tmp_path):
    cfg = make_cfg("+experiment=dropout", f"data.root={tiny_fashion_root}", "trainer.epochs=20", "data.batch_size=32")
    model, result, data = train_model(cfg, tmp_path / "a")
    assert result["test_acc"] > 0.5 and 0 <= result["train_acc"] <= 1
    model.train()  # evaluate() switches to eval mode itself, so dropout is off and results repeat
    first = evaluate(model, data.X_test, data.y_test, classification=True)
    second = evaluate(model, data.X_test, data.y_test, classification=True)
    assert not model.training
    assert first[0].item() == second[0].item() and math.isclose(first[1].item(), result["test_acc"])


def test_penalized_weights_norm_is_logged(make_cfg, tmp_path):
    model, result, _ = train_model(make_cfg("trainer.epochs=2"), tmp_path / "a")
    assert result["weight_l2_norm"] == pytest.approx(model.weight.norm().item(), rel=1e-6)
    assert penalized_params(model, include_bias=False) == [model.weight]


@pytest.mark.parametrize("impl", ["penalty", "weight_decay"])
def test_logged_objective_is_taken_at_the_pre_step_weights(make_cfg, tmp_path, impl):
    """One full-batch SGD step of the linear model: loss/objective = ½·mean((Xw + b − y)²) + λ/2·‖w‖² at the initial w,
    computed by hand, in a single run and in a stacked member alike (not at the weights after the step)."""
    from regularization.vectorized import train_group

    overrides = ["reg.lambd=3", f"reg.impl={impl}", "trainer.epochs=1", "data.batch_size=20"]  # n_train = 20: one step
    cfg = make_cfg(*overrides)
    seed_everything(cfg.seed)
    data = load_data(cfg, torch.device("cpu"))
    model = build_model(cfg, data.num_inputs, data.num_outputs)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    residual = data.X_train @ w.T + b - data.y_train
    by_hand = (residual.pow(2).mean() / 2 + 3 / 2 * w.pow(2).sum()).item()
    lr = cfg.optim.lr
    after = w - lr * (data.X_train.T @ residual / 20).T - lr * 3 * w  # the weights after the step
    assert 3 / 2 * after.pow(2).sum().item() != pytest.approx(3 / 2 * w.pow(2).sum().item(), rel=1e-4)  # the step moves Ω

    _, result, _ = train_model(cfg, tmp_path / "single")
    assert result["history"][0]["objective"] == pytest.approx(by_hand, rel=1e-5)
    members = [make_cfg(*overrides), make_cfg(*overrides, "reg.lambd=0.5")]
    dirs = [Path(m.hydra.runtime.output_dir) for m in members]
    train_group(members, dirs, torch.device("cpu"))
    stacked = json.loads((dirs[0] / "metrics.json").read_text())
    assert stacked["history"][0]["objective"] == pytest.approx(by_hand, rel=1e-5)
