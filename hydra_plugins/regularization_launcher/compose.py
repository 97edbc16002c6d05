"""A sweep's job configs, each as ``load_sweep_config`` composes it, composing once per structure.

Composing a config (defaults list, config files, merges) takes tens of ms, more than a small job's training.
Jobs whose overrides differ only in the values of plain keys (``reg.lambd=0.5`` against ``reg.lambd=1``, not
config groups, not hydra's) share one structure: the first such job is composed, the others are derived
from its config by applying their value overrides the way Hydra applies them after composing
(``ConfigLoaderImpl._apply_overrides_to_config``) and rebuilding what Hydra derives from the overrides
(``hydra.overrides.task``, ``hydra.job.override_dirname``). The result is the config Hydra would compose.

A base is kept pickled: unpickling a config takes a fifth of the time ``copy.deepcopy`` takes, and it is how
Hydra's own joblib and submitit launchers hand configs to their workers. ``HydraFiles`` writes a job's
``.hydra/*.yaml`` files as the basic launcher does, byte for byte, from YAML dumped once per base.
"""

from __future__ import annotations

import copy
import functools
import logging
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, DictConfig, ListConfig, MissingMandatoryValue, OmegaConf, open_dict, read_write
from omegaconf._utils import get_omega_conf_dumper


class SweepComposer:
    """``compose(overrides)`` gives what ``config_loader.load_sweep_config(master, overrides)`` gives (and its task
    config); ``task(overrides)`` the task config alone. Each call returns fresh configs."""

    def __init__(self, config_loader: ConfigLoaderImpl, master: DictConfig) -> None:
        # The harness's parser, which parses each distinct line once (imported here, as the launcher imports
        # the harness: Hydra loads this plugin before the harness is needed).
        from regularization.logging import parse_override

        self.loader, self.master, self.parse = config_loader, master, parse_override
        self.bases: dict[tuple, Base] = {}
        # The master is composed from the sweep's own overrides with its sweeps (reg.lambd=range(...)) left
        # unapplied: a job whose sweeps all set plain keys is the master with their values applied.
        master_overrides = [self.parse(line) for line in master.hydra.overrides.task]
        self.bases[self.structure(master_overrides, sweeps_are_values=True)] = Base(master)

    def is_value(self, o: Override, sweeps_are_values: bool = False) -> bool:
        """A plain ``key=value`` that Hydra applies to the composed config (not a group choice, not hydra's; a
        sweep over a plain key only if ``sweeps_are_values``)."""
        return (
            o.type == OverrideType.CHANGE
            and o.package is None
            and not o.is_hydra_override()
            and (sweeps_are_values or not o.is_sweep_override())
            and not self.loader.repository.group_exists(o.key_or_group)
        )

    def structure(self, parsed: list[Override], sweeps_are_values: bool = False) -> tuple:
        """What the jobs derived from one base share: their other override lines, in order, and the keys that
        their value overrides set."""
        return tuple(("value", o.key_or_group) if self.is_value(o, sweeps_are_values) else ("line", o.input_line) for o in parsed)

    def compose(self, overrides: Sequence[str]) -> tuple[DictConfig, DictConfig]:
        """The job's config and its task config (derived separately: a task config is ~5× smaller)."""
        job = self.compose_job(overrides)
        return job.config, job.task

    def compose_job(self, overrides: Sequence[str]) -> Composed:
        """The job as ``Composed``: its task config now, its full config when first asked for."""
        parsed, values, base, derived = self._base(overrides)
        if not derived:
            config = base.config()
            lines, dirname = list(config.hydra.overrides.task), config.hydra.job.override_dirname
            return Composed(base.task(), base, [], lines, dirname, lambda: config)
        task = [o for o in parsed if not o.is_hydra_override()]
        lines, dirname = [o.input_line for o in task], get_overrides_dirname(task, *base.dirname_settings)
        keys = [o.key_or_group for o in values]
        return Composed(_apply(base.task(), values), base, keys, lines, dirname, lambda: self.derive(base, values, lines, dirname))

    def task(self, overrides: Sequence[str]) -> DictConfig:
        """The job's task config alone, as the sweeper's pre-flight check needs it."""
        _, values, base, derived = self._base(overrides)
        return _apply(base.task(), values) if derived else base.task()

    def _base(self, overrides: Sequence[str]) -> tuple[list[Override], list[Override], Base, bool]:
        """The parsed overrides, the value overrides, a base, and whether the job is derived from that base by
        applying its value overrides (else the base is the job's own composition)."""
        parsed = [self.parse(line) for line in overrides]
        values = [o for o in parsed if self.is_value(o)]
        keys = [o.key_or_group for o in parsed]
        structure = self.structure(parsed)
        base = self.bases.get(structure)
        if base is None or len(set(keys)) < len(keys) or not all(base.is_leaf(o.key_or_group) for o in values):
            composed = Base(self.loader.load_sweep_config(self.master, list(overrides)))
            self.bases.setdefault(structure, composed)
            return parsed, values, composed, False
        return parsed, values, base, True

    def derive(self, base: Base, values: list[Override], lines: list[str], dirname: str) -> DictConfig:
        """A copy of the base's config turned into the job's: its value overrides applied and hydra's
        override-derived fields (its task override lines, its override_dirname) set."""
        config = _apply(base.config(), values)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.task = lines
            config.hydra.job.override_dirname = dirname
        OmegaConf.copy_cache(from_config=self.master, to_config=config)
        return config


