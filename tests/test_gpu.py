"""CUDA paths without a GPU: torch.cuda's functions monkeypatched, device counts faked, CUDA errors raised on purpose."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from regularization.checkpoint import CHECKPOINT, generator_state, restore_generator, rng_states, set_rng_states
from regularization.config import ConfigError
from regularization.engine import preflight, train
from regularization.gpu import use_deterministic_workspace
from regularization.vectorized import train_group
from tests.conftest import ROOT, compose_config

CPU = torch.device("cpu")
# A CUDA generator's state as torch.cuda's Philox generator writes it: seed and offset, 16 bytes.
CUDA_GENERATOR_STATE = {"device": "cuda", "state": torch.arange(16, dtype=torch.uint8)}


def forbidden(*args, **kwargs):
    raise AssertionError("CUDA was touched")


# ---- defect 1: a resume on another device type ------------------------------------------------------------


def test_a_generator_saved_on_another_device_type_is_rederived_reproducibly():
    """A CUDA generator's state cannot be set on a CPU generator (nor the other way round): the generator is seeded
    from the saved state instead, the same way every time, and the caller is told the stream is not the saved one."""
    draws = []
    for _ in range(2):
        g = torch.Generator()
        assert restore_generator(g, CUDA_GENERATOR_STATE) is False
        draws.append(torch.randperm(50, generator=g))
    assert torch.equal(draws[0], draws[1])
    saved = torch.Generator().manual_seed(7)
    torch.randperm(10, generator=saved)
    same = torch.Generator()
    assert restore_generator(same, generator_state(saved)) is True
    assert torch.equal(torch.randperm(50, generator=same), torch.randperm(50, generator=saved))


def test_a_checkpoint_written_on_cuda_resumes_on_cpu_and_says_it_is_not_bitwise(tmp_path, caplog):
    """A job checkpointed on a GPU and resumed on a CPU host completes (it used to end failed: 'Expected a
    CPUGeneratorImplState of size 5056'); two resumes from the same checkpoint agree."""
    job = tmp_path / "job"
    train(compose_config(["trainer.epochs=2", "device=cpu"], job), CPU, job)
    state = torch.load(job / CHECKPOINT, weights_only=True)
    state["generator"] = CUDA_GENERATOR_STATE
    state["rng"] |= {"device": "cuda", "cuda": torch.zeros(16, dtype=torch.uint8)}
    results = []
    for _ in range(2):
        torch.save(state, job / CHECKPOINT)
        (job / "metrics.json").unlink()
        with caplog.at_level(logging.WARNING):
            train(compose_config(["trainer.epochs=4", "device=cpu"], job), CPU, job)
        result = json.loads((job / "metrics.json").read_text())
        assert result["status"] == "completed" and result["epochs"] == 4
        results.append(result["history"])
    assert "not bitwise" in caplog.text
    assert results[0] == results[1]


# ---- defect 2: only the job's own device's CUDA RNG state ---------------------------------------------------


def test_a_cpu_job_checkpoint_touches_no_cuda(monkeypatch):
    """On a GPU host, a device=cpu job's checkpoint neither reads nor initialises CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    states = rng_states(CPU)
    assert states["cuda"] is None
    set_rng_states(states, CPU)


def test_the_jobs_cuda_rng_state_is_restored_to_the_jobs_device(monkeypatch):
    """Written on cuda:1 of 4 GPUs (joblib), resumed with one visible GPU (SLURM): the state cuda:1 had goes to
    cuda:0, and no other device's state is read or written (there is no IndexError, no state on the wrong GPU)."""
    states_by_index = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(4)}
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states_by_index[torch.device(device).index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.__setitem__(torch.device(device).index, state))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", forbidden)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", forbidden)
    states = rng_states(torch.device("cuda:1"))
    assert torch.equal(states["cuda"], states_by_index[1])
    set_rng_states(states, torch.device("cuda:0"))
    assert list(restored) == [0] and torch.equal(restored[0], states_by_index[1])


# ---- defect 3: cuBLAS's workspace, set before the first cuBLAS call ----------------------------------------


def test_importing_the_package_sets_the_cublas_workspace(monkeypatch):
    """Set on import, before any CUDA work (cuBLAS reads it once per process); a user's value is kept."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = "import os, regularization; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == ":4096:8", proc.stderr
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    use_deterministic_workspace()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_conflicting_cublas_workspace_under_deterministic_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    cfg = compose_config(["device=cuda", "trainer.deterministic=true"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"trainer\.deterministic: .*CUBLAS_WORKSPACE_CONFIG.*':0:0'"):
        preflight(cfg)
    assert preflight(compose_config(["device=cuda", "trainer.deterministic=false"], tmp_path / "b")).type == "cuda"
    assert preflight(compose_config(["device=cpu", "trainer.deterministic=true"], tmp_path / "c")).type == "cpu"


# ---- defect 4: the vectorized launcher honours trainer.deterministic ---------------------------------------


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_vectorized_launcher_honours_deterministic(tmp_path, monkeypatch, deterministic):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, **kwargs: calls.append(on))
    overrides = ["+experiment=weight_decay", "trainer.epochs=1", f"trainer.deterministic={deterministic}"]
    cfgs = [compose_config([*overrides, f"reg.lambd={v}"], tmp_path / str(v)) for v in (0, 1)]
    train_group(cfgs, [tmp_path / "0", tmp_path / "1"], CPU)
    assert calls == [deterministic]
