"""The Band operator: exact f-divergence clipping bounds for the sampled token.

    band(old_logp, delta, divergence) = (lower, upper),
    [lower, upper] = {r ∈ [0, 1/p] : g_f(p, r) <= delta},   p = exp(old_logp),
    g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p))

(the paper's Band_{f,δ}(p), arXiv 2603.04918; the two-point reduction is derived in ``theory/REPORT.md``).
g_f is convex in r with g_f(p, 1) = 0, so the band is an interval around 1: its two roots, saturated at 0
and 1/p.

How it is computed (everything in float64, elementwise, with a fixed amount of work per element on
accelerators and under torch.compile: no host-device synchronisation with ``validate=False``, no
data-dependent Python control flow, no ``.item()``; the eager CPU path skips saturated sides, see below):

* closed forms in log space for ``tv``, ``chi2`` and ``hellinger`` (and any divergence registered with its
  own ``log_band``); ``band`` of a float32/16 input with a Python delta evaluates the built-in three in ratio
  space instead (1 ± δ/p for tv, :func:`_closed_band_lowp`), in float64, rounded once;
* every other divergence (``kl``, ``reverse_kl``, ``neyman_chi2``, ``js``, user generators): a start for
  each side's root read from a delta-independent table of the divergence (:mod:`bandpo.operator.tables`,
  built once per divergence on first use or by :func:`prepare`), then a fixed number of float64 Halley
  steps (built-in generators: 2 for float64 outputs, i.e. ``log_band`` and ``band`` of a float64 input,
  1 for ``band`` of a float32/bfloat16/float16 input, whose result is the float64 answer rounded: within
  1 ulp) or Newton steps (user generators: 3 and 2);
* ``band`` of a float32/16 input with a Python-number delta and a divergence that never saturates (``kl``,
  ``neyman_chi2``, user generators with f(0) = inf): one lookup in a per-delta table indexed by the float32
  bits of -old_logp, whose nodes are solved by the float64 path above (:func:`bandpo.operator.tables.
  build_bits_table`, ~5 ms, so a delta that changes every call builds one per call and stays fast);
* the same with a divergence that saturates (``reverse_kl``, ``js``, user generators with f(0) finite): one
  lookup per side in a per-delta "kink table" indexed by the float64 bits of the distance of -old_logp to
  the side's saturation kink (or to 0), exact 0 and 1/p beyond the kinks, nodes again solved by the float64
  path (:func:`bandpo.operator.tables.build_sat_table`, ~10 ms); on the eager CPU one lookup of both sides by
  the float32 bits of -old_logp instead (:class:`bandpo.operator.tables.SatBitsTable`: rows refined next to the
  kinks down to single float32 values, built from the saturated sets and the float64 path, ~20-30 ms of CPU per
  delta), the kink table (built on first need) only for denormal or invalid inputs;
* other float32/16 calls (a per-token tensor delta) take the start table + one Halley step (kl) or one
  Newton step (js, reverse_kl, neyman_chi2, whose starts are accurate to ~1e-5) and finish in
  ratio space (lower = e^{-s}, upper = 1 + ((1-p)/p)(1 - e^{-s}), rounded once); both sides stacked in one
  (2, n) tensor, the table coordinates in float32, the step in float64; on the CPU (eager) only the
  unsaturated sides are solved (:func:`_tabulated_band_lowp`).

On the CPU (eager) every path runs in chunks of CHUNK elements on a pool of single-threaded Python workers
(:func:`_chunked`).

The result is a pure function of the input (values, dtype, device, delta, divergence): the same on every
call, the first included, whatever ran before (tables are built deterministically, keyed on what they
depend on; the cache only saves time). ``log_band`` and float64 ``band`` take the same path for a Python
delta and a per-token tensor delta, so ``log_band(x, d)`` equals ``log_band(x, torch.full_like(x, d,
dtype=torch.float64))`` bitwise; float32/16 ``band`` with a Python delta reads the per-delta tables instead,
and all these results are within 1 ulp of the float64 answer
(tests/test_band_purity.py, tests/test_band_solvers.py). See :mod:`bandpo.operator.solvers` for the parametrisation that keeps every root finite
in log space.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Optional, Union

import torch
from torch import Tensor

from .divergences import Divergence, get_divergence
from .solvers import kl_log_band, kl_phi, reverse_kl_phi, sides, solve_side_robust, upper_from_s, autograd_derivative
from .numerics import LOG_TINY, log1mexp
from .solvers import HALLEY, chi2_log_band, hellinger_log_band, tv_log_band
from .tables import NEWTON_FINISH, _eager_only, _finite_tau, _safe_step, _safe_step_neg, bits_band, get_bits_table, get_start_table
from .tables import lookup_start32, phi_at_inf, phi_fn, saturates, side_phi_at_inf, tau_coords
from .tables import delta_coords, get_sat_bits_table, get_sat_table, sat_band, sat_bits_band, tabulated_side, warp
from .tables import FINE_HALLEY, FINE_NEWTON, fine_tau_coords, get_fine_table, lookup_fine32

__all__ = ["band", "log_band", "prepare"]

Delta = Union[float, Tensor]
_TINY = math.exp(LOG_TINY)  # the smallest mass the solvers use (exp of their clamp of log masses)


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _check_delta(delta: Delta, old_logp: Tensor, validate: bool) -> Delta:
    if isinstance(delta, bool) or not isinstance(delta, (numbers.Real, Tensor)):
        raise ValueError(f"delta must be a positive finite real number or a floating tensor, got {delta!r}")
    if isinstance(delta, Tensor):
        if not delta.is_floating_point():
            raise ValueError(f"delta must be a floating tensor, got dtype {delta.dtype}")
        # by hand: torch.broadcast_shapes imports sympy on first use (0.3 s of a first call, measured)
        ds, xs = tuple(delta.shape), tuple(old_logp.shape)
        if len(ds) > len(xs) or any(d not in (1, x) for d, x in zip(reversed(ds), reversed(xs))):
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
# Solvers behind the public functions
# ----------------------------------------------------------------------------------------------------------


@_eager_only  # 64 unrolled bisection steps make inductor's graph explode; run it eagerly
def generic_log_band(div: Divergence, logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """Any registered generator by the robust solver: saturation test, then bisection + Newton per side.

    The reference the tabulated path is tested against (and the solver that builds the tables)."""
    phi = phi_fn(div)
    (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
    out = []
    for log_a, log_b in ((la_lo, lb_lo), (la_up, lb_up)):
        saturated = phi_at_inf(div, log_a, log_b) <= delta
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


def _solver_log_band(logp: Tensor, log1mp: Tensor, delta: Tensor, div: Divergence) -> "tuple[Tensor, Tensor]":
    """Reference path without tables (tests and benchmarks only): the closed form, KL's bracketed Newton
    solver, or the robust bisection + Newton solver. float64 in and out."""
    if div.log_band is not None:
        return div.log_band(logp, log1mp, delta)
    if div.phi is kl_phi:
        return kl_log_band(logp, log1mp, delta)
    return generic_log_band(div, logp, log1mp, delta)


def _tabulated_sides(logp: Tensor, log1mp: Tensor, delta: Tensor, div: Divergence, lowp: bool):
    """(s_lo, sat_lo, s_up, sat_up, (1-p)/p, p) from the divergence's start table plus a fixed number of
    Halley/Newton steps per side (float64); ``lowp``: the result will be rounded to float32/16 (one step
    fewer). sat_* are None for divergences that never saturate. Work shared by the sides: the mass ratio
    (1-p)/p is the reciprocal of p/(1-p) (one exp), and τ = log delta's coordinates (never-saturating
    divergences)."""
    table = get_start_table(div, logp.device)
    (lp, l1), _ = sides(logp, log1mp)  # lower side: (a, b) = (p, 1 - p); upper side: (1 - p, p)
    p, q = torch.exp(lp), torch.exp(l1)
    zeta = warp(torch.nan_to_num((lp - l1).to(torch.float32)))  # NaN (an unsanitised invalid input) -> 0: no
    # index leaves the table; odd in its argument: the upper side's is -zeta (float32: a
    # table coordinate only)
    rab_lo = p / q  # p/(1-p) of the clamped masses: within [2^-1022, 2^1022], and so is its reciprocal
    rab_up = torch.reciprocal(rab_lo)
    coords = None if table.saturating else delta_coords(table, delta)
    s_lo, sat_lo = tabulated_side(div, table, lp, l1, p, q, zeta, delta, lowp, rab_lo, coords)
    s_up, sat_up = tabulated_side(div, table, l1, lp, q, p, -zeta, delta, lowp, rab_up, coords)
    return s_lo, sat_lo, s_up, sat_up, rab_up, p


def _tabulated_log_band(
    logp: Tensor, log1mp: Tensor, delta: Tensor, div: Divergence, lowp: bool
) -> "tuple[Tensor, Tensor]":
    """(log_lower, log_upper) by :func:`_tabulated_sides` (float64)."""
    s_lo, sat_lo, s_up, sat_up, _, _ = _tabulated_sides(logp, log1mp, delta, div, lowp)
    log_lower = -s_lo
    log_upper = upper_from_s(s_up, logp, log1mp)
    if sat_lo is not None:
        log_lower = torch.where(sat_lo, -math.inf, log_lower)
        log_upper = torch.where(sat_up, -logp, log_upper)
    if math.isinf(div.slope_at_inf):
        # p = 1 exactly: with an infinite recession slope no r < 1 is allowed (the p -> 1 limit). With a
        # finite slope the clamped complement mass (the smallest normal float64) already gives the limit.
        log_lower = torch.where(log1mp == -math.inf, 0.0, log_lower)
    return log_lower, log_upper


def _sanitise(old_logp: Tensor, delta: Delta) -> "tuple[Tensor, Tensor, Tensor, Tensor]":
    """(bad, logp, log1mp, delta) in float64: logp clamped to <= 0, and 1.0 in logp/delta where old_logp or a
    tensor delta is invalid (``bad``), so no NaN reaches an index."""
    x = old_logp.detach().to(torch.float64)
    bad = ~torch.isfinite(x)
    if isinstance(delta, Tensor):
        d = delta.detach().to(device=x.device, dtype=torch.float64)
        bad = bad | ~(torch.isfinite(d) & (d > 0))
        d = torch.where(bad, 1.0, d)
    else:
        d = torch.full((), delta, dtype=torch.float64, device=x.device)  # a fill, not a host copy
    logp = torch.where(bad, -1.0, torch.clamp(x, max=0.0))
    # log(1 - p) to a relative error of ~1e-16 (log1mexp: log1p(-p) for small p), which the saturating
    # divergences' φ(∞) = -log(1 - p) on the lower side needs: log(-expm1(logp)) is accurate only to an
    # absolute 1e-16, i.e. 1e-16/p relative, which moved the saturation kink delta = φ(∞) of rare tokens.
    # -inf at p = 1.
    log1mp = log1mexp(logp)
    return bad, logp, log1mp, d


def _log_band_f64(
    old_logp: Tensor, delta: Delta, div: Divergence, lowp: bool, reference: bool = False
) -> "tuple[Tensor, Tensor]":
    """float64 (log_lower, log_upper) of one pass; NaN in both where old_logp or a tensor delta is invalid."""
    bad, logp, log1mp, d = _sanitise(old_logp, delta)
    if reference:
        log_lower, log_upper = _solver_log_band(logp, log1mp, d, div)
    elif div.log_band is not None:
        log_lower, log_upper = div.log_band(logp, log1mp, d)
    else:
        log_lower, log_upper = _tabulated_log_band(logp, log1mp, d, div, lowp)
    # Exact invariants 0 <= lower <= 1 <= upper <= 1/p (the formulas can overshoot 1/p by an ulp near p = 1).
    log_lower = torch.clamp(log_lower, max=0.0)
    log_upper = torch.minimum(torch.clamp(log_upper, min=0.0), -logp)
    return torch.where(bad, math.nan, log_lower), torch.where(bad, math.nan, log_upper)


def _fine_table(div: Divergence, device: torch.device):
    """The fine start table of the float32/16 path with a tensor delta: refined for the step that follows
    (FINE_NEWTON before one Newton step, NEWTON_FINISH; FINE_HALLEY before one Halley step)."""
    return get_fine_table(div, device, FINE_NEWTON if div.phi in NEWTON_FINISH else FINE_HALLEY)


def _kl_halley_neg(s: Tensor, a: Tensor, b: Tensor, rab: Tensor, delta: Tensor, one: Tensor) -> Tensor:
    """-s after one safeguarded Halley step on KL's side equation φ(s) = delta from ``s`` (float64, any shape;
    a, b the side's masses, rab = a/b, delta broadcastable), in fewer operations than the general evaluator
    (:func:`~bandpo.operator.solvers.kl_phi2`): with x = 1 - e^{-s} = -m and v = 1 + (a/b) x,
    φ = a s - b log v, φ' = (a/b) x / v and φ''/φ' = e^{-s}/(x v) = -(1 + m)/(m v), so the step
    t = (φ - delta)/φ' is divided by 1 - t φ''/(2 φ') = 1 + (t/2)(1 + m)/(m v), kept in [1/2, 2]."""
    m = torch.neg(s).expm1_()  # e^{-s} - 1 = -x
    rx = torch.mul(rab, m).neg_()  # (a/b) x
    v = torch.add(rx, 1.0)
    t = torch.mul(a, s).addcmul_(b, torch.log1p(rx), value=-1.0).sub_(delta)  # φ - delta
    t = t.div_(rx.div_(v))  # the Newton step (rx / v = φ', in place on rx)
    ratio = torch.add(m, 1.0).div_(v.mul_(m))  # -φ''/φ' (in place on v)
    corr = torch.addcmul(one, t, ratio, value=0.5).clamp_(0.5, 2.0)
    return _safe_step_neg(s, t.div_(corr))


def _compaction(kept: Tensor, split: int) -> "tuple[Tensor, Tensor, int]":
    """(keep, slot, k0) for a flat 0/1 int64 ``kept`` (CPU): ``keep`` the ascending indices where kept is 1
    (what ``kept.nonzero()`` gives), ``slot`` each element's position in ``keep``, or len(keep) (a spare slot)
    where kept is 0, so that ``cat((v, spare)).index_select(0, slot)`` scatters a compacted ``v`` back, and k0
    the number kept among the first ``split`` elements (``keep[:k0]`` are those). By a cumulative sum and a
    scatter: 2.3x faster than ``nonzero`` on the CPU (2^17 elements, 64% kept: 209 vs 484 us measured), which
    reads its mask with a branch per element."""
    pos = torch.cumsum(kept, 0)
    k = int(pos[-1]) if pos.numel() else 0  # host reads: the CPU path only
    k0 = int(pos[split - 1]) if split else 0
    slot = pos.sub_(1 + k).mul_(kept).add_(k)  # kept: its rank pos - 1; otherwise k
    index = torch.arange(kept.numel(), device=kept.device)
    keep = torch.empty(k + 1, dtype=torch.int64, device=kept.device).scatter_(0, slot, index)[:k]
    return keep, slot, k0


def _reverse_kl_newton_neg(s: Tensor, a: Tensor, b: Tensor, rab: Tensor, delta: Tensor) -> Tensor:
    """-s after one safeguarded Newton step on KL(new ‖ old)'s side equation φ(s) = delta from ``s`` (float64,
    any shape; a, b the side's masses, rab = a/b, delta broadcastable): φ = (b + a x) log v - a w s and
    φ' = a w (log v + s) with w = e^{-s}, x = 1 - w = -m, v = 1 + (a/b) x, as
    :func:`~bandpo.operator.solvers.reverse_kl_phi2` in 14 operations instead of 16. (Not φ = log v - φ', which
    a + b = 1 allows: 1 - a w loses the relative accuracy of b + a x when both are small, 8 ulps measured.)"""
    ns = torch.neg(s)
    m = torch.expm1(ns)  # -x
    log_v = torch.mul(rab, m).neg_().log1p_()
    aw = ns.exp_().mul_(a)  # a e^{-s}, in place on -s
    d1 = torch.add(log_v, s).mul_(aw)
    phi = torch.addcmul(b, a, m, value=-1.0).mul_(log_v).addcmul_(aw, s, value=-1.0)
    return _safe_step_neg(s, phi.sub_(delta).div_(d1))  # (φ - delta)/φ', in place


def _tabulated_band_lowp(
    old_logp: Tensor, delta: Delta, div: Divergence, out: "Optional[tuple[Tensor, Tensor]]" = None
) -> "tuple[Tensor, Tensor]":
    """(lower, upper) in old_logp's (float32/16) dtype by the fine start table (:func:`_fine_table`; user
    generators: the start table) + one float64 step, both sides
    stacked in one (2, n) tensor (row 0: the lower side, (a, b) = (p, 1 - p); row 1: the upper side,
    (a, b) = (1 - p, p)), so that every operation runs once on both (half the operations of two sides, which
    matters with small chunks). Finished in ratio space: lower = e^{-s_lo},
    upper = 1 + ((1-p)/p)(1 - e^{-s_up}) (float64, then rounded once).

    Accuracy budget (float32 output, within 1 ulp of the float64 answer rounded): the step needs a start within
    ~1e-5 relative (Newton: js, reverse_kl, neyman_chi2, NEWTON_FINISH; hence their 8x finer τ grid) or ~2e-4
    (Halley: kl, 4x), and φ(s0) - δ in
    float64 (it cancels to ~1e-5 of φ); what only places the start is float32: the table coordinates (ζ; τ = log
    delta, or τ = log log1p(δ/(φ(∞) - δ)) = log(-log(1 - δ/φ(∞))) for the saturating divergences, from a float64
    δ/(φ(∞) - δ)) and the polynomial (float32 rounding moves the start by ~1e-7); its exp is float64 (log s*
    spans [-350, 710]). The saturation test δ < φ(∞) is float64, as on the float64 path.

    Few operations per chunk (each costs a dispatch and, on the thread pool, a round trip of the GIL): invalid
    inputs are not replaced but carried (every index is sanitised: nan_to_num on the table coordinates) and
    marked at the end by adding ``pad`` (0, or NaN where old_logp or delta is invalid); the saturated values
    are lower = 0 and upper = inf, then 1/p by the minimum with 1/p; p = 1 a masked fill of the lower bound
    with 1 (a mask that is almost never set: as cheap as a multiplication). On the eager CPU path only the
    unsaturated sides of a saturating divergence are looked up and stepped (gathered, then scattered back).
    User generators (no closed-form φ'') take :func:`_tabulated_sides` (per side, Newton steps). ``out``: two tensors of old_logp's shape and
    dtype to write the result into (the rounding is the same as ``.to(dtype)``: one cast of the float64 sum)."""
    halley = HALLEY.get(div.phi)
    x = old_logp.detach().to(torch.float64)
    if isinstance(delta, Tensor):
        log_d = torch.log(delta.detach())  # finite iff 0 < delta < inf (NaN or -inf for delta <= 0, inf for inf)
        pad = torch.add(x, log_d).mul_(0.0)  # 0 where both are finite; NaN where either is not (inf * 0)
        d = delta.detach().to(device=x.device, dtype=torch.float64)
    else:
        pad = x - x  # 0 where old_logp is finite, NaN where it is ±inf or NaN
        log_d = torch.full((), math.log(delta), dtype=torch.float32, device=x.device)
        d = torch.full((), delta, dtype=torch.float64, device=x.device)  # a fill, not a host copy
    logp = x.clamp_(max=0.0)  # (x is a fresh copy) -inf stays -inf: its clamped masses are finite
    one = torch.ones((), dtype=torch.float64, device=x.device)
    if halley is None:
        log1mp = torch.expm1(logp).neg_().log_()
        s_lo, sat_lo, s_up, sat_up, rab_up, p = _tabulated_sides(logp, log1mp, d, div, True)
        lower = torch.neg(s_lo).exp_().clamp_(max=1.0)
        em = torch.neg(s_up).expm1_()
    else:
        table = _fine_table(div, x.device)
        q_raw = torch.expm1(logp).neg_()  # 1 - p to an ulp; 0 at p = 1
        log1mp = torch.log(q_raw)
        lp, l1 = torch.clamp(logp, min=LOG_TINY), torch.clamp(log1mp, min=LOG_TINY)  # as solvers.sides
        p, q = torch.exp(lp), q_raw.clamp_(min=_TINY)  # the clamped masses
        a, b = torch.stack((p, q)), torch.stack((q, p))  # (2, n): row 0 the lower side, row 1 the upper side
        rab = a / b  # within [2^-1022, 2^1022]; with it given, the φ evaluators never read log a
        z = warp(torch.nan_to_num((lp - l1).to(torch.float32)))  # NaN (an unsanitised invalid input) -> 0
        zeta = torch.stack((z, z.neg()))  # warp is odd: the upper side's coordinate is -ζ
        keep, rab_k = None, rab  # the flat indices of the sides solved (None: all), and their a/b
        if table.saturating:
            log_b = torch.stack((l1, lp))
            phinf = side_phi_at_inf(div, None, log_b, a, b)  # closed forms (js, reverse_kl): a and log b only
            saturated = torch.ge(d, phinf)  # φ(∞) <= delta: no interior root (φ(∞) is NaN only for an invalid
            # input, whose result is NaN anyway)
            if x.device.type == "cpu" and not torch.compiler.is_compiling():
                # On the CPU only the unsaturated sides are solved (on LLM-like tokens ~40% of the sides saturate:
                # the upper side of confident tokens, the lower side of rare ones), their operands gathered into
                # contiguous vectors (see _compaction). Not on accelerators (the count of solved sides goes to
                # the host) nor under torch.compile (a data-dependent shape): there every side is solved, with
                # the same operations per side, and the saturated ones are replaced by masked fills.
                kept = saturated.logical_not().view(-1).to(torch.int64)  # 1 where solved
                keep, slot, k0 = _compaction(kept, lp.numel())  # keep[:k0]: lower sides, keep[k0:]: upper
                a, b, rab_k, zeta, phinf = (t.reshape(-1).index_select(0, keep) for t in (a, b, rab, zeta, phinf))
                if d.dim():
                    d = d.expand(rab.shape).reshape(-1).index_select(0, keep)  # (2, *shape): both sides
            # τ = log(log1p(δ/(φ(∞) - δ))), in float32 from the float64 quotient, clamped to [2^-60, 2^52]
            # (δ/φ(∞) from ~1e-18 to 1 - 2^-52). Saturated sides, where solved (φ(∞) <= δ, quotient <= -1), and
            # invalid inputs (NaN) take a moderate finite start: their result is replaced, and ordinary arguments
            # keep every later exp/log off the CPU's slow paths (denormal, infinite or NaN arguments).
            tau = torch.div(d, torch.sub(phinf, d)).to(torch.float32).abs_().nan_to_num_(nan=1.0)
            tau = tau.clamp_(2.0**-60, 2.0**52).log1p_().log_()  # finite: log1p of [2^-60, 2^52]
            coords = fine_tau_coords(table, tau)
        else:
            saturated = None
            coords = fine_tau_coords(table, _finite_tau(log_d.to(torch.float32)))  # τ = log delta, both sides
        s = lookup_fine32(table, zeta, coords)
        # log s* spans [-350, 710] in general: a float64 exp. The saturating divergences' stays in [-42, 4.3] over
        # the whole clamped table domain (measured), where a float32 exp (~1e-7, the start needs ~1e-5) is half
        # the cost.
        s = s.exp_().to(torch.float64) if table.saturating else s.to(torch.float64).exp_()
        if div.phi is reverse_kl_phi:
            ns = _reverse_kl_newton_neg(s, a, b, rab_k, d)
        elif div.phi in NEWTON_FINISH:
            phi, d1, _ = halley(s, None, None, a, b, rab_k, second=False)
            ns = _safe_step_neg(s, phi.sub_(d).div_(d1))  # -s after the step
        elif div.phi is kl_phi:
            ns = _kl_halley_neg(s, a, b, rab_k, d, one)
        else:
            phi, d1, d2 = halley(s, None, None, a, b, rab_k)
            t = phi.sub_(d).div_(d1)  # the Newton step; Halley divides it by 1 - t φ''/(2 φ') (kept in [1/2, 2])
            corr = torch.addcmul(one, t, d2.div_(d1), value=-0.5).clamp_(0.5, 2.0)
            ns = _safe_step_neg(s, t.div_(corr))
        rab_up, sat_lo, sat_up = rab[1], None, None
        if keep is not None:
            # e^{-s} of the solved lower sides and expm1(-s) of the solved upper ones, then back to one value
            # per token, a saturated side's from the spare slot: lower 0, expm1 -inf, so upper = +inf and 1/p
            # after the minimum. (A masked fill with ~40% of the mask set costs 5x a multiplication on the CPU:
            # the branch on each element mispredicts.)
            n_tok = lp.numel()
            lower = torch.cat((torch.exp(ns[:k0]), ns.new_zeros(1)))
            lower = lower.index_select(0, slot[:n_tok].clamp(max=k0)).view(lp.shape)  # row 0: spare k0
            em = torch.cat((torch.expm1(ns[k0:]), ns.new_full((1,), -math.inf)))
            em = em.index_select(0, slot[n_tok:].sub(k0)).view(lp.shape)  # row 1: ranks - k0, spare k - k0
        else:
            lower = ns[0].exp()  # e^{-s} <= 1 (s >= 0, or NaN: carried to the pad), no clamp needed
            em = torch.expm1(ns[1])
            if saturated is not None:
                sat_lo, sat_up = saturated[0], saturated[1]
    inv_p = torch.reciprocal(p)  # of the clamped p: differs from e^{-logp} only where both overflow float32
    # em = expm1(-s_up); 1 + ((1-p)/p)(1 - e^{-s}) >= 1 for s >= 0, so no clamp at 1 is needed
    upper = torch.addcmul(one, rab_up, em, value=-1.0)
    if sat_lo is not None:
        lower = lower.masked_fill_(sat_lo, 0.0)  # 0 where saturated
        upper = upper.masked_fill_(sat_up, math.inf)  # then 1/p by the minimum below (a select costs 3x more)
    upper = torch.minimum(upper, inv_p, out=upper)
    if math.isinf(div.slope_at_inf):
        # p = 1 exactly (see _tabulated_log_band); lower <= 1 elsewhere
        lower = lower.masked_fill_(log1mp == -math.inf, 1.0)
    if out is None:
        return lower.add_(pad).to(old_logp.dtype), upper.add_(pad).to(old_logp.dtype)
    torch.add(lower, pad, out=out[0])  # computed in float64, cast once into old_logp's dtype
    torch.add(upper, pad, out=out[1])
    return out


_LOG2E = 1.0 / math.log(2.0)


def _closed_band_lowp(
    log_band_fn, delta: float, old_logp: Tensor, out: "Optional[tuple[Tensor, Tensor]]" = None
) -> "tuple[Tensor, Tensor]":
    """float32/16 (lower, upper) of a built-in closed form (tv, chi2, hellinger) with a Python delta, in ratio
    space and float64, rounded once: with X = -log p and 1/p = 2^(X·log2 e) (torch's float64 exp2 is ~4x
    faster than its exp on the CPU),

        tv:        lower = max(1 - δ/p, 0),           upper = min(1 + δ/p, 1/p)
        chi2:      t = sqrt(δ (1-p)/p),  lower = max(1 - t, 0),  upper = min(1 + t, 1/p)
        hellinger: c = 1 - δ/2, s = sqrt(δ (1 - δ/4)), t = sqrt((1-p)/p):
                   lower = max(c - t s, 0)^2,  upper = (c + t s)^2, or 1/p where p >= c^2 (all saturated, δ >= 2)

    (the formulas of :mod:`bandpo.operator.solvers`, whose log-space versions the float64 path evaluates;
    (1-p)/p = expm1(X) in full precision). Each float64 value is within a few 1e-16 relative of the log-space
    one except within ~1e-9 relative of a saturation kink, where both carry the problem's own condition number,
    so the rounded result is within 1 ulp of the float64 answer. NaN where old_logp is not finite. ``out``: two
    flat tensors of old_logp's dtype to write into."""
    x = old_logp.detach().reshape(-1)
    pad = (x - x).to(torch.float32)  # 0 where old_logp is finite, NaN where it is ±inf or NaN
    # X = -log p >= 0, clamped at 700 (beyond, 1/p overflows float64; every float32/16 result is then 0 or inf)
    X = x.to(torch.float64).neg_().clamp_(0.0, 700.0)
    inv_p = torch.mul(X, _LOG2E).exp2_()
    if log_band_fn is tv_log_band:
        t = torch.mul(inv_p, delta)
        lower = torch.sub(1.0, t).clamp_(min=0.0)
        upper = torch.minimum(t.add_(1.0), inv_p)
    elif log_band_fn is chi2_log_band:
        t = torch.expm1(X).mul_(delta).sqrt_()
        lower = torch.sub(1.0, t).clamp_(min=0.0)
        upper = torch.minimum(t.add_(1.0), inv_p)
    elif delta >= 2.0:  # hellinger: every bound saturated
        lower, upper = torch.zeros_like(X), inv_p
    else:
        c = 1.0 - 0.5 * delta
        ts = torch.expm1(X).sqrt_().mul_(math.sqrt(delta * (1.0 - 0.25 * delta)))
        lower = torch.sub(c, ts).clamp_(min=0.0).square_()
        sat = torch.le(X, -2.0 * math.log(c), out=torch.empty_like(X))  # p >= c^2
        # a select as arithmetic on 0/1 (a where on this mask mispredicts a branch per element on the CPU)
        upper = torch.minimum(ts.add_(c).square_(), inv_p).mul_(torch.sub(1.0, sat)).addcmul_(sat, inv_p)
    if out is None:
        out = tuple(torch.empty(x.shape, dtype=old_logp.dtype, device=x.device) for _ in range(2))
    torch.add(lower, pad, out=out[0])  # float64 (pad is 0 or NaN), rounded once
    torch.add(upper, pad, out=out[1])
    return out[0].view(old_logp.shape), out[1].view(old_logp.shape)


