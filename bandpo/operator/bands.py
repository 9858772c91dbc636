"""The Band operator: exact f-divergence clipping bounds for the sampled token.

    band(old_logp, delta, divergence) = (lower, upper),
    [lower, upper] = {r ∈ [0, 1/p] : g_f(p, r) <= delta},   p = exp(old_logp),
    g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p))

(DEVELOPERS.md; the paper's Band_{f,δ}(p), arXiv 2603.04918). g_f is convex in r with g_f(p, 1) = 0,
so the band is an interval around 1: its two roots, saturated at 0 and 1/p.

How it is computed (everything in float64, elementwise, with a fixed amount of work per element: no
host-device synchronisation, no data-dependent Python loop, no ``.item()``):

* closed forms in log space for ``tv``, ``chi2`` and ``hellinger``;
* with a Python-number ``delta`` (fixed for a run), from the second call with that delta, interpolation
  tables built once per (divergence, delta) and cached:
  - divergences that never saturate (``kl``, ``neyman_chi2``): float64 outputs interpolate the root in the
    logit of p and take two Newton steps to full float64 accuracy; float32/16 outputs are one lookup in a
    table indexed by the float32 bits of -old_logp;
  - divergences that saturate (``reverse_kl``, ``js``, user generators with finite f(0)): tables indexed
    by the distance to each bound's saturation kink, exact 0 and 1/p beyond it; float32/16 outputs are one
    lookup per bound, float64 outputs take a tabulated start and three Newton steps;
* otherwise a dedicated solver (KL: bracketed Newton from a start that brackets the root) or the generic
  one (bisection then Newton, a fixed number of steps) for any registered generator.

See :mod:`bandpo.operator.solvers` for the parametrisation that keeps every root finite in log space.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .divergences import Divergence, get_divergence
from .solvers import (
    autograd_derivative,
    generic_phi,
    KL_ITERS,
    kl_phi,
    kl_start,
    newton_polish,
    sides,
    solve_side,
    softplus,
    solve_side_robust,
    upper_from_s,
)

__all__ = ["band", "log_band"]

Delta = Union[float, Tensor]

# Newton steps after the table lookup (interpolation error <= ~1e-9 relative in s; two steps reach 1e-16).
POLISH_ITERS = 2


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _check_delta(delta: Delta, old_logp: Tensor, validate: bool) -> Delta:
    if isinstance(delta, bool) or not isinstance(delta, (numbers.Real, Tensor)):
        raise ValueError(f"delta must be a positive finite real number or a floating tensor, got {delta!r}")
    if isinstance(delta, Tensor):
        if not delta.is_floating_point():
            raise ValueError(f"delta must be a floating tensor, got dtype {delta.dtype}")
        try:
            shape = torch.broadcast_shapes(delta.shape, old_logp.shape)
        except RuntimeError:
            shape = None
        if shape != old_logp.shape:
            raise ValueError(
                f"delta of shape {tuple(delta.shape)} must broadcast to old_logp's shape {tuple(old_logp.shape)}"
            )
        if validate and delta.numel() and not bool(torch.all(torch.isfinite(delta) & (delta > 0))):
            raise ValueError("delta must be finite and > 0 everywhere; got a value <= 0, NaN or inf")
        return delta
    value = float(delta)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"delta must be finite and > 0, got {value!r}")
    return value


def _rounding_slack(dtype: torch.dtype) -> float:
    """How far above 0 a log-probability may be from rounding alone (4 ulps at 1)."""
    return 4 * torch.finfo(dtype).eps


def _check_logp(old_logp: Tensor, validate: bool) -> None:
    if not isinstance(old_logp, Tensor):
        raise ValueError(f"old_logp must be a torch.Tensor, got {type(old_logp).__name__}")
    if not old_logp.is_floating_point():
        raise ValueError(
            f"old_logp must be a floating tensor of log-probabilities, got dtype {old_logp.dtype} "
            "(integer tensors are not log-probabilities)"
        )
    if not validate or old_logp.numel() == 0:
        return
    slack = _rounding_slack(old_logp.dtype)
    bad = ~torch.isfinite(old_logp) | (old_logp > slack)
    if bool(bad.any()):  # the one host-device synchronisation of a validated call
        x = old_logp.detach()
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        n_pos = int((x > slack).sum())
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN")
        if n_inf:
            parts.append(f"{n_inf} infinite")
        if n_pos:
            top = float(x[torch.isfinite(x)].max())
            parts.append(f"{n_pos} above 0 (max {top:.3g}; rounding slack is {slack:.2g})")
        raise ValueError(
            "old_logp must hold finite log-probabilities <= 0 (p = exp(old_logp) in (0, 1]); found "
            + ", ".join(parts)
        )


# ----------------------------------------------------------------------------------------------------------
# Interpolation tables for a fixed delta
# ----------------------------------------------------------------------------------------------------------

# The table is uniform in ζ = z / sqrt(1 + (z/K)^2), z = logit(p) ∈ [-Z, Z] (a smooth, cheap warp: spacing
# H near p = 1/2, about 50·H in z at the far tails, where the roots vary slowly). Z covers every p the
# solvers see (masses are clamped at the smallest normal float64, |z| <= 708), so the table never
# extrapolates. Each interval stores the monomial coefficients of the 4-point Lagrange cubic through its
# neighbours, so a lookup is one gather and three fused multiply-adds (measured interpolation error
# < 1e-10 in log s; see tests/test_band_solvers.py).
TABLE_K = 200.0
TABLE_Z = 710.0
TABLE_H = 1.0 / 64
_ZETA_MAX = TABLE_Z / math.sqrt(1 + (TABLE_Z / TABLE_K) ** 2)
_N_NODES = int(math.ceil(2 * _ZETA_MAX / TABLE_H)) + 1
_TABLE_CACHE: "OrderedDict[tuple, _Table]" = OrderedDict()
_TABLE_CACHE_SIZE = 32
_DELTA_SEEN: "dict[tuple, int]" = {}


@dataclass(frozen=True)
class _Table:
    """Per-interval cubic coefficients c0..c3 of c0 + c1 u + c2 u^2 + c3 u^3 on [ζ_i, ζ_i+1], float64.

    ``roots``: (n, 2, 4) for log s*_lower and log s*_upper (the float64 path polishes them with Newton).
    """

    roots: Tensor
    log_lower_at_one: float

    def to(self, device: torch.device) -> "_Table":
        return _Table(self.roots.to(device), self.log_lower_at_one)


def _phi_fn(div: Divergence):
    """The divergence's own log-space φ evaluator, or the generic one built from f and f'."""
    return div.phi or generic_phi(div.f, div.df or autograd_derivative(div.f))


def _cubic_coefficients(y: Tensor) -> Tensor:
    """(n_nodes,) -> (n_nodes, 4): Lagrange cubic through nodes i-1..i+2 written in u = t - i.

    Rows 0 and n-2, n-1 repeat their neighbour's polynomial (the lookup clamps i to [1, n-3])."""
    ym1, y0, y1, y2 = y[:-3], y[1:-2], y[2:-1], y[3:]
    c = torch.stack([
        y0,
        -ym1 / 3 - y0 / 2 + y1 - y2 / 6,
        ym1 / 2 - y0 + y1 / 2,
        -ym1 / 6 + y0 / 2 - y1 / 2 + y2 / 6,
    ], dim=1)
    return torch.cat([c[:1], c, c[-1:], c[-1:]])


