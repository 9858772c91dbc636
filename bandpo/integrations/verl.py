"""BandPO in verl: policy-loss modes ``bandpo`` and ``bandpo_<method>`` in verl's policy-loss registry.

Installed bandpo declares this module in the entry-point group ``verl.plugins``, which verl imports when it is
imported itself, so a run needs no code change, only (Hydra overrides, docs/integrations.md)::

    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl        # or bandpo (method from the config)
    actor_rollout_ref.actor.clip_ratio_c=10.0                           # the dual clip (verl's own knob)
    # optional, to change δ / cap / method settings:
    +actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.delta=0.05
    +actor_rollout_ref.actor.policy_loss.max_ratio=10.0

A mode is a function with verl's policy-loss signature (written against verl 0.9.1). Per token, with
r = exp(clamp(log_prob - old_log_prob, -20, 20)) and ``(lower, upper) = bandpo.bounds(old_log_prob, method, ...)``
(upper capped at ``max_ratio``), c = ``clip_ratio_c``:

    ℓ = max(-A·r, -A·clip(r, lower, upper));  ℓ = min(ℓ, -A·c) where A < 0;  ℓ *= rollout_is_weights (if given)

aggregated by verl's own ``agg_loss(ℓ, response_mask, loss_agg_mode, **config.global_batch_info)``, so token
counts and batch sizes across data-parallel ranks are handled as verl handles them for its built-in losses.
Metrics: verl's ``actor/pg_clipfrac`` (tokens whose clipped term binds), ``actor/ppo_kl``,
``actor/pg_clipfrac_lower`` (tokens held by the dual clip), plus bandpo's diagnostics as ``actor/bandpo/<key>``
(``bandpo.losses.METRIC_KEYS``, docs/metrics.md). Each metric is a Python float, as verl's own losses return.

DPPO's mask methods (modes ``bandpo_dppo_kl``, ``bandpo_dppo_tv``; arXiv 2602.04879) use bandpo's mask surrogate
instead: a token outside [lower, upper] on its advantage's side is dropped, the rest have gradient
-A·min(r, C)·∇log π with C = the method's ``tis_cap`` (20), ``clip_ratio_c`` is not used (no dual clip), and
``actor/pg_clipfrac`` is the masked fraction, ``actor/pg_clipfrac_lower`` the fraction of kept tokens whose weight
C truncates (as verl's own ``dppo_*`` losses report). The threshold is the method's ``delta`` (not verl's
``clip_ratio``, which verl's own ``dppo_*`` modes read as the threshold).

Settings: with the stock ``PolicyLossConfig`` a mode uses the paper's defaults (BandPO-KL: δ = 0.05, cap 10,
arXiv 2603.04918); :class:`BandPOPolicyLossConfig` (select it with ``policy_loss._target_``) adds ``method``,
``divergence``, ``delta``, ``eps_low``, ``eps_high``, ``r_max``, ``max_ratio`` and ``tis_cap``. verl's ``clip_ratio``,
``clip_ratio_low`` and ``clip_ratio_high`` are not read by these modes (the method's own eps are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

try:
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, agg_loss, register_policy_loss
    from verl.workers.config.actor import PolicyLossConfig
except ImportError as exc:  # pragma: no cover - exercised only without verl
    raise ImportError("bandpo.integrations.verl needs verl: see docs/integrations.md (pip install 'bandpo[verl]')") from exc

from ..losses import LOG_RATIO_CLAMP
from . import _common

__all__ = ["BandPOPolicyLossConfig", "DEFAULT_METHOD", "MODE_PREFIX", "bandpo_policy_loss", "mode_names"]

MODE_PREFIX = "bandpo"
"""Mode ``bandpo`` reads the method from the config; ``bandpo_<method>`` fixes it (e.g. ``bandpo_band_kl``)."""

DEFAULT_METHOD = "band_kl"
"""Method of mode ``bandpo`` when the config names none (the paper's BandPO-KL)."""

_DEFAULT_MAX_RATIO = 10.0


@dataclass
class BandPOPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus BandPO's settings (select with ``policy_loss._target_``).

    ``None`` fields take the method's defaults (band δ 0.05; clip 0.2/0.2; clip_higher 0.2/0.28; dcpo
    0.16/0.2, r_max 10). A setting the method does not use is refused on construction.
    """

    loss_mode: str = MODE_PREFIX
    """``bandpo`` (method from ``method``) or ``bandpo_<method>``."""
    method: Optional[str] = None
    """Bounds method id (``bandpo.list_methods()``) for mode ``bandpo``; ``None``: ``band_kl``. With a
    ``bandpo_<method>`` mode it must be ``None`` or that method."""
    divergence: Optional[str] = None
    """f-divergence of a band method; ``None`` takes the one its id names."""
    delta: Optional[float] = None
    """Band radius δ > 0 (band methods); ``None``: bandpo's default, 0.05."""
    eps_low: Optional[float] = None
    """ε_low of clip/clip_higher/dcpo; ``None``: the method's default."""
    eps_high: Optional[float] = None
    """ε_high of clip/clip_higher/dcpo; ``None``: the method's default."""
    r_max: Optional[float] = None
    """DCPO's own cap on its upper bound (dcpo only); ``None``: 10."""
    max_ratio: Optional[float] = _DEFAULT_MAX_RATIO
    """Cap >= 1 on every clip method's upper bound (the paper: 10); ``None``: no cap. Not applied to DPPO's mask
    methods (``dppo_*``), whose trust region is uncapped as DPPO defines it."""
    tis_cap: Optional[float] = None
    """DPPO's truncation cap C on the importance weight (mask methods ``dppo_kl``/``dppo_tv`` only); ``None``: 20."""

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        method = _method_for_mode(self.loss_mode, self.method)
        settings = self.bandpo_settings(method)
        _common.check_settings(method, settings)  # delta / eps / r_max ranges: bandpo's

    def bandpo_settings(self, method: str) -> dict[str, Any]:
        """The settings that apply to ``method`` (``None`` fields left out)."""
        _common.check_cap_and_dual_clip(self.max_ratio, None, prefix="policy_loss.")
        return _common.method_settings(
            method, divergence=self.divergence, delta=self.delta, eps_low=self.eps_low, eps_high=self.eps_high,
            r_max=self.r_max, max_ratio=self.max_ratio, tis_cap=self.tis_cap,
        )


