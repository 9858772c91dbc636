"""The protocol's tests and intervals in bandpo.experiments.stats against hand-computed values (no scipy):
exact McNemar, Holm, exact sign-flip, Student t quantiles and intervals, BCa, restricted mean survival time."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from bandpo.experiments.stats import (
    bca_mean,
    bootstrap_mean,
    holm,
    mcnemar,
    paired_rmst,
    rmst,
    sign_flip,
    t_interval,
    t_quantile,
)

ISSUE_DIFFS = [0.006, -0.131, -0.016, -0.060, -0.196, 0.024, -0.151, -0.722]
"""Per-seed held-out BandPO-KL - clip of the main grid as quoted (rounded) in issue 21: sign-flip p = 0.047,
t interval [-0.358, +0.047]."""


def test_mcnemar_exact_binomial():
    # b = 8 pairs where only a had the event, c = 2 only b: p = 2 (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112/1024
    r = mcnemar([1] * 8 + [0] * 2 + [1] * 3 + [0] * 3, [0] * 8 + [1] * 2 + [1] * 3 + [0] * 3)
    assert (r.n, r.a_only, r.b_only) == (16, 8, 2) and r.p_value == 112 / 1024
    assert mcnemar([1] * 5, [0] * 5).p_value == 2 / 32  # all 5 discordant one way
    assert mcnemar([1] * 6, [0] * 6).p_value == 2 / 64
    assert mcnemar([1, 0], [0, 1]).p_value == 1.0  # symmetric: capped at 1
    assert mcnemar([1, 1, 0], [1, 1, 0]).p_value == 1.0  # no discordant pair
    swapped = mcnemar([0, 1, 0, 1], [1, 0, 0, 0])
    assert (swapped.a_only, swapped.b_only, swapped.p_value) == (2, 1, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        mcnemar([1, 0], [1])
    with pytest.raises(ValueError, match="outcomes 0 or 1"):
        mcnemar([1, math.nan], [1, 0])


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, 3 x 0.03, max(2 x 0.04, 0.09), max(0.5, 0.09)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5], abs=1e-15)
    assert holm([0.3, 0.3]) == [0.6, 0.6] and holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []
    with pytest.raises(ValueError, match=r"p-values in \[0, 1\]"):
        holm([0.1, 1.2])


def test_sign_flip_exact():
    # d = (1, 2, 3): sums of +-1 +-2 +-3 are 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 in 2 of 8
    assert sign_flip([1, 2, 3]).p_value == 0.25
    assert sign_flip([1, 2, 3], resolution=1.0).p_value == 0.25
    assert sign_flip([1.0] * 5).p_value == 2 / 32
    r = sign_flip(ISSUE_DIFFS)
    assert r.p_value == 6 / 128 and r.mean == pytest.approx(-0.15575, abs=1e-15)  # the issue's p = 0.047
    assert sign_flip(ISSUE_DIFFS, resolution=0.001).p_value == 6 / 128
    # the lattice convolution equals enumeration on integer data
    k = np.random.default_rng(1).integers(-9, 10, size=14)
    assert sign_flip(k, resolution=1.0).p_value == pytest.approx(sign_flip(k).p_value, rel=1e-12)
    assert sign_flip([0.0, 0.0]).p_value == 1.0


def test_sign_flip_large_n_needs_a_grid():
    d = np.arange(-40, 56) / 800  # 96 differences on the mean@8 grid of 100 prompts
    r = sign_flip(d, resolution=1 / 800)
    assert r.method == "lattice" and r.n == 96 and 0 < r.p_value < 1
    with pytest.raises(ValueError, match="needs resolution"):
        sign_flip(d)
    with pytest.raises(ValueError, match="not multiples"):
        sign_flip(d + 1e-4, resolution=1 / 800)


def test_t_quantile_closed_forms():
    for q in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-11)  # Cauchy
        assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-11)
        assert t_quantile(q, 1e7) == pytest.approx(statistics.NormalDist().inv_cdf(q), rel=1e-6)
        assert t_quantile(1 - q, 5) == -t_quantile(q, 5)
    assert t_quantile(0.975, 3) == pytest.approx(3.182446305284263, rel=1e-11)  # the classical table value
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_interval():
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert iv.estimate == 2.5 and iv.low == pytest.approx(2.5 - half, rel=1e-11)
    assert iv.high == pytest.approx(2.5 + half, rel=1e-11)
    iv = t_interval(ISSUE_DIFFS)
    assert (round(iv.low, 3), round(iv.high, 3)) == (-0.358, 0.047)  # the issue's interval
    assert math.isnan(t_interval([1.0]).low) and t_interval([]).n == 0


def test_bca_reduces_to_the_percentile_interval_without_bias_or_skew():
    x = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]  # symmetric about 0: z0 = 0 and a = 0
    assert bca_mean(x) == bootstrap_mean(x)
    skewed = [0.0] * 7 + [1.0] + [0.1, 0.2, 0.05, 0.3]
    b, p = bca_mean(skewed), bootstrap_mean(skewed)
    assert b.high > p.high and b.low > p.low  # right skew: BCa moves both ends up
    assert bca_mean([0.3] * 5).low == bca_mean([0.3] * 5).high


def test_rmst_kaplan_meier_by_hand():
    # S = 0.8 from t = 2, 0.6 from t = 4 (one censored at 4), 0.3 from t = 6; tau = 8:
    # RMST = 2 x 1 + 2 x 0.8 + 2 x 0.6 + 2 x 0.3 = 5.4; Var = 3.4² / (5 x 4) + 1.8² / (4 x 3) + 0.6² / (2 x 1) = 1.028
    iv = rmst([2, 4, 4, 6, 10], [1, 1, 0, 1, 0], tau=8)
    assert iv.estimate == pytest.approx(5.4, abs=1e-12)
    assert iv.high - iv.estimate == pytest.approx(1.959963984540054 * math.sqrt(1.028), rel=1e-12)
    # censored only at tau: the mean of min(T, tau)
    t, e = [3, 150, 40, 150, 7], [1, 0, 1, 0, 1]
    assert rmst(t, e, 150).estimate == pytest.approx(np.mean(np.minimum(t, 150)), abs=1e-12)
    with pytest.raises(ValueError):
        rmst([1, 2], [1, 2], 5)


def test_paired_rmst_is_the_difference_of_rmsts():
    ta, ea = [10, 150, 30, 150, 80, 5], [1, 0, 1, 0, 1, 1]
    tb, eb = [20, 60, 150, 150, 40, 5], [1, 1, 0, 0, 1, 1]
    iv, test = paired_rmst(ta, ea, tb, eb, tau=150)
    assert iv.estimate == pytest.approx(rmst(ta, ea, 150).estimate - rmst(tb, eb, 150).estimate, abs=1e-12)
    assert test.p_value == sign_flip(np.subtract(ta, tb)).p_value
    with pytest.raises(ValueError, match="censored before tau"):
        paired_rmst([10, 20], [1, 0], [5, 5], [1, 1], tau=150)
