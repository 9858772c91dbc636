"""Property tests (hypothesis) for the Band operator, and its error messages.

Invariants checked for every registered divergence:
  0 <= lower <= 1 <= upper <= 1/p;  each bound is the root of g_f(p, r) = delta (checked in 60-digit
  arithmetic); the band widens as delta grows; float32 agrees with float64; bad input raises ValueError.
Random deltas go through the same path as fixed ones (one delta-independent start table per divergence); the
float32 test uses three fixed deltas.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mpmath as mp
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bandpo

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import make_band_table as ref  # noqa: E402  (the mpmath generators)

NAMES = bandpo.list_divergences()
logps = st.floats(min_value=-700.0, max_value=0.0, allow_nan=False)
deltas = st.floats(min_value=1e-4, max_value=2.0, allow_nan=False)


@given(name=st.sampled_from(NAMES), logp=st.lists(logps, min_size=1, max_size=16), delta=deltas)
def test_bounds_are_ordered_and_inside_the_simplex(name, logp, delta):
    x = torch.tensor(logp, dtype=torch.float64)
    log_lo, log_up = bandpo.log_band(x, delta, name)
    assert (log_lo <= 0).all() and (log_up >= 0).all()
    assert (log_up <= -x + 1e-15 * x.abs()).all()  # upper <= 1/p (log space: no overflow)
    lo, up = bandpo.band(x, delta, name)
    assert (lo >= 0).all() and (lo <= 1).all() and (up >= 1).all()


@given(name=st.sampled_from(NAMES), logp=st.floats(min_value=-40.0, max_value=-1e-9), delta=deltas)
def test_bounds_are_the_roots_of_g(name, logp, delta):
    """Just inside each computed bound is feasible (g <= delta) and just outside is not (g >= delta),
    "just" being a relative change of the ratio of max(1e-12, 4 eps |log r|); at a saturated bound only
    the feasibility of 0 or 1/p is checked. g is evaluated in 60-digit arithmetic (mpmath)."""
    f = ref.GENERATORS[name]
    mp.mp.dps = 60
    lp = mp.mpf(logp)
    p, q1, d = mp.exp(lp), -mp.expm1(lp), mp.mpf(delta)

    def G(y):  # g_f(p, e^y), the complement ratio written without cancellation
        r = mp.exp(y)
        return ref.g(f, p, q1, r, 1 + (p / q1) * -mp.expm1(y))

    log_lo, log_up = bandpo.log_band(torch.tensor([logp], dtype=torch.float64), delta, name)
    for sign, y in ((-1, float(log_lo)), (1, float(log_up))):
        if y == -math.inf:
            assert ref.g(f, p, q1, mp.mpf(0), 1 / q1) <= d * (1 + 1e-12)  # r = 0 is feasible
            continue
        h = mp.mpf(max(1e-12, 4 * 2.2e-16 * abs(y)))
        y = mp.mpf(y)
        assert G(y - sign * h) <= d * (1 + 1e-12), ("inside infeasible", y, G(y - sign * h))
        if not (sign == 1 and y + h >= -lp):  # beyond 1/p is outside the simplex anyway
            assert G(y + sign * h) >= d * (1 - 1e-12), ("outside feasible", y, G(y + sign * h))


@given(name=st.sampled_from(NAMES), logp=st.lists(logps, min_size=1, max_size=8),
       d1=deltas, d2=deltas)
def test_band_widens_with_delta(name, logp, d1, d2):
    d1, d2 = min(d1, d2), max(d1, d2)
    x = torch.tensor(logp, dtype=torch.float64)
    lo1, up1 = bandpo.log_band(x, d1, name)
    lo2, up2 = bandpo.log_band(x, d2, name)
    tol = 1e-13  # solver rounding at equal deltas

    def slack(x):
        return torch.where(torch.isfinite(x), tol * x.abs().clamp(min=1), torch.zeros_like(x))

    assert ((lo2 <= lo1) | (lo2 <= lo1 + slack(lo1))).all()
    assert ((up2 >= up1) | (up2 >= up1 - slack(up1))).all()


@given(name=st.sampled_from(NAMES), logp=st.lists(st.floats(-60.0, 0.0), min_size=1, max_size=16),
       delta=st.sampled_from([1e-3, 0.05, 0.3]))
def test_float32_agrees_with_float64(name, logp, delta):
    x = torch.tensor(logp, dtype=torch.float32)
    lo32, up32 = bandpo.band(x, delta, name)  # three fixed deltas: the table path, built once each
    lo64, up64 = bandpo.band(x.double(), delta, name)
    for a, b in ((lo32, lo64), (up32, up64)):
        b32 = b.float()
        normal = b32.abs() >= torch.finfo(torch.float32).tiny
        assert torch.allclose(a[normal], b32[normal], rtol=2 * torch.finfo(torch.float32).eps, atol=0)
        assert (a[~normal].abs() <= torch.finfo(torch.float32).tiny).all()


# ----------------------------------------------------------------------------------------------------------
# Bad input: clear ValueErrors
# ----------------------------------------------------------------------------------------------------------

GOOD = torch.log(torch.tensor([0.1, 0.5]))


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([0.1, float("nan")]), "NaN"),
    (torch.tensor([-1.0, float("-inf")]), "infinite"),
    (torch.tensor([-1.0, float("inf")]), "infinite"),
    (torch.tensor([-1.0, 0.01]), "above 0"),
    (torch.tensor([-1, -2]), "integer"),
    (torch.tensor([True, False]), "floating"),
])
def test_bad_logp_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        bandpo.band(bad, 0.05)


def test_rounding_above_zero_is_accepted():
    x = torch.tensor([1e-7, -0.5], dtype=torch.float32)  # log_softmax can round to +1 ulp
    lo, up = bandpo.band(x, 0.05)
    assert float(up[0]) == 1.0 and 0 < float(lo[0]) < 1


@pytest.mark.parametrize("delta", [0.0, -0.1, float("nan"), float("inf"), True, "0.05", None,
                                   torch.tensor([0.05, -1.0]), torch.tensor([1, 2])])
def test_bad_delta_raises(delta):
    with pytest.raises(ValueError, match="delta"):
        bandpo.band(GOOD, delta)


def test_delta_must_broadcast_to_logp():
    with pytest.raises(ValueError, match="broadcast"):
        bandpo.band(GOOD, torch.full((3,), 0.05))


def test_unknown_divergence_lists_known_ones():
    with pytest.raises(ValueError) as info:
        bandpo.band(GOOD, 0.05, "kullback")
    for name in NAMES:
        assert name in str(info.value)


def test_not_a_tensor_raises():
    with pytest.raises(ValueError, match="torch.Tensor"):
        bandpo.band([0.1, 0.2], 0.05)


def test_there_is_one_path():
    """band has no path switch: its result is a function of the input alone (tests/test_band_purity.py)."""
    with pytest.raises(TypeError, match="method"):
        bandpo.band(GOOD, 0.05, method="solver")
