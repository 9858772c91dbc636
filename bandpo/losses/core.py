"""Clipped policy-gradient losses: BandPO and its baselines as pure functions of (B, T) tensors.

For token t of sequence b, with old probability p = exp(old_logp), ratio r = exp(logp - old_logp) and
advantage A, every method here is the PPO surrogate with a per-token ratio interval [lower, upper]:

    ℓ = max(-A·r, -A·clip(r, lower, upper))                       (PPO, Schulman et al. 2017)
    ℓ = min(ℓ, -A·c)   where A < 0, when dual-clip c > 1 is on    (Ye et al. 2020, arXiv 1912.09729)

and the methods differ only in where the interval comes from (a registry, :func:`list_bounds_methods`):

* ``clip``: [1 - ε_low, 1 + ε_high]; PPO/GRPO with 0.2/0.2, Clip-Higher/DAPO with 0.2/0.28 (arXiv 2503.14476).
* ``dcpo``: DCPO's dynamic adaptive clipping (arXiv 2509.02333), with q = p:
  lower = ½ + ½·sqrt(max(1 - 4ε_low/q, 0)), upper = min(½ + ½·sqrt(1 + 4ε_high/q), r_max = 10).
* ``band``: BandPO's Band_{f,δ}(p) (arXiv 2603.04918): the ratios r ∈ [0, 1/p] with
  g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p)) <= δ, from :func:`bandpo.band`.

``max_ratio`` caps every method's upper bound (the paper trains BandPO with 10). The per-token losses are
reduced by :func:`aggregate`. Bounds never carry gradient. Every metric is a detached 0-d tensor (no host
sync); ``docs/metrics.md`` defines each key.
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

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "BUCKET_EDGES",
    "BUCKET_NAMES",
    "BandBounds",
    "BoundsMethod",
    "ClipBounds",
    "DCPOBounds",
    "LOG_RATIO_CLAMP",
    "LossConfig",
    "METRIC_KEYS",
    "aggregate",
    "aggregation_denominator",
    "get_bounds_method",
    "list_aggregations",
    "list_bounds_methods",
    "policy_loss",
    "register_bounds_method",
    "unregister_bounds_method",
]

LOG_RATIO_CLAMP = 20.0
"""log r is clamped to [-20, 20] before exp (as verl does): r ∈ [2.1e-9, 4.9e8], finite in every float dtype
we compute in. Beyond the clamp the gradient is 0 (the token is that far off-policy)."""

_RATIO_MAX = math.exp(LOG_RATIO_CLAMP)

BUCKET_EDGES = (0.01, 0.1, 0.5)
"""Old-probability bucket edges of the per-bucket diagnostics: [0, 0.01), [0.01, 0.1), [0.1, 0.5), [0.5, 1]."""

BUCKET_NAMES = ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1")
"""Bucket labels used in metric keys, in the order of :data:`BUCKET_EDGES`."""

Number = Union[int, float]


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregation:
    """A reduction of a (B, T) per-token loss to a scalar, written as numerator / denominator.

    Splitting it this way makes gradient accumulation exact: pass the whole batch's denominator
    (:func:`aggregation_denominator`) to every micro-batch and the micro-batch losses *sum* to the
    whole-batch loss, for every mode.
    """

    name: str
    """Registry key, e.g. ``"token-mean"``."""
    numerator: Callable[[Tensor, Tensor], Tensor]
    """(loss_mat (B, T) with masked entries already 0, mask (B, T) float) -> 0-d tensor."""
    denominator: Callable[[Tensor], Tensor]
    """mask (B, T) float -> 0-d tensor (a count; may be 0 for an all-masked batch)."""
    formula: str
    """The reduction in one line."""


def _seq_mean_numerator(loss_mat: Tensor, mask: Tensor) -> Tensor:
    n = mask.sum(-1)
    return (loss_mat.sum(-1) / n.clamp(min=1)).sum()


def _nonempty_sequences(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype).sum()


AGGREGATIONS: dict[str, Aggregation] = {
    a.name: a
    for a in (
        Aggregation(
            "token-mean",
            lambda loss, m: loss.sum(),
            lambda m: m.sum(),
            "Σ_bt m·ℓ / Σ_bt m (every valid token weighs the same; DAPO)",
        ),
        Aggregation(
            "seq-mean-token-mean",
            _seq_mean_numerator,
            _nonempty_sequences,
            "mean over sequences with >= 1 valid token of (Σ_t m·ℓ / Σ_t m) (GRPO; the BandPO paper's mode)",
        ),
        Aggregation(
            "seq-mean-token-sum",
            lambda loss, m: loss.sum(),
            _nonempty_sequences,
            "Σ_bt m·ℓ / #(sequences with >= 1 valid token)",
        ),
        Aggregation(
            "seq-mean-token-sum-norm",
            lambda loss, m: loss.sum(),
            lambda m: torch.full((), m.numel(), dtype=m.dtype, device=m.device),
            "Σ_bt m·ℓ / (B·T), T the padded length (Dr. GRPO, arXiv 2503.20783)",
        ),
    )
}


def list_aggregations() -> list[str]:
    """Names of the aggregation modes, sorted."""
    return sorted(AGGREGATIONS)


def _get_aggregation(agg: str) -> Aggregation:
    if not isinstance(agg, str) or agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; known aggregations: {', '.join(list_aggregations())}")
    return AGGREGATIONS[agg]


def _check_loss_mask(loss_mat: Tensor, mask: Tensor) -> None:
    if not isinstance(loss_mat, Tensor) or not isinstance(mask, Tensor):
        raise ValueError("loss_mat and mask must be torch.Tensors")
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(
            f"loss_mat and mask must both be (B, T); got {tuple(loss_mat.shape)} and {tuple(mask.shape)}"
        )


def aggregation_denominator(mask: Tensor, agg: str = "token-mean") -> Tensor:
    """The denominator of ``agg`` for a (whole) batch: valid tokens, non-empty sequences, or B·T.

    Compute it once on the whole batch and pass it as ``denominator`` to :func:`aggregate` or
    :func:`policy_loss` for each micro-batch: the micro-batch losses then sum to the whole-batch loss.

    Args:
        mask: (B, T) bool or 0/1 tensor, True/1 for valid tokens.
        agg: an aggregation name (:func:`list_aggregations`).

    Returns:
        0-d float32 tensor on ``mask``'s device (no host sync).
    """
    a = _get_aggregation(agg)
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a (B, T) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    return a.denominator((mask != 0).to(torch.float32))


def aggregate(
    loss_mat: Tensor, mask: Tensor, agg: str = "token-mean", *, denominator: "Number | Tensor | None" = None
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the valid tokens.

    Modes (``m`` the mask, ℓ the per-token loss):

    * ``token-mean``: Σ m·ℓ / Σ m.
    * ``seq-mean-token-mean``: the mean over sequences that have >= 1 valid token of Σ_t m·ℓ / Σ_t m.
    * ``seq-mean-token-sum``: Σ m·ℓ / #(sequences with >= 1 valid token).
    * ``seq-mean-token-sum-norm`` (Dr. GRPO): Σ m·ℓ / (B·T), T = ``loss_mat.shape[1]``.

    Masked entries are selected away (``torch.where``), so NaN or inf there has no effect on the value or the
    gradient. An all-masked batch gives 0 (the denominator is clamped at 1).

    Micro-batches: split the batch along B and pass ``denominator=aggregation_denominator(whole_mask, agg)``
    to each part; the parts then sum to the whole for every mode. Without it, the plain mean of equal-size
    micro-batch losses equals the whole-batch loss only for ``seq-mean-token-sum-norm`` (same T), and for the
    two ``seq-mean`` modes when every sequence has a valid token; ``token-mean`` needs weights proportional
    to each part's valid-token count.

    Args:
        loss_mat: (B, T) floating tensor.
        mask: (B, T) bool or 0/1 tensor.
        agg: mode name (:func:`list_aggregations`).
        denominator: optional positive number or 0-d tensor replacing the batch's own denominator.

    Returns:
        0-d tensor in ``loss_mat``'s dtype.
    """
    a = _get_aggregation(agg)
    _check_loss_mask(loss_mat, mask)
    valid = mask != 0
    m = valid.to(loss_mat.dtype)
    num = a.numerator(torch.where(valid, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device)), m)
    if denominator is None:
        den = a.denominator(m).clamp(min=1)
    elif isinstance(denominator, Tensor):
        den = denominator.to(loss_mat.dtype)
    else:
        if isinstance(denominator, bool) or not isinstance(denominator, numbers.Real):
            raise ValueError(f"denominator must be a positive number or a tensor, got {denominator!r}")
        if not (math.isfinite(denominator) and denominator > 0):
            raise ValueError(f"denominator must be finite and > 0, got {denominator!r}")
        den = float(denominator)
    return num / den


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class LossConfig:
    """Hyperparameters of :func:`policy_loss`, validated once on construction.

    Every field is range-checked even when the chosen method does not use it (``delta`` under ``clip``, the
    eps pair under ``band``): a typo fails loudly, and unused values are then ignored.
    """

    method: str = "band"
    """Bounds method: a name from :func:`list_bounds_methods` (``band``, ``clip``, ``dcpo``)."""
    divergence: "str | Divergence" = "kl"
    """f-divergence of the band (``band`` only): a name from :func:`bandpo.list_divergences` or a Divergence."""
    delta: float = 0.05
    """Trust-region radius δ > 0 of the band (``band`` only); a Python number (the band's cached fast path)."""
    eps_low: Optional[float] = None
    """ε_low in [0, 1]; ``None`` takes the method's default (clip 0.2, dcpo 0.16, band: unused)."""
    eps_high: Optional[float] = None
    """ε_high >= 0; ``None`` takes the method's default (clip 0.28, dcpo 0.2, band: unused)."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c > 1 for tokens with A < 0 (the paper uses 10); ``None`` turns it off."""
    max_ratio: Optional[float] = None
    """Cap >= 1 on every method's upper bound (the paper trains BandPO with 10); ``None``: no cap."""
    agg: str = "token-mean"
    """Aggregation mode: a name from :func:`list_aggregations`."""

    def __post_init__(self) -> None:
        get_bounds_method(self.method)  # ValueError listing the known methods
        get_divergence(self.divergence)  # ValueError listing the known names
        _get_aggregation(self.agg)
        if not _is_real(self.delta) or not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta must be a finite number > 0, got {self.delta!r}")
        if self.eps_low is not None and not (_is_real(self.eps_low) and 0 <= self.eps_low <= 1):
            raise ValueError(f"eps_low must be a number in [0, 1] (lower = 1 - eps_low >= 0), got {self.eps_low!r}")
        if self.eps_high is not None and not (
            _is_real(self.eps_high) and math.isfinite(self.eps_high) and self.eps_high >= 0
        ):
            raise ValueError(f"eps_high must be a finite number >= 0, got {self.eps_high!r}")
        if self.dual_clip is not None and not (
            _is_real(self.dual_clip) and math.isfinite(self.dual_clip) and self.dual_clip > 1
        ):
            raise ValueError(f"dual_clip must be None or a finite number > 1 (e.g. 3 or 10), got {self.dual_clip!r}")
        if self.max_ratio is not None and not (
            _is_real(self.max_ratio) and math.isfinite(self.max_ratio) and self.max_ratio >= 1
        ):
            raise ValueError(f"max_ratio must be None or a finite number >= 1 (e.g. 10), got {self.max_ratio!r}")

    @property
    def eps(self) -> "tuple[Optional[float], Optional[float]]":
        """(eps_low, eps_high) after the method's defaults are filled in (``None`` where the method has none)."""
        default_low, default_high = get_bounds_method(self.method).eps_defaults
        eps_low = float(self.eps_low) if self.eps_low is not None else default_low
        eps_high = float(self.eps_high) if self.eps_high is not None else default_high
        return eps_low, eps_high


