"""Hydra's basic sweeper, plus this harness's pre-flight check of every job before any trains."""

import copy
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
# Keys that name a job whenever they are set, swept or not: they change every number the run gives.
ALWAYS_NAMED = ("trainer.precision", "trainer.compile", "trainer.matmul_precision")


@dataclass
class ValidatingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.regularization_sweeper.ValidatingSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf, provider="regularization")
# hydra/sweeper=optuna (hydra-optuna-sweeper, the `launchers` extra) with its trials averaged over optimize_seeds seeds.
# A plain node extending the plugin's config: a dataclass subclass of its OptunaSweeperConf would hold the plugin's
# classes from an import before Hydra's plugin scan executes the plugin's module again, two SamplerConfig classes
# that pickle (the vectorized launcher's config copies) refuses.
ConfigStore.instance().store(
    group="hydra/sweeper",
    name="optuna_seeds",
    node={"defaults": ["optuna", "_self_"], "_target_": "hydra_plugins.regularization_sweeper.optuna_seeds.SeedAveragingOptunaSweeper"},
    provider="regularization",
)


def name_jobs_by_swept_keys(config: DictConfig) -> None:
    """Name a sweep's jobs by the keys it varies: a key given one value on the command line (``trainer.epochs=5``,
    ``+experiment=dropout``) joins override_dirname's exclude_keys, so the dirs, summary rows, TensorBoard runs and
    HParams trials all read ``reg.lambd=3,seed=1``. The keys that vary: the command line's sweeps, a search's params,
    and the seed when a search averages over seeds. A sweep that varies nothing keeps its full names, and the
    ``ALWAYS_NAMED`` keys stay in the names when set.

    Set as a hydra override of the master config: every launcher composes its jobs with those (joblib's and
    submitit's workers too), and each job's .hydra/hydra.yaml records it for summarize.py.
    """
    # unresolved: a tie's ${model.hidden1} would otherwise resolve against the master config
    task = OverridesParser.create().parse_overrides(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    swept = {o.key_or_group for o in task if o.is_sweep_override()} | set(config.hydra.sweeper.get("params") or {})
    if config.get("optimize_seeds", 1) != 1:
        swept.add("seed")
    swept |= {o.key_or_group for o in task if tied_to(o) in swept}  # model.hidden2=${model.hidden1}: varies with it
    constant = [o.key_or_group for o in task if o.key_or_group not in swept | set(ALWAYS_NAMED) and not o.is_delete()]
    excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
    if not swept or not set(constant) - set(excluded):
        return
    excluded += sorted(set(constant) - set(excluded))
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.job.config.override_dirname.exclude_keys = excluded
        config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{','.join(excluded)}]")


def tied_to(override: Override) -> str | None:
    """The key an override ties its key to (``model.hidden2=${model.hidden1}``: model.hidden1), else None."""
    value = override.value() if not override.is_sweep_override() else None
    match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    return match[1] if match else None


def untie(jobs: list[list[str]]) -> list[list[str]]:
    r"""Each job's tied keys set to the value of the key they are tied to in that job: ``model.hidden2=${model.hidden1}``
    with ``model.hidden1=64`` becomes ``model.hidden2=64``, the same config, so the job's name, its overrides.yaml,
    its HParams row and the launcher's log line show the value (Hydra would write ``model.hidden2=$\{model.hidden1\}``)."""
    from regularization.logging import parse_override

    if not any("$" in line for job in jobs for line in job):  # a tie reaches here escaped: `$\{model.hidden1\}`
        return jobs  # nothing tied (most sweeps): parsing a 1,024-job sweep's lines took a second
    untied = []
    for job in jobs:
        parsed = [parse_override(line) for line in job]
        values = {o.key_or_group: o.get_value_element_as_str() for o in parsed if not o.is_delete()}
        untied.append(
            [f"{o.get_key_element()}={values[key]}" if (key := tied_to(o)) in values else line for o, line in zip(parsed, job, strict=True)]
        )
    return untied


