"""Policy losses: the clipped surrogate with per-token bounds, the bounds methods, aggregation and metrics.

Builds on :mod:`bandpo.operator`; imports nothing from training or experiments.
"""

from .core import *  # noqa: F401,F403
from .core import __all__  # noqa: F401
