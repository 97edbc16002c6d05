"""scripts/bench.py's FLOP counts, on which its floors and its matmul share rest."""

from __future__ import annotations

import runpy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import ROOT

bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="bench")


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers += [nn.ReLU()] if i else []
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def test_epoch_flops_are_what_torch_counts_for_forward_and_backward():
    sizes, n = (12, 7, 5, 3), 9
    X = torch.randn(n, sizes[0])  # the data: no gradient with respect to the first layer's input
    with FlopCounterMode(display=False) as counter:
        mlp(sizes)(X).sum().backward()
    assert bench["mlp_epoch_flops"](n, sizes) == counter.get_total_flops()


def test_eval_flops_are_what_torch_counts_for_a_forward_pass():
    sizes, n = (12, 7, 5, 3), 9
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mlp(sizes)(torch.randn(n, sizes[0]))
    assert bench["mlp_eval_flops"](n, sizes) == counter.get_total_flops()
