"""Sweeps through a real SLURM cluster (scripts/slurm_local.sh): the `slurm` launcher, preemption and requeue.

These tests submit with sbatch; they skip without a cluster and fail without one when REQUIRE_SLURM=1 (.ci/run).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from regularization.checkpoint import CHECKPOINT
from tests.test_reliability import Run, final_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

CPU_JOB = ["hydra.launcher.gpus_per_task=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# Long enough that a job is still training a few seconds after its first checkpoint.
LONG_WD = ["reg.lambd=3", "trainer.epochs=1000", "trainer.eval_every=50"]


def slurm_jobs(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep's jobs: submitit names a folder per job (%j) in hydra.sweep.dir/.submitit."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())


def requeue(job_id: str) -> None:
    """``scontrol requeue`` (SLURM kills the job and queues it again, as a preemption with requeue does), then
    let it start again now: SLURM holds a requeued job back for two minutes (BeginTime)."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while not started_again(job_id):
        assert time.monotonic() < deadline, f"job {job_id} did not start again after its requeue"
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)


def started_again(job_id: str) -> bool:
    """Whether the job has been restarted (requeued) and is running or done."""
    show = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    restarted = "Restarts=0 " not in show
    return restarted and not any(f"JobState={s} " in show for s in ("PENDING", "REQUEUED", "COMPLETING", "REQUEUE_HOLD"))


def wait_for_checkpoint(job: Path, proc: Run, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (job / CHECKPOINT).exists():
        assert proc.poll() is None, f"the sweep ended before {job / CHECKPOINT} appeared:\n{proc.output()}"
        assert time.monotonic() < deadline, f"{job / CHECKPOINT} did not appear:\n{proc.output()}"
        time.sleep(0.1)


def test_slurm_job_requeued_mid_training_resumes_bitwise(tmp_path: Path) -> None:
    """hydra/launcher=slurm through real sbatch; `scontrol requeue` mid-training; the requeued job resumes from its
    checkpoint and ends with the metrics of an uninterrupted run, to the last bit."""
    sweep = tmp_path / "sweep"
    proc = Run(["-m", *LONG_WD, "hydra/launcher=slurm", *CPU_JOB, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"], tmp_path)
    straight = tmp_path / "straight"
    (tmp_path / "alone").mkdir()
    uninterrupted = Run([*LONG_WD, f"hydra.run.dir={straight}"], tmp_path / "alone")  # meanwhile, on the other core
    wait_for_checkpoint(sweep / "job", proc)
    (job_id,) = slurm_jobs(sweep)
    requeue(job_id)
    assert proc.wait(timeout=240) == 0, proc.output()
    assert "resuming from" in (sweep / "job" / "train.log").read_text()
    assert uninterrupted.wait(timeout=240) == 0, uninterrupted.output()
    assert final_metrics(sweep / "job") == final_metrics(straight)
    assert json.loads((sweep / "job" / "metrics.json").read_text())["status"] == "completed"
