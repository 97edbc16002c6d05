"""Jobs that run side by side: which GPU each one takes, and how many CPU threads; many jobs in one process.

Hydra's joblib and submitit launchers run a sweep's jobs as separate processes, several at once.
Left alone, every one of them would pick cuda:0 and start as many torch threads as the machine has
cores. Here job k of a sweep (``hydra.job.num``) takes GPU k mod N, and torch's threads are cut to
the job's share of the cores.

The vectorized launcher and the sweep summary make thousands of small objects per job in one process
(configs, plots), and Python's cyclic garbage collector would rescan every object the process holds
(torch, matplotlib, Hydra) many times over while they do: ``long_lived_heap_frozen`` spares it that.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from regularization.config import ConfigError
from regularization.gpu import StickyCudaError, release_cached_memory, several_gpus_training
from regularization.logging import log


def gpu_for_job(job_num: int, n_gpus: int) -> str:
    """The device ``auto`` means for job k: cuda:(k mod N) with N > 1 GPUs, cuda with one, cpu with none."""
    if n_gpus == 0:
        return "cpu"
    return f"cuda:{job_num % n_gpus}" if n_gpus > 1 else "cuda"


def is_submitit(target: str) -> bool:
    """hydra-submitit-launcher's launchers, or this project's subclasses of them (submitit_groups)."""
    return ".hydra_submitit_launcher." in target or ".submitit_groups." in target


def runs_jobs_side_by_side(launcher: DictConfig) -> bool:
    """Whether a Hydra launcher runs a sweep's jobs at once, each in a process of its own: joblib's and submitit's.
    Only then does spreading jobs over GPUs gain anything; a launcher that runs them one after another in one
    process would hold a CUDA context and cached memory on every GPU it visited."""
    target = str(launcher.get("_target_", ""))
    return target.endswith("JoblibLauncher") or is_submitit(target)


# The GPU this process's first spread job took: a joblib worker (loky reuses them) keeps it for its later jobs.
_process_gpu: dict[str, str] = {}


def job_device(name: str) -> str:
    """``device`` for this Hydra job: ``auto`` spreads a sweep's jobs over the visible GPUs under a launcher that
    runs them side by side, and keeps them all on the first GPU otherwise; other names stay.

    Spread, a process's first job takes GPU k mod N (k: its job number) and the process keeps that GPU for any
    later job: joblib's workers are reused, and by job number alone a worker would hop GPUs (a CUDA context on
    each) and two workers could share one GPU while another idles. submitit's jobs each have a process."""
    if name != "auto":
        return name
    spread = HydraConfig.initialized() and runs_jobs_side_by_side(HydraConfig.get().launcher)
    if not spread:
        return gpu_for_job(0, torch.cuda.device_count())
    if "gpu" not in _process_gpu:
        _process_gpu["gpu"] = gpu_for_job(OmegaConf.select(HydraConfig.get(), "job.num", default=0) or 0, torch.cuda.device_count())
    return _process_gpu["gpu"]


def group_devices(names: list[str], n_gpus: int) -> list[str]:
    """Where each group of the vectorized launcher trains, given each group's ``device``: the groups on ``auto``
    take cuda:(g mod N) in turn (g counts those groups), as joblib's jobs take GPU k mod N; the others stay."""
    auto = iter(range(len(names)))
    return [gpu_for_job(next(auto), n_gpus) if name == "auto" else name for name in names]


def check_compile_threads(devices: list[torch.device], compiled: list[bool]) -> None:
    """ConfigError, naming trainer.compile, for compiled groups that would train on several GPUs in threads of one
    process: the CUDA-graph trees of mode reduce-overhead share one process-wide step counter
    (``torch.compiler.cudagraph_mark_step_begin``), so one thread's step could free the outputs another thread's
    backward still needs. A process per GPU is the safe way: vectorized_local gives each group its own."""
    gpus = {d for d in devices if d.type == "cuda"}
    if len(gpus) > 1 and any(c for d, c in zip(devices, compiled, strict=True) if d.type == "cuda"):
        raise ConfigError(
            f"Invalid config: trainer.compile: true under hydra/launcher=vectorized on {len(gpus)} GPUs would share CUDA graphs "
            "between the GPUs' threads; use hydra/launcher=vectorized_local (a process per group), one GPU (device=cuda:0), "
            "or trainer.compile=false"
        )