_CLOSED_LOWP = (tv_log_band, chi2_log_band, hellinger_log_band)

_AVX2_KERNELS = torch.backends.cpu.get_cpu_capability() == "AVX2"
"""ATen (and so torch.compile's C++ code) runs AVX2 kernels in this process: on a CPU without AVX-512, or with
``ATEN_CPU_CAPABILITY=avx2`` (the trainer's pinned numerical mode). Read once: the variable is read when torch loads."""


def _lookup(fn):
    """``fn(x, d, out=None)`` (a per-delta table lookup, or a float32 closed form written into ``out``) as
    :func:`_chunked` calls it, run eagerly, outside the compiled graph, when torch.compile generates AVX2 code on the
    CPU. Inductor's AVX2 code for these paths is wrong in torch 2.13.0 (measured on an AMD EPYC with
    ``ATEN_CPU_CAPABILITY=avx2``: garbage bounds for reverse_kl, tv, chi2 and hellinger, a crashing kernel for kl),
    while its AVX-512 code and eager mode agree (tests/test_band_solvers.py::test_torch_compile_matches_eager runs both). The cost is one
    graph break per call in that configuration only."""
    return _eager_only(fn) if _AVX2_KERNELS else fn


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


TABLE_DELTA_MIN = 1e-5
"""Smallest Python delta served by the per-delta float32 tables (bits and kink tables). They were measured
within 1 ulp of the float64 answer down to 1e-5 (worst 0.6 ulp over 100k tokens with p from 1e-300 to 1);
below, kl's bits table reached 3 ulps at 3e-6 (its segments do not resolve the lower bound's turn at
p ~ delta/10) and the kink tables thousands of ulps at 1e-13. Smaller deltas take the per-token path (start
table + one step), within 1 ulp down to 1e-15 (tests/test_band_solvers.py)."""


