"""The clipped policy-gradient surrogate and :func:`policy_loss`: BandPO and its baselines as pure functions
of (B, T) tensors.

For token t of sequence b, with old probability p = exp(old_logp), ratio r = exp(clamp(logp - old_logp, ±20))
and advantage A, every method is the PPO surrogate (arXiv 1707.06347) with a per-token interval [lower, upper]:

    ℓ = max(-A·r, -A·clip(r, lower, upper))
    ℓ = min(ℓ, -A·c)   where A < 0, when dual-clip c > 1 is on    (arXiv 1912.09729)

The methods differ only in where the interval comes from (:mod:`bandpo.losses.methods`), with the upper bound
capped at the method's ``max_ratio`` and at e^20 (r never exceeds it). :func:`bounds` returns exactly that
interval; :func:`surrogate` is the per-token loss for frameworks that aggregate themselves.

A method with ``surrogate="mask"`` (DPPO, arXiv 2602.04879: ``dppo_kl``, ``dppo_tv``) uses the same interval as a
trust region and drops, instead of clipping, the tokens that left it in the direction their advantage pushes:

    keep = not (A > 0 and r > upper  or  A < 0 and r < lower)
    ℓ = keep · (-A · r · sg(min(1, C / r)))        gradient  keep · (-A · min(r, C) · ∇log π)

(C = the method's ``tis_cap``, sg = stop-gradient). The gradient is DPPO's -sg(min(r, C))·A·∇log π; the value is
written so that, inside the region and for r <= C, it equals PPO's -A·r (DPPO's own value, -sg(min(r, C))·A·log π,
differs from it by a term without gradient). The dual clip does not apply to mask methods (it is ignored).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .aggregation import Number, aggregate, aggregate_masked, get_aggregation
from .config import LossConfig, _check_dual_clip
from .correction import RolloutCorrection, check_correction, rollout_weights
from .methods import SURROGATES, Method, _check_tis_cap, resolve_method
from .metrics import METRIC_CHUNK, _metrics_from_parts, _MetricSums, as_float_mask
from .surrogates import SURROGATE_FORMS, SurrogateInputs
from ..operator.bands import _check_logp

__all__ = ["LOG_RATIO_CLAMP", "bounds", "policy_loss", "surrogate"]

LOG_RATIO_CLAMP = 20.0
"""log r is clamped to [-20, 20] before exp (as verl does): r ∈ [2.1e-9, 4.9e8], finite in every float dtype
we compute in. Beyond the clamp the gradient is 0 (the token is that far off-policy)."""

_RATIO_MAX = math.exp(LOG_RATIO_CLAMP)

_DEFAULTS = LossConfig()


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def _interval(spec: Method, old_c: Tensor, step: Optional[int]) -> "tuple[Tensor, Tensor]":
    """(lower, upper) in ``old_c``'s dtype, upper capped at max_ratio and e^20; ``old_c`` already clamped <= 0."""
    with torch.no_grad():
        lower, upper = spec.bounds(old_c, step=step)
        lower, upper = lower.to(old_c.dtype), upper.to(old_c.dtype)
        # r <= e^20 after the clamp, so an upper bound above e^20 acts exactly like e^20: capping there changes
        # no loss value or gradient and keeps the band-width metrics finite (the band's 1/p can overflow).
        cap = _RATIO_MAX if spec.max_ratio is None else min(float(spec.max_ratio), _RATIO_MAX)
        upper = upper.clamp(max=cap)
    return lower, upper