def _method_for_mode(loss_mode: str, method: Optional[str]) -> str:
    if loss_mode == MODE_PREFIX:
        return _common.check_method(method or DEFAULT_METHOD)
    prefix = MODE_PREFIX + "_"
    if not (isinstance(loss_mode, str) and loss_mode.startswith(prefix)):
        raise ValueError(
            f"BandPOPolicyLossConfig needs loss_mode 'bandpo' or 'bandpo_<method>', got {loss_mode!r} "
            "(verl's rollout_correction.bypass_mode=true replaces loss_mode)"
        )
    fixed = _common.check_method(loss_mode[len(prefix):])
    if method is not None and method != fixed:
        raise ValueError(f"loss_mode={loss_mode!r} fixes method={fixed!r}; got policy_loss.method={method!r}")
    return fixed


def _uncapped_if_mask(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The plug-in's cap ``max_ratio`` applies to clip methods only: a mask method keeps its own (uncapped) region."""
    if method in _common.list_methods("mask"):
        return {k: v for k, v in settings.items() if k != "max_ratio"}
    return settings


def _settings_from(config: Any, loss_mode: str) -> tuple[str, dict[str, Any], Optional[float]]:
    """(method, settings, dual clip c) from verl's actor config (stock or BandPO policy-loss config)."""
    if config is None:
        raise ValueError("the BandPO policy loss needs verl's actor config (config=...), got None")
    policy_cfg = config.get("policy_loss", None) if hasattr(config, "get") else getattr(config, "policy_loss", None)
    if isinstance(policy_cfg, BandPOPolicyLossConfig):
        method = _method_for_mode(loss_mode, policy_cfg.method)
        settings = policy_cfg.bandpo_settings(method)
        settings = _uncapped_if_mask(method, settings)
    else:
        get = policy_cfg.get if policy_cfg is not None and hasattr(policy_cfg, "get") else (lambda k, d=None: d)
        method = _method_for_mode(loss_mode, get("method", None))
        keys = ("divergence", "delta", "eps_low", "eps_high", "r_max", "tis_cap")
        raw = {k: get(k, None) for k in keys}
        raw["max_ratio"] = get("max_ratio", _DEFAULT_MAX_RATIO)
        _common.check_cap_and_dual_clip(raw["max_ratio"], None, prefix="policy_loss.")
        settings = _uncapped_if_mask(method, _common.method_settings(method, **raw))
    c = config.get("clip_ratio_c", 3.0) if hasattr(config, "get") else getattr(config, "clip_ratio_c", 3.0)
    _common.check_cap_and_dual_clip(None, c, prefix="clip_ratio_c (the dual clip) ")
    return method, settings, (None if c is None else float(c))


def bandpo_policy_loss(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Optional[Tensor] = None,
    *,
    loss_mode: str = MODE_PREFIX,
) -> tuple[Tensor, dict[str, Any]]:
    """verl policy loss with BandPO's bounds (formula in the module docstring).

    Args:
        old_log_prob, log_prob, advantages, response_mask: (B, T) as verl passes them (``log_prob``
            differentiable; ``response_mask`` bool or 0/1).
        loss_agg_mode: verl's aggregation mode (``token-mean``, ``seq-mean-token-mean`` (the paper's), ...).
        config: verl's actor config (``clip_ratio_c``, ``policy_loss``, ``global_batch_info``).
        rollout_is_weights: optional (B, T) rollout-correction weights multiplying each token's loss.
        loss_mode: which registered mode this call serves (bound by the registration).

    Returns:
        ``(loss, metrics)``: the 0-d loss from ``agg_loss`` and a dict of floats.
    """
    method, settings, c = _settings_from(config, loss_mode)
    valid = response_mask.bool()
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    # Padding may hold anything: select it away before any arithmetic so it reaches neither loss nor gradient.
    old = torch.where(valid, old_log_prob.detach().to(log_prob.dtype), zero).clamp(max=0)
    adv = torch.where(valid, advantages.detach().to(log_prob.dtype), zero)
    logp = torch.where(valid, log_prob, zero)
    lower, upper = _common.bounds(old, method, **settings)
    form, tis_cap = _common.method_form(method, **settings)
    if form == "mask":
        c = None  # DPPO has no dual clip
    ratio = torch.exp(torch.clamp(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    per_token = _common.surrogate(
        ratio, adv, lower.to(ratio.dtype), upper.to(ratio.dtype), dual_clip=c, form=form, tis_cap=tis_cap
    )
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    per_token = torch.where(valid, per_token, zero)
    global_batch_info = dict(config.get("global_batch_info", None) or {}) if hasattr(config, "get") else {}
    loss = agg_loss(loss_mat=per_token, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info)

    ours = _common.band_metrics(logp, old, adv, valid, lower, upper, dual_clip=c, form=form, tis_cap=tis_cap)
    metrics: dict[str, Any] = {
        "actor/pg_clipfrac": float(ours["clip_ratio/region_mean"]),
        "actor/ppo_kl": float(ours["ppo_kl"]),
        "actor/pg_clipfrac_lower": float(ours["truncated_fraction" if form == "mask" else "dual_clip_fraction"]),
    }
    metrics.update({f"actor/bandpo/{k}": float(v) for k, v in ours.items()})
    return loss, metrics


def _mode_function(mode: str) -> Callable[..., tuple[Tensor, dict[str, Any]]]:
    def policy_loss_fn(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        return bandpo_policy_loss(
            old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
            loss_mode=mode,
        )

    policy_loss_fn.__name__ = f"policy_loss_{mode}"
    policy_loss_fn.__qualname__ = policy_loss_fn.__name__
    policy_loss_fn.__doc__ = f"verl policy loss mode {mode!r} (bandpo.integrations.verl.bandpo_policy_loss)."
    return policy_loss_fn


def mode_names() -> list[str]:
    """``bandpo`` and one ``bandpo_<method>`` per method id."""
    return [MODE_PREFIX] + [f"{MODE_PREFIX}_{m}" for m in _common.list_methods()]


def register_modes() -> list[str]:
    """Register every BandPO mode in verl's policy-loss registry (idempotent); returns the mode names."""
    names = mode_names()
    for name in names:
        if name not in POLICY_LOSS_REGISTRY:
            register_policy_loss(name)(_mode_function(name))
    return names


register_modes()
