"""Symbolic generators: the sympy twin of :mod:`bandpo.operator.divergences`.

Every registered bandpo divergence has a sympy generator f(u) here, built from its name through a small
registry (a :class:`bandpo.registry.Registry`). The derivations in :mod:`bandpo_theory.derive` and
:mod:`bandpo_theory.asymptotics` start from these expressions and nothing else;
:func:`check_generator_matches_bandpo` (in :mod:`bandpo_theory.checks`) evaluates each one against bandpo's
float64 torch generator ``bandpo.get_divergence(name).f``.

Symbols (all positive, so that sympy simplifies sqrt(p**2) to p and so on):

    p      old probability of the sampled token, 0 < p < 1
    delta  trust-region radius δ > 0
    r      ratio π_new / π_old of the sampled token, 0 < r < 1/p
    u      argument of the generator f

The two-point reduction (the paper's scalarised constraint) is

    g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p)),

the f-divergence between Bernoulli(r p) and Bernoulli(p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import sympy as sp

from bandpo.registry import Registry

p, delta = sp.symbols("p delta", positive=True)
r, u = sp.symbols("r u", positive=True)
# Auxiliary positive symbols used by the checks: p = 1/(1 + m) puts p in (0, 1) with 1 - p visibly positive.
m, t, x, q, w, eps = sp.symbols("m t x q w varepsilon", positive=True)

# A rational map from the positive quadrant (y, z) onto the unsaturated region of one side, used to prove
# identities that involve nested square roots (see bandpo_theory.checks.check_root_identity).
RegionMap = Callable[[sp.Symbol, sp.Symbol], "tuple[sp.Expr, sp.Expr]"]


@dataclass(frozen=True)
class SymbolicGenerator:
    """A divergence generator as a sympy expression in the positive symbol ``u``."""

    name: str
    """Registry key; the same name as in :func:`bandpo.list_divergences`."""
    f: sp.Expr
    """f(u), convex on (0, ∞) with f(1) = 0."""
    region_maps: Optional["dict[str, RegionMap]"] = None
    """Optional {"lower"/"upper": map} of rational parametrisations (y, z > 0) -> (p, delta) onto the region where
    that bound is not saturated. Only needed where the closed form has nested radicals (Hellinger); a change of
    variables used by a proof, not a result."""
    note: str = ""
    """One line for the report (direction, normalisation)."""


_SYMBOLIC: Registry[SymbolicGenerator] = Registry(
    "symbolic generator", hint="add one with bandpo_theory.generators.register_symbolic"
)


def register_symbolic(
    name: str,
    f: sp.Expr,
    *,
    region_maps: Optional["dict[str, RegionMap]"] = None,
    note: str = "",
    overwrite: bool = False,
) -> SymbolicGenerator:
    """Add a sympy generator under ``name`` (the bandpo divergence it mirrors).

    Raises:
        ValueError: duplicate name (and ``overwrite`` is False), or ``f`` is not an expression in ``u`` alone.
    """
    f = sp.sympify(f)
    if not f.free_symbols <= {u}:
        raise ValueError(f"generator of {name!r} must be an expression in u only, got symbols {f.free_symbols}")
    return _SYMBOLIC.register(
        name, SymbolicGenerator(name=name, f=f, region_maps=region_maps, note=note), overwrite=overwrite
    )


def unregister_symbolic(name: str) -> None:
    """Remove a symbolic generator (ValueError listing the known names if there is none)."""
    _SYMBOLIC.unregister(name)


def list_symbolic() -> list[str]:
    """Names with a sympy generator, sorted."""
    return _SYMBOLIC.names()


def get_symbolic(divergence: "str | SymbolicGenerator") -> SymbolicGenerator:
    """The sympy generator of a divergence name (a :class:`SymbolicGenerator` is returned as is).

    Raises:
        ValueError: the name has no symbolic generator; the message lists the known names.
    """
    if isinstance(divergence, SymbolicGenerator):
        return divergence
    return _SYMBOLIC.get(divergence)


def g_of(f: sp.Expr, p_: sp.Expr, r_: sp.Expr, f_complement: Optional[sp.Expr] = None) -> sp.Expr:
    """g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p)).

    ``f_complement`` (default ``f``) is used for the second term; the derivation passes the generator refined to
    the side of 1 on which each argument lies (r > 1 implies (1 - p r)/(1 - p) < 1 and vice versa).
    """
    fc = f if f_complement is None else f_complement
    return p_ * f.subs(u, r_) + (1 - p_) * fc.subs(u, (1 - p_ * r_) / (1 - p_))


def refine_side(f: sp.Expr, above_one: bool) -> sp.Expr:
    """f with the knowledge u > 1 (``above_one``) or u < 1 applied: |u - 1| becomes u - 1 or 1 - u."""
    return sp.refine(f, sp.Q.gt(u, 1) if above_one else sp.Q.lt(u, 1))


def simplify_in_p(expr: sp.Expr) -> sp.Expr:
    """The shortest of a few simplifications of ``expr`` that use 0 < p < 1.

    sympy knows p > 0 but not 1 - p > 0, so sqrt(1/(1 - p)) stays unsimplified; simplifying after p = 1 - w
    (w > 0) and substituting back fixes that. Ties are broken by the printed form, so the result is
    deterministic.
    """
    plain = sp.simplify(expr)
    mirrored = sp.simplify(sp.simplify(expr.subs(p, 1 - w)).subs(w, 1 - p))
    return min((plain, mirrored), key=lambda e: (sp.count_ops(e), str(e)))


# ----------------------------------------------------------------------------------------------------------
# Hellinger's region maps (tangent half-angle substitution)
# ----------------------------------------------------------------------------------------------------------
# With p = sin²α and delta = 2 - 2 cos θ (α, θ ∈ (0, π/2)) the band is sin²(α ± θ)/p; the upper bound is
# unsaturated iff α + θ < π/2 and the lower one iff α > θ. With a = tan(α/2) and b = tan(θ/2) every square root
# in the closed form becomes rational: sqrt(p) = 2a/(1+a²), sqrt(1-p) = (1-a²)/(1+a²), 1 - delta/2 = (1-b²)/(1+b²).
# b = 1/(1+y) covers θ ∈ (0, π/2); the conditions become a < (1-b)/(1+b) and a > b, covered by the z-maps below.


def _hellinger_delta(y):
    b = 1 / (1 + y)
    return b, 4 * b**2 / (1 + b**2)


def _hellinger_upper_map(y, z):
    b, d = _hellinger_delta(y)
    a = (1 - b) / (1 + b) / (1 + z)
    return sp.factor((2 * a / (1 + a**2)) ** 2), sp.factor(d)


def _hellinger_lower_map(y, z):
    b, d = _hellinger_delta(y)
    a = 1 - (1 - b) / (1 + z)
    return sp.factor((2 * a / (1 + a**2)) ** 2), sp.factor(d)


# ----------------------------------------------------------------------------------------------------------
# Built-ins (the same conventions as bandpo.operator.divergences: D_f(Q‖P) = Σ P f(Q/P), Q new, P old)
# ----------------------------------------------------------------------------------------------------------

register_symbolic("kl", -sp.log(u), note="KL(π_old ‖ π_new), the paper's direction")
register_symbolic("reverse_kl", u * sp.log(u), note="KL(π_new ‖ π_old)")
register_symbolic("tv", sp.Abs(u - 1) / 2, note="total variation ½ Σ abs(q - p)")
register_symbolic("chi2", (u - 1) ** 2, note="Pearson χ² = Σ (q - p)²/p")
register_symbolic("neyman_chi2", (u - 1) ** 2 / u, note="Neyman χ² = Σ (q - p)²/q")
register_symbolic(
    "hellinger",
    (sp.sqrt(u) - 1) ** 2,
    region_maps={"upper": _hellinger_upper_map, "lower": _hellinger_lower_map},
    note="squared Hellinger Σ(√q - √p)² (no ½)",
)
register_symbolic(
    "js",
    (u * sp.log(u) - (u + 1) * sp.log((u + 1) / 2)) / 2,
    note="Jensen-Shannon ½KL(P‖M) + ½KL(Q‖M), M = (P+Q)/2",
)
