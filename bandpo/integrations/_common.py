"""What the three plug-ins share: method ids, settings checks, the bound proxies and the metrics.

The plug-ins name a bounds method by its id (``bandpo.list_methods()``: ``clip``, ``clip_higher``, ``dcpo``,
``band_kl``, ``band_tv``, ...) and pass the method's settings (``bandpo.losses.method_settings(method)``:
``divergence``, ``delta``, ``eps_low``, ``eps_high``, ``r_max``, ``max_ratio``, and ``tis_cap`` for DPPO's mask
methods). The numbers come from bandpo's own ``bounds``, ``surrogate`` and ``loss_metrics``, never from a copy here.
No list of ids is kept here: whatever ``bandpo.list_methods()`` holds at the call is accepted, so a row added to the
method table reaches every plug-in that can express its surrogate. A setting the id names (``divergence``: ``band_kl``
is the KL band) cannot be overridden to another value (:func:`method_settings`), and a δ schedule is built from the
``delta_schedule``/``delta_end``/``delta_steps`` fields every plug-in shares (:func:`schedule_settings`).

Methods whose surrogate is not PPO's clip (DPPO's mask, arXiv 2602.04879, and the forms of
:mod:`bandpo.losses.surrogates`: GSPO, CISPO, SAPO, GMPO, Clip-Cov, ...) need bandpo's own per-token loss: the verl
plug-in computes it and supports them; the TRL and OpenRLHF plug-ins drive their framework's own clipped surrogate
and refuse them (:func:`require_clip_surrogate`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import torch
from torch import Tensor

import bandpo.losses as _losses
from bandpo.losses.schedules import SCHEDULES, make_schedule
from bandpo.losses.surrogates import per_token_loss

__all__ = [
    "OneMinus",
    "OnePlus",
    "band_metrics",
    "bounds",
    "check_cap_and_dual_clip",
    "check_method",
    "check_settings",
    "clipped_tokens",
    "default_cap",
    "list_methods",
    "method_form",
    "method_spec",
    "merge_settings",
    "method_settings",
    "policy_loss",
    "schedule_settings",
    "require_clip_surrogate",
    "surrogate",
]

NAMED_SETTINGS = ("divergence", "delta", "eps_low", "eps_high", "r_max", "max_ratio", "tis_cap")
"""Settings each plug-in has a field or argument for; any other setting of a method goes in its ``settings`` dict."""

_IDENTITY_SETTINGS = ("divergence",)
"""Settings a method id names (``band_kl`` is the KL band): giving another value contradicts the id."""


def list_methods(surrogate: Optional[str] = None) -> list[str]:
    """The method ids a plug-in accepts (``bandpo.list_methods()``), optionally only those with that surrogate
    (``"clip"`` or ``"mask"``)."""
    return [m for m in _losses.list_methods() if surrogate is None or _losses.get_method(m).surrogate == surrogate]


def method_form(method: str, **settings: Any) -> tuple[str, Optional[float]]:
    """(surrogate, tis_cap) of ``method`` with ``settings``: ``("clip", None)``, ``("mask", C)`` or, for a form of
    :mod:`bandpo.losses.surrogates`, ``(form, None)``."""
    spec = method_spec(method, **settings)
    return spec.surrogate, spec.tis_cap


def method_spec(method: str, **settings: Any) -> "_losses.Method":
    """The :class:`bandpo.losses.Method` of ``method`` with ``settings`` applied (its surrogate's settings
    object included)."""
    return _losses.resolve_method(method, **method_settings(method, **settings))


def require_clip_surrogate(method: str, framework: str) -> None:
    """A one-line ValueError if ``method`` trains with a surrogate other than PPO's clip (DPPO's mask, GSPO, CISPO,
    SAPO, ...), which ``framework``'s own clipped surrogate (driven by the plug-in through its clip range) cannot
    express."""
    check_method(method)
    form = _losses.get_method(method).surrogate
    if form != "clip":
        raise ValueError(
            f"the {framework} plug-in drives {framework}'s own ratio clip, which cannot express method {method!r} "
            f"(surrogate {form!r}; the verl plug-in trains every surrogate); supported here: "
            f"{', '.join(list_methods('clip'))}"
        )


def default_cap(method: str, max_ratio: Optional[float], default: float) -> Optional[float]:
    """``max_ratio``, or None when it is a plug-in's ``default`` cap and ``method`` has no ``max_ratio`` (a surrogate
    that clips nothing: sapo, gpg, kl_cov, dro, vespo); another value for such a method is passed on, and refused."""
    if max_ratio == default and "max_ratio" not in method_spec(method).settings():
        return None
    return max_ratio


def check_method(method: str) -> str:
    """``method`` if it is a known id; a one-line ValueError listing the ids otherwise."""
    known = list_methods()
    if not isinstance(method, str) or method not in known:
        raise ValueError(f"unknown BandPO method {method!r}; known methods: {', '.join(known)}")
    return method


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_cap_and_dual_clip(max_ratio: Optional[float], dual_clip: Optional[float], prefix: str = "") -> None:
    """One-line ValueErrors for a cap that is not a finite number >= 1 or a dual clip that is not a finite number > 1."""
    if max_ratio is not None and not (_is_real(max_ratio) and math.isfinite(max_ratio) and max_ratio >= 1):
        raise ValueError(f"{prefix}max_ratio must be None or a finite number >= 1 (the paper uses 10), got {max_ratio!r}")
    if dual_clip is not None and not (_is_real(dual_clip) and math.isfinite(dual_clip) and dual_clip > 1):
        raise ValueError(f"{prefix}dual_clip must be None or a finite number > 1 (the paper uses 10), got {dual_clip!r}")


def method_settings(method: str, **settings: Any) -> dict[str, Any]:
    """The settings given for ``method``, ``None`` values dropped (the method's defaults then apply).

    A setting the method does not use (``bandpo.losses.method_settings(method)`` lists the ones it does) is
    refused, so a typo or a mismatched recipe fails loudly; so is a ``divergence`` other than the one the id names
    (``band_kl`` with ``divergence="tv"`` would train the TV band under the KL band's name), naming the ids of the
    same kind that have it.
    """
    check_method(method)
    given = {k: v for k, v in settings.items() if v is not None}
    own = _losses.get_method(method).settings()
    extra = set(given) - set(own)
    if extra:
        raise ValueError(
            f"method {method!r} does not use {', '.join(sorted(extra))}; its settings are: {', '.join(sorted(own))}"
        )
    for name in _IDENTITY_SETTINGS:
        if name in given and given[name] != own[name]:
            spec = _losses.get_method(method)
            kind = (type(spec.bounds), spec.surrogate)
            same = [
                m for m, other in ((m, _losses.get_method(m)) for m in list_methods())
                if other.settings().get(name) == given[name] and (type(other.bounds), other.surrogate) == kind
            ]
            hint = f"use {' or '.join(map(repr, same))}" if same else "register a method with it"
            raise ValueError(
                f"method {method!r} has {name} {own[name]!r} but {name}={given[name]!r} was given: {hint} "
                f"(or leave {name} unset)"
            )
    return given


def merge_settings(named: dict[str, Any], extra: Optional[dict[str, Any]], field: str, prefix: str = "") -> dict[str, Any]:
    """``named`` (a plug-in's own fields) plus ``extra`` (its dict field ``field``, for a method's other settings).

    A one-line ValueError if ``extra`` is not a dict of names or repeats a named setting (then set ``prefix + name``)."""
    if extra is None:
        return dict(named)
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise ValueError(f"{field} must be a dict of method settings by name, got {extra!r}")
    clash = sorted(set(extra) & set(NAMED_SETTINGS))
    if clash:
        raise ValueError(f"{field} repeats {', '.join(clash)}: set {' and '.join(prefix + c for c in clash)} instead")
    return {**named, **extra}


def schedule_settings(
    method: str,
    settings: dict[str, Any],
    delta_schedule: Optional[str] = None,
    delta_end: Optional[float] = None,
    delta_steps: Optional[int] = None,
) -> dict[str, Any]:
    """``settings`` with ``delta`` replaced by a schedule when ``delta_schedule`` is ``linear`` or ``cosine``.

    The schedule runs from ``delta`` (or the method's own δ) to ``delta_end`` over ``delta_steps`` steps and holds
    ``delta_end`` afterwards (:mod:`bandpo.losses.schedules`, the fields of :class:`bandpo.LossConfig`).
    ``None`` or ``constant`` keeps δ fixed, and then ``delta_end``/``delta_steps`` must be unset.
    """
    if delta_schedule is not None:
        SCHEDULES.get(delta_schedule)  # ValueError listing the schedule kinds
    if delta_schedule in (None, "constant"):
        if delta_end is not None or delta_steps is not None:
            raise ValueError("delta_end and delta_steps need delta_schedule 'linear' or 'cosine'")
        return settings
    own = _losses.get_method(method).settings()
    if "delta" not in own:
        raise ValueError(f"method {method!r} has no setting 'delta' to schedule; its settings: {', '.join(own)}")
    start = settings.get("delta", own["delta"])
    return {**settings, "delta": make_schedule(delta_schedule, start, delta_end, delta_steps)}


def check_settings(method: str, settings: dict[str, Any]) -> None:
    """Let bandpo range-check the settings once (on a dummy token, at step 0 and, for a schedule, at its end), so
    a bad value fails at configuration time."""
    token = torch.full((1,), math.log(0.5))
    bounds(token, method, step=0, **settings)
    steps = getattr(settings.get("delta"), "steps", None)
    if steps is not None:
        bounds(token, method, step=int(steps), **settings)
    spec = method_spec(method, **settings)
    if spec.surrogate not in ("clip", "mask"):  # e.g. dro without dro_beta: refused now, not at the first loss call
        one = torch.full((1, 1), math.log(0.5))
        lower, upper = bounds(one, method, step=0, **settings)
        per_token_loss(spec.surrogate, one, one, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), lower, upper,
                       settings=spec.surrogate_settings, step=0)


def bounds(old_logp: Tensor, method: str, *, step: Optional[int] = None, **settings: Any) -> tuple[Tensor, Tensor]:
    """``bandpo.bounds(old_logp, method, step=step, **settings)``: the per-token interval, cap included."""
    return _losses.bounds(old_logp, method, step=step, **method_settings(method, **settings))


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    method: str,
    dual_clip: Optional[float] = None,
    agg: str = "seq-mean-token-mean",
    denominator: Any = None,
    validate: bool = True,
    step: Optional[int] = None,
    **settings: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``bandpo.policy_loss`` with a method id and its settings (the reference the plug-ins are tested against)."""
    return _losses.policy_loss(
        logp, old_logp, adv, mask, method=method, dual_clip=dual_clip, agg=agg, denominator=denominator,
        validate=validate, step=step, **method_settings(method, **settings),
    )


def surrogate(
    ratio: Tensor,
    adv: Tensor,
    lower: Tensor,
    upper: Tensor,
    dual_clip: Optional[float] = None,
    *,
    form: str = "clip",
    tis_cap: Optional[float] = None,
) -> Tensor:
    """``bandpo.losses.surrogate``: per-token ``max(-A·r, -A·clip(r, lower, upper))``, ``min(·, -A·c)`` where A < 0;
    with ``form="mask"`` DPPO's masked, truncated-IS loss (``dual_clip`` ignored)."""
    return _losses.surrogate(ratio, adv, lower, upper, dual_clip=dual_clip, form=form, tis_cap=tis_cap)


def band_metrics(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    lower: Tensor,
    upper: Tensor,
    *,
    dual_clip: Optional[float] = None,
    form: str = "clip",
    tis_cap: Optional[float] = None,
) -> dict[str, Tensor]:
    """bandpo's loss diagnostics (``bandpo.losses.loss_metrics``, keys ``METRIC_KEYS``, docs/metrics.md).

    The ratio is the one ``bandpo.policy_loss`` uses, r = exp(clamp(logp - old_logp, -20, 20)); ``lower``/``upper``
    are the bounds the framework's loss clipped to. All (B, T); masked tokens are ignored whatever they hold.
    """
    with torch.no_grad():
        log_ratio = torch.clamp(logp.detach() - old_logp.detach(), -_losses.LOG_RATIO_CLAMP, _losses.LOG_RATIO_CLAMP)
        return _losses.loss_metrics(
            torch.exp(log_ratio), adv, lower, upper, mask, old_logp, dual_clip=dual_clip, form=form, tis_cap=tis_cap
        )


def clipped_tokens(logp: Tensor, old_logp: Tensor, adv: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """(low, high) bool (B, T): A < 0 and r < lower, A > 0 and r > upper, with bandpo's ratio (docs/metrics.md)."""
    with torch.no_grad():
        log_ratio = torch.clamp(logp.detach() - old_logp.detach(), -_losses.LOG_RATIO_CLAMP, _losses.LOG_RATIO_CLAMP)
        ratio = torch.exp(log_ratio)
        return (adv < 0) & (ratio < lower), (adv > 0) & (ratio > upper)


BoundsGetter = Callable[[], "tuple[Tensor, Tensor]"]


class OneMinus:
    """Stands for ε_low inside a framework's loss: ``1 - self`` is the per-token ``lower`` tensor, exactly.

    ``get_bounds()`` returns ``(lower, upper)``; it is called when the framework evaluates ``1 - eps_low``.
    """

    def __init__(self, get_bounds: BoundsGetter) -> None:
        self._get = get_bounds

    def __rsub__(self, other: Any) -> Tensor:
        if other != 1:
            raise TypeError(f"BandPO's eps_low proxy only supports `1 - eps_low`, got `{other!r} - ...`")
        return self._get()[0]


class OnePlus:
    """Stands for ε_high inside a framework's loss: ``1 + self`` is the per-token ``upper`` tensor, exactly."""

    def __init__(self, get_bounds: BoundsGetter) -> None:
        self._get = get_bounds

    def __radd__(self, other: Any) -> Tensor:
        if other != 1:
            raise TypeError(f"BandPO's eps_high proxy only supports `1 + eps_high`, got `{other!r} + ...`")
        return self._get()[1]
