"""Shared fixtures: configs composed as train.py composes them, shrunk to seconds; a tiny Fashion-MNIST."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import regularization  # noqa: F401  (registers the config schemas)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REAL_DATA = ROOT / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one pytest-xdist worker per core: each worker, and every train.py its tests start,
    # trains on one torch thread, or the workers' threads would take turns on the cores and each run slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# Tests that signal a train.py running in the background (Run) once it reaches a point: in make test's xdist workers,
# one at a time, so that two of them do not slow each other's runs and pollers.
ONE_AT_A_TIME = pytest.mark.xdist_group("signals")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that must not run beside each other share an xdist_group (`--dist loadgroup` runs a group's tests in one
    worker, one after another): those that submit to the SLURM cluster (one queue, and slurm_cluster cancels every
    job of the user when a test ends), and ONE_AT_A_TIME's. In an xdist worker, the slow tests come first, so that the
    workers end together rather than one waiting for the other's last long test."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/config.yaml with overrides, as train.py would, with the job's output dir set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """make_cfg("reg.lambd=3", ...) composes a config whose job dir is a fresh tmp dir."""
    counter = iter(range(1_000_000))

    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / f"job{next(counter)}")

    yield make
    GlobalHydra.instance().clear()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An IDX file (big-endian dims after a magic of 0x08 = ubyte and the number of dims)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_tiny_fashion(root: Path, n_train: int = 200, n_test: int = 100, gz: bool = False, seed: int = 0) -> Path:
    """A learnable stand-in for Fashion-MNIST: class c lights up row block c of a noisy 28x28 image."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 6, :] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture(scope="session")
def tiny_fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_fashion(tmp_path_factory.mktemp("fashion"))


def real_data_root() -> Path:
    """data/ with the real Fashion-MNIST; skips without it, or fails when REQUIRE_FASHION_MNIST=1."""
    if not (REAL_DATA / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
        message = f"Fashion-MNIST not in {REAL_DATA}/FashionMNIST/raw (`make data`, or `make test-all`)"
        if os.environ.get("REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return REAL_DATA


def slurm_missing() -> str | None:
    """What keeps sweeps from going through a real SLURM cluster here, or None: sbatch on PATH and SLURM_CONF
    naming a running cluster (scripts/slurm_local.sh start sets both up)."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (apt-get install slurm-wlm munge)"
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (`make test-all` runs the suite on a local cluster, as root)"
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    # Up: idle, partly or fully allocated, completing, or planned (the backfill scheduler has reserved it for a
    # pending job, as an earlier test's job can leave it for a moment).
    if sinfo.returncode != 0 or not {"idle", "mix", "alloc", "comp", "plnd"} & set(sinfo.stdout.split()):
        return f"no node up in the cluster of {os.environ['SLURM_CONF']}: {(sinfo.stderr or sinfo.stdout).strip()}"
    return None


@pytest.fixture
def slurm_cluster(tmp_path: Path) -> Iterator[None]:
    """A SLURM cluster to submit to; skips without one, or fails when REQUIRE_SLURM=1. The test's jobs still in the
    queue when it ends (a requeued or a cancelled group's, say) are cancelled then: none outlives its test. Only its
    own: the jobs whose submitit folders (.submitit/<job id>) lie under its tmp_path, not every job of the user (which
    killed the jobs of a test running beside it, and would kill a user's own on a real cluster)."""
    missing = slurm_missing()
    if missing is not None:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    yield
    ours = sorted({p.name for p in tmp_path.glob("**/.submitit/*") if p.is_dir() and p.name[:1].isdigit()})
    if ours:
        subprocess.run(["scancel", *ours], capture_output=True)


def run_train(args: list[str], cwd: Path, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """python train.py ARGS in cwd, as a user would run it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def the_sweep_dir(cwd: Path, n_jobs: int) -> Path:
    """The one dir that ``train.py -m`` run in cwd without hydra.sweep.dir leaves under outputs/multirun (the default
    ``${now:...}_${pid:}``, resolved once for every job, whatever process runs it), with its n_jobs job dirs and a
    summary.csv listing every one of them."""
    sweeps = sorted(p.name for p in (cwd / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, f"one sweep dir expected in {cwd}/outputs/multirun, found {sweeps}"
    sweep = cwd / "outputs" / "multirun" / sweeps[0]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == n_jobs, jobs
    with open(sweep / "summary.csv") as f:
        assert sorted(row["job"] for row in csv.DictReader(f)) == jobs
    return sweep


class Run(subprocess.Popen):
    """train.py in the background, its output going to a file (a pipe nobody reads would fill and stall it).
    A run still alive when its test ends (a failed assertion, say) is killed then: none outlives its test."""

    started: ClassVar[list[Run]] = []

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = cwd / "train.out"
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as out:
            super().__init__([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        Run.started.append(self)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises() -> None:
    """Python's KeyboardInterrupt handler, in this process and (inherited as "not ignored") in its train.py
    children, even when pytest was started in the background, where a shell has SIGINT ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _kill_background_runs() -> Iterator[None]:
    yield
    while Run.started:
        proc = Run.started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(path: Path, proc: Run, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{proc.output()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
