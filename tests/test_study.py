"""A study as a user runs it: no key slips in unchecked, any regularizer on any preset, searches that bracket the optimum."""

import json
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from regularization.config import ConfigError, Penalty, validate
from regularization.engine import preflight
from tests.conftest import run_train

# ---- no key is added silently ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+reg.lamda=3"], "reg.lamda: reg=l2 has no such key; did you mean reg.lambd?"),
        (["++reg.lamda=3"], "reg.lamda: reg=l2 has no such key; did you mean reg.lambd?"),
        (["+trainer.epoch=3"], "did you mean trainer.epochs?"),
        (["+lr=0.1"], "did you mean optim.lr?"),
        (["+experiment=dropout", "reg=l2", "+reg.dropout1=0.3"], "reg.dropout1: reg=l2 has no such key"),
        (["+reg.xyzzy=1"], "the keys there are: name, penalty, lambd"),
    ],
)
def test_an_added_key_outside_the_schema_is_rejected_with_the_closest_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert message in str(err.value)


def _config_dir(tmp_path: Path, group: str, name: str, text: str) -> str:
    """A config dir on Hydra's search path holding one extra file, as a user adds their own preset."""
    (tmp_path / "extra" / group).mkdir(parents=True)
    (tmp_path / "extra" / group / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'extra'}]"


def test_an_unknown_key_in_an_experiment_file_is_rejected(make_cfg, tmp_path):
    searchpath = _config_dir(tmp_path, "experiment", "mine", "# @package _global_\nreg:\n  lamda: 3\n")
    with pytest.raises(HydraException) as err:
        validate(make_cfg(searchpath, "+experiment=mine"))
    assert "lamda" in f"{err.value} {err.value.__cause__}"


def test_a_reg_file_without_a_schema_is_rejected(make_cfg, tmp_path):
    searchpath = _config_dir(tmp_path, "reg", "mine", "name: l2\npenalty: l2\nlamda: 3\n")  # no defaults: its keys go unchecked
    with pytest.raises(ConfigError, match=r"reg: reg=l2 extends no schema.*/schema/reg/base@_here_"):
        validate(make_cfg(searchpath, "reg=mine"))


def test_schema_names_are_not_group_choices(tmp_path):
    proc = run_train(["reg=elastic", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False)
    choices = proc.stderr.split("Available options in 'reg':")[1].split("Config search path")[0].split()
    assert choices == ["dropout_builtin", "dropout_recipe", "dropout_scratch", "l1", "l2", "none"]


@pytest.mark.slow
def test_an_appended_key_stops_the_run_before_it_trains(tmp_path):
    proc = run_train(["+reg.lamda=3", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False)
    assert proc.returncode != 0 and "did you mean reg.lambd?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- any regularizer on any preset ----------------------------------------------------------------------------------

REGS = ["none", "l2", "l1", "dropout_scratch", "dropout_builtin"]


@pytest.mark.parametrize("experiment", ["dropout", "dropout_recipe", "weight_decay"])
@pytest.mark.parametrize("reg", REGS)
def test_every_reg_runs_on_every_experiment_with_its_own_defaults(make_cfg, tiny_fashion_root, experiment, reg):
    data = [] if experiment == "weight_decay" else [f"data.root={tiny_fashion_root}"]
    cfg = make_cfg(f"+experiment={experiment}", f"reg={reg}", *data)
    if reg.startswith("dropout") and experiment == "weight_decay":  # dropout needs hidden layers: refused, not ignored
        with pytest.raises(ConfigError, match="model=mlp"):
            preflight(cfg)
        return
    preflight(cfg)
    assert cfg.reg.name == reg and cfg.reg.lambd == 0
    assert cfg.reg.penalty is {"l2": Penalty.l2, "l1": Penalty.l1}.get(reg, Penalty.none)
    if reg.startswith("dropout"):
        assert (cfg.reg.dropout1, cfg.reg.dropout2, cfg.reg.input_dropout, cfg.reg.max_norm) == (0.2, 0.5, 0.0, None)


def test_experiment_presets_keep_their_model_data_and_optimizer_under_another_reg(make_cfg):
    cfg = make_cfg("+experiment=dropout_recipe", "reg=l2", "reg.lambd=1e-4")
    assert (cfg.model.name, cfg.data.name, cfg.optim.lr, cfg.optim.momentum, cfg.trainer.epochs) == ("mlp", "fashion_mnist", 0.05, 0.9, 10)
    assert cfg.reg.name == "l2" and cfg.reg.max_norm is None


@pytest.mark.parametrize(("preset", "lr", "epochs"), [("dropout_rates", 0.5, 10), ("weight_decay_lambda", 0.003, 100)])
def test_search_presets_train_their_experiment(make_cfg, preset, lr, epochs):
    """config.yaml's own values come before the search preset, so its experiment's lr and epochs are the ones searched."""
    cfg = make_cfg(f"hparams_search={preset}")
    assert (cfg.optim.lr, cfg.trainer.epochs) == (lr, epochs)


@pytest.mark.slow
def test_a_sweep_over_reg_on_the_mlp(tmp_path, tiny_fashion_root):
    sweep = tmp_path / "sweep"
    common = [f"data.root={tiny_fashion_root}", "trainer.epochs=1", "data.batch_size=50", f"hydra.sweep.dir={sweep}"]
    run_train(["-m", "+experiment=dropout", "reg=none,l2,dropout_scratch", *common], tmp_path)
    runs = [(OmegaConf.load(p.parent / ".hydra" / "config.yaml").reg.name, json.loads(p.read_text())) for p in sweep.glob("*/metrics.json")]
    assert sorted(name for name, _ in runs) == ["dropout_scratch", "l2", "none"]
    assert all(m["status"] == "completed" and m["test_acc"] is not None for _, m in runs)
