"""The training step's arithmetic and compilation: ``trainer.precision`` and ``trainer.compile``.

- ``32``: everything in fp32; the step is the plain eager one.
- ``bf16-mixed``: forward passes (training and evaluation) run under ``torch.autocast(dtype=bfloat16)``, so the
  matmuls (linear, baddbmm) take bf16 inputs and accumulate in fp32. The master weights, their gradients, the
  optimizer state, the losses and the metrics stay fp32: the logits are cast back to fp32 before the loss.
- ``16-mixed``: the same with float16, CUDA only, and dynamic loss scaling (torch.amp.GradScaler): the objective
  is multiplied by S before backward, the gradients divided by S before the step, a step whose gradients hold
  an inf or NaN is skipped and S halved, and S doubles after 2000 finite steps. S goes into the checkpoint.

``compile``: the step's forward pass and loss (and, through AOTAutograd, its backward) run as one graph
compiled by torch.compile; on CUDA in mode ``reduce-overhead``, which replays the step as a CUDA graph (the
batch shapes are static: one graph for the full batches, one for an epoch's last, shorter batch). A graph
depends on the model's structure, not on its values: the dropout rates and the weights are the graph's inputs, so
the jobs of a sweep in one process that differ only in them (rates, λ, lr, seed) share their graphs, compiled
once (under reduce-overhead each job records its CUDA graphs again, for its own weights' addresses).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from regularization.config import ConfigError
from regularization.logging import log

PRECISIONS = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# The C compilers Triton (torch.compile's CUDA backend) builds its kernel launchers with, in its order of search.
TRITON_CC = ("clang", "gcc", "cc")


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError, naming trainer.precision, for a precision this device cannot train in."""
    allowed = ", ".join(PRECISIONS)
    if precision not in PRECISIONS:
        raise ConfigError(f"Invalid config: trainer.precision: got {precision!r}, allowed: {allowed}")
    if precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"Invalid config: trainer.precision: 16-mixed needs a CUDA device, not {device}; on CPU use bf16-mixed or 32")
    if precision == "bf16-mixed" and device.type == "cuda" and not bf16_native(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"Invalid config: trainer.precision: {name} has no native bf16 (before Ampere); use 16-mixed or 32")


