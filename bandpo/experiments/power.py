"""Power and interval coverage for the pre-registered rare-tail protocol (docs/protocol-rare-tail.md).

    python -m bandpo.experiments.power            # writes paper_figures/data/protocol/power.json, prints the tables

Deterministic (fixed seeds). Two parts:

1. **Power of the primary test** (exact two-sided McNemar at α = 0.05 on "tail discovered by the last step",
   band_kl_upper_rare vs clip, paired by seed), for n paired seeds and assumed discovery rates. Computed exactly:
   the number of discordant pairs m is Binomial(n, p10 + p01), the pairs where only the new method found the tail
   Binomial(m, p10 / (p10 + p01)), and the test rejects at those (m, b) where :func:`~bandpo.experiments.stats.mcnemar`
   gives p <= α; power is the probability of that set. The joint distribution of a pair comes from the two rates and
   their correlation ρ across seeds (φ coefficient). The planning values are the committed rare grid's
   (paper_figures/data/testbed, ``task.tail_freq`` 0.005, 16 seeds): clip found the tail in 5/16 seeds, the band's
   upper bound alone (``band_kl_upper``) in 8/16, their correlation across seeds 0.13. ``band_kl_upper_rare`` acts on
   the tail (p ≈ 0.005 < 0.05) exactly as ``band_kl_upper`` does, so its rate is assumed equal; smaller effects
   are tabulated too, since 8/16 is itself uncertain (95 % interval 0.25-0.75). A seeded simulation of the whole
   test (draw pairs, call ``mcnemar``) checks the exact figure.
2. **Coverage of the intervals** the protocol reports, at n = 8 (the committed grids) and at the protocol's n, by
   simulation from models fitted to the rare grid's shape (a run finds the tail or loses it: held-out mean@8 near
   0.6 or near 0; discovery step between 50 and 150 or censored at 150): the Student t interval, the percentile
   bootstrap and BCa (``bandpo.experiments.stats``), nominal 95 %.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .stats import bca_mean, bootstrap_mean, mcnemar, t_interval

__all__ = ["ALPHA", "PLANNING", "joint", "mcnemar_power", "coverage", "simulated_power"]

ALPHA = 0.05
"""Level of the primary test (two-sided)."""
PLANNING = {"clip": 5 / 16, "new": 8 / 16, "rho": 0.13}
"""Discovery rates and their correlation across seeds assumed for planning (the committed rare grid)."""
DEFAULT_OUT = Path("paper_figures/data/protocol/power.json")


def joint(p_a: float, p_b: float, rho: float) -> "tuple[float, float, float, float]":
    """(p11, p10, p01, p00) of a pair of Bernoulli(p_a), Bernoulli(p_b) outcomes with correlation ``rho``;
    ValueError if no such distribution exists."""
    p11 = p_a * p_b + rho * math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    cells = (p11, p_a - p11, p_b - p11, 1 - p_a - p_b + p11)
    if min(cells) < -1e-12:
        raise ValueError(f"no pair distribution with rates {p_a}, {p_b} and correlation {rho}")
    return tuple(max(0.0, c) for c in cells)  # type: ignore[return-value]


def _binom_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    with np.errstate(divide="ignore"):
        return np.exp(logc + k * np.log(p) + (n - k) * np.log1p(-p)) if 0 < p < 1 else (k == round(n * p)).astype(float)


def mcnemar_power(n: int, p_new: float, p_clip: float, rho: float = 0.0, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided exact McNemar test at ``alpha`` with ``n`` pairs (see the module docstring)."""
    _, p10, p01, _ = joint(p_new, p_clip, rho)
    pd = p10 + p01
    if pd == 0:
        return 0.0
    power = 0.0
    for m, pm in enumerate(_binom_pmf(n, pd)):
        if pm < 1e-300 or m == 0:
            continue
        pb = _binom_pmf(m, p10 / pd)
        reject = [b for b in range(m + 1) if mcnemar([1] * b + [0] * (m - b), [0] * b + [1] * (m - b)).p_value <= alpha]
        power += pm * float(pb[reject].sum()) if reject else 0.0
    return power


def simulated_power(n: int, p_new: float, p_clip: float, rho: float = 0.0, reps: int = 4000, seed: int = 0) -> float:
    """The same power by simulation: ``reps`` experiments of ``n`` pairs drawn from :func:`joint`, each tested with
    :func:`~bandpo.experiments.stats.mcnemar` (a check of :func:`mcnemar_power` through the real test)."""
    rng = np.random.default_rng(seed)
    cells = np.array(joint(p_new, p_clip, rho))
    hits = 0
    for _ in range(reps):
        kind = rng.choice(4, size=n, p=cells / cells.sum())
        a = np.isin(kind, (0, 1)).astype(float)  # new found it: cells 11 and 10
        b = np.isin(kind, (0, 2)).astype(float)  # clip found it: cells 11 and 01
        hits += mcnemar(a, b).p_value <= ALPHA
    return hits / reps


