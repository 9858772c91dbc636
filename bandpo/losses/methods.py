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
``gspo``               Clip(3e-4, 4e-4), **gspo** surrogate (sequence ratio)         GSPO, arXiv 2507.18071
``cispo``              Clip(1, 4): weight clip(r, 0, 5), **cispo** surrogate        CISPO, arXiv 2506.13585
``sapo``               Unbounded, **sapo** soft gate, tau 1.0 / 1.05                SAPO, arXiv 2511.20347
``gpg``                Unbounded, **gpg**: -A·log π                                  GPG, arXiv 2504.02546
``clip_cov``           Clip(0.2, 0.2), **clip_cov** (2e-4 of tokens detached)        Clip-Cov, arXiv 2505.22617
``kl_cov``             Unbounded, **kl_cov** (0.1·|log r| on top 2e-4 by cov)        KL-Cov, arXiv 2505.22617
``gmpo``               LogClip(0.4, 0.4), **geo_mean** surrogate                     GMPO, arXiv 2507.20673
``dro``                Unbounded, **dro** (dro_beta must be given)                   verl 0.9.1's ``dro``
``vespo``              Unbounded, **vespo** Gamma weight, k/λ 2/3 and 3/2            VESPO, arXiv 2602.10693
``cispo_band_kl``      Band("kl", 0.05), cap 10, **cispo** surrogate                 CISPO with the KL band
``gmpo_band_kl``       Band("kl", 0.05), cap 10, **geo_mean** surrogate              GMPO with the KL band
=====================  ===========================================================  ================================

The surrogates beyond ``clip`` and ``mask`` (formulas, sources, the sequence-level interval of GSPO) are in
:mod:`bandpo.losses.surrogates`; their settings (``tau_pos``, ``cov_fraction``, ``kl_cov_coef``, ``dro_beta``,
``k_pos``, ...) are settings of the method, like its bounds rule's. A surrogate that clips nothing (sapo, gpg,
kl_cov, dro, vespo) takes the rule :class:`~bandpo.losses.rules.Unbounded` and refuses any other. Which default
follows the paper and which the framework: ``docs/paper-notes.md``, "The field".

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
from .rules import DCPO, Band, BoundsRule, ByProbability, Clip, LogClip, Split, Unbounded, Union as UnionRule, replace_settings, rule_settings
from .surrogates import SURROGATE_FORMS, ClipCovSettings, KLCovSettings, SAPOSettings, VESPOSettings, surrogate_settings

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


