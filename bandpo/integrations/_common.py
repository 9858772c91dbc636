"""What the three plug-ins share: method ids, settings validation, bounds and the reference loss.

The plug-ins name a bounds method by its id (``bandpo.list_methods()``: ``clip``, ``clip_higher``, ``dcpo``,
``band_kl``, ``band_tv``, ...) and pass the method's settings (``divergence``, ``delta``, ``eps_low``, ``eps_high``,
``r_max``) plus ``max_ratio``. :func:`bounds` and :func:`policy_loss` here call ``bandpo.bounds`` /
``bandpo.policy_loss`` with those names when the installed bandpo has them, and otherwise translate the id to the
older ``method="band"|"clip"|"dcpo"`` spelling of ``bandpo.losses.policy_loss``; either way the numbers come from
bandpo's own code, never from a copy here.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch
from torch import Tensor

import bandpo.losses as _losses
from bandpo.operator import list_divergences

_CLIP_EPS = {"clip": (0.2, 0.2), "clip_higher": (0.2, 0.28)}
_SETTING_NAMES = ("divergence", "delta", "eps_low", "eps_high", "r_max", "max_ratio")


def _new_api() -> bool:
    return hasattr(_losses, "bounds") and hasattr(_losses, "list_methods")


def list_methods() -> list[str]:
    """The method ids a plug-in accepts (``bandpo.list_methods()`` when bandpo has it)."""
    if _new_api():
        return list(_losses.list_methods())
    return ["clip", "clip_higher", "dcpo"] + [f"band_{d}" for d in list_divergences()]


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
    """The settings that apply to ``method``, ``None`` values dropped (the method's defaults then apply).

    ``divergence`` and ``delta`` belong to the band methods (a ``band_<f>`` id names its default divergence);
    ``eps_low``/``eps_high`` to clip, clip_higher and dcpo; ``r_max`` to dcpo; ``max_ratio`` to every method
    (``bandpo.losses.method_settings`` lists them where it exists). A setting given to a method that does not use
    it is refused, so a typo or a mismatched recipe fails loudly.
    """
    check_method(method)
    unknown = set(settings) - set(_SETTING_NAMES)
    if unknown:
        raise ValueError(f"unknown BandPO setting(s) {sorted(unknown)}; allowed: {', '.join(_SETTING_NAMES)}")
    given = {k: v for k, v in settings.items() if v is not None}
    if _new_api():
        allowed = set(_losses.method_settings(method))
    elif method.startswith("band_"):
        allowed = {"divergence", "delta", "max_ratio"}
    elif method == "dcpo":
        allowed = {"eps_low", "eps_high", "r_max", "max_ratio"}
    else:
        allowed = {"eps_low", "eps_high", "max_ratio"}
    extra = set(given) - allowed
    if extra:
        raise ValueError(
            f"method {method!r} does not use {', '.join(sorted(extra))}; its settings are: {', '.join(sorted(allowed))}"
        )
    return given


def _old_kwargs(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Translate an id and its settings to the older ``bandpo.losses.policy_loss`` keywords."""
    out: dict[str, Any] = {}
    if method.startswith("band_"):
        out["method"] = "band"
        out["divergence"] = given.get("divergence", method[len("band_"):])
        if "delta" in given:
            out["delta"] = given["delta"]
    elif method in _CLIP_EPS:
        out["method"] = "clip"
        out["eps_low"], out["eps_high"] = _CLIP_EPS[method]
    else:
        out["method"] = "dcpo"
        if "r_max" in given and given["r_max"] != 10.0:
            raise ValueError("this bandpo version's dcpo has r_max fixed at 10; upgrade bandpo to set r_max")
    for key in ("eps_low", "eps_high", "max_ratio"):
        if key in given:
            out[key] = given[key]
    return out


def bounds(old_logp: Tensor, method: str, *, step: Optional[int] = None, **settings: Any) -> tuple[Tensor, Tensor]:
    """Per-token ratio interval ``(lower, upper)`` that the loss clips to, cap included, shaped like ``old_logp``.

    ``bandpo.bounds(old_logp, method, step=step, **settings)`` where it exists; otherwise the registered bounds
    method of the older API with the upper bound capped at ``max_ratio`` (computed without gradient).
    """
    given = method_settings(method, **settings)
    if _new_api():
        return _losses.bounds(old_logp, method, step=step, **given)
    kw = _old_kwargs(method, given)
    cfg = _losses.LossConfig(**kw)
    with torch.no_grad():
        old = old_logp.detach().clamp(max=0)
        lower, upper = _losses.get_bounds_method(cfg.method).bounds(old, cfg)
        if cfg.max_ratio is not None:
            upper = upper.clamp(max=float(cfg.max_ratio))
    return lower, upper


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
    """``bandpo.policy_loss`` with a method id (the reference every plug-in is tested against)."""
    given = method_settings(method, **settings)
    if _new_api():
        return _losses.policy_loss(
            logp, old_logp, adv, mask, method=method, dual_clip=dual_clip, agg=agg, denominator=denominator,
            validate=validate, step=step, **given,
        )
    return _losses.policy_loss(
        logp, old_logp, adv, mask, dual_clip=dual_clip, agg=agg, denominator=denominator, validate=validate,
        **_old_kwargs(method, given),
    )


def band_metrics(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    method: str,
    dual_clip: Optional[float] = None,
    step: Optional[int] = None,
    **settings: Any,
) -> dict[str, Tensor]:
    """bandpo's loss diagnostics (keys ``bandpo.losses.METRIC_KEYS``, docs/metrics.md) for these tokens, no gradient."""
    with torch.no_grad():
        _, metrics = policy_loss(
            logp.detach(), old_logp.detach(), adv.detach(), mask, method=method, dual_clip=dual_clip,
            agg="token-mean", validate=False, step=step, **settings,
        )
    return metrics


def surrogate(ratio: Tensor, adv: Tensor, lower: Tensor, upper: Tensor, dual_clip: Optional[float] = None) -> Tensor:
    """Per-token clipped surrogate, (B, T): ``max(-A·r, -A·clip(r, lower, upper))``, then ``min(·, -A·c)`` where A < 0.

    ``bandpo.losses.surrogate`` where the installed bandpo has it; otherwise the same formula (that of
    ``bandpo.losses.policy_loss`` before aggregation, arXiv 2603.04918) in torch operations here.
    """
    impl = getattr(_losses, "surrogate", None)
    if impl is not None:
        return impl(ratio, adv, lower, upper, dual_clip=dual_clip)
    per_token = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lower, upper))
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    return per_token


class OneMinus:
    """Stands for ε_low inside a framework's loss: ``1 - self`` is the per-token ``lower`` tensor, exactly.

    ``get_bounds()`` returns ``(lower, upper)``; it is called when the framework evaluates ``1 - eps_low``.
    """

    def __init__(self, get_bounds) -> None:
        self._get = get_bounds

    def __rsub__(self, other: Any) -> Tensor:
        if other != 1:
            raise TypeError(f"BandPO's eps_low proxy only supports `1 - eps_low`, got `{other!r} - ...`")
        return self._get()[0]


class OnePlus:
    """Stands for ε_high inside a framework's loss: ``1 + self`` is the per-token ``upper`` tensor, exactly."""

    def __init__(self, get_bounds) -> None:
        self._get = get_bounds

    def __radd__(self, other: Any) -> Tensor:
        if other != 1:
            raise TypeError(f"BandPO's eps_high proxy only supports `1 + eps_high`, got `{other!r} + ...`")
        return self._get()[1]
