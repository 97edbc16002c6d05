"""trainer.compile: one graph per step and per sweep of rates, no silent eager fallbacks, no CUDA graphs shared across
GPU threads, static stacked weights (issue 21, items 3 to 5). Compiled with a backend that counts dynamo's graphs and
runs them as they are (tracing and guards as with inductor, no C++ build)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from regularization.config import ConfigError, DropoutStyle
from regularization.engine import train
from regularization.models import MLP
from regularization.parallel import check_compile_threads
from regularization.regularizers import Dropout, dropout_layer, standard_dropout_layer
from regularization.step import Step
from regularization.vectorized import StackedNet, member_losses, per_member

CPU = torch.device("cpu")


class Scaled(nn.Module):
    """A linear model whose output is scaled by a rate kept as a Python attribute, as a dropout rate is."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate, self.linear = rate, nn.Linear(4, 1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X) * (1 - self.rate)


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.compile with a backend that counts the graphs it is given and runs them as they are."""
    compiled: list[int] = []

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:  # noqa: ARG001 - dynamo's backend signature
        compiled.append(1)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()  # what an earlier test of this worker compiled (its graphs, the shapes it saw vary) is not ours
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False, recompile_limit=2):  # restored after the test
        yield compiled
    torch._dynamo.reset()


def step_of(model: nn.Module) -> Step:
    return Step(lambda X, y: ((model(X) - y) ** 2).mean(), "32", True, CPU)


def test_jobs_whose_graphs_fill_dynamos_cache_start_it_afresh(graphs, caplog):
    """A basic-launcher sweep whose jobs' steps are other graphs (here a rate kept as a float, a constant of the
    graph; in a sweep, other model sizes): job 3 reaches the recompile limit (2 here, dynamo's default 8) with the
    earlier jobs' graphs, and starts dynamo afresh rather than run eagerly while compile_s still booked compile time."""
    X, y = torch.randn(8, 4), torch.randn(8, 1)
    steps = [step_of(Scaled(rate)) for rate in (0.1, 0.2, 0.3, 0.4)]
    for step in steps:
        step.backward(step.loss(X, y))
    # No warning that it runs eagerly; the fresh start's info line is captured too when an earlier test of this process
    # (an xdist worker's order) left logging at INFO.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(graphs) == 4 and all(s.compiled and s.compile_s > 0 for s in steps) and not any("recompile limit" in w for w in warnings)


def test_past_the_recompile_limit_the_step_says_it_runs_eagerly(graphs, caplog):
    """A job that alone needs more graphs than the limit: a fresh start does not help twice."""
    model = Scaled(0.5)
    step = step_of(model)
    sizes = (8, 5, 3, 2, 1)  # five batch shapes: two graphs, a fresh start, two more, then the limit again
    with caplog.at_level(logging.WARNING, logger="regularization"):
        losses = [step.loss(torch.ones(n, 4), torch.zeros(n, 1)) for n in sizes]
    assert "trainer.compile: torch.compile reached its recompile limit" in caplog.text and not step.compiled
    assert len(graphs) == 4
    expected = [((model(torch.ones(n, 4))) ** 2).mean() for n in sizes]
    assert all(torch.equal(a, b) for a, b in zip(losses, expected, strict=True))  # the same step, eagerly


def test_compiled_groups_on_several_gpus_in_one_process_are_refused():
    gpus = [torch.device("cuda:0"), torch.device("cuda:1")]
    with pytest.raises(
        ConfigError, match="trainer.compile: true under hydra/launcher=vectorized on 2 GPUs.*hydra/launcher=vectorized_local"
    ):
        check_compile_threads(gpus, [True, True])
    check_compile_threads(gpus, [False, False])  # eager groups on 2 GPUs: threads are fine
    check_compile_threads([torch.device("cuda:0")] * 2, [True, True])  # one GPU: one thread
    check_compile_threads([CPU, CPU], [True, True])


# --- one graph per step (issue 21, items 4 and 5) ------------------------------------------------


def tiny_dropout_mlp(root: Path, *overrides: str) -> list[str]:
    """The dropout chapter's MLP, shrunk: 200 images in batches of 64 (three full batches and one of 8)."""
    small = ["model.hidden1=16", "model.hidden2=8", "data.batch_size=64", "trainer.epochs=1", "trainer.compile=true"]
    return ["+experiment=dropout", f"data.root={root}", *small, *overrides]


def test_a_sweep_over_dropout_rates_compiles_its_step_once(graphs, make_cfg, tiny_fashion_root):
    """Two jobs of a basic-launcher sweep over reg.dropout1, in one process as the basic launcher runs them: the rate
    is an input of the compiled step, not a constant of it, so the second job runs the first job's graphs (one per
    batch shape) and compiles nothing, and its compile_s says so."""
    jobs = [make_cfg(*tiny_dropout_mlp(tiny_fashion_root, f"reg.dropout1={p}")) for p in (0.2, 0.5)]
    results = []
    for cfg in jobs:
        out = Path(cfg.hydra.runtime.output_dir)
        train(cfg, CPU, out)  # as the basic launcher's jobs, one after another in this process
        results.append(json.loads((out / "metrics.json").read_text()))
        if len(results) == 1:
            assert len(graphs) == 2  # the full batches and the last one
    assert len(graphs) == 2 and results[1]["compile_s"] == 0 < results[0]["compile_s"]
    assert [r["status"] for r in results] == ["completed", "completed"]


def test_the_dropout_module_draws_the_masks_dropout_layer_draws():
    """The rate as a 0-dim tensor changes no number: the same masks and scale as the chapter's functions with a float."""
    X = torch.randn(64, 32)
    for style, layer in ((DropoutStyle.inverted, dropout_layer), (DropoutStyle.standard, standard_dropout_layer)):
        for p in (0.1, 0.3, 0.7):
            torch.manual_seed(0)
            want = layer(X, p)
            torch.manual_seed(0)
            assert torch.equal(Dropout(p, style).train()(X), want)
    assert Dropout(0.3).state_dict() == {}  # the rate is not in a checkpoint's model: one of before loads


def stacked_dropout_net(seed: int) -> StackedNet:
    """Three members of an MLP with input and hidden dropout, their masks from a generator seeded with ``seed``."""
    torch.manual_seed(0)
    models = [MLP(12, 3, 16, 8, 0.2, 0.5, input_dropout=0.1) for _ in range(3)]
    rates = [per_member(r, CPU) for r in ([0.1, 0.0, 0.2], [0.2, 0.3, 0.5], [0.5, 0.0, 0.1])]
    return StackedNet(models, rates, generator=torch.Generator().manual_seed(seed), compiled=True)


def stacked_steps(compile: bool) -> list[torch.Tensor]:
    """Three training steps of ``stacked_dropout_net`` (vectorized.make_step's function): losses and gradients."""
    net = stacked_dropout_net(seed=7)
    step = Step(lambda X, y, u: member_losses(net(X, u), y, True), "32", compile, CPU)
    X, y = torch.randn(5, 12), torch.tensor([0, 1, 2, 1, 0])
    out = []
    for _ in range(3):
        loss = step.loss(X, y, net.draw(len(X)))
        loss.sum().backward()
        out += [loss.detach(), *(w.grad.clone() for w in net.parameters())]
        for w in net.parameters():
            w.grad = None
    return out


def test_the_vectorized_compiled_step_is_one_graph_with_the_eager_masks(graphs):
    """Every dropout layer's uniforms come from the group's generator before the step: the compiled step has no graph
    break (a draw from a torch.Generator in it broke it at every layer) and computes the eager step's numbers."""
    torch._dynamo.utils.counters.clear()
    eager, compiled = stacked_steps(compile=False), stacked_steps(compile=True)
    assert len(graphs) == 1 and not torch._dynamo.utils.counters["graph_break"]
    assert all(torch.equal(c, e) for c, e in zip(compiled, eager, strict=True))


def test_the_stacked_masks_are_the_groups_generator_draws_in_forward_order():
    """Member k's mask at each layer: u ≥ p_k, u drawn by torch.rand from the group's generator, inputs first, then
    each hidden layer (the numbers of before, so group checkpoints resume as they did)."""
    net, X = stacked_dropout_net(seed=7), torch.randn(5, 12)
    g = torch.Generator().manual_seed(7)
    H = X.expand(3, 5, 12)
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        keep = torch.rand(H.shape, generator=g) >= net.rates[i][:, None, None]
        H = H * (keep / (1 - net.rates[i])[:, None, None])
        H = torch.baddbmm(b, H, W.transpose(1, 2))
        H = torch.relu(H) if i < 2 else H
    assert torch.equal(net(X, net.draw(5)), H.detach())


def test_the_stacked_weights_and_uniforms_are_static_inputs_of_the_compiled_step(monkeypatch):
    """Under reduce-overhead (CUDA graphs) an input not marked static is copied into the graph's own buffer every
    step: the stacked weights (about 276 MB at 256 members) and the dropout uniforms must not be. Read from what
    AOTAutograd hands the backend, as inductor's CUDA graphs read it."""
    static_names: list[str] = []
    inputs: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        inputs.extend(n.name for n in gm.graph.nodes if n.op == "placeholder")

        def forward(fw: torch.fx.GraphModule, _: list) -> object:
            static_names.extend(inputs[i] for i in torch._guards.TracingContext.try_get().fw_metadata.static_input_indices)
            return make_boxed_func(fw.forward)

        return aot_autograd(fw_compiler=forward, bw_compiler=lambda bw, _: make_boxed_func(bw.forward))(gm, example_inputs)

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    try:
        stacked_steps(compile=True)
    finally:
        torch._dynamo.reset()
    stacked = [n for n in inputs if any(k in n for k in ("weights", "biases", "_u_"))]
    assert len(stacked) == 3 + 3 + 3 and sorted(static_names) == sorted(stacked)  # W, b and u of every layer; not X, y, rates
