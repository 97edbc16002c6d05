"""Model shapes and init; the penalized parameters."""

import pytest
import torch
from torch import nn

from regularization.config import Init
from regularization.models import MLP, build_model, penalized_params
from regularization.regularizers import Dropout


@pytest.mark.parametrize(("data", "inputs", "outputs"), [("synthetic", 200, 1), ("fashion_mnist", 784, 10)])
@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_every_model_fits_every_dataset(make_cfg, model, data, inputs, outputs):
    reg = "reg=dropout_scratch" if model == "mlp" else "reg=l2"
    cfg = make_cfg(f"model={model}", f"data={data}", reg)
    net = build_model(cfg, inputs, outputs)
    assert net(torch.randn(7, inputs)).shape == (7, outputs)


def test_mlp_layout_and_dropout_kinds(make_cfg):
    scratch = build_model(make_cfg("+experiment=dropout"), 784, 10)
    builtin = build_model(make_cfg("+experiment=dropout", "reg=dropout_builtin"), 784, 10)
    assert [m.out_features for m in scratch.modules() if isinstance(m, nn.Linear)] == [256, 256, 10]
    assert isinstance(scratch.drop1, Dropout) and (scratch.drop1.p, scratch.drop2.p) == (0.2, 0.5)
    assert isinstance(builtin.drop1, nn.Dropout) and (builtin.drop1.p, builtin.drop2.p) == (0.2, 0.5)


def test_mlp_flattens_images():
    net = MLP(784, 10, 32, 16)
    assert net(torch.rand(5, 28, 28)).shape == (5, 10)


def test_weight_decay_init_is_standard_normal_with_zero_bias(make_cfg):
    torch.manual_seed(0)
    net = build_model(make_cfg(), 20000, 1)  # default config: the weight-decay experiment
    assert net.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert torch.count_nonzero(net.bias) == 0


def test_penalized_params_exclude_biases_unless_asked():
    net = MLP(4, 2, 3, 3)
    weights = penalized_params(net, include_bias=False)
    assert [p.shape for p in weights] == [(3, 4), (3, 3), (2, 3)]
    assert len(penalized_params(net, include_bias=True)) == 6


@pytest.mark.parametrize(
    ("overrides", "init", "std"),
    [
        ([], Init.normal, 1.0),  # the weight-decay chapter's linear regression: w ~ N(0, 1)
        (["model=mlp"], Init.default, None),  # an MLP alone keeps PyTorch's init, not N(0, 1)
        (["+experiment=dropout"], Init.normal, 0.01),  # the dropout chapter's concise init
        (["+experiment=dropout_recipe"], Init.default, None),
    ],
)
def test_each_model_starts_from_its_own_init(make_cfg, overrides, init, std):
    cfg = make_cfg(*overrides)
    assert cfg.model.init is init
    if std is not None:
        assert cfg.model.init_std == std
