"""Training and evaluation: fit a model to a Dataset, evaluate in eval mode, write the results."""

from __future__ import annotations

import contextlib
import json
import math
import random
import shlex
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from regularization.checkpoint import (
    CHECKPOINT,
    REMEDY,
    CheckpointCadence,
    checkpoint_epoch,
    experiment_id,
    generator_state,
    job_guarded,
    load_checkpoint,
    restore_generator,
    save_checkpoint,
    set_rng_states,
    stop_after_epoch,
)
from regularization.config import ConfigError, impl_of, resolve_device, validate
from regularization.data import Dataset, check_data, load_data, minibatches
from regularization.gpu import (
    check_deterministic_workspace,
    failure_message,
    is_sticky_cuda_error,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
    sticky_cuda_error,
)
from regularization.logging import RunLogger, log, run_hparams, write_json_atomic
from regularization.models import build_model, penalized_params
from regularization.parallel import job_device, set_job_threads
from regularization.progress import Progress, progress_enabled
from regularization.regularizers import WeightPenalty, max_norm_linear_, sparsity, weight_norm
from regularization.results import run_result
from regularization.schedule import make_scheduler
from regularization.selection import EarlyStopping, selection_result
from regularization.step import Step, check_compile, check_precision, set_matmul_precision

EVAL_BATCH = 8192


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over examples of (ŷ − y)²/2, the chapter's squared loss."""
    return (y_hat - y.reshape(y_hat.shape)).pow(2).mean() / 2


def loss_fn(data: Dataset):
    return F.cross_entropy if data.is_classification else squared_loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """torch's deterministic algorithms, for bitwise-repeatable GPU runs. cuBLAS's fixed workspace, which they need,
    is set when the package is imported (``gpu.use_deterministic_workspace``) and checked by ``preflight``.
    Switching them on or off imports torch._inductor, which a run that never compiles needs for nothing else, so
    an unchanged "off" is left alone; "on" is always set, so that an inductor config imported since follows it."""
    if on or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(on)


def make_optimizer(cfg: DictConfig, model: nn.Module, penalty: WeightPenalty, fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD or Adam; ``fused`` (default: on CUDA) updates every parameter in one kernel, and under 16-mixed takes
    the loss scale and the inf check on the device, without GradScaler's per-step host sync. Same update rule."""
    groups = penalty.param_groups(list(model.parameters()))
    fused = next(model.parameters()).device.type == "cuda" if fused is None else fused
    if cfg.optim.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.optim.lr, fused=fused or None)
    momentum, nesterov = cfg.optim.get("momentum", 0.0), cfg.optim.get("nesterov", False)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=momentum, nesterov=nesterov, fused=fused or None)


def make_penalty(cfg: DictConfig, model: nn.Module) -> WeightPenalty:
    reg = cfg.reg
    return WeightPenalty(reg.penalty.value, reg.lambd, impl_of(reg), penalized_params(model, reg.penalize_bias))


def make_step(cfg: DictConfig, model: nn.Module, data: Dataset) -> Step:
    """The training step at cfg.trainer.precision, compiled if cfg.trainer.compile: data loss of a batch, fp32."""
    loss = loss_fn(data)
    return Step(lambda X, y: loss(model(X).float(), y), cfg.trainer.precision, cfg.trainer.compile, data.X_train.device)


