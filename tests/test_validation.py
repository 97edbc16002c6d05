"""The validation split (data.val_size), selection and early stopping on it, and learning-rate schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from regularization.checkpoint import CHECKPOINT
from regularization.config import ConfigError, Schedule
from regularization.data import load_data, synthetic_regression, validation_split
from regularization.engine import evaluate, preflight, train
from regularization.schedule import lr_factor
from regularization.selection import EarlyStopping, selection_result
from tests.conftest import run_train
from tests.test_reliability import final_metrics

CPU = torch.device("cpu")
# The weight-decay chapter's regression from a small init at a larger lr: the validation loss is lowest after a few
# epochs and rises from there (the 20 training points are fitted, noise included), so early stopping has work to do.
OVERFITS = ["trainer.epochs=40", "data.val_size=50", "model.init_std=0.01", "optim.lr=0.01", "trainer.checkpoint_min_interval_s=0"]


def run(make_cfg, *overrides: str) -> tuple[dict, Path]:
    cfg = make_cfg(*overrides)
    out = Path(cfg.hydra.runtime.output_dir)
    train(cfg, preflight(cfg), out)
    return json.loads((out / "metrics.json").read_text()), out


def test_synthetic_validation_examples_are_extra_draws_of_the_seed():
    plain, split = synthetic_regression(20, 100, 200, 0.01, seed=1), synthetic_regression(20, 100, 200, 0.01, seed=1, n_val=30)
    assert torch.equal(plain.X_train, split.X_train) and torch.equal(plain.y_test, split.y_test)  # the 20 stay the same
    assert split.X_val.shape == (30, 200) and split.y_val.shape == (30, 1) and plain.X_val is None
    assert torch.equal(split.X_val, synthetic_regression(20, 100, 200, 0.01, seed=1, n_val=30).X_val)
    assert not torch.equal(split.X_val, synthetic_regression(20, 100, 200, 0.01, seed=2, n_val=30).X_val)
    everything = torch.cat([split.X_train, split.X_test, split.X_val])
    assert len(torch.unique(everything, dim=0)) == 150


def test_fashion_validation_split_is_disjoint_seeded_and_the_same_for_every_job_seed(make_cfg, tiny_fashion_root):
    train_idx, val_idx = validation_split(200, 50, split_seed=0)
    assert len(train_idx) == 150 and len(val_idx) == 50
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(200))  # disjoint, and nothing lost
    assert torch.equal(val_idx, validation_split(200, 50, split_seed=0)[1])
    assert not torch.equal(val_idx, validation_split(200, 50, split_seed=1)[1])
    base = ["+experiment=dropout", f"data.root={tiny_fashion_root}", "data.val_size=50"]
    a, b = (load_data(make_cfg(*base, f"seed={s}"), CPU) for s in (0, 3))
    assert torch.equal(a.X_val, b.X_val) and torch.equal(a.y_val, b.y_val)  # all jobs of a study validate on the same images
    whole = load_data(make_cfg("+experiment=dropout", f"data.root={tiny_fashion_root}"), CPU)
    assert torch.equal(a.X_val, whole.X_train[val_idx]) and torch.equal(a.X_train, whole.X_train[train_idx])
    assert torch.equal(a.X_test, whole.X_test)


def test_a_validation_set_as_large_as_the_training_set_is_refused(make_cfg, tiny_fashion_root):
    cfg = make_cfg("+experiment=dropout", f"data.root={tiny_fashion_root}", "data.val_size=200")  # the tiny set has 200
    with pytest.raises(ConfigError, match=r"data.val_size: must be < the 200 training images"):
        preflight(cfg)


def test_early_stopping_without_a_validation_set_names_both_keys(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.early_stopping.patience: .* needs data.val_size > 0"):
        preflight(make_cfg("trainer.early_stopping.patience=3"))


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("schedule", ["none", "step", "cosine"])
def test_lr_factor_is_torch_schedulers_formula(schedule, warmup):
    """f(e) against the lr torch's own schedulers give epoch by epoch: StepLR, CosineAnnealingLR, after LinearLR's warmup."""
    epochs, step_size, gamma = 20, 4, 0.5
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    main = {
        "none": lambda: torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup),
    }[schedule]
    if warmup:
        warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main()], milestones=[warmup])
    else:
        scheduler = main()
    torch_lrs = []
    for _ in range(epochs):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = [lr_factor(e, Schedule[schedule], warmup, epochs, step_size, gamma) for e in range(epochs)]
    assert ours == pytest.approx(torch_lrs, abs=1e-12)


def test_each_epoch_trains_at_the_scheduled_lr(make_cfg, monkeypatch):
    """engine.fit steps its LambdaLR once per epoch: epoch e + 1 trains at lr·f(e)."""
    import regularization.engine as engine

    lrs, train_epoch = [], engine.train_epoch

    def recorded(model, data, optimizer, *args):
        lrs.append(optimizer.param_groups[0]["lr"])
        return train_epoch(model, data, optimizer, *args)

    monkeypatch.setattr(engine, "train_epoch", recorded)
    run(make_cfg, "trainer.epochs=10", "optim.lr=0.002", "optim.schedule=cosine", "optim.warmup_epochs=2")
    assert lrs == pytest.approx([0.002 * lr_factor(e, Schedule.cosine, 2, 10, 30, 0.1) for e in range(10)], rel=1e-12)
    assert lrs[0] == pytest.approx(0.002 / 3) and lrs[2] == pytest.approx(0.002)  # warmup, then the cosine from its top


def test_early_stopping_bookkeeping():
    stopper = EarlyStopping("val_loss", patience=3)
    values = [3.0, 2.0, 2.5, 2.0, 1.9, 2.0, math.nan, 1.95, 1.8]
    improved = []
    for epoch, value in enumerate(values, 1):
        improved.append(stopper.update(epoch, {"val_loss": value}))
        if stopper.stopped:
            break
    # a tie (2.0 at epoch 4) is no improvement; a NaN counts as one more evaluation without one
    assert improved == [True, True, False, False, True, False, False, False]
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (1.9, 5, 8)
    accuracy = EarlyStopping("val_acc", patience=2)
    assert [accuracy.update(e, {"val_acc": v}) for e, v in enumerate([0.5, 0.7, 0.6], 1)] == [True, True, False]


def test_the_best_epoch_is_chosen_on_validation_not_on_the_test_set(make_cfg):
    cfg = make_cfg("+experiment=dropout", "data.val_size=100")
    history = [
        {"epoch": 1, "val_loss": 0.6, "val_acc": 0.80, "test_loss": 0.50, "test_acc": 0.82},
        {"epoch": 2, "val_loss": 0.5, "val_acc": 0.83, "test_loss": 0.55, "test_acc": 0.81},
        {"epoch": 3, "val_loss": 0.7, "val_acc": 0.79, "test_loss": 0.40, "test_acc": 0.86},
    ]
    got = selection_result(history, cfg, None, completed=True)
    assert got["best_epoch"] == 2 and got["best_val_loss"] == 0.5 and got["best_val_acc"] == 0.83
    assert (got["test_loss_at_best_val"], got["test_acc_at_best_val"]) == (0.55, 0.81)
    assert got["val_loss"] == 0.7  # the last evaluation's, as the other final metrics
    by_acc = make_cfg("+experiment=dropout", "data.val_size=100", "trainer.early_stopping.metric=val_acc")
    assert selection_result(history, by_acc, None, completed=True)["best_epoch"] == 2
    assert selection_result(history, make_cfg("+experiment=dropout"), None, completed=True) == {}  # no split: as before


def test_early_stopping_stops_an_overfitting_run_and_keeps_its_best_weights(make_cfg, tmp_path):
    free, _ = run(make_cfg, *OVERFITS)
    stopped, out = run(make_cfg, *OVERFITS, "trainer.early_stopping.patience=3")
    val = [h["val_loss"] for h in free["history"]]
    best = val.index(min(val)) + 1
    assert 1 < best < 20 and val[-1] > min(val)  # it overfits: the validation loss rises after its best epoch
    assert free["best_epoch"] == stopped["best_epoch"] == best and "stopped_epoch" not in free
    assert stopped["status"] == "completed" and stopped["epochs"] == 40 and stopped["stopped_epoch"] == best + 3
    assert [h["epoch"] for h in stopped["history"]] == list(range(1, best + 4))
    at_best = free["history"][best - 1]
    for key in ("train_loss", "test_loss", "val_loss", "weight_l2_norm"):  # the final metrics are the best epoch's
        assert stopped[key] == at_best[key], key
    assert stopped["test_loss_at_best_val"] == at_best["test_loss"] and free["test_loss"] != at_best["test_loss"]
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == best + 3 and saved["early_stopping"]["best_epoch"] == best
    cfg = make_cfg(*OVERFITS)
    data = load_data(cfg, CPU)
    model = torch.nn.Linear(200, 1)
    model.load_state_dict(saved["best_model"])
    assert evaluate(model, data.X_val, data.y_val, False)[0].item() == pytest.approx(at_best["val_loss"], rel=1e-6)


@pytest.mark.parametrize("patience", [None, 4], ids=["schedule", "schedule+early_stopping"])
def test_ctrl_c_then_resume_continues_the_schedule_and_the_early_stopping_exactly(make_cfg, monkeypatch, patience):
    """Interrupted after epoch 4 (the checkpoint then holds the scheduler's and the early stopping's state), then
    rerun into the same dir: bitwise the uninterrupted run, with a cosine schedule after a warmup."""
    import regularization.engine as engine

    args = [*OVERFITS, "trainer.epochs=30", "optim.schedule=cosine", "optim.warmup_epochs=3"]
    args += [f"trainer.early_stopping.patience={patience}"] if patience else []
    straight, _ = run(make_cfg, *args)
    assert (straight.get("stopped_epoch") is not None) == bool(patience)
    cfg = make_cfg(*args)
    out = Path(cfg.hydra.runtime.output_dir)
    train_epoch, calls = engine.train_epoch, []

    def interrupted_in_epoch_5(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return train_epoch(*a, **kw)

    monkeypatch.setattr(engine, "train_epoch", interrupted_in_epoch_5)
    with pytest.raises(SystemExit):
        train(cfg, preflight(cfg), out)
    interrupted = json.loads((out / "metrics.json").read_text())
    assert (interrupted["status"], interrupted["epochs"]) == ("interrupted", 4)
    monkeypatch.setattr(engine, "train_epoch", train_epoch)
    train(cfg, preflight(cfg), out)
    got = final_metrics(out)
    straight.pop("wall_s")
    assert got == straight


@pytest.mark.slow
def test_a_sweep_with_early_stopping_reports_validation_metrics(tmp_path):
    """What a user types: a sweep with a validation split and early stopping, under the vectorized launcher."""
    args = ["-m", *OVERFITS, "trainer.early_stopping.patience=3", "optim.lr=0.01,0.003", "hydra/launcher=vectorized"]
    run_train(args, tmp_path)
    jobs = sorted(tmp_path.glob("outputs/multirun/*/optim.lr=*/metrics.json"))
    assert len(jobs) == 2
    for path in jobs:
        m = json.loads(path.read_text())
        assert m["status"] == "completed" and m["best_epoch"] is not None and "test_loss_at_best_val" in m
    fast = json.loads(jobs[1].read_text())  # optim.lr=0.01: overfits early, stops
    assert fast["stopped_epoch"] == fast["best_epoch"] + 3
