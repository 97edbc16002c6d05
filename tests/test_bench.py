"""scripts/bench.py's FLOP counts, on which its floors and its matmul share rest."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
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


def test_the_torch_func_ensemble_trains_the_same_models_as_the_vectorized_launcher(make_cfg):
    """bench.py's baseline is only fair if it trains our models: the same data, init, batches and objective, so its
    final ‖w‖ and test loss match a vectorized group's within 1e-4 (fp32, reordered sums only)."""
    from regularization.vectorized import train_group

    ensemble = runpy.run_path(str(ROOT / "scripts" / "func_ensemble.py"), run_name="func_ensemble")
    values = ["0", "0.01", "0.5", "3"]
    theirs = ensemble["lambda_sweep"]([float(v) for v in values], epochs=20)
    cfgs = [make_cfg("+experiment=weight_decay", f"reg.lambd={v}", "trainer.epochs=20") for v in values]
    dirs = [Path(c.hydra.runtime.output_dir) for c in cfgs]
    train_group(cfgs, dirs, torch.device("cpu"))
    ours = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    for key in ("weight_l2_norm", "test_loss"):
        assert theirs[key] == pytest.approx([r[key] for r in ours], rel=1e-4), key
    assert theirs["weight_l2_norm"][0] > 2 * theirs["weight_l2_norm"][-1]  # λ shrinks ‖w‖: the λ values reached the members


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


def test_stacked_agreement_runs_with_one_seed(tmp_path):
    """scripts/stacked_agreement.py --seeds 1 (a quick look at one seed) reports, with no spread to show (it used to
    crash computing a standard deviation of one value)."""
    import subprocess
    import sys

    args = ["--epochs", "2", "--seeds", "1", "--lambd", "0", "1", "--only", "l2 penalty"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stacked_agreement.py"), *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("l2 penalty")]
    assert "final test loss stacked" in line and "±" not in line
