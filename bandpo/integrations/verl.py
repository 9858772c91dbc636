"""BandPO in verl: policy-loss modes ``bandpo`` and ``bandpo_<method>`` in verl's policy-loss registry.

Installed bandpo declares this module in the entry-point group ``verl.plugins``, which verl imports when it is
imported itself, so a run needs no code change, only (Hydra overrides, docs/integrations.md)::

    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl
    actor_rollout_ref.actor.clip_ratio_c=10.0
    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.delta=0.05
    +actor_rollout_ref.actor.policy_loss.max_ratio=10.0

``loss_mode`` may be ``bandpo`` (method from the config) or ``bandpo_<method>``; ``clip_ratio_c`` is the dual clip
(verl's own knob). The last three lines are optional, to change δ, the cap or other method settings:
``_target_`` already exists in verl's config, so it takes no ``+`` (Hydra refuses to append an existing key); the
settings are new keys and take one.

A mode is a function with verl's policy-loss signature (written against verl 0.9.1). Per token, with
r = exp(clamp(log_prob - old_log_prob, -20, 20)) and ``(lower, upper) = bandpo.bounds(old_log_prob, method, ...)``
(upper capped at ``max_ratio``), c = ``clip_ratio_c``:

    ℓ = max(-A·r, -A·clip(r, lower, upper));  ℓ = min(ℓ, -A·c) where A < 0;  ℓ *= rollout_is_weights (if given)

(for the other surrogates ℓ is the method's own per-token loss, below)

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
``divergence``, ``delta``, ``delta_schedule``/``delta_end``/``delta_steps``, ``eps_low``, ``eps_high``, ``r_max``,
``max_ratio``, ``tis_cap`` and ``settings`` (a dict of any other setting of the method, by name). verl's
``clip_ratio``, ``clip_ratio_low`` and ``clip_ratio_high`` are not read by these modes (the method's own eps are).

Methods: a mode per id of ``bandpo.list_methods()`` at import, so a row added to bandpo's method table is a mode
without a change here; each computes its per-token loss with the method's own form: ``bandpo.losses.surrogate`` for
PPO's clip and DPPO's mask, ``bandpo.losses.surrogates.per_token_loss`` for every other form (GSPO, CISPO, SAPO, GPG,
Clip-Cov, KL-Cov, GMPO, DRO, VESPO and their band variants such as ``cispo_band_kl``), always aggregated by verl's
``agg_loss`` with the configured ``loss_agg_mode``: the mode equals ``bandpo.policy_loss(..., agg=loss_agg_mode)``.
Sequence-level forms need whole sequences, which verl's micro-batches hold (one row per response). No form fixes its
own aggregation here, as in bandpo: verl's own ``sapo`` and ``geo_mean`` ignore ``loss_agg_mode`` and always average
over sequences, so set ``loss_agg_mode=seq-mean-token-mean`` to reproduce them (bandpo's default and GSPO's, GMPO's
and SAPO's papers'); ``agg_loss`` is what applies verl's data-parallel token and sequence counts
(``global_batch_info``), which verl's ``geo_mean`` (a plain local mean) leaves out. The dual clip ``clip_ratio_c``
acts on PPO's clip only. verl's own knobs of these losses reach the BandPO mode of the same surrogate where they
differ from verl's defaults (which are bandpo's; :data:`VERL_KNOBS`): ``policy_loss.clip_cov_ratio``/``_lb``/``_ub``,
``policy_loss.kl_cov_ratio``, ``policy_loss.ppo_kl_coef``, ``policy_loss.dro_beta``, ``actor.tau_pos``/``tau_neg``;
the interval is the method's (its ``eps_low``/``eps_high``/``delta``), never verl's ``clip_ratio*``. For these forms
``actor/pg_clipfrac`` is bandpo's ``clip_ratio/region_mean`` (a token's ratio outside its own interval on its
advantage's side) and ``actor/pg_clipfrac_lower`` is 0.

Rollout correction: verl computes ``rollout_is_weights`` on the driver from ``algorithm.rollout_correction``
(``rollout_is=token|sequence``, ``rollout_is_threshold``) and hands them to the loss, which multiplies each token's
loss by them before ``agg_loss``, exactly as ``bandpo.policy_loss(..., correction=, rollout_logp=)`` multiplies by
``bandpo.losses.rollout_weights`` (verl's weights equal bandpo's presets: ``tis``/``seq_tis`` are
``rollout_is=token|sequence`` with threshold 2.0, ``icepop`` is threshold ``"0.5_5.0"``). bandpo's per-token bounds as
the correction's interval (``RolloutCorrection(bounds=...)``) have no verl setting: the actor's loss never sees
``rollout_log_probs`` in verl 0.9.1.

Training step (δ schedules): verl calls a policy loss with tensors and the actor config only. verl's trainer keeps
its step in ``global_steps`` (1 on the first step) and tags the batches it dispatches with it
(``tu.assign_non_tensor_data(batch, "global_steps", ...)``); importing this module wraps the worker's loss entry
``verl.workers.utils.losses.ppo_loss`` so that a mode sees ``global_steps - 1`` of the micro-batch it is computing
(bandpo's steps count from 0). A schedule with no step available fails with a one-line error.

Checks at configuration time: importing this module also wraps ``verl.utils.config.validate_config`` (which
``verl.trainer.main_ppo`` calls before training): a ``bandpo*`` ``loss_mode`` that is not registered, and a BandPO mode
together with ``algorithm.rollout_correction.bypass_mode=true`` (which makes verl replace ``loss_mode`` by its own
``bypass_mode`` loss at the first step), are one-line errors there. verl's ``apply_bypass_mode`` is wrapped too and
refuses to replace a BandPO mode, for trainers that skip ``validate_config``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

try:
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, agg_loss, register_policy_loss
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig
except ImportError as exc:  # pragma: no cover - exercised only without verl
    raise ImportError("bandpo.integrations.verl needs verl: see docs/integrations.md (pip install 'bandpo[verl]')") from exc

from ..losses import LOG_RATIO_CLAMP
from ..losses.surrogates import per_token_loss
from . import _common

__all__ = [
    "BandPOPolicyLossConfig",
    "DEFAULT_METHOD",
    "MODE_PREFIX",
    "bandpo_policy_loss",
    "check_run_config",
    "install_hooks",
    "mode_names",
]

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
    """Band radius δ > 0 (band methods); ``None``: bandpo's default, 0.05 (the start of a schedule)."""
    delta_schedule: Optional[str] = None
    """``None``/``constant``, ``linear`` or ``cosine``: δ from ``delta`` to ``delta_end`` over ``delta_steps`` verl
    training steps (``trainer.global_steps - 1``, from 0), then ``delta_end``."""
    delta_end: Optional[float] = None
    """δ after ``delta_steps`` steps (linear/cosine schedules only)."""
    delta_steps: Optional[int] = None
    """Length of the δ schedule in verl training steps (linear/cosine schedules only)."""
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
    settings: Optional[dict] = None
    """Other settings of the method by name (``+...policy_loss.settings.<name>=<value>``), for rows of bandpo's method
    table whose settings have no field here; a setting that has one is refused here."""

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
        named = dict(
            divergence=self.divergence, delta=self.delta, eps_low=self.eps_low, eps_high=self.eps_high,
            r_max=self.r_max, max_ratio=_default_cap(method, self.max_ratio), tis_cap=self.tis_cap,
        )
        extra = dict(self.settings) if self.settings is not None else None  # an OmegaConf DictConfig from Hydra
        named = _common.merge_settings(named, extra, "policy_loss.settings", "policy_loss.")
        named = _with_verl_knobs(method, named, self, None)
        settings = _common.method_settings(method, **named)
        return _common.schedule_settings(method, settings, self.delta_schedule, self.delta_end, self.delta_steps)


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


