"""The two models. Input and output sizes come from the data, so either model fits either dataset."""

from __future__ import annotations

import itertools

import torch
from omegaconf import DictConfig
from torch import nn

from regularization.config import DropoutKind, DropoutStyle, Init
from regularization.regularizers import Dropout


def dropout_module(kind: DropoutKind, p: float, style: DropoutStyle = DropoutStyle.inverted) -> nn.Module:
    return Dropout(p, style) if kind is DropoutKind.scratch else nn.Dropout(p)


class MLP(nn.Module):
    """inputs → dropout(p0) → Linear → ReLU → dropout(p1) → Linear → ReLU → dropout(p2) → Linear → outputs."""

    def __init__(
        self,
        num_inputs: int,
        num_outputs: int,
        hidden1: int = 256,
        hidden2: int = 256,
        dropout1: float = 0.0,
        dropout2: float = 0.0,
        dropout: DropoutKind = DropoutKind.scratch,
        input_dropout: float = 0.0,
        style: DropoutStyle = DropoutStyle.inverted,
    ) -> None:
        super().__init__()
        self.drop0 = dropout_module(dropout, input_dropout, style)
        self.lin1 = nn.Linear(num_inputs, hidden1)
        self.drop1 = dropout_module(dropout, dropout1, style)
        self.lin2 = nn.Linear(hidden1, hidden2)
        self.drop2 = dropout_module(dropout, dropout2, style)
        self.lin3 = nn.Linear(hidden2, num_outputs)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        H1 = self.drop1(torch.relu(self.lin1(self.drop0(X.flatten(1)))))
        H2 = self.drop2(torch.relu(self.lin2(H1)))
        return self.lin3(H2)


def init_normal_(model: nn.Module, std: float) -> None:
    """w ~ N(0, std²) and b = 0 for every Linear layer."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)


def build_model(cfg: DictConfig, num_inputs: int, num_outputs: int) -> nn.Module:
    """The configured model, initialized from torch's global RNG (seed it first)."""
    if cfg.model.name == "linear":
        model: nn.Module = nn.Linear(num_inputs, num_outputs)
    else:
        reg = cfg.reg
        model = MLP(
            num_inputs,
            num_outputs,
            cfg.model.hidden1,
            cfg.model.hidden2,
            reg.get("dropout1", 0.0),
            reg.get("dropout2", 0.0),
            reg.get("dropout", DropoutKind.scratch),
            reg.get("input_dropout", 0.0),
            reg.get("dropout_style", DropoutStyle.inverted),
        )
    if cfg.model.init is Init.normal:
        init_normal_(model, cfg.model.init_std)
    return model


def parameter_count(cfg: DictConfig, num_inputs: int, num_outputs: int) -> int:
    """The parameters of ``build_model(cfg, num_inputs, num_outputs)``, from the layer sizes (weights and biases)."""
    sizes = [num_inputs, num_outputs] if cfg.model.name == "linear" else [num_inputs, cfg.model.hidden1, cfg.model.hidden2, num_outputs]
    return sum((n_in + 1) * n_out for n_in, n_out in itertools.pairwise(sizes))


def penalized_params(model: nn.Module, include_bias: bool) -> list[nn.Parameter]:
    """The weights a penalty applies to: every weight matrix, and the biases if asked."""
    return [p for name, p in model.named_parameters() if include_bias or not name.endswith("bias")]
