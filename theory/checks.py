"""Symbolic checks of the Band's algebra; each returns a :class:`CheckResult` that pytest asserts on.

Every check first tries to prove its identity symbolically (``simplify(lhs - rhs) == 0`` or a sign decided by
sympy from the positivity of the symbols). Where sympy cannot decide, a check may fall back to a *numeric
certificate*: the identity evaluated with mpmath at 50 digits on a grid, and its result says so in
``method``. At present every check on every built-in generator is decided symbolically (the tests assert
this too, so a regression to numeric is visible).

Change of variables used throughout: p = 1/(1 + m) with m > 0 makes 1 - p = m/(1 + m) visibly positive,
which lets sympy drop |.| and sqrt(.²) on the complement's terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import mpmath as mp
import sympy as sp

from .asymptotics import (
    expansion_for,
    generator_derivatives,
    lower_limit_at_one,
    upper_probability_at_zero,
)
from .derive import derive_bounds
from .generators import delta, eps, g_of, get_symbolic, m, p, q, r, refine_side, t, u

# Results are cached per arguments (pure functions of the registry): the report and the tests share them.
NUMERIC_DPS = 50
NUMERIC_TOL = mp.mpf("1e-40")  # an identity evaluated at 50 digits: exact ones leave ~1e-48
GRID_P = ("1e-6", "0.01", "0.1", "0.3", "0.5", "0.7", "0.9", "0.99", "0.999999")
GRID_DELTA = ("1e-4", "0.01", "0.05", "0.2", "0.7", "1.5")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    check: str
    """What was checked, in words."""
    divergence: str
    passed: bool
    method: str
    """``"symbolic"``, ``"symbolic (rational parametrisation)"`` or ``"numeric (mpmath, 50 digits, grid)"``."""
    result: Any = None
    """What the identity simplified to (0 for a passed symbolic identity), or the worst numeric residual."""
    detail: str = ""
    extra: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed


def _is_zero(expr: sp.Expr) -> bool:
    """simplify(expr) == 0, also trying p = 1/(1 + m) (1 - p > 0 visible to sympy)."""
    if sp.simplify(expr) == 0:
        return True
    return sp.simplify(expr.subs(p, 1 / (1 + m))) == 0


def _zero_or(expr: sp.Expr) -> sp.Expr:
    """0 if :func:`_is_zero` proves it, else the simplified expression (for reporting)."""
    return sp.Integer(0) if _is_zero(expr) else sp.simplify(expr)


def _factor_radicands(expr: sp.Expr) -> sp.Expr:
    """Factor the base of every fractional power, so that sqrt((rational)²) becomes |rational|, then simplify."""

    def fix(e):
        return sp.factor(e.base) ** e.exp

    expr = expr.replace(lambda e: e.is_Pow and e.exp.is_Rational and not e.exp.is_integer, fix)
    return sp.simplify(sp.factor(expr))


def _numeric_identity(fun, points) -> tuple[bool, mp.mpf]:
    """max |fun(point)| over the points with mpmath at NUMERIC_DPS digits, and whether it is below NUMERIC_TOL."""
    worst = mp.mpf(0)
    with mp.workdps(NUMERIC_DPS):
        for pt in points:
            worst = max(worst, abs(fun(*pt)))
    return bool(worst <= NUMERIC_TOL), worst


def _unsaturated_grid(deriv, side: str):
    """(p, delta) grid points, as mpf, where ``side`` is not saturated."""
    sd = deriv.side(side)
    sat = sp.lambdify((p, delta), sd.saturation_value, "mpmath")
    out = []
    with mp.workdps(NUMERIC_DPS):
        for ps in GRID_P:
            for ds in GRID_DELTA:
                pv, dv = mp.mpf(ps), mp.mpf(ds)
                if sd.saturation_value == sp.oo or sat(pv, dv) > dv:
                    out.append((pv, dv))
    return out


# ----------------------------------------------------------------------------------------------------------
# The closed forms solve the band equation
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def check_root_identity(divergence: str, side: str, methods=("symbolic", "parametrised", "numeric")) -> CheckResult:
    """g_f(p, bound) - delta = 0 wherever ``side`` ("lower"/"upper") is not saturated.

    Uses the *unrefined* generator (|u - 1| stays |u - 1|), so it also confirms that the root lies on the side
    it was derived for. Nested radicals (Hellinger: sqrt of the root) are handled by the divergence's rational
    parametrisation of the unsaturated region (:mod:`bandpo_theory.generators`): the residual is then a rational
    function of two positive symbols and simplifies to 0. The map's image is open and the residual is
    real-analytic on the connected unsaturated region (every radicand is positive there), so vanishing on the
    image means vanishing on the whole region. The map is also checked to land inside the region.
    """
    deriv = derive_bounds(divergence)
    sd = deriv.side(side)
    residual = g_of(deriv.f, p, sd.root) - delta
    name = f"g_f(p, {side}) = delta where unsaturated"
    if "symbolic" in methods and _is_zero(residual):
        return CheckResult(name, divergence, True, "symbolic", sp.Integer(0))
    maps = get_symbolic(divergence).region_maps or {}
    if "parametrised" in methods and side in maps:
        y, z = sp.symbols("y z", positive=True)
        pm, dm = maps[side](y, z)
        margin = _factor_radicands(sd.saturation_value.subs({p: pm}) - dm)  # > 0 inside the region
        in_region = sd.saturation_value == sp.oo or bool(margin.is_positive)
        value = _factor_radicands(residual.subs({p: pm, delta: dm}))
        if in_region and value == 0:
            return CheckResult(name, divergence, True, "symbolic (rational parametrisation)", value,
                               extra={"p": pm, "delta": dm, "margin": margin})
    if "numeric" in methods:
        fun = sp.lambdify((p, delta), residual, "mpmath")
        ok, worst = _numeric_identity(fun, _unsaturated_grid(deriv, side))
        return CheckResult(name, divergence, ok, "numeric (mpmath, 50 digits, grid)", worst)
    return CheckResult(name, divergence, False, "undecided", residual)


# ----------------------------------------------------------------------------------------------------------
# Properties of g_f for every generator
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def check_unit(divergence: str) -> CheckResult:
    """g_f(p, 1) = 0 (f(1) = 0: the old policy is inside every trust region)."""
    f = get_symbolic(divergence).f
    value = sp.simplify(g_of(f, p, sp.Integer(1)))
    return CheckResult("g_f(p, 1) = 0", divergence, value == 0, "symbolic", value)


@lru_cache(maxsize=None)
def check_convexity(divergence: str, methods=("symbolic", "numeric")) -> CheckResult:
    """g_f(p, ·) is convex on (0, 1/p).

    Per side of r = 1 (with f refined there, so |u - 1| is linear): d²g/dr² >= 0, decided by sympy after
    r = t/(1 + t) (lower side, r ∈ (0, 1)) or r = 1 + m t/(1 + t) (upper side, r ∈ (1, 1/p)) and p = 1/(1 + m),
    with t, m > 0. At the junction r = 1 the left derivative must not exceed the right one (they are equal for
    smooth f; TV has a kink with left -p <= right p). A function that is continuous, convex on both pieces and
    has that at the junction is convex. Numeric fallback: d²g/dr² on a grid of (p, r).
    """
    f = get_symbolic(divergence).f
    f_below, f_above = refine_side(f, False), refine_side(f, True)
    g_lower = g_of(f_below, p, r, f_above)  # r < 1: the complement's ratio is > 1
    g_upper = g_of(f_above, p, r, f_below)
    pieces = {"lower": (g_lower, t / (1 + t)), "upper": (g_upper, 1 + m * t / (1 + t))}
    name = "g_f(p, r) convex in r on (0, 1/p)"
    second = {}
    decided = True
    for side, (g, r_sub) in pieces.items():
        g2 = sp.factor(sp.together(sp.simplify(sp.diff(g, r, 2).subs(r, r_sub).subs(p, 1 / (1 + m)))))
        second[side] = g2
        decided &= bool(g2.is_nonnegative)
    jump = sp.simplify((sp.diff(g_upper, r) - sp.diff(g_lower, r)).subs(r, 1))
    decided &= bool(jump.is_nonnegative)
    if "symbolic" in methods and decided:
        return CheckResult(name, divergence, True, "symbolic", second, extra={"derivative_jump_at_1": jump})
    if "numeric" in methods:
        funs = {s: sp.lambdify((p, r), sp.diff(g, r, 2), "mpmath") for s, (g, _) in pieces.items()}
        worst = mp.mpf(0)
        with mp.workdps(NUMERIC_DPS):
            for ps in GRID_P:
                pv = mp.mpf(ps)
                for k in range(1, 20):
                    lo_r, up_r = mp.mpf(k) / 20, 1 + (1 / pv - 1) * mp.mpf(k) / 20
                    worst = min(worst, funs["lower"](pv, lo_r), funs["upper"](pv, up_r))
        ok = worst >= 0 and jump.subs(p, sp.Rational(1, 2)) >= 0
        return CheckResult(name, divergence, bool(ok), "numeric (mpmath, 50 digits, grid)", worst)
    return CheckResult(name, divergence, False, "undecided", second)


@lru_cache(maxsize=None)
def check_g_mirror(divergence: str) -> CheckResult:
    """g_f(p, r) = g_f(1 - p, (1 - p r)/(1 - p)): the two outcomes swap roles.

    Consequence: r is a root for the token with probability p iff (1 - p r)/(1 - p) is one for the complement
    with probability 1 - p, and r < 1 iff the other is > 1, hence the mirror identity of the bounds.
    """
    f = get_symbolic(divergence).f
    value = sp.simplify(g_of(f, p, r) - g_of(f, 1 - p, (1 - p * r) / (1 - p)))
    return CheckResult("g_f(p, r) = g_f(1-p, (1-pr)/(1-p))", divergence, value == 0, "symbolic", value)


@lru_cache(maxsize=None)
def check_mirror(divergence: str) -> CheckResult:
    """lower(p) = (1 - (1 - p)·upper(1 - p))/p for a closed form: both the roots and the saturation conditions."""
    deriv = derive_bounds(divergence)
    lo, up = deriv.lower_side, deriv.upper_side
    roots = lo.root - (1 - (1 - p) * up.root.subs(p, 1 - p)) / p
    sat = sp.oo if lo.saturation_value == sp.oo else lo.saturation_value - up.saturation_value.subs(p, 1 - p)
    sat_ok = (lo.saturation_value == sp.oo and up.saturation_value == sp.oo) or _is_zero(sat)
    # the saturated branches agree too: upper(1-p) = 1/(1-p) gives (1 - 1)/p = 0
    value = _zero_or(roots)
    ok = sat_ok and value == 0
    return CheckResult("lower(p) = (1 - (1-p) upper(1-p))/p", divergence, ok, "symbolic", value)


# ----------------------------------------------------------------------------------------------------------
# Limits and expansions
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def check_limit_mirror(divergence: str) -> CheckResult:
    """lim_{p->1} lower = 1 - lim_{p->0} upper·p: the limiting equations are L1(r) = L0(1 - r)."""
    lo, up = lower_limit_at_one(divergence), upper_probability_at_zero(divergence)
    if lo.equation == sp.oo or up.equation == sp.oo:
        ok = lo.equation == up.equation == sp.oo
        return CheckResult("lim lower(p->1) = 1 - lim upper*p (p->0)", divergence, ok, "symbolic", lo.equation)
    value = sp.simplify(lo.equation - up.equation.subs(q, 1 - r))
    if value != 0:  # logs of products: expand them with r in (0, 1)
        value = sp.simplify(sp.expand_log(sp.simplify((lo.equation - up.equation.subs(q, 1 - r)).subs(r, 1 / (1 + t))), force=True))
    return CheckResult("lim lower(p->1) = 1 - lim upper*p (p->0)", divergence, value == 0, "symbolic", value)


@lru_cache(maxsize=None)
def check_closed_form_limits(divergence: str) -> CheckResult:
    """For a closed form: the limits of its branches equal the limits derived from g_f (bandpo_theory.asymptotics).

    lim_{p->1} of the lower root, and lim_{p->0} of upper·p (with its sqrt(p) rate when that limit is 0:
    χ²'s upper·p ~ sqrt(delta·p)). Both taken while unsaturated (small delta).
    """
    deriv = derive_bounds(divergence)
    lo_lim, up_lim = lower_limit_at_one(divergence), upper_probability_at_zero(divergence)
    got_lo = sp.simplify(sp.limit(deriv.lower_side.root, p, 1, "-"))
    got_up = sp.simplify(sp.limit(deriv.upper_side.root * p, p, 0, "+"))
    ok = sp.simplify(got_lo - lo_lim.value) == 0 and sp.simplify(got_up - up_lim.value) == 0
    extra = {"lower_at_1": got_lo, "upper_p_at_0": got_up}
    if got_up == 0:
        extra["upper_p_over_sqrt_p_at_0"] = sp.simplify(sp.limit(deriv.upper_side.root * sp.sqrt(p), p, 0, "+"))
    return CheckResult("closed-form limits p->1, p->0 match the limits of g_f", divergence, bool(ok), "symbolic",
                       (got_lo, got_up), extra=extra)


@lru_cache(maxsize=None)
def check_small_delta(divergence: str) -> CheckResult:
    """The unified expansion 1 ± sqrt(2 delta (1-p)/(f''(1) p)) + a2 delta holds for this smooth f.

    Two ways: (1) for every smooth generator: with sympy's own Taylor series of this f at 1 (to third order),
    g_f(p, 1 + a1 ε + a2 ε²) - ε² = O(ε⁴) for the coefficients of :func:`bandpo_theory.asymptotics.expansion_for`, both
    signs, so each bound (a root of g_f = ε²) agrees with the expansion to O(ε²) = O(delta); (2) for a closed
    form, its own series in ε = sqrt(delta) has exactly these first coefficients.
    """
    exp = expansion_for(divergence)
    if exp is None:
        return CheckResult("small-delta expansion", divergence, False, "not applicable",
                           detail="f is not twice differentiable at 1 (|u - 1|): no sqrt(delta) expansion")
    f = get_symbolic(divergence).f
    h = sp.Symbol("h")
    taylor = sp.series(f.subs(u, 1 + h), h, 0, 4).removeO()
    residuals = []
    for bound in exp:
        a1v = sp.simplify(bound.coeff(sp.sqrt(delta)))
        a2v = sp.simplify((bound - 1 - a1v * sp.sqrt(delta)).coeff(delta))
        xr = a1v * eps + a2v * eps**2
        g = sp.expand(p * taylor.subs(h, xr) + (1 - p) * taylor.subs(h, -p * xr / (1 - p)))
        residuals.append([sp.simplify(g.coeff(eps, k) - (1 if k == 2 else 0)) for k in range(4)])
    ok = all(v == 0 for res in residuals for v in res)
    closed = None
    try:
        deriv = derive_bounds(divergence)
    except NotImplementedError:
        deriv = None
    if deriv is not None:
        closed = []
        for sd, bound in zip((deriv.lower_side, deriv.upper_side), exp):
            s = sp.series(sd.root.subs(delta, eps**2), eps, 0, 3).removeO()
            closed.append(sp.simplify(s - bound.subs(delta, eps**2)))
        ok = ok and all(_is_zero(c) for c in closed)
    return CheckResult("small-delta expansion", divergence, ok, "symbolic", residuals,
                       extra={"expansion": exp, "closed_form_difference": closed,
                              "derivatives_at_1": generator_derivatives(divergence)})


# ----------------------------------------------------------------------------------------------------------
# The sympy generators are bandpo's generators
# ----------------------------------------------------------------------------------------------------------

GENERATOR_POINTS = (1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0, 1.001, 1.5, 2.0, 10.0, 1e3, 1e6)


@lru_cache(maxsize=None)
def check_generator_matches_bandpo(divergence: str, rtol: float = 1e-12, atol: float = 1e-15) -> CheckResult:
    """The sympy f(u) against ``bandpo.get_divergence(name).f`` (float64 torch) at GENERATOR_POINTS.

    The reference is the sympy expression at 50 digits at the float64 points; bandpo's float64 generator may
    differ by rounding: |diff| <= atol + rtol·|f| (atol covers f ≈ 1e-7 at u = 1 ± 1e-3 where relative
    error of a squared difference is a few ulps of the operands, i.e. ~1e-16 absolute).
    """
    import torch

    import bandpo

    f_sym = sp.lambdify(u, get_symbolic(divergence).f, "mpmath")
    f_torch = bandpo.get_divergence(divergence).f
    values = torch.tensor(GENERATOR_POINTS, dtype=torch.float64)
    got = f_torch(values).tolist()
    worst = 0.0
    ok = True
    with mp.workdps(NUMERIC_DPS):
        for uv, gv in zip(GENERATOR_POINTS, got):
            ref = float(f_sym(mp.mpf(uv)))
            err = abs(gv - ref)
            ok &= math.isfinite(gv) and err <= atol + rtol * abs(ref)
            worst = max(worst, err / (atol + rtol * abs(ref)))
    return CheckResult("sympy f = bandpo f (float64)", divergence, bool(ok),
                       "numeric (float64 vs 50 digits, stated points)", worst)


def all_checks(divergence: str) -> list[CheckResult]:
    """Every check that applies to ``divergence`` (closed-form ones only where a closed form exists)."""
    out = [check_unit(divergence), check_convexity(divergence), check_g_mirror(divergence),
           check_limit_mirror(divergence)]
    try:
        derive_bounds(divergence)
        closed = True
    except NotImplementedError:
        closed = False
    if closed:
        out += [check_root_identity(divergence, "lower"), check_root_identity(divergence, "upper"),
                check_mirror(divergence), check_closed_form_limits(divergence)]
    if generator_derivatives(divergence) is not None:
        out.append(check_small_delta(divergence))
    return out