# ----------------------------------------------------------------------------------------------------------
# Bounds methods
# ----------------------------------------------------------------------------------------------------------


class BoundsMethod(Protocol):
    """What the registry holds: a named rule old_logp -> (lower, upper), computed without gradient."""

    name: str
    eps_defaults: "tuple[Optional[float], Optional[float]]"
    description: str

    def bounds(self, old_logp: Tensor, cfg: LossConfig) -> "tuple[Tensor, Tensor]":
        """(lower, upper), each shaped, typed and placed like ``old_logp`` (finite values <= 0)."""
        ...


@dataclass(frozen=True)
class ClipBounds:
    """Fixed ratio interval [1 - ε_low, 1 + ε_high] (PPO; Clip-Higher/DAPO with 0.2/0.28)."""

    name: str = "clip"
    eps_defaults: "tuple[Optional[float], Optional[float]]" = (0.2, 0.28)
    description: str = "[1 - eps_low, 1 + eps_high]; PPO/GRPO 0.2/0.2, Clip-Higher/DAPO 0.2/0.28 (default)"

    def bounds(self, old_logp: Tensor, cfg: LossConfig) -> "tuple[Tensor, Tensor]":
        eps_low, eps_high = cfg.eps
        return torch.full_like(old_logp, 1 - eps_low), torch.full_like(old_logp, 1 + eps_high)


