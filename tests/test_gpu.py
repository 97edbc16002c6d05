"""CUDA paths without a GPU: torch.cuda's functions monkeypatched, device counts faked, CUDA errors raised on purpose."""

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import hydra
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from regularization import engine, vectorized
from regularization.checkpoint import CHECKPOINT, generator_state, restore_generator, rng_states, set_rng_states
from regularization.config import ConfigError
from regularization.data import minibatches
from regularization.engine import preflight, train
from regularization.gpu import StickyCudaError, sticky_cuda_error, use_deterministic_workspace
from regularization.parallel import group_devices, run_per_device
from regularization.progress import SINGLE_GROUP, SweepPosition
from regularization.regularizers import WeightPenalty
from regularization.vectorized import member_batches, train_group
from tests.conftest import CONF, ROOT, compose_config

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
def test_the_vectorized_launcher_honours_deterministic(tmp_path, deterministic):
    overrides = ["+experiment=weight_decay", "trainer.epochs=1", f"trainer.deterministic={deterministic}"]
    cfgs = [compose_config([*overrides, f"reg.lambd={v}"], tmp_path / str(v)) for v in (0, 1)]
    torch.use_deterministic_algorithms(not deterministic)  # as an earlier job of the process left it
    try:
        train_group(cfgs, [tmp_path / "0", tmp_path / "1"], CPU)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        torch.use_deterministic_algorithms(False)


# ---- placement: every GPU used, jobs one after another stay on one ------------------------------------------


@pytest.mark.parametrize(
    ("names", "n_gpus", "expected"),
    [
        (["auto"] * 5, 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
        (["auto"] * 3, 1, ["cuda"] * 3),  # one GPU: the groups train one after another on it
        (["auto", "cpu", "auto", "cuda:3"], 4, ["cuda:0", "cpu", "cuda:1", "cuda:3"]),  # explicit devices stay
        (["auto"] * 2, 0, ["cpu", "cpu"]),
    ],
)
def test_vectorized_groups_take_gpu_g_mod_n(names, n_gpus, expected):
    assert group_devices(names, n_gpus) == expected


def fake_gpus(monkeypatch, n: int) -> None:
    """n visible GPUs as far as device counts and the per-thread current device go."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())


def test_tasks_of_different_gpus_run_at_once_and_of_one_gpu_in_order(monkeypatch):
    fake_gpus(monkeypatch, 2)
    both_running = threading.Barrier(2, timeout=30)  # passes only while a task of each GPU runs at the same time
    order: list[str] = []

    def task(name: str) -> Callable[[], None]:
        return lambda: (both_running.wait(), order.append(name))

    gpu0, gpu1 = torch.device("cuda:0"), torch.device("cuda:1")
    run_per_device([(gpu0, task("a0")), (gpu1, task("b0")), (gpu0, task("a1")), (gpu1, task("b1"))], threading.Event())
    assert [n for n in order if n[0] == "a"] == ["a0", "a1"] and [n for n in order if n[0] == "b"] == ["b0", "b1"]


def test_a_task_that_stops_the_sweep_stops_the_other_gpus(monkeypatch):
    fake_gpus(monkeypatch, 2)
    stop, ran = threading.Event(), []

    def sticky() -> None:
        raise sticky_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"), "a group")

    def slow() -> None:
        stop.wait(30)  # the other GPU's group, which watches ``stop`` between epochs
        ran.append("slow")

    gpu0, gpu1 = torch.device("cuda:0"), torch.device("cuda:1")
    with pytest.raises(StickyCudaError, match="illegal memory access"):
        run_per_device([(gpu0, sticky), (gpu1, slow), (gpu1, lambda: ran.append("never"))], stop)
    assert "never" not in ran  # its later task never starts (its first may not have either)


def test_a_sticky_error_on_one_gpu_wins_over_the_interrupt_it_causes_on_another(monkeypatch):
    """Issue 21, item 7: the sticky error on cuda:1 sets ``stop``, cuda:0's group ends as interrupted (exit 130,
    as train_group does); the sweep must report the sticky error, not "interrupted ... to resume"."""
    fake_gpus(monkeypatch, 2)
    stop = threading.Event()

    def interrupted() -> None:
        stop.wait(30)
        raise SystemExit(130)

    def sticky() -> None:
        raise sticky_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"), "a group")

    with pytest.raises(StickyCudaError, match="illegal memory access"):
        run_per_device([(torch.device("cuda:0"), interrupted), (torch.device("cuda:1"), sticky)], stop)


def task(cfg) -> None:
    """train.py's task, for an in-process multirun (the vectorized launcher does not call it)."""


