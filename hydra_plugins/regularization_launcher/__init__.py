"""``hydra/launcher=vectorized``: train every job of a sweep at once, as stacked models (regularization.vectorized).

Per job it leaves what Hydra's basic launcher leaves: the job dir named by hydra.sweep.dir/hydra.sweep.subdir,
``.hydra/{config,hydra,overrides}.yaml``, the event files and metrics.json, and a JobReturn for the sweep
summary callback. Jobs that differ only in stackable keys (``vectorized.STACKABLE``) train as one group of at
most ``max_members``; the others are split into compatible groups. Jobs whose dir already holds a completed
metrics.json are skipped and a group with a checkpoint continues from it (``vectorized.group_checkpoint``),
so rerunning a sweep into the same hydra.sweep.dir resumes it.

The launcher runs the harness's training itself (``regularization.engine.preflight`` and
``vectorized.train_group``), not the task function: it is this harness's launcher, not a general one.
"""

import functools
import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

from hydra_plugins.regularization_launcher.compose import Base, Composed, HydraFiles, SweepComposer, substituted

if TYPE_CHECKING:  # the harness is imported as a sweep needs it, not when Hydra scans its plugins
    import torch

    from regularization.vectorized import Member

log = logging.getLogger(__name__)


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.regularization_launcher.VectorizedLauncher"
    # The most jobs trained as one stacked model; bounds memory (weights, activations and optimizer state grow with
    # it). null: 64, or more for small models (vectorized.default_members: the weight-decay model's groups hold 83,468).
    max_members: int | None = None


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="regularization")


@dataclass
class Job:
    """One job of the sweep: its task config, where it writes, and its full config (with hydra) when first asked for."""

    idx: int
    overrides: list[str]
    composed: Composed
    out_dir: Path = field(init=False)

    @property
    def task_cfg(self) -> DictConfig:
        return self.composed.task

    @property
    def base(self) -> Base:
        return self.composed.base

    @property
    def keys(self) -> list[str]:
        return self.composed.keys

    @functools.cached_property
    def config(self) -> DictConfig:
        """The job's config as hydra.core.utils.run_job makes it: its number and output dir set (made on first use)."""
        config = self.composed.config
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = self.idx
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(self.out_dir)
        return config

    @functools.cached_property
    def hydra_cfg(self) -> DictConfig:
        """The job's view of its hydra config (``hydra_view``), as its callbacks and its JobReturn see it."""
        return hydra_view(self.config)


class LazyJobReturn(JobReturn):
    """A JobReturn whose ``hydra_cfg`` is the job's, made when first read: Hydra's sweepers read the return value
    and the status; making every job's hydra config took 1 ms a job in a sweep of thousands."""

    def __init__(self, job: Job, **fields: Any) -> None:
        self._job, self._hydra_cfg = job, None
        super().__init__(**fields)

    @property  # type: ignore[override]
    def hydra_cfg(self) -> DictConfig | None:
        if self._hydra_cfg is None and self._job is not None:
            self._hydra_cfg = self._job.hydra_cfg
        return self._hydra_cfg

    @hydra_cfg.setter
    def hydra_cfg(self, value: DictConfig | None) -> None:
        self._hydra_cfg = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled (by a launcher or callback that sends it elsewhere) as Hydra's own JobReturn, its hydra config made."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_job", "_hydra_cfg")} | {"hydra_cfg": self.hydra_cfg}
        return JobReturn, (), state


def job_values(job: Job) -> dict[str, str]:
    """The values of the hydra keys a job's dir and log file names interpolate, as strings (``substituted``)."""
    values = {"hydra.job.num": str(job.idx), "hydra.job.id": str(job.idx)}
    values["hydra.job.override_dirname"] = job.composed.override_dirname
    for key in ("job.name", "sweep.dir"):  # the sweep's, the same for every job
        value = job.base.hydra_template(key)
        if isinstance(value, str) and "${" not in value:
            values[f"hydra.{key}"] = value
    return values


def hydra_view(config: DictConfig) -> DictConfig:
    """What ``HydraConfig.set_config(config)`` makes a job's callbacks see: ``{hydra: config.hydra}``, read-only,
    its hydra node's parent still ``config`` (for interpolations into the task's keys).

    set_config deep-copies the node (OmegaConf.masked_copy), a few ms per job; this view holds the node itself,
    which is read-only and belongs to this job's config alone.
    """
    OmegaConf.set_readonly(config.hydra, True)
    view = DictConfig({})
    with flag_override(view, "no_deepcopy_set_nodes", True):
        view.hydra = config.hydra
    view.hydra._set_parent(config)
    return view