def _build_table(div: Divergence, delta: float) -> _Table:
    zeta = -_ZETA_MAX + TABLE_H * torch.arange(_N_NODES, dtype=torch.float64)
    z = zeta / torch.sqrt(1 - (zeta / TABLE_K) ** 2)
    logp = -softplus(-z)
    log1mp = -softplus(z)
    d = torch.tensor(delta, dtype=torch.float64)
    phi = _phi_fn(div)
    (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
    if phi is kl_phi:  # KL's own start converges in 4 Newton steps everywhere
        s_lo, _ = solve_side(kl_phi, la_lo, lb_lo, d, kl_start(la_lo, lb_lo, d), KL_ITERS)
        s_up, _ = solve_side(kl_phi, la_up, lb_up, d, kl_start(la_up, lb_up, d), KL_ITERS)
    else:
        s_lo, _ = solve_side_robust(phi, la_lo, lb_lo, d, bisect_iters=64, polish_steps=3)
        s_up, _ = solve_side_robust(phi, la_up, lb_up, d, bisect_iters=64, polish_steps=3)
    roots = torch.stack([_cubic_coefficients(torch.log(s_lo)), _cubic_coefficients(torch.log(s_up))], dim=1)
    return _Table(roots, float(_lower_at_one(div, d)))


def _eager_only(fn):
    """Run ``fn`` outside any compiled graph (``torch.compiler.disable``), without importing torch._dynamo
    for eager callers: that import costs ~1 s (and pulls sympy) for every user of ``import bandpo``."""
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


@_eager_only
def _get_table(div: Divergence, delta: float, device: torch.device, kind: str = "f64"):
    """The cached table of ``kind`` ("f64": _Table, "f32": _BitsTable, "sat": _SatTable) for (divergence,
    delta, device); None where a "sat" table does not apply (saturation is not one interval at an end).

    Built once on the CPU, outside any compiled graph, then copied to the device once."""
    key = (id(div), div.name, delta, kind, str(device))
    if key not in _TABLE_CACHE:
        cpu_key = (id(div), div.name, delta, kind, "cpu")
        if cpu_key not in _TABLE_CACHE:
            _TABLE_CACHE[cpu_key] = _BUILDERS[kind](div, delta)
        cpu = _TABLE_CACHE[cpu_key]
        _TABLE_CACHE[key] = None if cpu is None else cpu.to(device)
        table = _TABLE_CACHE[key]
        while len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
            _TABLE_CACHE.popitem(last=False)
    else:
        table = _TABLE_CACHE[key]
        _TABLE_CACHE.move_to_end(key)
    return table


# The float32/16 table is indexed by the float32 bit pattern of x = -old_logp: the top bits (exponent and
# the first BITS_M mantissa bits) pick a segment, the remaining bits are the position u ∈ [0, 1) in it.
# Segments are uniform in x within each binade [2^e, 2^(e+1)) (relative width 2^-8), so both regimes are
# resolved: p -> 1 (x -> 0, where the bounds depend on log x) and p -> 0 (x large, where they are nearly
# linear in x). No transcendental function is needed to locate an element.
BITS_M = 8
_BITS_SHIFT = 23 - BITS_M
X_MIN_EXP, X_MAX_EXP = -30, 10  # x is clamped to [2^-30, 2^10): p within 1e-9 of 1 is the p -> 1 limit
_X_MIN = 2.0**X_MIN_EXP
_X_MAX = float(torch.nextafter(torch.tensor(2.0**X_MAX_EXP, dtype=torch.float32), torch.tensor(0.0)))
_BITS_OFFSET = (127 + X_MIN_EXP) << BITS_M
_N_SEGMENTS = (X_MAX_EXP - X_MIN_EXP) << BITS_M


@dataclass(frozen=True)
class _BitsTable:
    """(n_segments, 2, 4) cubic coefficients of log(-log r_lower) and log(log r_upper) in u, float64;
    ``signs`` = (-1, 1) on the table's device (no host-to-device copy per call)."""

    coef: Tensor
    signs: Tensor

    def to(self, device: torch.device) -> "_BitsTable":
        return _BitsTable(self.coef.to(device), self.signs.to(device))


def _build_bits_table(div: Divergence, delta: float) -> _BitsTable:
    j = torch.arange(_N_SEGMENTS, dtype=torch.float64)
    e = torch.floor(j / 2**BITS_M) + X_MIN_EXP
    width = torch.exp2(e - BITS_M)
    start = torch.exp2(e) + (j - (e - X_MIN_EXP) * 2**BITS_M) * width
    # each segment's cubic through its own nodes u = -1, 0, 1, 2 (so binade edges need no special case)
    x = (start[:, None] + width[:, None] * torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)).reshape(-1)
    log_lower, log_upper = _log_band_f64(-x, delta, div, "table")  # float64 table + Newton: full precision
    coef = []
    for y in (torch.log(-log_lower), torch.log(log_upper)):
        ym1, y0, y1, y2 = y.reshape(-1, 4).unbind(1)
        coef.append(torch.stack([
            y0,
            -ym1 / 3 - y0 / 2 + y1 - y2 / 6,
            ym1 / 2 - y0 + y1 / 2,
            -ym1 / 6 + y0 / 2 - y1 / 2 + y2 / 6,
        ], dim=1))
    return _BitsTable(torch.stack(coef, dim=1), torch.tensor([-1.0, 1.0], dtype=torch.float64))