SURROGATES = ("clip", "mask", *SURROGATE_FORMS.names())
"""The loss forms a method can train with: PPO's clipped surrogate, DPPO's mask with truncated IS weights, and the
forms of :mod:`bandpo.losses.surrogates` (cispo, clip_cov, geo_mean, gpg, gspo, kl_cov, sapo, vespo)."""

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
    surrogate_settings: Any = None
    """The settings object of a surrogate that has some (:class:`~bandpo.losses.surrogates.SAPOSettings`,
    ``ClipCovSettings``, ``KLCovSettings``, ``VESPOSettings``); None takes its defaults. Its fields are settings of
    the method (``tau_pos=1.2``, ``cov_fraction=1e-3``, ...)."""

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
            raise ValueError(f"method {self.name!r}: tis_cap applies to surrogate 'mask' only (DPPO); got tis_cap={self.tis_cap!r} with surrogate {self.surrogate!r}")
        if self.surrogate in ("clip", "mask"):
            if self.surrogate_settings is not None:
                raise ValueError(f"method {self.name!r}: surrogate {self.surrogate!r} has no surrogate_settings, got {self.surrogate_settings!r}")
            return
        try:
            object.__setattr__(self, "surrogate_settings", surrogate_settings(self.surrogate, self.surrogate_settings))
        except ValueError as e:
            raise ValueError(f"method {self.name!r}: {e}") from None
        if not SURROGATE_FORMS.get(self.surrogate).uses_bounds and (
            not isinstance(self.bounds, Unbounded) or self.max_ratio is not None
        ):
            raise ValueError(
                f"method {self.name!r}: surrogate {self.surrogate!r} clips no ratio, so a trust region cannot act on "
                f"it: its bounds must be Unbounded() and max_ratio None, got {self.bounds!r} and {self.max_ratio!r}"
            )

    def _uses_bounds(self) -> bool:
        return self.surrogate in ("clip", "mask") or SURROGATE_FORMS.get(self.surrogate).uses_bounds

    def settings(self) -> "dict[str, Any]":
        """The method's settings and their values: the bounds rule's settings (:func:`rule_settings`), then
        ``max_ratio``, then ``tis_cap`` for mask methods."""
        out = rule_settings(self.bounds)
        if self._uses_bounds():
            out["max_ratio"] = self.max_ratio
        if self.surrogate == "mask":
            out["tis_cap"] = self.tis_cap
        if self.surrogate_settings is not None:
            out.update({f.name: getattr(self.surrogate_settings, f.name) for f in dataclasses.fields(self.surrogate_settings)})
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
        own = set(rule_settings(self.bounds))
        rule_kw = {k: v for k, v in settings.items() if k in own}
        form_kw = {k: v for k, v in settings.items() if k not in own and k not in ("max_ratio", "tis_cap")}
        bounds = replace_settings(self.bounds, **rule_kw) if rule_kw else self.bounds
        form_settings = self.surrogate_settings
        if form_kw:
            form_settings = dataclasses.replace(form_settings, **form_kw)
        return dataclasses.replace(
            self, bounds=bounds, max_ratio=settings.get("max_ratio", self.max_ratio),
            tis_cap=settings.get("tis_cap", self.tis_cap), surrogate_settings=form_settings,
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
    Method("gspo", Clip(3e-4, 4e-4), None, "GSPO",
           "GSPO: the sequence ratio (geometric mean of the token ratios) clipped to [1 - 3e-4, 1 + 4e-4] "
           "(arXiv 2507.18071)", surrogate="gspo"),
    Method("cispo", Clip(1.0, 4.0), None, "CISPO",
           "CISPO: -sg(clip(r, 0, 5))·A·log pi, the IS weight truncated at 5, no lower bound (arXiv 2506.13585; "
           "TRL's recommended eps_max 5 from arXiv 2510.13786)", surrogate="cispo"),
    Method("sapo", Unbounded(), None, "SAPO",
           "SAPO: soft gate (4/tau)·sigmoid(tau(r - 1)), tau 1.0 (A > 0) / 1.05 (A <= 0) (arXiv 2511.20347)",
           surrogate="sapo"),
    Method("gpg", Unbounded(), None, "GPG", "GPG: -A·log pi, no ratio, no clip (arXiv 2504.02546)", surrogate="gpg"),
    Method("clip_cov", Clip(0.2, 0.2), None, "Clip-Cov",
           "Clip-Cov: PPO clip 0.2/0.2, a random 2e-4 of the tokens with covariance in (1, 5) detached "
           "(arXiv 2505.22617)", surrogate="clip_cov"),
    Method("kl_cov", Unbounded(), None, "KL-Cov",
           "KL-Cov: -A·r, plus 0.1·|log r| on the top 2e-4 of the tokens by covariance (arXiv 2505.22617)",
           surrogate="kl_cov"),
    Method("gmpo", LogClip(0.4, 0.4), None, "GMPO",
           "GMPO: geometric mean of the token ratios, log r clipped to [-0.4, 0.4] (arXiv 2507.20673)",
           surrogate="geo_mean"),
    Method("dro", Unbounded(), None, "DRO (verl)",
           "verl's DRO loss: -A·log pi + (dro_beta/2)·(log r)^2; dro_beta has no default and must be set",
           surrogate="dro"),
    Method("vespo", Unbounded(), None, "VESPO",
           "VESPO: -sg(phi(w))·A·log pi, phi a Gamma weight of the sequence IS weight w (arXiv 2602.10693)",
           surrogate="vespo"),
    Method("cispo_band_kl", Band("kl", 0.05), 10.0, "CISPO, KL band",
           "CISPO with its IS weight truncated to the KL band (delta 0.05, upper capped at 10) instead of [0, 5]",
           surrogate="cispo"),
    Method("gmpo_band_kl", Band("kl", 0.05), 10.0, "GMPO, KL band",
           "GMPO with each token's log r clipped to the log of its KL band (delta 0.05, capped at 10) instead of "
           "[-0.4, 0.4]", surrogate="geo_mean"),
):
    register_method(_m)
