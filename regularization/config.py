"""Config schema: one structured-config dataclass per group, stored in Hydra's ConfigStore.

The YAML files in ``conf/`` extend these schemas, so OmegaConf rejects unknown keys and wrong
types while the config is composed. ``validate`` adds what a schema cannot express: ranges,
options that depend on another key, combinations that don't fit, and the device and data
being there. It runs before any training, once per job of a sweep.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(CompactHydraException):
    """A config that cannot run. Hydra prints the message alone, without a traceback."""


class Init(Enum):
    default = "default"  # PyTorch's own nn.Linear init
    normal = "normal"  # w ~ N(0, init_std²), b = 0


class Penalty(Enum):
    none = "none"
    l2 = "l2"
    l1 = "l1"


class Direction(Enum):
    """Whether a hyperparameter search (hydra/sweeper=optuna) minimizes or maximizes ``optimize_metric``."""

    minimize = "minimize"
    maximize = "maximize"


class DropoutKind(Enum):
    scratch = "scratch"  # the package's own dropout (regularizers.Dropout), inverted or standard
    builtin = "builtin"  # torch.nn.Dropout


class Schedule(Enum):
    """The learning rate's shape over epochs (regularization.schedule.lr_factor), after the optional warmup."""

    none = "none"  # constant
    step = "step"  # × gamma every step_size epochs (torch.optim.lr_scheduler.StepLR)
    cosine = "cosine"  # half a cosine from lr down to 0 over the epochs after the warmup (CosineAnnealingLR)


class DropoutStyle(Enum):
    inverted = "inverted"  # training scales kept units by 1/(1−p); evaluation is the identity
    standard = "standard"  # training keeps units unscaled; evaluation multiplies by (1−p)


@dataclass
class ModelConfig:
    name: str = MISSING
    init: Init = Init.default
    init_std: float = 0.01


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden1: int = 256
    hidden2: int = 256


@dataclass
class RegConfig:
    """A weight penalty. ``name`` is the preset's name: none, l2 or l1."""

    name: str = "none"
    penalty: Penalty = Penalty.none
    lambd: float = 0.0
    # l2: penalty | weight_decay; l1: subgradient | proximal. null: the from-scratch one.
    impl: str | None = None
    penalize_bias: bool = False
    # null: off. c > 0: after every optimizer step each unit's incoming weight vector is rescaled to ‖w‖₂ ≤ c.
    max_norm: float | None = None


@dataclass
class DropoutRegConfig(RegConfig):
    """Dropout after each hidden ReLU, plus an optional weight penalty (``penalty``, ``lambd``)."""

    name: str = "dropout_scratch"
    dropout: DropoutKind = DropoutKind.scratch
    dropout1: float = 0.2
    dropout2: float = 0.5
    input_dropout: float = 0.0  # dropout on the MLP's inputs, before the first Linear
    dropout_style: DropoutStyle = DropoutStyle.inverted  # standard needs dropout=scratch: nn.Dropout is inverted only


@dataclass
class DataConfig:
    name: str = MISSING
    batch_size: int = MISSING
    # Examples held out for validation (val_loss, val_acc; best epoch, early stopping). 0: none. Synthetic: drawn as
    # extra examples from the seed (the training set keeps n_train); Fashion-MNIST: taken out of the 60k train set.
    val_size: int = 0


@dataclass
class SyntheticConfig(DataConfig):
    name: str = "synthetic"
    batch_size: int = 5
    n_train: int = 20
    n_test: int = 100
    num_inputs: int = 200
    noise: float = 0.01


@dataclass
class FashionMNISTConfig(DataConfig):
    name: str = "fashion_mnist"
    batch_size: int = 256
    root: str = "data"
    download: bool = False
    # null: the whole split (60,000 and 10,000 images); k: its first k images (after data.val_size is held out)
    n_train: int | None = None
    n_test: int | None = None
    split_seed: int = 0  # which train examples become the validation set: the same for every job, whatever its seed


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    schedule: Schedule = Schedule.none  # stepped once per epoch; the formula: regularization.schedule.lr_factor
    warmup_epochs: int = 0  # the lr rises linearly over these first epochs: lr·(e+1)/(warmup_epochs+1) in epoch e+1
    step_size: int = 30  # schedule=step: epochs between two multiplications by gamma
    gamma: float = 0.1