def _default_cap(method: str, max_ratio: Optional[float]) -> Optional[float]:
    return _common.default_cap(method, max_ratio, _DEFAULT_MAX_RATIO)


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


VERL_KNOBS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "clip_cov": (("policy_loss", "clip_cov_ratio", "cov_fraction"), ("policy_loss", "clip_cov_lb", "cov_low"),
                 ("policy_loss", "clip_cov_ub", "cov_high")),
    "kl_cov": (("policy_loss", "kl_cov_ratio", "cov_fraction"), ("policy_loss", "ppo_kl_coef", "kl_cov_coef")),
    "dro": (("policy_loss", "dro_beta", "dro_beta"),),
    "sapo": (("actor", "tau_pos", "tau_pos"), ("actor", "tau_neg", "tau_neg")),
}
"""verl's own knobs of a surrogate (surrogate -> (config, verl's field, bandpo's setting)): a BandPO mode of that
surrogate reads them where they differ from verl's defaults (which are bandpo's), so ``policy_loss.dro_beta=0.1``
or ``actor.tau_pos=2.0`` set ``bandpo_dro``/``bandpo_sapo`` as they set verl's ``dro``/``sapo``."""

_VERL_DEFAULTS = {"policy_loss": _field_defaults(PolicyLossConfig), "actor": _field_defaults(ActorConfig)}


