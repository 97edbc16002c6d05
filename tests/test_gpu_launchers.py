"""Which GPUs the local submitit launchers' jobs see (issue 21, item 2): submitit's local executor sets
CUDA_VISIBLE_DEVICES from ``gpus_per_node``, and with it unset hid every GPU. Checked on a CPU machine with a faked
device count, at the point where submitit starts the job's process."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import submitit.local.local
import torch
from omegaconf import open_dict, read_write

from hydra_plugins.regularization_launcher import submitit_groups
from tests.conftest import compose_config


class Started(Exception):
    """Raised where submitit would start the job's process, with the CUDA_VISIBLE_DEVICES it would set."""


@pytest.fixture
def job_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def start_controller(*args, cuda_devices: str = "", **kwargs):  # noqa: ANN002, ANN003, ANN202 - submitit's signature
        raise Started(cuda_devices)

    monkeypatch.setattr(submitit.local.local, "start_controller", start_controller)


def launcher(tmp_path: Path, *overrides: str):  # noqa: ANN201 - a Hydra launcher
    """The sweep's launcher as Hydra makes it: the config's callbacks' on_multirun_start, then the launcher."""
    cfg = compose_config(["reg.lambd=0", *overrides], tmp_path / "job")
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    for callback in cfg.hydra.callbacks.values():
        hydra.utils.instantiate(callback).on_multirun_start(config=cfg)
    return cfg, hydra.utils.instantiate(cfg.hydra.launcher)


def visible_devices(run) -> str:  # noqa: ANN001 - what starts the job
    with pytest.raises(Started) as started:
        run()
    return str(started.value)


@pytest.mark.parametrize(("n_gpus", "expected"), [(2, "0,1"), (0, "")])
def test_submitit_local_jobs_see_the_machines_gpus(tmp_path, monkeypatch, job_start, n_gpus, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    cfg, local = launcher(tmp_path, "hydra/launcher=submitit_local")
    local.setup(hydra_context=None, task_function=print, config=cfg)
    assert visible_devices(lambda: local.launch([["reg.lambd=0"]], 0)) == expected


def test_submitit_local_keeps_an_explicit_gpus_per_node(tmp_path, monkeypatch, job_start):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg, local = launcher(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0")
    local.setup(hydra_context=None, task_function=print, config=cfg)
    assert visible_devices(lambda: local.launch([["reg.lambd=0"]], 0)) == ""


def test_vectorized_local_groups_see_the_machines_gpus(tmp_path, monkeypatch, job_start):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _, local = launcher(tmp_path, "hydra/launcher=vectorized_local")
    assert isinstance(local, submitit_groups.VectorizedLocalLauncher)
    assert visible_devices(lambda: local.executor().submit(print)) == "0,1"