def _outcomes(rng: np.random.Generator, found: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """Per-run (held-out mean@8 on the 1/800 grid, discovery step) for runs that found the tail (``found``) or not,
    shaped like the rare grid: found -> mean@8 ~ N(0.63, 0.08) clipped to [0, 1], step ~ U{50..149}; lost -> mean@8
    0-2/800, step censored at 150."""
    n = found.size
    mean8 = np.where(found, np.clip(rng.normal(0.63, 0.08, n), 0, 1), rng.integers(0, 3, n) / 800)
    step = np.where(found, rng.integers(50, 150, n), 150)
    return np.round(mean8 * 800) / 800, step.astype(float)


def coverage(n: int, reps: int, seed: int = 0, resamples: int = 2000) -> dict:
    """Coverage (share of ``reps`` simulated experiments whose 95 % interval holds the true mean paired difference)
    of the t, percentile-bootstrap and BCa intervals of the paired differences, for the protocol's three paired
    quantities (discovered, held-out mean@8, discovery step capped at 150) under the planning rates."""
    rng = np.random.default_rng(seed)
    cells = np.array(joint(PLANNING["new"], PLANNING["clip"], PLANNING["rho"]))
    # the true mean differences, by a large draw of the same model (the mean@8 and step parts are not closed-form)
    big = 400_000
    kind = rng.choice(4, size=big, p=cells / cells.sum())
    fa, fb = np.isin(kind, (0, 1)), np.isin(kind, (0, 2))
    ma, sa = _outcomes(rng, fa)
    mb, sb = _outcomes(rng, fb)
    truth = {"discovered": float(fa.mean() - fb.mean()), "eval_mean": float((ma - mb).mean()),
             "discovery_step": float((sa - sb).mean())}
    truth["discovered"] = PLANNING["new"] - PLANNING["clip"]  # exact for this quantity
    hits = {q: {"t": 0, "percentile": 0, "bca": 0} for q in truth}
    for r in range(reps):
        kind = rng.choice(4, size=n, p=cells / cells.sum())
        fa, fb = np.isin(kind, (0, 1)), np.isin(kind, (0, 2))
        ma, sa = _outcomes(rng, fa)
        mb, sb = _outcomes(rng, fb)
        diffs = {"discovered": fa.astype(float) - fb, "eval_mean": ma - mb, "discovery_step": sa - sb}
        for q, d in diffs.items():
            for name, iv in (("t", t_interval(d)), ("percentile", bootstrap_mean(d, resamples=resamples, seed=r)),
                             ("bca", bca_mean(d, resamples=resamples, seed=r))):
                hits[q][name] += bool(iv.low <= truth[q] <= iv.high)
    return {"n": n, "reps": reps, "resamples": resamples, "truth": truth,
            "coverage": {q: {k: v / reps for k, v in h.items()} for q, h in hits.items()}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bandpo.experiments.power", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--coverage-reps", type=int, default=500)
    args = p.parse_args(argv)
    ns = (32, 64, 96, 112, 128, 160)
    effects = [(PLANNING["new"], PLANNING["clip"]), (0.45, PLANNING["clip"]), (0.40, PLANNING["clip"])]
    table = []
    for p_new, p_clip in effects:
        for rho in (0.0, PLANNING["rho"]):
            row = {"p_new": p_new, "p_clip": p_clip, "rho": rho,
                   "power": {n: round(mcnemar_power(n, p_new, p_clip, rho), 4) for n in ns}}
            table.append(row)
            print(f"p_new {p_new:.4f} p_clip {p_clip:.4f} rho {rho:.2f}: "
                  + "  ".join(f"n={n}: {v:.3f}" for n, v in row["power"].items()), flush=True)
    check = simulated_power(96, PLANNING["new"], PLANNING["clip"], PLANNING["rho"])
    exact = mcnemar_power(96, PLANNING["new"], PLANNING["clip"], PLANNING["rho"])
    print(f"n = 96 at the planning values: exact power {exact:.4f}, simulated {check:.4f} (4000 experiments)")
    null = mcnemar_power(96, PLANNING["clip"], PLANNING["clip"], PLANNING["rho"])
    print(f"type I error at n = 96 (both rates {PLANNING['clip']:.4f}): {null:.4f} (exact test: <= {ALPHA})")
    cov = [coverage(n, args.coverage_reps, seed=n) for n in (8, 96)]
    for c in cov:
        for q, v in c["coverage"].items():
            print(f"coverage n={c['n']:<3} {q:<15} " + "  ".join(f"{k} {x:.3f}" for k, x in v.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"alpha": ALPHA, "planning": PLANNING, "power": table,
                               "check_n96": {"exact": exact, "simulated": check, "type_I_error": null},
                               "coverage": cov}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