def _get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)


def _with_verl_knobs(method: str, settings: dict[str, Any], policy_cfg: Any, actor_cfg: Any) -> dict[str, Any]:
    """``settings`` plus the values of verl's knobs of ``method``'s surrogate (:data:`VERL_KNOBS`) that differ from
    verl's defaults; a one-line ValueError when the same setting is also given as a BandPO setting with another value.
    A config given as None is not read (at config time only the policy-loss config is known)."""
    knobs = VERL_KNOBS.get(_common.method_spec(method).surrogate, ())
    out = dict(settings)
    for where, name, setting in knobs:
        value = _get(policy_cfg if where == "policy_loss" else actor_cfg, name)
        if value is None or value == _VERL_DEFAULTS[where].get(name):
            continue
        given = out.get(setting)
        if given is not None and given != value:
            prefix = "actor_rollout_ref.actor." + ("policy_loss." if where == "policy_loss" else "")
            raise ValueError(
                f"method {method!r}: verl's {prefix}{name}={value!r} and BandPO's setting {setting}={given!r} "
                f"disagree; set one of them"
            )
        out[setting] = value
    return out


def _settings_from(config: Any, loss_mode: str) -> tuple[str, dict[str, Any], Optional[float]]:
    """(method, settings, dual clip c) from verl's actor config (stock or BandPO policy-loss config)."""
    if config is None:
        raise ValueError("the BandPO policy loss needs verl's actor config (config=...), got None")
    policy_cfg = config.get("policy_loss", None) if hasattr(config, "get") else getattr(config, "policy_loss", None)
    if isinstance(policy_cfg, BandPOPolicyLossConfig):
        method = _method_for_mode(loss_mode, policy_cfg.method)
        settings = policy_cfg.bandpo_settings(method)
        settings = _with_verl_knobs(method, settings, None, config)  # the actor's knobs (sapo's tau)
        settings = _uncapped_if_mask(method, settings)
    else:
        get = policy_cfg.get if policy_cfg is not None and hasattr(policy_cfg, "get") else (lambda k, d=None: d)
        method = _method_for_mode(loss_mode, get("method", None))
        keys = ("divergence", "delta", "eps_low", "eps_high", "r_max", "tis_cap")
        raw = {k: get(k, None) for k in keys}
        raw["max_ratio"] = get("max_ratio", _DEFAULT_MAX_RATIO)
        _common.check_cap_and_dual_clip(raw["max_ratio"], None, prefix="policy_loss.")
        raw["max_ratio"] = _default_cap(method, raw["max_ratio"])
        raw = _with_verl_knobs(method, raw, policy_cfg, config)
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
    step = _step_for(settings)
    lower, upper = _common.bounds(old, method, step=step, **settings)
    spec = _common.method_spec(method, **settings)
    form, tis_cap = spec.surrogate, spec.tis_cap
    if form in ("clip", "mask"):
        if form == "mask":
            c = None  # DPPO has no dual clip
        ratio = torch.exp(torch.clamp(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        per_token = _common.surrogate(
            ratio, adv, lower.to(ratio.dtype), upper.to(ratio.dtype), dual_clip=c, form=form, tis_cap=tis_cap
        )
    else:  # a form of bandpo.losses.surrogates (GSPO, CISPO, SAPO, GMPO, Clip-Cov, ...): no dual clip
        c = None
        per_token = per_token_loss(
            form, logp, old, adv, valid, lower, upper, settings=spec.surrogate_settings, step=step,
            log_ratio_clamp=LOG_RATIO_CLAMP,
        )
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    per_token = torch.where(valid, per_token, zero)
    global_batch_info = dict(config.get("global_batch_info", None) or {}) if hasattr(config, "get") else {}
    loss = agg_loss(loss_mat=per_token, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info)

    metric_form = form if form == "mask" else "clip"  # other forms: bandpo.policy_loss's metrics (no dual clip)
    ours = _common.band_metrics(logp, old, adv, valid, lower, upper, dual_clip=c, form=metric_form, tis_cap=tis_cap)
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


_STEP: "contextvars.ContextVar[Optional[int]]" = contextvars.ContextVar("bandpo_verl_step", default=None)
"""verl's training step of the micro-batch whose loss is being computed (set by the wrapped ``ppo_loss``)."""


def _step_for(settings: dict[str, Any]) -> Optional[int]:
    step = _STEP.get()
    if step is None and any(callable(v) for v in settings.values()):
        raise ValueError(
            "a BandPO delta schedule needs verl's training step, but the batch reaching the loss carries no "
            "'global_steps' (verl's trainer tags its batches with it; use a fixed delta otherwise)"
        )
    return step


def _global_step_of(data: Any) -> Optional[int]:
    """``global_steps - 1`` of a verl micro-batch (``TensorDict`` non-tensor data; one value or one per sample)."""
    try:
        from verl.utils import tensordict_utils as tu

        raw = tu.get(data, "global_steps", default=None)
    except (AttributeError, KeyError, TypeError):  # not a TensorDict
        return None
    if raw is None:
        return None
    values = [int(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw]) if v is not None and int(v) >= 1]
    return max(values) - 1 if values else None


def _with_step(ppo_loss: Callable[..., Any]) -> Callable[..., Any]:
    """verl's worker loss entry, with the micro-batch's training step visible to the BandPO modes."""
    if getattr(ppo_loss, "_bandpo_step", False):
        return ppo_loss

    @functools.wraps(ppo_loss)
    def wrapped(config, model_output, data, *args, **kwargs):
        token = _STEP.set(_global_step_of(data))
        try:
            return ppo_loss(config, model_output, data, *args, **kwargs)
        finally:
            _STEP.reset(token)

    wrapped._bandpo_step = True
    return wrapped


def _loss_mode_of(config: Any) -> Optional[str]:
    try:
        return config.actor_rollout_ref.actor.policy_loss.loss_mode
    except (AttributeError, KeyError):
        return None


def check_run_config(config: Any) -> None:
    """One-line ValueErrors for a verl run config (``DictConfig`` of ``ppo_trainer``) that a BandPO mode cannot run.

    Checked: a ``bandpo*`` ``loss_mode`` that is not a registered mode (an unknown method id), and a BandPO mode with
    ``algorithm.rollout_correction.bypass_mode=true`` (verl would replace the mode by its ``bypass_mode`` loss).
    Other loss modes pass unchecked. Runs inside ``verl.utils.config.validate_config`` once this module is imported.
    """
    mode = _loss_mode_of(config)
    if not (isinstance(mode, str) and mode.startswith(MODE_PREFIX)):
        return
    if mode not in POLICY_LOSS_REGISTRY:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={mode!r} is no BandPO mode; known: {', '.join(mode_names())}"
        )
    try:
        bypass = bool(config.algorithm.rollout_correction.bypass_mode)
    except (AttributeError, KeyError):
        bypass = False
    if bypass:
        raise ValueError(
            f"algorithm.rollout_correction.bypass_mode=true makes verl replace loss_mode={mode!r} by its own "
            "'bypass_mode' loss; set bypass_mode=false to train with BandPO (verl's rollout_is_weights still apply)"
        )


