"""Nothing lost: checkpoints and resume after SIGKILL, Ctrl-C, divergence, failed jobs, sweep resume, determinism."""

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import read_write
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from regularization.checkpoint import CHECKPOINT, GROUP_CHECKPOINT, checkpoint_epoch
from regularization.config import ConfigError
from regularization.engine import preflight, train
from tests.conftest import ONE_AT_A_TIME, ROOT, Run, run_train, wait_for


def final_metrics(job_dir: Path) -> dict:
    m = json.loads((job_dir / "metrics.json").read_text())
    m.pop("wall_s")
    m.pop("group_wall_s", None)  # a vectorized member's: its group's time
    return m


def steps(job_dir: Path, tag: str = "loss/test") -> list[int]:
    acc = EventAccumulator(str(job_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


# A checkpoint after every epoch (no minimum interval), so that a kill lands between two checkpoints mid-run.
EVERY_EPOCH = "trainer.checkpoint_min_interval_s=0"
WEIGHT_DECAY_ADAM = ["optim=adam", "optim.lr=0.01", "reg.lambd=0.1", "trainer.epochs=1500", "trainer.eval_every=50", EVERY_EPOCH]


def dropout_tiny(root: Path) -> list[str]:
    return ["+experiment=dropout", f"data.root={root}", "data.batch_size=32", "trainer.epochs=150", "trainer.eval_every=5", EVERY_EPOCH]


@ONE_AT_A_TIME
@pytest.mark.slow
@pytest.mark.parametrize("case", ["weight_decay_adam", "dropout_mlp", "dropout_mlp_bf16"])
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, tiny_fashion_root, case):
    """At every precision a CPU can train in (trainer.precision=16-mixed is CUDA only)."""
    args = WEIGHT_DECAY_ADAM if case == "weight_decay_adam" else dropout_tiny(tiny_fashion_root)
    shorter = {
        "weight_decay_adam": ["trainer.epochs=600"],
        "dropout_mlp": [],
        "dropout_mlp_bf16": ["trainer.epochs=60", "trainer.precision=bf16-mixed"],
    }
    if shorter[case]:  # the suite's time: still far more epochs than the kill needs
        args = [a for a in args if not a.startswith("trainer.epochs=")] + shorter[case]
    run_train([*args, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    killed = tmp_path / "killed"
    proc = Run([*args, f"hydra.run.dir={killed}"], tmp_path)
    wait_for(killed / CHECKPOINT, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()  # it really died mid-training
    epochs = int(next(a for a in args if a.startswith("trainer.epochs=")).split("=")[1])
    assert torch.load(killed / CHECKPOINT, weights_only=True)["epoch"] < epochs  # and resumes from a mid-run checkpoint
    resumed = run_train([*args, f"hydra.run.dir={killed}"], tmp_path)
    assert "resuming from" in resumed.stdout
    assert final_metrics(killed) == final_metrics(tmp_path / "straight")  # bitwise: JSON floats round-trip exactly
    expected = steps(tmp_path / "straight")
    assert steps(killed) == expected  # the event file continues without duplicate steps


@ONE_AT_A_TIME
@pytest.mark.slow
def test_ctrl_c_checkpoints_flushes_and_exits_130(tmp_path):
    job = tmp_path / "job"
    proc = Run([*WEIGHT_DECAY_ADAM, "trainer.epochs=100000", f"hydra.run.dir={job}"], tmp_path)
    wait_for(job / CHECKPOINT, proc)
    while checkpoint_epoch(job / CHECKPOINT) <= 50:  # past its first evaluation (epoch 50), however busy the machine
        assert proc.poll() is None, proc.output()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.output()
    m = json.loads((job / "metrics.json").read_text())
    assert m["status"] == "interrupted"
    ckpt = torch.load(job / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == m["epochs"] > 0
    assert f"stopped after epoch {m['epochs']}, its checkpoint saved" in proc.output()
    logged = steps(job)
    assert logged and logged[-1] <= m["epochs"]  # flushed: the evaluations made are in the event file
    # It ends with the command that resumes it: the same one, pointed at its run dir.
    command = shlex.split(proc.output().split("to resume: ")[1].splitlines()[0])
    assert command == [sys.executable, str(ROOT / "train.py"), *WEIGHT_DECAY_ADAM, "trainer.epochs=100000", f"hydra.run.dir={job}"]
    resumed = run_train([*command[2:], f"trainer.epochs={m['epochs'] + 50}"], tmp_path)  # a shorter budget, to finish
    assert "resuming from" in resumed.stdout and json.loads((job / "metrics.json").read_text())["status"] == "completed"


@ONE_AT_A_TIME
@pytest.mark.slow
def test_ctrl_c_under_the_vectorized_launcher_marks_every_member_interrupted(tmp_path):
    """Ctrl-C mid-group: its members are interrupted at its checkpoint's epoch; the dir of a group that never began
    (λ = 5, the second group of at most 2) is removed, as it holds no result."""
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=vectorized", "hydra.launcher.max_members=2"]
    args = ["-m", "reg.lambd=0,3,5", "trainer.epochs=100000", *launcher, f"hydra.sweep.dir={sweep}"]
    proc = Run(args, tmp_path)
    first = sweep / "reg.lambd=0"
    wait_for(first / GROUP_CHECKPOINT, proc, timeout=600)
    time.sleep(1.0)  # let it train a while
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.output()
    done = torch.load(first / GROUP_CHECKPOINT, weights_only=True)["epoch"]  # the group's checkpoint stands
    for lambd in (0, 3):
        job = sweep / f"reg.lambd={lambd}"
        assert json.loads((job / "metrics.json").read_text()) == {"status": "interrupted", "epochs": done}
        assert steps(job)[-1] == done  # the events end at the checkpoint's epoch too
    assert f"the group's checkpoint after epoch {done} stands" in proc.output()
    assert not (sweep / "reg.lambd=5").exists()
    command = shlex.split(proc.output().split("to resume: ")[1].splitlines()[0])
    assert command == [sys.executable, str(ROOT / "train.py"), *args[:-1], f"hydra.sweep.dir={sweep}"]


@pytest.mark.slow
def test_divergence_is_a_result_not_a_crash(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "optim.lr=0.003,1e5", "trainer.epochs=20", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0
    diverged = json.loads((sweep / "optim.lr=100000.0" / "metrics.json").read_text())
    fine = json.loads((sweep / "optim.lr=0.003" / "metrics.json").read_text())
    assert diverged["status"] == "diverged" and 1 <= diverged["epochs"] < 20
    assert fine["status"] == "completed"
    assert "diverged" in (sweep / "summary.csv").read_text()


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep(tmp_path, tiny_fashion_root):
    sweep = tmp_path / "sweep"
    # 10^11 hidden units cannot be allocated: a real failure inside the job, after its config passed
    args = ["-m", "+experiment=dropout", f"data.root={tiny_fashion_root}", "trainer.epochs=2", "model.hidden1=100000000000,8"]
    proc = run_train([*args, f"hydra.sweep.dir={sweep}"], tmp_path, check=False)
    assert proc.returncode != 0
    failed, ok = (
        sweep / "model.hidden1=100000000000",
        sweep / "model.hidden1=8",
    )
    assert json.loads((failed / "metrics.json").read_text())["status"] == "failed"
    assert "Traceback" in (failed / "traceback.txt").read_text()
    assert json.loads((ok / "metrics.json").read_text())["status"] == "completed"
    summary = (sweep / "summary.csv").read_text()
    assert "failed" in summary and "completed" in summary
    assert "1 of 2 jobs failed" in proc.stderr and "Traceback" not in proc.stderr


@ONE_AT_A_TIME
@pytest.mark.slow
def test_rerunning_a_sweep_skips_completed_jobs_and_resumes_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    # 300 epochs, a checkpoint after each: the second job is killed at its first checkpoint, far from its end.
    args = ["-m", "reg.lambd=0,3", "trainer.epochs=300", "trainer.eval_every=50", EVERY_EPOCH, f"hydra.sweep.dir={sweep}"]
    first, second = (sweep / f"reg.lambd={lambd}" for lambd in (0, 3))
    proc = Run(args, tmp_path)
    wait_for(second / CHECKPOINT, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert final_metrics(first)["status"] == "completed" and not (second / "metrics.json").exists()
    done_first = (first / "metrics.json").read_text()
    rerun = run_train(args, tmp_path)
    assert "already completed, skipping" in rerun.stdout and "resuming from" in rerun.stdout
    assert (first / "metrics.json").read_text() == done_first  # not retrained
    straight = tmp_path / "straight"
    run_train(["reg.lambd=3", "trainer.epochs=300", "trainer.eval_every=50", f"hydra.run.dir={straight}"], tmp_path)
    assert final_metrics(second) == final_metrics(straight)


def test_same_seed_gives_bitwise_identical_metrics(make_cfg, tiny_fashion_root, tmp_path):
    for overrides in (["trainer.epochs=30"], [*dropout_tiny(tiny_fashion_root)[:3], "trainer.epochs=4"]):
        a, b = make_cfg(*overrides), make_cfg(*overrides)
        for cfg in (a, b):
            train(cfg, preflight(cfg), Path(cfg.hydra.runtime.output_dir))
        assert final_metrics(Path(a.hydra.runtime.output_dir)) == final_metrics(Path(b.hydra.runtime.output_dir))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["garbage", "code", "foreign", "not_a_dict"])
def test_bad_checkpoints_are_refused_before_training(make_cfg, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("trainer.epochs=3")
    job = Path(cfg.hydra.runtime.output_dir)
    if kind == "foreign":
        other = make_cfg("trainer.epochs=3", "reg.lambd=1")
        train(other, preflight(other), job)
        (job / "metrics.json").unlink()
    elif kind == "garbage":
        (job / CHECKPOINT).write_bytes(b"\x00not a checkpoint")
    elif kind == "code":
        (job / CHECKPOINT).write_bytes(pickle.dumps({"format": _RunsCode()}))
    else:
        torch.save([1, 2, 3], job / CHECKPOINT)
    with pytest.raises(ConfigError, match="Invalid checkpoint") as info:
        train(cfg, preflight(cfg), job)
    assert not (tmp_path / "pwned").exists()
    if kind == "foreign":
        assert "reg.lambd" in str(info.value)


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_write(make_cfg, tmp_path, monkeypatch):
    """Ctrl-C inside torch.save (its zip writer would turn it into a RuntimeError) is raised once the checkpoint
    is complete, so the run ends interrupted with a readable checkpoint."""
    from regularization.checkpoint import checkpoint_epoch, save_checkpoint

    cfg = make_cfg()
    path = tmp_path / CHECKPOINT
    save = torch.save

    def save_hit_by_ctrl_c(obj, f):
        signal.raise_signal(signal.SIGINT)
        save(obj, f)

    monkeypatch.setattr(torch, "save", save_hit_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 7}, cfg, torch.device("cpu"))
    assert checkpoint_epoch(path) == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back


def test_an_interrupted_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    from regularization.logging import atomic_file

    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_many_files_written_at_once_are_synced_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    """A group's metrics.json files (``write_texts_atomic``): every file's new text lands, readable by all, after one
    sync of the filesystem (not an fsync each); interrupted before the renames, every old file stands, no temp is left."""
    import regularization.logging as logging_

    dirs = [tmp_path / f"job{k}" for k in range(3)]
    for d in dirs:
        d.mkdir()
        (d / "metrics.json").write_text("old")
    events: list[str] = []
    sync = logging_.sync_filesystems
    monkeypatch.setattr(logging_, "sync_filesystems", lambda ds: (events.append("sync"), sync(ds)))
    monkeypatch.setattr(logging_.os, "replace", lambda a, b, replace=os.replace: (events.append("replace"), replace(a, b)))
    logging_.write_texts_atomic([(d / "metrics.json", f"new {k}") for k, d in enumerate(dirs)])
    assert events == ["sync", "replace", "replace", "replace"]
    assert [(d / "metrics.json").read_text() for d in dirs] == ["new 0", "new 1", "new 2"]
    assert all(oct((d / "metrics.json").stat().st_mode)[-3:] == "644" and os.listdir(d) == ["metrics.json"] for d in dirs)

    def interrupted(ds: set) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(logging_, "sync_filesystems", interrupted)
    with pytest.raises(KeyboardInterrupt):
        logging_.write_texts_atomic([(d / "metrics.json", "newer") for d in dirs])
    assert [(d / "metrics.json").read_text() for d in dirs] == ["new 0", "new 1", "new 2"]
    assert all(os.listdir(d) == ["metrics.json"] for d in dirs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoint_cadence_every_k_epochs_at_least_t_apart_and_always_the_last():
    from regularization.checkpoint import CheckpointCadence

    clock = FakeClock()
    cadence = CheckpointCadence(every=2, min_interval_s=1.0, epochs=9, clock=clock)
    written = []
    for epoch in range(1, 10):
        clock.now += 0.3  # each epoch takes 0.3 s
        if cadence.due(epoch):
            written.append(epoch)
            cadence.saved()
    # epoch 4 (1.2 s since the start) and 8 (1.2 s since epoch 4); 6 is too soon; 9 is the last
    assert written == [4, 8, 9]
    every_epoch = CheckpointCadence(every=1, min_interval_s=0.0, epochs=3, clock=FakeClock())
    assert [e for e in (1, 2, 3) if every_epoch.due(e)] == [1, 2, 3]


def test_tiny_epochs_write_one_checkpoint_at_the_end(make_cfg, monkeypatch):
    """The chapter's 100 four-step epochs take well under the default interval: one checkpoint write, the last epoch."""
    import regularization.engine as engine

    writes = []
    save = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, state, *args: (writes.append(state["epoch"]), save(path, state, *args)))
    cfg = make_cfg("trainer.epochs=100", "trainer.checkpoint_min_interval_s=3600")
    out = Path(cfg.hydra.runtime.output_dir)
    train(cfg, preflight(cfg), out)
    assert writes == [100]
    assert torch.load(out / CHECKPOINT, weights_only=True)["epoch"] == 100


def fit_hit_by_ctrl_c(cfg, job: Path, at_epoch: int, presses: int, monkeypatch) -> dict:
    """engine.fit as engine.train runs it, with ``presses`` Ctrl-Cs in the middle of epoch ``at_epoch``."""
    from regularization import engine
    from regularization.data import load_data
    from regularization.logging import RunLogger
    from regularization.models import build_model

    device = preflight(cfg)
    data = load_data(cfg, device)
    model = build_model(cfg, data.num_inputs, data.num_outputs)
    train_epoch, epoch = engine.train_epoch, iter(range(1, 10**6))

    def epoch_hit_by_ctrl_c(*args, **kwargs):
        objective = train_epoch(*args, **kwargs)
        if next(epoch) == at_epoch:  # Ctrl-C, and the epoch goes on (one more pass) unless it raised
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
            return train_epoch(*args, **kwargs)
        return objective

    monkeypatch.setattr(engine, "train_epoch", epoch_hit_by_ctrl_c)
    logger = RunLogger(job, cfg.trainer.epochs)
    try:
        return engine.fit(cfg, data, model, logger, job / CHECKPOINT)
    finally:
        logger.close("interrupted")


def test_ctrl_c_ends_the_epoch_in_progress_and_checkpoints_it(make_cfg, tmp_path, monkeypatch):
    """Long after the last checkpoint (checkpoint_min_interval_s), one Ctrl-C: the result, the checkpoint and the
    event file all end at the epoch it landed in."""
    cfg = make_cfg("trainer.epochs=1000", "trainer.checkpoint_min_interval_s=1e6", "trainer.eval_every=10")
    job = Path(cfg.hydra.runtime.output_dir)
    result = fit_hit_by_ctrl_c(cfg, job, at_epoch=57, presses=1, monkeypatch=monkeypatch)
    assert result["status"] == "interrupted"
    assert result["epochs"] == checkpoint_epoch(job / CHECKPOINT) == result["history"][-1]["epoch"] == 57  # evaluated there
    assert result["test_loss"] == result["history"][-1]["test_loss"]
    assert steps(job)[-1] == 57


def test_a_second_ctrl_c_stops_at_once_and_the_result_is_the_checkpoints(make_cfg, tmp_path, monkeypatch):
    """Ctrl-C twice mid-epoch: the partial epoch is dropped, and the result and the events go back to the last
    checkpoint (epoch 20), not to the last epoch logged (49)."""
    cfg = make_cfg("trainer.epochs=1000", "trainer.checkpoint_every=20", "trainer.checkpoint_min_interval_s=0")
    job = Path(cfg.hydra.runtime.output_dir)
    result = fit_hit_by_ctrl_c(cfg, job, at_epoch=50, presses=2, monkeypatch=monkeypatch)
    assert result["status"] == "interrupted"
    assert result["epochs"] == checkpoint_epoch(job / CHECKPOINT) == result["history"][-1]["epoch"] == 40
    assert result["test_loss"] == result["history"][-1]["test_loss"]
    assert steps(job)[-1] == 40  # TensorBoard hides the epochs past the checkpoint


def test_the_resume_hint_repeats_the_interpreter_as_typed(make_cfg, monkeypatch):
    """`.venv/bin/python -X dev train.py reg.lambd=3` is resumed by the same interpreter, options included."""
    from regularization.engine import resume_command
    from regularization.logging import parse_override

    cfg = make_cfg()
    monkeypatch.setattr(sys, "orig_argv", [".venv/bin/python", "-X", "dev", "train.py", "reg.lambd=3"])
    monkeypatch.setattr(sys, "argv", ["train.py", "reg.lambd=3"])
    command = shlex.split(resume_command(cfg.hydra, multirun=False))
    assert command == [".venv/bin/python", "-X", "dev", "train.py", "reg.lambd=3", f"hydra.run.dir={cfg.hydra.runtime.output_dir}"]
    # A run dir named by two overrides: quoted, or Hydra would read its comma as a sweep.
    run_dir = Path(cfg.hydra.runtime.output_dir) / "reg.lambd=3,seed=1" / "2026-12-05_07-32-45_1"
    with read_write(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir)
    command = shlex.split(resume_command(cfg.hydra, multirun=False))
    assert parse_override(command[-1]).value() == str(run_dir)


@ONE_AT_A_TIME
@pytest.mark.slow
# Not before ~1 s: a Ctrl-C inside the interpreter's own start-up (site, encodings), before train.py runs, is
# Python's to report (exit 1), and a busy machine can stretch that start-up to a few tenths of a second.
@pytest.mark.parametrize("after_s", [1.0, 2.0, 3.0, 4.5])
def test_ctrl_c_at_any_moment_of_start_up_prints_one_line_and_leaves_no_dir_without_a_result(tmp_path, tiny_fashion_root, after_s):
    """Ctrl-C while Python imports torch, Hydra composes, the data load or training begins: exit 130, no traceback,
    and every run dir left holds a metrics.json (a run that never trained leaves none)."""
    proc = Run(["+experiment=dropout", f"data.root={tiny_fashion_root}", "trainer.epochs=100000"], tmp_path)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.output()
    output = proc.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    for run_dir in {p.parent for p in (tmp_path / "outputs").rglob(".hydra")}:
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted", output
    assert all(any(d.iterdir()) for d in (tmp_path / "outputs").glob("runs/*")), "an empty dir named by the run's overrides"


CTRL_C_AT_JOB_START = """
import signal

from hydra.experimental.callback import Callback


class CtrlC(Callback):
    def on_job_start(self, config, **kwargs):
        signal.raise_signal(signal.SIGINT)
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [None, "basic", "vectorized"])
def test_ctrl_c_while_hydra_starts_the_job_leaves_no_dir_without_a_result(tmp_path, launcher):
    """A Ctrl-C after Hydra made the job's dir and wrote its .hydra/ files, before the job's task (here: in a
    callback's on_job_start) once left that dir with no metrics.json, read as a failed job (CI, a Ctrl-C 2 s into
    start-up): it is raised inside the task's clean-up, and the dir is removed; under the vectorized launcher, every
    started job's dir is."""
    (tmp_path / "ctrl_c_at_job_start.py").write_text(CTRL_C_AT_JOB_START)
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    launch = ["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}"] if launcher else []
    callback = "+hydra.callbacks.ctrl_c._target_=ctrl_c_at_job_start.CtrlC"
    command = [sys.executable, str(ROOT / "train.py"), *launch, "trainer.epochs=3", callback]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    if launcher == "vectorized":  # a rerun of this command resumes the sweep: it names the sweep dir
        sweep_dir = next((tmp_path / "outputs" / "multirun").iterdir())
        assert shlex.split(done.stdout.split("to resume: ")[1].splitlines()[0])[-1] == f"hydra.sweep.dir={sweep_dir}"
    left = [p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert all(p.name == "multirun.yaml" for p in left), left


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, as expected
def test_a_ctrl_c_whose_interrupt_was_dropped_still_stops_the_run():
    """A Ctrl-C's KeyboardInterrupt raised inside a finalizer is dropped by the interpreter (it prints "Exception
    ignored"); the run once went on to train for good. note_ctrl_c notes it: training then refuses to start, and
    train.py exits 130."""
    import gc
    import threading

    from regularization import checkpoint

    class RaisesInItsFinalizer:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the interpreter runs a finalizer

    previous = signal.signal(signal.SIGINT, checkpoint.note_ctrl_c)
    try:
        RaisesInItsFinalizer()  # collected at once: its KeyboardInterrupt is dropped
        gc.collect()
        assert checkpoint.CTRL_C.is_set()
        with pytest.raises(KeyboardInterrupt), checkpoint.stop_after_epoch(threading.Event()):
            pytest.fail("training started after a Ctrl-C")
    finally:
        signal.signal(signal.SIGINT, previous)
        checkpoint.CTRL_C.clear()


CTRL_C_INSIDE_AN_IMPORT = """
import signal, sys, threading, time
from regularization import checkpoint

signal.signal(signal.SIGINT, checkpoint.note_ctrl_c)
try:
    import made_slowly  # its first line is a Ctrl-C
    time.sleep(10)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted after the import; module made:", sys.modules["made_slowly"].made)
try:
    import made_slowly_too
    with checkpoint.stop_after_epoch(threading.Event()):
        print("training started")
except KeyboardInterrupt:
    time.sleep(0.5)  # where a second KeyboardInterrupt for the same Ctrl-C would land
    print("interrupted once")
from omegaconf import OmegaConf
OmegaConf.register_new_resolver("ctrl_c", lambda: signal.raise_signal(signal.SIGINT) or 1)
config = OmegaConf.create({"a": "${ctrl_c:}", "b": {"c": 2}})
try:
    OmegaConf.to_container(config, resolve=True)  # a Ctrl-C inside OmegaConf
    print("resolved")
    time.sleep(10)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted after OmegaConf")
"""


def test_a_ctrl_c_inside_an_import_or_omegaconf_is_raised_when_it_ends(tmp_path):
    """torchvision and matplotlib are imported lazily, after start-up. A KeyboardInterrupt inside an import leaves a
    module half-made (numpy, imported again, fails) or aborts a C++ extension's start-up, and inside OmegaConf (Hydra
    composing) a half-built node whose clean-up fails in its place: note_ctrl_c raises it once the import or the
    OmegaConf call is done, and only once when training's start (stop_after_epoch) raised it first."""
    for name in ("made_slowly", "made_slowly_too"):
        (tmp_path / f"{name}.py").write_text("import signal, time\nsignal.raise_signal(signal.SIGINT)\ntime.sleep(0.3)\nmade = True\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE_AN_IMPORT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = ["interrupted after the import; module made: True", "interrupted once", "resolved", "interrupted after OmegaConf"]
    assert done.stdout.splitlines() == expected, done.stderr


def test_an_exit_handler_registered_before_train_py_still_runs(tmp_path):
    """train.py ends the process without the interpreter's teardown, from the last exit handler; a handler that a
    tool registered before train.py ran (coverage's subprocess hook, from a .pth file) would come after it, so then
    the teardown is left as it is and that handler runs."""
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('the earlier handler ran', flush=True))\n"
        f"sys.argv = [{str(ROOT / 'train.py')!r}, 'trainer.epochs=1']\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "the earlier handler ran"
    assert "completed:" in done.stdout


def test_importing_train_py_leaves_sigint_to_python():
    """A process that imports train.py (a test, joblib's workers) keeps Python's own SIGINT handler: only train.py run
    as a script notes Ctrl-C (note_ctrl_c), whose note, never cleared, would stop every later training in that process."""
    import importlib

    sys.path.insert(0, str(ROOT))
    try:
        import train

        importlib.reload(train)
    finally:
        sys.path.remove(str(ROOT))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