@dataclass
class Composed:
    """A job of the sweep as ``SweepComposer`` makes it: its task config; the base it is composed or derived from and
    the keys its value overrides set there (none when the base is its own composition), for ``HydraFiles``; its task
    override lines and override_dirname (what hydra.overrides.task and hydra.job.override_dirname hold); and its
    full config, made when first asked for (``config``): a vectorized sweep of thousands of small jobs needs few."""

    task: DictConfig
    base: Base
    keys: list[str]
    task_lines: list[str]
    override_dirname: str
    make: Callable[[], DictConfig]

    @functools.cached_property
    def config(self) -> DictConfig:
        """The job's full config, with hydra's node (made on first use, the same object after)."""
        return self.make()


class Base:
    """A composed config and its task config, pickled: ``config()`` and ``task()`` return fresh copies."""

    def __init__(self, config: DictConfig) -> None:
        self._shape = task_config(config)  # looked up, never handed out
        self._config = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        self._task = pickle.dumps(self._shape, protocol=pickle.HIGHEST_PROTOCOL)

    def is_leaf(self, key: str) -> bool:
        """Whether key names a value in the task config (a group's key names a container: that job is composed)."""
        node = OmegaConf.select(self._shape, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
        return not isinstance(node, Container)

    def config(self) -> DictConfig:
        return pickle.loads(self._config)

    @functools.cached_property
    def dirname_settings(self) -> tuple[list[str], str, str]:
        """hydra.job.config.override_dirname's exclude_keys, item_sep and kv_sep (the same for the base's jobs:
        the value overrides that derive them set no hydra key)."""
        dirname = self._hydra.job.config.override_dirname
        return list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep

    @functools.cached_property
    def _hydra(self) -> DictConfig:  # looked up, never handed out
        return self.config().hydra

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a base lives as long as its sweep's composer
    def hydra_template(self, key: str) -> Any:
        """The value at ``hydra.<key>`` as the base holds it, interpolations unresolved (None where there is none)."""
        try:
            return _leaf(self._hydra, key)
        except (KeyError, TypeError, AttributeError):  # a key the hydra node lacks as a path of dicts
            return None

    @functools.cached_property
    def job_log_file(self) -> tuple[Any, logging.Formatter] | None:
        """Where and how the job logging of the base's jobs writes a file: its handler's filename, unresolved, and its
        formatter (``logging.job_log_template``); None when it writes none."""
        from regularization.logging import job_log_template

        return job_log_template(self._hydra)

    @functools.cached_property
    def values(self) -> dict | None:
        """The task config as plain values (enums kept), or None when it holds an interpolation or a missing value:
        then a job's other values may depend on the ones it sets."""
        try:
            values = OmegaConf.to_container(self._shape, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue:
            return None
        return values if values == OmegaConf.to_container(self._shape, resolve=False) else None

    def plain(self, task: DictConfig, keys: list[str]) -> dict | None:
        """A job's values (its config ``task``, derived from this base by setting ``keys``) as plain nested dicts
        (resolved, enums kept; the base's shared where the job's keys do not lead), or None."""
        values = self.values
        if values is None:
            return None
        for key in keys:
            values = _with(values, key.split("."), OmegaConf.select(task, key))
        return values

    def view(self, task: DictConfig, keys: list[str]) -> PlainView | None:
        """``plain`` as a ``PlainView``, or None."""
        values = self.plain(task, keys)
        return PlainView(values) if values is not None else None

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a base lives as long as its sweep's composer
    def templates(self, keys: tuple[str, ...], lines: int) -> dict[str, str]:
        """The .hydra files of this base's jobs that set ``keys`` and have ``lines`` task overrides, dumped once with
        placeholder k where value k goes: the keys' values, then each override line, then PER_JOB's other fields."""
        task, hydra = _container(self._shape), _container(DictConfig({"hydra": self._hydra}))
        slots = iter(range(len(keys) + lines + len(HydraFiles.PER_JOB) - 1))
        for key in keys:
            task = _with(task, key.split("."), _placeholder(next(slots)))
        overrides = [_placeholder(next(slots)) for _ in range(lines)]
        hydra = _with(hydra, ["hydra", "overrides", "task"], overrides)
        for key in HydraFiles.PER_JOB[1:]:
            hydra = _with(hydra, ["hydra", *key.split(".")], _placeholder(next(slots)))
        return {"config.yaml": _dump(task), "hydra.yaml": _dump(hydra), "overrides.yaml": _dump(overrides)}

    def task(self) -> DictConfig:
        return pickle.loads(self._task)


_NODE_INTERPOLATION = re.compile(r"\$\{(\w[\w.]*)\}")  # ${hydra.job.num}: a node's value, no resolver, nothing nested


def substituted(template: Any, values: dict[str, str]) -> str | None:
    """A string as OmegaConf resolves it, when each of its interpolations names a node whose value is in ``values``
    (a job's override_dirname, num, output dir, ...): put in without resolving the tree (a resolution took 0.1 ms,
    several a job in a sweep of thousands). None for anything else: a resolver, a nested or escaped one, another key."""
    if not isinstance(template, str):
        return None
    keys = _NODE_INTERPOLATION.findall(template)
    if "${" in _NODE_INTERPOLATION.sub("", template) or any(key not in values for key in keys):
        return None
    return _NODE_INTERPOLATION.sub(lambda m: values[m[1]], template)


def task_config(config: DictConfig) -> DictConfig:
    """config without its hydra node, as hydra.core.utils.run_job makes the task's config."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _apply(config: DictConfig, values: list[Override]) -> DictConfig:
    ConfigLoaderImpl._apply_overrides_to_config(values, config)
    return config


# OmegaConf.to_yaml's dumper (its representer, which quotes strings that would load as bools or numbers) on
# libyaml's emitter when PyYAML has it: the same text, about 4× faster, for the three .hydra files of every job.
_Dumper = get_omega_conf_dumper()
if yaml.__with_libyaml__:

    class _Dumper(yaml.CDumper):  # type: ignore[no-redef]
        pass

    _Dumper.add_representer(str, get_omega_conf_dumper().str_representer)


def _container(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def _dump(container: Any) -> str:
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=_Dumper)


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    """``OmegaConf.to_yaml(cfg)``: the same container, dumped with the same options."""
    return _dump(_container(cfg))


class HydraFiles:
    """A job's ``.hydra/{config,hydra,overrides}.yaml``, the bytes Hydra's ``_save_config`` writes, without converting
    and dumping an OmegaConf tree per job (90% of a job's launcher time in a 1,024-λ sweep, 6 ms a job, went there).

    Jobs of one base differ from it only in the values their overrides set and in the hydra fields derived per
    job (its overrides, ``override_dirname``, id, num, output dir). So each base's files are dumped once, with a
    placeholder where those values go (``Base.templates``), and each job's files are the templates with its values'
    YAML put in. A value whose YAML could wrap or span lines (a string with a space or a line break) has its job's
    files dumped whole.
    """

    # What ``SweepComposer.derive`` and the launcher set in a job's hydra node; the rest is its base's.
    PER_JOB = ("overrides.task", "job.override_dirname", "job.id", "job.num", "runtime.output_dir")

    @staticmethod
    def texts(task: DictConfig, base: Base, keys: list[str], per_job: list, config: Callable[[], DictConfig]) -> dict[str, str]:
        """File name -> text, for a job composed or derived from ``base`` by setting ``keys`` (``compose_job``), with
        ``per_job`` the values of its PER_JOB fields; ``config()`` gives its full config, for a job whose values
        cannot go into the templates."""
        try:
            lines, *rest = per_job
            scalars = [_scalar(v) for v in [*(_leaf(task, key) for key in keys), *lines, *rest]]
            if None not in scalars:
                templates = base.templates(tuple(keys), len(lines))
                return {name: _PLACEHOLDER.sub(lambda m: scalars[int(m[1])], text) for name, text in templates.items()}
        except (KeyError, TypeError, AttributeError):  # a key the base's containers lack as a path of dicts
            pass
        return HydraFiles.dumped(config(), task)

    @staticmethod
    def dumped(config: DictConfig, task: DictConfig) -> dict[str, str]:
        """The job's files, each dumped from its own tree."""
        hydra_view = DictConfig({"hydra": config.hydra})
        return {"config.yaml": to_yaml(task), "hydra.yaml": to_yaml(hydra_view), "overrides.yaml": to_yaml(config.hydra.overrides.task)}

    @staticmethod
    def write(texts: dict[str, str], output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (output_dir / name).write_text(text, encoding="utf-8")


_PLACEHOLDER = re.compile(r"zqslot(\d+)zq")  # a plain YAML scalar that no config holds


def _placeholder(k: int) -> str:
    return f"zqslot{k}zq"


def _scalar(value: Any) -> str | None:
    """value's YAML as a plain or quoted scalar on one line, or None when its place in a file could change it."""
    if isinstance(value, (list, dict)) or (isinstance(value, str) and (" " in value or "\n" in value or _PLACEHOLDER.search(value))):
        return None
    text = _dump([value])  # "- <scalar>\n"
    return text[2:-1] if text.count("\n") == 1 else None


def _leaf(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key as ``to_container(resolve=False, enum_to_str=True)`` gives it (or a container)."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_resolution_failure=False) if parent_key else cfg
    node = parent._get_node(name)
    if isinstance(node, Container):
        return _container(node)
    value = node._value()
    return value.name if isinstance(value, Enum) else value


def _with(container: dict, path: list[str], value: Any) -> dict:
    """container with path set to value: the dicts along the path copied, the rest shared."""
    head, *rest = path
    return {**container, head: _with(container[head], rest, value) if rest else value}


class PlainView:
    """Attribute and item access to plain nested dicts, as checks read a DictConfig: validating a job on its
    DictConfig (hundreds of node lookups) took longer than its share of training in a 1,024-λ sweep."""

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return PlainView(value) if isinstance(value, dict) else value

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._data else default
