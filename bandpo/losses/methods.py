"""The method table: one id per training method, used everywhere (loss API, CLI, YAML, bandit, reproduction
runner, figures, tests).

A :class:`Method` is a bounds rule with its settings (:mod:`bandpo.losses.rules`), an optional cap
``max_ratio`` on the upper bound, the surrogate it trains with, a plot label and a one-line description:

=====================  ===========================================================  ================================
id                     bounds                                                       reference
=====================  ===========================================================  ================================
``clip``               Clip(0.2, 0.2), no cap                                       PPO/GRPO, arXiv 1707.06347
``clip_higher``        Clip(0.2, 0.28), no cap                                      Clip-Higher/DAPO, arXiv 2503.14476
``dcpo``               DCPO(0.16, 0.2, r_max=10)                                    DCPO, arXiv 2509.02333
``band_<divergence>``  Band(<divergence>, δ = 0.05), cap 10 (kl, tv, chi2,          BandPO, arXiv 2603.04918
                       hellinger, js, reverse_kl, neyman_chi2)
``band_kl_relax``      Union(Band("kl", 0.05), Clip(0.2, 0.28)), cap 10             BandPO's "relax" ablation
``band_kl_upper``      Split(lower=Clip(0.2, 0.2), upper=Band("kl", 0.05)), cap 10  ablation: the band's upper only
``band_kl_lower``      Split(lower=Band("kl", 0.05), upper=Clip(0.2, 0.2)), no cap  ablation: the band's lower only
``band_kl_upper_rare`` Split(lower=Clip(0.2, 0.2), upper=ByProbability(              the band's upper bound only for
                       Band("kl", 0.05), Clip(0.2, 0.2), rare_p=0.05)), cap 10      tokens below p = 0.05
``dppo_kl``            Band("kl", δ = 0.05), no cap, **mask** surrogate, C = 20     DPPO Binary-KL, arXiv 2602.04879
``dppo_tv``            Band("tv", δ = 0.15), no cap, **mask** surrogate, C = 20     DPPO Binary-TV, arXiv 2602.04879
``no_clip``            Clip(1, 1e6): bounds [0, 1e6] (a reference, not a method)    importance-weighted PG
=====================  ===========================================================  ================================

Surrogates (:mod:`bandpo.losses.policy`): ``"clip"`` is PPO's max(-A·r, -A·clip(r, lower, upper)) (with the
optional dual clip); ``"mask"`` is DPPO's (arXiv 2602.04879): a token whose ratio left [lower, upper] on the side
its advantage pushes (A > 0 and r > upper, or A < 0 and r < lower) is dropped, the others train with the truncated
importance weight, gradient -A·min(r, C)·∇log π, C = ``tis_cap``. DPPO's binary TV and binary KL between old and
new policy at the sampled token are exactly g_f(p, r) of the TV and KL bands (``bandpo_theory.dppo``), so its trust
region is ``Band(divergence, delta)`` without a cap.

DPPO's thresholds: δ = 0.05 for Binary-KL and δ = 0.15 for Binary-TV are the values of the DPPO authors' public
example in verl (``examples/dppo_trainer/run_qwen30b_dppo.sh``, low = high; the authors' code is
github.com/sail-sg/Stable-RL); C = 20 is the default truncation cap of verl's ``dppo_kl``/``dppo_tv`` losses (that
example sets it to 10000, i.e. off). For a paired comparison with ``band_tv``
(δ = 0.05) pass ``delta=0.05`` to ``dppo_tv`` (``loss.delta=0.05``): the region is then identical and only the loss
form differs (``dppo_kl`` and ``band_kl`` already share δ = 0.05; ``band_kl`` also caps its upper bound at 10).

Settings of a method are its bounds rule's settings (:func:`bandpo.losses.rules.rule_settings`), ``max_ratio``,
and, for mask methods, ``tis_cap``; :func:`resolve_method` applies overrides (``delta=0.1``, ``eps_high=0.28``, ...)
and names the allowed settings when one is unknown.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..registry import Registry
from .rules import DCPO, Band, BoundsRule, ByProbability, Clip, Split, Union as UnionRule, replace_settings, rule_settings

__all__ = [
    "METHODS",
    "SURROGATES",
    "Method",
    "get_method",
    "list_methods",
    "method_settings",
    "register_method",
    "resolve_method",
    "unregister_method",
]


SURROGATES = ("clip", "mask")
"""The loss forms a method can train with: PPO's clipped surrogate, or DPPO's mask with truncated IS weights."""

DEFAULT_TIS_CAP = 20.0
"""DPPO's truncation cap C (the default of verl's ``dppo_kl``/``dppo_tv`` losses)."""


def _check_tis_cap(x) -> None:
    if not (isinstance(x, numbers.Real) and not isinstance(x, bool) and x >= 1):
        raise ValueError(f"tis_cap must be a number >= 1 (DPPO's truncation cap C, e.g. 20) or inf (no truncation), got {x!r}")


def _check_max_ratio(x) -> None:
    if x is not None and not (isinstance(x, numbers.Real) and not isinstance(x, bool) and x >= 1):
        raise ValueError(f"max_ratio must be None, a number >= 1 (e.g. 10) or inf (no cap), got {x!r}")


@dataclass(frozen=True)
class Method:
    """A named training method: its bounds rule (with settings) and the cap on the upper bound."""

    name: str
    """The method id (``band_kl``, ``clip``, ...)."""
    bounds: BoundsRule
    """The bounds rule, e.g. ``Band("kl", 0.05)``; called as ``bounds(old_logp, step=...)``."""
    max_ratio: Optional[float] = None
    """Cap >= 1 applied to the upper bound (the paper trains BandPO with 10); None or inf: no cap."""
    label: str = ""
    """Human-readable name for plots and tables."""
    description: str = ""
    """One line: what the bounds are and where they come from."""
    surrogate: str = "clip"
    """Loss form: ``"clip"`` (PPO's clipped surrogate, dual clip applies) or ``"mask"`` (DPPO, arXiv 2602.04879:
    tokens outside the interval on their advantage's side are dropped, the rest use the truncated IS weight
    min(r, tis_cap); dual clip does not apply)."""
    tis_cap: Optional[float] = None
    """Mask methods only: DPPO's truncation cap C >= 1 on the stop-gradient IS weight (inf: none); None takes 20
    (verl's default). Must stay None for clip methods."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a method name must be a non-empty string, got {self.name!r}")
        if not callable(self.bounds):
            raise ValueError(f"method {self.name!r}: bounds must be a bounds rule (old_logp, step=None) -> (lower, upper), got {self.bounds!r}")
        _check_max_ratio(self.max_ratio)
        if self.surrogate not in SURROGATES:
            raise ValueError(f"method {self.name!r}: surrogate must be one of {', '.join(SURROGATES)}, got {self.surrogate!r}")
        if self.surrogate == "mask":
            if self.tis_cap is None:
                object.__setattr__(self, "tis_cap", DEFAULT_TIS_CAP)
            _check_tis_cap(self.tis_cap)
        elif self.tis_cap is not None:
            raise ValueError(f"method {self.name!r}: tis_cap applies to surrogate 'mask' only (DPPO); got tis_cap={self.tis_cap!r} with surrogate 'clip'")

    def settings(self) -> "dict[str, Any]":
        """The method's settings and their values: the bounds rule's settings (:func:`rule_settings`), then
        ``max_ratio``, then ``tis_cap`` for mask methods."""
        out = rule_settings(self.bounds)
        out["max_ratio"] = self.max_ratio
        if self.surrogate == "mask":
            out["tis_cap"] = self.tis_cap
        return out

    def with_settings(self, **settings: Any) -> "Method":
        """A copy with some settings replaced (validated); ValueError naming the accepted ones if unknown.

        A setting given as None keeps the method's own value (as in :class:`bandpo.LossConfig`)."""
        if not settings:
            return self
        allowed = self.settings()
        unknown = [k for k in settings if k not in allowed]
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no setting {', '.join(map(repr, unknown))}; "
                f"its settings: {', '.join(allowed)}"
            )
        settings = {k: v for k, v in settings.items() if v is not None}
        rule_kw = {k: v for k, v in settings.items() if k not in ("max_ratio", "tis_cap")}
        bounds = replace_settings(self.bounds, **rule_kw) if rule_kw else self.bounds
        return dataclasses.replace(
            self, bounds=bounds, max_ratio=settings.get("max_ratio", self.max_ratio),
            tis_cap=settings.get("tis_cap", self.tis_cap),
        )


