"""bandpo_theory.checks and bandpo_theory.asymptotics: pytest re-verifies the algebra, and the limits/expansion against bandpo.

    .venv/bin/python -m pytest -q tests/test_theory_checks.py

Expected values: the symbolic ones (limits, expansion coefficients) are the textbook results restated in
docs/paper-notes.md, "The band" (e^{-delta} and 1 - e^{-delta} for KL, 1 - delta and delta for TV, ...).
Numeric comparisons with bandpo state their tolerance where they are made.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

import bandpo
from bandpo_theory import asymptotics as A
from bandpo_theory import checks as C
from bandpo_theory.generators import delta, list_symbolic, p, r, register_symbolic, u, unregister_symbolic

ALL = tuple(list_symbolic())
CLOSED = ("chi2", "hellinger", "neyman_chi2", "tv")


@pytest.mark.parametrize("name", ALL)
def test_every_check_passes_symbolically(name):
    """All identities hold, and all are decided by sympy (no numeric fallback needed for the built-ins)."""
    results = C.all_checks(name)
    failed = [(res.check, res.method, res.result) for res in results if not res.passed]
    assert not failed, failed
    assert all(res.method.startswith("symbolic") for res in results), [(r_.check, r_.method) for r_ in results]
    expected = 4 + (4 if name in CLOSED else 0) + (0 if name == "tv" else 1)
    assert len(results) == expected


@pytest.mark.parametrize("name", ALL)
def test_sympy_generator_is_bandpos(name):
    res = C.check_generator_matches_bandpo(name)
    assert res.passed, res.result


@pytest.mark.parametrize("name", sorted(set(ALL) - {"tv"}))
def test_curvature_matches_bandpo_registry(name):
    """f''(1) from sympy equals bandpo's Divergence.f2_at_1 (which sets bandpo's small-delta start)."""
    f1, f2, _ = A.generator_derivatives(name)
    assert f1.is_finite
    assert math.isclose(float(f2), bandpo.get_divergence(name).f2_at_1, rel_tol=1e-12)


def test_numeric_fallbacks_are_real_checks():
    """The numeric certificates pass on true identities and fail on false ones."""
    assert C.check_root_identity("hellinger", "upper", methods=("numeric",)).passed
    res = C.check_convexity("kl", methods=("numeric",))
    assert res.passed and res.method.startswith("numeric")
    ok, worst = C._numeric_identity(lambda a, b: a - a, [(1, 2)])
    assert ok and worst == 0
    ok, worst = C._numeric_identity(lambda a, b: a * 1e-30, [(1, 2)])
    assert not ok


def test_checks_can_fail():
    """A concave 'generator' is rejected by the convexity check; a wrong root is not a root; a wrong mirror fails."""
    register_symbolic("_test_concave", -((u - 1) ** 2))
    try:
        res = C.check_convexity("_test_concave")
        assert not res.passed and res.method.startswith("numeric")
    finally:
        unregister_symbolic("_test_concave")
    f = (u - 1) ** 2
    wrong = 1 + sp.sqrt(delta * p / (1 - p))  # p and 1-p swapped
    assert not C._is_zero(C.g_of(f, p, wrong) - delta)


def test_symbolic_registry_validates():
    with pytest.raises(ValueError, match="already registered"):
        register_symbolic("kl", -sp.log(u))
    with pytest.raises(ValueError, match="in u only"):
        register_symbolic("_bad", p * u)


def test_generic_expansion_is_the_unified_band():
    """a1 = ± sqrt(2 (1-p) / (f''(1) p)) and a2 = -f'''(1)(1 - 2p)/(3 f''(1)² p), derived for a generic smooth f."""
    exp = A.generic_expansion()
    lead = sp.sqrt(2 * (1 - p) / (A.F2 * p))
    assert sp.simplify(exp.a1[1] - lead) == 0 and sp.simplify(exp.a1[0] + lead) == 0
    assert sp.simplify(exp.a2 + A.F3 * (1 - 2 * p) / (3 * A.F2**2 * p)) == 0


# Limits as listed in docs/paper-notes.md ("The band", limits), as sympy expressions in delta.
LOWER_AT_ONE = {
    "kl": sp.exp(-delta),
    "tv": 1 - delta,
    "chi2": sp.Integer(1),
    "hellinger": (1 - delta / 2) ** 2,
    "reverse_kl": sp.Integer(1),
    "neyman_chi2": 1 / (1 + delta),
}
UPPER_P_AT_ZERO = {
    "kl": 1 - sp.exp(-delta),
    "tv": delta,
    "chi2": sp.Integer(0),
    "hellinger": 1 - (1 - delta / 2) ** 2,
    "reverse_kl": sp.Integer(0),
    "neyman_chi2": delta / (1 + delta),
}


@pytest.mark.parametrize("name", sorted(LOWER_AT_ONE))
def test_limits_closed_form(name):
    lo, up = A.lower_limit_at_one(name), A.upper_probability_at_zero(name)
    assert sp.simplify(lo.value - LOWER_AT_ONE[name]) == 0, lo.value
    assert sp.simplify(up.value - UPPER_P_AT_ZERO[name]) == 0, up.value


def test_js_limits_are_implicit():
    """JS has no closed-form limit; the implicit equations still hold and their roots add up to 1."""
    lo, up = A.lower_limit_at_one("js"), A.upper_probability_at_zero("js")
    assert lo.value is None and up.value is None
    for dv, value in lo.numeric.items():
        assert abs(value + up.numeric[dv] - 1) < 1e-25
        assert abs(sp.N(lo.equation.subs(r, value), 30) - dv) < 1e-25
    assert sp.simplify(lo.saturates_from - sp.log(2)) == 0


@pytest.mark.parametrize("name", ALL)
def test_limits_against_bandpo(name):
    """bandpo.band at p = 1 (its defined limit) and at p = 1e-200 against the sympy limits, delta = 0.05.

    Tolerances: 1e-13 relative. At p = 1e-200 the distance to the limit is O(p log p) < 1e-190, so only
    float64 rounding remains; at p = 1 bandpo solves the limit equation itself (to ~1e-15).
    """
    dv = sp.Rational(1, 20)
    lo, up = A.lower_limit_at_one(name), A.upper_probability_at_zero(name)
    lo_want = float(lo.numeric[dv]) if lo.numeric else float(lo.value)
    up_want = float(up.numeric[dv]) if up.numeric else float(up.value)
    lower, upper = bandpo.band(torch.tensor([0.0], dtype=torch.float64), 0.05, name)
    assert math.isclose(float(lower[0]), lo_want, rel_tol=1e-13), (float(lower[0]), lo_want)
    assert float(upper[0]) == 1.0
    logp = torch.tensor([-200 * math.log(10)], dtype=torch.float64)
    _, log_upper = bandpo.log_band(logp, 0.05, name)
    q_tail = math.exp(float(log_upper[0] + logp[0]))
    if up_want == 0:  # chi2, reverse_kl: the margin vanishes; chi2 like sqrt(delta p), reverse KL like delta/log(1/p)
        assert q_tail < 1e-2
    else:
        assert math.isclose(q_tail, up_want, rel_tol=1e-13), (q_tail, up_want)


@pytest.mark.parametrize("name", ("kl", "reverse_kl", "js", "neyman_chi2", "hellinger"))
def test_small_delta_order_against_bandpo(name):
    """The observed convergence order of bandpo's bounds to the expansion: ~1 for the leading term alone
    (error a2·delta), ~1.5 with the a2·delta term (error O(delta^{3/2})), from delta = 1e-6 and 1e-8.

    Expected order from the derivation; accepted within ±0.15 (the O(delta²) terms shift the estimate by
    ~sqrt(delta/p)·a4/a3; measured 1.500 ± 0.001 except JS, 1.51-1.55). p = 0.2 and 0.8 (a2 ∝ 1 - 2p is not 0).
    Smaller deltas are not usable for JS: bandpo's JS generator cancels (f ≈ (u-1)²/8 from O(1) terms), so its
    band has a relative error floor of ~3e-12 at delta = 1e-9 (measured against mpmath), which would show up here.
    """
    lo_e, up_e = A.expansion_for(name)
    for pv in (0.2, 0.8):
        errs = {}
        for dv in (1e-6, 1e-8):
            got_lo, got_up = bandpo.band(torch.tensor([math.log(pv)], dtype=torch.float64), dv, name)
            for side, got, e in (("lower", got_lo, lo_e), ("upper", got_up, up_e)):
                full = float(e.subs({p: pv, delta: dv}))
                a1 = float(sp.simplify(e.coeff(sp.sqrt(delta))).subs(p, pv))
                lead = 1 + a1 * math.sqrt(dv)
                errs[(side, dv)] = (abs(float(got[0]) - lead), abs(float(got[0]) - full))
        for side in ("lower", "upper"):
            (l6, f6), (l8, f8) = errs[(side, 1e-6)], errs[(side, 1e-8)]
            assert abs(math.log(l6 / l8) / math.log(100) - 1.0) < 0.15, (side, l6, l8)
            assert abs(math.log(f6 / f8) / math.log(100) - 1.5) < 0.15, (side, f6, f8)