def test_the_vectorized_launcher_spreads_groups_over_gpus_and_trains_them_at_once(tmp_path, monkeypatch):
    """With 2 GPUs (faked) and 4 groups, groups 0 and 2 train on cuda:0 and 1 and 3 on cuda:1, a group of each GPU at
    the same time. The training itself runs on the CPU here."""
    fake_gpus(monkeypatch, 2)
    both_running = threading.Barrier(2, timeout=60)
    placed: dict[float, str] = {}
    real_train_group = vectorized.train_group

    positions: dict[float, SweepPosition] = {}

    def train_group_on_cpu(cfgs, dirs, device, hydra_cfgs=None, position=SINGLE_GROUP, members=None):
        placed[cfgs[0].reg.lambd] = str(device)
        positions[cfgs[0].reg.lambd] = position
        both_running.wait()
        return real_train_group(cfgs, dirs, CPU, hydra_cfgs, position, members)

    monkeypatch.setattr(vectorized, "train_group", train_group_on_cpu)
    sweep = tmp_path / "sweep"
    args = ["-m", "+experiment=weight_decay", "reg.lambd=0,1,2,3", "trainer.epochs=2", "hydra/launcher=vectorized"]
    monkeypatch.setattr(sys, "argv", ["train.py", *args, "hydra.launcher.max_members=1", f"hydra.sweep.dir={sweep}"])
    GlobalHydra.instance().clear()
    try:
        hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(task)()
    finally:
        GlobalHydra.instance().clear()
    assert placed == {0.0: "cuda:0", 1.0: "cuda:1", 2.0: "cuda:0", 3.0: "cuda:1"}
    # The sweep's ETA counts the groups after this one on its GPU (2 epochs each): the other GPU's train alongside.
    assert positions == {0.0: SweepPosition(1, 4, 2), 1.0: SweepPosition(2, 4, 2), 2.0: SweepPosition(3, 4, 0), 3.0: SweepPosition(4, 4, 0)}
    assert sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")) == ["completed"] * 4


def test_a_jobs_cached_cuda_memory_is_released_at_its_end(make_cfg, monkeypatch):
    released = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    monkeypatch.setattr(engine, "train", lambda cfg, device, out_dir: 0.5)
    monkeypatch.setattr(engine, "preflight", lambda cfg: torch.device("cuda"))
    assert engine.run(make_cfg()) == 0.5
    assert released == [True]
    monkeypatch.setattr(engine, "preflight", lambda cfg: CPU)
    monkeypatch.setattr(torch.cuda, "empty_cache", forbidden)  # a CPU job leaves CUDA alone
    assert engine.run(make_cfg()) == 0.5


# ---- sticky CUDA errors stop the sweep; out of memory fails one job -----------------------------------------

DEVICE_ASSERT = "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported"


