"""Paired statistics over seeds: differences against a baseline method, their 95 % intervals, exact tests and the
multiplicity of a report's tables.

    python -m bandpo.experiments.stats                                   # paper_figures/data/testbed/summary.csv
    python -m bandpo.experiments.stats some/summary.csv --metrics eval_mean collapsed --interval bca
    python -m bandpo.experiments.stats --markdown --grid rare            # a Markdown table
    python -m bandpo.experiments.stats --refresh docs/testbed-report.md  # refill a report's generated blocks

The experiments pair runs by seed (same warm start, same sampler seed; ``bandpo.experiments.testbed``), so a
comparison of method A with the baseline B is over the per-seed differences d_k = A_k - B_k of the seeds both
have. For a 0/1 statistic (``collapsed``, ``discovered``) the mean difference is the difference of the two rates.

**Intervals** (:func:`interval_of`, ``--interval``). Tables (:func:`markdown_table`, the report) give the mean
paired difference with a 95 % Student t interval (:func:`t_interval`; ``t_quantile`` computed here without scipy)
by default: at the committed n = 8 its simulated coverage is 0.914 / 0.934 / 0.950 for discovered / mean@8 /
discovery step against 0.914 / 0.906 / 0.864 for the percentile bootstrap (``bandpo.experiments.power``,
``docs/protocol-rare-tail.md``). ``--interval bca`` gives the bias-corrected and accelerated bootstrap
(:func:`bca_mean`), ``--interval percentile`` the percentile bootstrap (:func:`bootstrap_mean`: resample the n
differences with replacement, take the mean, read the 2.5 % and 97.5 % quantiles), which :func:`compare` and the
figures still use by default. A table says in its caption line which interval it shows; its baseline row holds
plain means.

**Censoring.** ``discovery_step`` counts a run that never discovers the tail as τ = ``max_steps`` (the last step,
:data:`CENSORED`). All censoring is at τ, so its mean is the restricted mean discovery time up to τ (:func:`rmst`)
and a paired difference is the difference of restricted means (:func:`paired_rmst`); tables head the column
"restricted mean discovery step (τ = 150)" and put a ``censored`` count (k/n runs of the row) beside it.

**Multiplicity.** Every difference cell of a report is one exploratory test. A report's ``<!-- family -->`` block
(:func:`family_block`, filled by :func:`render_report`) lists the whole family: each cell's two-sided sign-flip test
of its paired differences (:func:`sign_flip_family`: exact enumeration of the 2^n sign patterns up to n = 16,
vectorised over the cells; above, exact on the values' grid, else 10^5 seeded Monte-Carlo patterns), Holm's
family-wise adjusted p (:func:`holm`) and the Benjamini-Hochberg q (:func:`benjamini_hochberg`) over all cells, the
cells with unadjusted p < 0.05, and the line "m tests; k survive Holm at 0.05".

The tests of the pre-registered protocol (``docs/protocol-rare-tail.md``) are pure functions checked against
hand-computed values (``tests/test_stats_tests.py``): :func:`mcnemar` (exact, paired binary), :func:`holm`,
:func:`benjamini_hochberg`, :func:`sign_flip` (exact paired randomisation test of a mean difference, or seeded
Monte-Carlo), :func:`rmst` / :func:`paired_rmst` (restricted mean time to an event under censoring), and the
intervals :func:`t_interval` and :func:`bca_mean`.

Everything is deterministic: the bootstrap resamples and Monte-Carlo sign patterns come from NumPy generators seeded
by ``seed`` (default 0), so the same numbers always give the same interval and p-value. Bootstrap resamples are
drawn in antithetic pairs: the differences are sorted, and each resample of indices i_1..i_n is paired with its
mirror n-1-i_1..n-1-i_n (itself a uniform resample, so the bootstrap distribution is unchanged); this halves the
Monte-Carlo noise for near-symmetric data and makes the interval of data symmetric about c exactly symmetric about c.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..cli import ArgumentParser
from .identity import render_identity

__all__ = ["CENSORED", "INTERVALS", "Interval", "MC_PATTERNS", "McNemar", "RESAMPLES", "SignFlip", "baseline_of",
           "bca_mean", "benjamini_hochberg", "bootstrap_mean", "candidates", "compare", "family_block", "holm",
           "interval_of", "markdown_table", "mcnemar", "paired_differences", "paired_rmst", "render_report", "rmst",
           "select_rows", "seed_mean", "sign_flip", "sign_flip_family", "t_interval", "t_quantile", "table_cells",
           "value_grid"]

RESAMPLES = 10_000
"""Bootstrap resamples per interval (5 000 antithetic pairs)."""
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its interval (t, BCa or percentile bootstrap: the function that made it says which)."""

    estimate: float
    """Mean of the values (nan without values)."""
    low: float
    """Lower end (for the percentile bootstrap the (1 - level)/2 quantile of the bootstrap means; nan with fewer
    than 2 values)."""
    high: float
    """Upper end (percentile bootstrap: the (1 + level)/2 quantile; nan with fewer than 2 values)."""
    n: int
    """Number of values (seeds, for a paired difference)."""

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (strictly)."""
        return bool(self.low > 0 or self.high < 0)


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Mean of ``values`` and its percentile bootstrap interval at ``level`` (``resamples`` resamples of size n).

    NaN values are dropped first. With no value everything is nan; with one value the estimate is that value and the
    interval is nan (one seed says nothing about the spread). Constant values give a zero-width interval.

    Raises ValueError unless ``resamples`` is an even number >= 2 and ``0 < level < 1``.
    """
    if not (isinstance(resamples, (int, np.integer)) and resamples >= 2 and resamples % 2 == 0):
        raise ValueError(f"resamples must be an even integer >= 2 (antithetic pairs), got {resamples!r}")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    x = np.asarray(values, dtype=float).ravel()
    x = np.sort(x[np.isfinite(x)])
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    estimate = float(x.mean())
    if n == 1:
        return Interval(estimate, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples // 2, n))
    means = np.concatenate([x[idx].mean(axis=1), x[n - 1 - idx].mean(axis=1)])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), n)