@dataclass
class SGDConfig(OptimConfig):
    """SGD, with heavy-ball or Nesterov momentum. Adam has no such keys, so ``optim=adam optim.momentum=…`` is an unknown key."""

    name: str = "sgd"
    lr: float = 0.003
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class EarlyStoppingConfig:
    # Stop a job after this many evaluations without a better validation metric and keep its best epoch's
    # weights; null or 0: off. Needs data.val_size > 0.
    patience: int | None = None
    metric: str = "val_loss"  # val_loss (lower is better) or val_acc (higher; classification): also picks best_epoch


@dataclass
class TrainerConfig:
    epochs: int = 100
    eval_every: int = 1
    deterministic: bool = False
    progress: bool = True  # tqdm bars on stderr, shown only when stderr is a terminal
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always checkpointed)
    checkpoint_min_interval_s: float = 1.0  # and at least this many seconds since the last one
    # 32, bf16-mixed or 16-mixed (CUDA only), as Lightning names them (regularization.step). A str, not an Enum:
    # an Enum's member names cannot be "32" or "bf16-mixed", and OmegaConf matches names.
    precision: str = "32"
    compile: bool = False  # true: the training step runs through torch.compile
    # fp32 matmuls: highest (full fp32), high (TF32 on Ampere+ GPUs), medium (bf16 too); torch.set_float32_matmul_precision
    matmul_precision: str = "highest"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class SummaryConfig:
    """What a sweep's summary shows (regularization.summary); read from the sweep's config when it ends."""

    baseline: str | None = None  # KEY=VALUE of a swept key (reg.lambd=0): every setting's gain over it, paired by seed
    metric: str | None = None  # any number in metrics.json; null: test_acc, or test_loss for regression


@dataclass
class Config:
    model: Any = MISSING
    reg: Any = MISSING
    data: Any = MISSING
    optim: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    seed: int = 0
    device: str = "auto"
    resume: bool = True
    optimize_metric: str = "test_loss"  # the final metric train.py returns to a sweeper (METRICS)
    optimize_direction: Direction = Direction.minimize
    sparsity_threshold: float = 1e-3  # sparsity = the fraction of penalized weights with |w| below this
    optimize_seeds: int = 1  # a search (hydra/sweeper=optuna_seeds) scores each trial by its mean over seeds seed..seed+n-1


IMPLS = {Penalty.none: (None,), Penalty.l2: ("penalty", "weight_decay"), Penalty.l1: ("subgradient", "proximal")}
OPTIMIZERS = ("sgd", "adam")
# Final metrics of metrics.json that a search can optimize. Accuracies need classification data.
METRICS = ("test_loss", "train_loss", "test_acc", "train_acc", "weight_l2_norm", "sparsity")
# Validation metrics (need data.val_size > 0): the last evaluation's, and the test metrics at the best epoch by validation.
VAL_METRICS = ("val_loss", "val_acc", "test_loss_at_best_val", "test_acc_at_best_val")
EARLY_STOPPING_METRICS = ("val_loss", "val_acc")


SCHEMAS = (
    ("model", "base", ModelConfig),
    ("model", "mlp", MLPConfig),
    ("reg", "base", RegConfig),
    ("reg", "dropout", DropoutRegConfig),
    ("data", "synthetic", SyntheticConfig),
    ("data", "fashion_mnist", FashionMNISTConfig),
    ("optim", "base", OptimConfig),
    ("optim", "sgd", SGDConfig),
)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore, and the resolvers used in output dir names: ``${pid:}``, and
    ``${job_name:${hydra.job.override_dirname}}``, a single run's name (its overrides, or ``job`` without any)."""
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
    OmegaConf.register_new_resolver("job_name", lambda override_dirname: override_dirname or "job", replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # Under schema/<group>, not <group>: the YAML files extend them (/schema/reg/base@_here_), and Hydra's lists of
    # a group's choices (errors, --help) show the choices alone.
    for group, name, node in SCHEMAS:
        cs.store(group=f"schema/{group}", name=name, node=node)


def config_without(cfg: DictConfig | dict, keys: tuple[str, ...]) -> dict[str, Any]:
    """The job's config as plain data (hydra's node dropped), without the given dotted keys. ``cfg`` may be the plain
    data already (resolved, enums kept: ``Base.view``'s), which is copied as ``OmegaConf.to_container`` converts."""
    container = _enum_names(cfg) if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    for key in keys:
        *parents, leaf = key.split(".")
        node = container
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return container


def _enum_names(value: Any) -> Any:
    """A copy of plain nested data with each enum as its name (``to_container(enum_to_str=True)``'s conversion)."""
    if isinstance(value, dict):
        return {k: _enum_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_enum_names(v) for v in value]
    return value.name if isinstance(value, Enum) else value


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"Invalid config: {key}: {message}")


