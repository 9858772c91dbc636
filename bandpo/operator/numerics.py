"""Small numerically careful elementwise helpers (float64 in, float64 out)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)
# Smallest positive normal float64 and its log: masses below it are treated as this (a clamp that changes
# results by < 1e-300 relative; see the solvers).
LOG_TINY = math.log(2.2250738585072014e-308)


def softplus(z: Tensor) -> Tensor:
    """log(1 + e^z), accurate for every z (torch's softplus switches to z above 20, losing ~1e-9)."""
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0 (Mächler 2012): expm1 near 0, log1p far from it. -inf at x = 0."""
    return torch.where(x > -LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