def run_per_device(tasks: list[tuple[torch.device, Callable[[], None]]], stop: threading.Event) -> None:
    """Run the tasks: one device's in order, different devices' at the same time, a thread per device (CUDA
    kernels run without the GIL, so one process drives every GPU). With one device, all run in this thread.

    A task that raises (a sticky CUDA error, say) sets ``stop``, as Ctrl-C does, and the other devices' threads
    start no further task; tasks may watch ``stop`` to end early. Once every thread has ended, the error that
    caused the stop is raised here (``error_rank``: a sticky CUDA error before the interrupts it caused on the
    other devices); after Ctrl-C, a task's error or else KeyboardInterrupt.
    """
    queues: dict[torch.device, list[Callable[[], None]]] = {}
    for device, task in tasks:
        queues.setdefault(torch.device(device.type, device.index or 0) if device.type == "cuda" else device, []).append(task)
    if len(queues) <= 1:
        for _, task in tasks:
            task()
        return

    def drain(device: torch.device, queue: list[Callable[[], None]]) -> None:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # the thread's current GPU
            for task in queue:
                if stop.is_set():
                    return
                try:
                    task()
                except BaseException:
                    stop.set()
                    raise

    interrupted = False
    several_gpus_training.set()  # no group empties the CUDA caches while the others train; done once, below
    try:
        with ThreadPoolExecutor(max_workers=len(queues), thread_name_prefix="device") as pool:
            futures = [pool.submit(drain, device, queue) for device, queue in queues.items()]
            try:
                wait(futures)
            except KeyboardInterrupt:  # only the main thread receives it: the others are told through ``stop``
                stop.set()
                interrupted = True
                wait(futures)
    finally:
        several_gpus_training.clear()
        release_cached_memory(next((d for d in queues if d.type == "cuda"), torch.device("cpu")))
    errors = sorted((e for e in (f.exception() for f in futures) if e is not None), key=error_rank)
    if errors:
        raise errors[0]
    if interrupted:
        raise KeyboardInterrupt


def error_rank(err: BaseException) -> int:
    """Which of the device threads' errors to raise: a sticky CUDA error (the cause: the sweep must stop and say
    why) before any other error, and those before the interrupts that ``stop`` caused on the other devices (a
    group's exit 130, KeyboardInterrupt)."""
    if isinstance(err, StickyCudaError):
        return 0
    interrupt = isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and err.code == 130)
    return 2 if interrupt else 1


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def concurrent_jobs(n_jobs: int | None, n_cpus: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs``: n if n > 0, else n_cpus + 1 + n (−1: all cores)."""
    if not n_jobs:
        return 1
    return n_jobs if n_jobs > 0 else max(1, n_cpus + 1 + n_jobs)


def threads_per_job(n_cpus: int, n_concurrent: int) -> int:
    """Each of n_concurrent jobs gets ⌊n_cpus / n_concurrent⌋ threads, at least one."""
    return max(1, n_cpus // max(1, n_concurrent))


def launcher_threads(launcher: DictConfig, n_cpus: int) -> int | None:
    """Torch threads per job under this Hydra launcher config, or None to keep torch's default.

    joblib: the cores shared among the jobs it runs at once; submitit: ``cpus_per_task`` when set
    (SLURM's allocation for the job, also honoured by submitit_local's concurrent jobs).
    """
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        return threads_per_job(n_cpus, concurrent_jobs(launcher.get("n_jobs"), n_cpus))
    if is_submitit(target) and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


def set_job_threads() -> None:
    """Cut torch's intra-op threads to this job's share of the cores when jobs run side by side."""
    if not HydraConfig.initialized():
        return
    threads = launcher_threads(HydraConfig.get().launcher, available_cpus())
    if threads is not None and threads != torch.get_num_threads():
        log.info("%d torch thread(s) for this job (jobs run in parallel)", threads)
        torch.set_num_threads(threads)


@contextmanager
def long_lived_heap_frozen() -> Iterator[None]:
    """The objects alive on entry left out of garbage collections until exit (``gc.freeze``).

    Objects made inside the block are collected as usual; only the rescans of the heap that was already
    there are skipped (on the 64-job λ sweep they took a quarter of the vectorized launcher's time).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
