"""Diagnostics of the policy loss: the metric keys, their per-batch values, and their reduction over
micro-batches, optimiser steps and processes (one function, :func:`reduce_metrics`).

Definitions of every key: ``docs/metrics.md``. Per batch, every value is a detached 0-d tensor computed from a
few fused reductions under ``torch.no_grad`` (no host sync): one (stats x buckets) product of per-token columns
with the bucket indicators.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import torch
from torch import Tensor

__all__ = [
    "BUCKET_EDGES",
    "BUCKET_NAMES",
    "METRIC_KEYS",
    "Reduction",
    "loss_metrics",
    "metric_reduction",
    "reduce_metrics",
]

BUCKET_EDGES = (0.01, 0.1, 0.5)
"""Old-probability bucket edges of the per-bucket diagnostics: [0, 0.01), [0.01, 0.1), [0.1, 0.5), [0.5, 1]."""

BUCKET_NAMES = ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1")
"""Bucket labels used in metric keys, in the order of :data:`BUCKET_EDGES`."""

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
    "truncated_fraction",
    "bounds/lower_mean",
    "bounds/upper_mean",
    "band_width/mean",
)
_BUCKET_STATS = ("tokens", "clip_low_mean", "clip_high_mean", "clip_region_mean", "band_width_mean")

METRIC_KEYS = _METRIC_SCALARS + tuple(f"bucket/{b}/{s}" for b in BUCKET_NAMES for s in _BUCKET_STATS)
"""Every key of the metrics dict :func:`bandpo.policy_loss` returns, always all of them (docs/metrics.md)."""

# Columns of the per-token statistics matrix (summed per bucket in one product).
_COLS = ("count", "low", "high", "dual", "ratio", "neg_log_ratio", "lower", "upper", "trunc")

METRIC_CHUNK = 1 << 18
"""Tokens per chunk of the metric sums (:class:`_MetricSums`): the per-token columns of one chunk (9 + 4 rows of
float32, 13 MB) stay in cache and are reused, where one pass over 2^24 tokens built 832 MB of columns. A batch of
at most METRIC_CHUNK tokens is one chunk, summed exactly as before (one float32 product); larger batches add the
chunks' float32 sums in float64."""


