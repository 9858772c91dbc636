"""What a sequence-level band is, for GSPO's ratio (arXiv 2507.18071) and sequence-level rollout correction.

GSPO clips the sequence ratio s = (π_θ(y)/π_old(y))^{1/L} = (Π_t r_t)^{1/L}, the geometric mean of the L token
ratios. Two candidates for "the band at sequence level":

1. **The image of the token bands** (what ``bandpo`` implements, :func:`bandpo.losses.geometric_interval`). If
   every token ratio lies in its band [l_t, u_t], s lies in [(Π l_t)^{1/L}, (Π u_t)^{1/L}], and that whole interval
   is reached: ∂s/∂r_t = s/(L·r_t) > 0 (:func:`geometric_mean_is_increasing`), so s maps the box Π_t [l_t, u_t]
   onto the interval between its corners. Closed form, any divergence, any δ; for a constant interval (GSPO's own
   clip [1 - ε_low, 1 + ε_high]) it is that interval.
2. **The band of the whole sequence's probability**: g_f(P, R) <= δ with P = π_old(y) = Π_t p_t and R = s^L.
   Refused, because it is vacuous for any realistic sequence. For KL (f(u) = -log u, bandpo's ``kl``:
   g(P, R) = -P·log R - (1 - P)·log((1 - P·R)/(1 - P)), :func:`kl_g`), as P -> 0:

   * upper end: g(P, q/P) -> -log(1 - q) for the new sequence probability q = P·R (:func:`kl_upper_limit`), so
     R̄ -> (1 - e^{-δ})/P: whatever its old probability, the sequence may grow to probability 1 - e^{-δ} ≈ δ; in
     s-space s̄ = R̄^{1/L} -> (1/P)^{1/L} = 1/GM(p) as L grows, the constraint π_θ(y) <= 1 that every policy meets;
   * lower end: g(P, R)/P -> R - 1 - log R for fixed R (:func:`kl_lower_limit`), so R̲ ≈ e^{-1-δ/P} and
     s̲ = R̲^{1/L} -> 0.

   E.g. with p_t = 0.5 at every token and δ = 0.05 (:func:`sequence_band_in_s`), the token band is
   [0.69, 1.31] (L = 1, equal to ``bandpo.band`` at p = 0.5), while in s-space the sequence band is [5e-3, 1.49]
   for L = 10, [0, 1.94] for L = 100 and [0, 1.99] for L = 1000 (1/GM(p) = 2; 0 means below 1e-300).

So bandpo's GSPO takes (1) and sequence-level rollout correction with a bounds rule is refused with a one-line error
(``bandpo.losses.correction``); fixed thresholds (TIS/MIS) stay available at sequence level.
"""

from __future__ import annotations


import mpmath
import sympy as sp

__all__ = [
    "geometric_mean_is_increasing",
    "kl_g",
    "kl_lower_limit",
    "kl_upper_limit",
    "sequence_band_in_s",
]


def geometric_mean_is_increasing(n: int = 4) -> bool:
    """∂s/∂r_i - s/(n r_i) simplifies to 0 for s = (r_1 ⋯ r_n)^{1/n}, r_i > 0: s increases in every r_i."""
    r = sp.symbols(f"r1:{n + 1}", positive=True)
    s = sp.prod(r) ** sp.Rational(1, n)
    return all(sp.simplify(sp.diff(s, ri) - s / (n * ri)) == 0 for ri in r)


def kl_g(P, R):
    """g_KL(P, R) = -P·log R - (1 - P)·log((1 - P·R)/(1 - P)) = KL(Bernoulli(P) ‖ Bernoulli(P·R)): the band's g_f
    with f(u) = -log u (bandpo's ``kl``), for sympy or mpmath numbers."""
    log = sp.log if isinstance(P, sp.Basic) or isinstance(R, sp.Basic) else mpmath.log
    return -P * log(R) - (1 - P) * log((1 - P * R) / (1 - P))


def kl_upper_limit() -> "tuple[sp.Expr, sp.Expr]":
    """(lim_{P -> 0} g_KL(P, q/P), the q where it equals δ) = (-log(1 - q), 1 - e^{-δ})."""
    P, q, delta = sp.symbols("P q delta", positive=True)
    lim = sp.simplify(sp.limit(kl_g(P, q / P), P, 0, "+"))
    return lim, sp.simplify(sp.solve(sp.Eq(lim, delta), q)[0])


def kl_lower_limit() -> sp.Expr:
    """lim_{P -> 0} g_KL(P, R)/P for fixed R in (0, 1): R - 1 - log R (so R̲ ≈ e^{-1-δ/P})."""
    P, R = sp.symbols("P R", positive=True)
    return sp.simplify(sp.limit(kl_g(P, R) / P, P, 0, "+"))


def sequence_band_in_s(log_p: float, length: int, delta: float = 0.05, dps: int = 30) -> "tuple[float, float]":
    """The KL band of a whole sequence with per-token log-probability ``log_p`` (P = e^{L·log_p}), mapped to GSPO's
    s = R^{1/L}: (lower, upper) in s-space, by bisection with ``dps`` digits (P may be 1e-300; the lower end is
    found in v = log(-log R), the upper in log R)."""
    with mpmath.workdps(dps):
        log_P = mpmath.mpf(length) * mpmath.mpf(log_p)
        P = mpmath.exp(log_P)

        def bisect(fn, a, b, n: int = 110):
            fa = fn(a) > 0
            for _ in range(n):
                m = (a + b) / 2
                if (fn(m) > 0) == fa:
                    a = m
                else:
                    b = m
            return (a + b) / 2

        log_r_up = bisect(lambda x: kl_g(P, mpmath.exp(x)) - delta, mpmath.mpf(0), -log_P - mpmath.mpf(10) ** (-dps // 2))
        v = bisect(lambda v: kl_g(P, mpmath.exp(-mpmath.exp(v))) - delta, mpmath.mpf(-60), mpmath.mpf(5) - log_P)
        return float(mpmath.exp(-mpmath.exp(v) / length)), float(mpmath.exp(log_r_up / length))
