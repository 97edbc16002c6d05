"""Hydra's basic sweeper, plus this harness's pre-flight check of every job before any trains."""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class ValidatingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.regularization_sweeper.ValidatingSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf, provider="regularization")


class ValidatingSweeper(BasicSweeper):
    """Composes each job's config and runs ``regularization.engine.preflight`` on it before launching:

    a bad value anywhere in the sweep (a negative λ in its third job, say) stops the sweep before any job trains.
    """

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from hydra_plugins.regularization_launcher.compose import SweepComposer
        from regularization.config import ConfigError
        from regularization.engine import preflight

        assert self.hydra_context is not None and self.config is not None
        if getattr(self.launcher, "preflights_every_job", False):
            return  # the launcher composes and checks every job itself, before any trains
        compose = SweepComposer(self.hydra_context.config_loader, self.config)  # composes once per structure
        for overrides in batch:
            try:
                preflight(compose.task(overrides))
            except ConfigError as err:
                raise ConfigError(f"{err}\n  in the sweep's job: {' '.join(overrides)}") from None