def as_float_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask as 0/1 in ``dtype``, through its bytes (``bool.to(float)`` is ~10x slower on the CPU)."""
    return valid.view(torch.uint8).to(dtype) if valid.dtype == torch.bool else valid.to(dtype)


class _MetricSums:
    """Per-bucket sums of the per-token statistics, accumulated chunk by chunk (no host sync).

    ``add`` takes one chunk of flat per-token tensors; ``metrics`` turns the totals into the dict of
    :data:`METRIC_KEYS`. Everything the columns need is a float: ``vf`` the validity as 0/1, the sign events
    as 0/1 floats (adv is 0 at masked tokens, so they imply validity), ``lr`` 0 at masked tokens."""

    def __init__(self, dtype: torch.dtype, device: torch.device, n: int) -> None:
        self.dtype, self.device = dtype, device
        width = min(max(n, 1), METRIC_CHUNK)
        self.cols = torch.empty(len(_COLS), width, dtype=dtype, device=device)
        self.ind = torch.empty(len(BUCKET_NAMES), width, dtype=dtype, device=device)
        self.cmp = torch.empty(width, dtype=dtype, device=device)
        self.sums: Optional[Tensor] = None
        self.lo_r = torch.full((), math.inf, dtype=dtype, device=device)
        self.hi_r = torch.full((), -math.inf, dtype=dtype, device=device)
        self.edges = [torch.full((), math.log(e), dtype=dtype, device=device) for e in BUCKET_EDGES]

    def add(self, vf: Tensor, old_logp: Tensor, negf: Tensor, posf: Tensor, lr: Tensor, ratio: Tensor,
            lower: Tensor, upper: Tensor, dual_f: Optional[Tensor], trunc_f: Optional[Tensor]) -> None:
        """One chunk (flat, n <= METRIC_CHUNK): columns of _COLS against the bucket indicators."""
        n = vf.numel()
        cols, ind, cmp = self.cols[:, :n], self.ind[:, :n], self.cmp[:n]
        cols[0].copy_(vf)
        torch.mul(torch.lt(ratio, lower, out=cmp), negf, out=cols[1])  # A < 0 and r < lower
        torch.mul(torch.gt(ratio, upper, out=cmp), posf, out=cols[2])  # A > 0 and r > upper
        if dual_f is None:
            cols[3].zero_()
        else:
            cols[3].copy_(dual_f)
        torch.mul(ratio, vf, out=cols[4])
        torch.mul(lr, vf, out=cols[5]).neg_()
        torch.mul(lower, vf, out=cols[6])
        torch.mul(upper, vf, out=cols[7])
        if trunc_f is None:
            cols[8].zero_()
        else:
            torch.mul(trunc_f, vf, out=cols[8])
        # Bucket indicators from log p against log edges (no underflow of p); an edge goes to the upper bucket:
        # ind_k = cum_k - cum_{k+1}, cum_0 = v, cum_k = [old_logp >= log edge_k] v.
        prev = cols[0]
        for k, edge in enumerate(self.edges):
            cum = ind[k + 1]
            torch.mul(torch.ge(old_logp, edge, out=cmp), vf, out=cum)
            torch.sub(prev, cum, out=ind[k])
            prev = cum
        part = cols @ ind.T  # (stats, buckets)
        self.sums = part.to(torch.float64) if self.sums is None else self.sums.add_(part)
        self.lo_r = torch.minimum(self.lo_r, torch.div(ratio, vf).amin())  # r/0 = inf at masked tokens
        self.hi_r = torch.maximum(self.hi_r, cols[4].amax())  # r v: r > 0 where valid, 0 elsewhere

    def metrics(self) -> "dict[str, Tensor]":
        dtype = self.dtype
        sums = self.sums.to(dtype) if self.sums is not None else torch.zeros(
            len(_COLS), len(BUCKET_NAMES), dtype=dtype, device=self.device)
        total = sums.sum(1)
        n = total[0]
        n1 = n.clamp(min=1)
        means = total / n1
        one = torch.ones((), dtype=dtype, device=self.device)
        has = n > 0
        scalars = torch.stack([
            n,
            means[4],
            torch.where(has, self.lo_r, one),
            torch.where(has, self.hi_r, one),
            means[5],
            means[1],
            means[2],
            means[1] + means[2],
            means[3],
            means[8],
            means[6],
            means[7],
            (total[7] - total[6]) / n1,
        ])
        counts = sums[0]
        per = sums / counts.clamp(min=1)
        buckets = torch.stack([
            counts,
            per[1],
            per[2],
            per[1] + per[2],
            (sums[7] - sums[6]) / counts.clamp(min=1),
        ], 1).reshape(-1)  # bucket-major, as METRIC_KEYS
        return dict(zip(METRIC_KEYS, torch.cat([scalars, buckets]).unbind()))


@torch.no_grad()
def _metrics_from_parts(
    valid: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    log_ratio: Tensor,
    ratio: Tensor,
    lower: Tensor,
    upper: Tensor,
    dual: Optional[Tensor],
    trunc: Optional[Tensor] = None,
) -> "dict[str, Tensor]":
    """The metrics, assuming ``adv`` is 0 and ``log_ratio`` 0 at masked tokens (so sign events imply validity).

    ``dual``: tokens held by the dual clip (clip methods); ``trunc``: kept tokens whose importance weight the
    truncation cap C lowers (mask methods), each (B, T) bool or None (none)."""
    dtype = ratio.dtype
    acc = _MetricSums(dtype, ratio.device, valid.numel())
    flat = [t.reshape(-1) for t in (valid, old_logp, adv, log_ratio, ratio, lower, upper)]
    extra = [None if t is None else as_float_mask(t.reshape(-1), dtype) for t in (dual, trunc)]
    zero = torch.zeros((), dtype=dtype, device=ratio.device)
    for s in range(0, valid.numel(), METRIC_CHUNK):
        v, old, a, lr, r, lo, up = (t[s : s + METRIC_CHUNK] for t in flat)
        d, tr = (None if t is None else t[s : s + METRIC_CHUNK] for t in extra)
        vf = as_float_mask(v, dtype)
        acc.add(vf, old, torch.lt(a, zero).view(torch.uint8).to(dtype), torch.gt(a, zero).view(torch.uint8).to(dtype),
                lr, r, lo, up, d, tr)
    return acc.metrics()


@torch.no_grad()
def loss_metrics(
    ratio: Tensor,
    adv: Tensor,
    lower: Tensor,
    upper: Tensor,
    mask: Tensor,
    old_logp: Tensor,
    *,
    dual_clip: Optional[float] = None,
    form: str = "clip",
    tis_cap: Optional[float] = None,
) -> "dict[str, Tensor]":
    """Every key of :data:`METRIC_KEYS` for one batch, as detached 0-d tensors (docs/metrics.md).

    Args:
        ratio: (B, T) importance ratio r actually used by the loss.
        adv: (B, T) advantages.
        lower, upper: (B, T) the bounds the loss clipped r to (upper already capped).
        mask: (B, T) bool or 0/1; masked tokens are ignored whatever they hold.
        old_logp: (B, T) old log-probabilities (the bucket of each token).
        dual_clip: the dual-clip constant c, or None (ignored with ``form="mask"``).
        form: the method's surrogate, ``"clip"`` or ``"mask"`` (DPPO: the clip fractions then count masked tokens).
        tis_cap: the mask form's truncation cap C (``truncated_fraction``); None: no truncation counted.

    Means are over valid tokens (0 when there are none); ``ratio/min``/``ratio/max`` are 1 without tokens.
    """
    if form not in ("clip", "mask"):
        raise ValueError(f"form must be 'clip' or 'mask' (a method's surrogate), got {form!r}")
    valid = mask if mask.dtype == torch.bool else mask != 0
    dtype = torch.promote_types(ratio.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=ratio.device)
    r = torch.where(valid, ratio.detach().to(dtype), torch.ones((), dtype=dtype, device=ratio.device))
    a = torch.where(valid, adv.detach().to(dtype), zero)
    lo = torch.where(valid, lower.detach().to(dtype), zero)
    up = torch.where(valid, upper.detach().to(dtype), zero)
    old = torch.where(valid, old_logp.detach().to(dtype), zero)
    dual = trunc = None
    if form == "mask":
        if tis_cap is not None and math.isfinite(tis_cap):
            keep = ~(((a > 0) & (r > up)) | ((a < 0) & (r < lo)))
            trunc = keep & (r > tis_cap) & (a != 0)
    elif dual_clip is not None:
        per_token = torch.maximum(-a * r, -a * torch.clamp(r, lo, up))
        dual = (a < 0) & (per_token > -a * dual_clip)
    return _metrics_from_parts(valid, old, a, torch.log(r), r, lo, up, dual, trunc)


# ----------------------------------------------------------------------------------------------------------
# Reduction
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduction:
    """How one metric combines over parts (micro-batches, optimiser steps, processes).

    ``kind``: ``"mean"`` (Σ value·weight / Σ weight, 0 when the weights sum to 0), ``"sum"``, ``"min"``, ``"max"``.
    ``weight``: for ``mean``, the key of the part's weight (e.g. ``num_tokens``; None: weight 1 per part); for
    ``min``/``max``, a key whose value 0 means "this part has no data" (the part is then skipped).
    ``empty``: the result of ``min``/``max`` when no part has data.
    """

    kind: str = "mean"
    weight: Optional[str] = None
    empty: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "sum", "min", "max"):
            raise ValueError(f"a reduction kind must be 'mean', 'sum', 'min' or 'max', got {self.kind!r}")


def metric_reduction(key: str) -> Reduction:
    """The reduction of a :data:`METRIC_KEYS` key: token counts add up, extremes take the min/max over parts
    with tokens (1 if none), bucket means are weighted by the bucket's token count, the other means by
    ``num_tokens``. Any other key: a plain mean over parts."""
    if key == "num_tokens" or (key.startswith("bucket/") and key.endswith("/tokens")):
        return Reduction("sum")
    if key == "ratio/min":
        return Reduction("min", "num_tokens", 1.0)
    if key == "ratio/max":
        return Reduction("max", "num_tokens", 1.0)
    if key.startswith("bucket/"):
        return Reduction("mean", key.rsplit("/", 1)[0] + "/tokens")
    if key in METRIC_KEYS:
        return Reduction("mean", "num_tokens")
    return Reduction("mean")


_default_reduction = functools.lru_cache(maxsize=4096)(metric_reduction)
""":func:`metric_reduction`, memoised (a pure function of the key; :func:`reduce_metrics` asks it for every key of
every call)."""


def _as_spec(spec) -> Reduction:
    if isinstance(spec, Reduction):
        return spec
    if isinstance(spec, str):
        return Reduction(spec)
    if isinstance(spec, tuple):
        return Reduction(*spec)
    raise ValueError(f"a reduction must be a Reduction, a kind ('mean', 'sum', 'min', 'max') or a tuple, got {spec!r}")


@torch.no_grad()
def reduce_metrics(
    parts: "Iterable[Mapping[str, object]]",
    reductions: "Optional[Mapping[str, object]]" = None,
    *,
    distributed: bool = True,
    group=None,
) -> "dict[str, Tensor]":
    """Combine per-part metric dicts (micro-batches, optimiser steps) and, when ``torch.distributed`` is
    initialised, the parts of every process, into one dict of 0-d float64 tensors.

    Each key reduces by :func:`metric_reduction` (token-weighted means, per-bucket token-weighted means, sums of
    counts, min/max of extremes) unless ``reductions`` maps it to another :class:`Reduction` (or ``"sum"``,
    ``"mean"``, ``("mean", "weight_key")``, ...). A key missing from a part contributes nothing from that part.
    Reducing already-reduced dicts again (e.g. per optimiser step, then over steps) gives the same as reducing
    all parts at once, since counts are summed and means carry their weights.

    Distributed: one ``all_reduce(SUM)`` of the weighted sums and weights and one ``all_reduce(MIN)`` of the
    extremes, on the parts' device, over ``group``; every rank gets the same result. Every rank must call it
    with the same keys (in any order of parts). No host sync besides these collectives.

    Args:
        parts: metric dicts (0-d tensors or numbers).
        reductions: per-key overrides.
        distributed: set False to reduce only this process's parts.
        group: the process group (default: the world).

    Returns:
        {key: 0-d float64 tensor} in first-seen key order.
    """
    parts = [dict(p) for p in parts]
    keys: list = []
    for p in parts:
        keys.extend(k for k in p if k not in keys)
    overrides = reductions or {}
    specs = {k: _as_spec(overrides[k]) if k in overrides else _default_reduction(k) for k in keys}
    device = next((v.device for p in parts for v in p.values() if isinstance(v, Tensor)), torch.device("cpu"))
    f64 = torch.float64
    col = {k: j for j, k in enumerate(keys)}
    P, K = len(parts), len(keys)
    everything = list(range(K))

    # (parts, keys) matrices of the values and of which part has which key: one stack per part.
    rows, present_rows = [], []
    for p in parts:
        values = list(p.values())
        if values and all(isinstance(v, Tensor) and v.dim() == 0 and v.dtype == values[0].dtype for v in values):
            stacked = torch.stack(values).detach().to(device=device, dtype=f64)  # the common case: one cast
        else:
            stacked = torch.stack([v.detach().to(device=device, dtype=f64).reshape(()) if isinstance(v, Tensor)
                                   else torch.tensor(float(v), dtype=f64, device=device) for v in values]) \
                if values else None
        idx = [col[k] for k in p]
        if idx == everything:
            row = stacked
            present_rows.append([True] * K)
        else:
            row = torch.zeros(K, dtype=f64, device=device)
            if idx:
                row[idx] = stacked
            mark = [False] * K
            for j in idx:
                mark[j] = True
            present_rows.append(mark)
        rows.append(row)
    V = torch.stack(rows) if P else torch.zeros(0, K, dtype=f64, device=device)
    present = torch.tensor(present_rows, dtype=torch.bool, device=device).reshape(P, K)
    # V with a column of ones (index K): a key's weight column, or 1 without a weight key, in one gather.
    V1 = torch.cat([V, torch.ones(P, 1, dtype=f64, device=device)], 1)

    def weights(j_of: "list[Optional[str]]") -> Tensor:
        """(P, len(j_of)) weight of each part for each key: the weight key's value, 1 without one."""
        if not j_of:
            return torch.zeros(P, 0, dtype=f64, device=device)
        return V1[:, [col[w] if w is not None else K for w in j_of]]

    add_keys = [k for k in keys if specs[k].kind in ("mean", "sum")]
    ext_keys = [k for k in keys if specs[k].kind in ("min", "max")]
    a_idx = [col[k] for k in add_keys]
    a_present = present[:, a_idx].to(f64)
    w = weights([specs[k].weight if specs[k].kind == "mean" else None for k in add_keys]) * a_present
    is_mean = torch.tensor([specs[k].kind == "mean" for k in add_keys], dtype=torch.bool, device=device)
    num = (V[:, a_idx] * torch.where(is_mean, w, a_present)).sum(0)
    den = w.sum(0)
    e_idx = [col[k] for k in ext_keys]
    sign = torch.tensor([1.0 if specs[k].kind == "min" else -1.0 for k in ext_keys], dtype=f64, device=device)
    has_data = present[:, e_idx] & (weights([specs[k].weight for k in ext_keys]) > 0)
    ext = torch.where(has_data, V[:, e_idx] * sign, torch.tensor(math.inf, dtype=f64, device=device))
    ext = ext.amin(0) if P else torch.full((len(ext_keys),), math.inf, dtype=f64, device=device)
    flat = torch.cat([num, den])
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        dist = torch.distributed
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if ext.numel():
            dist.all_reduce(ext, op=dist.ReduceOp.MIN, group=group)
    # Elementwise over all keys at once (each element's arithmetic is the same as key by key): sums as they are,
    # means Σ value·weight / Σ weight (0 without weight), extremes with their sign undone or ``empty``.
    n = len(add_keys)
    zero = torch.zeros((), dtype=f64, device=device)
    total, wsum = flat[:n], flat[n:]
    means = torch.where(wsum > 0, total / wsum.clamp(min=torch.finfo(f64).tiny), zero)
    added = torch.where(is_mean, means, total)
    empty = torch.tensor([specs[k].empty for k in ext_keys], dtype=f64, device=device)
    extremes = torch.where(torch.isinf(ext), empty, ext * sign)
    out = dict(zip(add_keys, added.unbind())) if n else {}
    if ext_keys:
        out.update(zip(ext_keys, extremes.unbind()))
    return {k: out[k] for k in keys}
