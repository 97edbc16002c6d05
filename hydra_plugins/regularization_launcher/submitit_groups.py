"""``hydra/launcher=vectorized_slurm`` and ``vectorized_local``: the vectorized launcher's stacked groups as submitit
jobs, one job per group (a SLURM job array of groups), and the ``slurm`` preset's launcher, checked.

The sweep's process composes and checks every job, skips completed ones, plans the groups, refuses a group
checkpoint that does not fit its group, and writes each job's dir and ``.hydra/`` files, all as the in-process
vectorized launcher does; then each group trains in its own job (``vectorized.train_group``: event files,
metrics.json, train.log, the group checkpoint) and the JobReturns are made back here, one per member, once every
group is back. A group whose job dies marks its members failed; the others go on.

Preemption and time limits: SLURM signals the job (``signal_delay_s`` before the end), submitit calls
``GroupRunner.checkpoint`` and requeues the job, which resumes from the group checkpoint. The executor is
submitit's ``AutoExecutor``, given the parameters as hydra-submitit-launcher gives them (its launcher builds the
executor inside ``launch``, which maps the launcher itself over the jobs, so that code cannot be called for groups).
"""

import io
import logging
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.regularization_launcher import Job, VectorizedLauncher

try:  # the `launchers` extra; without it these launchers are not offered
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:  # pragma: no cover - exercised only without the extra
    BaseQueueConf = LocalQueueConf = SlurmQueueConf = SubmititSlurmLauncher = None

log = logging.getLogger(__name__)


LOCAL_LAUNCHERS = ("hydra_submitit_launcher.submitit_launcher.LocalLauncher", "submitit_groups.VectorizedLocalLauncher")


class LocalGpus(Callback):
    """submitit's local executor gives each job ``gpus_per_node`` GPUs, and with none set, none: it sets
    ``CUDA_VISIBLE_DEVICES=""``, and ``device=auto`` would train on the CPU without a word. Before the launcher is
    made, an unset ``gpus_per_node`` of ``submitit_local`` or ``vectorized_local`` becomes the number of GPUs this
    process sees (each job then takes cuda:(k mod N)); a value set, 0 included, stays. A Hydra callback
    (conf/config.yaml), since hydra-submitit-launcher's own launcher reads the config as it is."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith(LOCAL_LAUNCHERS) or launcher.get("gpus_per_node") is not None:
            return
        import torch

        n_gpus = torch.cuda.device_count()
        with read_write(launcher), open_dict(launcher):
            launcher.gpus_per_node = n_gpus
        if n_gpus:
            log.info("each local job sees this machine's %d GPU(s) (hydra.launcher.gpus_per_node=%d)", n_gpus, n_gpus)


@dataclass
class GroupSpec:
    """What one group's job needs: the members' task configs, their dirs and their (resolved) hydra nodes."""

    cfgs: list[DictConfig]
    out_dirs: list[Path]
    hydra_cfgs: list[DictConfig]
    group: int  # group k (from 1) of groups, for its progress lines
    groups: int


class GroupRunner:
    """The callable submitit runs in each group's job. ``checkpoint`` is what submitit calls when SLURM preempts
    the job or its time runs out: the same group, submitted again, which resumes from its group checkpoint."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __call__(self, group: GroupSpec) -> list[float]:
        import torch

        from regularization.config import resolve_device
        from regularization.parallel import job_device
        from regularization.progress import SweepPosition
        from regularization.vectorized import train_group

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        if self.threads:  # SLURM's cpus_per_task: without cgroups torch would take every core of the node
            torch.set_num_threads(self.threads)
        device = resolve_device(job_device(group.cfgs[0].device))  # the job's node decides: its GPU, or its CPU
        # The array's jobs train side by side: no group trains after this one, for the sweep's ETA.
        return train_group(group.cfgs, group.out_dirs, device, group.hydra_cfgs, SweepPosition(group.group, group.groups))

    def checkpoint(self, group: GroupSpec) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, group)


def sbatch_missing(launcher: str) -> None:
    """ConfigError, before anything is written, when SLURM's sbatch is not here to submit to."""
    from regularization.config import ConfigError

    if shutil.which("sbatch") is None:
        raise ConfigError(
            f"hydra/launcher={launcher} submits the sweep with SLURM's sbatch, which is not on PATH on this machine. "
            f"Run the sweep on the cluster's login node, or run it here with hydra/launcher="
            f"{'vectorized_local' if launcher.startswith('vectorized') else 'submitit_local'}."
        )