def _lookup(coef: Tensor, z: Tensor) -> Tensor:
    """Evaluate tabulated quantities at logit(p) = z: coef (n, q, 4) -> (*z.shape, q)."""
    zc = torch.clamp(z, -TABLE_Z, TABLE_Z)
    zeta = zc * torch.rsqrt(torch.addcmul(torch.ones_like(zc), zc, zc, value=1 / TABLE_K**2))
    t = torch.add(zeta, _ZETA_MAX).mul_(1 / TABLE_H)
    i = torch.clamp(torch.floor(t), 1, _N_NODES - 3)
    u = t.sub_(i).unsqueeze(-1)
    rows = coef.index_select(0, i.long().reshape(-1)).reshape(*z.shape, coef.shape[1], 4)
    c0, c1, c2, c3 = rows.unbind(-1)
    return torch.addcmul(c0, u, torch.addcmul(c1, u, torch.addcmul(c2, u, c3)))


# ----------------------------------------------------------------------------------------------------------
# Per-divergence log-band routines
# ----------------------------------------------------------------------------------------------------------


def _phi_at_inf(div: Divergence, log_a: Tensor, log_b: Tensor) -> Tensor:
    """φ(∞) = a f(0) + b f(1/b): the divergence of the saturated bound (shrinking mass a moved entirely).

    a f(0) is 0 where a underflows even if f(0) = inf."""
    a = torch.exp(log_a)
    f0 = torch.where(a > 0, a * div.f_at_0, torch.zeros_like(a)) if math.isinf(div.f_at_0) else a * div.f_at_0
    b_c = torch.exp(torch.clamp(log_b, min=-690.0))  # b f(1/b) -> lim f(u)/u as b -> 0
    return f0 + b_c * div.f(1 / b_c)


