"""trainer.compile without silent eager fallbacks and without CUDA graphs shared across GPU threads (issue 21,
items 3 and 4). Compiled with dynamo's ``eager`` backend here (tracing and guards as with inductor, no C++ build)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import nn

from regularization.config import ConfigError
from regularization.parallel import check_compile_threads
from regularization.step import Step

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
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False, recompile_limit=2):  # restored after the test
        yield compiled
    torch._dynamo.reset()


def step_of(model: nn.Module) -> Step:
    return Step(lambda X, y: ((model(X) - y) ** 2).mean(), "32", True, CPU)


def test_each_job_of_a_sweep_compiles_its_own_step(graphs, caplog):
    """A basic-launcher sweep over dropout rates with trainer.compile: the jobs' steps are one function with other
    models (rates) in it. Without a fresh start per job, job 3 here (the 9th at dynamo's default limit of 8)
    would run eagerly while compile_s still booked compile time."""
    X, y = torch.randn(8, 4), torch.randn(8, 1)
    for rate in (0.1, 0.2, 0.3, 0.4):
        step_of(Scaled(rate)).loss(X, y)
    assert len(graphs) == 4 and "recompile limit" not in caplog.text


def test_past_the_recompile_limit_the_step_says_it_runs_eagerly(graphs, caplog):
    model = Scaled(0.5)
    step = step_of(model)
    with caplog.at_level(logging.WARNING, logger="regularization"):
        losses = [step.loss(torch.ones(n, 4), torch.zeros(n, 1)) for n in (8, 5, 3)]  # three batch shapes, limit 2
    assert "trainer.compile: torch.compile reached its recompile limit" in caplog.text and not step.compiled
    expected = [((model(torch.ones(n, 4))) ** 2).mean() for n in (8, 5, 3)]
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