def impl_of(reg: DictConfig) -> str | None:
    """The penalty's implementation, with null meaning the from-scratch one."""
    return reg.impl if reg.impl is not None else IMPLS[reg.penalty][0]


GROUPS = ("model", "reg", "data", "optim")  # Any in Config: each YAML file of the group brings its schema (schema/<group>)


def check_keys(cfg: DictConfig) -> None:
    """Raise ConfigError for a key that is not in its node's schema, with the closest real key.

    Hydra lets ``+reg.lamda=3`` and ``++reg.lamda=3`` add keys to a structured config (it opens struct mode for
    them), so the composed config can hold keys that no code reads. Compared here against the dataclasses.
    """
    keys = _schema_keys(cfg, "")
    known = [path for path, ok in keys if ok]
    for path, ok in keys:
        if not ok:
            raise ConfigError(f"Invalid config: {path}: {_where(cfg, path)} has no such key; {_suggest(path, known)}")


def _schema_keys(node: DictConfig, prefix: str) -> list[tuple[str, bool]]:
    """Every dotted key that node's schemas allow, and every key under node, each with whether its schema has it."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        group = prefix.rstrip(".")
        name = f"{group}={node.get('name')}" if isinstance(node.get("name"), str) else group
        hint = f"begin its file with `defaults: [/schema/{group}/base@_here_, _self_]`, as conf/{group}/*.yaml do"
        raise ConfigError(f"Invalid config: {group}: {name} extends no schema, so its keys cannot be checked; {hint}")
    allowed = [f.name for f in dataclasses.fields(schema)]
    found = [(f"{prefix}{key}", True) for key in allowed]
    for key in node.keys():
        if prefix == "" and key == "hydra":
            continue
        if key not in allowed:
            found.append((f"{prefix}{key}", False))
        elif isinstance(child := node._get_node(key), DictConfig):
            found += _schema_keys(child, f"{prefix}{key}.")
    return found


def _suggest(path: str, known: list[str]) -> str:
    """The closest real key by its dotted path (reg.lamda: reg.lambd), else by its last part (lr: optim.lr)."""
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    if not close:
        leaves = {k.rpartition(".")[2]: k for k in known}
        close = [leaves[m] for m in difflib.get_close_matches(path.rpartition(".")[2], list(leaves), n=1, cutoff=0.8)]
    parent = path.rpartition(".")[0]
    here = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    return f"did you mean {close[0]}?" if close else f"the keys there are: {', '.join(here)}"


def known_keys() -> list[str]:
    """Every dotted key that some schema allows: the top level's, the trainer's, and each group's over its schemas."""
    keys = {f.name for f in dataclasses.fields(Config)} | {f"trainer.{f.name}" for f in dataclasses.fields(TrainerConfig)}
    keys |= {f"trainer.early_stopping.{f.name}" for f in dataclasses.fields(EarlyStoppingConfig)}
    keys |= {f"summary.{f.name}" for f in dataclasses.fields(SummaryConfig)}
    keys |= {f"{group}.{f.name}" for group, _, node in SCHEMAS for f in dataclasses.fields(node)}
    return sorted(keys)