def train_epoch(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    penalty: WeightPenalty,
    batch_size: int,
    generator: torch.Generator,
    max_norm: float | None = None,
    wrap: Callable[[Iterable, int], Iterable] = lambda batches, total: batches,
    step: Step | None = None,
) -> torch.Tensor:
    """One shuffled pass over the training set; returns the mean objective on the device,

        (1/n) Σ_batches |B|·(L_B(w) + λ·Ω(w)),

    each batch's term taken at the weights w before its step (the weights its loss was computed with).

    With ``max_norm`` = c, every step ends by projecting each unit's incoming weights onto ‖w_j‖₂ ≤ c.
    ``wrap(batches, count)`` may wrap the batches, in a progress bar say. ``step`` sets the precision and
    compilation (default: fp32, eager).
    """
    model.train()
    step = step or Step(lambda X, y: loss_fn(data)(model(X), y), "32", False, data.X_train.device)
    lr = optimizer.param_groups[0]["lr"]
    total = torch.zeros((), device=data.X_train.device)
    n = len(data.X_train)
    for idx in wrap(minibatches(n, batch_size, generator), math.ceil(n / batch_size)):
        # index_select copies whole rows: on CPU twice as fast as X[idx]'s general gather.
        data_loss = step.loss(data.X_train.index_select(0, idx), data.y_train.index_select(0, idx))
        # λ·Ω(w) at the weights data_loss was computed with, before the step moves them: the objective's penalty
        with torch.set_grad_enabled(penalty.in_loss):
            term = penalty.value()
        optimizer.zero_grad(set_to_none=True)
        step.backward(data_loss + term if penalty.in_loss else data_loss)
        step.update(optimizer)
        penalty.after_step(step.applied_lr(lr))  # none after a step 16-mixed's scaler skipped
        if max_norm is not None:
            max_norm_linear_(model, max_norm)
        with torch.no_grad():
            total += (data_loss + term) * len(idx)
    return total / len(data.X_train)


@torch.inference_mode()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, classification: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean loss (and accuracy) over the whole set, in eval mode, summed on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=X.device)
    correct = torch.zeros((), device=X.device)
    for start in range(0, len(X), EVAL_BATCH):
        y_hat, target = model(X[start : start + EVAL_BATCH]).float(), y[start : start + EVAL_BATCH]  # fp32 under autocast too
        if classification:
            loss_sum += F.cross_entropy(y_hat, target, reduction="sum")
            correct += (y_hat.argmax(dim=1) == target).sum()
        else:
            loss_sum += squared_loss(y_hat, target) * len(target)
    n = len(X)
    return loss_sum / n, (correct / n if classification else None)


def evaluate_all(
    model: nn.Module, data: Dataset, penalty: WeightPenalty, objective: torch.Tensor, sparsity_threshold: float
) -> dict[str, float | None]:
    """Full-set train and test metrics (and validation, with a validation split), the weights' norm and sparsity
    (the fraction with |w| < sparsity_threshold), read from the device in one transfer."""
    cls = data.is_classification
    train_loss, train_acc = evaluate(model, data.X_train, data.y_train, cls)
    test_loss, test_acc = evaluate(model, data.X_test, data.y_test, cls)
    values = {"train_loss": train_loss, "test_loss": test_loss, "objective": objective, "weight_l2_norm": weight_norm(penalty.params)}
    if cls:
        values |= {"train_acc": train_acc, "test_acc": test_acc}
    if data.X_val is not None:
        val_loss, val_acc = evaluate(model, data.X_val, data.y_val, cls)
        values |= {"val_loss": val_loss, "val_acc": val_acc} if cls else {"val_loss": val_loss}
    values["sparsity"] = sparsity(penalty.params, sparsity_threshold)
    host = torch.stack([v.float().to(objective.device) for v in values.values()]).tolist()
    metrics: dict[str, float | None] = {"train_acc": None, "test_acc": None} | ({"val_acc": None} if data.X_val is not None else {})
    metrics |= dict(zip(values, host, strict=True))
    return metrics


