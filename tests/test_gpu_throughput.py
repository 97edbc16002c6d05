"""What a GPU user expects (issue 21, item 11): a TF32 choice (trainer.matmul_precision), each job's peak GPU memory
in metrics.json, fused optimizers on CUDA. Checked on the CPU: the settings reach torch, the peak is read from the
job's device (torch.cuda monkeypatched), and the fused update equals the unfused one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from regularization import engine
from regularization.checkpoint import experiment_id
from regularization.config import ConfigError, validate
from regularization.data import load_data
from regularization.engine import make_optimizer, make_penalty, make_step, preflight, train, train_epoch
from regularization.gpu import peak_memory
from regularization.models import build_model

CPU = torch.device("cpu")


def test_matmul_precision_is_checked_and_names_the_key(make_cfg):
    with pytest.raises(ConfigError, match="trainer.matmul_precision: got 'low', allowed: highest, high, medium"):
        validate(make_cfg("trainer.matmul_precision=low"))


def test_a_job_sets_its_matmul_precision(make_cfg, monkeypatch):
    current, calls = ["highest"], []
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: current[0])
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda name: (calls.append(name), current.__setitem__(0, name)))
    cfg = make_cfg("trainer.matmul_precision=high", "trainer.epochs=1")
    train(cfg, preflight(cfg), Path(cfg.hydra.runtime.output_dir))
    assert calls == ["high"]
    cfg = make_cfg("trainer.epochs=1")
    train(cfg, preflight(cfg), Path(cfg.hydra.runtime.output_dir))
    assert calls == ["high", "highest"]  # the next job of the process gets its own


def test_the_default_matmul_precision_keeps_the_experiment_id_of_runs_from_before_the_key(make_cfg):
    """A completed job of a sweep run before trainer.matmul_precision existed is still skipped on a rerun."""
    cfg = make_cfg()
    before_the_key = OmegaConf.to_container(cfg, resolve=True)
    del before_the_key["trainer"]["matmul_precision"]
    assert experiment_id(cfg) == experiment_id(OmegaConf.create(before_the_key))
    assert experiment_id(make_cfg("trainer.matmul_precision=high")) != experiment_id(cfg)


def test_peak_gpu_memory_is_read_from_the_jobs_device(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: (seen.append(device), 123_456_789)[1])
    assert peak_memory(torch.device("cuda:1"), "peak_memory_bytes") == {"peak_memory_bytes": 123_456_789}
    assert seen == [torch.device("cuda:1")]
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: pytest.fail("CUDA touched"))
    assert peak_memory(CPU, "peak_memory_bytes") == {}  # a CPU job: nothing, CUDA untouched


def test_a_jobs_peak_memory_goes_into_its_metrics_json(make_cfg, monkeypatch):
    monkeypatch.setattr(engine, "peak_memory", lambda device, key: {key: 42})
    cfg = make_cfg("trainer.epochs=1")
    out = Path(cfg.hydra.runtime.output_dir)
    train(cfg, preflight(cfg), out)
    assert json.loads((out / "metrics.json").read_text())["peak_memory_bytes"] == 42


@pytest.mark.parametrize("optim", [["optim=sgd", "optim.momentum=0.9"], ["optim=adam", "optim.lr=0.01"]], ids=["sgd", "adam"])
def test_fused_optimizers_update_as_the_unfused_ones(make_cfg, optim):
    """fused=True (what CUDA jobs use) against the default implementation, on the CPU, 3 epochs, weight decay on."""
    weights = []
    for fused in (False, True):
        cfg = make_cfg(*optim, "reg.lambd=3", "reg.impl=weight_decay")
        torch.manual_seed(0)
        data = load_data(cfg, CPU)
        model = build_model(cfg, data.num_inputs, data.num_outputs)
        penalty = make_penalty(cfg, model)
        optimizer = make_optimizer(cfg, model, penalty, fused=fused)
        assert optimizer.defaults["fused"] is (True if fused else None)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            train_epoch(model, data, optimizer, penalty, 5, generator, step=make_step(cfg, model, data))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-4)


def test_matmul_precision_is_in_the_hparams_row(make_cfg):
    from regularization.logging import run_hparams

    assert run_hparams(make_cfg("trainer.matmul_precision=high"))["trainer.matmul_precision"] == "high"
