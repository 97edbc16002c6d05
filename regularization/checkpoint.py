"""Per-epoch checkpoints: everything a run needs to continue bitwise as if it had never stopped."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import hydra.core.utils
import numpy as np
import omegaconf
import torch
from omegaconf import DictConfig

from regularization.config import ConfigError, config_without
from regularization.logging import atomic_file

CHECKPOINT = "checkpoint.pt"
FORMAT = "regularization-checkpoint/1"
# A vectorized group's checkpoint, in the dir of its first member (the group's members listed inside).
GROUP_CHECKPOINT = "group_checkpoint.pt"
GROUP_FORMAT = "regularization-group-checkpoint/1"
REMEDY = "Delete it or choose another run dir, or pass resume=false to start over."
GROUP_REMEDY = "Rerun the sweep as it was (the same values and hydra.launcher.max_members), delete it, or pass resume=false to start over."
# Keys a run may change between stopping and resuming: where it runs, where the data live, how long it trains,
# and how often it checkpoints.
RESUMABLE_KEYS = (
    "device",
    "resume",
    "data.root",
    "data.download",
    "trainer.epochs",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.checkpoint_min_interval_s",
    "optimize_metric",
    "optimize_direction",
    "sparsity_threshold",  # what is reported, not what is trained
    "optimize_seeds",
    "summary",  # what the sweep's summary shows
)


# Experiment keys added to the schema after checkpoints were first written, with the value every run had before.
ADDED_KEYS = {("trainer", "precision"): "32", ("trainer", "compile"): False}


# Experiment keys added later whose default is what every run did before: at that default they are left out of the
# experiment config, so checkpoints and experiment ids written before them still match (a sweep rerun into an old
# dir skips and resumes its jobs), and runs that don't use them keep the ids they had.
OMITTED_AT_DEFAULT = {
    "trainer.matmul_precision": "highest",
    "data.val_size": 0,
    "data.split_seed": 0,
    "optim.schedule": "none",
    "optim.warmup_epochs": 0,
    "optim.step_size": 30,
    "optim.gamma": 0.1,
    "trainer.early_stopping": {"patience": None, "metric": "val_loss"},
}


def experiment_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config that defines the experiment: a checkpoint only resumes the same one. ``cfg``: a task config, or its
    values as plain data (``config_without``)."""
    config = config_without(cfg, RESUMABLE_KEYS)
    for key, default in OMITTED_AT_DEFAULT.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return config


def experiment_id(cfg: DictConfig) -> str:
    """A short fingerprint of the experiment config, kept in metrics.json: a sweep rerun into the same dir skips a
    completed job only if the job there ran the same experiment (job names leave out the sweep's constant keys)."""
    return experiment_digest(experiment_config(cfg))