def training_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: list[dict],
    wall_s: float,
    step: Step,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stopper: EarlyStopping | None = None,
    best_model: dict | None = None,
) -> dict:
    """What a checkpoint holds besides the RNG states and the config (checkpoint.save_checkpoint adds those).
    With early stopping: its bookkeeping, and the best epoch's weights beside the current ones."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator_state(generator),
        "history": history,
        "wall_s": wall_s,
        "step": step.state_dict(),
        "compile_s": step.compile_s,
        "early_stopping": stopper.state_dict() if stopper is not None else None,
        "best_model": best_model,
    }


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as it is now, detached from the training that goes on."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def fit(
    cfg: DictConfig,
    data: Dataset,
    model: nn.Module,
    logger: RunLogger,
    checkpoint: Path | None = None,
    resume_from: dict | None = None,
) -> dict:
    """Train for cfg.trainer.epochs; evaluate every eval_every epochs and at the end.

    After every epoch the TensorBoard events are flushed and, given a path, a checkpoint is saved when
    ``CheckpointCadence`` says it is due (always after the last epoch), so ``resume_from`` (a loaded
    checkpoint) continues exactly where that checkpoint stopped. Stops at the first epoch
    whose training objective or evaluated loss is not finite (status ``diverged``), or at Ctrl-C (status ``interrupted``):
    the first ends the epoch in progress and checkpoints it; a second drops the partial epoch, and the result goes back
    to the last checkpoint. Either way the result, the checkpoint and the events end at the same epoch.
    The learning rate follows ``optim.schedule``, stepped after every epoch. With ``trainer.early_stopping``, a job
    whose validation metric has not improved for ``patience`` evaluations stops (status ``completed``,
    ``stopped_epoch``), and a completed job ends with its best epoch's weights (``selection``).
    """
    penalty = make_penalty(cfg, model)
    optimizer = make_optimizer(cfg, model, penalty)
    scheduler = make_scheduler(cfg, optimizer)
    stopper, best_model = EarlyStopping.of(cfg), None
    device = data.X_train.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    step = make_step(cfg, model, data)
    epochs, every = cfg.trainer.epochs, cfg.trainer.eval_every
    batch_size, max_norm = cfg.data.batch_size, cfg.reg.max_norm
    done, history, wall_s = 0, [], 0.0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        step.load_state_dict(resume_from.get("step", {}))  # .get: checkpoints from before trainer.precision
        step.compile_s = resume_from.get("compile_s", 0.0)  # the runs before this one compiled too
        if "scheduler" in resume_from:  # not in checkpoints from before optim.schedule, whose lr was constant
            scheduler.load_state_dict(resume_from["scheduler"])
        if stopper is not None:
            stopper.load_state_dict(resume_from["early_stopping"])
            best_model = resume_from["best_model"]
        exact = restore_generator(generator, resume_from["generator"])
        set_rng_states(resume_from["rng"], device)
        done, history, wall_s = resume_from["epoch"], resume_from["history"], resume_from["wall_s"]
        log.info("resuming from %s after epoch %d", checkpoint, done)
        if not exact or resume_from["rng"].get("device", device.type) != device.type:
            log.warning(
                "the checkpoint was written on another device type than %s: training continues, but not bitwise as an "
                "uninterrupted run (the batch order and dropout masks are drawn anew from here, the same way at every resume)",
                device.type,
            )
    result: dict = {"status": "completed", "epochs": epochs}
    start, first = time.perf_counter(), done + 1
    cadence = CheckpointCadence.of(cfg.trainer)

    def save(epoch: int) -> None:
        elapsed = wall_s + time.perf_counter() - start
        state = training_state(epoch, model, optimizer, generator, history, elapsed, step, scheduler, stopper, best_model)
        save_checkpoint(checkpoint, state, cfg, device)
        cadence.saved()

    with Progress(epochs, progress_enabled(cfg.trainer.progress), done).active() as progress, stop_after_epoch(threading.Event()) as stop:
        try:
            for epoch in range(done + 1, epochs + 1):
                if stopper is not None and stopper.stopped:  # resumed to more epochs after it stopped: it stays stopped
                    break
                objective = train_epoch(model, data, optimizer, penalty, batch_size, generator, max_norm, progress.batches, step)
                scheduler.step()
                finite, metrics = math.isfinite(objective.item()), None
                stopping = stop.is_set() and epoch < epochs  # read once: a Ctrl-C from here on stops after the next epoch
                if cfg.trainer.compile and epoch == first:
                    log.info("compiled the training step in %.1f s (trainer.compile)", step.compile_s)
                if finite and (epoch % every == 0 or epoch == epochs or stopping):  # Ctrl-C: the result at the stop
                    with step.autocast():
                        metrics = evaluate_all(model, data, penalty, objective, cfg.sparsity_threshold)
                    logger.log_eval(epoch, metrics)
                    history.append({"epoch": epoch, **metrics})
                    finite = math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])
                if not finite:
                    log.warning("epoch %d: the loss is not finite; stopping (status diverged)", epoch)
                    result |= {"status": "diverged", "epochs": epoch}
                    break
                if stopper is not None and metrics is not None and stopper.update(epoch, metrics):
                    best_model = weights_copy(model)
                if stopper is not None and stopper.stopped:
                    log.info(
                        "epoch %d: %s has not improved for %d evaluations; stopping early with the weights of epoch %d (%s %.4g)",
                        epoch, stopper.metric, stopper.patience, stopper.best_epoch, stopper.metric, stopper.best,
                    )  # fmt: skip
                logger.flush()  # events up to this epoch are on disk before its checkpoint is
                if checkpoint is not None and (cadence.due(epoch) or stopping or (stopper is not None and stopper.stopped)):
                    save(epoch)
                done = epoch
                progress.epoch_done(metrics)
                if stopping:  # Ctrl-C: this epoch's result and checkpoint stand
                    log.warning("interrupted: stopped after epoch %d, its checkpoint saved", epoch)
                    result |= {"status": "interrupted", "epochs": epoch}
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, mid-epoch: back to the last checkpoint
            saved = done if checkpoint is None else checkpoint_epoch(checkpoint) if checkpoint.exists() else 0
            log.warning("interrupted during epoch %d: the result and the checkpoint are those after epoch %d", done + 1, saved)
            history = [h for h in history if h["epoch"] <= saved]
            logger.purge_from(saved + 1)  # TensorBoard hides the epochs past the checkpoint, as a resume would
            result |= {"status": "interrupted", "epochs": saved}
    completed = result["status"] == "completed"
    if stopper is not None and completed and best_model is not None:
        model.load_state_dict(best_model)  # the job's result is its best epoch, by validation
    result |= run_result(history) | selection_result(history, cfg, stopper, completed)
    result["wall_s"] = wall_s + time.perf_counter() - start
    if cfg.trainer.compile:
        result["compile_s"] = step.compile_s  # within wall_s
    result["history"] = history
    return result


def preflight(cfg: DictConfig, keys: bool = True) -> torch.device:
    """Everything checked before training: the config's keys (unless ``keys=False``: see ``validate``) and values,
    the device and the data."""
    validate(cfg, keys)
    device = resolve_device(job_device(cfg.device))
    check_deterministic_workspace(cfg.trainer.deterministic, device)
    check_precision(cfg.trainer.precision, device)
    if cfg.trainer.compile:
        check_compile(device)
    check_data(cfg)
    return device


def check_job(cfg: DictConfig, multirun: bool) -> torch.device:
    """``preflight``, and what only a sweep may ask for."""
    if cfg.optimize_seeds != 1 and not multirun:
        message = "averages a search's trials over seeds (-m hparams_search=...); a single run has one seed"
        raise ConfigError(f"Invalid config: optimize_seeds: {message}")
    return preflight(cfg)


def run(cfg: DictConfig) -> float:
    """Check, train and write one Hydra job's results; returns the final ``optimize_metric`` (NaN if none).

    A job that raises while training writes status ``failed`` and its traceback into its dir. In a multirun
    it then returns NaN so that the other jobs go on (the sweep summary reports it and the sweep exits non-zero),
    unless the error broke the process's CUDA context (a device-side assert, say): that stops the sweep.
    At the job's end its cached CUDA memory is given back.
    """
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with result_or_no_dir(out_dir):
        device = check_job(cfg, HydraConfig.get().mode == RunMode.MULTIRUN)
        set_job_threads()
        return train_or_record_failure(cfg, device, out_dir)


@contextmanager
def result_or_no_dir(out_dir: Path) -> Iterator[None]:
    """Ctrl-C before the run wrote its metrics.json (while its data load, say; training ends itself at Ctrl-C, with
    a result): a dir with nothing to keep is removed (``remove_if_untrained``); one with a checkpoint (a run resumed)
    gets status interrupted at its epoch."""
    try:
        with job_guarded():  # a Ctrl-C while Hydra made the dir is raised in here (note_ctrl_c)
            yield
    except KeyboardInterrupt:
        has_result = not out_dir.is_dir() or (out_dir / "metrics.json").exists()  # or is gone: nothing to do
        if not has_result and not remove_if_untrained(out_dir, f"{HydraConfig.get().job.name}.log"):
            checkpoint = out_dir / CHECKPOINT
            epochs = checkpoint_epoch(checkpoint) if checkpoint.exists() else 0
            write_json_atomic(out_dir / "metrics.json", {"status": "interrupted", "epochs": epochs})
        raise


def remove_if_untrained(out_dir: Path, log_file: str) -> bool:
    """Remove a job dir that holds only what Hydra and the logger made for it (.hydra/, the job's log, event
    files), with no metrics.json and no checkpoint: a job that never trained has nothing to keep, and a dir left
    would read as a failed job. Its parent too, if now empty (a single run's, named by its overrides). Returns
    whether it removed the dir."""
    if not out_dir.is_dir():
        return False
    made_here = [p.name in (".hydra", log_file) or p.name.startswith("events.out.tfevents.") for p in out_dir.iterdir()]
    if not all(made_here):  # metrics.json and the checkpoint are not among them
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        out_dir.parent.rmdir()
    return True


def train_or_record_failure(cfg: DictConfig, device: torch.device, out_dir: Path) -> float:
    """``train``; an exception marks the job failed (see ``run``)."""
    try:
        return train(cfg, device, out_dir)
    except ConfigError:  # a checkpoint that doesn't fit: nothing trained, nothing to record
        raise
    except Exception as err:
        (out_dir / "traceback.txt").write_text(traceback.format_exc())
        write_json_atomic(out_dir / "metrics.json", {"status": "failed", "error": failure_message(err, "a smaller data.batch_size")})
        if is_sticky_cuda_error(err):
            raise sticky_cuda_error(err, f"the job in {out_dir}") from None
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed; traceback in %s", out_dir / "traceback.txt")
        return math.nan
    finally:
        release_cached_memory(device)


def train(cfg: DictConfig, device: torch.device, out_dir: Path) -> float:
    """Train one job into out_dir (event files, checkpoint, metrics.json); returns the final ``optimize_metric``,
    NaN unless the run completed (a diverged run's last evaluation came before the divergence: no result).

    With ``resume`` (the default), a job whose metrics.json says completed (for as many epochs) is skipped,
    and one with a checkpoint of the same experiment continues from it (to more epochs, too).
    Ctrl-C leaves status ``interrupted`` and exits 130.
    """
    metrics_path, checkpoint = out_dir / "metrics.json", out_dir / CHECKPOINT
    previous = completed_result(out_dir, cfg) if cfg.resume else None
    if previous is not None:  # skipped before its checkpoint is read, as the vectorized launcher skips it
        log.info("already completed, skipping: %s", metrics_path)
        return final_metric(previous, cfg.optimize_metric)
    resume_from = load_checkpoint(checkpoint, cfg) if cfg.resume and checkpoint.exists() else None
    if resume_from is not None and resume_from["epoch"] > cfg.trainer.epochs:
        raise ConfigError(f"Invalid config: trainer.epochs: {checkpoint} is at epoch {resume_from['epoch']}, past {cfg.trainer.epochs}")
    set_deterministic(cfg.trainer.deterministic)
    set_matmul_precision(cfg.trainer.matmul_precision)
    reset_peak_memory(device)
    seed_everything(cfg.seed)
    log.info("training on %s", device)
    # Events past the checkpoint's epoch, from a run that died, are purged (hidden) by TensorBoard.
    logger = RunLogger(out_dir, cfg.trainer.epochs, purge_step=resume_from["epoch"] + 1 if resume_from else 1)
    logger.log_hparams(run_hparams(cfg))  # first, so that a job that fails still has its HParams row
    status = "failed"  # what the HParams session ends with if anything below raises
    try:
        data = load_data(cfg, device)
        model = build_model(cfg, data.num_inputs, data.num_outputs).to(device)
        result = fit(cfg, data, model, logger, checkpoint, resume_from)
        logger.log_result(result)
        status = result["status"]
    finally:
        logger.close(status)
    write_json_atomic(metrics_path, result | peak_memory(device, "peak_memory_bytes") | {"experiment_id": experiment_id(cfg)})
    log.info("%s: %s", result["status"], metrics_path)
    if result["status"] == "interrupted":
        log.warning("to resume: %s", resume_command(HydraConfig.get(), HydraConfig.get().mode == RunMode.MULTIRUN))
        raise SystemExit(130)
    if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep draws all its jobs at its end, in the sweep dir
        from regularization.plots import save_run_curves  # matplotlib, imported where it draws

        save_run_curves(out_dir, result["history"], HydraConfig.get().job.override_dirname or "conf/config.yaml's defaults")
    return final_metric(result, cfg.optimize_metric)


def resume_command(hydra: DictConfig, multirun: bool) -> str:
    """The command line that started this process, pointed at its run dir (or sweep dir): rerunning it resumes.
    It starts with the interpreter as the user typed it (``.venv/bin/python``, and any options such as ``-X``)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    where = Path(str(hydra.sweep.dir if multirun else hydra.runtime.output_dir)).absolute()
    args = [a for a in sys.argv[1:] if not a.startswith((f"{key}=", f"+{key}=", f"++{key}="))]
    interpreter = sys.orig_argv[: len(sys.orig_argv) - len(sys.argv)] or [sys.executable]
    return shlex.join([*interpreter, sys.argv[0], *args, f"{key}={override_value(str(where))}"])


def override_value(text: str) -> str:
    """text as a command-line override's value that Hydra reads back as this string: as it is where it can
    (a run dir named ``reg.lambd=3,seed=1`` cannot: its comma would make a sweep), else quoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from hydra_plugins.regularization_sweeper import quoted

    try:
        if OverridesParser.create().parse_overrides([f"k={text}"])[0].value() == text:
            return text
    except HydraException:
        pass
    return quoted(text)


def completed_result(out_dir: Path, cfg: DictConfig) -> dict | None:
    """The job's metrics.json if an earlier run of the same experiment completed as many epochs (sweep resume
    skips it), else None. A completed run of another experiment there is a ConfigError: a sweep dir reused with
    other constant keys, which the job names leave out, would otherwise skip the new job as done."""
    try:
        previous = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if previous.get("status") != "completed" or previous.get("epochs") != cfg.trainer.epochs:
        return None
    ours = experiment_id(cfg)
    if previous.get("experiment_id", ours) != ours:  # no id: written before ids were kept
        if (out_dir / CHECKPOINT).exists():
            load_checkpoint(out_dir / CHECKPOINT, cfg)  # raises, naming the keys that differ
        raise ConfigError(f"Invalid config: {out_dir} holds a completed run of another experiment. {REMEDY}")
    return previous


def final_metric(result: dict, name: str) -> float:
    """The value a sweeper optimizes: the named final metric of a completed run, else NaN."""
    value = result.get(name)
    return value if value is not None and result["status"] == "completed" else math.nan
