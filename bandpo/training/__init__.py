"""The training loop: typed configs and presets, rollouts, tasks, the Lightning module and the CLI.

``import bandpo.training`` is light (configs only); Lightning and transformers load when the module or the CLI
is used. Run it with ``python -m bandpo.training --preset tiny-cpu --out runs/tiny``.
"""

from . import rare_strategy as _rare_strategy  # noqa: F401  (registers the rare_strategy task and its reward)
from .config import TrainConfig, load_config

__all__ = ["BandPOModule", "TrainConfig", "load_config"]


def __getattr__(name: str):
    if name == "BandPOModule":
        from .module import BandPOModule

        return BandPOModule
    raise AttributeError(f"module 'bandpo.training' has no attribute {name!r}")