class SweepDirResolvedOnce(Callback):
    """Resolves ``hydra.sweep.dir`` once, in the sweep's process, and hands every job that value.

    The default dir ends in ``${now:...}_${pid:}``. Hydra composes each job's config again from the master config's
    hydra overrides (``load_sweep_config``), in the process that runs the job: joblib's workers and submitit's jobs
    would each resolve their own ``${pid:}`` and scatter the sweep over several dirs. Pinned as a hydra override of
    the master config, the resolved dir reaches every sweeper (basic, validating, Optuna) and every launcher, and each
    job's .hydra/hydra.yaml records where it wrote. The sweep's own pid still keeps two sweeps apart.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not OmegaConf.is_interpolation(config.hydra.sweep, "dir"):
            return  # a plain path: every process reads the same
        resolved = str(config.hydra.sweep.dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = resolved
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(resolved)}")


def quoted(value: str) -> str:
    """value as a quoted override that Hydra's parser and OmegaConf read back unchanged: a quote and ``${`` (an
    interpolation) escaped, and the backslashes before them and at the end doubled (elsewhere a backslash is itself)."""
    return "'" + re.sub(r"(\\*)('|\$\{|$)", lambda m: 2 * m[1] + ("\\" if m[2] else "") + m[2], value) + "'"


# What Hydra, the launchers and submitit write before a job trains: the sweep's config, each job's .hydra/, the
# submission files. A sweep dir holding nothing else holds no result.
BOOKKEEPING = ("multirun.yaml", ".hydra", ".submitit")


@contextmanager
def removed_unless_trained(config: DictConfig) -> Iterator[None]:
    """A sweep stopped by a ConfigError before any job trained (a bad value in its third job, sbatch failing to
    submit) leaves no sweep dir behind, unless the dir was there before it started."""
    from regularization.config import ConfigError

    sweep_dir = Path(str(config.hydra.sweep.dir))
    new = not sweep_dir.exists()
    try:
        yield
    except ConfigError:
        results = [p for p in sweep_dir.rglob("*") if p.is_file() and not set(p.relative_to(sweep_dir).parts) & set(BOOKKEEPING)]
        if new and not results:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise


class ComposedSweepLoader:
    """The config loader, with ``load_sweep_config(master, overrides)`` answered by the sweep's SweepComposer,
    which gives the config Hydra would compose, composing once per structure (a λ sweep: not at all)."""

    def __init__(self, loader: Any, composer: Any) -> None:
        self.loader, self.composer = loader, composer

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if master_config is not self.composer.master:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        return self.composer.compose(sweep_overrides)[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)  # everything else is the loader's


class ValidatingSweeper(BasicSweeper):
    """Composes each job's config and runs ``regularization.engine.preflight`` on it before launching:

    a bad value anywhere in the sweep (a negative λ in its third job, say) stops the sweep before any job trains,
    and the sweep dir it would have written into is removed again. The basic launcher then takes the configs
    from the same SweepComposer instead of composing each job again.
    """

    def sweep(self, arguments: list[str]) -> Any:
        from regularization.config import ConfigError

        assert self.config is not None
        if self.config.get("optimize_seeds", 1) != 1:
            message = "averages a search's trials over seeds (hparams_search=..., hydra/sweeper=optuna_seeds); a grid sweeps seed=0,1,2"
            raise ConfigError(f"Invalid config: optimize_seeds: {message}")
        with removed_unless_trained(self.config):
            return super().sweep(arguments)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        return untie([list(job) for job in super().get_job_batch()])

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.regularization_launcher.compose import SweepComposer

        name_jobs_by_swept_keys(config)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if getattr(self.launcher, "preflights_every_job", False):
            return  # the launcher composes and checks every job itself, before any trains
        self.composer = SweepComposer(hydra_context.config_loader, config)
        if type(self.launcher) is BasicLauncher:  # joblib's and submitit's compose in their workers
            loader = ComposedSweepLoader(hydra_context.config_loader, self.composer)
            self.launcher.hydra_context = replace(hydra_context, config_loader=loader)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from regularization.config import ConfigError
        from regularization.engine import preflight

        if getattr(self.launcher, "preflights_every_job", False):
            return
        for overrides in batch:
            try:
                preflight(self.composer.task(overrides))
            except ConfigError as err:
                raise ConfigError(f"{err}\n  in the sweep's job: {' '.join(overrides)}") from None


class PreflightRun(Callback):
    """A single run's ``preflight`` before Hydra makes its run dir (the validating sweeper's check, for one job):
    a bad value stops it with the message alone, exit status 1, and leaves no dir with an empty log behind.

    Hydra turns a callback's exception into a warning and puts "Error executing job with overrides" in front of a
    job's, so the message leaves as SystemExit's. With HYDRA_FULL_ERROR=1 the job itself raises it, with its traceback.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from regularization.config import ConfigError
        from regularization.engine import check_job

        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the job's keys, as run_job sets it
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        try:
            check_job(task, multirun=False)
        except ConfigError as err:
            raise SystemExit(str(err)) from None