def bounds(
    old_logp: Tensor,
    method: "Union[str, Method, Any]" = _DEFAULTS.method,
    *,
    step: Optional[int] = None,
    validate: bool = True,
    **settings: Any,
) -> "tuple[Tensor, Tensor]":
    """The ratio interval [lower, upper] that :func:`policy_loss` clips each token's ratio to.

    Exactly what the loss uses: the method's bounds rule on old_logp (clamped to <= 0), computed in float32
    for bfloat16/float16/float32 inputs and in float64 for float64 inputs, the upper bound capped at the
    method's ``max_ratio`` and at e^20. No gradient.

    Args:
        old_logp: (B, T) (any shape) log-probabilities of the sampled tokens under the old policy.
        method: a method id (:func:`bandpo.list_methods`), a :class:`~bandpo.losses.Method` or a bounds rule
            (e.g. ``bandpo.losses.Band("tv", 0.1)``).
        step: the training step (needed when a setting is a schedule).
        validate: check that ``old_logp`` holds finite log-probabilities <= 0 (up to rounding), with
            :func:`bandpo.band`'s one-line error, at the cost of one host-device synchronisation; ``False`` skips it
            (as ``band`` does): then a NaN gives NaN bounds and a value above 0 is taken as p = 1.
        settings: fields of the method's bounds rule (``delta``, ``divergence``, ``eps_low``, ``eps_high``,
            ``r_max``) and ``max_ratio``; an unknown one is a ValueError naming the accepted settings.

    Returns:
        ``(lower, upper)``, each shaped like ``old_logp``, in the compute dtype.

    Example (BandPO-KL as in arXiv 2603.04918, δ = 0.05, cap 10)::

        lower, upper = bandpo.bounds(old_logp)                       # method="band_kl"
        lower, upper = bandpo.bounds(old_logp, "band_tv", delta=0.1)
    """
    if not isinstance(old_logp, Tensor) or not old_logp.is_floating_point():
        raise ValueError(f"old_logp must be a floating torch.Tensor, got {getattr(old_logp, 'dtype', type(old_logp).__name__)}")
    if validate:
        _check_logp(old_logp, True)
    spec = resolve_method(method, **settings)
    cdtype = _compute_dtype(old_logp.dtype)
    old_c = old_logp.detach().to(cdtype).clamp(max=0)
    return _interval(spec, old_c, step)


def _check_form(form: str, tis_cap: Optional[float]) -> None:
    if form in SURROGATE_FORMS.names():
        raise ValueError(
            f"form {form!r} needs the log-probabilities and the padding mask, not only the ratio: use "
            "bandpo.losses.surrogates.per_token_loss (or policy_loss) for it; surrogate() computes 'clip' and 'mask'"
        )
    if form not in SURROGATES:
        raise ValueError(f"form must be one of {', '.join(SURROGATES)}, got {form!r}")
    if form == "mask":
        _check_tis_cap(tis_cap)


def _masked(ratio: Tensor, adv: Tensor, lower: Tensor, upper: Tensor, tis_cap: float) -> "tuple[Tensor, Tensor]":
    """DPPO's per-token loss and its keep mask (see the module docstring)."""
    with torch.no_grad():
        keep = ~(((adv > 0) & (ratio > upper)) | ((adv < 0) & (ratio < lower)))
        weight = torch.clamp(tis_cap / ratio, max=1.0) if math.isfinite(tis_cap) else torch.ones_like(ratio)
    per_token = torch.where(keep, -adv * ratio * weight, torch.zeros((), dtype=ratio.dtype, device=ratio.device))
    return per_token, keep


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
    """The per-token surrogate loss (B, T) of a clip or a mask method; no padding mask or aggregation.

    ``form="clip"`` (PPO's pessimistic clip, arXiv 1707.06347, with dual-clip, arXiv 1912.09729):

        ℓ = max(-A·r, -A·clip(r, lower, upper));   ℓ = min(ℓ, -A·c) where A < 0 if dual_clip = c.

    Gradient flows through ``ratio`` only where the unclipped term is active.

    ``form="mask"`` (DPPO, arXiv 2602.04879; ``dual_clip`` is ignored):

        ℓ = keep · (-A·r·sg(min(1, C/r))),   keep = not (A > 0 and r > upper or A < 0 and r < lower),

    whose gradient is keep · (-A·min(r, C)·∇log r), C = ``tis_cap`` (inf: no truncation).

    For frameworks with their own aggregation (verl's ``agg_loss``): ``surrogate(ratio, adv,
    *bandpo.bounds(old_logp, method), form=m.surrogate, tis_cap=m.tis_cap)`` with ``m = resolve_method(method)``.

    Args:
        ratio: (B, T) importance ratio π_θ/π_old (differentiable), > 0.
        adv: (B, T) advantages.
        lower, upper: (B, T) (or broadcastable) ratio bounds, e.g. from :func:`bounds`.
        dual_clip: c > 1, or None (clip form only).
        form: ``"clip"`` or ``"mask"`` (a method's ``surrogate`` field).
        tis_cap: C >= 1 or inf, needed by the mask form (a method's ``tis_cap``).

    Returns:
        (B, T) per-token loss.
    """
    _check_dual_clip(dual_clip)
    _check_form(form, tis_cap)
    if form == "mask":
        return _masked(ratio, adv, lower, upper, float(tis_cap))[0]
    per_token = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lower, upper))
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    return per_token


# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------


def _check_shapes(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor) -> None:
    for name, x in (("logp", logp), ("old_logp", old_logp), ("adv", adv), ("mask", mask)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be a (B, T) tensor of sampled-token log-probabilities, got shape {tuple(logp.shape)}")
    shape = tuple(logp.shape)
    for name, x in (("old_logp", old_logp), ("mask", mask)):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have logp's shape (B, T) = {shape}, got {tuple(x.shape)}")
    if tuple(adv.shape) != shape:
        hint = ""
        if adv.dim() == 1 or (adv.dim() == 2 and adv.shape[-1] == 1):
            hint = "; expand a per-sequence advantage explicitly, e.g. adv.reshape(-1, 1).expand_as(logp)"
        raise ValueError(f"adv must have logp's shape (B, T) = {shape}, got {tuple(adv.shape)}{hint}")
    for name, x in (("logp", logp), ("old_logp", old_logp), ("adv", adv)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if mask.is_complex():
        raise ValueError(f"mask must be bool or hold 0/1 values, got dtype {mask.dtype}")
    devices = {x.device for x in (logp, old_logp, adv, mask)}
    if len(devices) > 1:
        raise ValueError(f"logp, old_logp, adv and mask must be on one device, got {sorted(map(str, devices))}")


def _check_values(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, valid: Tensor) -> None:
    """One host sync: are the valid tokens' values usable? The error path then counts what is wrong."""
    slack = 4 * torch.finfo(torch.float32).eps  # log-probabilities may exceed 0 by rounding, not more
    lp, olp, a = logp.detach(), old_logp.detach(), adv.detach()
    problems = {
        "logp is NaN or infinite": ~torch.isfinite(lp) & valid,
        f"logp > 0 (a log-probability is <= 0; slack {slack:.1e})": (lp > slack) & valid,
        "old_logp is NaN or infinite": ~torch.isfinite(olp) & valid,
        f"old_logp > 0 (a log-probability is <= 0; slack {slack:.1e})": (olp > slack) & valid,
        "adv is NaN or infinite": ~torch.isfinite(a) & valid,
    }
    if mask.dtype != torch.bool:
        problems["mask holds a value other than 0 and 1"] = (mask != 0) & (mask != 1)
    flags = torch.stack([p.any() for p in problems.values()])
    if bool(flags.any()):  # the one host-device synchronisation of a validated call
        found = [f"{int(p.sum())} tokens where {what}" for what, p in problems.items() if bool(p.any())]
        raise ValueError(
            "policy_loss got unusable values at valid (mask = 1) tokens: " + "; ".join(found)
            + ". Masked tokens may hold anything."
        )


# ----------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    method: "Union[str, Method, Any]" = _DEFAULTS.method,
    dual_clip: Optional[float] = _DEFAULTS.dual_clip,
    agg: str = _DEFAULTS.agg,
    denominator: "Number | Tensor | None" = None,
    validate: bool = True,
    step: Optional[int] = None,
    config: Optional[LossConfig] = None,
    rollout_logp: Optional[Tensor] = None,
    correction: "Union[str, RolloutCorrection, None]" = None,
    **settings: Any,
) -> "tuple[Tensor, dict[str, Tensor]]":
    """Clipped policy-gradient loss with per-token bounds from ``method``, and its diagnostics.

    Per token (r = exp(clamp(logp - old_logp, -20, 20)), [lower, upper] = :func:`bounds`):

        ℓ = max(-A·r, -A·clip(r, lower, upper));   if dual_clip = c and A < 0:  ℓ = min(ℓ, -A·c),

    then ``aggregate(ℓ, mask, agg)``. A mask method (``dppo_kl``, ``dppo_tv``: DPPO, arXiv 2602.04879) instead
    drops the tokens outside [lower, upper] on their advantage's side and weights the rest by the truncated
    importance weight, gradient -A·min(r, C)·∇log π (module docstring); ``dual_clip`` is ignored for it. The defaults are BandPO as trained in the paper (arXiv 2603.04918):
    ``method="band_kl"`` (KL band, δ = 0.05, cap 10), ``dual_clip=10``, ``agg="seq-mean-token-mean"``; they are
    :class:`LossConfig`'s defaults. Baselines: ``method="clip"`` (GRPO 0.2/0.2), ``"clip_higher"`` (0.2/0.28),
    ``"dcpo"`` (0.16/0.2, r_max 10).

    Args:
        logp: (B, T) log π_θ of the sampled tokens, differentiable.
        old_logp: (B, T) log π_old of the same tokens (the bounds depend on it; no gradient flows to it).
        adv: (B, T) advantages. A per-sequence advantage must be expanded explicitly (no broadcasting).
        mask: (B, T) bool or 0/1; masked tokens have no effect on the loss, its gradient or the metrics,
            whatever they hold (NaN included).
        method: a method id (:func:`bandpo.list_methods`), a Method or a bounds rule.
        dual_clip: c > 1 or ``None``; ignored by mask methods (DPPO has no dual clip).
        agg: aggregation mode (:func:`bandpo.list_aggregations`).
        denominator: passed to :func:`aggregate` (exact gradient accumulation over micro-batches).
        validate: check the valid tokens' values (finite; log-probabilities <= 0; mask 0/1) at the cost of
            one host-device sync. ``False`` skips it for hot loops (bad values then propagate silently).
            Shapes, dtypes and hyperparameters are always checked (no sync).
        step: the training step (needed when a setting such as ``delta`` is a schedule).
        config: a :class:`LossConfig` replacing ``method``, ``dual_clip``, ``agg`` and ``settings``.
        rollout_logp: (B, T) log π_rollout of the sampled tokens under the behaviour policy that generated them
            (a separate inference engine); needed by, and only with, ``correction``.
        correction: rollout correction (:mod:`bandpo.losses.correction`): a preset id (``tis``, ``seq_tis``,
            ``mis``, ``seq_mis``, ``icepop``) or a :class:`RolloutCorrection`; each token's loss is multiplied by
            its truncated or masked weight π_old/π_rollout (no gradient). Composes with every method.
        settings: the method's settings (``delta=0.1``, ``divergence="tv"``, ``eps_high=0.28``, ``r_max=5``,
            ``max_ratio=...``); an unknown one is a ValueError naming the accepted settings.

    Returns:
        ``(loss, metrics)``: ``loss`` a 0-d tensor in the compute dtype (float32 for bfloat16/float16/float32
        inputs, float64 if any input is float64); ``metrics`` a dict of detached 0-d tensors, keys
        :data:`~bandpo.losses.METRIC_KEYS` (docs/metrics.md). Reading a metric is what syncs, not computing it.

    Raises:
        ValueError: shapes or dtypes mismatch, unknown method/setting/divergence/aggregation, a setting out of
            range, or (``validate=True``) unusable values at valid tokens.
    """
    if config is not None:
        if not isinstance(config, LossConfig):
            raise ValueError(f"config must be a bandpo.LossConfig, got {type(config).__name__}")
        if settings:
            raise ValueError(f"pass the settings in config= or as keywords, not both (got {sorted(settings)})")
        spec, dual_clip, agg = config.method_spec(), config.dual_clip, config.agg
    else:
        spec = resolve_method(method, **settings)
        _check_dual_clip(dual_clip)
    get_aggregation(agg)
    _check_shapes(logp, old_logp, adv, mask)
    valid = mask if mask.dtype == torch.bool else mask != 0
    if validate:
        _check_values(logp, old_logp, adv, mask, valid)
    if correction is not None or rollout_logp is not None:
        correction = check_correction(correction, rollout_logp, logp, valid, validate=validate)

    cdtype = _compute_dtype(logp.dtype, old_logp.dtype, adv.dtype)
    zero = torch.zeros((), dtype=cdtype, device=logp.device)
    # Select masked tokens away *before* any arithmetic (the "double where"): their garbage never reaches a
    # gradient, and old_logp = 0 there keeps every bounds rule well defined.
    old_c = torch.where(valid, old_logp.detach().to(cdtype), zero).clamp_(max=0)
    adv_c = torch.where(valid, adv.detach().to(cdtype), zero)
    if spec.surrogate == "clip" and correction is None:  # the fast path: a hand-written backward, chunked metrics
        lower, upper = _interval(spec, old_c, step)
        per_token, neg_w, metrics = _clip_parts(logp, old_c, adv_c, valid, lower, upper, dual_clip)
        if logp.requires_grad and torch.is_grad_enabled():
            per_token = _ClipGrad.apply(logp, (per_token, adv_c, neg_w))
        loss = aggregate_masked(per_token, as_float_mask(valid, cdtype), agg, denominator=denominator)
        return loss, metrics

    logp_c = torch.where(valid, logp.to(cdtype), zero)
    log_ratio = torch.clamp(logp_c - old_c, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    lower, upper = _interval(spec, old_c, step)

    dual = trunc = None
    if spec.surrogate == "mask":
        per_token, keep = _masked(ratio, adv_c, lower, upper, float(spec.tis_cap))
        with torch.no_grad():
            trunc = keep & (ratio > spec.tis_cap) & (adv_c != 0)
        dual_clip = None
    elif spec.surrogate == "clip":
        per_token = torch.maximum(-adv_c * ratio, -adv_c * torch.clamp(ratio, lower, upper))
    else:  # a form of bandpo.losses.surrogates (no dual clip)
        x = SurrogateInputs(logp_c, log_ratio, ratio, adv_c, valid, lower, upper, step)
        per_token = SURROGATE_FORMS.get(spec.surrogate).loss(x, spec.surrogate_settings)
        dual_clip = None
    if correction is not None:
        per_token = per_token * rollout_weights(old_c, rollout_logp, valid, correction, step=step).to(per_token.dtype)
    if dual_clip is not None:
        floor = -adv_c * dual_clip
        neg = adv_c < 0
        with torch.no_grad():
            dual = neg & (per_token > floor)
        per_token = torch.where(dual, floor, per_token)
    loss = aggregate(per_token, valid, agg, denominator=denominator)
    metrics = _metrics_from_parts(valid, old_c, adv_c, log_ratio.detach(), ratio.detach(), lower, upper, dual, trunc)
    return loss, metrics


def _flag(op, x: Tensor, y, dtype: torch.dtype) -> Tensor:
    """``op(x, y)`` (a comparison) as 0/1 in ``dtype``, written straight into a float tensor (a bool result and
    its conversion cost ~4x more on the CPU)."""
    return op(x, y, out=torch.empty(x.shape, dtype=dtype, device=x.device))


@torch.no_grad()
def _clip_parts(logp, old_c, adv_c, valid, lower, upper, dual_clip) -> "tuple[Tensor, Tensor, dict[str, Tensor]]":
    """(per_token, neg_w, metrics) of the clip form, chunk by chunk (METRIC_CHUNK tokens, so that every temporary
    stays in cache and is reused): the per-token loss, the factor w of its gradient (see :class:`_ClipGrad`),
    and the metrics of docs/metrics.md.

    The value is -A·clip(r, L, U) with L = lower and U = dual_clip (or no bound) where A < 0, L = 0 and
    U = upper where A > 0, and 0 where A = 0: bitwise max(-A·r, -A·clip(r, lower, upper)), then min(·, -A·c)
    where A < 0, because rounding is monotone."""
    cdtype, dev = old_c.dtype, old_c.device
    shape, n = old_c.shape, old_c.numel()
    flat = [t.reshape(-1) for t in (logp.detach(), old_c, adv_c, valid, lower, upper)]
    per_token = torch.empty(n, dtype=cdtype, device=dev)
    neg_w = torch.empty(n, dtype=cdtype, device=dev)
    acc = _MetricSums(cdtype, dev, n)
    no_bound = torch.finfo(cdtype).max  # A < 0 without a dual clip: r <= e^20 never reaches it
    zero = torch.zeros((), dtype=cdtype, device=dev)
    for s in range(0, n, METRIC_CHUNK):
        lp, old, a, v, lo, up = (t[s : s + METRIC_CHUNK] for t in flat)
        vf = as_float_mask(v, cdtype)
        d = torch.where(v, lp.to(cdtype), zero).sub_(old)  # logp - old_logp; 0 at masked tokens
        lr = torch.clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = torch.exp(lr)
        negf, posf = _flag(torch.lt, a, 0.0, cdtype), _flag(torch.gt, a, 0.0, cdtype)
        na = torch.neg(a)
        lo_s = torch.mul(lo, negf)
        up_s = torch.mul(up, posf).add_(negf, alpha=no_bound if dual_clip is None else dual_clip)
        # selected, not multiplied, by the mask: a bounds rule may return anything at masked tokens
        torch.where(v, torch.mul(na, torch.clamp(ratio, lo_s, up_s)), zero, out=per_token[s : s + METRIC_CHUNK])
        # the gradient's share c (see _ClipGrad): 2c = [t1 > t2] + [t1 >= t2] + [lower <= r <= upper]
        t1 = torch.mul(na, ratio)
        t2 = torch.mul(na, torch.clamp(ratio, lo, up))
        two_c = _flag(torch.gt, t1, t2, cdtype).add_(_flag(torch.ge, t1, t2, cdtype))
        two_c.addcmul_(_flag(torch.ge, ratio, lo, cdtype), _flag(torch.le, ratio, up, cdtype))
        keep = _flag(torch.eq, d, lr, cdtype)  # inside the log-ratio clamp (it passes no gradient outside)
        dual_f = None
        if dual_clip is not None:  # held at the floor -A·c: no gradient
            dual_f = _flag(torch.gt, torch.maximum(t1, t2), torch.mul(na, dual_clip), cdtype).mul_(negf)
            keep.mul_(torch.sub(1.0, dual_f))
        torch.mul(two_c, -0.5, out=neg_w[s : s + METRIC_CHUNK]).mul_(ratio).mul_(keep)
        acc.add(vf, old, negf, posf, lr, ratio, lo, up, dual_f, None)
    return per_token.view(shape), neg_w.view(shape), acc.metrics()


class _ClipGrad(torch.autograd.Function):
    """Attaches the clip form's per-token loss (computed by :func:`_clip_parts`) to ``logp`` with a
    hand-written backward: the numbers of autograd's graph of the formula in :func:`policy_loss`'s docstring,
    bitwise, from two saved tensors instead of a graph of ~15 nodes (tests/test_losses.py compares both).

    Per token, that graph's gradient with respect to logp is ((g·(-A))·c)·r where the mask, the log-ratio clamp
    and the dual clip let it through (0 elsewhere), g the incoming gradient and c the share of
    max(-A·r, -A·clip(r, lower, upper)) that reaches r: 1 where -A·r is the larger term or r is inside
    [lower, upper] (torch.clamp passes its gradient there, ends included), 1/2 where the two terms are equal
    otherwise (torch.maximum splits a tie), 0 elsewhere. c·r is exact (c is 0 or a power of two), so
    ((g·(-A))·c)·r = (g·A)·w with w = -(c·r), which the forward pass stores. A is 0 at masked tokens."""

    @staticmethod
    def forward(ctx, logp, parts):
        per_token, adv_c, neg_w = parts
        ctx.save_for_backward(adv_c, neg_w)
        ctx.logp_dtype = logp.dtype
        return per_token

    @staticmethod
    def backward(ctx, grad):
        adv_c, neg_w = ctx.saved_tensors
        return torch.mul(grad, adv_c).mul_(neg_w).to(ctx.logp_dtype), None