def submitted(executor: Any, runner: GroupRunner, groups: list[GroupSpec], launcher: str) -> list[Any]:
    """The groups submitted as one job array; sbatch's failure (a partition that doesn't exist, say) as a ConfigError."""
    with submission(launcher):
        return executor.map_array(runner, groups)


@contextmanager
def submission(launcher: str) -> Iterator[None]:
    """A block that submits jobs with submitit: sbatch's failure becomes a ConfigError of at most 3 lines that keeps
    its cause (``refusal``).

    submitit prints a failed sbatch's stderr before raising it, which would say the cause twice: stderr is held while
    the block runs, dropped when the error quotes it, and passed on otherwise (hydra/launcher=slurm waits for its
    jobs in the block: a warning in the meantime shows at the end; the logs go to stdout).
    """
    from submitit.core.utils import FailedJobError

    from regularization.config import ConfigError

    held, quoted = io.StringIO(), False
    try:
        with redirect_stderr(held):
            yield
    except FailedJobError as err:
        if "sbatch" not in str(err) and "batch job submission failed" not in str(err).lower():
            raise  # a job's failure, not the submission's
        quoted = True
        raise ConfigError(refusal(launcher, str(err))) from None
    finally:
        if not quoted:
            sys.stderr.write(held.getvalue())


