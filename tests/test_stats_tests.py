"""The protocol's tests and intervals in bandpo.experiments.stats against hand-computed values (no scipy):
exact McNemar, Holm, Benjamini-Hochberg, exact and Monte-Carlo sign-flip (one test and a report's family), Student t
quantiles and intervals, BCa, restricted mean survival time."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from bandpo.experiments.stats import (
    bca_mean,
    benjamini_hochberg,
    bootstrap_mean,
    holm,
    mcnemar,
    paired_rmst,
    rmst,
    sign_flip,
    sign_flip_family,
    t_interval,
    t_quantile,
    value_grid,
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


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4 x 0.01 / 1 = 0.04, 4 x 0.03 / 2 = 0.06, 4 x 0.04 / 3 = 0.0533...,
    # 4 x 0.5 / 4 = 0.5; running minimum from the largest: 0.04, 0.0533, 0.0533, 0.5
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5], abs=1e-15)
    assert benjamini_hochberg([0.02, 0.02, 0.02]) == pytest.approx([0.02] * 3, abs=1e-15)  # ties: m p / m
    assert benjamini_hochberg([0.9, 0.6]) == [0.9, 0.9] and benjamini_hochberg([]) == []
    p = np.random.default_rng(0).uniform(size=30)
    assert (np.array(benjamini_hochberg(p)) <= np.array(holm(p)) + 1e-15).all()  # BH never stricter than Holm
    with pytest.raises(ValueError, match=r"benjamini_hochberg needs p-values in \[0, 1\]"):
        benjamini_hochberg([0.1, math.nan])


def test_value_grid():
    assert value_grid([3.0, -17.0, 0.0]) == 1.0 and value_grid([1.0, 0.0, -1.0]) == 1.0
    assert value_grid([0.6675 - 0.75625, 3 / 800, 0.5]) == 1 / 800  # held-out mean@8 over 100 prompts
    assert value_grid([0.25, -0.5]) == 0.25
    assert value_grid(np.random.default_rng(0).normal(size=5)) is None  # continuous
    assert value_grid([1 / 3, 1 / 7]) == 1 / 21


def test_sign_flip_monte_carlo():
    d = np.array([0.31, -0.02, 0.4, 0.17, -0.11, 0.26, 0.05, 0.33, -0.07, 0.21])
    exact = sign_flip(d).p_value
    mc = sign_flip(d, patterns=100_000, seed=3)
    assert mc.method == "monte-carlo" and mc == sign_flip(d, patterns=100_000, seed=3)
    se = math.sqrt(exact * (1 - exact) / 100_000)
    assert abs(mc.p_value - exact) < 5 * se  # exact = 0.0234
    assert sign_flip([0.0] * 30, patterns=1000).p_value == 1.0
    from bandpo.experiments.protocol import _mc_sign_flip

    assert sign_flip(d[:6], patterns=1_000_000).p_value == _mc_sign_flip(d[:6])  # the protocol's S4 test, same draws
    with pytest.raises(ValueError, match="not both"):
        sign_flip(d, resolution=0.01, patterns=10)
    with pytest.raises(ValueError, match="patterns must be an integer >= 1"):
        sign_flip(d, patterns=0)


def test_sign_flip_family_matches_the_single_tests():
    rng = np.random.default_rng(5)
    cells = [rng.normal(size=n) for n in (8, 8, 16, 3, 16, 1)] + [[0.0] * 8, [], [1, 0, 1, 1, -1, 1, 0, 1],
                                                                  ISSUE_DIFFS]
    out = sign_flip_family(cells)
    for d, r in zip(cells, out):
        if len(d):
            ref = sign_flip(d)
            assert (r.n, r.method) == (ref.n, "enumeration")
            assert r.p_value == ref.p_value and r.mean == pytest.approx(ref.mean, abs=1e-15)
    assert out[6].p_value == 1.0 and out[7].n == 0 and math.isnan(out[7].p_value)  # all-zero: 1; no pair: nan
    # a 0/1 outcome's difference: the exact sign-flip test is the exact McNemar test
    assert out[8].p_value == mcnemar([1, 0, 1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 1, 0, 0, 0]).p_value
    assert out[9].p_value == 6 / 128


def test_sign_flip_family_above_16_on_a_grid_or_by_monte_carlo():
    rng = np.random.default_rng(2)
    steps = rng.integers(-60, 61, size=40).astype(float)
    heldout = rng.integers(-200, 201, size=40) / 800
    drift = rng.normal(0.001, 0.01, size=40)
    lat_steps, lat_heldout, mc = sign_flip_family([steps, heldout, drift])
    assert (lat_steps.method, lat_heldout.method, mc.method) == ("lattice", "lattice", "monte-carlo")
    assert lat_steps.p_value == sign_flip(steps, resolution=1.0).p_value
    assert lat_heldout.p_value == pytest.approx(sign_flip(heldout, resolution=1 / 800).p_value, rel=1e-12)
    assert mc.p_value == sign_flip(drift, patterns=100_000, seed=0).p_value
    # a cell's p-value depends on its own values only, not on the other cells of the family
    assert sign_flip_family([drift])[0] == mc and sign_flip_family([steps, drift, drift])[2] == mc