def prepare(divergence: "str | Divergence" = "kl", device: "Optional[torch.device | str]" = None) -> None:
    """Build (and cache) the divergence's start tables ahead of the first :func:`band` call on ``device``.

    Optional: the first call builds them otherwise. They do not depend on delta, so one call serves fixed
    deltas, schedules and per-token tensor deltas alike: the start table, and for the built-in generators
    the fine table derived from it (float32/16 with a tensor delta). Nothing to do for closed forms."""
    div = get_divergence(divergence)
    if div.log_band is None:
        dev = torch.device(device if device is not None else "cpu")
        get_start_table(div, dev)
        if div.phi in HALLEY:
            _fine_table(div, dev)


def log_band(
    old_logp: Tensor,
    delta: Delta,
    divergence: "str | Divergence" = "kl",
    *,
    validate: bool = True,
) -> "tuple[Tensor, Tensor]":
    """Logs of the Band bounds, exact where the ratio itself under- or overflows.

    Args:
        old_logp: (...) floating tensor of sampled-token log-probabilities under the old policy, <= 0.
        delta: trust-region radius δ > 0: a Python number or a floating tensor broadcastable to
            ``old_logp`` (per-token radii); both take the same path (a schedule costs nothing extra).
        divergence: a registered name (``bandpo.list_divergences()``) or a :class:`Divergence`.
        validate: check the values of ``old_logp`` and of a tensor ``delta`` (finite, <= 0 up to rounding;
            > 0), which costs one host-device synchronisation; ``False`` skips it for hot loops and
            ``torch.compile``: then an element whose old_logp is NaN or ±inf, or whose delta is NaN, inf or
            <= 0, gets NaN in both bounds.

    Returns:
        ``(log_lower, log_upper)``, float64 tensors shaped like ``old_logp``, with -inf where the lower
        bound saturates at 0 and -old_logp where the upper bound saturates at 1/p. No gradient flows.
        Accuracy: within ~1e-12 relative of the exact ratio (tests/test_band_reference.py), for
        delta in [1e-12, 1e3] (the start table's range; beyond it the start is extrapolated).

    p = 1 (``old_logp == 0``) is the limit p -> 1: upper = 1 = 1/p and lower = lim r_lower (e^{-δ} for KL,
    1 - δ for TV, 1 for χ², (1-δ/2)² for Hellinger), which is also what the perspective convention
    0·f(x/0) = x·lim f(u)/u gives for g_f(1, r).
    """
    div = get_divergence(divergence)
    _check_logp(old_logp, validate)
    delta = _check_delta(delta, old_logp, validate)
    if div.log_band is None:
        get_start_table(div, old_logp.device)  # built here, before the chunks run on the workers
    with torch.no_grad():
        return _chunked(lambda x, d: _log_band_f64(x, d, div, False), old_logp, delta, out_dtype=torch.float64)