def _checked_validate(validate_config: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(validate_config, "_bandpo_checked", False):
        return validate_config

    @functools.wraps(validate_config)
    def wrapped(config, *args, **kwargs):
        check_run_config(config)
        return validate_config(config, *args, **kwargs)

    wrapped._bandpo_checked = True
    return wrapped


def _refusing_bypass(apply_bypass_mode: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(apply_bypass_mode, "_bandpo_checked", False):
        return apply_bypass_mode

    @functools.wraps(apply_bypass_mode)
    def wrapped(batch, rollout_corr_config=None, policy_loss_config=None, *args, **kwargs):
        mode = policy_loss_config.get("loss_mode", None) if policy_loss_config is not None else None
        if isinstance(mode, str) and mode.startswith(MODE_PREFIX):
            raise ValueError(
                f"algorithm.rollout_correction.bypass_mode=true would replace loss_mode={mode!r} by verl's "
                "'bypass_mode' loss; set bypass_mode=false to train with BandPO"
            )
        return apply_bypass_mode(batch, rollout_corr_config, policy_loss_config, *args, **kwargs)

    wrapped._bandpo_checked = True
    return wrapped


def install_hooks() -> None:
    """Wrap verl's ``validate_config``, ``apply_bypass_mode`` and worker ``ppo_loss`` (idempotent; see the module
    docstring). A module that cannot be imported in this environment is left alone."""
    import importlib

    for module, name, wrap in (
        ("verl.utils.config", "validate_config", _checked_validate),
        ("verl.trainer.ppo.rollout_corr_helper", "apply_bypass_mode", _refusing_bypass),
        ("verl.workers.utils.losses", "ppo_loss", _with_step),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # pragma: no cover - depends on what verl's optional dependencies provide
            continue
        setattr(mod, name, wrap(getattr(mod, name)))


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
install_hooks()