@dataclass(frozen=True)
class DCPOBounds:
    """DCPO's dynamic adaptive clipping (arXiv 2509.02333), q = p = exp(old_logp):

        upper = min(½ + ½·sqrt(1 + 4 ε_high / q), r_max),   lower = ½ + ½·sqrt(max(1 - 4 ε_low / q, 0)).

    E.g. with 0.16/0.2: p = 0.08 gives [0.5, (1 + √11)/2 = 2.158], p = 1 gives [0.8, (1 + √1.8)/2 = 1.1708].
    Computed in float64 with 4ε/q = exp(log 4ε - old_logp), which overflows to inf (upper -> r_max,
    lower -> ½) rather than dividing by an underflowed q.
    """

    name: str = "dcpo"
    eps_defaults: "tuple[Optional[float], Optional[float]]" = (0.16, 0.2)
    description: str = "DCPO dynamic adaptive clipping, defaults eps 0.16/0.2, upper capped at r_max = 10"
    r_max: float = 10.0
    """DCPO's own cap on the upper bound (part of the method; ``max_ratio`` applies on top)."""

    def bounds(self, old_logp: Tensor, cfg: LossConfig) -> "tuple[Tensor, Tensor]":
        eps_low, eps_high = cfg.eps
        logp = old_logp.to(torch.float64).clamp(max=0.0)

        def four_eps_over_q(eps: float) -> Tensor:
            return torch.exp((math.log(4 * eps) if eps > 0 else -math.inf) - logp)

        upper = (0.5 + 0.5 * torch.sqrt(1 + four_eps_over_q(eps_high))).clamp(max=self.r_max)
        lower = 0.5 + 0.5 * torch.sqrt((1 - four_eps_over_q(eps_low)).clamp(min=0))
        return lower.to(old_logp.dtype), upper.to(old_logp.dtype)