METHODS: Registry[Method] = Registry("method", hint="register your own with bandpo.register_method")
"""The canonical method table, by id."""


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` under ``method.name`` (ValueError if taken, unless ``overwrite``)."""
    if not isinstance(method, Method):
        raise ValueError(f"register_method expects a bandpo.losses.Method, got {type(method).__name__}")
    return METHODS.register(method.name, method, overwrite=overwrite)


def unregister_method(name: str) -> None:
    """Remove a method from :data:`METHODS` (ValueError listing the known ids if there is none)."""
    METHODS.unregister(name)


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError listing the known ids otherwise."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Method ids, sorted."""
    return METHODS.names()


def method_settings(method: "str | Method") -> list[str]:
    """Names of the settings a method accepts (its bounds rule's fields and ``max_ratio``)."""
    m = get_method(method) if isinstance(method, str) else method
    return list(m.settings())


def resolve_method(method: "Union[str, Method, BoundsRule]", **settings: Any) -> Method:
    """A :class:`Method` from an id, a Method or a bounds-rule instance, with ``settings`` applied.

    A bare bounds rule becomes a method named after its class, without a cap (unless ``max_ratio`` is given).
    """
    if isinstance(method, str):
        m = get_method(method)
    elif isinstance(method, Method):
        m = method
    elif callable(method):
        m = Method(type(method).__name__.lower(), method, None)
    else:
        raise ValueError(f"method must be a method id ({', '.join(list_methods())}), a Method or a bounds rule, got {method!r}")
    return m.with_settings(**settings)


_DIVERGENCE_LABELS = {
    "kl": "KL", "tv": "TV", "chi2": "χ²", "hellinger": "Hellinger²", "js": "JS", "reverse_kl": "reverse KL",
    "neyman_chi2": "Neyman χ²",
}

for _m in (
    Method("clip", Clip(0.2, 0.2), None, "GRPO clip (0.2/0.2)",
           "PPO/GRPO clip [1 - 0.2, 1 + 0.2], no cap (arXiv 1707.06347, 2402.03300)"),
    Method("clip_higher", Clip(0.2, 0.28), None, "Clip-Higher / DAPO (0.2/0.28)",
           "Clip-Higher [1 - 0.2, 1 + 0.28], no cap (DAPO, arXiv 2503.14476)"),
    Method("dcpo", DCPO(0.16, 0.2, 10.0), None, "DCPO",
           "DCPO dynamic adaptive clipping, eps 0.16/0.2, upper capped at r_max = 10 (arXiv 2509.02333)"),
    *(
        Method(f"band_{d}", Band(d, 0.05), 10.0, f"BandPO {label}",
               f"BandPO {label} band, delta 0.05, upper capped at 10 (arXiv 2603.04918)")
        for d, label in _DIVERGENCE_LABELS.items()
    ),
    Method("band_kl_relax", UnionRule(Band("kl", 0.05), Clip(0.2, 0.28)), 10.0, "BandPO KL relax (∪ Clip-Higher)",
           "BandPO's relax ablation: KL band delta 0.05 united with Clip-Higher [0.8, 1.28], upper capped at 10 "
           "(arXiv 2603.04918's scripts)"),
    Method("band_kl_upper", Split(lower=Clip(0.2, 0.2), upper=Band("kl", 0.05)), 10.0, "BandPO KL upper only",
           "ablation: the KL band's upper bound (delta 0.05, capped at 10) with GRPO's fixed lower bound 1 - 0.2"),
    Method("band_kl_lower", Split(lower=Band("kl", 0.05), upper=Clip(0.2, 0.2)), None, "BandPO KL lower only",
           "ablation: the KL band's lower bound (delta 0.05) with GRPO's fixed upper bound 1 + 0.2"),
    Method("band_kl_upper_rare",
           Split(lower=Clip(0.2, 0.2), upper=ByProbability(Band("kl", 0.05), Clip(0.2, 0.2), rare_p=0.05)), 10.0,
           "BandPO KL upper, rare tokens only",
           "the KL band's upper bound (delta 0.05, capped at 10) for tokens of old probability below rare_p = 0.05, "
           "GRPO's clip [1 - 0.2, 1 + 0.2] everywhere else (docs/protocol-rare-tail.md)"),
    Method("dppo_kl", Band("kl", 0.05), None, "DPPO Binary-KL",
           "DPPO Binary-KL: mask tokens outside the binary-KL region (delta 0.05) on their advantage's side, "
           "truncated IS weight C = 20 (arXiv 2602.04879)", surrogate="mask"),
    Method("dppo_tv", Band("tv", 0.15), None, "DPPO Binary-TV",
           "DPPO Binary-TV: mask tokens with |pi - pi_old| beyond delta 0.15 on their advantage's side, "
           "truncated IS weight C = 20 (arXiv 2602.04879)", surrogate="mask"),
    Method("no_clip", Clip(1.0, 1e6), None, "no clip (reference)",
           "bounds [0, 1e6]: the importance-weighted policy gradient (a reference, not a method)"),
):
    register_method(_m)
