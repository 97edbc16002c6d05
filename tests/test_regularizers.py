"""The regularizers' math: penalty values and gradients, soft-thresholding, dropout statistics."""

import pytest
import torch
from torch import nn

from regularization.regularizers import (
    Dropout,
    WeightPenalty,
    dropout_layer,
    l1_penalty,
    l2_penalty,
    soft_threshold_,
    sparsity,
    weight_norm,
)


def test_l2_penalty_value_and_gradient():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]], requires_grad=True)
    b = torch.tensor([4.0], requires_grad=True)
    penalty = l2_penalty([w, b])
    assert penalty.item() == pytest.approx((1 + 4 + 9 + 0.25 + 16) / 2)
    penalty.backward()
    assert torch.equal(w.grad, w.detach())  # ∇ ½‖w‖² = w
    assert torch.equal(b.grad, b.detach())


def test_l1_penalty_value_and_subgradient():
    w = torch.tensor([1.0, -2.0, 0.0, 3.0], requires_grad=True)
    penalty = l1_penalty([w])
    assert penalty.item() == 6.0
    penalty.backward()
    assert torch.equal(w.grad, torch.tensor([1.0, -1.0, 0.0, 1.0]))  # sign(w), 0 at 0


def test_weight_norm_and_sparsity_span_all_tensors():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([[4.0, 0.0005]])
    assert weight_norm([a, b]).item() == pytest.approx(5.0, abs=1e-6)
    assert sparsity([a, b]).item() == pytest.approx(2 / 4)


def test_soft_threshold_gives_exact_zeros():
    w = torch.tensor([0.5, -0.05, 0.02, -2.0])
    soft_threshold_(w, 0.1)
    assert torch.allclose(w, torch.tensor([0.4, 0.0, 0.0, -1.9]))
    assert (w == 0).sum() == 2


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_zeroes_p_and_keeps_expectation(p):
    torch.manual_seed(0)
    X = torch.full((400, 500), 2.0)
    Y = dropout_layer(X, p)
    assert (Y == 0).float().mean().item() == pytest.approx(p, abs=0.01)
    assert torch.allclose(Y[Y != 0], torch.tensor(2.0 / (1 - p)))  # kept units scaled by 1/(1-p)
    assert Y.mean().item() == pytest.approx(2.0, rel=0.02)  # E[h'] = h


def test_dropout_edge_cases():
    X = torch.randn(8, 16)
    assert torch.equal(dropout_layer(X, 0.0), X)
    assert torch.equal(dropout_layer(X, 1.0), torch.zeros_like(X))


def test_dropout_mask_drawn_on_input_device():
    devices = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        X = torch.ones(4, 4, device=device)
        assert dropout_layer(X, 0.5).device == X.device


def test_dropout_module_is_identity_in_eval_mode():
    layer = Dropout(0.5)
    X = torch.randn(32, 32)
    layer.eval()
    assert torch.equal(layer(X), X)
    layer.train()
    assert not torch.equal(layer(X), X)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def test_weight_penalty_value_and_where_it_applies():
    model = _linear()
    pen = WeightPenalty("l2", 3.0, "penalty", [model.weight])
    expected = 3.0 * model.weight.detach().pow(2).sum() / 2
    assert pen.value().item() == pytest.approx(expected.item())
    assert pen.in_loss  # added to the loss
    decay = WeightPenalty("l2", 3.0, "weight_decay", [model.weight])
    assert decay.value().item() == pytest.approx(expected.item())  # still logged
    assert not decay.in_loss  # but applied by the optimizer, not the loss


def test_weight_decay_groups_penalize_weights_only():
    model = _linear()
    groups = WeightPenalty("l2", 0.7, "weight_decay", [model.weight]).param_groups(list(model.parameters()))
    assert groups[0]["params"] == [model.weight] and groups[0]["weight_decay"] == 0.7
    assert groups[1]["params"] == [model.bias] and groups[1]["weight_decay"] == 0.0


def test_proximal_step_thresholds_by_lr_times_lambda():
    model = _linear()
    before = model.weight.detach().clone()
    WeightPenalty("l1", 2.0, "proximal", [model.weight]).after_step(lr=0.1)
    expected = torch.sign(before) * torch.clamp(before.abs() - 0.2, min=0)
    assert torch.allclose(model.weight, expected)