# ----------------------------------------------------------------------------------------------------------------
# Tests and intervals of the pre-registered protocol (docs/protocol-rare-tail.md)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of paired binary outcomes."""

    n: int
    """Pairs."""
    a_only: int
    """Pairs where only the first arm had the event (b of the 2x2 table)."""
    b_only: int
    """Pairs where only the second arm had it (c)."""
    p_value: float
    """Two-sided exact p-value: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1 (1 without discordant pairs)."""


def mcnemar(a: Sequence[float], b: Sequence[float]) -> McNemar:
    """Exact two-sided McNemar test of paired 0/1 outcomes ``a[i]``, ``b[i]`` (pair i: the same seed).

    Under H0 (the two arms have the event equally often) each discordant pair is a fair coin, so with b pairs where
    only ``a`` had it and c where only ``b`` had it, p = min(1, 2 sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)),
    computed in exact integer arithmetic. Raises ValueError for unequal lengths or values other than 0 and 1.
    """
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"mcnemar needs paired outcomes of equal length, got {x.size} and {y.size}")
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("mcnemar needs outcomes 0 or 1 (a nan or another value is not a paired binary outcome)")
    n10, n01 = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    m = n10 + n01
    tail = sum(math.comb(m, k) for k in range(min(n10, n01) + 1))
    return McNemar(int(x.size), n10, n01, min(1.0, 2 * tail / 2 ** m) if m else 1.0)


def holm(p_values: Sequence[float]) -> list:
    """Holm's step-down adjusted p-values, in the input order: with p_(1) <= ... <= p_(m),
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). Reject H_i at level α iff adj_i <= α (family-wise error <= α
    under any dependence). Raises ValueError for a p-value outside [0, 1] or nan."""
    p = _check_p(p_values, "holm")
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order: with p_(1) <= ... <= p_(m),
    q_(i) = min_{j >= i} min(1, m p_(j) / j). Rejecting every H_i with q_i <= α controls the false discovery rate
    at α for independent or positively dependent tests. Raises ValueError for a p-value outside [0, 1] or nan."""
    p = _check_p(p_values, "benjamini_hochberg")
    m = p.size
    order = np.argsort(p, kind="stable")
    q = np.minimum(1.0, np.minimum.accumulate((m * p[order] / np.arange(1, m + 1))[::-1])[::-1])
    out = np.empty(m)
    out[order] = q
    return out.tolist()


def _check_p(p_values: Sequence[float], name: str) -> np.ndarray:
    p = np.asarray(p_values, dtype=float).ravel()
    if p.size and not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError(f"{name} needs p-values in [0, 1], got {p.tolist()}")
    return p


@dataclass(frozen=True)
class SignFlip:
    """The sign-flip (paired randomisation) test of a mean difference."""

    n: int
    """Paired differences (nan dropped)."""
    mean: float
    """Their mean."""
    p_value: float
    """Two-sided: the fraction of the 2^n sign patterns whose |mean| is at least the observed |mean| (for
    'monte-carlo': (1 + hits) / (1 + patterns) over the random patterns drawn)."""
    method: str
    """'enumeration' (all 2^n patterns), 'lattice' (exact distribution of the sum on the grid ``resolution``) or
    'monte-carlo' (seeded random sign patterns: an unbiased, valid approximation)."""


ENUMERATION_MAX = 20
"""Largest n whose 2^n sign patterns :func:`sign_flip` enumerates; above it the values must lie on a grid."""
MC_PATTERNS = 100_000
"""Random sign patterns of a Monte-Carlo sign-flip test in a report's family (:func:`sign_flip_family`)."""
_CHUNK = 1 << 14
"""Sign patterns per block of a vectorised enumeration or Monte-Carlo draw (bounds the memory to ~MBs)."""


def _enumerated_p(d: np.ndarray) -> np.ndarray:
    """Exact two-sided sign-flip p-values of the rows of ``d`` (shape [cells, n], n <= ENUMERATION_MAX): for each
    row the share of the 2^n patterns s with |s · d| >= |sum d| (1e-12 relative slack, so that sums equal in exact
    arithmetic but not in float64 count as ties). Vectorised: one matrix product per block of patterns."""
    cells, n = d.shape
    observed = np.abs(d.sum(axis=1))
    floor = observed - 1e-12 * np.maximum(1.0, observed)
    hits = np.zeros(cells, dtype=np.int64)
    for start in range(0, 2 ** n, _CHUNK):
        codes = np.arange(start, min(start + _CHUNK, 2 ** n))
        signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(n)) & 1)
        hits += (np.abs(signs @ d.T) >= floor).sum(axis=0)
    return hits / 2 ** n