def experiment_digest(config: dict[str, Any]) -> str:
    """``experiment_id`` of an ``experiment_config``."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class CheckpointCadence:
    """When a run writes its checkpoint: after epoch e if

        e = epochs  (the last epoch, always), or
        e ≡ 0 (mod every)  and  t_now − t_last ≥ min_interval_s,

    with t_last the time of the last write (or of the cadence's creation, when training starts).
    The interval keeps runs of tiny epochs (the weight-decay chapter's 4-step epochs) from writing and
    fsyncing a checkpoint per epoch; a run killed between writes resumes from the last one and loses
    at most about min_interval_s of training. Shared by engine.fit and the vectorized launcher.

    The interval grows with the checkpoint's size: it is at least the last write's time / ``MAX_SHARE``, so
    writing checkpoints takes at most about 5% of a run (a 256-member group's 276 MB checkpoint that takes
    1 s to write and fsync is written at most every 20 s). ``min_interval_s=0`` asks for every ``every``-th
    epoch whatever the cost.
    """

    MAX_SHARE = 0.05

    def __init__(self, every: int, min_interval_s: float, epochs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.min_interval_s, self.epochs, self.clock = every, min_interval_s, epochs, clock
        self.last_save = clock()
        self.write_s, self.writing_since = 0.0, self.last_save

    @classmethod
    def of(cls, trainer: DictConfig) -> CheckpointCadence:
        """The cadence a job's ``trainer`` config asks for."""
        return cls(trainer.checkpoint_every, trainer.checkpoint_min_interval_s, trainer.epochs)

    def due(self, epoch: int) -> bool:
        """Whether to checkpoint after ``epoch`` (1-based); if so, the write is timed from here to ``saved()``."""
        now = self.clock()
        due = epoch == self.epochs or (epoch % self.every == 0 and now - self.last_save >= self.interval())
        if due:
            self.writing_since = now
        return due

    def interval(self) -> float:
        """The least time between two writes: min_interval_s, or more where the last write took long."""
        if self.min_interval_s == 0:
            return 0.0
        return max(self.min_interval_s, self.write_s / self.MAX_SHARE)

    def saved(self) -> None:
        """Record that a checkpoint was just written."""
        self.last_save = self.clock()
        self.write_s = self.last_save - self.writing_since


def rng_states(device: torch.device) -> dict[str, Any]:
    """Python's, numpy's and torch's CPU RNG states, and the job's own CUDA device's (dropout draws from it), in types
    torch.load(weights_only=True) accepts. Only that one device is read: on a CPU job, CUDA is never initialised."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "device": device.type,
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """``rng_states``' states back; the saved CUDA state goes to ``device``, whichever GPU index wrote it."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and isinstance(states.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(states["cuda"], device)


def generator_state(generator: torch.Generator) -> dict[str, Any]:
    """The generator's state with its device type: a CUDA generator's state (seed and offset, 16 bytes) does not
    fit a CPU one's (Mersenne Twister, 5,056 bytes), so a resume on another device type must know which it holds."""
    return {"device": generator.device.type, "state": generator.get_state()}


def restore_generator(generator: torch.Generator, saved: dict[str, Any] | torch.Tensor) -> bool:
    """Continue ``saved``'s stream in ``generator``; returns whether it continues exactly.

    Saved on another device type, the state cannot be set: the generator is seeded from a hash of the saved state
    instead, so the same checkpoint always resumes the same way, but the stream differs from an uninterrupted run's.
    A bare state (format /1 checkpoints) is told apart by its size.
    """
    if isinstance(saved, torch.Tensor):
        saved = {"device": generator.device.type if saved.numel() == generator.get_state().numel() else "other", "state": saved}
    if saved["device"] == generator.device.type:
        generator.set_state(saved["state"])
        return True
    digest = hashlib.blake2b(saved["state"].numpy().tobytes(), digest_size=8).digest()
    generator.manual_seed(int.from_bytes(digest) >> 1)  # manual_seed takes a non-negative int64
    return False


def save_checkpoint(path: Path, state: dict[str, Any], cfg: DictConfig, device: torch.device) -> None:
    """torch.save into a temp file in the same dir, fsync, rename: a crash leaves the old checkpoint or the new one.

    Ctrl-C waits for the write to end: a KeyboardInterrupt inside torch.save's zip writer turns into a
    RuntimeError from the writer's cleanup, and the run would end failed instead of interrupted.
    """
    state = {"format": FORMAT, "config": json.dumps(experiment_config(cfg), sort_keys=True), "rng": rng_states(device), **state}
    with sigint_deferred(), atomic_file(path, "wb") as f:
        torch.save(state, f)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """SIGINT held back while the block runs, then delivered again to the handler that was there before
    (Python's raises KeyboardInterrupt). Only the main thread can set signal handlers; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


# Set by ``note_ctrl_c``, SIGINT's handler outside training from train.py's start-up on; never cleared.
CTRL_C = threading.Event()
# A Ctrl-C that came where it must not be raised, waiting for the main thread to leave (``interrupt_when_safe``).
_INTERRUPT_PENDING = threading.Event()


def note_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGINT's handler outside training: Python's own (raise KeyboardInterrupt), and a note of it (``CTRL_C``). A
    KeyboardInterrupt raised while the interpreter runs a finalizer, or inside a library's catch-all, is dropped, and
    the run went on to train as if never interrupted (seen under load, a Ctrl-C 2 s into start-up): with the note,
    training does not start (``stop_after_epoch``) and train.py exits 130 at the end.

    Where a KeyboardInterrupt breaks what it lands in (``interrupt_unsafe``) it waits until the main thread is out of
    there: inside an import (torchvision's and matplotlib's are lazy) it leaves a module half-made (numpy, imported
    again, then fails with "cannot load module more than once per process", seen with a Ctrl-C 0.35 s into
    ``import torch``), and inside a C++ extension's start-up it can abort the process; inside OmegaConf (Hydra
    composing the config) a node is left half-built, whose clean-up then fails with an AttributeError in its place
    (exit 1, seen with a Ctrl-C 1.08 s into start-up on a loaded machine); inside Hydra's ``run_job`` before the job's
    task is in ``job_guarded``, the job's dir, made and holding its .hydra/ files, would be left with no result
    (seen on CI, a Ctrl-C 2 s into start-up)."""
    CTRL_C.set()
    if not interrupt_unsafe(frame):
        raise KeyboardInterrupt
    if not _INTERRUPT_PENDING.is_set():
        _INTERRUPT_PENDING.set()
        threading.Thread(target=interrupt_when_safe, name="ctrl-c-when-safe", daemon=True).start()


# Where a KeyboardInterrupt must not be raised (``note_ctrl_c``): importlib's machinery, and OmegaConf's code.
_INTERRUPT_UNSAFE = ("<frozen importlib", os.path.dirname(omegaconf.__file__) + os.sep)
# Set while a Hydra job's task runs inside ``job_guarded``.
_JOB_GUARDED = threading.Event()


@contextmanager
def job_guarded() -> Iterator[None]:
    """The block is where a Ctrl-C inside Hydra's ``run_job`` is raised: the block's own clean-up (the caller's) then
    sees it. Before the block (run_job making the job's dir, writing its .hydra/ files, on_job_start) and after
    it (on_job_end), ``note_ctrl_c`` holds the Ctrl-C back until the main thread is in the block or out of run_job."""
    _JOB_GUARDED.set()
    try:
        yield
    finally:
        _JOB_GUARDED.clear()


def interrupt_unsafe(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import, inside OmegaConf, or inside Hydra's ``run_job`` but not in the
    job's guarded block (``job_guarded``): their code is among its callers."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith(_INTERRUPT_UNSAFE) or (code is hydra.core.utils.run_job.__code__ and not _JOB_GUARDED.is_set()):
            return True
        frame = frame.f_back
    return False


def interrupt_when_safe(poll_s: float = 0.01) -> None:
    """In a thread of its own: once the main thread is where a KeyboardInterrupt is safe (``interrupt_unsafe``),
    SIGINT again, for its handler to raise there, unless the noted Ctrl-C was raised in the meantime
    (``raise_if_ctrl_c``). A signal, not ``_thread.interrupt_main``: that one waits for a blocking call (a sleep, a
    lock) to return by itself."""
    main = threading.main_thread().ident
    assert main is not None  # the main thread has started
    while _INTERRUPT_PENDING.is_set() and interrupt_unsafe(sys._current_frames().get(main)):
        time.sleep(poll_s)
    if _INTERRUPT_PENDING.is_set():
        _INTERRUPT_PENDING.clear()
        signal.pthread_kill(main, signal.SIGINT)


def raise_if_ctrl_c() -> None:
    """KeyboardInterrupt if a Ctrl-C was noted (``note_ctrl_c``), and no second one for it (``interrupt_when_safe``)."""
    if CTRL_C.is_set():
        _INTERRUPT_PENDING.clear()
        raise KeyboardInterrupt


@contextmanager
def stop_after_epoch(stop: threading.Event) -> Iterator[threading.Event]:
    """While the block runs, the first Ctrl-C sets ``stop`` and the training loop ends after the epoch in progress,
    checkpointing it (so that the result, the checkpoint and the events end at the same epoch); a second Ctrl-C
    raises KeyboardInterrupt at once. Only the main thread receives signals; elsewhere, and where SIGINT is
    ignored, the handler is left as it is. A Ctrl-C noted before (``note_ctrl_c``) raises KeyboardInterrupt here,
    before training starts, as it would have when it came."""
    raise_if_ctrl_c()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield stop
        return

    def first_then_raise(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # os.write: a signal handler must not take the logging module's locks
        os.write(2, b"\nCtrl-C: stopping after this epoch, with a checkpoint (Ctrl-C again to stop at once)\n")

    signal.signal(signal.SIGINT, first_then_raise)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def load_checkpoint(path: Path, cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint at path, loaded with weights_only=True so that a tampered file cannot run code.

    Raises ConfigError for a file that cannot be read, or that another experiment wrote.
    """
    state = read_checkpoint(path, FORMAT)
    theirs, ours = json.loads(state["config"]), experiment_config(cfg)
    for (group, key), before in ADDED_KEYS.items():  # a checkpoint older than the key: its run had the old value
        theirs.get(group, {}).setdefault(key, before)
    if theirs != ours:
        differ = sorted(_diff(theirs, ours))
        raise ConfigError(f"Invalid checkpoint: {path} was written by another experiment (it differs in {', '.join(differ)}). {REMEDY}")
    return state


def read_checkpoint(path: Path, fmt: str, mmap: bool = False) -> dict[str, Any]:
    """The file at path as a checkpoint of format ``fmt`` (weights_only: a tampered file cannot run code), else ConfigError.
    ``mmap``: tensors are read from the file when used (cheap for a look at the metadata)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ConfigError(f"Invalid checkpoint: {path} cannot be read as a checkpoint ({type(err).__name__}). {REMEDY}") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ConfigError(f"Invalid checkpoint: {path} is not a checkpoint of this harness. {REMEDY}")
    return state


def checkpoint_epoch(path: Path) -> int:
    """The last epoch the checkpoint at path holds."""
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def group_members(configs: list[dict[str, Any]]) -> str:
    """What identifies a group checkpoint: the members' ``experiment_config``s, in member order (made once per group:
    converting a config takes a millisecond, and a group checkpoints many times)."""
    return json.dumps(configs, sort_keys=True)


def save_group_checkpoint(path: Path, state: dict[str, Any], members: str, device: torch.device) -> None:
    """``save_checkpoint`` for a vectorized group, identified by ``group_members``."""
    state = {"format": GROUP_FORMAT, "members": members, "rng": rng_states(device), **state}
    with sigint_deferred(), atomic_file(path, "wb") as f:
        torch.save(state, f)


def load_group_checkpoint(path: Path, cfgs: list[DictConfig], mmap: bool = False, experiments: list[dict] | None = None) -> dict[str, Any]:
    """The group checkpoint at path, if it was written for exactly these members (in this order: their
    ``experiment_config``s, made from ``cfgs`` unless given), else ConfigError."""
    state = read_checkpoint(path, GROUP_FORMAT, mmap)
    theirs, ours = json.loads(state["members"]), experiments or [experiment_config(cfg) for cfg in cfgs]
    if theirs != ours:
        raise ConfigError(
            f"Invalid checkpoint: {path} was written for another vectorized group ({_group_diff(theirs, ours)}). {GROUP_REMEDY}"
        )
    return state


def _group_diff(theirs: list[dict], ours: list[dict]) -> str:
    if len(theirs) != len(ours):
        return f"of {len(theirs)} jobs; this group has {len(ours)}"
    k = next(k for k, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
    return f"its member {k} differs in {', '.join(sorted(_diff(theirs[k], ours[k])))}"
