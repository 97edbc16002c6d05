"""A sweep's job configs, each as ``load_sweep_config`` composes it, composing once per structure.

Composing a config (defaults list, config files, merges) takes tens of ms, more than a small job's training.
Jobs whose overrides differ only in the values of plain keys (``reg.lambd=0.5`` against ``reg.lambd=1``, not
config groups, not hydra's) share one structure: the first such job is composed, the others are derived
from its config by applying their value overrides the way Hydra applies them after composing
(``ConfigLoaderImpl._apply_overrides_to_config``) and rebuilding what Hydra derives from the overrides
(``hydra.overrides.task``, ``hydra.job.override_dirname``). The result is the config Hydra would compose.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, DictConfig, OmegaConf, open_dict, read_write


class SweepComposer:
    """``compose(overrides)`` gives what ``config_loader.load_sweep_config(master, overrides)`` gives (and its task
    config); ``task(overrides)`` the task config alone. Each call returns fresh configs."""

    def __init__(self, config_loader: ConfigLoaderImpl, master: DictConfig) -> None:
        self.loader, self.master = config_loader, master
        self.parser = OverridesParser.create()
        self.bases: dict[tuple, tuple[DictConfig, DictConfig]] = {}

    def is_value(self, o: Override) -> bool:
        """A plain ``key=value`` that Hydra applies to the composed config (not a group choice, not hydra's)."""
        return (
            o.type == OverrideType.CHANGE
            and o.package is None
            and not o.is_hydra_override()
            and not o.is_sweep_override()
            and not self.loader.repository.group_exists(o.key_or_group)
        )

    def compose(self, overrides: Sequence[str]) -> tuple[DictConfig, DictConfig]:
        """The job's config and its task config (derived separately: copying a task config is ~6× cheaper)."""
        parsed, values, (config, task), derived = self._base(overrides)
        if not derived:
            return copy.deepcopy(config), task_config(config)
        return self.derive(config, parsed, values), _apply(copy.deepcopy(task), values)

    def task(self, overrides: Sequence[str]) -> DictConfig:
        """The job's task config alone, as the sweeper's pre-flight check needs it."""
        _, values, (config, task), derived = self._base(overrides)
        return _apply(copy.deepcopy(task), values) if derived else task_config(config)

    def _base(self, overrides: Sequence[str]) -> tuple[list[Override], list[Override], tuple[DictConfig, DictConfig], bool]:
        """The parsed overrides, the value overrides, a (config, task config) pair, and whether the job is derived
        from that pair by applying its value overrides (else the pair is the job's own composition)."""
        parsed = self.parser.parse_overrides(list(overrides))
        is_value = [self.is_value(o) for o in parsed]
        values = [o for o, v in zip(parsed, is_value, strict=True) if v]
        keys = [o.key_or_group for o in parsed]
        structure = tuple(("value", o.key_or_group) if v else ("line", o.input_line) for o, v in zip(parsed, is_value, strict=True))
        base = self.bases.get(structure)
        if base is None or len(set(keys)) < len(keys) or not all(_is_leaf(base[1], o.key_or_group) for o in values):
            config = self.loader.load_sweep_config(self.master, list(overrides))
            composed = (config, task_config(config))
            self.bases.setdefault(structure, composed)
            return parsed, values, composed, False
        return parsed, values, base, True

    def derive(self, base: DictConfig, parsed: list[Override], values: list[Override]) -> DictConfig:
        config = _apply(copy.deepcopy(base), values)
        task = [o for o in parsed if not o.is_hydra_override()]
        dirname = config.hydra.job.config.override_dirname
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.task = [o.input_line for o in task]
            config.hydra.job.override_dirname = get_overrides_dirname(task, list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep)
        OmegaConf.copy_cache(from_config=self.master, to_config=config)
        return config


def task_config(config: DictConfig) -> DictConfig:
    """config without its hydra node, as hydra.core.utils.run_job makes the task's config."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _apply(config: DictConfig, values: list[Override]) -> DictConfig:
    ConfigLoaderImpl._apply_overrides_to_config(values, config)
    return config


def _is_leaf(config: DictConfig, key: str) -> bool:
    """Whether key names a value in config (a group's key names a container: that job is composed)."""
    node = OmegaConf.select(config, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
    return not isinstance(node, Container)