def sign_flip(diffs: Sequence[float], resolution: Optional[float] = None, *, patterns: Optional[int] = None,
              seed: int = 0) -> SignFlip:
    """Two-sided sign-flip test of H0: the paired differences are symmetric about 0.

    Under H0 every sign pattern s in {-1, +1}^n is equally likely, so p = #{s : |sum s_i d_i| >= |sum d_i|} / 2^n.
    With n <= :data:`ENUMERATION_MAX` all patterns are enumerated. Larger n need ``resolution``: every difference
    must be an integer multiple k_i of it (held-out mean@8 over 100 prompts: 1/800; discovery steps: 1), and the
    distribution of sum s_i k_i is built exactly by convolution, one difference at a time (probabilities in float64:
    exact up to rounding, ~1e-15). A difference off the grid by more than 1e-9 of the resolution is a ValueError.
    Or ``patterns``: a Monte-Carlo test with that many random sign patterns drawn from a NumPy generator seeded by
    ``seed`` (in blocks of 100 000), p = (1 + hits) / (1 + patterns), valid at any n whatever the values.
    For 0/1 outcomes (differences in {-1, 0, 1}) the exact test is the exact McNemar test (:func:`mcnemar`).
    """
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = d.size
    if patterns is not None:
        if resolution is not None:
            raise ValueError("sign_flip takes resolution= (exact) or patterns= (Monte-Carlo), not both")
        if not (isinstance(patterns, (int, np.integer)) and patterns >= 1):
            raise ValueError(f"patterns must be an integer >= 1, got {patterns!r}")
    if n == 0:
        return SignFlip(0, math.nan, math.nan, "enumeration")
    mean = float(d.mean())
    if patterns is not None:
        rng = np.random.default_rng(seed)
        observed = abs(d.sum())
        hits, done = 0, 0
        while done < patterns:
            k = min(100_000, patterns - done)
            signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
            hits += int((np.abs(signs @ d) >= observed - 1e-12 * max(1.0, observed)).sum())
            done += k
        return SignFlip(n, mean, (hits + 1) / (patterns + 1), "monte-carlo")
    if resolution is None:
        if n > ENUMERATION_MAX:
            raise ValueError(f"sign_flip of n = {n} > {ENUMERATION_MAX} differences needs resolution= (the grid the "
                             "values lie on, e.g. 1/800 for mean@8 over 100 prompts) or patterns= (Monte-Carlo)")
        return SignFlip(n, mean, float(_enumerated_p(d[None, :])[0]), "enumeration")
    if not (math.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a finite number > 0, got {resolution!r}")
    k = np.rint(d / resolution)
    if np.abs(k * resolution - d).max() > 1e-9 * resolution:
        raise ValueError(f"the differences are not multiples of resolution {resolution!r}")
    k = np.abs(k).astype(np.int64)
    total = int(k.sum())
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for ki in k:
        if ki:
            dist = 0.5 * (np.roll(dist, ki) + np.roll(dist, -ki))
    observed = abs(int(np.rint(d / resolution).sum()))
    support = np.arange(-total, total + 1)
    return SignFlip(n, mean, float(min(1.0, dist[np.abs(support) >= observed].sum())), "lattice")


FAMILY_ENUMERATION_MAX = 16
"""Largest n whose 2^n sign patterns :func:`sign_flip_family` enumerates (vectorised over the cells)."""
GRID_MAX_DENOMINATOR = 10_000
"""Finest grid 1/L that :func:`value_grid` recognises."""
LATTICE_MAX = 2_000_000
"""Largest sum of |d_i| / resolution that :func:`sign_flip_family` convolves exactly; above it, Monte-Carlo."""


def value_grid(values: Sequence[float], max_denominator: int = GRID_MAX_DENOMINATOR) -> Optional[float]:
    """The coarsest grid 1/L (L <= ``max_denominator``) that every finite value lies on to 1e-9 of a grid step, or
    None: each value is read as its nearest fraction p/q with q <= ``max_denominator`` and L is the lcm of the q.
    Steps and 0/1 rates give 1; held-out mean@8 over 100 prompts 1/800 (or a coarser 1/L with L dividing 800);
    continuous values (entropies, probabilities) give None."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    lcm = 1
    for v in x:
        q = Fraction(float(v)).limit_denominator(max_denominator).denominator
        lcm = lcm * q // math.gcd(lcm, q)
        if lcm > max_denominator:
            return None
    step = 1.0 / lcm
    if x.size and np.abs(np.rint(x / step) * step - x).max() > 1e-9 * step:
        return None
    return step


def sign_flip_family(diffs: Sequence[Sequence[float]], *, patterns: int = MC_PATTERNS, seed: int = 0) -> list:
    """:func:`sign_flip` of every sequence of paired differences in ``diffs`` (one test per cell of a family), in
    order. n <= :data:`FAMILY_ENUMERATION_MAX`: exact enumeration of the 2^n patterns, vectorised over all cells of
    one n (one matrix product per block of patterns); larger n: exact on the values' grid (:func:`value_grid`,
    ``method`` 'lattice') when there is one and the convolution is at most :data:`LATTICE_MAX` wide, else
    Monte-Carlo with ``patterns`` random sign patterns from a generator seeded by ``seed`` (the same for every
    cell, so a cell's p-value depends on its own values only). A cell without values gets nan."""
    out: list = [None] * len(diffs)
    by_n: dict = {}
    for i, values in enumerate(diffs):
        d = np.asarray(values, dtype=float).ravel()
        d = d[np.isfinite(d)]
        if d.size == 0:
            out[i] = SignFlip(0, math.nan, math.nan, "enumeration")
        elif d.size <= FAMILY_ENUMERATION_MAX:
            by_n.setdefault(d.size, []).append((i, d))
        else:
            step = value_grid(d)
            if step is not None and np.abs(np.rint(d / step)).sum() <= LATTICE_MAX:
                out[i] = sign_flip(d, resolution=step)
            else:
                out[i] = sign_flip(d, patterns=patterns, seed=seed)
    for n, cells in sorted(by_n.items()):
        p = _enumerated_p(np.stack([d for _, d in cells]))
        for (i, d), pi in zip(cells, p):
            out[i] = SignFlip(n, float(d.mean()), float(pi), "enumeration")
    return out


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` > 0 degrees of freedom (no scipy): the CDF through the regularised
    incomplete beta function, F(t) = 1 - I_{df/(df + t²)}(df/2, 1/2)/2 for t >= 0, inverted by bisection to 1e-13."""
    if not (0 < q < 1) or not (df > 0):
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q!r}, df={df!r}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    if q == 0.5:
        return 0.0

    def cdf(t: float) -> float:
        return 1 - 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz), using the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * f / a


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of ``values`` (nan dropped) with the Student t interval mean ± t_{(1+level)/2, n-1} s/√n (s with
    n - 1). Fewer than 2 values: nan ends. Its coverage at the protocol's n is checked by simulation
    (``bandpo.experiments.power``)."""
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if n == 1:
        return Interval(m, math.nan, math.nan, 1)
    half = t_quantile((1 + level) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def bca_mean(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean of ``values`` with the bias-corrected and accelerated (BCa) bootstrap interval (Efron 1987): the
    percentile interval's ends moved to the quantiles Φ(z0 + (z0 + z)/(1 - a(z0 + z))) of the bootstrap means, z0 =
    Φ⁻¹(share of bootstrap means below the mean), a = Σ(θ̄ - θ_i)³ / (6 (Σ(θ̄ - θ_i)²)^1.5) over the jackknife
    means θ_i. Same resamples as :func:`bootstrap_mean` (seeded, antithetic pairs). Constant values: a zero-width
    interval; fewer than 2 values: nan ends."""
    base = bootstrap_mean(values, resamples=resamples, level=level, seed=seed)
    x = np.asarray(values, dtype=float).ravel()
    x = np.sort(x[np.isfinite(x)])
    n = x.size
    if n < 2 or base.low == base.high:
        return base
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples // 2, n))
    means = np.concatenate([x[idx].mean(axis=1), x[n - 1 - idx].mean(axis=1)])
    est = float(x.mean())
    below = (np.sum(means < est) + 0.5 * np.sum(means == est)) / means.size
    nd = statistics.NormalDist()
    z0 = nd.inv_cdf(min(max(below, 1 / means.size), 1 - 1 / means.size))
    jack = (x.sum() - x) / (n - 1)
    u = jack.mean() - jack
    denom = 6 * float((u ** 2).sum()) ** 1.5
    a = float((u ** 3).sum()) / denom if denom > 0 else 0.0
    ends = []
    for z in (nd.inv_cdf((1 - level) / 2), nd.inv_cdf((1 + level) / 2)):
        ends.append(nd.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    low, high = np.quantile(means, ends)
    return Interval(est, float(low), float(high), n)


def rmst(times: Sequence[float], events: Sequence[float], tau: float) -> Interval:
    """Restricted mean time to the event up to ``tau``, ∫_0^tau S(t) dt, with S the Kaplan-Meier estimate from
    ``times`` (event or censoring time of each unit) and ``events`` (1: the event happened at that time, 0: censored
    then); with a 95 % normal interval from the Greenwood-type variance
    Σ_{t_j < tau} A_j² d_j / (n_j (n_j - d_j)), A_j = ∫_{t_j}^tau S(t) dt (d_j events among n_j at risk at t_j).

    When no unit is censored before ``tau`` this is the mean of min(T_i, tau), a censored unit counting as ``tau``
    (the testbed's ``discovery_step``, censored at the last step). ValueError for unequal lengths, events other than
    0/1, negative times or tau <= 0."""
    t, e = np.asarray(times, dtype=float).ravel(), np.asarray(events, dtype=float).ravel()
    if t.shape != e.shape or not np.isin(e, (0.0, 1.0)).all() or (t < 0).any() or not tau > 0:
        raise ValueError("rmst needs equal-length times >= 0 and events 0/1, and tau > 0")
    n = t.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    grid = np.unique(t[(e == 1) & (t < tau)])
    surv, s = [], 1.0
    risk, deaths = [], []
    for tj in grid:
        nj = int((t >= tj).sum())
        dj = int(((t == tj) & (e == 1)).sum())
        s *= 1 - dj / nj
        surv.append(s)
        risk.append(nj)
        deaths.append(dj)
    knots = np.concatenate([[0.0], grid, [tau]])
    levels = np.concatenate([[1.0], surv])
    area = float((levels * np.diff(knots)).sum())
    var = 0.0
    for j in range(grid.size):
        a_j = float((levels[j + 1:] * np.diff(knots[j + 1:])).sum())  # ∫_{t_j}^tau S
        if risk[j] > deaths[j]:
            var += a_j ** 2 * deaths[j] / (risk[j] * (risk[j] - deaths[j]))
    half = 1.959963984540054 * math.sqrt(var)
    return Interval(area, area - half, area + half, n)


def paired_rmst(times_a: Sequence[float], events_a: Sequence[float], times_b: Sequence[float],
                events_b: Sequence[float], tau: float) -> "tuple[Interval, SignFlip]":
    """Paired difference of restricted mean times (a - b) up to ``tau`` with its t interval and the exact
    sign-flip test of the per-pair differences of min(T, tau), for data censored only at or after ``tau``
    (then rmst(a) - rmst(b) is exactly the mean of those differences). Times must be integers (RL steps).
    ValueError when a unit is censored before ``tau`` (a pair's difference would be unknown)."""
    ta, ea, tb, eb = (np.asarray(v, dtype=float).ravel() for v in (times_a, events_a, times_b, events_b))
    if not (ta.shape == ea.shape == tb.shape == eb.shape):
        raise ValueError("paired_rmst needs four sequences of equal length (one entry per pair)")
    for t, e in ((ta, ea), (tb, eb)):
        if ((e == 0) & (t < tau)).any():
            raise ValueError(f"paired_rmst: a unit is censored before tau = {tau}; its paired difference is unknown")
    d = np.minimum(ta, tau) - np.minimum(tb, tau)
    return t_interval(d), sign_flip(d, resolution=1.0)


def select_rows(rows: Sequence[Mapping], spec: Mapping) -> list:
    """The rows whose values match every item of ``spec`` (e.g. ``{"method": "clip", "setting": "default"}``)."""
    return [r for r in rows if all(r.get(k) == v for k, v in spec.items())]


def _by_seed(rows: Sequence[Mapping], spec: Mapping, metric: str) -> dict:
    chosen = select_rows(rows, spec)
    out: dict = {}
    for r in chosen:
        if metric not in r:
            raise ValueError(f"no column {metric!r} in the rows; columns: {sorted(r)}")
        seed = int(r["seed"])
        if seed in out:
            raise ValueError(f"two rows for seed {seed} match {dict(spec)}: add a key (e.g. 'grid' or 'setting')")
        out[seed] = float(r[metric])
    return out


def paired_differences(rows: Sequence[Mapping], metric: str, candidate: Mapping,
                       baseline: Optional[Mapping] = None) -> dict:
    """{seed: candidate - baseline} of ``metric`` over the seeds where both have a finite value.

    ``rows`` are summary.csv rows (with ``seed`` and ``metric``); ``candidate`` and ``baseline`` select rows by
    their values (default baseline: ``{"method": "clip", "setting": "default"}``). Raises ValueError when a
    selection holds two rows of one seed or the metric is not a column.
    """
    baseline = {"method": "clip", "setting": "default"} if baseline is None else baseline
    a, b = _by_seed(rows, candidate, metric), _by_seed(rows, baseline, metric)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])}


INTERVALS = {"t": "Student t interval", "bca": "BCa bootstrap interval", "percentile": "percentile bootstrap interval"}
"""The intervals a table can give (``--interval``), with the words its caption uses."""


def interval_of(values: Sequence[float], interval: str = "t", **kw) -> Interval:
    """The mean of ``values`` with its 95 % (``level``) interval: ``'t'`` (:func:`t_interval`; of ``kw`` it reads
    ``level`` only, the bootstrap's ``resamples`` and ``seed`` do not apply), ``'bca'`` (:func:`bca_mean`) or
    ``'percentile'`` (:func:`bootstrap_mean`). ValueError for another ``interval``, naming the allowed ones."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    if interval == "t":
        return t_interval(values, kw.get("level", LEVEL))
    return (bca_mean if interval == "bca" else bootstrap_mean)(values, **kw)


def seed_mean(rows: Sequence[Mapping], metric: str, spec: Mapping, interval: str = "percentile", **kw) -> Interval:
    """Mean over seeds of ``metric`` for the rows matching ``spec``, with its ``interval`` (:func:`interval_of`;
    ``kw``: its options)."""
    return interval_of(list(_by_seed(rows, spec, metric).values()), interval, **kw)


def compare(rows: Sequence[Mapping], metrics: Sequence[str], candidates: Sequence[Mapping],
            baseline: Optional[Mapping] = None, interval: str = "percentile", **kw) -> list:
    """One dict per (candidate, metric): the candidate's selection, ``metric``, ``n`` (paired seeds), ``diff`` (mean
    paired difference candidate - baseline), ``low``/``high`` (its ``interval``, :func:`interval_of`; the figures'
    default is the percentile bootstrap), and the two means over the paired seeds (``candidate_mean``,
    ``baseline_mean``). ``kw``: those of :func:`interval_of`."""
    baseline = {"method": "clip", "setting": "default"} if baseline is None else baseline
    out = []
    for cand in candidates:
        for metric in metrics:
            d = paired_differences(rows, metric, cand, baseline)
            a, b = _by_seed(rows, cand, metric), _by_seed(rows, baseline, metric)
            iv = interval_of(list(d.values()), interval, **kw)
            out.append({**cand, "metric": metric, "n": iv.n, "diff": iv.estimate, "low": iv.low, "high": iv.high,
                        "candidate_mean": float(np.mean([a[s] for s in d])) if d else math.nan,
                        "baseline_mean": float(np.mean([b[s] for s in d])) if d else math.nan})
    return out


def baseline_of(candidate: Mapping, method: str = "clip", same_setting: bool = False) -> dict:
    """The baseline a testbed candidate pairs with: ``method`` at the same starting policy. Runs whose setting
    changes the task (``tail=<freq>``, the ``rare`` grid) start from their own warm-start and pair with the baseline
    of that setting; every other setting (δ, lr, the default) pairs with the baseline's ``default`` runs, or, with
    ``same_setting``, with the baseline's runs of the same setting (e.g. both at 0.25 x the learning rate)."""
    setting = str(candidate.get("setting", "default"))
    keep = same_setting or setting.startswith(("tail=", "middle="))
    return {"method": method, "setting": setting if keep else "default"}


def _fmt(metric: str, x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}" if metric.endswith("_step") else f"{x:+.3f}"


def candidates(rows: Sequence[Mapping], baseline: str = "clip", same_setting: bool = False) -> list:
    """Every (method, setting) of ``rows``, in order of appearance, as selections ``{"method", "setting"}``, except
    the baseline's own runs (those :func:`baseline_of` would pair a candidate with)."""
    pairs = dict.fromkeys((r["method"], r["setting"]) for r in rows)
    out = [{"method": m, "setting": st} for m, st in pairs]
    return [c for c in out if not (c["method"] == baseline and baseline_of(c, baseline, same_setting) == c)]


CENSORED = {"discovery_step": ("discovered", "discovery step")}
"""Metrics censored at the run's last step τ (``max_steps``): metric -> (its event column: 1 when the event happened,
0 when the run was censored and the metric counts as τ; the metric's name in a header). All censoring is at τ, so
the mean of such a metric is the restricted mean time to the event up to τ (:func:`rmst`) and a paired difference
of means is the difference of restricted means (:func:`paired_rmst`); a table says so in its header and shows a
``censored`` column beside it."""


def _chosen(rows: Sequence[Mapping], grids: Optional[Sequence[str]], methods: Optional[Sequence[str]]) -> list:
    return [r for r in rows if (grids is None or r.get("grid") in grids) and (methods is None or r["method"] in methods)]


def table_cells(rows: Sequence[Mapping], metrics: Sequence[str], grids: Optional[Sequence[str]] = None,
                baseline: str = "clip", methods: Optional[Sequence[str]] = None, same_setting: bool = False) -> list:
    """The difference cells of :func:`markdown_table` in its order: one dict per (candidate, metric) with the
    candidate's ``method`` and ``setting``, the ``baseline`` selection it pairs with (:func:`baseline_of`),
    ``metric`` and ``diffs`` ({seed: candidate - baseline}, :func:`paired_differences`)."""
    chosen = _chosen(rows, grids, methods)
    out = []
    for c in candidates(chosen, baseline, same_setting):
        base = baseline_of(c, baseline, same_setting)
        out += [{**c, "baseline": base, "metric": m, "diffs": paired_differences(rows, m, c, base)} for m in metrics]
    return out


def _tau(rows: Sequence[Mapping], specs: Sequence[Mapping]) -> Optional[float]:
    """The one ``max_steps`` of the rows selected by ``specs`` (None without that column); ValueError for several."""
    taus = {float(r["max_steps"]) for s in specs for r in select_rows(rows, s) if "max_steps" in r}
    if len(taus) > 1:
        raise ValueError(f"runs of different lengths (max_steps {sorted(taus)}) in one table: a restricted mean needs "
                         "one τ; select runs of one length (--grid, --methods)")
    return taus.pop() if taus else None


def _censored(rows: Sequence[Mapping], spec: Mapping, event: str, seeds) -> str:
    happened = _by_seed(rows, spec, event)
    return f"{sum(happened.get(s) == 0 for s in seeds)}/{len(seeds)}"


def markdown_table(rows: Sequence[Mapping], metrics: Sequence[str], grids: Optional[Sequence[str]] = None,
                   baseline: str = "clip", methods: Optional[Sequence[str]] = None, same_setting: bool = False,
                   interval: str = "t", **kw) -> str:
    """A Markdown table of paired differences against ``baseline`` (:func:`baseline_of` picks its runs) for every
    (method, setting) of ``grids`` (all if None; only ``methods`` if given) but the baseline's own
    (``same_setting``: against the baseline at the same setting, see :func:`baseline_of`), after a caption line
    saying what the numbers are: a first row per baseline with its plain means over seeds, then one row per
    candidate, one column per metric, ``diff [low, high]`` with the 95 % ``interval`` of the mean paired
    difference (:func:`interval_of`: ``'t'``, ``'bca'`` or ``'percentile'``). A metric of :data:`CENSORED` is
    headed "restricted mean ... (τ = max_steps)" and followed by a ``censored`` column (k/n runs of the row that
    never had the event; for a candidate, over its paired seeds). The report in ``docs/testbed-report.md`` embeds
    these tables and a test checks that they match the committed data. ``kw``: those of :func:`interval_of`."""
    return _table(rows, metrics, grids, baseline, methods, same_setting, interval, **kw)[0]


def _table(rows: Sequence[Mapping], metrics: Sequence[str], grids: Optional[Sequence[str]], baseline: str,
           methods: Optional[Sequence[str]], same_setting: bool, interval: str, **kw) -> tuple:
    """(:func:`markdown_table`'s text, its :func:`table_cells`)."""
    cells = table_cells(rows, metrics, grids, baseline, methods, same_setting)
    chosen = _chosen(rows, grids, methods)
    cands = list(dict.fromkeys((c["method"], c["setting"]) for c in cells))
    base_specs = [dict(b) for b in dict.fromkeys(tuple(sorted(c["baseline"].items())) for c in cells)]
    specs = base_specs + [{"method": m, "setting": s} for m, s in cands]
    censored = {m: CENSORED[m][0] for m in metrics
                if m in CENSORED and chosen and all(CENSORED[m][0] in r for r in chosen)}
    tau = _tau(rows, specs) if censored else None
    head = []
    for m in metrics:
        if m in censored:
            end = "last step" if tau is None else f"{tau:g}"
            head += [f"restricted mean {CENSORED[m][1]} (τ = {end})", "censored"]
        else:
            head.append(m)
    lines = ["| method | setting | n | " + " | ".join(head) + " |", "|" + "---|" * (3 + len(head))]
    for spec in base_specs:
        row, n = [], None
        for m in metrics:
            values = {s: v for s, v in _by_seed(rows, spec, m).items() if math.isfinite(v)}
            n = len(values) if n is None else n
            row.append(_fmt(m, float(np.mean(list(values.values()))) if values else math.nan).lstrip("+"))
            if m in censored:
                row.append(_censored(rows, spec, censored[m], values))
        lines.append(f"| {baseline} (mean) | {spec['setting']} | {n} | " + " | ".join(row) + " |")
    for method, setting in cands:
        mine = [c for c in cells if (c["method"], c["setting"]) == (method, setting)]
        row = []
        for c in mine:
            iv = interval_of(list(c["diffs"].values()), interval, **kw)
            row.append(f"{_fmt(c['metric'], iv.estimate)} [{_fmt(c['metric'], iv.low)}, {_fmt(c['metric'], iv.high)}]")
            if c["metric"] in censored:
                row.append(_censored(rows, {"method": method, "setting": setting}, censored[c["metric"]], c["diffs"]))
        lines.append(f"| {method} | {setting} | {len(mine[0]['diffs'])} | " + " | ".join(row) + " |")
    caption = _caption(baseline, interval, kw, {m: CENSORED[m][1] for m in censored}, tau)
    return caption + "\n\n" + "\n".join(lines), cells


def _caption(baseline: str, interval: str, kw: Mapping, censored: Mapping, tau: Optional[float]) -> str:
    level = kw.get("level", LEVEL)
    how = INTERVALS[interval] + ("" if interval == "t" else f", {kw.get('resamples', RESAMPLES):,} resamples")
    text = (f"*{baseline} (mean): plain mean over seeds; other rows: mean over seeds of the paired difference row "
            f"minus {baseline} (same seed) [{100 * level:g} % {how}], unadjusted (exploratory).")
    for label in censored.values():
        end = "its last step" if tau is None else f"{tau:g}"
        text += (f" Restricted mean {label}: mean of min({label}, τ = {end}), a run without the event counting as "
                 f"{end} (censored); `censored`: the row's runs censored (a difference row: the candidate's).")
    return text + "*"


FAMILY_ALPHA = 0.05
"""Level of the family block's summary (Holm and Benjamini-Hochberg) and threshold of the cells it lists."""


def _fmt_p(p: float) -> str:
    return f"{p:.3g}"


def family_block(cells: Sequence[Mapping], alpha: float = FAMILY_ALPHA, *, patterns: int = MC_PATTERNS,
                 seed: int = 0) -> str:
    """The multiplicity block of a report: every difference cell of its tables (``cells`` as :func:`table_cells`
    gives them; a cell repeated in two tables counted once; cells without paired seeds left out) is one exploratory
    test, the two-sided sign-flip test of its paired differences (:func:`sign_flip_family`: exact for the n here),
    adjusted over the whole family by :func:`holm` and :func:`benjamini_hochberg`. The block is a caption, a table of
    the cells with unadjusted p < ``alpha`` (smallest first, ties in report order) and the summary line "m tests; k
    survive Holm at α ...". Deterministic (Monte-Carlo cells, n > 16 off any grid, use ``seed``)."""
    unique: dict = {}
    for c in cells:
        unique.setdefault((c["method"], c["setting"], tuple(sorted(c["baseline"].items())), c["metric"]), c)
    tests = [c for c in unique.values() if c["diffs"]]
    results = sign_flip_family([list(c["diffs"].values()) for c in tests], patterns=patterns, seed=seed)
    p = [r.p_value for r in results]
    adj, q = holm(p), benjamini_hochberg(p)
    m = len(tests)
    kinds = {k: sum(r.method == k for r in results) for k in ("enumeration", "lattice", "monte-carlo")}
    how = [f"{what} for {kinds[k]}" for k, what in (
        ("enumeration", "all 2^n sign patterns"), ("lattice", "the exact distribution on the values' grid (n > 16)"),
        ("monte-carlo", f"{patterns:,} random sign patterns, seed {seed}, p = (1 + hits) / (1 + {patterns:,})"))
           if kinds[k]]
    floors = ", ".join(f"n = {n}: {_fmt_p(2.0 ** (1 - n))}" for n in sorted({r.n for r in results}))
    text = [f"*Multiplicity: each of the m = {m} difference cells of this page's tables (a repeated cell counted "
            f"once) is one exploratory test, the two-sided sign-flip test of its paired per-seed differences "
            f"({'; '.join(how) or 'none'}; for a 0/1 outcome it is the exact McNemar test), adjusted over all m: "
            f"Holm's family-wise p and the Benjamini-Hochberg q. Smallest attainable unadjusted p, 2/2^n: "
            f"{floors or 'n/a'}. Listed: the cells with unadjusted p < {alpha:g}, smallest p first.*", ""]
    listed = sorted((i for i in range(m) if p[i] < alpha), key=lambda i: (p[i], i))
    if listed:
        text += ["| method | setting | vs | metric | n | diff | p | Holm p | BH q |", "|" + "---|" * 9]
        for i in listed:
            c, r = tests[i], results[i]
            text.append(f"| {c['method']} | {c['setting']} | {c['baseline']['method']} {c['baseline']['setting']} | "
                        f"{c['metric']} | {r.n} | {_fmt(c['metric'], r.mean)} | {_fmt_p(p[i])} | {_fmt_p(adj[i])} | "
                        f"{_fmt_p(q[i])} |")
        text.append("")

    def names(ok: list) -> str:
        return (": " + "; ".join(f"{tests[i]['method']} {tests[i]['setting']} {tests[i]['metric']}" for i in ok)
                if ok else "")

    holm_ok = [i for i in range(m) if adj[i] <= alpha]
    bh_ok = [i for i in range(m) if q[i] <= alpha]
    summary = (f"{m} tests; {len(listed)} with unadjusted p < {alpha:g}; {len(holm_ok)} survive Holm at {alpha:g}"
               f"{names(holm_ok)}; {len(bh_ok)} with BH q ≤ {alpha:g}")
    if m:
        summary += f" (smallest Holm p {_fmt_p(min(adj))}, smallest BH q {_fmt_p(min(q))})"
    return "\n".join(text + [summary + "."])


_BLOCK = re.compile(r"(?P<open><!-- stats (?P<args>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?stats[ >]).)*?)"
                    r"(?P<close><!-- /stats -->)", re.S)
"""A table block of a report: the opening marker with its options, a body that holds no other marker (possibly
empty), the closing marker."""
_FAMILY = re.compile(r"(?P<open><!-- family -->\n)(?P<body>(?:(?!<!-- /?family -->).)*?)(?P<close><!-- /family -->)",
                     re.S)
"""The multiplicity block of a report (:func:`family_block`)."""


def render_report(text: str, rows: Sequence[Mapping], runs: "str | Path | None" = None) -> str:
    """``text`` with every block ``<!-- stats ARGS -->`` ... ``<!-- /stats -->`` refilled by :func:`markdown_table`
    with the options ARGS (those of the CLI: ``--grid``, ``--methods``, ``--metrics``, ``--baseline``,
    ``--same-setting``, ``--interval``, default t) on ``rows``, then every block ``<!-- family -->`` ...
    ``<!-- /family -->`` by :func:`family_block` over the difference cells of all the tables, and every
    ``<!-- identity ... -->`` block by :func:`bandpo.experiments.identity.render_identity` from the run folders under
    ``runs`` (the summary's folder). A report whose blocks are current renders to itself (tested on the committed
    data), so its numbers cannot drift from the data. ValueError names a block whose options are wrong."""
    cells: list = []

    def fill(m: "re.Match") -> str:
        p = _parser(exit_on_error=False)
        try:
            a = p.parse_args(shlex.split(m.group("args")))
        except ValueError as e:
            raise ValueError(f"bad options in report block <!-- stats {m.group('args')} -->: {e}") from None
        table, block_cells = _table(rows, a.metrics, a.grid, a.baseline, a.methods, a.same_setting, a.interval or "t")
        cells.extend(block_cells)
        return m.group("open") + table + "\n" + m.group("close")

    text = _BLOCK.sub(fill, text)
    text = _FAMILY.sub(lambda m: m.group("open") + family_block(cells) + "\n" + m.group("close"), text)
    return render_identity(text, runs)


DEFAULT_METRICS = ("eval_mean", "eval_pass", "entropy_last", "discovery_step", "discovered", "collapsed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .testbed import DEFAULT_OUT, read_summary

    p = _parser()
    p.add_argument("summary", nargs="?", default=str(DEFAULT_OUT / "summary.csv"), help="summary.csv of the testbed")
    p.add_argument("--refresh", metavar="REPORT", default=None,
                   help="refill the <!-- stats ... --> tables and the <!-- family --> block of a Markdown report in "
                        "place (render_report)")
    args = p.parse_args(argv)
    summary = Path(args.summary)
    if summary.is_dir() and (summary / "summary.csv").is_file():
        summary = summary / "summary.csv"
    if not summary.is_file():
        why = "is a folder without summary.csv" if summary.is_dir() else "does not exist"
        return p.report(f"{args.summary!r} {why}; give the summary.csv written by python -m bandpo.experiments.testbed")
    try:
        rows = read_summary(summary)
        _check_selection(rows, args)
        if args.refresh:
            if args.interval is not None:
                raise ValueError("--interval applies to printed tables; a report block takes it among its own "
                                 "options (<!-- stats --interval bca ... -->)")
            path = Path(args.refresh)
            path.write_text(render_report(path.read_text(encoding="utf-8"), rows, summary.parent), encoding="utf-8")
            print(f"refreshed the tables of {path}")
            return 0
    except (OSError, ValueError) as e:
        return p.report(e)
    return _print(args, rows)


def _check_selection(rows: Sequence[Mapping], args: argparse.Namespace) -> None:
    """Raise a one-line ValueError when ``rows`` are empty or ``--grid``, ``--baseline`` or ``--methods`` name
    nothing in them (the tables would be empty or all n/a)."""
    if not rows:
        raise ValueError("the summary has no rows; run python -m bandpo.experiments.testbed first")
    for flag, column, wanted in (("--grid", "grid", args.grid), ("--baseline", "method", [args.baseline]),
                                 ("--methods", "method", args.methods)):
        have = sorted({str(r.get(column)) for r in rows})
        unknown = [w for w in wanted or () if w not in have]
        if unknown:
            raise ValueError(f"{flag} {' '.join(unknown)}: not in the summary; its {column}s: {', '.join(have)}")


def _parser(exit_on_error: bool = True) -> ArgumentParser:
    """The table options, shared by the CLI and the report blocks (:func:`render_report`, which gets a
    ValueError for bad options instead of an exit)."""
    p = ArgumentParser(prog="python -m bandpo.experiments.stats", description=__doc__.split("\n\n")[0],
                       exit_on_error=exit_on_error)
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--grid", nargs="+", default=None, help="only these grids (default: all)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (markdown_table)")
    p.add_argument("--methods", nargs="+", default=None, help="with --markdown: only these methods")
    p.add_argument("--same-setting", action="store_true",
                   help="with --markdown: pair each run with the baseline's run of the same setting")
    p.add_argument("--baseline", default="clip",
                   help="baseline method id (its 'default' runs; for a 'tail=' setting, its runs of that setting)")
    p.add_argument("--interval", choices=list(INTERVALS), default=None,
                   help="95 %% interval of a mean paired difference: Student t (default), BCa or percentile bootstrap")
    return p


def _print(args: argparse.Namespace, rows: list) -> int:
    interval = args.interval or "t"
    if args.markdown:
        try:
            print(markdown_table(rows, args.metrics, args.grid, args.baseline, args.methods, args.same_setting,
                                 interval))
        except ValueError as e:
            return _parser().report(e)
        return 0
    rows = [r for r in rows if args.grid is None or r.get("grid") in args.grid]
    cands = candidates(rows, args.baseline)
    try:
        table = [t for c in cands for t in compare(rows, args.metrics, [c], baseline_of(c, args.baseline), interval)]
    except ValueError as e:
        return _parser().report(e)
    extra = "" if interval == "t" else f", {RESAMPLES} resamples"
    print(f"paired difference vs {args.baseline} (mean over seeds, 95% {INTERVALS[interval]}{extra})")
    print(f"{'method':<14} {'setting':<11} {'metric':<15} {'n':>2} {'diff':>9} {'low':>9} {'high':>9}")
    for r in table:
        print(f"{r['method']:<14} {r['setting']:<11} {r['metric']:<15} {r['n']:>2} {r['diff']:9.4f} "
              f"{r['low']:9.4f} {r['high']:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
