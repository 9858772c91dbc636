"""Closed-form Band bounds derived by sympy from the generator alone.

For a divergence with generator f, the Band of the sampled token with old probability p is

    [lower, upper] = {r ∈ [0, 1/p] : g_f(p, r) <= delta},   g_f(p, r) = p f(r) + (1-p) f((1 - p r)/(1 - p)).

g_f(p, ·) is convex with g_f(p, 1) = 0 (checked in :mod:`bandpo_theory.checks`), so it decreases on [0, 1] and
increases on [1, 1/p]; each bound is the root of g_f(p, r) = delta on its side of 1, or the end of the simplex
(0 or 1/p) when g_f stays below delta all the way there. :func:`derive_bounds` does exactly that, per side:

1. refine f to the side: on the upper side r > 1 and the complement's ratio (1 - p r)/(1 - p) < 1, on the lower
   side the reverse (this turns |u - 1| into u - 1 or 1 - u; smooth generators are unchanged);
2. ``sympy.solve(g_side - delta, r)``;
3. pick the root that is real, on the right side of 1 (and inside (0, 1/p)) and satisfies g_f = delta at every
   sample point of a grid of rational (p, delta) where that side is not saturated; exactly one candidate must
   pass, otherwise the derivation fails loudly;
4. saturation: the upper bound is 1/p iff g_f(p, 1/p) = p f(1/p) + (1-p) f(0+) <= delta, the lower bound is 0 iff
   g_f(p, 0) = p f(0+) + (1-p) f(1/(1-p)) <= delta (never when f(0+) = ∞);
5. assemble ``Piecewise((end, saturated), (root, True))``.

Nothing about any particular divergence is typed in: the inputs are the generator and the recipe above.
Generators whose band equation sympy cannot solve (KL: it mixes log r and log(1 - p r)) raise
``NotImplementedError`` with sympy's reason; bandpo solves those numerically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

from .generators import delta, g_of, get_symbolic, p, r, refine_side, simplify_in_p, u

# Rational sample points used to pick the root on each side (only the unsaturated ones are used).
PICK_P = (sp.Rational(1, 10), sp.Rational(1, 4), sp.Rational(1, 2), sp.Rational(3, 4), sp.Rational(9, 10))
PICK_DELTA = (sp.Rational(1, 200), sp.Rational(1, 50), sp.Rational(1, 10), sp.Rational(1, 4))
PICK_DIGITS = 40
PICK_TOL = sp.Float("1e-30", PICK_DIGITS)  # |g_f(p, root) - delta| at 40 digits: an exact root gives ~1e-40


@dataclass(frozen=True)
class SideDerivation:
    """How one bound (``"lower"`` or ``"upper"``) was derived."""

    side: str
    """``"lower"`` (root in (0, 1)) or ``"upper"`` (root in (1, 1/p))."""
    g_side: sp.Expr
    """g_f(p, r) with f refined to this side (equal to g_f where r is on this side of 1)."""
    candidates: tuple
    """Every root sympy returned for g_side = delta."""
    root: sp.Expr
    """The picked root: the bound where it is not saturated."""
    pick_points: tuple
    """The rational (p, delta) points, all unsaturated, at which only ``root`` was a valid root."""
    saturation_value: sp.Expr
    """g_f(p, 0) (lower) or g_f(p, 1/p) (upper); ``oo`` when f(0+) = ∞."""
    saturated: sp.Basic
    """The condition saturation_value <= delta (``false`` when it never holds)."""
    end: sp.Expr
    """The simplex end the bound saturates at: 0 (lower) or 1/p (upper)."""
    bound: sp.Expr
    """Piecewise((end, saturated), (root, True)) in p and delta only."""


@dataclass(frozen=True)
class BandDerivation:
    """The derived Band of a divergence: ``lower`` and ``upper`` are sympy expressions in ``p`` and ``delta``."""

    divergence: str
    f: sp.Expr
    """The generator f(u)."""
    g: sp.Expr
    """g_f(p, r) with the unrefined generator."""
    lower_side: SideDerivation
    upper_side: SideDerivation

    @property
    def lower(self) -> sp.Expr:
        """Lower ratio bound, valid on 0 < p < 1, delta > 0 (saturation at 0 included)."""
        return self.lower_side.bound

    @property
    def upper(self) -> sp.Expr:
        """Upper ratio bound, valid on 0 < p < 1, delta > 0 (saturation at 1/p included)."""
        return self.upper_side.bound

    def side(self, name: str) -> SideDerivation:
        return {"lower": self.lower_side, "upper": self.upper_side}[name]


def f_at_zero(f: sp.Expr) -> sp.Expr:
    """lim_{u -> 0+} f(u) (``oo`` for KL and Neyman χ²)."""
    return sp.limit(refine_side(f, above_one=False), u, 0, "+")


def saturation_value(f: sp.Expr, side: str) -> sp.Expr:
    """g_f(p, 1/p) for the upper side, g_f(p, 0) for the lower side, simplified; ``oo`` if f(0+) = ∞."""
    f0 = f_at_zero(f)
    if f0 == sp.oo:
        return sp.oo
    if side == "upper":  # the token takes all the mass: r = 1/p > 1, the complement's ratio is 0
        value = p * refine_side(f, above_one=True).subs(u, 1 / p) + (1 - p) * f0
    else:  # the token loses all its mass: r = 0, the complement's ratio 1/(1-p) > 1
        value = p * f0 + (1 - p) * refine_side(f, above_one=True).subs(u, 1 / (1 - p))
    return simplify_in_p(value)


def _numeric(expr: sp.Expr, point: dict) -> Optional[sp.Float]:
    """expr at a rational point with PICK_DIGITS digits; None when it is not (numerically) real."""
    value = sp.N(expr.subs(point), PICK_DIGITS)
    re, im = value.as_real_imag()
    if not re.is_number or abs(im) > PICK_TOL:
        return None
    return re


def _is_root_on_side(cand: sp.Expr, g_side: sp.Expr, side: str, point: dict) -> bool:
    value = _numeric(cand, point)
    if value is None:
        return False
    inside = (0 < value < 1) if side == "lower" else (1 < value < 1 / point[p])
    if not inside:
        return False
    residual = _numeric(g_side.subs(r, value), point)
    return residual is not None and abs(residual - point[delta]) < PICK_TOL


def _unsolvable(name: str, g_side: sp.Expr, reason: str) -> NotImplementedError:
    kinds = sorted({str(a.func) for a in g_side.atoms(sp.Function) if a.has(r)})
    kinds_text = f" (it contains {', '.join(kinds)} of terms in r)" if kinds else ""
    return NotImplementedError(
        f"no closed form for the {name!r} band: sympy cannot solve g_f(p, r) = delta for r{kinds_text}; "
        f"sympy says: {reason.splitlines()[0] if reason else 'no solution found'}. "
        "The equation is transcendental in r, so bandpo solves it numerically (bandpo.band)."
    )


def _derive_side(name: str, f: sp.Expr, side: str) -> SideDerivation:
    above = side == "upper"
    f_token = refine_side(f, above_one=above)  # r > 1 on the upper side
    f_rest = refine_side(f, above_one=not above)  # (1 - p r)/(1 - p) < 1 there
    g_side = g_of(f_token, p, r, f_rest)
    try:
        candidates = sp.solve(sp.Eq(g_side, delta), r)
    except NotImplementedError as exc:
        raise _unsolvable(name, g_side, str(exc)) from None
    candidates = tuple(dict.fromkeys(candidates))  # deduplicate, keep sympy's order
    if not candidates:
        raise _unsolvable(name, g_side, "")

    sat_value = saturation_value(f, side)
    saturated = sp.false if sat_value == sp.oo else sp.Le(sat_value, delta)
    points = []
    for pv in PICK_P:
        for dv in PICK_DELTA:
            pt = {p: pv, delta: dv}
            if saturated is sp.false or not bool(saturated.subs(pt)):
                points.append(pt)
    if len(points) < 3:
        raise RuntimeError(f"{name} {side}: fewer than 3 unsaturated sample points to pick a root from")
    passing = [c for c in candidates if all(_is_root_on_side(c, g_side, side, pt) for pt in points)]
    if len(passing) != 1:
        raise NotImplementedError(
            f"{name} {side}: {len(passing)} of sympy's {len(candidates)} roots are valid at every unsaturated "
            f"sample point (expected exactly one): {candidates}"
        )
    root = passing[0]
    end = sp.Integer(0) if side == "lower" else 1 / p
    bound = sp.Piecewise((end, saturated), (root, True))
    return SideDerivation(
        side=side,
        g_side=g_side,
        candidates=candidates,
        root=root,
        pick_points=tuple((pt[p], pt[delta]) for pt in points),
        saturation_value=sat_value,
        saturated=saturated,
        end=end,
        bound=bound,
    )


_CACHE: dict = {}


def derive_bounds(divergence: str) -> BandDerivation:
    """Derive the closed-form Band of ``divergence`` (a name with a sympy generator) with sympy.

    Returns:
        A frozen :class:`BandDerivation`; ``.lower`` and ``.upper`` are sympy expressions in ``p`` and ``delta``
        valid on 0 < p < 1, delta > 0, saturation included.

    Raises:
        ValueError: no symbolic generator for that name.
        NotImplementedError: sympy finds no closed form (e.g. ``"kl"``); the message says why.

    Results (and failures) are cached per name: derivations take up to a few seconds.
    """
    gen = get_symbolic(divergence)
    name = gen.name
    if name not in _CACHE:
        try:
            lower = _derive_side(name, gen.f, "lower")
            upper = _derive_side(name, gen.f, "upper")
            _CACHE[name] = BandDerivation(
                divergence=name, f=gen.f, g=g_of(gen.f, p, r), lower_side=lower, upper_side=upper
            )
        except NotImplementedError as exc:
            _CACHE[name] = exc
    result = _CACHE[name]
    if isinstance(result, NotImplementedError):
        raise NotImplementedError(*result.args)
    return result


def closed_form_divergences(names=None) -> list[str]:
    """The names (default: every symbolic generator) for which :func:`derive_bounds` succeeds."""
    from .generators import list_symbolic

    out = []
    for name in names or list_symbolic():
        try:
            derive_bounds(name)
        except NotImplementedError:
            continue
        out.append(name)
    return out