def band(
    old_logp: Tensor,
    delta: Delta,
    divergence: "str | Divergence" = "kl",
    *,
    validate: bool = True,
) -> "tuple[Tensor, Tensor]":
    """Ratio bounds ``(lower, upper)`` of the f-divergence band of the sampled token.

    The band is {r ∈ [0, 1/p] : g_f(p, r) <= delta} with p = exp(old_logp) and
    g_f(p, r) = p f(r) + (1-p) f((1 - p r)/(1 - p)) (paper: Band_{f,δ}(p), arXiv 2603.04918);
    0 <= lower <= 1 <= upper <= 1/p.

    Args: as :func:`log_band`.

    Returns:
        ``(lower, upper)`` with the shape, dtype and device of ``old_logp``, detached. Values are exp of the
        float64 log bounds, rounded to the dtype (float32/16 inputs take one iteration step fewer than
        float64, enough for the rounded result: within 1 ulp of the float64 answer). ``lower`` underflows to 0 and
        ``upper`` may overflow to inf where the true bound is outside the dtype's range (use
        :func:`log_band` there). Raw bounds: caps and relaxations belong to the loss.

    Example:
        >>> import torch, bandpo
        >>> lower, upper = bandpo.band(torch.log(torch.tensor([0.08, 0.5, 0.95])), 0.05, "kl")
    """
    div = get_divergence(divergence)
    _check_logp(old_logp, validate)
    delta = _check_delta(delta, old_logp, validate)
    lowp = old_logp.dtype != torch.float64

    if lowp and isinstance(delta, float) and div.log_band in _CLOSED_LOWP:
        # float32/16 output, Python delta, built-in closed form: evaluated in ratio space
        with torch.no_grad():
            return _chunked(_lookup(lambda x, d, out=None: _closed_band_lowp(div.log_band, delta, x, out)), old_logp,
                            delta, writes_out=True)

    per_delta = lowp and isinstance(delta, float) and delta >= TABLE_DELTA_MIN and div.log_band is None
    if per_delta and not saturates(div):
        # float32/16 output, Python delta, never-saturating divergence: the per-delta float32 table
        table = get_bits_table(div, delta, old_logp.device, lambda lp: _log_band_f64(lp, delta, div, False))
        with torch.no_grad():
            return _chunked(_lookup(lambda x, d, out=None: bits_band(table, x, out)), old_logp, delta, writes_out=True)

    if per_delta and old_logp.device.type == "cpu" and not torch.compiler.is_compiling():
        # float32/16 output, Python delta, saturating divergence, eager CPU: one lookup by the float32 bits of
        # -old_logp (None where the saturated sets are not intervals at the ends: then the start table + Halley
        # below); the kink table, built on first need, only for marked, denormal or invalid elements
        bits = get_sat_bits_table(div, delta, lambda lp: _log_band_f64(lp, delta, div, False))
        if bits is not None:
            redo = functools.partial(_sat_redo, div, delta)
            with torch.no_grad():
                return _chunked(lambda x, d, out=None: sat_bits_band(bits, x, redo, out), old_logp, delta,
                                writes_out=True)
    elif per_delta:
        # float32/16 output, Python delta, saturating divergence: the per-delta kink table (None where the
        # saturated sets are not intervals at the ends: then the start table + Halley below)
        sat = get_sat_table(div, delta, old_logp.device, lambda lp: _log_band_f64(lp, delta, div, False))
        if sat is not None:
            with torch.no_grad():
                return _chunked(_lookup(lambda x, d, out=None: sat_band(sat, x, out)), old_logp, delta,
                                writes_out=True)

    if lowp and div.log_band is None:
        # the table the chunks read, built here before the chunks run on the workers
        if div.phi in HALLEY:
            _fine_table(div, old_logp.device)
        else:  # user generators: the start table
            get_start_table(div, old_logp.device)
        with torch.no_grad():
            return _chunked(lambda x, d, out=None: _tabulated_band_lowp(x, d, div, out), old_logp, delta,
                            writes_out=True)

    def one_pass(x: Tensor, d: Delta) -> "tuple[Tensor, Tensor]":
        log_lower, log_upper = _log_band_f64(x, d, div, lowp)
        return torch.exp(log_lower).to(x.dtype), torch.exp(log_upper).to(x.dtype)

    if div.log_band is None:
        get_start_table(div, old_logp.device)  # built here, before the chunks run on the workers
    with torch.no_grad():
        return _chunked(one_pass, old_logp, delta)


