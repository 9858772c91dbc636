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
* :class:`LogClip` ``(eps_low, eps_high)``: [e^{-ε_low}, e^{ε_high}], a clip of log r to [-ε_low, ε_high] (GMPO,
  arXiv 2507.20673, clips the log-ratio; its paper's range is (e^{-0.4}, e^{0.4})).
* :class:`Unbounded` ``()``: [0, inf), no interval: the rule of methods whose surrogate has no ratio interval
  (SAPO's soft gate, GPG, KL-Cov, VESPO; see :mod:`bandpo.losses.surrogates`).
* :class:`Union` ``(a, b)``: the union of two intervals, [min(lower_a, lower_b), max(upper_a, upper_b)] (BandPO's
  "relax" ablation: the band united with Clip-Higher's [0.8, 1.28]).
* :class:`Split` ``(lower, upper)``: the lower bound of one rule with the upper bound of another (the one-sided
  band ablations: e.g. the band's upper bound with GRPO's fixed lower bound 0.8).
* :class:`ByProbability` ``(rare, common, rare_p)``: one rule's interval for tokens whose old probability is below
  ``rare_p``, another's for the rest (e.g. the band only for rare tokens, GRPO's clip elsewhere).

Settings. A rule's settings are its dataclass fields, or, for a composite rule (:class:`Union`, :class:`Split`),
the settings of its parts, flattened (:func:`rule_settings`; :func:`replace_settings` applies overrides). A
:class:`Split` exposes only the settings that act on the side it takes from each part (a rule may say which of
its settings act on which side in ``SIDE_SETTINGS``: Clip's ``eps_low`` is lower-only, ``eps_high`` upper-only).
A name two parts share (e.g. ``delta`` of ``Union(Band("kl"), Band("tv"))``) is set on both by an override and
reported with the first part's value.

Each rule is a frozen dataclass validated on construction, called as ``rule(old_logp, step=None)`` and
returning (lower, upper) without gradient, shaped and typed like ``old_logp`` (B, T) (any shape works).
A user rule is any object with that call signature (a dataclass if it has settings).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol
from typing import Union as _Union

import torch
from torch import Tensor

from ..operator.bands import band
from ..operator.divergences import Divergence, get_divergence
from .schedules import Schedule, resolve_setting

__all__ = [
    "Band", "BoundsRule", "ByProbability", "Clip", "DCPO", "LogClip", "Split", "Unbounded", "Union", "replace_settings", "rule_settings",
]


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

    SIDE_SETTINGS = {"lower": ("eps_low",), "upper": ("eps_high",)}

    def __post_init__(self) -> None:
        _check_eps_low(self.eps_low)
        _check_eps_high(self.eps_high)

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        return torch.full_like(old_logp, 1 - self.eps_low), torch.full_like(old_logp, 1 + self.eps_high)


@dataclass(frozen=True)
class LogClip:
    """Fixed interval on log r: [e^{-ε_low}, e^{ε_high}] (GMPO, arXiv 2507.20673, clips log r to [-ε_low, ε_high];
    the paper trains with ε = 0.4; verl's ``geo_mean`` loss reads ``clip_ratio_low``/``clip_ratio_high`` this way)."""

    eps_low: float = 0.4
    """ε_low >= 0: lower = e^{-ε_low} (inf: lower = 0)."""
    eps_high: float = 0.4
    """ε_high >= 0: upper = e^{ε_high} (finite)."""

    SIDE_SETTINGS = {"lower": ("eps_low",), "upper": ("eps_high",)}

    def __post_init__(self) -> None:
        if not (_is_real(self.eps_low) and self.eps_low >= 0):
            raise ValueError(f"eps_low must be a number >= 0 (lower = exp(-eps_low)), got {self.eps_low!r}")
        if not (_is_real(self.eps_high) and math.isfinite(self.eps_high) and 0 <= self.eps_high <= 20):
            raise ValueError(f"eps_high must be a number in [0, 20] (upper = exp(eps_high)), got {self.eps_high!r}")

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        return torch.full_like(old_logp, math.exp(-self.eps_low)), torch.full_like(old_logp, math.exp(self.eps_high))


@dataclass(frozen=True)
class Unbounded:
    """No interval: [0, inf) (capped at e^20 by the loss). The bounds rule of a method whose surrogate clips
    nothing (a soft gate or weight: SAPO, VESPO; no ratio at all: GPG; a penalty: KL-Cov); it has no settings."""

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        return torch.zeros_like(old_logp), torch.full_like(old_logp, math.inf)


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

    SIDE_SETTINGS = {"lower": ("eps_low",), "upper": ("eps_high", "r_max")}

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

    divergence: "_Union[str, Divergence]" = "kl"
    """f-divergence: a name from :func:`bandpo.list_divergences` or a :class:`bandpo.Divergence`."""
    delta: "_Union[float, Schedule, Callable[[int], float]]" = 0.05
    """Radius δ > 0: a number, a schedule, or a callable step -> δ (then the call needs ``step=``)."""

    def __post_init__(self) -> None:
        get_divergence(self.divergence)  # ValueError listing the known names
        if _is_real(self.delta):
            _check_delta_value(self.delta)
        elif isinstance(self.delta, Schedule):  # checked over every step now, not at the step that leaves the range
            lowest, _ = self.delta.value_range()
            if not (math.isfinite(lowest) and lowest > 0):
                raise ValueError(f"delta must be > 0 at every step, but the schedule {self.delta!r} reaches "
                                 f"{lowest!r}; give a schedule whose values stay > 0 (e.g. its end)")
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


# ----------------------------------------------------------------------------------------------------------
# Composite rules and settings
# ----------------------------------------------------------------------------------------------------------


def _check_rule(name: str, rule) -> None:
    if not callable(rule):
        raise ValueError(f"{name} must be a bounds rule (old_logp, step=None) -> (lower, upper), e.g. Band('kl', 0.05), got {rule!r}")


def _own_settings(rule, side: Optional[str] = None) -> "dict[str, Any]":
    """The settings of ``rule`` that act on ``side`` ('lower', 'upper' or None: both)."""
    if hasattr(rule, "settings") and callable(rule.settings):
        return dict(rule.settings(side))
    if not dataclasses.is_dataclass(rule):
        return {}
    names = [f.name for f in dataclasses.fields(rule)]
    per_side = getattr(rule, "SIDE_SETTINGS", None)
    if side is not None and per_side is not None:
        names = [n for n in names if n in per_side.get(side, ())]
    return {n: getattr(rule, n) for n in names}


def rule_settings(rule) -> "dict[str, Any]":
    """The settings of a bounds rule, by name: a plain rule's dataclass fields, a composite rule's parts' settings
    (flattened; a name shared by two parts reports the first part's value). A rule without fields has none."""
    return _own_settings(rule)


def _replace_own(rule, side: Optional[str], settings: "dict[str, Any]"):
    """``rule`` with those of ``settings`` that act on ``side`` replaced (validated by the rule)."""
    mine = {k: v for k, v in settings.items() if k in _own_settings(rule, side)}
    if not mine:
        return rule
    if hasattr(rule, "with_settings") and callable(rule.with_settings):
        return rule.with_settings(**mine)
    return dataclasses.replace(rule, **mine)


def replace_settings(rule, **settings: Any):
    """A copy of ``rule`` with some settings replaced (each validated by the rule that owns it); a name the rule
    does not have is a ValueError naming the ones it has."""
    allowed = rule_settings(rule)
    unknown = [k for k in settings if k not in allowed]
    if unknown:
        raise ValueError(
            f"bounds rule {type(rule).__name__} has no setting {', '.join(map(repr, unknown))}; "
            f"its settings: {', '.join(allowed) or '(none)'}"
        )
    return _replace_own(rule, None, settings)


class _Composite:
    """Settings of a rule built from parts: the parts' settings flattened (first part wins on a shared name)."""

    def _parts(self) -> "tuple[tuple[object, Optional[str]], ...]":  # (part, side it acts on or None)
        raise NotImplementedError

    def settings(self, side: Optional[str] = None) -> "dict[str, Any]":
        out: dict = {}
        for part, part_side in self._parts():
            if side is not None and part_side is not None and side != part_side:
                continue
            for k, v in _own_settings(part, part_side if side is None else side).items():
                out.setdefault(k, v)
        return out

    def with_settings(self, **settings: Any):
        fields = {}
        for (part, part_side), name in zip(self._parts(), self._part_names()):
            fields[name] = _replace_own(part, part_side, settings)
        return dataclasses.replace(self, **fields)


@dataclass(frozen=True)
class Union(_Composite):
    """The union of two rules' intervals: lower = min(lower_a, lower_b), upper = max(upper_a, upper_b).

    BandPO's "relax" ablation (arXiv 2603.04918's released scripts) is ``Union(Band("kl", 0.05), Clip(0.2, 0.28))``:
    the band widened to contain Clip-Higher's [0.8, 1.28]. Settings: both parts' (``divergence``, ``delta``,
    ``eps_low``, ``eps_high`` there).
    """

    a: BoundsRule = dataclasses.field(default_factory=lambda: Band("kl", 0.05))
    """First rule, e.g. ``Band("kl", 0.05)``."""
    b: BoundsRule = dataclasses.field(default_factory=lambda: Clip(0.2, 0.28))
    """Second rule, e.g. ``Clip(0.2, 0.28)``."""

    def __post_init__(self) -> None:
        _check_rule("Union's a", self.a)
        _check_rule("Union's b", self.b)

    def _parts(self):
        return ((self.a, None), (self.b, None))

    @staticmethod
    def _part_names():
        return ("a", "b")

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        lo_a, up_a = self.a(old_logp, step=step)
        lo_b, up_b = self.b(old_logp, step=step)
        return torch.minimum(lo_a, lo_b.to(lo_a.dtype)), torch.maximum(up_a, up_b.to(up_a.dtype))


@dataclass(frozen=True)
class Split(_Composite):
    """The lower bound of one rule and the upper bound of another: (lower_rule(p)[0], upper_rule(p)[1]).

    The one-sided band ablations: ``Split(lower=Clip(0.2, 0.2), upper=Band("kl", 0.05))`` (the band's upper bound
    with GRPO's fixed 0.8) and ``Split(lower=Band("kl", 0.05), upper=Clip(0.2, 0.2))`` (the band's lower bound with
    GRPO's fixed 1.2). Settings: those acting on the side taken from each part (``eps_low`` of a Clip giving the
    lower bound, ``eps_high`` of one giving the upper bound, a Band's ``divergence`` and ``delta``).
    """

    lower: BoundsRule = dataclasses.field(default_factory=lambda: Clip(0.2, 0.2))
    """Rule whose lower bound is used."""
    upper: BoundsRule = dataclasses.field(default_factory=lambda: Band("kl", 0.05))
    """Rule whose upper bound is used."""

    def __post_init__(self) -> None:
        _check_rule("Split's lower", self.lower)
        _check_rule("Split's upper", self.upper)

    def _parts(self):
        return ((self.lower, "lower"), (self.upper, "upper"))

    @staticmethod
    def _part_names():
        return ("lower", "upper")

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        lo, _ = self.lower(old_logp, step=step)
        _, up = self.upper(old_logp, step=step)
        return lo, up.to(lo.dtype)


def _check_rare_p(x) -> None:
    if not (_is_real(x) and 0 < x <= 1):
        raise ValueError(f"rare_p must be a number in (0, 1] (the old probability below which a token is rare, e.g. "
                         f"0.05), got {x!r}")


@dataclass(frozen=True)
class ByProbability(_Composite):
    """One rule for rare tokens, another for the rest, by the token's old probability p = exp(old_logp):

        (lower, upper) = rare(old_logp)   where p < rare_p,
                         common(old_logp) where p >= rare_p.

    ``Split(lower=Clip(0.2, 0.2), upper=ByProbability(Band("kl", 0.05), Clip(0.2, 0.2), 0.05))`` is the band's upper
    bound for tokens below 5 % and GRPO's [0.8, 1.2] everywhere else (the method ``band_kl_upper_rare``): the
    band's claim concerns rare tokens with positive advantage (arXiv 2603.04918), so this keeps only that part of
    it. Settings: ``rare_p`` and both parts' (``divergence``, ``delta``, ``eps_low``, ``eps_high`` there; inside a
    :class:`Split`, those acting on the side it takes). The comparison is made in log space, old_logp < log(rare_p).
    """

    rare: BoundsRule = dataclasses.field(default_factory=lambda: Band("kl", 0.05))
    """Rule of the tokens with old probability below ``rare_p``."""
    common: BoundsRule = dataclasses.field(default_factory=lambda: Clip(0.2, 0.2))
    """Rule of the other tokens."""
    rare_p: float = 0.05
    """Old-probability threshold in (0, 1]: a token is rare when p < rare_p (the trainer's rare-token metrics use
    0.05 too)."""

    def __post_init__(self) -> None:
        _check_rule("ByProbability's rare", self.rare)
        _check_rule("ByProbability's common", self.common)
        _check_rare_p(self.rare_p)

    def _parts(self):
        return ((self.rare, None), (self.common, None))

    @staticmethod
    def _part_names():
        return ("rare", "common")

    def settings(self, side: Optional[str] = None) -> "dict[str, Any]":
        return {**super().settings(side), "rare_p": self.rare_p}

    def with_settings(self, **settings: Any):
        out = super().with_settings(**{k: v for k, v in settings.items() if k != "rare_p"})
        return dataclasses.replace(out, rare_p=settings["rare_p"]) if "rare_p" in settings else out

    @torch.no_grad()
    def __call__(self, old_logp: Tensor, *, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        lo_r, up_r = self.rare(old_logp, step=step)
        lo_c, up_c = self.common(old_logp, step=step)
        is_rare = old_logp < math.log(self.rare_p)
        return (torch.where(is_rare, lo_r, lo_c.to(lo_r.dtype)), torch.where(is_rare, up_r, up_c.to(up_r.dtype)))
