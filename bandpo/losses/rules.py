"""Bounds rules: old_logp -> per-token ratio interval (lower, upper), each rule carrying its own settings.

For a token with old probability p = exp(old_logp), every policy loss here clips the ratio
r = π_θ/π_old to [lower, upper] (see :mod:`bandpo.losses.policy`). The rules:

* :class:`Clip` ``(eps_low, eps_high)``: [1 - ε_low, 1 + ε_high]; PPO/GRPO 0.2/0.2 (arXiv 1707.06347),
  Clip-Higher/DAPO 0.2/0.28 (arXiv 2503.14476).
* :class:`DCPO` ``(eps_low, eps_high, r_max)``: DCPO's dynamic adaptive clipping (arXiv 2509.02333), q = p:
  lower = ½ + ½·sqrt(max(1 - 4ε_low/q, 0)), upper = min(½ + ½·sqrt(1 + 4ε_high/q), r_max).
* :class:`Band` ``(divergence, delta)``: BandPO's Band_{f,δ}(p) (arXiv 2603.04918): the ratios r ∈ [0, 1/p]
  with g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p)) <= δ, from :func:`bandpo.band`. ``delta`` may be a
  number, a :class:`~bandpo.losses.schedules.Schedule` or any callable step -> float.

Each rule is a frozen dataclass validated on construction, called as ``rule(old_logp, step=None)`` and
returning (lower, upper) without gradient, shaped and typed like ``old_logp`` (B, T) (any shape works).
A user rule is any object with that call signature (a dataclass if it has settings).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

import torch
from torch import Tensor

from ..operator.bands import band
from ..operator.divergences import Divergence, get_divergence
from .schedules import Schedule, resolve_setting

__all__ = ["Band", "BoundsRule", "Clip", "DCPO"]


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class BoundsRule(Protocol):
    """old_logp (any shape) -> (lower, upper) shaped and typed like it, 0 <= lower <= 1 <= upper, no grad."""

    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        ...


def _check_eps_low(x) -> None:
    if not (_is_real(x) and 0 <= x <= 1):
        raise ValueError(f"eps_low must be a number in [0, 1] (lower = 1 - eps_low >= 0), got {x!r}")


def _check_eps_high(x) -> None:
    if not (_is_real(x) and math.isfinite(x) and x >= 0):
        raise ValueError(f"eps_high must be a finite number >= 0, got {x!r}")


@dataclass(frozen=True)
class Clip:
    """Fixed ratio interval [1 - ε_low, 1 + ε_high] (PPO/GRPO 0.2/0.2; Clip-Higher/DAPO 0.2/0.28, arXiv 2503.14476)."""

    eps_low: float = 0.2
    """ε_low in [0, 1]: lower = 1 - ε_low."""
    eps_high: float = 0.2
    """ε_high >= 0: upper = 1 + ε_high."""

    def __post_init__(self) -> None:
        _check_eps_low(self.eps_low)
        _check_eps_high(self.eps_high)

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        return torch.full_like(old_logp, 1 - self.eps_low), torch.full_like(old_logp, 1 + self.eps_high)


@dataclass(frozen=True)
class DCPO:
    """DCPO's dynamic adaptive clipping (arXiv 2509.02333), q = p = exp(old_logp):

        upper = min(½ + ½·sqrt(1 + 4 ε_high / q), r_max),   lower = ½ + ½·sqrt(max(1 - 4 ε_low / q, 0)).

    E.g. with 0.16/0.2: p = 0.08 gives [0.5, (1 + √11)/2 = 2.158], p = 1 gives [0.8, (1 + √1.8)/2 = 1.1708].
    Computed in float64 with 4ε/q = exp(log 4ε - old_logp), which overflows to inf (upper -> r_max,
    lower -> ½) rather than dividing by an underflowed q.
    """

    eps_low: float = 0.16
    """ε_low in [0, 1]."""
    eps_high: float = 0.2
    """ε_high >= 0."""
    r_max: float = 10.0
    """DCPO's own cap on the upper bound (>= 1)."""

    def __post_init__(self) -> None:
        _check_eps_low(self.eps_low)
        _check_eps_high(self.eps_high)
        if not (_is_real(self.r_max) and math.isfinite(self.r_max) and self.r_max >= 1):
            raise ValueError(f"r_max must be a finite number >= 1 (e.g. 10), got {self.r_max!r}")

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        logp = old_logp.to(torch.float64).clamp(max=0.0)

        def four_eps_over_q(eps: float) -> Tensor:
            return torch.exp((math.log(4 * eps) if eps > 0 else -math.inf) - logp)

        upper = (0.5 + 0.5 * torch.sqrt(1 + four_eps_over_q(self.eps_high))).clamp(max=float(self.r_max))
        lower = 0.5 + 0.5 * torch.sqrt((1 - four_eps_over_q(self.eps_low)).clamp(min=0))
        return lower.to(old_logp.dtype), upper.to(old_logp.dtype)


def _check_delta_value(x) -> None:
    if not (_is_real(x) and math.isfinite(x) and x > 0):
        raise ValueError(f"delta must be a finite number > 0, got {x!r}")


@dataclass(frozen=True)
class Band:
    """BandPO's Band_{f,δ}(p) = {r ∈ [0, 1/p] : p f(r) + (1-p) f((1-pr)/(1-p)) <= δ} via :func:`bandpo.band`
    (arXiv 2603.04918; the paper trains with KL and δ = 0.05)."""

    divergence: "Union[str, Divergence]" = "kl"
    """f-divergence: a name from :func:`bandpo.list_divergences` or a :class:`bandpo.Divergence`."""
    delta: "Union[float, Schedule, Callable[[int], float]]" = 0.05
    """Radius δ > 0: a number, a schedule, or a callable step -> δ (then the call needs ``step=``)."""

    def __post_init__(self) -> None:
        get_divergence(self.divergence)  # ValueError listing the known names
        if _is_real(self.delta):
            _check_delta_value(self.delta)
        elif not callable(self.delta):
            raise ValueError(f"delta must be a finite number > 0, a Schedule or a callable step -> delta, got {self.delta!r}")

    def delta_at(self, step: Optional[int] = None) -> float:
        """δ at ``step`` (a fixed number needs no step)."""
        value = resolve_setting("delta", self.delta, step)
        _check_delta_value(value)
        return value

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        # The loss validates its inputs once; the band's own host-syncing check is skipped.
        return band(old_logp, self.delta_at(step), self.divergence, validate=False)