def _sat_redo(div: Divergence, delta: float, old_logp: Tensor) -> "tuple[Tensor, Tensor]":
    """(lower, upper) of the few float32/16 elements :func:`~bandpo.operator.tables.sat_bits_band` does not serve
    (marked segments, denormal or invalid -old_logp; CPU): the kink table's lookup, or where its nodes are not all
    finite (no kink table) the start table + one step. A function of (divergence, delta, old_logp) alone."""
    sat = get_sat_table(div, delta, old_logp.device, lambda lp: _log_band_f64(lp, delta, div, False))
    if sat is not None:
        return sat_band(sat, old_logp)
    return _tabulated_band_lowp(old_logp, delta, div)


CHUNK = 1 << 16
"""Elements per chunk on the eager CPU path (:func:`_chunked`). One pass over a whole 1M-token batch allocates
~100 fresh buffers of 4-8 MB, and page-faulting them costs more than the arithmetic; in chunks the
intermediates stay in cache and the allocator reuses their memory (2-3x faster at 2^20 tokens). The chunks run
on a small pool of Python threads whose torch operations are single-threaded (:func:`_start_workers`): no
fork/join of the intra-op pool per operation, and operations large enough that handing the interpreter lock
between the workers once per operation costs little. Measured on 2 cores, 2^20 float32 tokens, interleaved in
one process: against the intra-op split of 2^16-element chunks used before, a fixed delta 1.7-2.6x faster
(tv 48.7 -> 21.0 ms, js 65.9 -> 24.8 ms), the per-token delta path 1.3x (kl 61 -> 46 ms, js 81 -> 64 ms);
2^16 is 1.1-1.2x faster than 2^15 and on par with 2^17 (also for the per-token path, whose two sides are
stacked in (2, CHUNK) tensors). Not used under torch.compile (the kernel is fused) or
on accelerators. Elementwise (a tensor delta is chunked alongside), so it never changes a result."""