@_eager_only  # 64 unrolled bisection steps make inductor's graph explode; run it eagerly
def generic_log_band(div: Divergence, logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """Any registered generator: saturation test, then the robust bisection + Newton solve per side."""
    phi = _phi_fn(div)
    (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
    out = []
    for log_a, log_b in ((la_lo, lb_lo), (la_up, lb_up)):
        saturated = _phi_at_inf(div, log_a, log_b) <= delta
        s, _ = solve_side_robust(phi, log_a, log_b, delta, saturated)
        out.append(s)
    s_lo, s_up = out
    log_upper = torch.where(torch.isinf(s_up), -logp, upper_from_s(s_up, logp, log1mp))
    return torch.where(log1mp == -math.inf, _lower_at_one(div, delta), -s_lo), log_upper


def _lower_at_one(div: Divergence, delta: Tensor) -> Tensor:
    """log r_lower at p = 1: the limit p -> 1, the root of f(r) + (1 - r)·c = delta, c = lim f(u)/u.

    (The perspective convention 0·f(x/0) = x·c for the vanished complement.) With c = inf no r < 1 is
    allowed: the lower bound is 1.
    """
    c = div.slope_at_inf
    if math.isinf(c):
        return torch.zeros_like(delta)

    def phi1(s, log_a, log_b, a, b):
        w = torch.exp(-s)
        x = -torch.expm1(-s)
        df = div.df or autograd_derivative(div.f)
        return div.f(w) + c * x, w * (c - df(w)), torch.zeros_like(s)

    zero = torch.zeros_like(delta)
    saturated = (div.f_at_0 + c) <= delta
    s, _ = solve_side_robust(phi1, zero, zero, delta, saturated)
    return -s


def _table_log_band(div: Divergence, logp: Tensor, log1mp: Tensor, delta: float) -> "tuple[Tensor, Tensor]":
    """Fixed-delta fast path for non-saturating divergences, float64: table lookup, then Newton polish."""
    table = _get_table(div, delta, logp.device)
    (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
    y_lo, y_up = _lookup(table.roots, la_lo - lb_lo).unbind(-1)  # logit(p), finite thanks to the clamps
    phi = _phi_fn(div)
    s_lo, _ = newton_polish(phi, la_lo, lb_lo, delta, torch.exp(y_lo), POLISH_ITERS)
    s_up, _ = newton_polish(phi, la_up, lb_up, delta, torch.exp(y_up), POLISH_ITERS)
    log_lower = torch.where(log1mp == -math.inf, table.log_lower_at_one, -s_lo)
    return log_lower, upper_from_s(s_up, logp, log1mp)


def _table_band_lowp(div: Divergence, old_logp: Tensor, delta: float) -> "tuple[Tensor, Tensor]":
    """Fixed-delta fast path for float32/16 outputs: one table lookup, no Newton steps, ~12 kernels.

    The table's error (< 1e-10 in log(∓log r), measured in tests) is far below a float32 ulp (6e-8), so
    the result is the float64 answer rounded: within one or two ulps.
    """
    table = _get_table(div, delta, old_logp.device, "f32")
    x = torch.clamp(old_logp.detach().to(torch.float32).neg(), _X_MIN, _X_MAX)
    bits = x.view(torch.int32)
    idx = torch.bitwise_right_shift(bits, _BITS_SHIFT).sub_(_BITS_OFFSET)
    u = torch.bitwise_and(bits, (1 << _BITS_SHIFT) - 1).to(torch.float64).mul_(2.0**-_BITS_SHIFT).unsqueeze(-1)
    rows = table.coef.index_select(0, idx.reshape(-1)).reshape(*x.shape, 2, 4)
    c0, c1, c2, c3 = rows.unbind(-1)
    y = torch.addcmul(c0, u, torch.addcmul(c1, u, torch.addcmul(c2, u, c3)))
    ratio = torch.exp(torch.exp(y).mul_(table.signs)).to(old_logp.dtype)  # (..., 2): lower, upper
    return ratio[..., 0].contiguous(), ratio[..., 1].contiguous()


# ----------------------------------------------------------------------------------------------------------
# float32/16 tables for divergences that saturate (f(0) finite: reverse_kl, js, most user generators)
# ----------------------------------------------------------------------------------------------------------

# With f(0) finite, each bound saturates on one end of the x = -log p axis: the lower bound is exactly 0 for
# x >= X_lo (rare tokens), the upper bound exactly 1/p for x <= X_up (confident tokens). Near such a kink
# the root behaves like d / log(1/d) in the distance d to it, which no polynomial in x resolves. So each
# side's unsaturated interval (L, R) is cut at its midpoint and each half is tabulated against the distance
# d to its own end (L: 0 or a kink; R: a kink or x = 2^10), indexed like the never-saturating table, by
# the float64 bits of d: 256 segments per binade, so the relative resolution in d is the same at every
# distance from the kink. Within a segment the quantity log(∓log r) is smooth in u, and a cubic through
# four float64-solver nodes (at their true, rounded positions) gives the float32 result to 1 ulp
# (tests/test_band_solvers.py).
_SAT_SHIFT = 52 - BITS_M  # float64 mantissa bits below a segment index
_SAT_X_MAX = 2.0**X_MAX_EXP  # x = -log p is clamped here (p = e^-1024 underflows float64 anyway)
_SAT_E_ZERO = -150  # halves anchored at x = 0 (p -> 1) reach d = 2^-150 (below every nonzero float32)
_SAT_KINK_BITS = 36  # halves anchored at a kink X reach d = 2^(floor(log2 X) - 36) (nodes 16 ulps apart)


@dataclass(frozen=True)
class _SatHalf:
    """One half of a side's unsaturated interval, tabulated against d = x - anchor (left) or anchor - x."""

    anchor: float
    from_left: bool
    e_min: int
    d_max: float
    base: int  # first row of this half in the side's coefficient table


@dataclass(frozen=True)
class _SatSide:
    """A side's unsaturated interval (L, R) in x, saturated beyond the kinks (``kink_left``/``kink_right``)."""

    L: float
    R: float
    split: float  # (L + R)/2 where R is finite: x below it uses the first half, from it the second
    kink_left: bool
    kink_right: bool
    halves: "tuple[_SatHalf, ...]"
    coef: Optional[Tensor]  # (n_segments, 4) cubic coefficients of log(∓log r) in u; None: always saturated
    coef_s: Optional[Tensor] = None  # the same for log s* (the float64 start); None: float64 uses the solver

    def to(self, device: torch.device) -> "_SatSide":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return _SatSide(self.L, self.R, self.split, self.kink_left, self.kink_right, self.halves,
                        move(self.coef), move(self.coef_s))


@dataclass(frozen=True)
class _SatTable:
    lower: _SatSide
    upper: _SatSide
    log_lower_at_one: float  # p = 1 exactly: the limit p -> 1 (it can differ from r_lower at p = 1 - 1e-40)

    def to(self, device: torch.device) -> "_SatTable":
        return _SatTable(self.lower.to(device), self.upper.to(device), self.log_lower_at_one)


def _saturation_threshold(div: Divergence, delta: float, side: int) -> "Optional[tuple[float, float]]":
    """(L, R): the side's unsaturated interval of x = -log p in [0, 2^10], or None if saturation is not one
    interval at the end (then the table does not apply and the solver is used). Bisection in float64."""

    def saturated(x: Tensor) -> Tensor:
        logp = -x
        log1mp = torch.log(-torch.expm1(logp))
        (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
        la, lb = (la_lo, lb_lo) if side == 0 else (la_up, lb_up)
        return _phi_at_inf(div, la, lb) <= delta

    # x = 0 (p = 1) is excluded: the lower bound there is the p -> 1 limit, stored separately
    grid = torch.logspace(-45, math.log10(_SAT_X_MAX), 4000, dtype=torch.float64)
    sat = saturated(grid)
    first_change = sat if side == 0 else ~sat  # lower: saturated on a suffix; upper: on a prefix
    k = int(first_change.long().argmax()) if bool(first_change.any()) else len(grid)
    if bool(first_change[k:].all()) is False:
        return None  # saturation is not one interval at the end: no table
    if k == len(grid):  # lower never saturated / upper always saturated
        return (0.0, math.inf) if side == 0 else (_SAT_X_MAX, _SAT_X_MAX)
    if k == 0:  # lower always saturated / upper never saturated
        return (0.0, 0.0) if side == 0 else (0.0, math.inf)
    lo, hi = float(grid[k - 1]), float(grid[k])
    for _ in range(200):  # to float64 resolution
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        s = bool(saturated(torch.tensor([mid], dtype=torch.float64)))
        if s == (side == 0):
            hi = mid
        else:
            lo = mid
    # lower: saturated for x >= R (R = hi, the first saturated x); upper: saturated for x <= L = lo
    return (0.0, hi) if side == 0 else (lo, math.inf)


def _build_sat_side(div: Divergence, delta: float, side: int) -> "Optional[_SatSide]":
    interval = _saturation_threshold(div, delta, side)
    if interval is None:
        return None
    L, R = interval
    kink_left, kink_right = L > 0, math.isfinite(R)
    if not L < min(R, _SAT_X_MAX):
        return _SatSide(L, R, math.inf, kink_left, kink_right, (), None)
    mid = 0.5 * (L + R) if math.isfinite(R) else math.inf
    specs = [(L, True, min(mid, _SAT_X_MAX) - L)]
    if math.isfinite(R):
        specs.append((R, False, R - mid))
    halves, coefs, base = [], [], 0
    for anchor, from_left, d_max in specs:
        e_min = _SAT_E_ZERO if anchor == 0 else math.floor(math.log2(anchor)) - _SAT_KINK_BITS
        e_max = max(math.ceil(math.log2(d_max)), e_min + 1)
        e = torch.arange(e_min, e_max, dtype=torch.float64)
        width = torch.exp2(e - BITS_M)[:, None]
        # per binade: nodes at 2^e + (i - 1) 2^(e-8), i = 0..258; segment k uses nodes k..k+3 (u = -1, 0, 1, 2)
        i = torch.arange(2**BITS_M + 3, dtype=torch.float64)
        d_nom = torch.exp2(e)[:, None] + (i - 1) * width  # (n_binades, 259)
        start = d_nom[:, 1:-2]  # (n_binades, 256) segment starts
        n_keep = int((start <= d_max).sum())  # segments in use (a prefix: starts increase)
        need = d_nom <= d_max + 2 * width  # the nodes those segments use (all inside the half: unsaturated)
        x = anchor + d_nom[need] if from_left else anchor - d_nom[need]
        d_act = torch.full_like(d_nom, math.nan)
        d_act[need] = x - anchor if from_left else anchor - x  # where the node really sits (x is rounded)
        y_r, y_s = _sat_nodes(div, x, delta, side)
        idx = torch.arange(2**BITS_M)[:, None] + torch.arange(4)
        u = ((d_act[:, idx] - start[..., None]) / width[..., None]).reshape(-1, 4)[:n_keep]
        vander = u[..., None] ** torch.arange(4, dtype=torch.float64)  # (segments, 4 nodes, 4 powers)
        if not bool(torch.isfinite(u).all()):
            return None
        c = []
        for y_need in (y_r, y_s):
            if y_need is None:
                c.append(None)
                continue
            y = torch.full_like(d_nom, math.nan)
            y[need] = y_need
            y_seg = y[:, idx].reshape(-1, 4)[:n_keep]
            if not bool(torch.isfinite(y_seg).all()):
                return None
            c.append(torch.linalg.solve(vander, y_seg.unsqueeze(-1)).squeeze(-1))
        halves.append(_SatHalf(anchor, from_left, e_min, d_max, base))
        coefs.append(c)
        base += c[0].shape[0]
    coef = torch.cat([c[0] for c in coefs])
    coef_s = None if coefs[0][1] is None else torch.cat([c[1] for c in coefs])
    return _SatSide(L, R, mid, kink_left, kink_right, tuple(halves), coef, coef_s)


def _sat_nodes(div: Divergence, x: Tensor, delta: float, side: int) -> "tuple[Tensor, Optional[Tensor]]":
    """Node values at x = -log p (unsaturated): log(∓log r) of the side's bound and, for the generic solver,
    log s* (None for a divergence with its own ``log_band``: its float64 results stay with it)."""
    logp = -x
    if div.log_band is not None:
        log_lower, log_upper = _log_band_f64(logp, delta, div, "solver")
        return (torch.log(-log_lower) if side == 0 else torch.log(log_upper)), None
    log1mp = torch.log(-torch.expm1(logp))
    log_a, log_b = sides(logp, log1mp)[side]
    d = torch.full((), delta, dtype=torch.float64)
    s, _ = solve_side_robust(_phi_fn(div), log_a, log_b, d)  # what generic_log_band computes
    log_r = -s if side == 0 else upper_from_s(s, logp, log1mp)
    return torch.log(log_r.abs()), torch.log(s)


def _build_sat_table(div: Divergence, delta: float) -> "Optional[_SatTable]":
    lower, upper = _build_sat_side(div, delta, 0), _build_sat_side(div, delta, 1)
    if lower is None or upper is None:
        return None
    at_one = float(_lower_at_one(div, torch.tensor(delta, dtype=torch.float64)))
    return _SatTable(lower, upper, at_one)


def _sat_side_log_ratio(side: _SatSide, x: Tensor, sign: float) -> "tuple[Tensor, Tensor]":
    """(log r, saturated) for float64 x = -old_logp in [0, 2^10]; log r = sign·exp(cubic)."""
    if side.coef is None:
        return torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool)
    y, saturated = _sat_lookup(side, side.coef, x)
    return torch.exp(y).mul_(sign), saturated


def _sat_lookup(side: _SatSide, coef: Tensor, x: Tensor) -> "tuple[Tensor, Tensor]":
    """(cubic of ``coef`` at x, saturated) for float64 x = -old_logp in [0, 2^10] (``side.coef`` not None)."""
    d, off = None, None
    for h in side.halves:
        dh = (x - h.anchor) if h.from_left else (h.anchor - x)
        dh = torch.clamp(dh, 2.0**h.e_min, h.d_max)
        oh = h.base - ((1023 + h.e_min) << BITS_M)
        if d is None:
            d, off = dh, oh
        else:  # the second half (anchored at R) takes x from the midpoint on
            right = x >= side.split
            d = torch.where(right, dh, d)
            off = torch.where(right, oh, off)
    bits = d.view(torch.int64)
    idx = torch.bitwise_right_shift(bits, _SAT_SHIFT).add_(off)
    u = torch.bitwise_and(bits, (1 << _SAT_SHIFT) - 1).to(torch.float64).mul_(2.0**-_SAT_SHIFT)
    c0, c1, c2, c3 = coef.index_select(0, idx.reshape(-1)).reshape(*x.shape, 4).unbind(-1)
    y = torch.addcmul(c0, u, torch.addcmul(c1, u, torch.addcmul(c2, u, c3)))
    saturated = torch.zeros_like(x, dtype=torch.bool)
    if side.kink_left:
        saturated = saturated | (x <= side.L)
    if side.kink_right:
        saturated = saturated | (x >= side.R)
    return y, saturated


def _sat_table_band_lowp(old_logp: Tensor, table: _SatTable) -> "tuple[Tensor, Tensor]":
    """Fixed-delta fast path for float32/16 outputs of saturating divergences: two table lookups, no solve."""
    x64 = torch.clamp(old_logp.detach().to(torch.float64).neg(), 0.0, _SAT_X_MAX)
    log_lo, sat_lo = _sat_side_log_ratio(table.lower, x64, -1.0)
    log_up, sat_up = _sat_side_log_ratio(table.upper, x64, 1.0)
    lower = torch.where(sat_lo, 0.0, torch.exp(log_lo))
    lower = torch.where(x64 == 0, math.exp(table.log_lower_at_one), lower)
    upper = torch.where(sat_up, torch.exp(-old_logp.detach().to(torch.float64)), torch.exp(log_up))
    return lower.to(old_logp.dtype), upper.to(old_logp.dtype)


# Newton steps after the kink-table lookup. Two suffice wherever the table reaches (x >= 2^-150); below it
# (float64 p within 1e-45 of 1) the start is the value at 2^-150, off by up to a factor ~7 for reverse_kl,
# whose lower bound approaches 1 like δ/log(1/(1-p)): the third step takes that to 1e-15 (measured).
SAT_POLISH_ITERS = 3


def _sat_table_log_band(div: Divergence, logp: Tensor, log1mp: Tensor, delta: float, table: _SatTable):
    """Fixed-delta float64 path for saturating divergences: the tabulated log s* as the start, then Newton
    steps (as for the never-saturating table); exact saturation and the p -> 1 limit as in float32/16."""
    x = torch.clamp(-logp, 0.0, _SAT_X_MAX)
    phi = _phi_fn(div)
    d = torch.full((), delta, dtype=torch.float64, device=logp.device)
    out = []
    for k, (side, (log_a, log_b)) in enumerate(zip((table.lower, table.upper), sides(logp, log1mp))):
        if side.coef is None:
            out.append((torch.full_like(x, math.inf), torch.ones_like(x, dtype=torch.bool)))
            continue
        y, saturated = _sat_lookup(side, side.coef_s, x)
        s, _ = newton_polish(phi, log_a, log_b, d, torch.exp(y), SAT_POLISH_ITERS)
        out.append((s, saturated))
    (s_lo, sat_lo), (s_up, sat_up) = out
    log_lower = torch.where(sat_lo, -math.inf, -s_lo)
    log_lower = torch.where(log1mp == -math.inf, table.log_lower_at_one, log_lower)
    log_upper = torch.where(sat_up, -logp, upper_from_s(s_up, logp, log1mp))
    return log_lower, log_upper


def _has_f64_sat_table(table: Optional[_SatTable]) -> bool:
    return table is not None and all(s.coef is None or s.coef_s is not None for s in (table.lower, table.upper))


_BUILDERS = {"f64": _build_table, "f32": _build_bits_table, "sat": _build_sat_table}


def _never_saturates(div: Divergence) -> bool:
    """f(0) = +inf: neither bound can reach 0 or 1/p for 0 < p < 1 (φ(∞) = a f(0) + b f(1/b) = ∞)."""
    return math.isinf(div.f_at_0) and div.f_at_0 > 0


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def _use_table(div: Divergence, delta: Delta, method: str) -> bool:
    """Whether to take the fixed-delta table path (validates ``method``).

    ``auto`` takes it from the second call with the same (divergence, delta): a run with a fixed delta
    pays the table build once (0.02-0.5 s), while a delta that changes every call (a schedule) never
    builds tables and goes straight to the solvers. Closed forms need no table.
    """
    if method not in ("auto", "table", "solver"):
        raise ValueError(f"method must be 'auto', 'table' or 'solver', got {method!r}")
    tabulable = not div.closed_form and isinstance(delta, float)
    if method == "table" and not tabulable:
        raise ValueError(
            "method='table' needs delta as a Python number (the table is built per delta) and a divergence "
            f"without a closed form; got delta={delta!r}, divergence={div.name!r}"
        )
    if method == "solver" or not tabulable:
        return False
    if method == "table":
        return True
    key = (id(div), div.name, delta)
    seen = _DELTA_SEEN.get(key, 0)
    if seen < 2:  # stops changing after the second call, so torch.compile's guards on it stay valid
        if len(_DELTA_SEEN) > 4 * _TABLE_CACHE_SIZE:
            _DELTA_SEEN.clear()
        _DELTA_SEEN[key] = seen + 1
    return seen >= 1


def _log_band_f64(old_logp: Tensor, delta: Delta, div: Divergence, method: str) -> "tuple[Tensor, Tensor]":
    logp = torch.clamp(old_logp.detach().to(torch.float64), max=0.0)
    # log(1 - p) to an absolute error of ~1e-16, which is all its uses need (they add it to other logs or
    # exponentiate it); -expm1 is accurate to an ulp relative everywhere. -inf at p = 1.
    log1mp = torch.log(-torch.expm1(logp))
    sat_table = _get_table(div, delta, logp.device, "sat") if method == "table" and not _never_saturates(div) else None
    if method == "table" and _never_saturates(div):
        log_lower, log_upper = _table_log_band(div, logp, log1mp, delta)
    elif _has_f64_sat_table(sat_table):
        log_lower, log_upper = _sat_table_log_band(div, logp, log1mp, delta, sat_table)
    else:
        if isinstance(delta, Tensor):
            d = delta.detach().to(device=logp.device, dtype=torch.float64)  # broadcasts against logp
        else:
            d = torch.full((), delta, dtype=torch.float64, device=logp.device)  # a fill, not a host copy
        if div.log_band is not None:
            log_lower, log_upper = div.log_band(logp, log1mp, d)
        else:
            log_lower, log_upper = generic_log_band(div, logp, log1mp, d)
    # Exact invariants 0 <= lower <= 1 <= upper <= 1/p (the formulas can overshoot 1/p by an ulp near p = 1).
    return torch.clamp(log_lower, max=0.0), torch.minimum(torch.clamp(log_upper, min=0.0), -logp)


def log_band(
    old_logp: Tensor,
    delta: Delta,
    divergence: "str | Divergence" = "kl",
    *,
    validate: bool = True,
    method: str = "auto",
) -> "tuple[Tensor, Tensor]":
    """Logs of the Band bounds, exact where the ratio itself under- or overflows.

    Args:
        old_logp: (...) floating tensor of sampled-token log-probabilities under the old policy, <= 0.
        delta: trust-region radius δ > 0: a Python number (fixed for a run: enables the cached fast path) or a
            floating tensor broadcastable to ``old_logp``.
        divergence: a registered name (``bandpo.list_divergences()``) or a :class:`Divergence`.
        validate: check the values of ``old_logp`` (finite, <= 0 up to rounding), which costs one
            host-device synchronisation; ``False`` skips it for hot loops and ``torch.compile``.
        method: ``"auto"`` (default: tables from the second call with the same Python-number delta),
            ``"table"`` (tables now) or ``"solver"`` (no tables).

    Returns:
        ``(log_lower, log_upper)``, float64 tensors shaped like ``old_logp``, with -inf where the lower
        bound saturates at 0 and -old_logp where the upper bound saturates at 1/p. No gradient flows.

    p = 1 (``old_logp == 0``) is the limit p -> 1: upper = 1 = 1/p and lower = lim r_lower (e^{-δ} for KL,
    1 - δ for TV, 1 for χ², (1-δ/2)² for Hellinger), which is also what the perspective convention
    0·f(x/0) = x·lim f(u)/u gives for g_f(1, r).
    """
    div = get_divergence(divergence)
    _check_logp(old_logp, validate)
    delta = _check_delta(delta, old_logp, validate)
    path = "table" if _use_table(div, delta, method) else "solver"  # decided (and counted) once per call
    with torch.no_grad():
        return _chunked(lambda x: _log_band_f64(x, delta, div, path), old_logp, delta)


def band(
    old_logp: Tensor,
    delta: Delta,
    divergence: "str | Divergence" = "kl",
    *,
    validate: bool = True,
    method: str = "auto",
) -> "tuple[Tensor, Tensor]":
    """Ratio bounds ``(lower, upper)`` of the f-divergence band of the sampled token.

    The band is {r ∈ [0, 1/p] : g_f(p, r) <= delta} with p = exp(old_logp) and
    g_f(p, r) = p f(r) + (1-p) f((1 - p r)/(1 - p)) (paper: Band_{f,δ}(p)); 0 <= lower <= 1 <= upper <= 1/p.

    Args: as :func:`log_band`.

    Returns:
        ``(lower, upper)`` with the shape, dtype and device of ``old_logp``, detached. Values are exp of
        :func:`log_band`: ``lower`` underflows to 0 and ``upper`` may overflow to inf where the true bound is
        outside the dtype's range (use :func:`log_band` there). Raw bounds: caps and relaxations belong
        to the loss.

    Example:
        >>> import torch, bandpo
        >>> lower, upper = bandpo.band(torch.log(torch.tensor([0.08, 0.5, 0.95])), 0.05, "kl")
    """
    div = get_divergence(divergence)
    _check_logp(old_logp, validate)
    delta = _check_delta(delta, old_logp, validate)
    use_table = _use_table(div, delta, method)  # decided (and counted) once per call

    def one_pass(x: Tensor) -> "tuple[Tensor, Tensor]":
        if use_table and x.dtype != torch.float64:
            if _never_saturates(div):
                return _table_band_lowp(div, x, delta)
            table = _get_table(div, delta, x.device, "sat")
            if table is not None:
                return _sat_table_band_lowp(x, table)
        log_lower, log_upper = _log_band_f64(x, delta, div, "table" if use_table else "solver")
        return torch.exp(log_lower).to(x.dtype), torch.exp(log_upper).to(x.dtype)

    with torch.no_grad():
        return _chunked(one_pass, old_logp, delta)


CHUNK = 1 << 16
"""Elements per pass on the eager CPU path. One pass over a whole 1M-token batch allocates ~20 fresh buffers
of 8-64 MB, and page-faulting them costs more than the arithmetic; in chunks of 65536 the intermediates
(~4 MB) stay in cache and the allocator reuses their memory (measured 2-3x faster at 2^20 tokens). Not used
under torch.compile (the kernel is fused), on accelerators, or with a tensor delta."""


def _chunked(fn, old_logp: Tensor, delta: Delta) -> "tuple[Tensor, Tensor]":
    """Apply the elementwise ``fn`` (x -> (lower, upper)) to ``old_logp`` in flat chunks of CHUNK elements.

    The chunk count depends only on the shape, never on the data."""
    n = old_logp.numel()
    if n <= CHUNK or old_logp.device.type != "cpu" or isinstance(delta, Tensor) or torch.compiler.is_compiling():
        return fn(old_logp)
    flat = old_logp.detach().reshape(-1)
    outs = None
    for start in range(0, n, CHUNK):
        parts = fn(flat[start : start + CHUNK])
        if outs is None:
            outs = tuple(torch.empty(n, dtype=t.dtype, device=t.device) for t in parts)
        for out, part in zip(outs, parts):
            out[start : start + CHUNK] = part
    return tuple(out.view(old_logp.shape) for out in outs)