class VectorizedLauncher(Launcher):
    # The sweeper need not compose and check the jobs: launch() checks every job before any trains.
    preflights_every_job = True

    def __init__(self, max_members: int | None = None) -> None:
        super().__init__()
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from regularization.parallel import long_lived_heap_frozen

        with long_lived_heap_frozen():
            return self.launch_jobs(job_overrides, initial_job_idx)

    def launch_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from regularization.config import ConfigError
        from regularization.engine import completed_result, final_metric

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        self.check_launcher()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        compose = SweepComposer(self.hydra_context.config_loader, self.config)
        jobs = []
        for i, o in enumerate(job_overrides):
            jobs.append(self.place(Job(initial_job_idx + i, list(o), compose.compose_job(o))))
            # The jobs live until the sweep ends: left out of later garbage collections, which would rescan them all
            # (composing a 1,000-job sweep took 4× longer a job with them scanned; a 10,000-job one, quadratically more).
            gc.freeze()
        checked: set[int] = set()  # the bases (by id) of which a job was checked on its own config
        for job in jobs:  # every job checked before any trains
            try:
                self.check(job, checked)
            except ConfigError as err:
                raise ConfigError(f"{err}\n  in the sweep's job: {' '.join(job.overrides)}") from None
        returns: dict[int, JobReturn] = {}
        pending = []
        for job in jobs:
            previous = completed_result(job.out_dir, job.task_cfg)
            if previous is not None:
                log.info("\t#%d : %s (already completed, skipped)", job.idx, " ".join(filter_overrides(job.overrides)))
                returns[job.idx] = self.finish_job(job, final_metric(previous, job.task_cfg.optimize_metric))
            else:
                pending.append(job)
        values = self.train_groups(pending)
        for job in pending:
            returns[job.idx] = self.finish_job(job, values[job.idx])
        return [returns[job.idx] for job in jobs]

    def check_launcher(self) -> None:
        """The launcher's own settings, before anything is composed or written."""
        from regularization.config import ConfigError

        if self.max_members is not None and self.max_members < 1:
            raise ConfigError(f"Invalid config: hydra.launcher.max_members: must be >= 1, got {self.max_members}")

    def check(self, job: Job, checked: set[int]) -> None:
        """``engine.preflight`` for the job (its config, device and data) and what stacking needs of it.

        Jobs of one base share their keys: once one is checked on its config, the others' values are checked on
        a plain view of them (``Base.view``). Whatever that view fails is checked again on the job's own config,
        which raises the error a job run alone raises.
        """
        from regularization.engine import preflight
        from regularization.vectorized import check_vectorizable

        view = job.base.view(job.task_cfg, job.keys) if id(job.base) in checked else None
        if view is not None:
            try:
                preflight(view, keys=False)  # type: ignore[arg-type]
                check_vectorizable(view)  # type: ignore[arg-type]
                return
            except Exception:  # noqa: BLE001 - any failure: the job's own config tells
                pass
        preflight(job.task_cfg)
        check_vectorizable(job.task_cfg)
        checked.add(id(job.base))

    def plan(self, pending: list[Job]) -> list[list[Job]]:
        """The pending jobs as groups (``vectorized.plan_groups``); a group checkpoint that does not fit its group
        stops the sweep here, before any group trains."""
        from regularization.vectorized import STACKABLE, group_checkpoint, group_key, plan_groups

        by_base: dict[int, str] = {}

        def key(job: Job) -> str:
            """``group_key``, once per base for the jobs that set only stackable keys of a base without interpolations
            (their configs without the stackable keys are the base's: a config's conversion took 1 ms a job)."""
            if job.base.values is None or not set(job.keys) <= set(STACKABLE):
                return group_key(job.task_cfg)
            if id(job.base) not in by_base:
                by_base[id(job.base)] = group_key(job.task_cfg)
            return by_base[id(job.base)]

        keys = [key(job) for job in pending]
        groups = [[pending[i] for i in members] for members in plan_groups([job.task_cfg for job in pending], self.max_members, keys)]
        for group in groups:
            group_checkpoint([job.task_cfg for job in group], [job.out_dir for job in group], mmap=True)
        return groups

    def train_groups(self, pending: list[Job]) -> dict[int, float]:
        """Train the jobs as groups, each on its device (``parallel.group_devices``: the groups on ``auto`` spread
        over the visible GPUs), the groups of different GPUs at the same time; returns each job's final value.

        torch's deterministic-algorithms switch is process-wide, so groups that differ in trainer.deterministic
        never train at the same time.
        """
        import torch

        from regularization.config import resolve_device
        from regularization.parallel import check_compile_threads, group_devices

        groups = self.plan(pending)
        devices = [resolve_device(d) for d in group_devices([g[0].task_cfg.device for g in groups], torch.cuda.device_count())]
        check_compile_threads(devices, [g[0].task_cfg.trainer.compile for g in groups])
        log.info("Launching %d jobs as %d vectorized group(s) of at most %d", len(pending), len(groups), max(map(len, groups), default=0))
        started: list[Job] = []
        try:
            for k, (group, device) in enumerate(zip(groups, devices, strict=True), start=1):
                log.info("group %d of %d on %s:", k, len(groups), device)
                for job in group:
                    log.info("\t#%d : %s", job.idx, " ".join(filter_overrides(job.overrides)))
                    started.append(job)
                    self.start_job(job)
            return self.train_started(groups, devices)
        except KeyboardInterrupt:  # before a group, or between groups: a rerun into the sweep dir trains the rest
            from regularization.engine import resume_command

            self.remove_untrained(started)
            log.warning("interrupted: a rerun into the same sweep dir skips the completed jobs and trains the others")
            log.warning("to resume: %s", resume_command(self.config.hydra, multirun=True))
            raise SystemExit(130) from None
        except SystemExit as done:  # a group's own Ctrl-C exit, after marking its members interrupted
            if done.code == 130:
                self.remove_untrained(started)
            raise

    @staticmethod
    def remove_untrained(started: list[Job]) -> None:
        """After Ctrl-C, the dirs of jobs whose group never began (only their .hydra/ files) are removed: a dir
        without a result would read as a failed job in the summary. A rerun into the sweep dir makes them again."""
        from regularization.engine import remove_if_untrained

        log_file = f"{JobRuntime.instance().get('name')}.log"
        for job in started:
            remove_if_untrained(job.out_dir, log_file)

    def train_started(self, groups: list[list[Job]], devices: list["torch.device"]) -> dict[int, float]:
        """Train the groups, whose jobs have started (``start_job``), each on its device; returns each job's final value."""
        from regularization.checkpoint import stop_after_epoch
        from regularization.engine import set_deterministic
        from regularization.parallel import run_per_device
        from regularization.progress import SweepPosition
        from regularization.step import set_matmul_precision
        from regularization.vectorized import stop_requested, train_group

        values: dict[int, float] = {}

        def position(k: int) -> SweepPosition:
            """Group k (from 0) of the sweep; the groups after it on its device train after it, at its pace (roughly)."""
            later = [g[0].task_cfg.trainer.epochs for g, d in zip(groups[k + 1 :], devices[k + 1 :], strict=True) if d == devices[k]]
            return SweepPosition(k + 1, len(groups), sum(later))

        def task(k: int) -> Callable[[], None]:
            group, device = groups[k], devices[k]

            def train() -> None:
                cfgs, dirs, members = [j.task_cfg for j in group], [j.out_dir for j in group], [self.member(j) for j in group]
                first = [group[0].hydra_cfg.hydra]  # with the members given, train_group reads only the first job's
                values.update(zip([j.idx for j in group], train_group(cfgs, dirs, device, first, position(k), members), strict=True))
                gc.collect()  # the group's garbage cycles (only its objects are not frozen: a short pass), then
                gc.freeze()  # its results, kept until the sweep ends, out of later collections as the jobs above

            return train

        def modes(group: list[Job]) -> tuple[bool, str]:  # process-wide settings: groups that differ never train at once
            return group[0].task_cfg.trainer.deterministic, group[0].task_cfg.trainer.matmul_precision

        stop_requested.clear()
        for mode in sorted({modes(g) for g in groups}):
            set_deterministic(mode[0])
            set_matmul_precision(mode[1])
            phase = [(devices[k], task(k)) for k, g in enumerate(groups) if modes(g) == mode]
            with stop_after_epoch(stop_requested):  # Ctrl-C: each group checkpoints the epoch in progress and stops
                run_per_device(phase, stop_requested)
        return values

    @staticmethod
    def place(job: Job) -> Job:
        """The job's dir, as hydra.core.utils.run_job names it: hydra.sweep.dir/hydra.sweep.subdir."""
        base = job.base
        values = job_values(job)
        sweep_dir, subdir = (substituted(base.hydra_template(key), values) for key in ("sweep.dir", "sweep.subdir"))
        if sweep_dir is None or subdir is None:  # interpolations a plain substitution cannot resolve
            config, saved = job.composed.config, HydraConfig.instance().cfg
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = job.idx
            HydraConfig.instance().cfg = config  # for ${hydra:...} in the dir names
            sweep_dir, subdir = (str(OmegaConf.select(config, key)) for key in ("hydra.sweep.dir", "hydra.sweep.subdir"))
            HydraConfig.instance().cfg = saved
        job.out_dir = (Path(sweep_dir) / subdir).absolute()
        return job

    @staticmethod
    def member(job: Job) -> "Member":
        """The job's experiment config, HParams row and job log (``vectorized.Member``) from its plain values and its
        base's settings; from its configs (``members_of``) where its base interpolates."""
        from regularization.checkpoint import experiment_config
        from regularization.logging import JobLog, hparams_of, parse_override
        from regularization.vectorized import Member, members_of

        values = job.base.plain(job.task_cfg, job.keys)
        log_file = job.base.job_log_file
        path = substituted(log_file[0], job_values(job) | {"hydra.runtime.output_dir": str(job.out_dir)}) if log_file else None
        if values is None or (log_file is not None and path is None):
            return members_of([job.task_cfg], [job.hydra_cfg.hydra])[0]
        task_lines = [line for line in job.overrides if not parse_override(line).is_hydra_override()]
        hparams = hparams_of(values, task_lines, set(job.base.dirname_settings[0]))
        return Member(experiment_config(values), hparams, JobLog(Path(path), log_file[1]) if log_file else None)

    def start_job(self, job: Job) -> None:
        """What run_job does before calling the task: the job dir, its .hydra/ files, on_job_start."""
        job.out_dir.mkdir(parents=True, exist_ok=True)
        files = self.hydra_files(job)
        if files is not None:
            HydraFiles.write(files[1], files[0])
        self.job_callback("on_job_start", job, task_function=self.task_function)

    @staticmethod
    def hydra_files(job: Job) -> tuple[Path, dict[str, str]] | None:
        """Where the job's .hydra files go (hydra.output_subdir in its dir) and their texts; None when that is null."""
        subdir = job.base.hydra_template("output_subdir")
        if subdir is not None and (not isinstance(subdir, str) or "${" in subdir):
            subdir = job.config.hydra.output_subdir
        if subdir is None:
            return None
        per_job = [job.composed.task_lines, job.composed.override_dirname, str(job.idx), job.idx, str(job.out_dir)]  # id: a str
        return job.out_dir / str(subdir), HydraFiles.texts(job.task_cfg, job.base, job.keys, per_job, lambda: job.config)

    def finish_job(self, job: Job, value: float) -> JobReturn:
        """The JobReturn that run_job returns for this job. Its return value is what train.py returns: the final
        ``optimize_metric``, or None when there is none (NaN would stop an Optuna study; None fails one trial).

        run_job deep-copies the hydra config into it because it reuses HydraConfig's; this job's is its own.
        """
        ret = LazyJobReturn(job, overrides=list(job.composed.task_lines), cfg=job.task_cfg, working_dir=str(Path.cwd()))
        ret.return_value = value if math.isfinite(value) else None
        ret.status = JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        self.job_callback("on_job_end", job, job_return=ret)
        return ret

    def job_callback(self, name: str, job: Job, **kwargs: Any) -> None:
        """Hydra's callbacks' ``name`` (on_job_start, on_job_end) for the job, with HydraConfig as the job's, as run_job
        calls them; skipped when no callback has its own (the job's full config is then never made)."""
        assert self.hydra_context is not None
        callbacks = self.hydra_context.callbacks
        if not any(getattr(type(c), name) is not getattr(Callback, name) for c in callbacks.callbacks):
            return
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().cfg = job.hydra_cfg
        try:
            getattr(callbacks, name)(config=job.config, **kwargs)
        finally:
            HydraConfig.instance().cfg = saved
