"""bandpo_theory.derive: sympy's closed forms, and bandpo's torch closed forms checked against them.

    .venv/bin/python -m pytest -q tests/test_theory_derive.py

Where the expected values come from: the sympy expressions of ``bandpo_theory.derive_bounds`` (derived from the
generator alone), evaluated by ``sympy.lambdify(..., "mpmath")`` at 50 digits at the exact float64 input
p = exp(old_logp). Tolerance on bandpo's float64 result: 1e-12 relative plus 16 ulps times the bound's condition
number kappa = |d log bound / d log p| (also from sympy), the same rule as tests/test_band_reference.py; kappa
only matters next to a saturation kink, where a bound goes to 0 and no float64 method can do better because
p itself is rounded. Points within 1e-9 (relative) of a kink are skipped.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
import sympy as sp
import torch

import bandpo
from bandpo.operator import solvers
from bandpo_theory import delta, derive_bounds, p
from bandpo_theory.checks import _is_zero
from bandpo_theory.generators import g_of, list_symbolic

CLOSED = ("tv", "chi2", "hellinger", "neyman_chi2")
NO_CLOSED_FORM = ("kl", "reverse_kl", "js")
EPS = float(np.finfo(np.float64).eps)
# log p from 1e-12 to 1 - 1e-12: 121 points, denser near both ends through the logit.
LOGIT = np.linspace(-27.6, 27.6, 121)
LOGP = -np.logaddexp(0.0, -LOGIT)
DELTAS = {
    "tv": (1e-3, 0.05, 0.3, 0.9, 1.5),
    "chi2": (1e-3, 0.05, 0.3, 2.0),
    "hellinger": (1e-3, 0.05, 0.3, 1.9, 2.5),
    "neyman_chi2": (1e-3, 0.05, 0.3, 2.0),
}
TORCH_LOG_BANDS = {"tv": solvers.tv_log_band, "chi2": solvers.chi2_log_band, "hellinger": solvers.hellinger_log_band}


def test_closed_forms_exist_and_use_p_delta_only():
    for name in CLOSED:
        d = derive_bounds(name)
        for bound in (d.lower, d.upper):
            assert bound.free_symbols <= {p, delta}, (name, bound.free_symbols)
        assert d.lower_side.side == "lower" and d.upper_side.side == "upper"


def test_derivation_is_frozen_and_cached():
    d = derive_bounds("chi2")
    assert derive_bounds("chi2") is d
    with pytest.raises(AttributeError):
        d.divergence = "tv"  # frozen dataclass


@pytest.mark.parametrize("name", NO_CLOSED_FORM)
def test_no_closed_form_says_why(name):
    with pytest.raises(NotImplementedError, match="transcendental"):
        derive_bounds(name)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown symbolic generator 'not_a_divergence'; known symbolic generators: .*kl"):
        derive_bounds("not_a_divergence")


def test_known_closed_forms():
    """The derived forms equal the textbook ones (docs/paper-notes.md, "The band"), checked symbolically on the
    unsaturated branch."""
    expected = {
        "tv": (1 - delta / p, 1 + delta / p),
        "chi2": (1 - sp.sqrt(delta * (1 - p) / p), 1 + sp.sqrt(delta * (1 - p) / p)),
    }
    for name, (lo, up) in expected.items():
        d = derive_bounds(name)
        assert sp.simplify(d.lower_side.root - lo) == 0
        assert sp.simplify(d.upper_side.root - up) == 0
    # Hellinger: (c ∓ t s)² with c = 1 - delta/2, s = sqrt(delta (1 - delta/4)), t = sqrt((1-p)/p) (bandpo's docstring);
    # sympy needs p = 1/(1 + m) to see 1 - p > 0 (the helper the checks use).
    c, s, t = 1 - delta / 2, sp.sqrt(delta * (1 - delta / 4)), sp.sqrt((1 - p) / p)
    d = derive_bounds("hellinger")
    assert _is_zero(d.lower_side.root - (c - t * s) ** 2)
    assert _is_zero(d.upper_side.root - (c + t * s) ** 2)
    # Saturation thresholds (docs/paper-notes.md, "The band", saturation)
    sat = {name: (derive_bounds(name).lower_side.saturation_value, derive_bounds(name).upper_side.saturation_value)
           for name in ("tv", "chi2", "hellinger")}
    assert sp.simplify(sat["tv"][0] - p) == 0 and sp.simplify(sat["tv"][1] - (1 - p)) == 0
    assert sp.simplify(sat["chi2"][0] - p / (1 - p)) == 0 and sp.simplify(sat["chi2"][1] - (1 - p) / p) == 0
    assert sp.simplify(sat["hellinger"][1] - (2 - 2 * sp.sqrt(p))) == 0
    assert sp.simplify(sat["hellinger"][0] - (2 - 2 * sp.sqrt(1 - p))) == 0
    assert derive_bounds("neyman_chi2").lower_side.saturated is sp.false


def test_root_pick_is_justified():
    """Exactly one candidate survives; the rejected ones fail on the sample points (wrong side or not a root)."""
    for name in CLOSED:
        for sd in (derive_bounds(name).lower_side, derive_bounds(name).upper_side):
            assert sd.root in sd.candidates
            assert len(sd.pick_points) >= 3
            pv, dv = sd.pick_points[0]
            value = float(sp.N(sd.root.subs({p: pv, delta: dv})))
            assert (value < 1) if sd.side == "lower" else (1 < value < 1 / float(pv))
            assert abs(float(sp.N(g_of(derive_bounds(name).f, p, sd.root).subs({p: pv, delta: dv}), 30)) - float(dv)) < 1e-20


def _reference(name):
    """mpmath functions (bound, kappa) per side, from the sympy expressions."""
    d = derive_bounds(name)
    out = {}
    for side in ("lower", "upper"):
        sd = d.side(side)
        bound = sp.lambdify((p, delta), sd.bound, "mpmath")
        kappa = sp.lambdify((p, delta), sp.diff(sd.root, p) * p / sd.root, "mpmath")
        margin = None if sd.saturation_value == sp.oo else sp.lambdify((p, delta), sd.saturation_value - delta, "mpmath")
        out[side] = (bound, kappa, margin)
    return out


@pytest.mark.parametrize("name", CLOSED)
def test_bandpo_band_matches_sympy(name):
    """bandpo.band (float64) against the lambdified sympy bounds at 50 digits."""
    ref = _reference(name)
    logp_t = torch.tensor(LOGP, dtype=torch.float64)
    checked = 0
    with mp.workdps(50):
        for dv in DELTAS[name]:
            outs = [bandpo.band(logp_t, dv, name)]
            for lower, upper in outs:
                for k, lp in enumerate(LOGP):
                    pm = mp.exp(mp.mpf(float(lp)))
                    for side, got in (("lower", float(lower[k])), ("upper", float(upper[k]))):
                        bound, kappa, margin = ref[side]
                        if margin is not None and abs(margin(pm, mp.mpf(dv))) < 1e-9 * dv:
                            continue  # at a kink
                        want = bound(pm, mp.mpf(dv))
                        if want == 0:
                            assert got == 0, (name, side, dv, float(pm), got)
                            continue
                        saturated = margin is not None and margin(pm, mp.mpf(dv)) <= 0
                        kap = 0.0 if saturated else float(abs(kappa(pm, mp.mpf(dv))))
                        tol = 1e-12 + 16 * EPS * kap
                        err = abs(got - float(want)) / float(want)
                        assert err <= tol, (name, side, dv, float(pm), got, float(want), err, tol)
                        checked += 1
    assert checked > 500


@pytest.mark.parametrize("name", sorted(TORCH_LOG_BANDS))
def test_torch_log_bands_match_sympy(name):
    """bandpo.operator.solvers.*_log_band against log of the sympy bounds: absolute error in log = relative error."""
    ref = _reference(name)
    logp_t = torch.tensor(LOGP, dtype=torch.float64)
    log1mp_t = torch.log(-torch.expm1(logp_t))
    with mp.workdps(50):
        for dv in DELTAS[name]:
            log_lo, log_up = TORCH_LOG_BANDS[name](logp_t, log1mp_t, torch.full_like(logp_t, dv))
            for k, lp in enumerate(LOGP):
                pm = mp.exp(mp.mpf(float(lp)))
                for side, got in (("lower", float(log_lo[k])), ("upper", float(log_up[k]))):
                    bound, kappa, margin = ref[side]
                    if margin is not None and abs(margin(pm, mp.mpf(dv))) < 1e-9 * dv:
                        continue
                    want = bound(pm, mp.mpf(dv))
                    if want == 0:
                        assert got == -math.inf
                        continue
                    saturated = margin is not None and margin(pm, mp.mpf(dv)) <= 0
                    kap = 0.0 if saturated else float(abs(kappa(pm, mp.mpf(dv))))
                    assert abs(got - float(mp.log(want))) <= 1e-12 + 16 * EPS * kap, (name, side, dv, float(pm))


@pytest.mark.parametrize("name", CLOSED)
def test_numpy_lambdify_matches_bandpo(name):
    """The plain float64 numpy lambdify of the Piecewise bounds against bandpo.band, where the formula is well
    conditioned (0.01 <= p <= 0.99 and the bound in [0.05, 1/p]: no cancellation in 1 - x).

    Tolerance 1e-12 relative: both sides are float64 evaluations of the same function; the numpy formula loses at
    most a few ulps times 1/bound <= 20 ulps ≈ 4e-15 here.
    """
    d = derive_bounds(name)
    lo_f = sp.lambdify((p, delta), d.lower, "numpy")
    up_f = sp.lambdify((p, delta), d.upper, "numpy")
    pv = np.linspace(0.01, 0.99, 99)
    for dv in (0.01, 0.05, 0.2):
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # numpy evaluates every Piecewise branch
            warnings.simplefilter("ignore")
            want_lo, want_up = np.asarray(lo_f(pv, dv), dtype=float), np.asarray(up_f(pv, dv), dtype=float)
        got_lo, got_up = bandpo.band(torch.log(torch.tensor(pv, dtype=torch.float64)), dv, name)
        for want, got in ((want_lo, got_lo.numpy()), (want_up, got_up.numpy())):
            ok = want >= 0.05
            np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=0)


def test_symbolic_registry_covers_bandpo():
    """Every bandpo divergence has a sympy generator (so every one is derived/checked here)."""
    assert set(bandpo.list_divergences()) <= set(list_symbolic())