@dataclass(frozen=True)
class BandBounds:
    """BandPO's Band_{f,δ}(p) = {r ∈ [0, 1/p] : p f(r) + (1-p) f((1-pr)/(1-p)) <= δ} via :func:`bandpo.band`."""

    name: str = "band"
    eps_defaults: "tuple[Optional[float], Optional[float]]" = (None, None)
    description: str = "f-divergence band of radius delta (bandpo.band); eps unused"

    def bounds(self, old_logp: Tensor, cfg: LossConfig) -> "tuple[Tensor, Tensor]":
        # Inputs were validated once by policy_loss: skip band's own host sync.
        return band(old_logp, cfg.delta, cfg.divergence, validate=False)


_BOUNDS: dict[str, BoundsMethod] = {}


def register_bounds_method(method: BoundsMethod, *, overwrite: bool = False) -> BoundsMethod:
    """Add a bounds method to the registry under ``method.name``.

    It needs ``name``, ``eps_defaults`` (a pair, ``None`` where unused), ``description`` and
    ``bounds(old_logp, cfg) -> (lower, upper)`` with 0 <= lower <= 1 <= upper, shaped and typed like
    ``old_logp``; :func:`policy_loss` calls it under ``torch.no_grad``.
    """
    for attr in ("name", "eps_defaults", "description", "bounds"):
        if not hasattr(method, attr):
            raise ValueError(f"a bounds method needs a {attr!r} attribute; {method!r} has none")
    if not isinstance(method.name, str) or not method.name:
        raise ValueError(f"a bounds method's name must be a non-empty string, got {method.name!r}")
    if method.name in _BOUNDS and not overwrite:
        raise ValueError(f"bounds method {method.name!r} is already registered (pass overwrite=True to replace it)")
    _BOUNDS[method.name] = method
    return method


def unregister_bounds_method(name: str) -> None:
    """Remove a registered bounds method (ValueError if it is not registered)."""
    get_bounds_method(name)
    del _BOUNDS[name]


def list_bounds_methods() -> list[str]:
    """Names of the registered bounds methods, sorted."""
    return sorted(_BOUNDS)


def get_bounds_method(method: str) -> BoundsMethod:
    """The registered bounds method called ``method``; ValueError listing the known names otherwise."""
    if not isinstance(method, str) or method not in _BOUNDS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(list_bounds_methods())}")
    return _BOUNDS[method]


for _m in (ClipBounds(), DCPOBounds(), BandBounds()):
    register_bounds_method(_m)


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

