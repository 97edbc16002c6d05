"""Vectorized groups checkpoint and resume: SIGKILL mid-group then a rerun is bitwise an uninterrupted run;
a checkpoint that does not fit its group is refused before anything trains."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from regularization.checkpoint import GROUP_CHECKPOINT
from regularization.config import ConfigError
from regularization.vectorized import group_checkpoint, train_group
from tests.conftest import ONE_AT_A_TIME, Run, run_train, wait_for
from tests.test_reliability import final_metrics, steps

CPU = torch.device("cpu")


def group_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


@ONE_AT_A_TIME
@pytest.mark.slow
def test_sigkill_mid_group_then_rerun_is_bitwise_an_uninterrupted_group(tmp_path: Path, tiny_fashion_root: Path) -> None:
    """Four members in one group: two dropout rates × a sane and a diverging learning rate (the diverged members'
    learning rate is set to 0 before the kill: the checkpoint must keep it). The dropout masks' generator is in the
    checkpoint too, so dropout members match bit for bit."""
    args = ["-m", "+experiment=dropout", f"data.root={tiny_fashion_root}", "model.hidden1=16", "model.hidden2=16", "data.batch_size=32"]
    # A checkpoint every epoch (no minimum interval): the kill lands early, with most epochs still to train.
    args += ["trainer.epochs=20", "trainer.eval_every=5", "trainer.checkpoint_min_interval_s=0"]
    args += ["reg.dropout1=0.2,0.5", "optim.lr=0.5,1e6", "hydra/launcher=vectorized", "hydra.sweep.subdir=${hydra.job.num}"]
    straight = tmp_path / "straight"
    run_train([*args, f"hydra.sweep.dir={straight}"], tmp_path, timeout=900)
    killed = tmp_path / "killed"
    proc = Run([*args, f"hydra.sweep.dir={killed}"], tmp_path)
    first = killed / "0"  # the group's first member
    wait_for(first / GROUP_CHECKPOINT, proc, timeout=600)  # a loaded machine takes minutes to start
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (first / "metrics.json").exists()  # it really died mid-training
    assert torch.load(first / GROUP_CHECKPOINT, weights_only=True)["epoch"] < 20
    rerun = run_train([*args, f"hydra.sweep.dir={killed}"], tmp_path, timeout=900)
    assert "resuming the group of 4 jobs" in rerun.stdout
    expected = {d.name: final_metrics(d) for d in group_dirs(straight)}
    assert "completed" in {m["status"] for m in expected.values()}
    assert {d.name: final_metrics(d) for d in group_dirs(killed)} == expected  # bitwise: JSON floats round-trip exactly
    assert steps(first) == steps(straight / first.name)  # the event file continues without duplicate steps


def _group(make_cfg, lambdas: list[float], dirs: list[Path] | None = None) -> tuple[list, list[Path]]:
    cfgs = [make_cfg("trainer.epochs=3", f"reg.lambd={lambd}") for lambd in lambdas]
    return cfgs, dirs or [Path(c.hydra.runtime.output_dir) for c in cfgs]


def test_a_checkpoint_of_another_group_is_refused(make_cfg) -> None:
    cfgs, dirs = _group(make_cfg, [0, 1, 2])
    train_group(cfgs, dirs, CPU)
    assert json.loads((dirs[0] / "metrics.json").read_text())["status"] == "completed"
    path, saved = group_checkpoint(cfgs, dirs)
    assert path == dirs[0] / GROUP_CHECKPOINT and saved["epoch"] == 3  # the same group finds its checkpoint
    other, _ = _group(make_cfg, [0, 1, 5])
    with pytest.raises(ConfigError, match=r"another vectorized group \(its member 2 differs in reg.lambd\)"):
        group_checkpoint(other, dirs)
    fewer, _ = _group(make_cfg, [0, 1])
    with pytest.raises(ConfigError, match="another vectorized group \\(of 3 jobs; this group has 2\\)"):
        group_checkpoint(fewer, dirs[:2])
    regrouped, _ = _group(make_cfg, [2, 0])  # max_members changed: job 0 is now the second of a group
    with pytest.raises(ConfigError, match="was written for a vectorized group that began with this job"):
        group_checkpoint(regrouped, [dirs[2], dirs[0]])
    longer = [make_cfg("trainer.epochs=2", f"reg.lambd={lambd}") for lambd in (0, 1, 2)]
    with pytest.raises(ConfigError, match="trainer.epochs: .* is at epoch 3, past 2"):
        group_checkpoint(longer, dirs)
    fresh = [make_cfg("trainer.epochs=3", f"reg.lambd={lambd}", "resume=false") for lambd in (0, 1, 5)]
    assert group_checkpoint(fresh, dirs)[1] is None  # resume=false starts over


def test_a_group_resumed_to_more_epochs_equals_one_trained_that_long(make_cfg) -> None:
    """A completed group rerun with trainer.epochs raised continues from its checkpoint (as a single run does)."""
    cfgs, dirs = _group(make_cfg, [0, 3])
    train_group(cfgs, dirs, CPU)
    longer = [make_cfg("trainer.epochs=6", f"reg.lambd={lambd}") for lambd in (0, 3)]
    train_group(longer, dirs, CPU)
    straight, straight_dirs = _group(make_cfg, [0, 3])
    straight = [make_cfg("trainer.epochs=6", f"reg.lambd={lambd}") for lambd in (0, 3)]
    straight_dirs = [Path(c.hydra.runtime.output_dir) for c in straight]
    train_group(straight, straight_dirs, CPU)
    for resumed, alone in zip(dirs, straight_dirs, strict=True):
        assert final_metrics(resumed) == final_metrics(alone)
        assert final_metrics(resumed)["epochs"] == 6


def test_a_checkpoint_with_the_histories_as_lists_resumes_them_exactly(make_cfg) -> None:
    """Group checkpoints once held the members' histories as lists of dicts (now: each evaluation's table); a group
    resumed from one to more epochs equals one trained that long, its history included."""
    cfgs, dirs = _group(make_cfg, [0, 3])
    train_group(cfgs, dirs, CPU)
    saved = torch.load(dirs[0] / GROUP_CHECKPOINT, weights_only=True)
    histories = [json.loads((d / "metrics.json").read_text())["history"] for d in dirs]
    torch.save({k: v for k, v in saved.items() if k != "evaluations"} | {"histories": histories}, dirs[0] / GROUP_CHECKPOINT)
    longer = [make_cfg("trainer.epochs=6", f"reg.lambd={lambd}") for lambd in (0, 3)]
    train_group(longer, dirs, CPU)
    straight = [make_cfg("trainer.epochs=6", f"reg.lambd={lambd}") for lambd in (0, 3)]
    straight_dirs = [Path(c.hydra.runtime.output_dir) for c in straight]
    train_group(straight, straight_dirs, CPU)
    for resumed, alone in zip(dirs, straight_dirs, strict=True):
        assert [e["epoch"] for e in final_metrics(resumed)["history"]] == [1, 2, 3, 4, 5, 6]
        assert final_metrics(resumed) == final_metrics(alone)


def test_ctrl_c_then_rerun_continues_each_members_schedule_and_early_stopping_exactly(make_cfg, monkeypatch) -> None:
    """A group with a cosine schedule after a warmup and early stopping, interrupted in epoch 7 (some members have
    stopped by then, some not), then rerun: bitwise the uninterrupted group, members stopped where they were."""
    import regularization.vectorized as vectorized

    base = ["trainer.epochs=30", "data.val_size=50", "model.init_std=0.01", "trainer.early_stopping.patience=3"]
    base += ["optim.schedule=cosine", "optim.warmup_epochs=2", "trainer.checkpoint_min_interval_s=0"]
    members = [[*base, f"optim.lr={lr}"] for lr in (0.01, 0.02, 0.003)]

    def group() -> tuple[list, list[Path]]:
        cfgs = [make_cfg(*m) for m in members]
        return cfgs, [Path(c.hydra.runtime.output_dir) for c in cfgs]

    straight, straight_dirs = group()
    train_group(straight, straight_dirs, CPU)
    stops = [final_metrics(d)["stopped_epoch"] for d in straight_dirs]
    assert any(s is not None and s < 7 for s in stops) and any(s is None or s > 7 for s in stops), stops
    cfgs, dirs = group()
    train_epoch, calls = vectorized.train_epoch, []

    def interrupted_in_epoch_7(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return train_epoch(*args)

    monkeypatch.setattr(vectorized, "train_epoch", interrupted_in_epoch_7)
    with pytest.raises(SystemExit):
        train_group(cfgs, dirs, CPU, [c.hydra for c in cfgs])  # the hydra nodes: for the resume command it prints
    assert torch.load(dirs[0] / GROUP_CHECKPOINT, weights_only=True)["epoch"] == 6
    monkeypatch.setattr(vectorized, "train_epoch", train_epoch)
    train_group(cfgs, dirs, CPU)
    for resumed, alone in zip(dirs, straight_dirs, strict=True):
        assert final_metrics(resumed) == final_metrics(alone)


@pytest.mark.slow
def test_a_resumed_compiled_group_counts_the_compile_time_of_the_runs_before(make_cfg) -> None:
    """compile_s is over a group's runs, as wall_s is (engine.fit's rule for a job): a rerun to more epochs adds its
    own compile time to what the checkpoint says the runs before it spent (set to 100 s here)."""
    cfgs = [make_cfg("trainer.epochs=2", "trainer.compile=true", f"reg.lambd={lambd}") for lambd in (0, 3)]
    dirs = [Path(c.hydra.runtime.output_dir) for c in cfgs]
    train_group(cfgs, dirs, CPU)
    saved = torch.load(dirs[0] / GROUP_CHECKPOINT, weights_only=True)
    assert saved["compile_s"] == final_metrics(dirs[0])["group_compile_s"] > 0
    torch.save(saved | {"compile_s": 100.0}, dirs[0] / GROUP_CHECKPOINT)
    longer = [make_cfg("trainer.epochs=3", "trainer.compile=true", f"reg.lambd={lambd}") for lambd in (0, 3)]
    train_group(longer, dirs, CPU)
    resumed = final_metrics(dirs[0])
    assert resumed["epochs"] == 3 and resumed["group_compile_s"] >= 100.0
    assert resumed["compile_s"] == pytest.approx(resumed["group_compile_s"] / 2)