def multirun_cfg(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.mode = "MULTIRUN"
    HydraConfig.instance().set_config(cfg)
    return cfg


def raising(err: BaseException) -> Callable[..., None]:
    def fail(*args, **kwargs):
        raise err

    return fail


def test_a_sticky_cuda_error_stops_the_sweep(make_cfg, monkeypatch):
    """A device-side assert leaves the process's CUDA context broken: the job is recorded failed and the sweep stops
    (a SystemExit, which Hydra's launchers do not catch as one failed job), saying why."""
    cfg = multirun_cfg(make_cfg)
    monkeypatch.setattr(engine, "fit", raising(RuntimeError(DEVICE_ASSERT)))
    with pytest.raises(StickyCudaError, match="(?s)device-side assert.*the sweep stops") as info:
        engine.run(cfg)
    assert not isinstance(info.value, Exception)
    metrics = json.loads((Path(cfg.hydra.runtime.output_dir) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "device-side assert" in metrics["error"]


def test_out_of_memory_fails_one_job_and_says_what_to_shrink(make_cfg, monkeypatch):
    cfg = multirun_cfg(make_cfg)
    monkeypatch.setattr(engine, "fit", raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    assert math.isnan(engine.run(cfg))  # the sweep goes on
    metrics = json.loads((Path(cfg.hydra.runtime.output_dir) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "out of memory" in metrics["error"] and "data.batch_size" in metrics["error"]


def test_a_vectorized_group_out_of_memory_or_with_a_sticky_error(make_cfg, monkeypatch):
    cfgs = [make_cfg("reg.lambd=0"), make_cfg("reg.lambd=1")]
    dirs = [Path(c.hydra.runtime.output_dir) for c in cfgs]
    monkeypatch.setattr(vectorized, "fit_group", raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")))
    assert all(math.isnan(v) for v in vectorized.train_group(cfgs, dirs, CPU))
    for d in dirs:
        error = json.loads((d / "metrics.json").read_text())["error"]
        assert "hydra.launcher.max_members" in error and "data.batch_size" in error
    monkeypatch.setattr(vectorized, "fit_group", raising(RuntimeError("CUDA error: an illegal memory access was encountered")))
    with pytest.raises(StickyCudaError, match="illegal memory access"):
        vectorized.train_group(cfgs, dirs, CPU)
    assert all(json.loads((d / "metrics.json").read_text())["status"] == "failed" for d in dirs)


# ---- the hot loop --------------------------------------------------------------------------------------------


def test_member_batches_are_the_single_runs_batches():
    """One epoch's permutations drawn at once per seed: member k's batches are what its seed's single run draws."""
    seeds, which = [3, 5], torch.tensor([0, 1, 1, 0])
    stacked = [torch.Generator().manual_seed(s) for s in seeds]
    alone = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(3):  # epochs
        batches = member_batches(23, 5, stacked, which)
        singles = [list(minibatches(23, 5, g)) for g in alone]
        assert len(batches) == len(singles[0]) == 5
        for b, idx in enumerate(batches):
            assert all(torch.equal(idx[k], singles[s][b]) for k, s in enumerate(which.tolist()))


@pytest.mark.parametrize("impl", ["penalty", "weight_decay"])
def test_the_penalty_is_computed_once_per_step(make_cfg, monkeypatch, impl):
    """λ·Ω once per step in both engines: the loss's term and the logged objective are one value."""
    calls = {"single": 0, "stacked": 0}
    for cls, name in ((WeightPenalty, "single"), (vectorized.StackedPenalty, "stacked")):
        monkeypatch.setattr(cls, "value", counting(cls.value, calls, name))
    overrides = ["+experiment=weight_decay", "trainer.epochs=1", "reg.lambd=1", f"reg.impl={impl}"]  # 20 examples, batch 5
    cfg = make_cfg(*overrides)
    train(cfg, CPU, Path(cfg.hydra.runtime.output_dir))
    cfgs = [make_cfg(*overrides), make_cfg(*overrides, "reg.lambd=2")]
    vectorized.train_group(cfgs, [Path(c.hydra.runtime.output_dir) for c in cfgs], CPU)
    assert calls == {"single": 4, "stacked": 4}


def counting(method: Callable, calls: dict, name: str) -> Callable:
    def counted(self, *args, **kwargs):
        calls[name] += 1
        return method(self, *args, **kwargs)

    return counted


# ---- issue 21, item 10 ------------------------------------------------------------------------------------


def test_a_failed_cublas_kernel_is_sticky():
    from regularization.gpu import is_sticky_cuda_error

    err = RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`")
    assert is_sticky_cuda_error(err)


def evaluate() -> None:
    """Stands for engine.evaluate / vectorized.evaluate: the frame's name is what failure_message reads."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_in_evaluation_does_not_suggest_a_smaller_batch_size():
    from regularization.gpu import failure_message

    try:
        evaluate()
    except torch.OutOfMemoryError as err:
        single = failure_message(err, "a smaller data.batch_size")
        group = failure_message(err, "a smaller hydra.launcher.max_members or data.batch_size")
    assert "during evaluation" in single and "batch_size" not in single.split("\n", 1)[1].replace("data.batch_size batches", "")
    assert group.endswith("or try a smaller hydra.launcher.max_members.")
    try:
        raise torch.OutOfMemoryError("CUDA out of memory.")
    except torch.OutOfMemoryError as err:
        assert failure_message(err, "a smaller data.batch_size").endswith("try a smaller data.batch_size.")  # training


def test_bf16_is_checked_on_the_jobs_gpu_without_emulation(monkeypatch):
    """cuda:0 is an A100, cuda:1 a V100 (bf16 only emulated); the current device is cuda:0."""
    from regularization.step import check_precision

    current = [0]

    @contextlib.contextmanager
    def device(d):
        saved, current[0] = current[0], torch.device(d).index
        yield
        current[0] = saved

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: current[0] == 0 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: ["A100", "V100"][torch.device(d).index])
    check_precision("bf16-mixed", torch.device("cuda:0"))
    with pytest.raises(ConfigError, match="trainer.precision: V100 has no native bf16"):
        check_precision("bf16-mixed", torch.device("cuda:1"))


def test_checkpoint_cadence_scales_with_the_time_a_checkpoint_takes_to_write():
    """A 256-member group's checkpoint (276 MB; 830 MB with Adam) took its write and fsync after nearly every epoch:
    here each epoch takes 1 s and each write 2 s, and checkpoint_min_interval_s is the default 1 s."""
    from regularization.checkpoint import CheckpointCadence
    from tests.test_reliability import FakeClock

    clock = FakeClock()
    cadence = CheckpointCadence(every=1, min_interval_s=1.0, epochs=200, clock=clock)
    written = []
    for epoch in range(1, 201):
        clock.now += 1.0
        if cadence.due(epoch):
            written.append(epoch)
            clock.now += 2.0
            cadence.saved()
    assert 2.0 * len(written) <= 0.06 * clock.now and written[-1] == 200  # at most ~5% of the run, and the last epoch
    asked = CheckpointCadence(every=1, min_interval_s=0.0, epochs=3, clock=clock)
    assert [e for e in (1, 2, 3) if asked.due(e) and (asked.saved() or True)] == [1, 2, 3]  # 0: every epoch, as asked


def test_a_group_ending_on_one_gpu_leaves_the_other_gpus_caches_alone(monkeypatch):
    """torch.cuda.empty_cache() empties every GPU's cache: a group's end must not free the blocks of a group still
    training on another GPU. The caches are emptied once, when every GPU's groups have ended."""
    from regularization.gpu import release_cached_memory

    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    emptied: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(threading.current_thread().name))
    both_running = threading.Barrier(2, timeout=30)

    def group(device: torch.device) -> Callable[[], None]:
        return lambda: (both_running.wait(), release_cached_memory(device))  # as train_group ends

    gpu0, gpu1 = torch.device("cuda:0"), torch.device("cuda:1")
    run_per_device([(gpu0, group(gpu0)), (gpu1, group(gpu1))], threading.Event())
    assert emptied == [threading.current_thread().name]
    release_cached_memory(gpu0)  # one GPU, or one job after another: emptied at the job's end, as before
    assert len(emptied) == 2
