"""bandpo_theory.sequence: the sequence-level band of GSPO's ratio is the image of the token bands; the band of a
whole sequence's probability is vacuous (sympy limits, then the numbers through mpmath)."""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp

from bandpo_theory import sequence as S


def test_geometric_mean_is_increasing_in_every_token_ratio():
    assert S.geometric_mean_is_increasing(3) and S.geometric_mean_is_increasing(5)


def test_kl_limits_of_the_whole_sequence_band():
    q, delta, R = sp.symbols("q delta R", positive=True)
    lim, q_max = S.kl_upper_limit()
    assert sp.simplify(lim + sp.log(1 - q)) == 0 and sp.simplify(q_max - (1 - sp.exp(-delta))) == 0
    assert sp.simplify(S.kl_lower_limit() - (R - 1 - sp.log(R))) == 0


def test_the_whole_sequence_band_tends_to_the_trivial_region():
    log_p = math.log(0.5)
    lower, upper = S.sequence_band_in_s(log_p, 1)  # L = 1: the token band (bandpo.band gives [0.6915, 1.3085])
    assert (lower, upper) == pytest.approx((0.69151567, 1.30848433), rel=1e-7)
    assert float(S.kl_g(mpmath.mpf(0.5), mpmath.mpf(upper))) == pytest.approx(0.05, rel=1e-12)
    assert float(S.kl_g(mpmath.mpf(0.5), mpmath.mpf(lower))) == pytest.approx(0.05, rel=1e-12)
    lo10, up10 = S.sequence_band_in_s(log_p, 10)
    lo1000, up1000 = S.sequence_band_in_s(log_p, 1000)
    assert float(upper) < up10 < up1000 < 2.0 and up1000 > 1.99  # -> 1/GM(p) = 2: only π(y) <= 1 is left
    assert lo1000 == 0.0 < lo10 < 0.01  # -> 0: no lower constraint
