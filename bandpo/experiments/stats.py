"""Paired bootstrap statistics over seeds: differences against a baseline method with 95 % percentile intervals.

    python -m bandpo.experiments.stats                                   # paper_figures/data/testbed/summary.csv
    python -m bandpo.experiments.stats some/summary.csv --metrics eval_mean collapsed

The experiments pair runs by seed (same warm start, same sampler seed; ``bandpo.experiments.testbed``), so a
comparison of method A with the baseline B is over the per-seed differences d_k = A_k - B_k of the seeds both
have. :func:`bootstrap_mean` gives their mean and a percentile bootstrap interval: resample the n differences
with replacement, take the mean, repeat, and read the 2.5 % and 97.5 % quantiles. The same applies to rates: for a
0/1 statistic (``collapsed``, ``discovered``) the mean difference is the difference of the two rates.

The tests of the pre-registered protocol (``docs/protocol-rare-tail.md``) are here too, as pure functions checked
against hand-computed values (``tests/test_stats_tests.py``): :func:`mcnemar` (exact, paired binary), :func:`holm`
(step-down adjusted p-values), :func:`sign_flip` (exact paired randomisation test of a mean difference),
:func:`rmst` / :func:`paired_rmst` (restricted mean time to an event under censoring), and the intervals
:func:`t_interval` (Student t, :func:`t_quantile` computed here without scipy) and :func:`bca_mean` (bias-corrected
and accelerated bootstrap).

Everything is a pure function: the resamples come from a NumPy generator seeded by ``seed`` (default 0), so the
same numbers always give the same interval. Resamples are drawn in antithetic pairs: the differences are sorted,
and each resample of indices i_1..i_n is paired with its mirror n-1-i_1..n-1-i_n (itself a uniform resample, so the
bootstrap distribution is unchanged); this halves the Monte-Carlo noise for near-symmetric data and makes the
interval of data symmetric about c exactly symmetric about c.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..cli import ArgumentParser
from .identity import render_identity

__all__ = ["Interval", "McNemar", "RESAMPLES", "SignFlip", "baseline_of", "bca_mean", "bootstrap_mean", "candidates",
           "compare", "holm", "markdown_table", "mcnemar", "paired_differences", "paired_rmst", "render_report",
           "rmst", "select_rows", "seed_mean", "sign_flip", "t_interval", "t_quantile"]

RESAMPLES = 10_000
"""Bootstrap resamples per interval (5 000 antithetic pairs)."""
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap percentile interval."""

    estimate: float
    """Mean of the values (nan without values)."""
    low: float
    """Lower end, the (1 - level)/2 quantile of the bootstrap means (nan with fewer than 2 values)."""
    high: float
    """Upper end, the (1 + level)/2 quantile of the bootstrap means (nan with fewer than 2 values)."""
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
    p = np.asarray(p_values, dtype=float).ravel()
    if p.size and not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError(f"holm needs p-values in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out.tolist()


@dataclass(frozen=True)
class SignFlip:
    """The exact sign-flip (paired randomisation) test of a mean difference."""

    n: int
    """Paired differences (nan dropped)."""
    mean: float
    """Their mean."""
    p_value: float
    """Two-sided: the fraction of the 2^n sign patterns whose |mean| is at least the observed |mean|."""
    method: str
    """'enumeration' (all 2^n patterns) or 'lattice' (exact distribution of the sum on the grid ``resolution``)."""


ENUMERATION_MAX = 20
"""Largest n whose 2^n sign patterns :func:`sign_flip` enumerates; above it the values must lie on a grid."""


def sign_flip(diffs: Sequence[float], resolution: Optional[float] = None) -> SignFlip:
    """Exact two-sided sign-flip test of H0: the paired differences are symmetric about 0.

    Under H0 every sign pattern s in {-1, +1}^n is equally likely, so p = #{s : |sum s_i d_i| >= |sum d_i|} / 2^n.
    With n <= :data:`ENUMERATION_MAX` all patterns are enumerated. Larger n need ``resolution``: every difference
    must be an integer multiple k_i of it (held-out mean@8 over 100 prompts: 1/800; discovery steps: 1), and the
    distribution of sum s_i k_i is built exactly by convolution, one difference at a time (probabilities in float64:
    exact up to rounding, ~1e-15). A difference off the grid by more than 1e-9 of the resolution is a ValueError.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return SignFlip(0, math.nan, math.nan, "enumeration")
    mean = float(d.mean())
    if resolution is None:
        if n > ENUMERATION_MAX:
            raise ValueError(f"sign_flip of n = {n} > {ENUMERATION_MAX} differences needs resolution= (the grid the "
                             "values lie on, e.g. 1/800 for mean@8 over 100 prompts)")
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        sums = np.abs(signs @ d)
        observed = abs(d.sum())
        return SignFlip(n, mean, float((sums >= observed - 1e-12 * max(1.0, observed)).mean()), "enumeration")
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


def seed_mean(rows: Sequence[Mapping], metric: str, spec: Mapping, **kw) -> Interval:
    """Mean over seeds of ``metric`` for the rows matching ``spec``, with its bootstrap interval (``kw``: those of
    :func:`bootstrap_mean`)."""
    return bootstrap_mean(list(_by_seed(rows, spec, metric).values()), **kw)


def compare(rows: Sequence[Mapping], metrics: Sequence[str], candidates: Sequence[Mapping],
            baseline: Optional[Mapping] = None, **kw) -> list:
    """One dict per (candidate, metric): the candidate's selection, ``metric``, ``n`` (paired seeds), ``diff`` (mean
    paired difference candidate - baseline), ``low``/``high`` (its bootstrap interval), and the two means over the
    paired seeds (``candidate_mean``, ``baseline_mean``). ``kw``: those of :func:`bootstrap_mean`."""
    baseline = {"method": "clip", "setting": "default"} if baseline is None else baseline
    out = []
    for cand in candidates:
        for metric in metrics:
            d = paired_differences(rows, metric, cand, baseline)
            a, b = _by_seed(rows, cand, metric), _by_seed(rows, baseline, metric)
            iv = bootstrap_mean(list(d.values()), **kw)
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


def markdown_table(rows: Sequence[Mapping], metrics: Sequence[str], grids: Optional[Sequence[str]] = None,
                   baseline: str = "clip", methods: Optional[Sequence[str]] = None, same_setting: bool = False,
                   **kw) -> str:
    """A Markdown table of paired differences against ``baseline`` (:func:`baseline_of` picks its runs) for every
    (method, setting) of ``grids`` (all if None; only ``methods`` if given) but the baseline's own
    (``same_setting``: against the baseline at the same setting, see :func:`baseline_of`): one row each, one column per metric,
    ``diff [low, high]``; a first row gives the baseline's means. The report in ``docs/testbed-report.md`` embeds
    these tables and a test checks that they match the committed data. ``kw``: those of :func:`bootstrap_mean`."""
    chosen = [r for r in rows if (grids is None or r.get("grid") in grids) and (methods is None or r["method"] in methods)]
    cands = candidates(chosen, baseline, same_setting)
    head = "| method | setting | n | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    bases = list(dict.fromkeys(tuple(sorted(baseline_of(c, baseline, same_setting).items())) for c in cands))
    for b in bases:
        spec = dict(b)
        means = [seed_mean(rows, m, spec, **kw) for m in metrics]
        lines.append(f"| {baseline} (mean) | {spec['setting']} | {means[0].n} | "
                     + " | ".join(_fmt(m, iv.estimate).lstrip("+") for m, iv in zip(metrics, means)) + " |")
    for c in cands:
        table = compare(rows, metrics, [c], baseline_of(c, baseline, same_setting), **kw)
        cells = [f"{_fmt(t['metric'], t['diff'])} [{_fmt(t['metric'], t['low'])}, {_fmt(t['metric'], t['high'])}]"
                 for t in table]
        lines.append(f"| {c['method']} | {c['setting']} | {table[0]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BLOCK = re.compile(r"(?P<open><!-- stats (?P<args>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?stats[ >]).)*?)"
                    r"(?P<close><!-- /stats -->)", re.S)
"""A table block of a report: the opening marker with its options, a body that holds no other marker (possibly
empty), the closing marker."""


def render_report(text: str, rows: Sequence[Mapping], runs: "str | Path | None" = None) -> str:
    """``text`` with every block ``<!-- stats ARGS -->`` ... ``<!-- /stats -->`` refilled by :func:`markdown_table`
    with the options ARGS (those of the CLI: ``--grid``, ``--methods``, ``--metrics``, ``--baseline``,
    ``--same-setting``) on ``rows``, and every ``<!-- identity ... -->`` block by
    :func:`bandpo.experiments.identity.render_identity` from the run folders under ``runs`` (the summary's folder). A
    report whose tables are current renders to itself (tested on the committed data), so its numbers cannot drift
    from the data. ValueError names a block whose options are wrong."""
    def fill(m: "re.Match") -> str:
        p = _parser(exit_on_error=False)
        try:
            a = p.parse_args(shlex.split(m.group("args")))
        except ValueError as e:
            raise ValueError(f"bad options in report block <!-- stats {m.group('args')} -->: {e}") from None
        table = markdown_table(rows, a.metrics, a.grid, a.baseline, a.methods, a.same_setting)
        return m.group("open") + table + "\n" + m.group("close")

    return render_identity(_BLOCK.sub(fill, text), runs)


DEFAULT_METRICS = ("eval_mean", "eval_pass", "entropy_last", "discovery_step", "discovered", "collapsed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .testbed import DEFAULT_OUT, read_summary

    p = _parser()
    p.add_argument("summary", nargs="?", default=str(DEFAULT_OUT / "summary.csv"), help="summary.csv of the testbed")
    p.add_argument("--refresh", metavar="REPORT", default=None,
                   help="refill the <!-- stats ... --> tables of a Markdown report in place (render_report)")
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
    return p


def _print(args: argparse.Namespace, rows: list) -> int:
    if args.markdown:
        try:
            print(markdown_table(rows, args.metrics, args.grid, args.baseline, args.methods, args.same_setting))
        except ValueError as e:
            return _parser().report(e)
        return 0
    rows = [r for r in rows if args.grid is None or r.get("grid") in args.grid]
    cands = candidates(rows, args.baseline)
    try:
        table = [t for c in cands for t in compare(rows, args.metrics, [c], baseline_of(c, args.baseline))]
    except ValueError as e:
        return _parser().report(e)
    print(f"paired difference vs {args.baseline} (mean over seeds, 95% bootstrap interval, {RESAMPLES} resamples)")
    print(f"{'method':<14} {'setting':<11} {'metric':<15} {'n':>2} {'diff':>9} {'low':>9} {'high':>9}")
    for r in table:
        print(f"{r['method']:<14} {r['setting']:<11} {r['metric']:<15} {r['n']:>2} {r['diff']:9.4f} "
              f"{r['low']:9.4f} {r['high']:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
