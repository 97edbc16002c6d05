"""What one run leaves next to its scalars: the HParams session, curves.png; and its progress bars."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.api_pb2 import Status

import regularization.engine as engine
from regularization import progress
from regularization.config import ConfigError, resolve_device
from regularization.logging import run_hparams
from regularization.progress import SweepPosition, progress_enabled
from regularization.vectorized import train_group
from tests.conftest import compose_config


def train_job(cfg) -> Path:
    """engine.train into the job dir that make_cfg set up."""
    out_dir = Path(cfg.hydra.runtime.output_dir)
    engine.train(cfg, resolve_device("cpu"), out_dir)
    return out_dir


def hparams_session(run_dir: Path) -> tuple[dict, int | None, EventAccumulator]:
    """The run's HParams session as TensorBoard reads it: {name: value}, the end status, and the run's events."""
    events = EventAccumulator(str(run_dir)).Reload()
    content = events.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    # No per-run experiment summary: TensorBoard would take one run's keys for the whole sweep.
    assert hp_metadata.EXPERIMENT_TAG not in content
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    end = content.get(hp_metadata.SESSION_END_INFO_TAG)
    return hparams, hp_metadata.parse_session_end_info_plugin_data(end).status if end else None, events


def test_hparams_go_into_the_runs_own_event_files(make_cfg):
    cfg = make_cfg("reg.lambd=3", "trainer.epochs=3", "seed=2")
    out_dir = train_job(cfg)
    assert [p.name for p in out_dir.iterdir() if p.is_dir()] == []  # no timestamped sub-run, as add_hparams makes
    hparams, status, events = hparams_session(out_dir)
    assert hparams == {
        "model": "linear",
        "reg": "l2",
        "reg.penalty": "l2",
        "reg.impl": "penalty",
        "reg.lambd": 3.0,
        "optim": "sgd",
        "optim.lr": 0.003,
        "data": "synthetic",
        "data.batch_size": 5,
        "seed": 2,
        "trainer.epochs": 3,
        "trainer.precision": "32",
        "trainer.compile": False,
        "trainer.matmul_precision": "highest",
    }
    assert status == Status.Value("STATUS_SUCCESS")
    # The session's metrics are the run's scalars; their last values are the final metrics.
    assert [s.step for s in events.Scalars("loss/test")] == [1, 2, 3]
    assert {"loss/train", "loss/test", "weights/l2_norm"} <= set(events.Tags()["scalars"])


def test_hparams_of_a_dropout_run_and_of_keys_from_the_command_line(make_cfg, tiny_fashion_root):
    cfg = make_cfg("+experiment=dropout", f"data.root={tiny_fashion_root}", "reg.dropout1=0.3", "model.hidden1=16", "device=cpu")
    hparams = run_hparams(cfg)
    assert hparams["experiment"] == "dropout"  # not a config key: the override's value
    assert (hparams["reg"], hparams["reg.dropout1"], hparams["reg.dropout2"], hparams["model.hidden1"]) == ("dropout_scratch", 0.3, 0.5, 16)
    assert "data.root" not in hparams and "device" not in hparams  # left out of override_dirname, so out of here
    assert "reg.impl" not in hparams  # no penalty: no implementation


def test_a_diverged_run_still_has_its_hparams_row(make_cfg):
    out_dir = train_job(make_cfg("optim.lr=50", "trainer.epochs=20"))
    hparams, status, _ = hparams_session(out_dir)
    assert hparams["optim.lr"] == 50
    assert status == Status.Value("STATUS_FAILURE")


def test_a_failed_run_still_has_its_hparams_row(make_cfg, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "fit", boom)
    cfg = make_cfg("reg.lambd=1")
    with pytest.raises(RuntimeError, match="boom"):
        train_job(cfg)
    hparams, status, _ = hparams_session(Path(cfg.hydra.runtime.output_dir))
    assert hparams["reg.lambd"] == 1.0
    assert status == Status.Value("STATUS_FAILURE")


def test_a_run_draws_its_loss_curves(make_cfg):
    out_dir = train_job(make_cfg("trainer.epochs=4"))
    with Image.open(out_dir / "curves.png") as image:
        assert image.format == "PNG" and image.width > 100


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_when_asked(monkeypatch):
    assert not progress_enabled(True)  # pytest captures stderr: not a terminal
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert progress_enabled(True)
    assert not progress_enabled(False)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_shows_epochs_and_losses(make_cfg, monkeypatch, progress):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train_job(make_cfg("trainer.epochs=5", f"trainer.progress={str(progress).lower()}"))
    text = terminal.getvalue()
    if progress:
        assert "5/5" in text and "test_loss=" in text and "epoch" in text
    else:
        assert text == ""


def test_batch_bar_only_for_slow_epochs(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "BATCH_BAR_DELAY_S", 0.05)

    def batches(seconds_each: float):
        for i in range(3):
            time.sleep(seconds_each)
            yield i

    bars = progress.Progress(epochs=1, enabled=True)
    assert list(bars.batches(batches(0), 3)) == [0, 1, 2]
    assert "batches" not in terminal.getvalue()  # a fast epoch never draws it
    assert list(bars.batches(batches(0.1), 3)) == [0, 1, 2]
    assert "batches:" in terminal.getvalue()
    assert list(progress.Progress(epochs=1, enabled=False).batches(range(3), 3)) == [0, 1, 2]


def test_group_progress_estimates_from_its_own_pace(monkeypatch, caplog):
    clock = iter([100.0, 130.0, 160.0])  # the bar starts at 100 s; epochs 4 and 5 (resumed after 3) take 30 s each
    monkeypatch.setattr(progress, "clock", lambda: next(clock))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="regularization"), progress.GroupProgress(SweepPosition(2, 3, 10), 10, True, done=3) as bar:
        assert bar.estimate(4) == (30.0, 6 * 30.0, (6 + 10) * 30.0)  # group: 6 epochs left; sweep: those and 10 later
        bar.epoch_done(5, "4 of 4 members training")
    assert "group 2 of 3, epoch 5/10 (30 s/epoch; ETA group 02:30, sweep ~07:30): 4 of 4 members training" in caplog.text
    assert "group 2/3" in terminal.getvalue() and "5/10" in terminal.getvalue() and "sweep ~07:30" in terminal.getvalue()


def test_a_sweep_job_leaves_its_curves_to_the_sweep(make_cfg):
    cfg = make_cfg("trainer.epochs=2")
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    out_dir = train_job(cfg)
    assert (out_dir / "metrics.json").exists() and not (out_dir / "curves.png").exists()


def test_vectorized_members_each_get_their_hparams_row(make_cfg):
    """Under hydra/launcher=vectorized each member's session has its own values and its own end status."""
    # model.init_std=1 is the default, so the two stack; only the first job has it on its command line.
    cfgs = [make_cfg("reg.lambd=0", "model.init_std=1", "trainer.epochs=10"), make_cfg("reg.lambd=3", "optim.lr=50", "trainer.epochs=10")]
    dirs = [Path(cfg.hydra.runtime.output_dir) for cfg in cfgs]
    for cfg, d in zip(cfgs, dirs, strict=True):  # what the launcher's start_job saves before the group trains
        (d / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), d / ".hydra" / "hydra.yaml")
    train_group(cfgs, dirs, resolve_device("cpu"))
    (free, free_status, _), (diverged, diverged_status, _) = (hparams_session(d) for d in dirs)
    assert (free["reg.lambd"], free["optim.lr"], free_status) == (0.0, 0.003, Status.Value("STATUS_SUCCESS"))
    assert (diverged["reg.lambd"], diverged["optim.lr"], diverged_status) == (3.0, 50, Status.Value("STATUS_FAILURE"))
    assert free["model.init_std"] == 1.0 and "model.init_std" not in diverged  # each member's own overrides


