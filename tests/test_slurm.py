"""Sweeps through SLURM and submitit: the `slurm` and `vectorized_slurm` launchers on a real cluster
(scripts/slurm_local.sh), preemption and requeue; `vectorized_local`; short errors for bad launcher input.

Tests marked slurm submit with sbatch; they skip without a cluster and fail without one when REQUIRE_SLURM=1 (.ci/run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regularization.checkpoint import CHECKPOINT, GROUP_CHECKPOINT
from tests.conftest import Run, run_train, the_sweep_dir
from tests.test_launchers import _artifacts
from tests.test_reliability import final_metrics

on_slurm = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def slurm_test(test):  # noqa: ANN001, ANN201
    """A test that submits to the cluster: marked slurm and slow, and needing one."""
    for mark in reversed(on_slurm):
        test = mark(test)
    return test


CPU_JOB = ["hydra.launcher.gpus_per_task=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# Long enough that a job is still training a few seconds after its first checkpoint.
LONG_WD = ["reg.lambd=3", "trainer.epochs=15000", "trainer.eval_every=50"]


def slurm_jobs(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep's jobs (an array's tasks: 12_0, 12_1): submitit keeps each job's pickle in a
    folder named by its id (%j) in hydra.sweep.dir/.submitit."""
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


def requeue(job_id: str) -> None:
    """``scontrol requeue``: SLURM kills the job and queues it again, as a preemption with requeue does."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    requeued(job_id)


def requeued(job_id: str) -> None:
    """Wait for a requeued job to run again, letting it start now: SLURM holds it back for two minutes (BeginTime)."""
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


def wait_for_checkpoint(job: Path, proc: Run, name: str = CHECKPOINT, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not (job / name).exists():
        assert proc.poll() is None, f"the sweep ended before {job / name} appeared:\n{proc.output()}"
        assert time.monotonic() < deadline, f"{job / name} did not appear:\n{proc.output()}"
        time.sleep(0.1)


@slurm_test
def test_slurm_job_requeued_mid_training_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra/launcher=slurm through real sbatch; `scontrol requeue` mid-training; the requeued job resumes from its
    checkpoint and ends with the metrics of an uninterrupted run, to the last bit."""
    # The SLURM job runs on cpus_per_task=1 torch thread; the run it is compared with must use as many.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = tmp_path / "sweep"
    proc = Run(["-m", *LONG_WD, "hydra/launcher=slurm", *CPU_JOB, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"], tmp_path)
    straight = tmp_path / "straight"
    uninterrupted = Run([*LONG_WD, f"hydra.run.dir={straight}"], tmp_path / "alone")  # meanwhile, on the other core
    wait_for_checkpoint(sweep / "job", proc)
    (job_id,) = slurm_jobs(sweep)
    requeue(job_id)
    assert proc.wait(timeout=240) == 0, proc.output()
    assert "resuming from" in (sweep / "job" / "train.log").read_text()
    assert uninterrupted.wait(timeout=240) == 0, uninterrupted.output()
    assert final_metrics(sweep / "job") == final_metrics(straight)
    assert json.loads((sweep / "job" / "metrics.json").read_text())["status"] == "completed"


@slurm_test
def test_vectorized_slurm_groups_preempted_or_cancelled(tmp_path: Path) -> None:
    """hydra/launcher=vectorized_slurm: 4 jobs as 2 group jobs of a job array. Group 0 is preempted mid-training
    (SIGUSR2, as SLURM signals a job before preempting it or at its time limit: submitit calls the group's checkpoint
    and requeues it) and resumes from its group checkpoint: its members end bit for bit as in the in-process
    vectorized launcher. Group 1 is cancelled: its members are failed, the sweep still writes its summary, exits 1."""
    args = ["-m", "reg.lambd=0,1,2,3", "trainer.epochs=12000", "trainer.eval_every=50", "hydra.launcher.max_members=2"]
    straight = Run([*args, "hydra/launcher=vectorized", f"hydra.sweep.dir={tmp_path / 'straight'}"], tmp_path / "in_process")
    sweep = tmp_path / "sweep"
    proc = Run([*args, "hydra/launcher=vectorized_slurm", *CPU_JOB, f"hydra.sweep.dir={sweep}"], tmp_path)
    first = sweep / "reg.lambd=0"
    wait_for_checkpoint(first, proc, GROUP_CHECKPOINT)
    preempted, cancelled = slurm_jobs(sweep)
    subprocess.run(["scancel", cancelled], check=True)
    subprocess.run(["scancel", "--signal=USR2", preempted], check=True)
    requeued(preempted)
    assert proc.wait(timeout=240) == 1, proc.output()  # a failed group fails the sweep
    assert straight.wait(timeout=240) == 0, straight.output()
    assert "resuming the group of 2 jobs" in (sweep / ".submitit" / preempted / f"{preempted}_0_log.err").read_text()
    for lambd in (0, 1):
        job = f"reg.lambd={lambd}"
        assert final_metrics(sweep / job) == final_metrics(tmp_path / "straight" / job)
    for lambd in (2, 3):
        failed = json.loads((sweep / f"reg.lambd={lambd}" / "metrics.json").read_text())
        assert failed["status"] == "failed" and cancelled in failed["error"]
    assert "2 of 4 jobs failed" in proc.output()
    assert len((sweep / "summary.csv").read_text().splitlines()) == 5


@slurm_test
def test_slurm_launchers_write_one_sweep_dir(tmp_path: Path) -> None:
    """Each SLURM job composes its config again, on its node: all of them write into the one sweep dir the sweep's
    process named (its ${pid:}), which then holds the summary of every job."""
    for launcher in ("slurm", "vectorized_slurm"):
        (tmp_path / launcher).mkdir()
        run_train(["-m", "reg.lambd=0,3", "trainer.epochs=2", f"hydra/launcher={launcher}", *CPU_JOB], tmp_path / launcher)
        the_sweep_dir(tmp_path / launcher, 2)


@slurm_test
@pytest.mark.parametrize("launcher", ["slurm", "vectorized_slurm"])
def test_a_partition_that_does_not_exist(tmp_path: Path, launcher: str) -> None:
    proc = run_train(
        ["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}", *CPU_JOB, "hydra.launcher.partition=nope"], tmp_path, check=False
    )
    assert proc.returncode == 1
    assert f"hydra/launcher={launcher}: sbatch refused the sweep's jobs: sbatch: error: invalid partition specified: nope" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/multirun/*"))  # nothing trained, no sweep dir


@pytest.mark.parametrize("launcher", ["slurm", "vectorized_slurm"])
def test_a_slurm_launcher_without_slurm(tmp_path: Path, launcher: str) -> None:
    """On a machine without sbatch: a short message naming the launcher and what is missing, nothing written."""
    no_slurm = {"PATH": str(Path(sys.executable).parent)}  # python, and no sbatch
    proc = run_train(
        ["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, env=no_slurm, check=False
    )
    assert proc.returncode == 1
    assert f"hydra/launcher={launcher} submits the sweep with SLURM's sbatch, which is not on PATH on this machine" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("launcher", ["slurm", "vectorized_slurm"])
def test_sbatch_without_a_reachable_controller(tmp_path: Path, launcher: str) -> None:
    """SLURM's commands on PATH but no controller they can reach: sbatch prints where it failed first and why last.
    The message keeps the why, in at most 3 lines, and the sweep, which never trained, leaves no dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    errors = [
        "sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host",
        "sbatch: fatal: Could not establish a configuration source",
    ]
    (bin_dir / "sbatch").write_text("#!/bin/sh\n" + "".join(f"echo '{line}' >&2\n" for line in errors) + "exit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun is there
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    path = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}"}
    proc = run_train(["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}"], tmp_path, env=path, check=False)
    assert proc.returncode == 1
    message = [line for line in proc.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]  # Hydra's hint
    assert message == [f"hydra/launcher={launcher}: sbatch refused the sweep's jobs: {errors[0]}", f"  {errors[1]}"]
    assert not list(tmp_path.glob("outputs/multirun/*"))


@pytest.mark.parametrize("launcher", ["vectorized_local", "vectorized_slurm"])
def test_max_members_below_one(tmp_path: Path, launcher: str) -> None:
    proc = run_train(["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}", "hydra.launcher.max_members=0"], tmp_path, check=False)
    assert proc.returncode == 1
    assert "hydra.launcher.max_members: must be >= 1, got 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/multirun/*"))  # nothing trained, no sweep dir


@pytest.mark.slow
def test_vectorized_local_equals_the_in_process_launcher(tmp_path: Path) -> None:
    """The same groups through submitit's local executor (the vectorized_slurm code path, one process per group):
    the same artifacts per job, and the same numbers as the in-process vectorized launcher."""
    args = ["-m", "reg=l1,l2", "reg.lambd=0,3", "trainer.epochs=5", "hydra.launcher.max_members=2"]
    sweeps = {}
    for launcher in ("vectorized", "vectorized_local"):  # each as a user runs it: its own working dir, the default sweep dir
        (tmp_path / launcher).mkdir()
        run_train([*args, f"hydra/launcher={launcher}"], tmp_path / launcher)
        sweeps[launcher] = the_sweep_dir(tmp_path / launcher, 4)
    expected = _artifacts(sweeps["vectorized"])
    assert len(expected) == 4
    assert _artifacts(sweeps["vectorized_local"]) == expected
    for job in expected:
        assert (sweeps["vectorized_local"] / job / "train.log").read_text().count("epoch 5/5") == 1


class _SubmittedJob:
    """What VectorizedSlurmLauncher.wait reads of submitit's job: its id, whether its result is there, its log."""

    def __init__(self, log: Path, done_after: int | None) -> None:
        self.job_id, self.paths, self.calls, self.done_after = "12", type("Paths", (), {"stderr": log}), 0, done_after

    def done(self) -> bool:
        self.calls += 1
        return self.done_after is not None and self.calls > self.done_after


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squeue_answers: list[str], show: str) -> None:
    """squeue answers in turn (then the last again): 'RUNNING' (listed), '' (not listed), or 'error: MESSAGE' (exit 1);
    scontrol prints `show`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "answers").write_text("\n".join(squeue_answers) + "\n")
    (bin_dir / "squeue").write_text(
        f"#!/bin/sh\nf={tmp_path}/answers\nline=$(head -n1 $f)\n[ $(wc -l < $f) -gt 1 ] && sed -i 1d $f\n"
        'case "$line" in error:*) echo "slurm_load_jobs $line" >&2; exit 1;; esac\n[ -n "$line" ] && echo "$line"\nexit 0\n'
    )
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho '{show}'\n")
    for tool in ("squeue", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setattr(time, "sleep", lambda s: None)


def test_a_busy_controller_is_not_a_dead_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue failing for a moment (the controller busy, as under CI's load) or missing the job once must not fail
    the group: the launcher asks again, and waits for the result."""
    from hydra_plugins.regularization_launcher.submitit_groups import VectorizedSlurmLauncher, queued

    answers = ["error: Socket timed out on send/recv operation", "", "RUNNING", "error: Unable to contact slurm controller"]
    _fake_slurm(tmp_path, monkeypatch, answers * 2, "JobId=12 JobState=RUNNING")
    assert [queued("12") for _ in answers] == [None, False, True, None]
    job = _SubmittedJob(tmp_path / "12_0_log.err", done_after=6)
    VectorizedSlurmLauncher.wait(None, job)  # returns: no UncompletedJobError
    assert job.calls == 7


def test_a_job_gone_without_a_result_says_how_it_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.regularization_launcher.submitit_groups import VectorizedSlurmLauncher, queued

    _fake_slurm(
        tmp_path,
        monkeypatch,
        ["RUNNING", "", "error: Invalid job id specified"],
        "JobId=12 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0",
    )
    (tmp_path / "12_0_log.err").write_text("srun: error: task 0 launch failed\nsrun: error: Out of memory\n\n")
    with pytest.raises(UncompletedJobError, match="SLURM job 12 ended without a result") as raised:
        VectorizedSlurmLauncher.wait(None, _SubmittedJob(tmp_path / "12_0_log.err", done_after=None))
    assert str(raised.value).endswith("(JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0; its log ends: srun: error: Out of memory)")
    assert queued("12") is False  # a job SLURM has forgotten
