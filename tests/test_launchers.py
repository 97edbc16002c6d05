"""Beyond one process: GPU and thread assignment for parallel jobs, the metric a search optimizes,
and the same sweep under the basic, joblib and submitit_local launchers and the Optuna sweeper."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from regularization import parallel
from regularization.config import ConfigError, Direction
from regularization.engine import run
from regularization.parallel import concurrent_jobs, gpu_for_job, job_device, launcher_threads, set_job_threads, threads_per_job
from regularization.summary import collect, collect_jobs
from tests.conftest import ROOT, compose_config, run_train, the_sweep_dir
from tests.test_summary import run_summarize_script

TINY = ["trainer.epochs=3"]


@pytest.mark.parametrize(
    ("job_num", "n_gpus", "device"),
    [(0, 0, "cpu"), (5, 0, "cpu"), (0, 1, "cuda"), (7, 1, "cuda"), (0, 4, "cuda:0"), (3, 4, "cuda:3"), (4, 4, "cuda:0"), (9, 4, "cuda:1")],
)
def test_job_k_takes_gpu_k_mod_n(job_num: int, n_gpus: int, device: str) -> None:
    assert gpu_for_job(job_num, n_gpus) == device


@pytest.mark.parametrize(
    ("launcher", "spread"),
    [(["hydra/launcher=joblib"], True), (["hydra/launcher=submitit_local"], True), ([], False), (["hydra/launcher=vectorized"], False)],
    ids=["joblib", "submitit_local", "basic", "vectorized"],
)
def test_auto_device_follows_the_hydra_job_number_only_for_jobs_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher: list[str], spread: bool
) -> None:
    """Jobs that run at once (joblib, submitit) take GPU k mod N; jobs one after another in one process (basic) stay
    on the first GPU, not holding a CUDA context and cached memory on every GPU (the vectorized launcher places its
    groups itself, parallel.group_devices)."""
    cfg = compose_config(launcher, tmp_path / "job")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    for num, expected in ((0, "cuda:0"), (4, "cuda:1"), (5, "cuda:2")):
        job = copy.deepcopy(cfg)
        OmegaConf.set_readonly(job.hydra, False)  # HydraConfig.set_config froze it
        job.hydra.job.num = num
        HydraConfig.instance().set_config(job)
        monkeypatch.setattr(parallel, "_process_gpu", {})  # each job the first of its process
        assert job_device("auto") == (expected if spread else "cuda:0")
    assert job_device("cpu") == "cpu"  # an explicit device is never moved
    assert job_device("cuda:0") == "cuda:0"


def test_a_reused_joblib_worker_keeps_the_gpu_of_its_first_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """loky reuses joblib's workers: by job number alone, the worker that ran job 1 (cuda:1) would run job 2 on
    cuda:0, beside job 0's worker, while cuda:1 idles (issue 21, item 10)."""
    cfg = compose_config(["hydra/launcher=joblib"], tmp_path / "job")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(parallel, "_process_gpu", {})  # a fresh worker
    for num in (1, 2, 4):
        job = copy.deepcopy(cfg)
        OmegaConf.set_readonly(job.hydra, False)
        job.hydra.job.num = num
        HydraConfig.instance().set_config(job)
        assert job_device("auto") == "cuda:1"


@pytest.mark.parametrize(("n_jobs", "n_cpus", "concurrent"), [(4, 16, 4), (-1, 16, 16), (-2, 16, 15), (-32, 16, 1), (None, 8, 1)])
def test_concurrent_jobs_follow_joblib_n_jobs(n_jobs: int | None, n_cpus: int, concurrent: int) -> None:
    assert concurrent_jobs(n_jobs, n_cpus) == concurrent


@pytest.mark.parametrize(("n_cpus", "n_concurrent", "threads"), [(16, 4, 4), (16, 3, 5), (2, 2, 1), (2, 8, 1), (8, 1, 8)])
def test_threads_share_the_cores(n_cpus: int, n_concurrent: int, threads: int) -> None:
    assert threads_per_job(n_cpus, n_concurrent) == threads


