"""``hydra/sweeper=optuna_seeds`` (registered in ``__init__``): hydra-optuna-sweeper, each trial averaged over seeds.

A trial with hyperparameters θ runs seeds s₀ … s₀+n−1 (s₀ = the config's ``seed``, n = ``optimize_seeds``) and reports
    f(θ) = (1/n) Σₖ optimize_metric(θ, s₀+k)
to the study, so TPE ranks settings by their mean and not by one seed's noise. The seeds of a trial go to the launcher
in one batch: hydra/launcher=vectorized trains them as one stacked group (seed is a stackable key). With n = 1 this
is the Optuna sweeper itself. The search presets (hparams_search=...) select it.

"""

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:  # the plugin class only: it imports Optuna (1.3 s) in setup, not here, where Hydra's plugin scan would pay it
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without the `launchers` extra there is no Optuna, and hydra/sweeper=optuna_seeds cannot compose
    OptunaSweeper = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
# A trial without a value (train.py returns None for a diverged or failed job) Optuna records as failed, warning
# "Failed experiment: Return value must be float-castable. Got 'None'."; FailedTrialReport says it in our words.
OPTUNA_IMPL_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"
OPTUNA_NONE_WARNING = "Failed experiment: Return value must be float-castable. Got 'None'."


def drop_optuna_none_warning(record: logging.LogRecord) -> bool:
    return record.getMessage() != OPTUNA_NONE_WARNING


class SeedAveragingOptunaSweeper(OptunaSweeper):
    """The Optuna sweeper with its launcher wrapped: each trial runs as ``optimize_seeds`` jobs, one per seed."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.regularization_sweeper import name_jobs_by_swept_keys
        from regularization.config import ConfigError

        name_jobs_by_swept_keys(config)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        seeds = config.get("optimize_seeds", 1)
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"Invalid config: optimize_seeds: must be an integer >= 1, got {seeds!r}")
        if seeds > 1:  # its line per trial says which seeds failed
            self.sweeper.launcher = SeedAveragingLauncher(self.sweeper.launcher, range(config.seed, config.seed + seeds))
        else:
            self.sweeper.launcher = FailedTrialReport(self.sweeper.launcher, config.optimize_metric)
        logging.getLogger(OPTUNA_IMPL_LOGGER).addFilter(drop_optuna_none_warning)

    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.regularization_sweeper import removed_unless_trained

        try:
            with removed_unless_trained(self.sweeper.config):
                super().sweep(arguments)
        except ValueError as err:  # Optuna's study.best_trial, when every trial diverged or failed
            if str(err) != "No trials are completed yet.":
                raise
            log.warning("no trial completed (each diverged or failed): no best value, no optimization_results.yaml")


class FailedTrialReport(Launcher):
    """The launcher, plus one line in our words for each trial without a value (diverged or failed), which the
    study records as a failed trial before it goes on."""

    def __init__(self, launcher: Launcher, metric: str) -> None:
        self.launcher, self.metric = launcher, metric

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for ret in returns:
            if ret.status == JobStatus.COMPLETED and ret.return_value is None:
                hydra = ret.hydra_cfg.get("hydra", ret.hydra_cfg)  # run_job's is the hydra node, the vectorized launcher's holds it
                name = hydra.job.override_dirname or " ".join(ret.overrides)
                why = self.why(Path(hydra.runtime.output_dir))
                log.warning("trial %s: %s; Optuna records a failed trial, the search goes on", name, why)
        return returns

    def why(self, job_dir: Path) -> str:
        """What the job's metrics.json says of its end."""
        try:
            result = json.loads((job_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return f"no {self.metric}"
        if result.get("status") == "diverged":
            return f"diverged at epoch {result['epochs']} (its loss stopped being finite), no {self.metric}"
        return f"{result.get('status')}, no {self.metric}" + (f" ({result['error']})" if result.get("error") else "")


class SeedAveragingLauncher(Launcher):
    """Launches each trial's overrides once per seed, in one batch, and returns one JobReturn per trial: the mean.

    Job numbers: trial t's seeds are jobs t·n … t·n+n−1, so the sweeper's trial count keeps them apart.
    """

    def __init__(self, launcher: Launcher, seeds: range) -> None:
        self.launcher, self.seeds = launcher, seeds

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        n = len(self.seeds)
        jobs = [[*(o for o in trial if not o.startswith("seed=")), f"seed={s}"] for trial in job_overrides for s in self.seeds]
        returns = self.launcher.launch(jobs, initial_job_idx=initial_job_idx * n)
        return [self.mean(job_overrides[t], returns[t * n : (t + 1) * n]) for t in range(len(job_overrides))]

    def mean(self, trial: Sequence[str], returns: Sequence[JobReturn]) -> JobReturn:
        """The trial's JobReturn: its first seed's, with the mean over seeds as its value; a failed seed fails the trial."""
        failed = [r for r in returns if r.status != JobStatus.COMPLETED]
        if failed:
            return failed[0]
        values = [r.return_value for r in returns]
        finite = all(v is not None and math.isfinite(v) for v in values)
        mean = sum(values) / len(values) if finite else None  # None: Optuna records a failed trial (train.py's convention)
        shown = ", ".join("failed" if v is None else f"{v:.6g}" for v in values)
        shown_mean = "failed" if mean is None else f"{mean:.6g}"
        log.info("trial %s: mean %s over seeds %d..%d (%s)", " ".join(trial), shown_mean, self.seeds[0], self.seeds[-1], shown)
        ret = JobReturn(overrides=list(trial), cfg=returns[0].cfg, hydra_cfg=returns[0].hydra_cfg, working_dir=returns[0].working_dir)
        ret.task_name, ret.status, ret.return_value = returns[0].task_name, JobStatus.COMPLETED, mean
        return ret
