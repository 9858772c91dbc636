"""Limits and the small-delta expansion of the Band, derived from the generator.

Three results, each computed by sympy for every symbolic generator (closed form or not):

* **p -> 1 (head tokens), lower bound.** For fixed r < 1, g_f(p, r) -> L(r) = f(r) + (1 - r)·c with
  c = lim_{u->∞} f(u)/u: the vanishing complement must grow by the factor (1 - p r)/(1 - p) -> ∞ and costs
  (1 - p)·f(that) -> (1 - r)·c. So lim_{p->1} lower is the root of L(r) = delta in (0, 1): e^{-delta} for KL,
  1 - delta for TV, (1 - delta/2)² for Hellinger; it is 1 when c = ∞ (χ², reverse KL). sympy computes the limit
  of g_f directly (:func:`lower_limit_at_one`).
* **p -> 0 (tail tokens), the largest reachable probability q = upper·p.** With r = q/p,
  g_f(p, q/p) -> L(q) = q·c + f(1 - q), so q* solves L(q) = delta: 1 - e^{-delta} for KL, delta for TV,
  1 - (1 - delta/2)² for Hellinger; q* = 0 when c = ∞ (χ²: q ~ sqrt(delta·p)). Fixed clipping with a constant
  epsilon lets the probability grow by only epsilon·p -> 0 (:func:`upper_probability_at_zero`).
* **delta -> 0, every smooth f (the unified view).** Writing delta = ε² and r = 1 + a1 ε + a2 ε² + O(ε³),
  Taylor's theorem for f at 1 (f(1) = 0, the f'(1) terms cancel because the two ratios move in opposite
  directions with weights p and 1 - p) gives

      bound = 1 ± sqrt(2 delta (1 - p) / (f''(1) p)) - f'''(1) (1 - 2p) / (3 f''(1)² p) · delta + O(delta^{3/2}),

  derived once for a generic f in :func:`generic_expansion` and confirmed per divergence in
  :func:`bandpo_theory.checks.check_small_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import sympy as sp

from .generators import delta, eps, get_symbolic, p, q, r, refine_side, u, x

LIMIT_DIGITS = 30
SAMPLE_DELTAS = (sp.Rational(1, 100), sp.Rational(1, 20), sp.Rational(1, 5))


@dataclass(frozen=True)
class LimitResult:
    """A limit of the Band: the limiting equation L(var) = delta and its solution."""

    divergence: str
    quantity: str
    """What tends to ``value``: ``"lower as p -> 1"`` or ``"upper*p as p -> 0"``."""
    variable: sp.Symbol
    """r (the lower bound) or q (the new probability of the token)."""
    equation: sp.Expr
    """L(variable), the limit of g_f; the limit of the bound solves L = delta (``oo``: no finite cost allowed)."""
    value: Optional[sp.Expr]
    """The solution in closed form (in delta), or ``None`` when sympy finds none (then ``numeric`` is set)."""
    numeric: dict
    """{delta: value} at a few rational deltas (50 digits), from the closed form or from nsolve on L = delta."""
    saturates_from: Optional[sp.Expr]
    """delta from which the limit sits at the simplex end (0 for the lower bound, 1 for q); ``None``: never."""
    note: str = ""


@lru_cache(maxsize=None)
def slope_at_infinity(f: sp.Expr) -> sp.Expr:
    """c = lim_{u->∞} f(u)/u."""
    return sp.limit(refine_side(f, above_one=True) / u, u, sp.oo)


def _pick_in_unit_interval(candidates, variable, L) -> Optional[sp.Expr]:
    """The candidate solution of L = delta that lies in (0, 1) and solves it at every sample delta."""
    ok = []
    for cand in candidates:
        good = True
        for dv in SAMPLE_DELTAS:
            value = sp.N(cand.subs(delta, dv), LIMIT_DIGITS)
            re, im = value.as_real_imag()
            if abs(im) > 1e-20 or not (0 < re < 1):
                good = False
                break
            if abs(sp.N(L.subs(variable, re), LIMIT_DIGITS) - dv) > 1e-20:
                good = False
                break
        if good:
            ok.append(cand)
    return ok[0] if len(ok) == 1 else None


def _solve_limit(L: sp.Expr, variable: sp.Symbol):
    """(closed form or None, {delta: numeric value}) for the root of L(variable) = delta in (0, 1)."""
    try:
        value = _pick_in_unit_interval(sp.solve(sp.Eq(L, delta), variable), variable, L)
    except NotImplementedError:
        value = None
    numeric = {}
    for dv in SAMPLE_DELTAS:
        if value is not None:
            numeric[dv] = sp.N(value.subs(delta, dv), LIMIT_DIGITS)
        else:
            numeric[dv] = sp.nsolve(L - dv, variable, sp.Rational(1, 2), prec=LIMIT_DIGITS)
    return (sp.simplify(value) if value is not None else None), numeric


@lru_cache(maxsize=None)
def lower_limit_at_one(divergence: str) -> LimitResult:
    """lim_{p -> 1} of the lower bound, from lim_{p->1} g_f(p, r) for fixed r in (0, 1)."""
    gen = get_symbolic(divergence)
    f_below, f_above = refine_side(gen.f, False), refine_side(gen.f, True)
    r_of_x = 1 / (1 + x)  # r in (0, 1) with r != 1 visible to sympy
    g = p * f_below.subs(u, r_of_x) + (1 - p) * f_above.subs(u, (1 - p * r_of_x) / (1 - p))
    L = sp.limit(g, p, 1, "-")
    if L == sp.oo:
        return LimitResult(gen.name, "lower as p -> 1", r, sp.oo, sp.Integer(1), {}, None,
                           "every r < 1 costs unbounded divergence as the complement vanishes: lower -> 1")
    L = sp.simplify(L.subs(x, 1 / r - 1))
    value, numeric = _solve_limit(L, r)
    at_zero = sp.limit(L, r, 0, "+")
    return LimitResult(gen.name, "lower as p -> 1", r, L, value, numeric,
                       None if at_zero == sp.oo else sp.simplify(at_zero))


@lru_cache(maxsize=None)
def upper_probability_at_zero(divergence: str) -> LimitResult:
    """lim_{p -> 0} of upper·p (the largest probability the token can reach), from lim g_f(p, q/p)."""
    gen = get_symbolic(divergence)
    f_below, f_above = refine_side(gen.f, False), refine_side(gen.f, True)
    g = p * f_above.subs(u, q / p) + (1 - p) * f_below.subs(u, (1 - q) / (1 - p))
    L = sp.limit(g, p, 0, "+")
    if L == sp.oo:
        return LimitResult(gen.name, "upper*p as p -> 0", q, sp.oo, sp.Integer(0), {}, None,
                           "every q > 0 costs unbounded divergence as p -> 0: upper*p -> 0")
    L = sp.simplify(L)
    value, numeric = _solve_limit(L, q)
    at_one = sp.limit(L, q, 1, "-")
    return LimitResult(gen.name, "upper*p as p -> 0", q, L, value, numeric,
                       None if at_one == sp.oo else sp.simplify(at_one))


# ----------------------------------------------------------------------------------------------------------
# Small-delta expansion
# ----------------------------------------------------------------------------------------------------------

F1, F3 = sp.symbols("F1 F3", real=True)
F2 = sp.Symbol("F2", positive=True)
a1, a2 = sp.symbols("a1 a2", real=True)


@dataclass(frozen=True)
class Expansion:
    """bound = 1 + a1·sqrt(delta) + a2·delta + O(delta^{3/2}) for a generic smooth f (F_k = f^{(k)}(1))."""

    g_series: sp.Expr
    """g_f(p, 1 + a1 ε + a2 ε²) up to ε³ in terms of F1, F2, F3."""
    a1: tuple
    """(lower, upper) coefficients of sqrt(delta): ∓ sqrt(2 (1 - p) / (F2 p))."""
    a2: sp.Expr
    """The coefficient of delta (the same on both sides)."""


@lru_cache(maxsize=None)
def generic_expansion() -> Expansion:
    """Derive the small-delta expansion of both bounds for an arbitrary generator smooth at 1."""
    h = sp.Symbol("h")

    def taylor(arg):  # f(1 + h) to third order, f(1) = 0
        return (F1 * h + F2 * h**2 / 2 + F3 * h**3 / 6).subs(h, arg)

    xr = a1 * eps + a2 * eps**2
    g = sp.expand(p * taylor(xr) + (1 - p) * taylor(-p * xr / (1 - p)))
    g = sp.series(g, eps, 0, 4).removeO()
    coeff = [sp.simplify(g.coeff(eps, k)) for k in range(4)]
    assert coeff[0] == 0 and coeff[1] == 0, coeff  # f(1) = 0 and the f'(1) terms cancel
    a1_sols = sorted(sp.solve(sp.Eq(coeff[2], 1), a1), key=lambda e: sp.N(e.subs({p: sp.Rational(1, 2), F2: 1})))
    a2_sol = sp.solve(sp.Eq(coeff[3], 0), a2)
    (a2_val,) = {sp.simplify(s.subs(a1, a)) for s in a2_sol for a in a1_sols}
    g_series = sum(sp.factor(c) * eps**k for k, c in enumerate(coeff))
    return Expansion(g_series=g_series, a1=tuple(a1_sols), a2=sp.factor(a2_val))


@lru_cache(maxsize=None)
def generator_derivatives(divergence: str) -> Optional[tuple]:
    """(f'(1), f''(1), f'''(1)), or None when f is not three times differentiable at 1 (TV)."""
    f = get_symbolic(divergence).f
    values = tuple(sp.simplify(sp.diff(f, u, k).subs(u, 1)) for k in (1, 2, 3))
    if any(v.has(sp.DiracDelta, sp.sign, sp.Abs, sp.nan, sp.zoo) or not v.is_finite for v in values):
        return None
    if not values[1].is_positive:
        return None
    return values


@lru_cache(maxsize=None)
def expansion_for(divergence: str) -> Optional[tuple]:
    """(lower, upper) as 1 + a1 sqrt(delta) + a2 delta with this divergence's f''(1), f'''(1); None if not smooth."""
    derivs = generator_derivatives(divergence)
    if derivs is None:
        return None
    exp = generic_expansion()
    sub = {F1: derivs[0], F2: derivs[1], F3: derivs[2]}
    a2v = sp.simplify(exp.a2.subs(sub))
    return tuple(1 + sp.simplify(a.subs(sub)) * sp.sqrt(delta) + a2v * delta for a in exp.a1)
