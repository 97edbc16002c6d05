"""What running on CUDA needs beyond moving tensors: cuBLAS's deterministic workspace, errors that poison the
process's CUDA context, out-of-memory advice, and giving cached memory back when a job ends."""

from __future__ import annotations

import contextlib
import os
import threading
import traceback

import torch

from regularization.config import ConfigError

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
# The values with which cuBLAS is deterministic (PyTorch's "Reproducibility" notes): 8 buffers of 4 MiB or of 16 KiB.
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")
# Messages of CUDA errors after which the context is unusable: every later CUDA call in the process fails too.
STICKY_CUDA_ERRORS = (
    "device-side assert",
    "illegal memory access",
    "CUDA error: an illegal",
    "unspecified launch failure",
    "misaligned address",
    "CUDA error: uncorrectable ECC",
    "CUBLAS_STATUS_EXECUTION_FAILED",  # a cuBLAS kernel that failed to run: the context is as broken
)


def use_deterministic_workspace() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG unless the user did. cuBLAS reads it once per process, at the first cuBLAS call,
    so this must run before any CUDA work (the package does it on import): then ``trainer.deterministic=true`` works
    in any job of a sweep, even after jobs without it."""
    os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACES[0])


def check_deterministic_workspace(deterministic: bool, device: torch.device) -> None:
    """A CUDA job with ``trainer.deterministic=true`` needs one of cuBLAS's deterministic workspaces: a user's
    other value would make its first matmul raise, after training started."""
    value = os.environ.get(CUBLAS_WORKSPACE)
    if deterministic and device.type == "cuda" and value not in DETERMINISTIC_WORKSPACES:
        raise ConfigError(
            f"Invalid config: trainer.deterministic: true needs {CUBLAS_WORKSPACE}={' or '.join(DETERMINISTIC_WORKSPACES)} "
            f"on CUDA, but the environment sets {value!r}; unset it (the harness then sets {DETERMINISTIC_WORKSPACES[0]}) "
            "or use one of those"
        )


class StickyCudaError(SystemExit):
    """A CUDA error that broke the process's CUDA context: the sweep stops, since every later job would fail too.

    A SystemExit, not an Exception: Hydra's launchers record an Exception as one failed job and go on to the next.
    Python prints its message (no traceback) and exits 1.
    """


def is_sticky_cuda_error(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and any(s in str(err) for s in STICKY_CUDA_ERRORS)


def sticky_cuda_error(err: BaseException, where: str) -> StickyCudaError:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StickyCudaError(
        f"{first_line} (in {where})\n"
        "This CUDA error leaves the process's CUDA context unusable, so the sweep stops here: its later jobs would all fail. "
        "Rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing kernel; a rerun into the same sweep dir skips the completed jobs."
    )


# Evaluation runs in chunks of engine.EVAL_BATCH examples, whatever data.batch_size is.
EVALUATION_REMEDY = "evaluation runs in fixed chunks, not in data.batch_size batches: free the GPU of other processes"


def failure_message(err: BaseException, remedy: str) -> str:
    """The error metrics.json records (``ExcType: message``); out of memory, it adds what to shrink (``remedy``),
    or, when evaluation ran out (a frame named ``evaluate``), what evaluation's memory depends on."""
    message = "".join(traceback.format_exception_only(err)).strip()
    if not isinstance(err, torch.OutOfMemoryError):
        return message
    if any(frame.name == "evaluate" for frame in traceback.extract_tb(err.__traceback__)):
        rest = [r for r in remedy.split(" or ") if "batch_size" not in r]
        return f"{message}\nOut of GPU memory during evaluation: {EVALUATION_REMEDY}{', or try ' + ' or '.join(rest) if rest else ''}."
    return f"{message}\nOut of GPU memory: try {remedy}."


# Set while threads of this process train on several GPUs (parallel.run_per_device): torch.cuda.empty_cache()
# empties every GPU's cache, so one group's end would free the blocks of groups still training on the others and
# make them allocate again; the cache is emptied once they have all ended.
several_gpus_training = threading.Event()


def release_cached_memory(device: torch.device) -> None:
    """Give the job's cached CUDA blocks back to the driver once its tensors are gone, so that the next job (or
    another process on the GPU) can use them. Nothing on a CPU job: CUDA is not touched; nothing while other
    GPUs of this process train (``several_gpus_training``)."""
    if device.type == "cuda" and torch.cuda.is_initialized() and not several_gpus_training.is_set():
        with contextlib.suppress(RuntimeError):  # a context broken by a sticky error (being reported) frees nothing
            torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the job's (or group's) peak GPU memory; nothing on a CPU job."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device, key: str) -> dict[str, int]:
    """``{key: bytes}``: the most GPU memory the job's tensors held at once since ``reset_peak_memory`` (PyTorch's
    allocator; the cache it keeps beyond that and the CUDA context are not counted); empty on a CPU job."""
    return {key: torch.cuda.max_memory_allocated(device)} if device.type == "cuda" else {}
