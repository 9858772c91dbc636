"""The Band operator: f-divergences, their log-space root solvers and tables, and ``band`` / ``log_band``.

The bottom layer of bandpo: it imports nothing from the rest of the package.
"""

from .bands import band, log_band, prepare
from .divergences import Divergence, get_divergence, list_divergences, register_divergence, unregister_divergence

__all__ = ["Divergence", "band", "get_divergence", "list_divergences", "log_band", "prepare", "register_divergence", "unregister_divergence"]
