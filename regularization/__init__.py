"""A Hydra-configured harness for studying overfitting and the regularizers that fight it."""

from regularization.config import register_configs
from regularization.engine import run

register_configs()

__all__ = ["run"]