_METRIC_SCALARS = (
    "num_tokens",
    "ratio/mean",
    "ratio/min",
    "ratio/max",
    "ppo_kl",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "dual_clip_fraction",
    "bounds/lower_mean",
    "bounds/upper_mean",
    "band_width/mean",
)
_BUCKET_STATS = ("tokens", "clip_low_mean", "clip_high_mean", "clip_region_mean", "band_width_mean")

METRIC_KEYS = _METRIC_SCALARS + tuple(f"bucket/{b}/{s}" for b in BUCKET_NAMES for s in _BUCKET_STATS)
"""Every key of the metrics dict :func:`policy_loss` returns, always all of them (docs/metrics.md)."""


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    method: str = "band",
    divergence: "str | Divergence" = "kl",
    delta: float = 0.05,
    eps_low: Optional[float] = None,
    eps_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    max_ratio: Optional[float] = None,
    agg: str = "token-mean",
    denominator: "Number | Tensor | None" = None,
    validate: bool = True,
) -> "tuple[Tensor, dict[str, Tensor]]":
    """Clipped policy-gradient loss with per-token bounds from ``method``, and its diagnostics.

    Per token (r = exp(clamp(logp - old_logp, -20, 20)), [lower, upper] from the bounds method, upper capped at
    ``max_ratio``):

        ℓ = max(-A·r, -A·clip(r, lower, upper));   if dual_clip = c and A < 0:  ℓ = min(ℓ, -A·c),

    then ``aggregate(ℓ, mask, agg)``. BandPO as trained in the paper (arXiv 2603.04918):
    ``method="band", divergence="kl", delta=0.05, max_ratio=10, dual_clip=10, agg="seq-mean-token-mean"``.
    Baselines: GRPO ``method="clip", eps_low=0.2, eps_high=0.2``; Clip-Higher/DAPO ``method="clip"``
    (0.2/0.28 defaults); DCPO ``method="dcpo"`` (0.16/0.2 defaults, r_max 10).

    Args:
        logp: (B, T) log π_θ of the sampled tokens, differentiable.
        old_logp: (B, T) log π_old of the same tokens (the bounds depend on it; no gradient flows to it).
        adv: (B, T) advantages. A per-sequence advantage must be expanded explicitly (no broadcasting).
        mask: (B, T) bool or 0/1; masked tokens have no effect on the loss, its gradient or the metrics,
            whatever they hold (NaN included).
        method: bounds method (:func:`list_bounds_methods`).
        divergence, delta: the band's f-divergence and radius (``band`` only).
        eps_low, eps_high: ``None`` takes the method's default (clip 0.2/0.28, dcpo 0.16/0.2).
        dual_clip: c > 1 or ``None``.
        max_ratio: cap >= 1 on the upper bound, or ``None``.
        agg: aggregation mode (:func:`list_aggregations`).
        denominator: passed to :func:`aggregate` (exact gradient accumulation over micro-batches).
        validate: check the valid tokens' values (finite; log-probabilities <= 0; mask 0/1) at the cost of
            one host-device sync. ``False`` skips it for hot loops (bad values then propagate silently).
            Shapes, dtypes and hyperparameters are always checked (no sync).

    Returns:
        ``(loss, metrics)``: ``loss`` a 0-d tensor in the compute dtype (float32 for bfloat16/float16/float32
        inputs, float64 if any input is float64); ``metrics`` a dict of detached 0-d tensors, keys
        :data:`METRIC_KEYS` (docs/metrics.md). Reading a metric (``.item()``) is what syncs, not computing it.

    Raises:
        ValueError: shapes or dtypes mismatch, unknown method/divergence/aggregation, a hyperparameter out of
            range, or (``validate=True``) unusable values at valid tokens.
    """
    cfg = LossConfig(
        method=method,
        divergence=divergence,
        delta=delta,
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip=dual_clip,
        max_ratio=max_ratio,
        agg=agg,
    )
    _check_shapes(logp, old_logp, adv, mask)
    valid = mask != 0 if mask.dtype != torch.bool else mask
    if validate:
        _check_values(logp, old_logp, adv, mask, valid)

    cdtype = torch.promote_types(torch.promote_types(logp.dtype, old_logp.dtype), torch.promote_types(adv.dtype, torch.float32))
    zero = torch.zeros((), dtype=cdtype, device=logp.device)
    # Select masked tokens away *before* any arithmetic (the "double where"): their garbage never reaches a
    # gradient, and old_logp = 0 there keeps every bounds rule well defined.
    logp_c = torch.where(valid, logp.to(cdtype), zero)
    old_c = torch.where(valid, old_logp.detach().to(cdtype), zero).clamp(max=0)
    adv_c = torch.where(valid, adv.detach().to(cdtype), zero)

    log_ratio = torch.clamp(logp_c - old_c, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)

    with torch.no_grad():
        lower, upper = get_bounds_method(cfg.method).bounds(old_c, cfg)
        lower, upper = lower.to(cdtype), upper.to(cdtype)
        # r <= e^20 after the clamp, so an upper bound above e^20 acts exactly like e^20: capping there changes
        # no loss value or gradient and keeps the band-width metrics finite (the band's 1/p can overflow).
        cap = _RATIO_MAX if cfg.max_ratio is None else min(float(cfg.max_ratio), _RATIO_MAX)
        upper = upper.clamp(max=cap)

    loss_unclipped = -adv_c * ratio
    clipped_ratio = torch.clamp(ratio, lower, upper)
    loss_clipped = -adv_c * clipped_ratio
    per_token = torch.maximum(loss_unclipped, loss_clipped)
    if cfg.dual_clip is not None:
        per_token_dual = torch.where(adv_c < 0, torch.minimum(per_token, -adv_c * cfg.dual_clip), per_token)
    else:
        per_token_dual = per_token
    loss = aggregate(per_token_dual, valid, cfg.agg, denominator=denominator)

    with torch.no_grad():
        metrics = _metrics(valid, old_c, adv_c, log_ratio.detach(), ratio.detach(), lower, upper, per_token.detach(), cfg)
    return loss, metrics