_POOL: "Optional[tuple[int, ThreadPoolExecutor]]" = None
_POOL_LOCK = threading.Lock()


def _executor(n_threads: int) -> ThreadPoolExecutor:
    """The shared pool of ``n_threads`` workers (rebuilt when torch's thread count changes), each running torch
    single-threaded (see :func:`_start_workers`)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != n_threads:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (n_threads, _start_workers(n_threads))
        return _POOL[1]


def _start_workers(n_threads: int) -> ThreadPoolExecutor:
    """A pool of ``n_threads`` started workers whose torch operations run single-threaded.

    A chunk's operations must not fork/join torch's intra-op pool (2 workers x 2 intra-op threads on 2 cores
    is slower than either alone), and must be large enough that handing the interpreter lock between workers
    once per operation does not dominate: with chunks below the parallelisation threshold (2^15 elements)
    two workers were no faster than one on 2 cores (measured; the lock changes hands ~100 times per chunk).
    ``torch.set_num_threads(1)`` in each worker makes its operations serial whatever their size; it also
    sets the count that threads started later inherit, so the caller's count is put back once every worker
    has started (the caller's own count, which is per thread, is never changed)."""
    ready = threading.Barrier(n_threads + 1)

    def init() -> None:
        torch.get_num_threads()  # torch's lazy per-thread setup first: it would later reset the count
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="bandpo-band", initializer=init)
    for _ in range(n_threads):
        pool.submit(int)  # each submit starts a worker while fewer than n_threads exist
    ready.wait()
    torch.set_num_threads(n_threads)
    return pool


