"""A study as a user runs it: no key slips in unchecked, any regularizer on any preset, searches that bracket the optimum."""

import json
import re
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

from hydra_plugins.regularization_sweeper.optuna_seeds import SeedAveragingLauncher
from regularization.config import ConfigError, Penalty, check_command_line, validate
from regularization.engine import preflight, run
from tests.conftest import run_train

CONF = Path(__file__).parents[1] / "conf"

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
    with pytest.raises(HydraException) as err:  # Hydra's composition refuses it
        validate(make_cfg(searchpath, "+experiment=mine"))
    assert "lamda" in f"{err.value} {err.value.__cause__}"
    for where in ([searchpath], ["--config-dir", str(tmp_path / "extra")]):  # train.py, before Hydra, names the file
        with pytest.raises(ConfigError) as err:
            check_command_line(["+experiment=mine", *where], CONF)
        assert "reg.lamda: no such key in any schema (set in" in str(err.value) and "did you mean reg.lambd?" in str(err.value)


def test_a_group_of_ones_own_config_dir_is_a_group_not_an_unknown_key(tmp_path):
    searchpath = _config_dir(tmp_path, "mine", "ok", "# @package _global_\ntrainer:\n  epochs: 3\n")
    check_command_line(["+mine=ok", searchpath], CONF)
    (tmp_path / "extra" / "mine" / "bad.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"trainer.epoch: no such key .*did you mean trainer.epochs\?"):
        check_command_line(["mine=bad", searchpath], CONF)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reg.lamda=3"], "reg.lamda: no such key in any schema; did you mean reg.lambd?"),
        (["-m", "reg.lamda=0,3"], "reg.lamda: no such key in any schema; did you mean reg.lambd?"),
        (["trainer.epoch=3"], "did you mean trainer.epochs?"),
        (["lr=0.1"], "did you mean optim.lr?"),
    ],
)
def test_an_unknown_key_on_the_command_line_is_refused_with_the_closest_key(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_command_line(args, CONF)


def test_the_command_line_check_passes_real_keys_and_every_preset():
    presets = [f"{p.parent.name}={p.stem}" for p in CONF.glob("*/*.yaml") if p.parent.name not in ("hydra", "reg_on_model")]
    check_command_line(["-m", "reg.lambd=0,3", "trainer.epochs=5", "model.hidden1=64", "hydra.sweep.dir=x", *presets], CONF)


@pytest.mark.slow
def test_a_mistyped_key_stops_train_py_with_a_suggestion_and_no_traceback(tmp_path):
    proc = run_train(["reg.lamda=3", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False)
    assert proc.returncode == 1 and "did you mean reg.lambd?" in proc.stderr and "Traceback" not in proc.stderr
    assert "+reg.lamda" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_reg_file_without_a_schema_is_rejected(make_cfg, tmp_path):
    searchpath = _config_dir(tmp_path, "reg", "mine", "name: l2\npenalty: l2\nlamda: 3\n")  # no defaults: its keys go unchecked
    with pytest.raises(ConfigError, match=r"reg: reg=l2 extends no schema.*/schema/reg/base@_here_"):
        validate(make_cfg(searchpath, "reg=mine"))


def test_schema_names_are_not_group_choices(tmp_path):
    proc = run_train(["reg=elastic", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False)
    assert proc.stderr.strip() == "Invalid config: reg=elastic: no such option of reg; the options are: " + ", ".join(
        ["dropout_builtin", "dropout_recipe", "dropout_scratch", "l1", "l2", "none"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+experiment=dropuot"], "+experiment=dropuot: no such option of experiment; did you mean +experiment=dropout?"),
        (["reg=dropot_scratch"], "did you mean reg=dropout_scratch?"),
        (["-m", "reg=l1,l22"], "reg=l22: no such option of reg; did you mean reg=l2?"),
        (["model=mpl"], "did you mean model=mlp?"),
        (["data=fashion"], "did you mean data=fashion_mnist?"),
        (["optim=adma"], "did you mean optim=adam?"),
        (["-m", "hparams_search=weight_decay"], "did you mean hparams_search=weight_decay_lambda?"),
        (["-m", "reg.lambd=0,3", "hydra/launcher=vectorised"], "did you mean hydra/launcher=vectorized?"),
        (["-m", "hydra/launcher=joblb"], "did you mean hydra/launcher=joblib?"),
    ],
)
def test_a_mistyped_preset_is_refused_with_the_closest_option(args, message):
    """Any config group's option, Hydra's launchers included: Hydra's own message dumps its search path instead."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_command_line(args, CONF)


def test_the_command_line_check_passes_every_launcher_and_sweeper():
    launchers = ["basic", "joblib", "submitit_local", "submitit_slurm", "vectorized", "vectorized_local", "vectorized_slurm"]
    for launcher in launchers:
        check_command_line(["-m", "reg.lambd=0,3", f"hydra/launcher={launcher}"], CONF)
    check_command_line(["-m", "hydra/sweeper=optuna_seeds", "hydra/sweeper=validating"], CONF)


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
    mlp_l2 = reg == "l2" and cfg.model.name == "mlp"  # conf/reg_on_model/mlp_l2.yaml: else L2 would be reg=none
    assert cfg.reg.name == reg and cfg.reg.lambd == (1e-4 if mlp_l2 else 0)
    assert cfg.reg.penalty is {"l2": Penalty.l2, "l1": Penalty.l1}.get(reg, Penalty.none)
    if reg.startswith("dropout"):
        assert (cfg.reg.dropout1, cfg.reg.dropout2, cfg.reg.input_dropout, cfg.reg.max_norm) == (0.2, 0.5, 0.0, None)


@pytest.mark.parametrize(
    ("overrides", "lambd"),
    [(["reg=l2"], 0.0), (["model=mlp", "reg=l2"], 1e-4), (["model=mlp", "reg=l2", "reg.lambd=3e-4"], 3e-4), (["model=mlp", "reg=l1"], 0.0)],
)
def test_l2_on_the_mlp_has_a_lambda_of_its_own(make_cfg, overrides, lambd):
    """On the linear model the weight-decay chapter's λ = 0; on the MLP L2 defaults to a λ, so reg=l2 differs from reg=none."""
    assert make_cfg(*overrides).reg.lambd == lambd


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


# ---- search: a range that brackets the optimum, widened in one line, averaged over seeds -----------------------------


class FakeLauncher:
    """Records what it is asked to launch; each job returns its seed (None for seed 7: a failed run)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[str]], int]] = []

    def launch(self, job_overrides, initial_job_idx):
        self.calls.append(([list(o) for o in job_overrides], initial_job_idx))
        returns = []
        for overrides in job_overrides:
            seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = None if seed == 7 else float(seed)
            returns.append(ret)
        return returns


def test_each_trial_runs_its_seeds_in_one_batch_and_reports_their_mean():
    inner = FakeLauncher()
    launcher = SeedAveragingLauncher(inner, range(5, 8))
    returns = launcher.launch([("reg.lambd=1", "seed=0"), ("reg.lambd=2",)], initial_job_idx=4)
    jobs, first = inner.calls[0]
    assert len(inner.calls) == 1 and first == 12  # trial t's seeds are jobs 3t..3t+2
    assert jobs == [["reg.lambd=1", f"seed={s}"] for s in (5, 6, 7)] + [["reg.lambd=2", f"seed={s}"] for s in (5, 6, 7)]
    assert [r.overrides for r in returns] == [["reg.lambd=1", "seed=0"], ["reg.lambd=2"]]
    assert [r.return_value for r in returns] == [None, None]  # seed 7 failed: the trial fails, it is not averaged
    inner_ok = FakeLauncher()
    assert SeedAveragingLauncher(inner_ok, range(0, 3)).launch([("reg.lambd=1",)], 0)[0].return_value == pytest.approx(1.0)


@pytest.mark.slow
def test_a_search_averages_over_seeds_as_one_stacked_group_in_a_range_set_in_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=weight_decay_lambda", "hydra/launcher=vectorized", "optimize_seeds=2", "hydra.sweeper.n_trials=2"]
    proc = run_train([*args, "reg.lambd=tag(log, interval(1, 500))", "trainer.epochs=3", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.stderr.count("Launching 2 jobs as 1 vectorized group") + proc.stdout.count("Launching 2 jobs as 1 vectorized group") == 2
    runs = {}
    for path in sweep.glob("*/metrics.json"):
        assert "hparams_search" not in path.parent.name and "optimize_seeds" not in path.parent.name
        cfg = OmegaConf.load(path.parent / ".hydra" / "config.yaml")
        runs.setdefault(cfg.reg.lambd, {})[cfg.seed] = json.loads(path.read_text())["test_loss"]
    assert len(runs) == 2 and all(1 <= lambd <= 500 and sorted(seeds) == [0, 1] for lambd, seeds in runs.items())
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    means = {lambd: sum(seeds.values()) / 2 for lambd, seeds in runs.items()}
    assert best.best_value == pytest.approx(min(means.values())) and means[best.best_params["reg.lambd"]] == min(means.values())


def test_the_lambda_search_brackets_the_measured_optimum(make_cfg):
    """docs/study.md: the test loss falls until λ ≈ 100 and SGD diverges past 2/lr ≈ 667: the range holds both ends."""
    cfg = make_cfg("hparams_search=weight_decay_lambda")
    low, high = (float(x) for x in cfg.hydra.sweeper.params["reg.lambd"].split("interval(")[1].rstrip(")").split(","))
    assert low <= 1 and 2 / cfg.optim.lr < high


@pytest.mark.slow
def test_optimize_seeds_outside_a_search_is_refused_and_leaves_no_dir(tmp_path):
    proc = run_train(["-m", "optimize_seeds=3", "reg.lambd=0,3", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, check=False)
    assert proc.returncode != 0 and "optimize_seeds" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_optimize_seeds_in_a_single_run_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="optimize_seeds"):
        run(make_cfg("optimize_seeds=3"))


# ---- a sweep that fails validation leaves no dir ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_sweep_that_fails_validation_leaves_no_dir(tmp_path, launcher):
    proc = run_train(["-m", f"hydra/launcher={launcher}", "reg.lambd=3,-1", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, check=False)
    assert proc.returncode != 0 and "reg.lambd" in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_diverged_optuna_trial_is_one_line_in_our_words_without_alembic_noise(tmp_path):
    """Past λ = 2/lr SGD's decay step diverges: each such trial is one line of ours (not Optuna's "Return value must be
    float-castable"), none of alembic's "setup plugin" lines, and a search with no completed trial ends without a traceback."""
    args = ["-m", "hparams_search=weight_decay_lambda", "hydra.sweeper.n_trials=2", "trainer.epochs=20", "reg.lambd=interval(3000,5000)"]
    proc = run_train(args, tmp_path)
    output = proc.stdout + proc.stderr
    assert "float-castable" not in output and "alembic" not in output and "Traceback" not in output
    lines = [line for line in output.splitlines() if "Optuna records a failed trial" in line]
    assert len(lines) == 2 and all(re.search(r"trial reg\.lambd=\S+: diverged at epoch \d+", line) for line in lines), output
    assert "no trial completed" in output
