"""Generate tests/reference/band_table.csv: Band bounds at 60 significant digits with mpmath.

    python tests/reference/make_band_table.py      # ~1 minute, deterministic

Independent of bandpo's solvers: each root of g_f(p, r) = p f(r) + (1-p) f((1-p r)/(1-p)) = delta is found
by plain bisection in mpmath, parametrised by the log of the ratio that shrinks (log r for the lower bound,
log of the complement's ratio for the upper bound), so that roots like r = e^{-5e6} are representable.
The inputs are float64 values (old_logp as written by float.hex, delta as a decimal that is exactly the
float64 the tests pass), so the table is the exact answer for the float64 inputs.

Columns: divergence, delta, logp_hex, log_lower, log_upper (decimal strings; "-inf" where the lower bound is 0),
kappa_lower, kappa_upper = |d log r / d log p| (the condition number of each bound with respect to the
input; tests allow an error of a few ulps times kappa near kinks).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import mpmath as mp

mp.mp.dps = 60
OUT = Path(__file__).with_name("band_table.csv")


def xlogx(u):
    return mp.mpf(0) if u == 0 else u * mp.log(u)


GENERATORS = {
    "kl": lambda u: mp.inf if u == 0 else -mp.log(u),
    "reverse_kl": xlogx,
    "tv": lambda u: abs(u - 1) / 2,
    "chi2": lambda u: (u - 1) ** 2,
    "neyman_chi2": lambda u: mp.inf if u == 0 else (u - 1) ** 2 / u,
    "hellinger": lambda u: (mp.sqrt(u) - 1) ** 2,
    "js": lambda u: (xlogx(u) - (u + 1) * mp.log((u + 1) / 2)) / 2,
}


# lim_{u->inf} f(u)/u, worked out by hand for each generator (used only for p = 1 exactly).
SLOPE_AT_INF = {"kl": mp.mpf(0), "reverse_kl": mp.inf, "tv": mp.mpf(1) / 2, "chi2": mp.inf,
                "neyman_chi2": mp.mpf(1), "hellinger": mp.mpf(1), "js": mp.log(2) / 2}


def g(f, p, q1, r, v):
    """p f(r) + (1-p) f(v) (the caller keeps p r + (1-p) v = 1)."""
    return p * f(r) + q1 * f(v)


def solve_side(f, p, q1, delta, side):
    """log of the bound on one side, or None when saturated."""
    # The other ratio follows from p r + (1-p) v = 1, written without cancellation:
    # v = 1 + (p/(1-p))(1 - r) and r = 1 + ((1-p)/p)(1 - v), with 1 - e^y = -expm1(y).
    if side == "lower":  # y = log r
        def G(y):
            return g(f, p, q1, mp.exp(y), 1 + (p / q1) * -mp.expm1(y)) if q1 > 0 else f(mp.exp(y))
        at_end = g(f, p, q1, mp.mpf(0), 1 / q1) if q1 > 0 else f(mp.mpf(0))
    else:  # y = log v (complement ratio)
        def G(y):
            return g(f, p, q1, 1 + (q1 / p) * -mp.expm1(y), mp.exp(y))
        at_end = g(f, p, q1, 1 / p, mp.mpf(0))
    if at_end <= delta:
        return None
    # bracket the root in y < 0: find k with G(-2^k) > delta >= G(-2^(k-1)) (G decreases in y on (-inf, 0])
    k = -1100
    while G(-mp.ldexp(1, k)) <= delta:
        k += 1
        if k > 1100:
            raise RuntimeError("no bracket")
    lo, hi = -mp.ldexp(1, k), -mp.ldexp(1, k - 1) if k > -1100 else mp.mpf(0)
    # G(lo) > delta, G(hi) <= delta; bisection to 2^-200 relative
    for _ in range(210):
        mid = (lo + hi) / 2
        if G(mid) > delta:
            lo = mid
        else:
            hi = mid
    y = (lo + hi) / 2
    if side == "lower":
        return y
    return mp.log1p((q1 / p) * -mp.expm1(y))


def bounds(name, logp, delta):
    f = GENERATORS[name]
    lp = mp.mpf(logp)
    p = mp.exp(lp)
    q1 = -mp.expm1(lp)
    d = mp.mpf(delta)
    lo = solve_side(f, p, q1, d, "lower")
    up = solve_side(f, p, q1, d, "upper") if q1 > 0 else mp.mpf(0)
    if up is None:
        up = -lp
    if q1 == 0:  # p = 1: the limit p -> 1, i.e. the root of f(r) + (1 - r) lim f(u)/u = delta on [0, 1]
        slope = SLOPE_AT_INF[name]
        if slope == mp.inf:
            lo = mp.mpf(0)
        else:
            G = lambda r: f(r) + (1 - r) * slope  # noqa: E731
            if G(mp.mpf(0)) <= d:
                lo = None
            else:
                a, b = mp.mpf(0), mp.mpf(1)
                for _ in range(210):
                    m = (a + b) / 2
                    a, b = (m, b) if G(m) > d else (a, m)
                lo = mp.log((a + b) / 2)
    return lo, up


def bounds_raw(name, lp, d):
    f = GENERATORS[name]
    p = mp.exp(lp)
    q1 = -mp.expm1(lp)
    lo = solve_side(f, p, q1, d, "lower")
    up = solve_side(f, p, q1, d, "upper")
    return lo, (-lp if up is None else up)


def kappa(name, logp, delta, which):
    """|d log r / d log p| by a central difference at 60 digits (step 1e-25)."""
    if logp == 0.0:
        return mp.mpf(0)
    h = mp.mpf(10) ** -25
    d = mp.mpf(delta)
    a = bounds_raw(name, mp.mpf(logp) - h, d)[which]
    b = bounds_raw(name, mp.mpf(logp) + h, d)[which]
    if a is None or b is None or a == -mp.inf or b == -mp.inf:
        return mp.mpf(0)
    return abs(b - a) / (2 * h)


P_GRID = [1e-300, 1e-200, 1e-100, 1e-50, 1e-20, 1e-12, 1e-8, 1e-5, 1e-3, 0.01, 0.05, 0.08, 0.1, 0.2, 0.3, 0.5,
          0.7, 0.9, 0.95, 0.99, 0.999]
P_BAR_GRID = [1e-6, 1e-9, 1e-12]
DELTAS = [1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 1.0]


def logp_grid(name, delta):
    lps = [math.log(p) for p in P_GRID] + [math.log1p(-e) for e in P_BAR_GRID] + [0.0]
    # points on either side of the saturation kinks (1% away in p)
    kinks = {
        "tv": [delta, 1 - delta],
        "chi2": [delta / (1 + delta), 1 / (1 + delta)],
        "hellinger": [delta * (1 - delta / 4), (1 - delta / 2) ** 2],
        "reverse_kl": [1 - math.exp(-delta), math.exp(-delta)],
    }.get(name, [])
    for k in kinks:
        for fac in (0.99, 1.01):
            if 0 < k * fac < 1:
                lps.append(math.log(k * fac))
    return sorted(set(lps))


def main():
    rows = []
    for name in GENERATORS:
        for delta in DELTAS:
            for logp in logp_grid(name, delta):
                lo, up = bounds(name, logp, delta)
                k_lo = kappa(name, logp, delta, 0) if lo is not None else mp.mpf(0)
                k_up = kappa(name, logp, delta, 1)
                rows.append([
                    name, repr(delta), float(logp).hex(),
                    "-inf" if lo is None else mp.nstr(lo, 25, min_fixed=-1, max_fixed=1),
                    mp.nstr(up, 25, min_fixed=-1, max_fixed=1),
                    mp.nstr(k_lo, 6), mp.nstr(k_up, 6),
                ])
        print(name, len(rows), flush=True)
    with OUT.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["divergence", "delta", "logp_hex", "log_lower", "log_upper", "kappa_lower", "kappa_upper"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
