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


def test_sweep_ratio_warms_both_launchers_up_untimed_then_alternates_which_goes_first(monkeypatch):
    """Row (b) is fair: neither side pays the process's one-time costs (a CUDA context, cuBLAS start-up, lazy
    imports) because it happened to go first."""
    calls: list[tuple[str, list[str]]] = []

    def fake_run_sweep(args: list[str]) -> float:
        launcher = "vectorized" if "hydra/launcher=vectorized" in args else "basic"
        calls.append((launcher, [a for a in args if not a.startswith(("hydra.sweep.dir=", "hydra/launcher="))]))
        return 2.0 if launcher == "basic" else 1.0

    monkeypatch.setitem(bench["sweep_ratio"].__globals__, "run_sweep", fake_run_sweep)  # run_path returns a copy
    basic, vectorized, times = bench["sweep_ratio"]("t", ["+experiment=weight_decay", "reg.lambd=0,1,2"], repeats=2)
    warmups, timed = calls[:2], calls[2:]
    assert {launcher for launcher, _ in warmups} == {"basic", "vectorized"}
    assert all(args == ["+experiment=weight_decay"] for _, args in warmups)  # one job, the same experiment
    assert [launcher for launcher, _ in timed] == ["basic", "vectorized", "vectorized", "basic"]
    assert (basic, vectorized) == (2.0, 1.0) and times == {"basic": [2.0, 2.0], "vectorized": [1.0, 1.0]}