def check_command_line(args: list[str], conf_dir: Path) -> None:
    """Before Hydra composes: ConfigError, with the closest real key, for a key that no schema has, set on the command
    line (``reg.lamda=3``) or in a preset file it chooses (``+experiment=mine`` with ``reg: {lamda: 3}``).

    Hydra refuses both too, but suggests ``+reg.lamda=3`` for the first and names no real key for the second.
    ``+key`` and ``++key`` are checked by ``check_keys`` once composed, against the schema of the chosen preset.
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own command-line parser, as @hydra.main uses it
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = get_args_parser().parse_known_args(args)[0]
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException:
        return  # a malformed override: Hydra's own message says what is wrong with it
    known = known_keys()
    # Where preset files are found: conf/, --config-dir, and the file:// entries of hydra.searchpath.
    dirs = [conf_dir, *([Path(parsed.config_dir)] if parsed.config_dir else [])]
    dirs += [Path(p.removeprefix("file://")) for o in overrides if o.key_or_group == "hydra.searchpath" for p in o.value()]
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or "@" in key:
            continue
        names = [n for n in _chosen(override) if isinstance(n, str)]
        typed = f"{'++' if override.is_force_add() else '+' if override.is_add() else ''}{key}"
        if key.startswith("hydra/"):  # a group of Hydra's: its plugins' options (launchers, sweepers) and conf/hydra's
            _check_choices(key, typed, names, dirs)
            continue
        if override.is_hydra_override() or "/" in key:
            continue
        if any((d / key).is_dir() for d in dirs):  # a group (in conf/ or a user's config dir): check its chosen files
            _check_choices(key, typed, names, dirs)
            for path in (d / key / f"{name}.yaml" for d in dirs for name in names):
                if path.is_file():
                    _check_preset(path, key, known)
        elif not (override.is_add() or override.is_force_add()) and key not in known:
            raise ConfigError(f"Invalid config: {key}: no such key in any schema; {_suggest(key, known)}")


def _chosen(override: Any) -> list[Any]:
    """The values an override gives: one, or a choice sweep's (a glob or a range names no preset to check)."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    return list(override.sweep_string_iterator()) if isinstance(value, ChoiceSweep) else [] if override.is_sweep_override() else [value]


def _check_choices(group: str, typed: str, names: list[str], dirs: list[Path]) -> None:
    """ConfigError, with the closest option, for a name that is none of the group's options (``+experiment=dropuot``):
    Hydra's own message lists its search path and no option."""
    from hydra.core.plugins import Plugins

    if not names:
        return
    Plugins.instance()  # Hydra's plugin scan, which stores the plugins' options (hydra/launcher=joblib, ...)
    try:
        options = {name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)}
    except OSError:  # no such group in the store
        options = set()
    options |= {p.stem for d in dirs for p in (d / group).glob("*.yaml")}
    for name in names:
        if options and name not in options:
            close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
            hint = f"did you mean {typed}={close[0]}?" if close else f"the options are: {', '.join(sorted(options))}"
            raise ConfigError(f"Invalid config: {typed}={name}: no such option of {group}; {hint}")


def _check_preset(path: Path, group: str, known: list[str]) -> None:
    """A preset file's keys against the schemas: under its group, or under the package its header names."""
    text = path.read_text()
    node = yaml.safe_load(text) or {}
    package = re.search(r"^# *@package +(\S+)", text, re.MULTILINE)
    prefix = f"{group}." if package is None else "" if package[1] == "_global_" else f"{package[1]}."
    for key in _flat_keys(node, prefix, known):
        raise ConfigError(f"Invalid config: {key}: no such key in any schema (set in {path}); {_suggest(key, known)}")


def _flat_keys(node: dict, prefix: str, known: list[str]) -> list[str]:
    """The dotted keys under node that no schema has (``defaults`` and ``hydra`` are Hydra's own)."""
    unknown = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in ("defaults", "hydra", f"{prefix}defaults"):
            continue
        if isinstance(value, dict) and any(k.startswith(f"{path}.") for k in known):
            unknown += _flat_keys(value, f"{path}.", known)
        elif path not in known:
            unknown.append(path)
    return unknown


def _where(cfg: DictConfig, path: str) -> str:
    """The node that lacks the key, named by its group choice where it has one: ``reg=l2``."""
    parent = path.rpartition(".")[0]
    if not parent:
        return "the top level"
    name = OmegaConf.select(cfg, f"{parent}.name", default=None)
    return f"{parent}={name}" if isinstance(name, str) else parent