def _launcher(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_config(list(overrides), tmp_path / "job").hydra.launcher


def test_threads_per_launcher(tmp_path: Path) -> None:
    assert launcher_threads(_launcher(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"), 16) == 4
    assert launcher_threads(_launcher(tmp_path, "hydra/launcher=joblib"), 16) == 1  # n_jobs=-1: one job per core
    assert launcher_threads(_launcher(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=3"), 16) == 3
    assert launcher_threads(_launcher(tmp_path, "hydra/launcher=slurm"), 16) == 4  # the preset's cpus_per_task
    assert launcher_threads(_launcher(tmp_path, "hydra/launcher=submitit_local"), 16) is None
    assert launcher_threads(_launcher(tmp_path), 16) is None  # the basic launcher runs one job at a time


def test_set_job_threads_under_joblib(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        compose_config(["hydra/launcher=joblib", "hydra.launcher.n_jobs=64"], tmp_path / "job")
        set_job_threads()
        assert torch.get_num_threads() == max(1, parallel.available_cpus() // 64)  # 64 jobs at once share the cores
    finally:
        torch.set_num_threads(before)


def test_slurm_preset(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_task, launcher.mem_gb, launcher.timeout_min) == ("gpu", 1, 16, 60)


def _metrics() -> dict:
    return json.loads((Path(HydraConfig.get().runtime.output_dir) / "metrics.json").read_text())


def test_run_returns_the_chosen_metric(make_cfg) -> None:
    for metric in ("test_loss", "train_loss", "weight_l2_norm"):
        value = run(make_cfg(*TINY, f"optimize_metric={metric}"))
        assert value == _metrics()[metric]


def test_a_diverged_run_returns_nan(make_cfg) -> None:
    assert math.isnan(run(make_cfg("optim.lr=100", "trainer.epochs=20")))
    assert _metrics()["status"] == "diverged"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimize_metric=loss"], "optimize_metric: got 'loss', allowed: test_loss"),
        (["optimize_metric=test_acc"], "optimize_metric: test_acc needs classification data"),
        (["sparsity_threshold=0"], "sparsity_threshold: must be > 0, got 0"),
    ],
)
def test_bad_optimize_metric(make_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(*overrides))


def test_optimize_direction_values(make_cfg) -> None:
    assert make_cfg("optimize_direction=maximize").optimize_direction is Direction.maximize
    with pytest.raises(HydraException, match="optimize_direction"):
        make_cfg("optimize_direction=up")


def test_search_presets_pick_the_optuna_sweeper(tmp_path: Path) -> None:
    default = compose_config([], tmp_path / "a")
    assert default.hydra.sweeper._target_.endswith("ValidatingSweeper")
    cli = compose_config(["hydra/sweeper=optuna"], tmp_path / "b")
    assert cli.hydra.sweeper._target_.endswith("OptunaSweeper")
    wd = compose_config(["hparams_search=weight_decay_lambda"], tmp_path / "c")
    assert (wd.hydra.sweeper.direction, wd.reg.name, wd.data.name) == (Direction.minimize, "l2", "synthetic")
    assert dict(wd.hydra.sweeper.params) == {"reg.lambd": "tag(log, interval(1e-2, 1000))"}
    dropout = compose_config(["hparams_search=dropout_rates"], tmp_path / "d")
    searched = (dropout.hydra.sweeper.direction, dropout.optimize_metric, dropout.reg.name)
    assert searched == (Direction.maximize, "test_acc", "dropout_scratch")
    assert set(dropout.hydra.sweeper.params) == {"reg.dropout1", "reg.dropout2"}


# ---- end to end: python train.py -m under each launcher and the Optuna sweeper ----------------------

ENV = {"PYTHONPATH": str(ROOT)}  # submitit's job processes import the package from here, not from an older install


def _sweep(tmp_path: Path, name: str, *args: str) -> Path:
    """The sweep over reg.lambd=0,3 run as a user runs it, in its own working dir with the default hydra.sweep.dir."""
    cwd = tmp_path / name
    cwd.mkdir()
    run_train(["-m", "reg.lambd=0,3", *TINY, *args], cwd=cwd, env=ENV)
    return the_sweep_dir(cwd, 2)


def _artifacts(sweep_dir: Path) -> dict[str, dict]:
    """Per job dir: its overrides, its number of event files, and its metrics without the wall time."""
    jobs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        metrics = json.loads((job / "metrics.json").read_text())
        metrics.pop("wall_s")
        metrics.pop("group_wall_s", None)  # timing, like wall_s
        jobs[job.name] = {
            "overrides": OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml")),
            "events": len(list(job.glob("events.out.tfevents.*"))),
            "metrics": metrics,
        }
    return jobs


def _summary(sweep_dir: Path) -> list[dict]:
    """summary.csv's rows without the wall times."""
    with open(sweep_dir / "summary.csv") as f:
        return [{k: v for k, v in row.items() if not k.endswith("wall_s")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sweep(tmp_path_factory.mktemp("basic"), "sweep")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_match_the_basic_launcher(basic_sweep: Path, tmp_path: Path, launcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parallel = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    sweep_dir = _sweep(tmp_path, launcher, f"hydra/launcher={launcher}", *parallel)
    expected = _artifacts(basic_sweep)
    assert sorted(expected) == ["reg.lambd=0", "reg.lambd=3"]
    assert all(job["events"] == 1 and job["metrics"]["status"] == "completed" for job in expected.values())
    assert _artifacts(sweep_dir) == expected  # CPU, same seeds: the same numbers to the last bit
    assert _summary(sweep_dir) == _summary(basic_sweep)
    assert len(_summary(sweep_dir)) == 2  # two jobs
    (sweep_dir / "summary.csv").unlink()
    assert run_summarize_script(monkeypatch, str(sweep_dir)) == 0  # scripts/summarize.py on the sweep's one dir
    assert _summary(sweep_dir) == _summary(basic_sweep)


@pytest.mark.slow
def test_optuna_study_finds_a_lambda(tmp_path: Path) -> None:
    """The weight-decay search preset, cut to 4 TPE trials in 2 batches of 2, each batch in 2 joblib processes: one
    sweep dir for all of them."""
    args = ["-m", "hparams_search=weight_decay_lambda", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "trainer.epochs=5"]
    run_train([*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], cwd=tmp_path, env=ENV)
    sweep_dir = the_sweep_dir(tmp_path, 4)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert 1e-2 <= results.best_params["reg.lambd"] <= 1000  # the preset's range
    rows = collect(sweep_dir)
    assert len(rows) == 4
    assert results.best_value == min(r["test_loss"] for r in rows)
    assert (sweep_dir / "summary.csv").exists()


def _bad_fashion(root: Path) -> Path:
    """Fashion-MNIST files that are there (so the pre-flight check passes) but aren't IDX: loading them fails."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"not an IDX file")
    return root


@pytest.mark.slow
def test_failed_and_diverged_trials_do_not_stop_the_study(tmp_path: Path, tiny_fashion_root: Path) -> None:
    """A search over good/bad data and a sane/huge learning rate, maximizing test accuracy: trials on the bad data
    fail, those with the huge rate diverge. A NaN return would crash hydra-optuna-sweeper; train.py returns None
    for them, which Optuna records as failed trials, and the study runs all its trials.

    A seeded TPE sampler, not the grid sampler: with optuna 2.10 the grid sampler calls ``Study.stop()`` once the
    grid is exhausted, which raises outside ``study.optimize`` (that is how hydra-optuna-sweeper drives it)."""
    sweep_dir = tmp_path / "study"
    bad = _bad_fashion(tmp_path / "bad")
    search = ["hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=8", "hydra.sweeper.direction=maximize"]
    space = [f"data.root=choice({tiny_fashion_root},{bad})", "optim.lr=choice(0.1,1e6)"]
    small = ["+experiment=dropout", "model.hidden1=16", "model.hidden2=16", "trainer.epochs=3", "optimize_metric=test_acc"]
    dirs = [f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"]  # data.root stays out of the default job dir name
    proc = run_train(["-m", *search, *space, *small, *dirs], cwd=tmp_path, env=ENV, check=False)
    output = proc.stdout + proc.stderr
    rows = collect(sweep_dir)
    assert len(rows) == 8, output
    for job in collect_jobs(sweep_dir):  # data.root is an excluded key: not in the job's name, but in its overrides
        overrides = " ".join(job.overrides)
        expected = "failed" if f"data.root={bad}" in overrides else "diverged" if "optim.lr=1000000.0" in overrides else "completed"
        assert job.metrics["status"] == expected, (job, output)
    assert {r["status"] for r in rows} == {"completed", "diverged", "failed"}
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_params == {"data.root": str(tiny_fashion_root), "optim.lr": 0.1}
    assert results.best_value == max(r["test_acc"] for r in rows if r["status"] == "completed")
    failed = sum(r["status"] != "completed" for r in rows)
    assert output.count("Failed experiment") == failed
    assert f"{sum(r['status'] == 'failed' for r in rows)} of 8 jobs failed" in output


@pytest.mark.parametrize(
    "value",
    ["plain", "true", "no", "1e-3", "0.5", "123", "null", "", "a: b", "#x", "ünïcode λ", "x" * 120, "multi\nline", "'q'"],
)
def test_launcher_yaml_is_omegaconfs(value: str) -> None:
    """The .hydra files the vectorized launcher writes (libyaml) have the bytes OmegaConf.to_yaml gives."""
    from hydra_plugins.regularization_launcher.compose import to_yaml

    cfg = OmegaConf.create({"s": value, "n": {"list": [value, 1, 2.5, None, True], "empty": [], "nested": {"e": {}}}, "f": 1e-8})
    assert to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    assert to_yaml(OmegaConf.create([value, "b"])) == OmegaConf.to_yaml(OmegaConf.create([value, "b"]))


def test_hydra_view_is_what_set_config_makes(tmp_path: Path) -> None:
    """The job's view of its hydra config: what HydraConfig.set_config gives, without the deep copy."""
    from hydra_plugins.regularization_launcher import hydra_view

    config = compose_config(["hydra.job.name=${seed}_job"], tmp_path)
    HydraConfig.instance().set_config(copy.deepcopy(config))
    want = HydraConfig.instance().cfg
    view = hydra_view(config)
    assert OmegaConf.to_yaml(view) == OmegaConf.to_yaml(want)
    assert view.hydra is config.hydra and OmegaConf.is_readonly(view.hydra)
    assert view.hydra.job.name == want.hydra.job.name == "0_job"  # an interpolation into the task's keys resolves


@pytest.mark.parametrize("path", ["outputs/multirun/2026-12-05_06-33-40_11977", "it's", "a\\b", "end\\", "${x}", "a\\${x}", "sp ace,=[]()"])
def test_the_pinned_sweep_dir_reads_back_unchanged(tmp_path: Path, path: str) -> None:
    """Every job composes its config with the sweep dir the sweep's process resolved, as a quoted hydra override."""
    from hydra_plugins.regularization_sweeper import quoted

    assert compose_config([f"hydra.sweep.dir={quoted(path)}"], tmp_path).hydra.sweep.dir == path