def _metrics(
    valid: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    log_ratio: Tensor,
    ratio: Tensor,
    lower: Tensor,
    upper: Tensor,
    per_token: Tensor,
    cfg: LossConfig,
) -> "dict[str, Tensor]":
    """All diagnostics as detached 0-d tensors; means are over valid tokens (0 when there are none)."""
    dtype = ratio.dtype
    v = valid.to(dtype)
    n = v.sum()
    n1 = n.clamp(min=1)
    clip_low = valid & (adv < 0) & (ratio < lower)
    clip_high = valid & (adv > 0) & (ratio > upper)
    region = clip_low | clip_high
    width = upper - lower
    if cfg.dual_clip is not None:
        dual = valid & (adv < 0) & (per_token > -adv * cfg.dual_clip)
    else:
        dual = torch.zeros_like(valid)

    def mean(x: Tensor) -> Tensor:
        return (x.to(dtype) * v).sum() / n1

    one = torch.ones((), dtype=dtype, device=ratio.device)
    out = {
        "num_tokens": n,
        "ratio/mean": mean(ratio),
        "ratio/min": torch.where(n > 0, torch.where(valid, ratio, math.inf).amin(), one),
        "ratio/max": torch.where(n > 0, torch.where(valid, ratio, -math.inf).amax(), one),
        "ppo_kl": mean(-log_ratio),
        "clip_ratio/low_mean": mean(clip_low),
        "clip_ratio/high_mean": mean(clip_high),
        "clip_ratio/region_mean": mean(region),
        "dual_clip_fraction": mean(dual),
        "bounds/lower_mean": mean(lower),
        "bounds/upper_mean": mean(upper),
        "band_width/mean": mean(width),
    }

    # Bucket index 0..3 from log p against log edges (no underflow of p): [0, .01), [.01, .1), [.1, .5), [.5, 1].
    idx = sum((old_logp >= math.log(e)).long() for e in BUCKET_EDGES)
    onehot = (idx.unsqueeze(-1) == torch.arange(len(BUCKET_NAMES), device=idx.device)) & valid.unsqueeze(-1)
    stats = torch.stack([v, clip_low.to(dtype), clip_high.to(dtype), region.to(dtype), width * v], dim=-1)
    sums = torch.einsum("btk,bts->ks", onehot.to(dtype), stats)  # (buckets, stats)
    counts = sums[:, 0]
    means = sums[:, 1:] / counts.clamp(min=1).unsqueeze(-1)
    for k, name in enumerate(BUCKET_NAMES):
        out[f"bucket/{name}/tokens"] = counts[k]
        for j, stat in enumerate(_BUCKET_STATS[1:]):
            out[f"bucket/{name}/{stat}"] = means[k, j]
    return {key: value.detach() for key, value in out.items()}
