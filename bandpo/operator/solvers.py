"""Closed forms and root solvers behind the Band operator, in log space.

Every routine here takes float64 tensors ``logp`` = log p, ``log1mp`` = log(1 - p) (computed once, exactly,
by the caller) and ``delta`` (broadcastable), and returns ``(log_lower, log_upper)``: the logs of the two
roots of g_f(p, r) = delta, saturated at log 0 = -inf and log(1/p) = -logp.

One parametrisation serves both roots. On each side one of the two outcomes (the sampled token, or the
rest of the vocabulary) *shrinks* by the factor w = e^{-s} (s >= 0), and the other *grows* so that the
total stays 1. With ``a`` the mass that shrinks and ``b = 1 - a`` the mass that grows,

    φ(s) = a·f(e^{-s}) + b·f(v(s)),    v(s) = 1 + (a/b)(1 - e^{-s}),    φ(0) = 0,

and the root φ(s*) = delta gives

* the lower bound with (a, b) = (p, 1-p):   log r_lower = -s*;
* the upper bound with (a, b) = (1-p, p):   log r_upper = log v(s*).

This is the mirror identity r_lower(p) = (1 - (1-p) r_upper(1-p)) / p built into the variables, and it keeps
everything finite: s* can be 1e298 (KL's lower bound at p = 1e-300) and log v is evaluated as a softplus,
never as 1 - p r. φ'(s) = a·w·(f'(v) - f'(w)). The bound saturates (s* = ∞) iff φ(∞) = a f(0) + b f(1/b) <= delta.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .numerics import LOG_TINY, log1mexp, softplus

# φ-evaluator: (s, log_a, log_b, a, b) -> (phi, dphi, log_v)
PhiFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], "tuple[Tensor, Tensor, Tensor]"]

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------------------


def tv_log_band(logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """Total variation, f(u) = |u - 1|/2: g = p|r - 1|, so r = 1 ± delta/p, clamped to [0, 1/p].

    upper = min(1 + delta/p, 1/p) (saturated iff p >= 1 - delta); lower = max(1 - delta/p, 0) (zero iff p <= delta).
    """
    log_delta = torch.log(delta)
    x = log_delta - logp  # log(delta/p)
    log_upper = torch.where(log_delta >= log1mp, -logp, softplus(x))
    log_lower = torch.where(x >= 0, NEG_INF, log1mexp(torch.clamp(x, max=0)))
    return log_lower, log_upper


def chi2_log_band(logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """Pearson chi^2, f(u) = (u - 1)^2: g = p (r - 1)^2 / (1 - p), so r = 1 ± sqrt(delta (1 - p) / p), clamped.

    upper saturates at 1/p iff p >= 1/(1 + delta); lower at 0 iff p <= delta/(1 + delta).
    """
    log_delta = torch.log(delta)
    z = 0.5 * (log_delta + log1mp - logp)  # log sqrt(delta (1-p)/p)
    log_upper = torch.where(log_delta >= log1mp - logp, -logp, softplus(z))
    log_lower = torch.where(z >= 0, NEG_INF, log1mexp(torch.clamp(z, max=0)))
    return log_lower, log_upper


def hellinger_log_band(logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """Squared Hellinger, f(u) = (sqrt(u) - 1)^2, i.e. D = Σ (sqrt(q) - sqrt(p))^2 (no 1/2).

    With p = sin^2 α and q = r p = sin^2 β, g = 2 - 2 cos(β - α), so g = delta at β = α ± θ,
    cos θ = 1 - delta/2. Hence, with t = sqrt((1-p)/p), c = cos θ, s = sin θ = sqrt(delta (1 - delta/4)):

        upper = (c + t s)^2, saturated (= 1/p) iff p >= c^2 (or delta >= 2);
        lower = (c - t s)^2, zero iff p <= s^2 = delta (1 - delta/4) (or delta >= 2).
    (Derived symbolically in theory/; the sympy expressions are cross-checked against these in tests.)
    """
    c = 1 - 0.5 * delta
    small = delta < 2
    c_safe = torch.where(small, c, torch.ones_like(c))
    s2 = torch.where(small, delta * (1 - 0.25 * delta), torch.ones_like(delta))
    log_c = torch.log(c_safe)
    log_s = 0.5 * torch.log(s2)
    log_t = 0.5 * (log1mp - logp)
    up = 2 * torch.logaddexp(log_c, log_t + log_s)
    log_upper = torch.where(small & (logp < 2 * log_c), up, -logp)
    y = log_t + log_s - log_c  # log(t s / c) < 0 where unsaturated
    low = 2 * (log_c + log1mexp(torch.clamp(y, max=0)))
    log_lower = torch.where(small & (y < 0), low, NEG_INF)
    return log_lower, log_upper


# ----------------------------------------------------------------------------------------------------------
# The one-sided root problem φ(s) = delta
# ----------------------------------------------------------------------------------------------------------


def _log_v(s: Tensor, log_a: Tensor, log_b: Tensor) -> "tuple[Tensor, Tensor]":
    """log x and log v for x = 1 - e^{-s}, v = 1 + (a/b) x (a softplus: no overflow for tiny b)."""
    log_x = torch.log(-torch.expm1(-s))
    return log_x, softplus(log_a - log_b + log_x)


def _x_rx(s: Tensor, log_a: Tensor, log_b: Tensor) -> "tuple[Tensor, Tensor]":
    """x = 1 - e^{-s} and (a/b)·x = v - 1. Finite for every clamped pair: a/b <= 1/(smallest normal), x <= 1."""
    x = -torch.expm1(-s)
    return x, torch.exp(log_a - log_b) * x


def kl_phi(s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """φ for KL(old ‖ new), f(u) = -log u: φ(s) = a·s - b·log v, φ'(s) = a x / (b v) = (v - 1)/v.

    log v = log1p(v - 1) with v - 1 = (a/b) x formed directly (no cancellation near v = 1, no overflow)."""
    x, rx = _x_rx(s, log_a, log_b)
    log_v = torch.log1p(rx)
    phi = a * s - b * log_v
    dphi = rx / (1 + rx)
    return phi, dphi, log_v


def neyman_chi2_phi(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor
) -> "tuple[Tensor, Tensor, Tensor]":
    """φ for Neyman χ², f(u) = (u-1)^2/u, without overflow of f' near u = 0.

    w - 1 = -x and v - 1 = (a/b) x, so φ = a x^2 (e^s + c) with c = a/(b v) = 1/(b/a + x), and
    φ' = a (2 x (1 + w c) + x^2 (e^s - c^2 w)) (using dv/ds = (a/b) w). c is formed from b/a directly:
    log a - log b - log v would cancel where b << a (p -> 1).
    """
    x = -torch.expm1(-s)
    es = torch.exp(s)
    w = torch.exp(-s)
    c = 1 / (torch.exp(log_b - log_a) + x)
    phi = a * x * x * (es + c)
    dphi = a * (2 * x * (1 + w * c) + x * x * (es - c * c * w))
    log_v = torch.log1p(torch.exp(log_a - log_b) * x)
    return phi, dphi, log_v


def reverse_kl_phi(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor
) -> "tuple[Tensor, Tensor, Tensor]":
    """φ for KL(new ‖ old), f(u) = u log u: φ = b v log v - a s e^{-s}, φ' = a w (log v + s).

    b v = b + a x exactly and log v = log1p((a/b) x) (the generic evaluator would take log of a rounded v
    and lose ~1e-12 near v = 1)."""
    x, rx = _x_rx(s, log_a, log_b)
    log_v = torch.log1p(rx)
    w = torch.exp(-s)
    phi = (b + a * x) * log_v - a * s * w
    dphi = a * w * (log_v + s)
    return phi, dphi, log_v


JS_LOG2 = math.log(2.0)


def _js_terms(s: Tensor, x: Tensor, rx: Tensor, a: Tensor, b: Tensor) -> "tuple[Tensor, Tensor, Tensor, Tensor]":
    """(φ, w, 2 f'(w), 2 f'(v)) for Jensen-Shannon.

    f(u) = (u log u - (u+1) log((u+1)/2))/2, f'(u) = (log u - log((u+1)/2))/2. With l(u) = log((u+1)/2),
    f(u) = (u (log u - l(u)) - l(u))/2: at u = w = 1 - x, l = log1p(-x/2) and log w = -s; at u = v,
    l = log1p(rx/2) and log v = log1p(rx). Every term is then accurate relative to itself (writing l as
    log(1+u) - log 2 would lose ~1e-16/x to cancellation where the root is near 1)."""
    w = torch.exp(-s)
    l_w = torch.log1p(-0.5 * x)
    l_v = torch.log1p(0.5 * rx)
    g_w = -s - l_w
    g_v = torch.log1p(rx) - l_v
    phi = 0.5 * (a * (w * g_w - l_w) + (b + a * x) * g_v - b * l_v)
    return phi, w, g_w, g_v


def js_phi(s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """φ for Jensen-Shannon (see :func:`_js_terms`): φ' = a w (f'(v) - f'(w))."""
    x, rx = _x_rx(s, log_a, log_b)
    phi, w, g_w, g_v = _js_terms(s, x, rx, a, b)
    return phi, 0.5 * a * w * (g_v - g_w), torch.log1p(rx)


