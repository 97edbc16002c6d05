"""Bad input stops the run before it trains, with a short message that names the key."""

import pytest
import torch

from regularization.engine import preflight
from tests.conftest import run_train

CUDA_MISSING = [] if torch.cuda.is_available() else [(["device=cuda"], "device")]

# (overrides, text the message must contain). Caught while Hydra composes the config (schema: keys, types, options)
# or by preflight (ranges, combinations, device, data).
BAD_INPUTS = [
    (["reg.lambdd=3"], "lambdd"),
    (["reg.lambd=abc"], "reg.lambd"),
    (["reg.lambd=-1"], "reg.lambd"),
    (["reg.impl=foo"], "reg.impl"),
    (["reg=l1", "reg.impl=weight_decay"], "reg.impl"),
    (["reg.penalty=l3"], "reg.penalty"),
    (["reg.penalty=l1"], "reg.penalty"),
    (["reg=none", "reg.lambd=3"], "reg.lambd"),
    (["reg=none", "reg.impl=penalty"], "reg.impl"),
    (["reg.penalize_bias=maybe"], "reg.penalize_bias"),
    (["reg=l2", "reg.dropout1=0.3"], "dropout1"),
    (["reg=elastic"], "reg"),
    (["model=mlp", "reg=dropout_scratch", "reg.dropout1=1.0"], "reg.dropout1"),
    (["model=mlp", "reg=dropout_builtin", "reg.dropout2=-0.1"], "reg.dropout2"),
    (["model=mlp", "reg=dropout_scratch", "reg.dropout=both"], "reg.dropout"),
    (["reg=dropout_scratch"], "model=mlp"),  # dropout on the linear model
    (["model=mlp", "model.hidden1=0"], "model.hidden1"),
    (["model.hidden1=10"], "hidden1"),  # the linear model has no hidden layers
    (["model.init=xavier"], "model.init"),
    (["model.init_std=0"], "model.init_std"),
    (["model=transformer"], "model"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["optim=rmsprop"], "optim"),
    (["optim.name=rmsprop"], "optim.name"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.epochs=1.5"], "trainer.epochs"),
    (["trainer.eval_every=0"], "trainer.eval_every"),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every"),
    (["trainer.checkpoint_min_interval_s=-1"], "trainer.checkpoint_min_interval_s"),
    (["trainer.epoch=3"], "epoch"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.n_train=0"], "data.n_train"),
    (["data=fashion_mnist", "data.n_test=0"], "data.n_test"),
    (["data.noise=-1"], "data.noise"),
    (["data=imagenet"], "data"),
    (["seed=one"], "seed"),
    (["device=tpu"], "device"),
    (["device=cuda:7"], "device"),
    (["data.val_size=-1"], "data.val_size"),
    (["data.val_size=ten"], "data.val_size"),
    (["data.split_seed=1"], "split_seed"),  # the synthetic data are drawn from the seed: no split to seed
    (["trainer.early_stopping.patience=3"], "data.val_size"),  # early stopping without a validation set
    (["data.val_size=10", "trainer.early_stopping.patience=-1"], "trainer.early_stopping.patience"),
    (["data.val_size=10", "trainer.early_stopping.metric=val_f1"], "trainer.early_stopping.metric"),
    (["data.val_size=10", "trainer.early_stopping.metric=val_acc"], "trainer.early_stopping.metric"),  # regression
    (["trainer.early_stopping.patiance=3"], "patiance"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs"),
    (["optim.warmup_epochs=100"], "optim.warmup_epochs"),  # as long as trainer.epochs: the schedule never begins
    (["optim.step_size=0"], "optim.step_size"),
    (["optim.gamma=0"], "optim.gamma"),
    (["optimize_metric=val_loss"], "data.val_size"),
    *CUDA_MISSING,
]


def _error_text(make_cfg, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 - composition and preflight raise different types
        preflight(make_cfg(*overrides))
    err = info.value
    return f"{err}\n{err.__cause__ or ''}"


@pytest.mark.parametrize(("overrides", "key"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_rejected_naming_the_key(make_cfg, overrides, key):
    assert key in _error_text(make_cfg, overrides)


def test_missing_data_offline_is_rejected(make_cfg, tmp_path):
    text = _error_text(make_cfg, ["+experiment=dropout", f"data.root={tmp_path}"])
    assert "data.root" in text and "FashionMNIST/raw" in text


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["reg.lambd=3", "reg.impl=weight_decay"],
        ["reg=l1", "reg.lambd=0.5", "reg.impl=proximal"],
        ["reg=none"],
        ["model=mlp", "reg=dropout_builtin", "reg.penalty=l2", "reg.lambd=1e-4"],  # dropout + weight penalty
        ["optim=adam"],
        ["optim=adam", "optim.schedule=cosine", "optim.warmup_epochs=5"],
        ["data.val_size=50", "trainer.early_stopping.patience=5", "optimize_metric=test_loss_at_best_val"],
    ],
)
def test_good_configs_pass_preflight(make_cfg, overrides):
    assert preflight(make_cfg(*overrides)).type in ("cpu", "cuda")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["reg.lambd=-1"], "reg.lambd"),
        (["+experiment=dropout", "reg.dropout1=1.0"], "reg.dropout1"),
        (["reg.lambdd=1"], "lambdd"),
        (["reg=dropout_scratch"], "model=mlp"),
        (["-m", "reg.lambd=3,-1"], "reg.lambd"),  # a bad job anywhere in a sweep stops it before any job trains
        (["-m", "trainer.early_stopping.patience=5", "hydra/launcher=vectorized"], "data.val_size"),
    ],
)
def test_cli_error_is_short_without_traceback_and_leaves_no_dir(tmp_path, args, key):
    """The message alone (no Hydra "Error executing job with overrides" in front), exit 1, and no run or sweep dir."""
    proc = run_train(args, tmp_path, check=False)
    assert proc.returncode == 1
    assert key in proc.stderr and proc.stderr.startswith("Invalid config")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 4  # with Hydra's HYDRA_FULL_ERROR hint
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    proc = run_train(["reg.lambd=-1", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "reg.lambd" in proc.stderr
