"""bandpo: BandPO's probability-aware clipping bounds, certified, and the losses and trainer around them."""

from .operator import band, log_band, prepare
from .operator import Divergence, get_divergence, list_divergences, register_divergence, unregister_divergence

__all__ = [
    "Divergence",
    "band",
    "get_divergence",
    "list_divergences",
    "log_band",
    "prepare",
    "register_divergence",
    "unregister_divergence",
]
__version__ = "0.1.0"

from .losses import (
    LossConfig,
    Method,
    aggregate,
    aggregation_denominator,
    bounds,
    get_method,
    list_aggregations,
    list_methods,
    policy_loss,
    register_method,
    unregister_method,
)

__all__ += [
    "LossConfig",
    "Method",
    "aggregate",
    "aggregation_denominator",
    "bounds",
    "get_method",
    "list_aggregations",
    "list_methods",
    "policy_loss",
    "register_method",
    "unregister_method",
]

# Training (bandpo.training.config is light; the Lightning module loads Lightning and transformers on first access).
from .training.config import TrainConfig, load_config

__all__ += ["TrainConfig", "load_config"]


def __getattr__(name: str):
    if name == "BandPOModule":
        from .training.module import BandPOModule

        return BandPOModule
    raise AttributeError(f"module 'bandpo' has no attribute {name!r}")