def _forget_pool_after_fork() -> None:
    """A forked child's copy of the pool has no threads (using it would wait forever), and the lock may have
    been held by another thread at the fork: start both afresh."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _chunked(
    fn, old_logp: Tensor, delta: Delta, writes_out: bool = False, out_dtype: Optional[torch.dtype] = None
) -> "tuple[Tensor, Tensor]":
    """Apply the elementwise ``fn`` ((x, delta) -> (lower, upper)) in flat chunks of CHUNK elements.

    A tensor delta is broadcast to ``old_logp``'s shape and chunked alongside. The chunk count depends only
    on the shape, never on the data. On the CPU, the chunks run on ``torch.get_num_threads()``
    Python threads (torch releases the GIL inside its kernels), each running its chunk's operations
    single-threaded (see CHUNK). Each chunk is computed by the same operations whichever thread runs it.
    Every chunk runs on the workers, the first included, so the caller builds the tables ``fn`` reads before
    (a worker that found one missing would build its own copy, bitwise the same: correct, only slower); the
    caller waits (measured on 2 cores: 10-18% faster than computing the first chunk in the caller while the
    workers wait, per-token delta kl 46.3 -> 41.9 ms, fixed delta tv 21.1 -> 17.1 ms per 2^20 tokens).
    ``out_dtype``: the dtype ``fn`` returns (default old_logp's). ``writes_out``: ``fn`` also takes ``out``
    (two flat tensors of that dtype) and writes each chunk's result into its slices (no copy per chunk)."""
    if isinstance(delta, Tensor):
        delta = delta.detach().expand(old_logp.shape)
    chunk = CHUNK
    out_dtype = old_logp.dtype if out_dtype is None else out_dtype
    n = old_logp.numel()
    if n <= chunk or old_logp.device.type != "cpu" or torch.compiler.is_compiling():
        return fn(old_logp, delta)
    flat = old_logp.detach().reshape(-1)
    flat_d = delta.reshape(-1) if isinstance(delta, Tensor) else delta
    outs = tuple(torch.empty(n, dtype=out_dtype, device=old_logp.device) for _ in range(2))

    def part(start: int) -> None:
        d = flat_d[start : start + chunk] if isinstance(delta, Tensor) else delta
        if writes_out:
            fn(flat[start : start + chunk], d, out=tuple(o[start : start + chunk] for o in outs))
            return
        for o, r in zip(outs, fn(flat[start : start + chunk], d)):
            o[start : start + chunk] = r

    starts = range(0, n, chunk)
    n_threads = torch.get_num_threads()
    if n_threads > 1:
        def work(start: int) -> None:
            with torch.no_grad():  # grad mode is per thread
                part(start)

        pool = _executor(n_threads)
        futures = [pool.submit(work, start) for start in starts]
        wait(futures)  # the caller wakes once, not once per chunk
        for f in futures:
            f.result()  # re-raises a worker's exception
    else:
        for start in starts:
            part(start)
    return tuple(out.view(old_logp.shape) for out in outs)


def _reference_log_band(old_logp: Tensor, delta: Delta, divergence: "str | Divergence" = "kl"):
    """float64 (log_lower, log_upper) by the table-free solvers (tests and benchmarks only; not public)."""
    div = get_divergence(divergence)
    _check_logp(old_logp, True)
    delta = _check_delta(delta, old_logp, True)
    with torch.no_grad():
        return _chunked(lambda x, d: _log_band_f64(x, d, div, False, reference=True), old_logp, delta)