def test_event_records_are_tensorboards_bytes(tmp_path):
    """The records' framing and CRCs (google-crc32c) are byte for byte what tensorboard's RecordWriter writes."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    from regularization.logging import Records

    payloads = [b"", b"x", bytes(range(256)) * 5]
    ours, theirs = io.BytesIO(), io.BytesIO()
    for data in payloads:
        Records(ours).write(data)
        RecordWriter(theirs).write(data)
    assert ours.getvalue() == theirs.getvalue()


def test_one_event_per_evaluation_holds_every_scalar(make_cfg, tmp_path):
    from regularization.logging import RunLogger

    logger = RunLogger(tmp_path, epochs=2, console=False)
    logger.log_eval(1, {"train_loss": 2.0, "test_loss": 3.0, "weight_l2_norm": float("nan")})
    logger.log_eval(2, {"train_loss": 1.0, "test_loss": 1.5, "train_acc": None})
    logger.close("completed")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["loss/test", "loss/train"]  # NaN and None are not written
    assert [(e.step, e.value) for e in acc.Scalars("loss/train")] == [(1, 2.0), (2, 1.0)]
    assert [(e.step, e.value) for e in acc.Scalars("loss/test")] == [(1, 3.0), (2, 1.5)]


def test_a_vectorized_member_logs_where_hydras_job_logging_would(tmp_path):
    from regularization.logging import RunLogger, job_log

    file_handler = {"class": "logging.FileHandler", "formatter": "simple", "filename": "${hydra.runtime.output_dir}/job.log"}
    hydra = OmegaConf.create(
        {
            "hydra": {
                "runtime": {"output_dir": str(tmp_path)},
                "job_logging": {"formatters": {"simple": {"format": "%(levelname)s|%(message)s"}}, "handlers": {"file": file_handler}},
            }
        }
    ).hydra
    logger = RunLogger(tmp_path, epochs=10, console=False, job_log=job_log(hydra))
    logger.log_eval(3, {"train_loss": 0.5, "test_loss": 0.25})
    logger.close("completed")
    assert (tmp_path / "job.log").read_text().splitlines() == ["INFO|epoch  3/10  train_loss 0.5  test_loss 0.25", "INFO|completed"]
    assert job_log(OmegaConf.create({"job_logging": {"handlers": {"console": {"class": "logging.StreamHandler"}}}})) is None


def test_one_name_per_job_in_dirs_summary_tensorboard_and_settings(tmp_path):
    """A job's dir, its summary row and its TensorBoard run (the HParams trial) carry one name: the overrides sorted,
    without the excluded keys; the per-setting table groups by that name without the seed."""
    import csv

    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    from tests.conftest import run_train

    sweep = tmp_path / "sweep"
    run_train(
        ["-m", "seed=0,1", "reg.lambd=0,3", "trainer.epochs=2", "device=cpu", "sparsity_threshold=0.01", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    # The keys the sweep varies name the job: trainer.epochs=2, one value, does not; device and sparsity_threshold
    # are excluded keys.
    names = [f"reg.lambd={lambd},seed={seed}" for lambd in (0, 3) for seed in (0, 1)]
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir()) == names
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == names
    assert sorted(EventMultiplexer().AddRunsFromDirectory(str(sweep)).Runs()) == names
    with open(sweep / "summary_by_setting.csv") as f:
        assert [r["setting"] for r in csv.DictReader(f)] == ["reg.lambd=0", "reg.lambd=3"]
    # One parsed column per identifying key; the excluded ones (device, sparsity_threshold) are not among them.
    assert {"model", "reg", "data", "optim", "reg.lambd", "seed"} <= rows[0].keys() and "device" not in rows[0]
    assert (rows[2]["model"], rows[2]["reg"], float(rows[2]["reg.lambd"]), int(rows[2]["seed"])) == ("linear", "l2", 3.0, 0)
    assert float(rows[0]["sparsity"]) >= 0  # every run reports it, L2 too


@pytest.mark.parametrize(
    ("task", "params", "seeds", "added"),
    [
        (["reg.lambd=0,3", "trainer.epochs=5", "+experiment=weight_decay"], {}, 1, ["experiment", "trainer.epochs"]),
        (["reg.lambd=0,3", "trainer.precision=bf16-mixed", "trainer.compile=true"], {}, 1, []),  # always named when set
        (["trainer.epochs=5", "seed=0"], {"reg.lambd": "interval(0, 1)"}, 1, ["seed", "trainer.epochs"]),  # a search
        (["trainer.epochs=5", "seed=0"], {"reg.lambd": "interval(0, 1)"}, 3, ["trainer.epochs"]),  # its seeds vary
        (["trainer.epochs=5"], {}, 1, []),  # nothing varies: the full name
    ],
)
def test_a_sweep_names_its_jobs_by_the_keys_it_varies(task, params, seeds, added):
    from hydra_plugins.regularization_sweeper import name_jobs_by_swept_keys

    hydra = {"overrides": {"task": task, "hydra": []}, "sweeper": {"params": params}}
    hydra["job"] = {"config": {"override_dirname": {"exclude_keys": ["device"]}}}
    config = OmegaConf.create({"optimize_seeds": seeds, "hydra": hydra})
    name_jobs_by_swept_keys(config)
    assert list(config.hydra.job.config.override_dirname.exclude_keys) == ["device", *added]
    expected = [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(['device', *added])}]"] if added else []
    assert list(config.hydra.overrides.hydra) == expected  # how every launcher's composition gets it


def test_a_completed_job_of_another_experiment_is_not_skipped_as_done(make_cfg, tmp_path):
    """Job names leave out a sweep's constant keys, so a sweep dir reused with other constants finds dirs of the
    same name: a completed job there is skipped only if it ran the same experiment, else the run stops and says so."""
    first = train_job(make_cfg("reg.lambd=3", "trainer.epochs=2"))
    again = compose_config(["reg.lambd=3", "trainer.epochs=2", "device=cpu"], first)  # device: not the experiment
    assert engine.completed_result(first, again) is not None
    other = compose_config(["reg.lambd=3", "trainer.epochs=2", "optim.lr=0.01"], first)
    with pytest.raises(ConfigError, match=r"was written by another experiment \(it differs in optim.lr\)"):
        engine.train(other, resolve_device("cpu"), first)
    (first / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match="holds a completed run of another experiment"):
        engine.completed_result(first, other)


def test_metrics_hold_the_best_epoch_and_the_sparsity_at_the_threshold(make_cfg):
    import json

    out_dir = train_job(make_cfg("reg.lambd=3", "trainer.epochs=6", "sparsity_threshold=0.5"))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    best = min(metrics["history"], key=lambda h: h["test_loss"])
    assert (metrics["best_test_loss"], metrics["best_test_loss_epoch"]) == (best["test_loss"], best["epoch"])
    assert metrics["best_test_acc"] is None  # regression
    assert metrics["sparsity"] == metrics["history"][-1]["sparsity"] > 0  # L2 at λ=3: some |w| < 0.5


def test_a_single_run_plot_is_titled_with_its_overrides(make_cfg, monkeypatch):
    from regularization import plots

    titles = []
    monkeypatch.setattr(plots, "save_run_curves", lambda out_dir, history, title: titles.append(title))
    train_job(make_cfg("reg.lambd=3", "trainer.epochs=2", "device=cpu"))
    assert titles == ["reg.lambd=3,trainer.epochs=2"]  # the run's overrides, not its dir's timestamp; device is excluded


def test_vectorized_members_share_the_group_time_and_log_the_groups_losses(make_cfg, caplog):
    import json

    cfgs = [make_cfg("reg.lambd=0", "trainer.epochs=3"), make_cfg("reg.lambd=3", "trainer.epochs=3")]
    dirs = [Path(cfg.hydra.runtime.output_dir) for cfg in cfgs]
    with caplog.at_level(logging.INFO, logger="regularization"):
        train_group(cfgs, dirs, resolve_device("cpu"), [cfg.hydra for cfg in cfgs])
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    assert metrics[0]["group_wall_s"] == metrics[1]["group_wall_s"] == pytest.approx(2 * metrics[0]["wall_s"])
    losses = sorted(m["history"][-1]["test_loss"] for m in metrics)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("group 1 of 1, epoch 3/3 ("))
    assert f"test_loss {sum(losses) / 2:.4g} ({losses[0]:.4g}–{losses[1]:.4g})" in line and "train_loss" in line


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_key_tied_to_a_swept_key_names_the_job_labels_the_plots_and_is_in_hparams(tmp_path, launcher):
    """docs/study.md's tie: `'model.hidden2=${model.hidden1}'` in a sweep over model.hidden1. Each job is named and
    logged with the value it got, never Hydra's escaped `$\\{model.hidden1\\}`; the plots keep one axis, hidden1."""
    from regularization.summary import collect_jobs, sweep_plot_data
    from tests.conftest import run_train

    args = ["-m", "model=mlp", "model.hidden1=8,16", "model.hidden2=${model.hidden1}", "trainer.epochs=2", f"hydra/launcher={launcher}"]
    proc = run_train(args, tmp_path)
    assert "$\\{" not in proc.stdout + proc.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    for hidden in (8, 16):
        job = sweep / f"model.hidden1={hidden},model.hidden2={hidden}"
        assert OmegaConf.load(job / ".hydra" / "config.yaml").model.hidden2 == hidden
        hparams, _, _ = hparams_session(job)
        assert hparams["model.hidden1"] == hparams["model.hidden2"] == hidden
    plotted = sweep_plot_data(collect_jobs(sweep))
    assert plotted.swept == ["model.hidden1"]
    assert sorted(s.label for s in plotted.settings) == ["model.hidden1=16, model.hidden2=16", "model.hidden1=8, model.hidden2=8"]


@pytest.mark.parametrize("datefmt", [None, "%H:%M:%S"])
def test_a_members_log_lines_are_formatted_as_logging_formats_them(datefmt):
    """A vectorized member's job log formats its lines with the time's text made once a second: the same text as
    logging.Formatter's, across the seconds' edges."""
    import logging

    from regularization.logging import SecondCachedFormatter

    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    ours, theirs = SecondCachedFormatter(fmt, datefmt), logging.Formatter(fmt, datefmt)
    for created in (1796470000.123, 1796470000.999, 1796470001.0005, 1796470001.5, 1796470000.2):
        record = logging.getLogger("regularization").makeRecord("regularization", logging.INFO, __file__, 0, "epoch %d", (3,), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == theirs.format(record)