def refusal(launcher: str, stderr: str) -> str:
    """sbatch's failure in at most 3 lines: its first error line, and its last, which says why (sbatch ends on the
    fatal one: ``Could not establish a configuration source``, ``Batch job submission failed: ...``)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()] or ["no message"]
    message = f"hydra/launcher={launcher}: sbatch refused the sweep's jobs: {lines[0]}"
    return message if len(lines) == 1 else f"{message}\n  {lines[-1]}"


class VectorizedSubmititLauncher(VectorizedLauncher):
    _EXECUTOR = "abstract"
    NAME = "vectorized_submitit"

    def __init__(self, max_members: int | None = None, **params: Any) -> None:
        super().__init__(max_members)
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in params.items()}

    def check(self, job: Job, checked: set[int]) -> None:
        """The job's config and data, each job on its own config (``checked`` unused: no device to check here); its
        device is checked in its own job, on the node that runs it."""
        from regularization.config import validate
        from regularization.data import check_data
        from regularization.vectorized import check_vectorizable

        validate(job.task_cfg)
        check_data(job.task_cfg)
        check_vectorizable(job.task_cfg)

    def executor(self) -> Any:
        """submitit's executor with the launcher's parameters, mapped as hydra-submitit-launcher maps them."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        return executor

    def train_groups(self, pending: list[Job]) -> dict[int, float]:
        """Every group submitted at once (a job array); each job's final values as the groups come back."""
        from regularization.logging import write_json_atomic

        groups = self.plan(pending)
        log.info("Launching %d jobs as %d vectorized group(s) of at most %d", len(pending), len(groups), max(map(len, groups), default=0))
        for k, group in enumerate(groups, start=1):
            log.info("group %d of %d:", k, len(groups))
            for job in group:
                log.info("\t#%d : %s", job.idx, " ".join(filter_overrides(job.overrides)))
                self.start_job(job)
        specs = [
            GroupSpec([j.task_cfg for j in g], [j.out_dir for j in g], [self.resolved_hydra(j) for j in g], k, len(groups))
            for k, g in enumerate(groups, start=1)
        ]
        jobs = submitted(self.executor(), GroupRunner(self.params.get("cpus_per_task")), specs, self.NAME)
        log.info("Submitted %d group job(s): %s", len(jobs), " ".join(str(j.job_id) for j in jobs))
        values: dict[int, float] = {}
        for group, submitted_job in zip(groups, jobs, strict=True):
            try:
                self.wait(submitted_job)
                group_values = submitted_job.result()
            except Exception as err:  # noqa: BLE001 - a job that died (killed, out of memory, out of time): its members failed
                error = f"the group's job {submitted_job.job_id} failed: {_last_line(err)}"
                log.error("%s; its log is in %s", error, submitted_job.paths.stderr)
                for job in group:
                    if _status(job.out_dir) in ("interrupted", None):
                        write_json_atomic(job.out_dir / "metrics.json", {"status": "failed", "error": error})
                group_values = [math.nan] * len(group)
            values.update(zip([job.idx for job in group], group_values, strict=True))
        return values

    def wait(self, submitted_job: Any) -> None:
        submitted_job.wait()

    @staticmethod
    def resolved_hydra(job: Job) -> DictConfig:
        """The job's hydra node with its interpolations resolved (they may point into the task config or at
        HydraConfig), to travel to the group's job without its parent config."""
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().cfg = job.hydra_cfg
        try:
            return OmegaConf.create(OmegaConf.to_container(job.hydra_cfg.hydra, resolve=True))
        finally:
            HydraConfig.instance().cfg = saved


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _status(out_dir: Path) -> str | None:
    import json

    try:
        return json.loads((out_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


class VectorizedSlurmLauncher(VectorizedSubmititLauncher):
    _EXECUTOR = "slurm"
    NAME = "vectorized_slurm"

    def check_launcher(self) -> None:
        super().check_launcher()
        sbatch_missing(self.NAME)

    def wait(self, submitted_job: Any) -> None:
        """Until the job has written its result, or SLURM no longer lists it (it died without one). submitit
        asks sacct, which a cluster without accounting (scripts/slurm_local.sh's) cannot answer: alone it would
        wait forever for a cancelled job. A job is taken for gone only when squeue answers, twice, without it;
        an squeue that fails (a busy controller) is asked again."""
        from submitit.core.utils import UncompletedJobError

        job_id = str(submitted_job.job_id)
        while not submitted_job.done():
            if queued(job_id) is False:
                time.sleep(2)  # a result written just before the job left the queue (on a shared file system: later)
                if submitted_job.done():
                    return
                if queued(job_id) is False:
                    raise UncompletedJobError(
                        f"SLURM job {job_id} ended without a result ({ended_how(job_id, submitted_job.paths.stderr)})"
                    )
            time.sleep(1)


def queued(job_id: str) -> bool | None:
    """Whether SLURM still lists the job (pending, running, requeued or completing); None when squeue cannot say
    (the controller busy or out of reach). A job SLURM has already forgotten is not listed: "Invalid job id"."""
    squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if squeue.returncode == 0:
        return bool(squeue.stdout.strip())
    return False if "Invalid job id" in squeue.stderr else None


def ended_how(job_id: str, stderr_log: Path) -> str:
    """How SLURM says the job ended (its state, reason and exit code, while the controller remembers it) and the
    last line of its stderr log: what a user needs to tell a cancel from a crash or a node failure."""
    show = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in show.split() if "=" in f)
    state = " ".join(f"{k}={fields[k]}" for k in ("JobState", "Reason", "ExitCode") if k in fields) or "cancelled, killed or out of time"
    try:
        lines = [line.strip() for line in Path(stderr_log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return f"{state}; its log ends: {lines[-1]}" if lines else state


class VectorizedLocalLauncher(VectorizedSubmititLauncher):
    _EXECUTOR = "local"
    NAME = "vectorized_local"


if SlurmQueueConf is not None:

    class SlurmLauncher(SubmititSlurmLauncher):
        """hydra-submitit-launcher's SLURM launcher (``hydra/launcher=slurm``), with short errors for a machine
        without SLURM and for a submission that sbatch refuses."""

        def launch(self, job_overrides, initial_job_idx):  # noqa: ANN001, ANN201 - Launcher's signature
            sbatch_missing("slurm")
            with submission("slurm"):
                return super().launch(job_overrides, initial_job_idx)

    @dataclass
    class VectorizedSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.regularization_launcher.submitit_groups.VectorizedSlurmLauncher"
        max_members: int | None = None  # the most jobs trained as one stacked model (one SLURM job per group); null: as vectorized
        gpus_per_task: int | None = 1  # each group's job sees one GPU as cuda; 0 for CPU-only jobs
        cpus_per_task: int | None = 4  # also torch's thread count in each group's job
        mem_gb: int | None = 16  # memory per node, in GB
        array_parallelism: int = 64  # at most this many groups run at once
        # Preemption and time limits: SLURM signals a job signal_delay_s before it stops it; submitit then
        # requeues the job, which resumes from its group checkpoint (timed out: at most max_num_timeout times).
        max_num_timeout: int = 3

    @dataclass
    class VectorizedLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.regularization_launcher.submitit_groups.VectorizedLocalLauncher"
        max_members: int | None = None  # the most jobs trained as one stacked model (one local process per group); null: as vectorized
        # gpus_per_node: null (LocalQueueConf's) means every GPU this machine shows (LocalGpus, a callback)

    ConfigStore.instance().store(group="hydra/launcher", name="vectorized_slurm", node=VectorizedSlurmConf, provider="regularization")
    ConfigStore.instance().store(group="hydra/launcher", name="vectorized_local", node=VectorizedLocalConf, provider="regularization")