def generic_phi(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor]) -> PhiFn:
    """φ(s) = a f(e^{-s}) + b f(v), φ'(s) = a e^{-s} (f'(v) - f'(e^{-s})) for any generator."""

    def phi_fn(s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
        _, log_v = _log_v(s, log_a, log_b)
        w = torch.exp(-s)
        v = torch.exp(log_v)
        phi = a * f(w) + b * f(v)
        dphi = a * w * (df(v) - df(w))
        return phi, dphi, log_v

    return phi_fn


def autograd_derivative(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """f' of an elementwise generator by autograd (for user generators registered without ``df``)."""

    def df(u: Tensor) -> Tensor:
        with torch.enable_grad():
            x = u.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(f(x).sum(), x)
        return g

    return df


def solve_side(
    phi_fn: PhiFn,
    log_a: Tensor,
    log_b: Tensor,
    delta: Tensor,
    s0: Tensor,
    n_iter: int,
    saturated: Optional[Tensor] = None,
) -> "tuple[Tensor, Tensor]":
    """Root of φ(s) = delta on s > 0 by a bracketed Newton iteration with a fixed number of steps.

    For divergences whose φ is well-behaved from the start (KL from :func:`kl_start`). The bracket
    [lo, hi] starts at [0, ∞) (φ(0) = 0 < delta); each step keeps the Newton iterate when it is finite and
    falls strictly inside the bracket (or the step is below the resolution of s), and otherwise bisects
    (geometrically while hi/lo > 4) or doubles while hi = ∞. No data-dependent control flow: ``n_iter``
    steps always run, elementwise.

    Returns (s*, log v(s*)), with s* = ∞ and log v = -log b where ``saturated``.
    """
    a = torch.exp(log_a)
    b = torch.exp(log_b)
    inf = torch.full_like(s0, math.inf)
    lo = torch.zeros_like(s0)
    hi = inf
    s = s0
    for _ in range(n_iter):
        phi, dphi, _ = phi_fn(s, log_a, log_b, a, b)
        F = phi - delta
        below = F < 0
        lo = torch.where(below, s, lo)
        hi = torch.where(below, hi, s)
        newton = s - F / dphi
        fallback = torch.where(torch.isinf(hi), 2 * lo + 1, _bisect(lo, hi))
        inside = (newton > lo) & (newton < hi)
        converged = (newton == s) & torch.isfinite(dphi)  # step below the resolution of s
        s = torch.where(torch.isfinite(newton) & (inside | converged), newton, fallback)
    return _log_v_with_saturation(phi_fn, s, log_a, log_b, a, b, saturated)


def _bisect(lo: Tensor, hi: Tensor) -> Tensor:
    """Midpoint in log s while the bracket spans more than a factor 4, arithmetic midpoint otherwise."""
    lo_pos = torch.clamp(lo, min=S_MIN)
    return torch.where(hi > 4 * lo_pos, torch.sqrt(lo_pos) * torch.sqrt(hi), 0.5 * (lo + hi))


def _log_v_with_saturation(phi_fn, s, log_a, log_b, a, b, saturated):
    """(s, log v(s)), with s = ∞ and log v = -log b (the saturated bound) where ``saturated``."""
    _, _, log_v = phi_fn(s, log_a, log_b, a, b)
    if saturated is not None:
        s = torch.where(saturated, torch.full_like(s, math.inf), s)
        log_v = torch.where(saturated, -log_b, log_v)
    return s, log_v


# The generic solver brackets s* in [S_MIN, S_MAX]. s* is as small as sqrt(delta p / (f''(1)(1-p))) on the
# upper side (1e-152 at p = 1e-300); s* reaches delta/p ~ 4.5e307 for KL at the smallest normal p (larger
# roots, i.e. ratios below e^{-1e308}, are reported as S_MAX).
S_MIN = 1e-300
S_MAX = 1e308
BISECT_ITERS = 64
POLISH_STEPS = 2


def solve_side_robust(
    phi_fn: PhiFn,
    log_a: Tensor,
    log_b: Tensor,
    delta: Tensor,
    saturated: Optional[Tensor] = None,
    bisect_iters: int = BISECT_ITERS,
    polish_steps: int = POLISH_STEPS,
) -> "tuple[Tensor, Tensor]":
    """Root of φ(s) = delta for any convex generator, with a guaranteed fixed budget.

    Phase 1: ``bisect_iters`` bisections of [S_MIN, S_MAX] in log s (then arithmetic once the bracket is
    within a factor 4): log2(ln(1e608)/ln 4) ≈ 10 steps reach a factor-4 bracket and every further step
    halves it, so 64 steps leave a relative width of about 2^-53, float64 resolution, by bisection alone.
    Phase 2: ``polish_steps`` Newton steps from the midpoint, clamped into the bracket and skipped where
    f' overflows, remove the last rounding of the bisection.
    This is the path for user-registered generators: no assumption beyond convexity of f.
    """
    a = torch.exp(log_a)
    b = torch.exp(log_b)
    lo = torch.full_like(log_a, S_MIN)
    hi = torch.full_like(log_a, S_MAX)
    for _ in range(bisect_iters):
        mid = _bisect(lo, hi)
        phi, _, _ = phi_fn(mid, log_a, log_b, a, b)
        below = phi < delta
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    s = 0.5 * (lo + hi)
    for _ in range(polish_steps):
        phi, dphi, _ = phi_fn(s, log_a, log_b, a, b)
        newton = s - (phi - delta) / dphi
        s = torch.where(torch.isfinite(newton), torch.clamp(newton, lo, hi), s)
    return _log_v_with_saturation(phi_fn, s, log_a, log_b, a, b, saturated)


def small_delta_start(log_a: Tensor, log_b: Tensor, delta: Tensor, f2_at_1: float) -> Tensor:
    """s0 = sqrt(2 delta b / (f''(1) a)): the small-delta band 1 ± sqrt(2 delta (1-p) / (f''(1) p)) in s."""
    f2 = f2_at_1 if math.isfinite(f2_at_1) and f2_at_1 > 0 else 1.0
    return torch.sqrt(2 * delta / f2 * torch.exp(log_b - log_a))


def kl_start(log_a: Tensor, log_b: Tensor, delta: Tensor) -> Tensor:
    """Start for KL: the smaller of the small-delta value and the bound s* <= (delta - b log b)/a.

    φ(s) >= a s + b log b (the line it approaches), so that line's root is an upper bound on s*; it is the
    exact asymptote where the token is rare (lower side) or the rest is rare (upper side near p = 1).
    """
    a = torch.exp(log_a)
    b = torch.exp(log_b)
    line = (delta - b * log_b) / a
    return torch.minimum(small_delta_start(log_a, log_b, delta, 1.0), line)


def sides(logp: Tensor, log1mp: Tensor) -> "tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]":
    """(log_a, log_b) for the lower side and for the upper side, with masses clamped at the smallest normal."""
    lp = torch.clamp(logp, min=LOG_TINY)
    l1 = torch.clamp(log1mp, min=LOG_TINY)
    return (lp, l1), (l1, lp)


def upper_from_s(s_up: Tensor, logp: Tensor, log1mp: Tensor) -> Tensor:
    """log r_upper = log(1 + ((1-p)/p)(1 - e^{-s})) with the exact (unclamped) logp."""
    return softplus(log1mp - logp + torch.log(-torch.expm1(-s_up)))


# Iterations of the bracketed Newton solver for KL. From :func:`kl_start` it converges in 4 (measured over
# p ∈ [1e-300, 1 - 1e-12], delta ∈ [1e-4, 1]); two more are margin.
KL_ITERS = 6


def kl_log_band(logp: Tensor, log1mp: Tensor, delta: Tensor) -> "tuple[Tensor, Tensor]":
    """KL(old ‖ new), f(u) = -log u: a dedicated log-space Newton solve (no closed form exists)."""
    (la_lo, lb_lo), (la_up, lb_up) = sides(logp, log1mp)
    s_lo, _ = solve_side(kl_phi, la_lo, lb_lo, delta, kl_start(la_lo, lb_lo, delta), KL_ITERS)
    s_up, _ = solve_side(kl_phi, la_up, lb_up, delta, kl_start(la_up, lb_up, delta), KL_ITERS)
    return -s_lo, upper_from_s(s_up, logp, log1mp)


# ----------------------------------------------------------------------------------------------------------
# Second derivatives (Halley steps) and φ(∞) of the built-in generators
# ----------------------------------------------------------------------------------------------------------
#
# With w = e^{-s} and v = 1 + (a/b)(1 - w), φ' = a w (f'(v) - f'(w)) and
#     φ'' = -φ' + a w² ((a/b) f''(v) + f''(w)).
# Each evaluator returns (φ, φ', φ''), all float64; the Halley step from the table start (within 2.3e-4
# relative, ~1e-6 typically) is cubically convergent, so one step replaces two Newton steps.


def _halley_common(
    s: Tensor, log_a: Tensor, log_b: Tensor, rab: Optional[Tensor] = None
) -> "tuple[Tensor, Tensor, Tensor, Tensor]":
    """(a/b, x, (a/b) x, v) at s; ``rab``: a/b if the caller has it (else exp(log a - log b))."""
    if rab is None:
        rab = torch.exp(log_a - log_b)
    x = -torch.expm1(-s)
    rx = rab * x
    return rab, x, rx, 1 + rx


def kl_phi2(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor, rab: Optional[Tensor] = None,
    second: bool = True,
) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
    """KL: φ = a s - b log v, φ' = (v - 1)/v, φ'' = (a/b) w / v² (None unless ``second``)."""
    rab, x, rx, v = _halley_common(s, log_a, log_b, rab)
    return a * s - b * torch.log1p(rx), rx / v, rab * (1 - x) / (v * v) if second else None


def reverse_kl_phi2(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor, rab: Optional[Tensor] = None,
    second: bool = True,
) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
    """KL(new ‖ old): φ = (b + a x) log v - a s w, φ' = a w (log v + s), φ'' = -φ' + a w ((a/b) w / v + 1)."""
    if rab is None:
        rab = torch.exp(log_a - log_b)
    ns = torch.neg(s)
    x = torch.expm1(ns).neg_()
    rx = rab * x
    log_v = torch.log1p(rx)
    w = ns.exp_()  # in place on -s (not needed after)
    aw = a * w
    d1 = torch.add(log_v, s).mul_(aw)
    phi = torch.mul(a, x).add_(b).mul_(log_v).sub_(torch.mul(aw, s))  # (b + a x) log v - a w s, in place
    if not second:
        return phi, d1, None
    return phi, d1, aw * (rab * w / (1 + rx) + 1) - d1


def neyman_chi2_phi2(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor, rab: Optional[Tensor] = None,
    second: bool = True,
) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
    """Neyman χ² (see :func:`neyman_chi2_phi`): φ'' = -φ' + 2 a (c (w/v)² + e^s), c = (a/b)/v = 1/(b/a + x)."""
    x = torch.neg(s).expm1_().neg_()
    es = torch.exp(s)
    w = torch.reciprocal(es)  # e^{-s} to ~1 ulp (0 where e^s overflows, s > 709: w c is negligible there)
    # b/a: 1/(a/b) where the caller has a/b (to ~2 ulps; exp(log b - log a) amplifies the rounding of the
    # difference, ~1e-13 relative at |log b - log a| ~ 700)
    rba = torch.exp(log_b - log_a) if rab is None else torch.reciprocal(rab)
    c = rba.add_(x).reciprocal_()
    # d1 = a (2 x (1 + w c) + x² (e^s - c² w)) and phi = a x² (e^s + c), in place (the same operations)
    d1 = torch.mul(c, c).mul_(w).neg_().add_(es).mul_(torch.mul(x, x))
    d1.add_(torch.mul(w, c).add_(1).mul_(torch.mul(x, 2))).mul_(a)
    phi = torch.mul(a, x).mul_(x).mul_(torch.add(es, c))
    if not second:
        return phi, d1, None
    if rab is None:
        rab = torch.exp(log_a - log_b)
    wv = w / (1 + rab * x)
    return phi, d1, 2 * a * (c * wv * wv + es) - d1


def js_phi2(
    s: Tensor, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor, rab: Optional[Tensor] = None,
    second: bool = True,
) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
    """Jensen-Shannon (see :func:`_js_terms`): f''(u) = 1/(2 u (u + 1)), so
    φ'' = -φ' + (a w / 2) ((a/b) w / (v (v + 1)) + 1/(w + 1))."""
    if rab is None:
        rab = torch.exp(log_a - log_b)
    ns = torch.neg(s)  # -s, shared by x, w and g_w
    x = torch.expm1(ns).neg_()
    rx = rab * x
    # the terms of _js_terms, in place (same operations, fewer fresh buffers)
    w = torch.exp(ns)
    l_w = torch.mul(x, -0.5).log1p_()
    l_v = torch.mul(rx, 0.5).log1p_()
    g_w = ns.sub_(l_w)  # in place on -s
    g_v = torch.log1p(rx).sub_(l_v)
    # φ = (a (w g_w - l_w) + (b + a x) g_v - b l_v)/2 = (a (w g_w + x g_v - l_w) + b (g_v - l_v))/2, in place
    phi = torch.mul(w, g_w).addcmul_(x, g_v).sub_(l_w).mul_(a)
    phi.addcmul_(b, torch.sub(g_v, l_v)).mul_(0.5)
    haw = 0.5 * a * w
    d1 = torch.sub(g_v, g_w).mul_(haw)
    if not second:
        return phi, d1, None
    v = 1 + rx
    return phi, d1, haw * ((rab / v) * w / (1 + v) + 1 / (1 + w)) - d1


def reverse_kl_phi_inf(log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """φ(∞) = a f(0) + b f(1/b) = -log b for f(u) = u log u."""
    return -log_b


def js_phi_inf(log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """φ(∞) = a log(2)/2 + b f(1/b) = (a log 2 - l - b (l - log b))/2 with l = log(1 + b) - log 2 = log1p(-a/2)
    (written so that it keeps its relative accuracy as a -> 0, where φ(∞) ≈ a log(2)/2)."""
    ell = torch.mul(a, -0.5).log1p_()
    return torch.mul(a, JS_LOG2).sub_(ell).sub_(torch.sub(ell, log_b).mul_(b)).mul_(0.5)  # in place


# φ evaluator -> its (φ, φ', φ'') evaluator and its φ(∞) (None: never saturates), for the tabulated path.
HALLEY = {kl_phi: kl_phi2, reverse_kl_phi: reverse_kl_phi2, neyman_chi2_phi: neyman_chi2_phi2, js_phi: js_phi2}
PHI_AT_INF = {reverse_kl_phi: reverse_kl_phi_inf, js_phi: js_phi_inf}
