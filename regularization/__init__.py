"""A Hydra-configured harness for studying overfitting and the regularizers that fight it."""

from regularization.gpu import use_deterministic_workspace

use_deterministic_workspace()  # before any CUDA work: cuBLAS reads it once per process

from regularization.config import register_configs  # noqa: E402
from regularization.engine import run  # noqa: E402

register_configs()

__all__ = ["run"]