def bf16_native(device: torch.device) -> bool:
    """Whether the job's GPU computes in bf16 itself. torch.cuda.is_bf16_supported() asks the current GPU, not the
    job's, and by default counts emulation (GPUs before Ampere), where bf16 runs slower than fp32."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def set_matmul_precision(name: str) -> None:
    """``trainer.matmul_precision`` for this process's fp32 matmuls (torch.set_float32_matmul_precision): highest
    keeps fp32; high lets Ampere and later GPUs use TF32 tensor cores. A process-wide setting, as
    trainer.deterministic is: the vectorized launcher never trains groups that differ in it at the same time."""
    if torch.get_float32_matmul_precision() != name:
        torch.set_float32_matmul_precision(name)


def check_compile(device: torch.device) -> None:
    """ConfigError, naming trainer.compile, when torch.compile cannot run here: an unsupported Python or platform,
    or no compiler for its backend (a C++ compiler for CPU code, Triton and a C compiler for CUDA code)."""
    remedy = "or set trainer.compile=false"
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as err:
        raise ConfigError(f"Invalid config: trainer.compile: torch.compile does not run here ({err}); {remedy}") from None
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            message = "no C++ compiler found (torch.compile builds CPU kernels with g++; install it or set CXX)"
            raise ConfigError(f"Invalid config: trainer.compile: {message}, {remedy}") from None
    else:
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(f"Invalid config: trainer.compile: Triton is not installed or does not support {device}; {remedy}")
        if not any(shutil.which(cc) for cc in TRITON_CC):
            raise ConfigError(f"Invalid config: trainer.compile: no C compiler found (Triton needs gcc or clang), {remedy}")


Loss = Callable[..., torch.Tensor]  # (X, y, *inputs) → the batch's data loss


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process: a step that raised it compiled."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


class Step:
    """One training step's pieces: ``loss(X, y)`` (the forward pass under autocast, compiled if asked),
    ``backward(objective)`` and ``update(optimizer)`` (loss-scaled under 16-mixed).

    ``forward_loss(X, y, *inputs)`` must return the data loss in fp32 (cast the logits with ``.float()``, a no-op
    in fp32). ``compile_s`` sums the wall time of the steps in which dynamo compiled a graph (the first step of a
    new batch shape, unless an earlier job's graph serves it; forward and backward, compute included: one step,
    milliseconds, against seconds of compiling).
    """

    def __init__(self, forward_loss: Loss, precision: str, compile: bool, device: torch.device) -> None:
        self.device, self.dtype = device, PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self.compiled = compile
        self.fn: Loss = forward_loss
        self.eager = forward_loss
        if compile:
            # Past dynamo's recompile limit, dynamo raises rather than fall back in silence (``loss`` handles it).
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            self.fn = torch.compile(forward_loss, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
        self.compile_s = 0.0
        self.compiling_since: float | None = None
        self.restarted = False  # whether this step has started dynamo afresh (at the recompile limit)

    def autocast(self) -> AbstractContextManager:
        """The precision's autocast region (nothing in fp32), for the forward passes of training and evaluation."""
        if self.dtype is torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *inputs: Any) -> torch.Tensor:
        """The forward pass and loss of a batch; ``inputs`` go to forward_loss after X and y (the vectorized step's
        dropout uniforms). A step that compiles a graph starts counting ``compile_s`` (up to its backward's end)."""
        if not self.compiled:
            with self.autocast():
                return self.fn(X, y, *inputs)
        if self.device.type == "cuda":  # a new step: the CUDA graphs may reuse the last step's buffers
            torch.compiler.cudagraph_mark_step_begin()
        start, graphs = time.perf_counter(), compiled_graphs()
        with self.autocast():
            try:
                out = self.fn(X, y, *inputs)
            except torch._dynamo.exc.FailOnRecompileLimitHit as err:
                out = self.restart(X, y, inputs, err)
        if compiled_graphs() != graphs and self.compiled:
            self.compiling_since = start
        return out

    def restart(self, X: torch.Tensor, y: torch.Tensor, inputs: tuple, err: Exception) -> torch.Tensor:
        """At dynamo's recompile limit. The first time, the graphs of the process's earlier jobs (other models, batch
        shapes) may fill its cache: dynamo starts afresh and compiles this job's graph again. The second time, this
        job alone needs more graphs than the limit: the step runs eagerly from here, said in the log."""
        if not self.restarted:
            self.restarted = True
            log.info("trainer.compile: dynamo's cache holds earlier jobs' graphs up to its recompile limit; starting it afresh")
            torch._dynamo.reset()
            with contextlib.suppress(torch._dynamo.exc.FailOnRecompileLimitHit):  # not after a fresh start, but never a crash
                return self.fn(X, y, *inputs)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("trainer.compile: torch.compile reached its recompile limit (%s); the training step runs eagerly from here", first_line)
        self.fn, self.compiled, self.compiling_since = self.eager, False, None
        return self.fn(X, y, *inputs)

    def backward(self, objective: torch.Tensor) -> None:
        (self.scaler.scale(objective) if self.scaler is not None else objective).backward()
        if self.compiling_since is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_s += time.perf_counter() - self.compiling_since
            self.compiling_since = None

    def update(self, optimizer: Any) -> None:
        """optimizer.step(); under 16-mixed the scaler's: gradients unscaled, the step skipped if any is not finite
        (``taken`` then holds 0 on the device, 1 after a step taken: read without a host sync)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        found_inf = sum(self.scaler._found_inf_per_device(optimizer).values())  # reset by update(): read first
        self.taken = 1 - found_inf
        self.scaler.update()

    def applied_lr(self, lr: float) -> float | torch.Tensor:
        """The learning rate the last update applied: 0 where 16-mixed's scaler skipped the step, so that a
        proximal step after it (l1 ``proximal``'s shrinkage) is skipped too; a tensor on the device, no sync."""
        return lr if self.scaler is None else lr * self.taken

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step: the loss scale and its growth tracker under 16-mixed."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)