# torch.set_float32_matmul_precision's values, from exact to fastest (docs/precision.md).
MATMUL_PRECISIONS = ("highest", "high", "medium")


def validate(cfg: DictConfig, keys: bool = True) -> None:
    """Raise ConfigError, naming the key and what is allowed, for a config that cannot run. ``keys=False`` leaves
    out ``check_keys``, for a view of a job's values whose keys were checked on another job of the same structure."""
    if keys:
        check_keys(cfg)
    _validate_reg(cfg)
    _require(cfg.optim.name in OPTIMIZERS, "optim.name", f"got {cfg.optim.name!r}, allowed: {', '.join(OPTIMIZERS)}")
    _require(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    _validate_momentum(cfg.optim)
    _require(cfg.trainer.epochs >= 1, "trainer.epochs", f"must be >= 1, got {cfg.trainer.epochs}")
    _require(cfg.trainer.eval_every >= 1, "trainer.eval_every", f"must be >= 1, got {cfg.trainer.eval_every}")
    _require(cfg.trainer.checkpoint_every >= 1, "trainer.checkpoint_every", f"must be >= 1, got {cfg.trainer.checkpoint_every}")
    interval = cfg.trainer.checkpoint_min_interval_s
    _require(interval >= 0, "trainer.checkpoint_min_interval_s", f"must be >= 0 (0: every checkpoint_every epochs), got {interval}")
    matmul = cfg.trainer.get("matmul_precision", "highest")
    _require(matmul in MATMUL_PRECISIONS, "trainer.matmul_precision", f"got {matmul!r}, allowed: {', '.join(MATMUL_PRECISIONS)}")
    _require(cfg.data.batch_size >= 1, "data.batch_size", f"must be >= 1, got {cfg.data.batch_size}")
    if cfg.model.name == "mlp":
        for key in ("hidden1", "hidden2"):
            _require(cfg.model[key] >= 1, f"model.{key}", f"must be >= 1, got {cfg.model[key]}")
    _require(cfg.model.init_std > 0, "model.init_std", f"must be > 0, got {cfg.model.init_std}")
    if cfg.data.name == "synthetic":
        for key in ("n_train", "n_test", "num_inputs"):
            _require(cfg.data[key] >= 1, f"data.{key}", f"must be >= 1, got {cfg.data[key]}")
        _require(cfg.data.noise >= 0, "data.noise", f"must be >= 0, got {cfg.data.noise}")
    else:
        for key in ("n_train", "n_test"):
            n = cfg.data[key]
            _require(n is None or n >= 1, f"data.{key}", f"must be >= 1, or null for the whole split; got {n}")
    _require(cfg.sparsity_threshold > 0, "sparsity_threshold", f"must be > 0, got {cfg.sparsity_threshold}")
    _validate_schedule(cfg)
    _validate_validation(cfg)
    _validate_metric(cfg)


def _validate_schedule(cfg: DictConfig) -> None:
    optim, epochs = cfg.optim, cfg.trainer.epochs
    warmup = optim.warmup_epochs
    _require(warmup >= 0, "optim.warmup_epochs", f"must be >= 0, got {warmup}")
    message = f"must be < trainer.epochs ({epochs}): the schedule begins after the warmup; got {warmup}"
    _require(warmup == 0 or warmup < epochs, "optim.warmup_epochs", message)
    _require(optim.step_size >= 1, "optim.step_size", f"must be >= 1, got {optim.step_size}")
    _require(optim.gamma > 0, "optim.gamma", f"must be > 0, got {optim.gamma}")


def _validate_validation(cfg: DictConfig) -> None:
    """data.val_size and trainer.early_stopping. Fashion-MNIST's val_size against its train set: data.check_data."""
    val_size, stopping = cfg.data.val_size, cfg.trainer.early_stopping
    _require(val_size >= 0, "data.val_size", f"must be >= 0 (0: no validation split), got {val_size}")
    allowed = ", ".join(EARLY_STOPPING_METRICS)
    _require(stopping.metric in EARLY_STOPPING_METRICS, "trainer.early_stopping.metric", f"got {stopping.metric!r}, allowed: {allowed}")
    if stopping.metric == "val_acc":
        message = "val_acc needs classification data; synthetic is regression (use val_loss)"
        _require(cfg.data.name != "synthetic", "trainer.early_stopping.metric", message)
    patience = stopping.patience
    _require(patience is None or patience >= 0, "trainer.early_stopping.patience", f"must be >= 1, or null/0 for off; got {patience}")
    if patience:
        message = "stops on a validation metric, so it needs data.val_size > 0 (examples held out of training)"
        _require(val_size > 0, "trainer.early_stopping.patience", message)


def _validate_metric(cfg: DictConfig) -> None:
    metric = cfg.optimize_metric
    allowed = METRICS + VAL_METRICS
    _require(metric in allowed, "optimize_metric", f"got {metric!r}, allowed: {', '.join(allowed)}")
    _require(cfg.optimize_seeds >= 1, "optimize_seeds", f"must be >= 1, got {cfg.optimize_seeds}")
    if metric in VAL_METRICS:
        _require(cfg.data.val_size > 0, "optimize_metric", f"{metric} needs a validation split: set data.val_size > 0")
    if metric.endswith(("_acc", "_acc_at_best_val")):
        _require(cfg.data.name != "synthetic", "optimize_metric", f"{metric} needs classification data; synthetic is regression")


def _validate_reg(cfg: DictConfig) -> None:
    reg = cfg.reg
    _require(reg.lambd >= 0, "reg.lambd", f"must be >= 0, got {reg.lambd}")
    if reg.name in ("none", "l1", "l2"):
        penalty = reg.penalty.value
        _require(penalty == reg.name, "reg.penalty", f"is {penalty} but reg={reg.name}; choose reg={penalty}")
    _require(reg.max_norm is None or reg.max_norm > 0, "reg.max_norm", f"must be > 0, or null for off; got {reg.max_norm}")
    allowed = IMPLS[reg.penalty]
    if reg.penalty is Penalty.none:
        _require(reg.lambd == 0, "reg.lambd", "has no effect without a penalty: use reg=l2 or reg=l1, or set reg.penalty")
        _require(reg.impl is None, "reg.impl", "has no effect without a penalty (reg.penalty=none)")
    else:
        message = f"got {reg.impl!r}, allowed for {reg.penalty.value}: {', '.join(allowed)}"
        _require(reg.impl is None or reg.impl in allowed, "reg.impl", message)
    if "dropout" in reg:
        for key in ("dropout1", "dropout2", "input_dropout"):
            _require(0 <= reg[key] < 1, f"reg.{key}", f"must be in [0, 1), got {reg[key]}")
        standard = reg.dropout_style is DropoutStyle.standard
        message = "standard needs reg=dropout_scratch (reg.dropout=scratch): nn.Dropout is inverted only"
        _require(not (standard and reg.dropout is DropoutKind.builtin), "reg.dropout_style", message)
        _require(cfg.model.name == "mlp", "reg", f"dropout ({reg.name}) needs hidden layers: use model=mlp, not model={cfg.model.name}")


def _validate_momentum(optim: DictConfig) -> None:
    momentum, nesterov = optim.get("momentum", 0.0), optim.get("nesterov", False)
    if optim.name != "sgd":
        _require(momentum == 0 and not nesterov, "optim.momentum", f"and optim.nesterov are for sgd only, not optim.name={optim.name}")
    _require(0 <= momentum < 1, "optim.momentum", f"must be in [0, 1), got {momentum}")
    _require(not nesterov or momentum > 0, "optim.nesterov", f"needs optim.momentum > 0 (in (0, 1)), got optim.momentum={momentum}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu; ``cuda`` and ``cuda:N`` must exist."""
    allowed = "allowed: auto, cpu, cuda, cuda:N"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Invalid config: device: got {name!r}, {allowed}") from None
    _require(device.type in ("cpu", "cuda"), "device", f"got {name!r}, {allowed}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        _require(count > 0, "device", f"{name} was asked for, but no CUDA device is available here; use device=cpu or auto")
        index = device.index or 0
        _require(index < count, "device", f"{name} does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
