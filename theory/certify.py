"""Certificates: the full-vocabulary trust-region problem, solved by a conic solver, equals the 1-D Band.

The theorem behind the Band operator: for a whole old distribution p over V tokens and the sampled token i,

    max / min  q_i / p_i   s.t.  D_f(q ‖ p) = Σ_j p_j f(q_j / p_j) <= delta,  q ∈ simplex

equals the upper / lower Band bound of p_i (the rest of the vocabulary is rescaled proportionally at the
optimum, by Jensen's inequality). :func:`certify` solves that V-dimensional problem with cvxpy, written with
DCP atoms (``problem.is_dcp()`` is asserted), with Clarabel (SCS as a fallback), and returns the solver's
optimum together with an interval that is *guaranteed* to contain the true optimum:

* an outer end from weak duality: for any multipliers λ >= 0 (divergence constraint) and ν (simplex), the dual
  function d(λ, ν) bounds the max from above (and, with the sign flipped, the min from below). Only two terms
  survive because the objective touches one coordinate:

      d(λ, ν) = λ delta + ν + λ (1 - p_i) f*(-ν/λ) + λ p_i f*((c/p_i - ν)/λ),   c = +1 (max), -1 (min),

  with f*(s) = sup_{r >= 0} (s r - f(r)) the convex conjugate (:data:`DCP_DIVERGENCES`). λ is the solver's dual
  value of the divergence constraint; ν is then chosen to minimise d (a 1-D convex problem);
* an inner end from a feasible point: the solver's q, clipped at 0 and renormalised, mixed with p just enough
  that its divergence (evaluated in float64 with bandpo's generator) is <= delta.

The duality gap reported is dual bound minus primal optimum. Both ends are exact up to float64 rounding
(~1e-15 relative), independent of the solver's own tolerances.

Two equivalent formulations (``variables=``):

* ``"probability"`` (q as variable; the textbook form, e.g. KL(p ‖ q) = ``cp.sum(cp.rel_entr(p, q))``),
* ``"ratio"`` (default; r = q / p as variable, D_f = Σ p_j f(r_j), e.g. ``-(p @ cp.log(r))``), better scaled:
  every r_j is O(1) except the sampled token's, whatever the magnitudes of p.

Command line (prints a table; see :func:`main`)::

    python -m bandpo_theory.certify --divergence all --delta 0.05 --vocab 50 --trials 100
"""

from __future__ import annotations

import math
import sys
import time
import types
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import cvxpy as cp
import numpy as np

from bandpo.cli import ArgumentParser, check_out_path, float_in, int_at_least
from bandpo.registry import Registry

# Solver attempts, in order, until one reports "optimal". Clarabel's defaults stop at 1e-8 relative gap and
# feasibility; 1e-10 is about as tight as its double-precision interior-point iterations get on these
# exponential/power-cone problems: with a 1e-6 token, some solves end "AlmostSolved" (cvxpy:
# optimal_inaccurate) at 1e-10 and succeed at 1e-9 or 1e-8 (measured with `python -m bandpo_theory.certify`), hence
# the ladder. SCS (first-order, 1e-9) is the last resort. If none is optimal, the first inaccurate result is kept.
SOLVER_ATTEMPTS = (
    ("CLARABEL", "CLARABEL", {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 200}),
    ("CLARABEL@1e-9", "CLARABEL", {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 200}),
    ("CLARABEL@1e-8", "CLARABEL", {"max_iter": 200}),
    ("SCS", "SCS", {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}),
)
SUM_TOL = 1e-9  # |Σ p - 1| allowed for the input distribution


# ----------------------------------------------------------------------------------------------------------
# Divergences in DCP form, and their conjugates
# ----------------------------------------------------------------------------------------------------------


def _kl_conj(s):
    """f = -log r: f*(s) = -1 - log(-s) for s < 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s < 0, -1 - np.log(-s), np.inf)


def _reverse_kl_conj(s):
    """f = r log r: f*(s) = e^{s-1}."""
    with np.errstate(over="ignore"):
        return np.exp(s - 1)


def _tv_conj(s):
    """f = |r - 1|/2 on r >= 0: f*(s) = max(s, -1/2) for s <= 1/2."""
    return np.where(s <= 0.5, np.maximum(s, -0.5), np.inf)


def _chi2_conj(s):
    """f = (r - 1)²: f*(s) = s + s²/4 for s >= -2 (interior maximiser r = 1 + s/2), -1 below (r = 0)."""
    return np.where(s >= -2, s + s * s / 4, -1.0)


def _neyman_conj(s):
    """f = r - 2 + 1/r: f*(s) = 2 - 2 sqrt(1 - s) for s <= 1."""
    with np.errstate(invalid="ignore"):
        return np.where(s <= 1, 2 - 2 * np.sqrt(np.maximum(1 - s, 0)), np.inf)


def _hellinger_conj(s):
    """f = (sqrt r - 1)²: f*(s) = s/(1 - s) for s < 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s < 1, s / (1 - s), np.inf)


def _js_conj(s):
    """f = (r log r - (r+1) log((r+1)/2))/2: f'(r) = log(2r/(r+1))/2, so f*(s) = -log(2 - e^{2s})/2, s < log(2)/2."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.where(s < 0.5 * math.log(2), -0.5 * np.log(2 - np.exp(2 * np.minimum(s, 0.5 * math.log(2)))), np.inf)


@dataclass(frozen=True)
class DCPDivergence:
    """One divergence as convex cvxpy expressions plus the conjugate used for the dual bound."""

    name: str
    probability: Callable
    """(q variable, p array) -> convex expression equal to D_f(q ‖ p) on the simplex."""
    ratio: Callable
    """(r variable, p array) -> convex expression equal to Σ p_j f(r_j) where p @ r = 1."""
    conjugate: Callable
    """f*(s) = sup_{r >= 0} (s r - f(r)), elementwise on float64 arrays (+inf outside its domain)."""
    conjugate_max: float
    """sup of the domain of f* (the recession slope of f): f*(s) = inf for s above it (or at it, if open)."""
    note: str = ""


def _js_prob(q, p):
    m = (p + q) / 2
    return 0.5 * cp.sum(cp.rel_entr(p, m) + cp.rel_entr(q, m))


def _js_ratio(r, p):
    m = (r + 1) / 2
    return 0.5 * (p @ (cp.rel_entr(r, m) + cp.rel_entr(np.ones(r.shape[0]), m)))


DCP_DIVERGENCES: Registry[DCPDivergence] = Registry(
    "divergence", hint="the divergences certify can write in DCP form; add one with DCP_DIVERGENCES.register"
)
"""Divergence name (bandpo's) -> its DCP form and conjugate."""
for _d in (
    DCPDivergence("kl", lambda q, p: cp.sum(cp.rel_entr(p, q)), lambda r, p: -(p @ cp.log(r)),
                  _kl_conj, 0.0, "KL(p ‖ q) = Σ rel_entr(p, q)"),
    DCPDivergence("reverse_kl", lambda q, p: cp.sum(cp.rel_entr(q, p)), lambda r, p: -(p @ cp.entr(r)),
                  _reverse_kl_conj, math.inf, "KL(q ‖ p) = Σ rel_entr(q, p)"),
    DCPDivergence("tv", lambda q, p: 0.5 * cp.norm1(q - p), lambda r, p: 0.5 * (p @ cp.abs(r - 1)),
                  _tv_conj, 0.5, "½ ‖q - p‖₁"),
    DCPDivergence("chi2", lambda q, p: cp.sum_squares(cp.multiply(1 / np.sqrt(p), q - p)),
                  lambda r, p: p @ cp.square(r - 1), _chi2_conj, math.inf, "Σ (q - p)²/p"),
    DCPDivergence("neyman_chi2", lambda q, p: cp.sum(cp.multiply(p**2, cp.inv_pos(q))) - 1,
                  lambda r, p: p @ cp.inv_pos(r) - 1, _neyman_conj, 1.0, "Σ p²/q - 1 (= Σ (q - p)²/q on the simplex)"),
    DCPDivergence("hellinger", lambda q, p: 2 - 2 * (np.sqrt(p) @ cp.sqrt(q)),
                  lambda r, p: 2 - 2 * (p @ cp.sqrt(r)), _hellinger_conj, 1.0,
                  "2 - 2 Σ sqrt(p q) (= Σ (sqrt q - sqrt p)² on the simplex); i.e. sqrt(p) @ sqrt(q) >= 1 - delta/2"),
    DCPDivergence("js", _js_prob, _js_ratio, _js_conj, 0.5 * math.log(2),
                  "½ Σ rel_entr(p, m) + rel_entr(q, m), m = (p + q)/2"),
):
    DCP_DIVERGENCES.register(_d.name, _d)
del _d


def list_certifiable() -> list[str]:
    """Divergences :func:`certify` can write in DCP form, sorted."""
    return DCP_DIVERGENCES.names()


# ----------------------------------------------------------------------------------------------------------
# The certificate
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """Solution of the full-simplex problem for one token; ratios are q_i / p_i."""

    divergence: str
    index: int
    p_index: float
    """p[index]."""
    delta: float
    lower: float
    """Solver's min of q_i / p_i."""
    upper: float
    """Solver's max of q_i / p_i."""
    lower_interval: tuple
    """(dual bound, feasible value): the true min lies inside, up to float64 rounding."""
    upper_interval: tuple
    """(feasible value, dual bound): the true max lies inside, up to float64 rounding."""
    status: str
    """``"optimal"`` when both solves are; otherwise the worse of the two statuses."""
    statuses: tuple
    """(min status, max status) as reported by cvxpy."""
    duality_gap: float
    """max over both problems of |dual bound - primal optimum|, in units of the ratio."""
    duality_gap_relative: float
    """max over both problems of |dual bound - primal optimum| / max(1, |primal optimum|)."""
    dual_lower: float
    """Dual value λ of the divergence constraint in the min problem."""
    dual_upper: float
    """Dual value λ of the divergence constraint in the max problem."""
    solve_time: float
    """Seconds for both problems (cvxpy compile + solver), wall clock."""
    solver: str
    """Solver attempt(s) that produced the min and max, e.g. ``"CLARABEL"``, ``"CLARABEL,CLARABEL@1e-9"``, ``"SCS"``."""
    variables: str
    """``"ratio"`` or ``"probability"``."""


def _check_inputs(p, index: int, delta: float, divergence: str) -> np.ndarray:
    DCP_DIVERGENCES.get(divergence)  # ValueError listing the certifiable divergences
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"p must be a 1-D array of at least 2 probabilities, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("p must be finite")
    if np.any(p < 0):
        raise ValueError(f"p must be a probability distribution: found a negative entry ({p.min():.3g})")
    if np.any(p == 0):
        raise ValueError("p must be strictly positive (ratios q/p need p > 0; softmax outputs are); found a zero")
    total = float(p.sum())
    if abs(total - 1) > SUM_TOL:
        raise ValueError(f"p must sum to 1 (within {SUM_TOL:g}); it sums to {total!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < p.size:
        raise ValueError(f"index must be an integer in [0, {p.size - 1}], got {index!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) or not (
        math.isfinite(delta) and delta > 0
    ):
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    return p


def _divergence_value(r: np.ndarray, p: np.ndarray, divergence: str) -> float:
    """Σ p_j f(r_j) in float64 with bandpo's generator (f(0) = inf where it is)."""
    import torch

    import bandpo

    f = bandpo.get_divergence(divergence).f
    with torch.no_grad():
        values = f(torch.from_numpy(r)).numpy()
    terms = p * values
    return float(np.sum(terms)) if np.all(np.isfinite(terms)) else math.inf


def _feasible_value(r_hat: np.ndarray, p: np.ndarray, index: int, delta: float, divergence: str) -> float:
    """r_index of a point certified feasible: r_hat clipped, renormalised (p @ r = 1), mixed toward 1."""
    r = np.maximum(np.nan_to_num(r_hat, nan=1.0), 0.0)
    r = r / float(p @ r)
    target = delta * (1 - 1e-12)  # margin for the float64 rounding of the sum

    def mix(theta):
        return (1 - theta) * r + theta

    if _divergence_value(r, p, divergence) <= target:
        return float(r[index])
    lo, hi = 0.0, 1.0  # D(mix(theta)) is convex in theta, 0 at theta = 1: bisect for the first feasible theta
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _divergence_value(mix(mid), p, divergence) > target else (lo, mid)
    return float(mix(hi)[index])


def _golden_min(fun, lo: float, hi: float, iters: int = 200) -> "tuple[float, float]":
    """Minimum of a convex function on [lo, hi] by golden-section search: (x, f(x))."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = fun(c), fun(d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = fun(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = fun(d)
        if b - a <= 1e-15 * max(1.0, abs(a), abs(b)):
            break
    return (c, fc) if fc <= fd else (d, fd)


def dual_bound(lam: float, p_i: float, delta: float, divergence: str, sense: int, nu0: Optional[float] = None) -> float:
    """Weak-duality bound on max (sense=+1) or -min (sense=-1) of r_i, given λ, minimised over ν.

    d(λ, ν) = λ delta + ν + λ (1 - p_i) f*(-ν/λ) + λ p_i f*((sense/p_i - ν)/λ). Valid for every λ >= 0 and ν;
    with λ = 0 it reduces to the trivial bounds (r_i <= 1/p_i, r_i >= 0).
    """
    div = DCP_DIVERGENCES.get(divergence)
    trivial = 1 / p_i if sense > 0 else 0.0
    if not (lam > 0 and math.isfinite(lam)):
        return trivial
    conj = div.conjugate

    def d(nu):
        s = np.array([-nu / lam, (sense / p_i - nu) / lam])
        val = lam * delta + nu + lam * ((1 - p_i) * conj(s[0:1])[0] + p_i * conj(s[1:2])[0])
        return float(val) if math.isfinite(val) else math.inf

    smax = div.conjugate_max
    if math.isfinite(smax):  # both arguments <= smax
        nu_min = max(-lam * smax, sense / p_i - lam * smax)
        nu_min += 1e-15 * max(1.0, abs(nu_min))
    else:
        nu_min = None
    center = nu0 if nu0 is not None and math.isfinite(nu0) else (sense / p_i if sense > 0 else 0.0)
    scale = max(1.0, abs(center), 1 / p_i)
    lo = nu_min if nu_min is not None else center - 4 * scale
    hi = max(center, lo) + 4 * scale
    while d(hi) == math.inf or d(hi) < d(0.5 * (lo + hi)):  # widen until the minimum is bracketed
        hi = lo + 2 * (hi - lo)
        if hi - lo > 1e30:
            return trivial
    if nu_min is None:
        while d(lo) < d(0.5 * (lo + hi)):
            lo = hi - 2 * (hi - lo)
    _, best = _golden_min(d, lo, hi)
    return min(best, trivial)  # the trivial bounds (r_i <= 1/p_i; -r_i <= 0) are dual bounds too


class ConicProblem(NamedTuple):
    """One side's cvxpy problem, as built by :func:`build_problem`."""

    problem: cp.Problem
    """max or min of q_i / p_i (DCP)."""
    x: cp.Variable
    """(V,) the variable: r = q / p (``variables="ratio"``) or q (``"probability"``)."""
    constraint: cp.Constraint
    """The divergence constraint D_f <= delta (its dual value is λ)."""
    simplex: cp.Constraint
    """p @ r == 1 or Σ q == 1."""


class SolveResult(NamedTuple):
    """What :func:`_solve` kept from the solver attempts."""

    status: str
    """cvxpy's status (``"optimal"``, ``"optimal_inaccurate"``, ...), or ``"solver_error"``."""
    solver: str
    """Label of the attempt in :data:`SOLVER_ATTEMPTS` that produced it (``"none"`` if none did)."""
    x: Optional[np.ndarray]
    """(V,) float64 value of the variable, or None without a solution."""
    dual: float
    """λ, the dual value of the divergence constraint (0 if cvxpy gives none, nan without a solution)."""


@dataclass(frozen=True)
class SideResult:
    """The certified solution of one side (min or max of q_i / p_i)."""

    value: float
    """Solver's optimum of the ratio (nan without a solution)."""
    interval: tuple
    """(lower end, upper end) guaranteed to contain the true optimum: (dual, feasible) for the min, (feasible, dual)
    for the max."""
    status: str
    """cvxpy's status of this side."""
    solver: str
    """Solver attempt that produced it."""
    gap: float
    """|dual bound - solver optimum|, in units of the ratio."""
    gap_relative: float
    """gap / max(1, |solver optimum|)."""
    dual: float
    """λ, the dual value of the divergence constraint."""


def build_problem(
    p: np.ndarray, index: int, delta: float, divergence: str, sense: str, variables: str = "ratio"
) -> ConicProblem:
    """The DCP problem max (``sense="max"``) or min of q_i/p_i subject to D_f <= delta on the simplex.

    Args:
        p: (V,) old distribution. index: the sampled token i. variables: ``"ratio"`` or ``"probability"``.
    Returns:
        A :class:`ConicProblem`; ``problem.is_dcp()`` is asserted.
    """
    div = DCP_DIVERGENCES.get(divergence)
    n = p.size
    if variables == "ratio":
        x = cp.Variable(n, nonneg=True, name="r")
        simplex = p @ x == 1
        expr = div.ratio(x, p)
        objective = x[index]
    elif variables == "probability":
        x = cp.Variable(n, nonneg=True, name="q")
        simplex = cp.sum(x) == 1
        expr = div.probability(x, p)
        objective = x[index] / p[index]
    else:
        raise ValueError(f"variables must be 'ratio' or 'probability', got {variables!r}")
    constraint = expr <= delta
    problem = cp.Problem(cp.Maximize(objective) if sense == "max" else cp.Minimize(objective), [constraint, simplex])
    assert problem.is_dcp(), f"{divergence} ({variables}) is not DCP"
    return ConicProblem(problem, x, constraint, simplex)


_STATUS_RANK = {cp.OPTIMAL: 0, cp.OPTIMAL_INACCURATE: 1}


def _solve(problem: cp.Problem, x: cp.Variable, constraint: cp.Constraint) -> SolveResult:
    """Run SOLVER_ATTEMPTS until one is optimal; otherwise keep the first inaccurate result."""
    kept = None
    for label, solver, opts in SOLVER_ATTEMPTS:
        try:
            with warnings.catch_warnings():  # "Solution may be inaccurate": the status says so and we go on
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **opts)
        except cp.error.SolverError:
            continue
        if x.value is None:
            continue
        lam = float(np.asarray(constraint.dual_value).reshape(-1)[0]) if constraint.dual_value is not None else 0.0
        result = SolveResult(problem.status, label, np.array(x.value, dtype=np.float64), lam)
        if problem.status == cp.OPTIMAL:
            return result
        kept = kept or result
    return kept or SolveResult("solver_error", "none", None, math.nan)


def _certify_side(p: np.ndarray, index: int, delta: float, divergence: str, sense: str, variables: str) -> SideResult:
    """Solve one side (``sense`` "min" or "max") and enclose its optimum between a dual bound and a feasible value."""
    sign = 1 if sense == "max" else -1
    built = build_problem(p, index, delta, divergence, sense, variables)
    sol = _solve(built.problem, built.x, built.constraint)
    if sol.x is None:
        return SideResult(math.nan, (math.nan, math.nan), sol.status, sol.solver, math.nan, math.nan, math.nan)
    r_hat = sol.x / (p if variables == "probability" else 1.0)
    value = float(r_hat[index])
    feasible = _feasible_value(r_hat, p, index, delta, divergence)
    bound = dual_bound(max(sol.dual, 0.0), float(p[index]), delta, divergence, sign)
    if sign > 0:
        interval, gap = (feasible, bound), abs(bound - value)
    else:
        dual_end = -bound if bound != 0 else 0.0
        interval, gap = (dual_end, feasible), abs(value - dual_end)
    return SideResult(value=value, interval=interval, status=sol.status, solver=sol.solver, gap=gap,
                      gap_relative=gap / max(1.0, abs(value)), dual=sol.dual)


def certify(p, index: int, delta: float, divergence: str, *, variables: str = "ratio") -> Certificate:
    """Solve max and min of q[index]/p[index] over the simplex subject to D_f(q ‖ p) <= delta.

    Args:
        p: (V,) old distribution, strictly positive, summing to 1 (within 1e-9).
        index: the sampled token.
        delta: trust-region radius > 0.
        divergence: one of :func:`list_certifiable` (bandpo's names and conventions).
        variables: ``"ratio"`` (default, better scaled) or ``"probability"`` (q as variable).

    Returns:
        A frozen :class:`Certificate`.

    Raises:
        ValueError: p not a strictly positive distribution, index out of range, delta <= 0 or not finite,
            unknown divergence.
    """
    p = _check_inputs(p, index, delta, divergence)
    delta = float(delta)
    index = int(index)
    t0 = time.perf_counter()
    lo = _certify_side(p, index, delta, divergence, "min", variables)
    up = _certify_side(p, index, delta, divergence, "max", variables)
    elapsed = time.perf_counter() - t0
    statuses = (lo.status, up.status)
    worst = max(statuses, key=lambda s: _STATUS_RANK.get(s, 9))
    solvers = ",".join(dict.fromkeys((lo.solver, up.solver)))
    return Certificate(
        divergence=divergence,
        index=index,
        p_index=float(p[index]),
        delta=delta,
        lower=lo.value,
        upper=up.value,
        lower_interval=lo.interval,
        upper_interval=up.interval,
        status=worst,
        statuses=statuses,
        duality_gap=max(lo.gap, up.gap),
        duality_gap_relative=max(lo.gap_relative, up.gap_relative),
        dual_lower=lo.dual,
        dual_upper=up.dual,
        solve_time=elapsed,
        solver=solvers,
        variables=variables,
    )


# ----------------------------------------------------------------------------------------------------------
# Random vocabularies and the comparison with bandpo.band
# ----------------------------------------------------------------------------------------------------------


P_FLOOR = 1e-6


def random_vocabulary(rng: np.random.Generator, vocab: int, trial: int) -> "tuple[np.ndarray, int]":
    """A test distribution and the token to certify, cycling through four kinds of vocabulary:

    0: Dirichlet(0.1) (peaked), 1: Zipf (p_k ∝ k^-1.1, shuffled), 2: Dirichlet(1) with one token forced to
    10^U(-6, -3), 3: a head token with p ∈ (0.5, 0.99) and a Dirichlet(0.5) tail. The sampled token is the
    tiny one for kind 2, the head for kind 3, otherwise uniformly random.
    """
    kind = trial % 4
    if kind == 0:
        p = rng.dirichlet(np.full(vocab, 0.1))
        index = int(rng.integers(vocab))
    elif kind == 1:
        p = rng.permutation(1.0 / np.arange(1, vocab + 1) ** 1.1)
        index = int(rng.integers(vocab))
    elif kind == 2:
        p = rng.dirichlet(np.ones(vocab))
        index = int(rng.integers(vocab))
        p[index] = 0.0
        p = p / p.sum() * (1 - 10 ** rng.uniform(-6, -3))
        p[index] = 1 - p.sum()
    else:
        head = rng.uniform(0.5, 0.99)
        p = rng.dirichlet(np.full(vocab, 0.5)) * (1 - head)
        index = int(rng.integers(vocab))
        p[index] = 0.0
        p = p / p.sum() * (1 - head)
        p[index] = head
    # Floor every mass at P_FLOOR (Dirichlet(0.1) draws masses like 1e-30): a conic solver with 1e-10
    # tolerances cannot resolve masses far below them. Renormalising keeps the floor within 1e-4 relative.
    p = np.maximum(p, P_FLOOR)
    p = p / p.sum()
    return p, index


# A solver optimum q_i is only known to ~1e-8 absolute (its tolerance), so a ratio q_i/p_i is compared
# relatively only where the bound's probability q_i = ratio * p_i is at least Q_FLOOR; below it (e.g. the KL
# lower bound of a 1e-6 token, q_i ≈ p e^{-delta/p} = 0 in float64) the comparison is absolute on q_i.
Q_FLOOR = 1e-6


@dataclass(frozen=True)
class Comparison:
    """cvxpy against bandpo.band for one token."""

    rel_ratio: float
    """max over both bounds of |ratio_cvx - ratio_band| / ratio_band where ratio_band·p >= Q_FLOOR (else 0)."""
    abs_q: float
    """max over both bounds of |ratio_cvx - ratio_band|·p (difference of the token's new probability)."""
    solved: bool
    """Both problems returned a solution (some status with a primal point); False: every solver attempt failed."""
    inside: bool
    """bandpo's bounds lie inside the certified intervals (allowing 1e-12 relative rounding); False if not solved."""
    width: float
    """max over both bounds of the certified interval's width / max(1, ratio): how tightly the optimum is pinned."""
    certificate: Certificate


def compare_with_band(cert: Certificate) -> Comparison:
    """Compare a certificate with ``bandpo.band(...)`` (float64) at the same p_i and delta."""
    import torch

    import bandpo

    logp = torch.tensor([math.log(cert.p_index)], dtype=torch.float64)
    lo, up = (float(t[0]) for t in bandpo.band(logp, cert.delta, cert.divergence))
    rel, absq, inside, width = 0.0, 0.0, True, 0.0
    for solver_value, band_value, (a, b) in ((cert.lower, lo, cert.lower_interval), (cert.upper, up, cert.upper_interval)):
        if not math.isfinite(solver_value):  # no solution from any solver: counted as such, not compared
            continue
        absq = max(absq, abs(solver_value - band_value) * cert.p_index)
        if band_value * cert.p_index >= Q_FLOOR:
            rel = max(rel, abs(solver_value - band_value) / band_value)
        slack = 1e-12 * max(abs(band_value), 1.0)
        inside &= (a - slack <= band_value <= b + slack)
        width = max(width, (b - a) / max(1.0, abs(band_value)))
    solved = all(math.isfinite(v) for v in (cert.lower, cert.upper))
    return Comparison(rel_ratio=rel, abs_q=absq, solved=solved, inside=bool(inside and solved), width=width,
                      certificate=cert)


def run_trials(divergence: str, delta: float, vocab: int, trials: int, seed: int = 0, variables: str = "ratio"):
    """Certify ``trials`` random vocabularies and compare each with bandpo.band; returns the comparisons."""
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(trials):
        p, index = random_vocabulary(rng, vocab, trial)
        out.append(compare_with_band(certify(p, index, delta, divergence, variables=variables)))
    return out


def summarize(divergence: str, comps: Sequence[Comparison]) -> dict:
    """Table row: the worst discrepancies, gaps and the solve times."""
    times = [c.certificate.solve_time for c in comps]
    return {
        "divergence": divergence,
        "trials": len(comps),
        "no_solution": sum(not c.solved for c in comps),
        "not_optimal": sum(c.solved and c.certificate.status != cp.OPTIMAL for c in comps),
        "outside_interval": sum(c.solved and not c.inside for c in comps),
        "max_rel_ratio": max(c.rel_ratio for c in comps),
        "max_abs_q": max(c.abs_q for c in comps),
        "max_width": max(c.width for c in comps),
        "max_gap": max(c.certificate.duality_gap for c in comps),
        "max_gap_rel": max(c.certificate.duality_gap_relative for c in comps),
        "min_p": min(c.certificate.p_index for c in comps),
        "mean_time_ms": 1e3 * float(np.mean(times)),
        "max_time_ms": 1e3 * float(np.max(times)),
        "solvers": ",".join(sorted({s for c in comps for s in c.certificate.solver.split(",")})),
    }


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`summarize` rows."""
    head = ("| divergence | trials | no solution | not optimal | outside certified interval | max rel. discrepancy (ratio, q >= 1e-6) "
            "| max abs. discrepancy (q) | max certified width (rel.) | max duality gap (abs. / rel.) | min p | mean / max solve ms (2 problems) | solver |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['divergence']} | {r['trials']} | {r['no_solution']} | {r['not_optimal']} | {r['outside_interval']} | {r['max_rel_ratio']:.2e} "
            f"| {r['max_abs_q']:.2e} | {r['max_width']:.1e} | {r['max_gap']:.1e} / {r['max_gap_rel']:.1e} | {r['min_p']:.1e} | {r['mean_time_ms']:.1f} / {r['max_time_ms']:.1f} "
            f"| {r['solvers']} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    parser = ArgumentParser(
        prog="python -m bandpo_theory.certify",
        description="Certify bandpo.band against the full-vocabulary problem solved by Clarabel (SCS fallback).",
    )
    parser.add_argument("--divergence", default="all", help=f"one of {', '.join(list_certifiable())}, or 'all'")
    parser.add_argument("--delta", type=float_in(0, low_open=True), default=0.05, help="trust-region radius (> 0)")
    parser.add_argument("--vocab", type=int_at_least(2), default=50, help="vocabulary size V (>= 2)")
    parser.add_argument("--trials", type=int_at_least(1), default=100, help="random vocabularies per divergence")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed (each divergence restarts from it)")
    parser.add_argument("--variables", default="ratio", choices=("ratio", "probability"), help="formulation")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    names = list_certifiable() if args.divergence == "all" else [args.divergence]
    for name in names:
        if name not in DCP_DIVERGENCES:
            parser.error(f"unknown divergence {name!r}; known: {', '.join(list_certifiable())}, all")
    if args.out is not None:
        try:
            check_out_path(args.out)  # before the solves, not after them
        except ValueError as e:
            parser.error(e)
    rows = []
    for name in names:
        rows.append(summarize(name, run_trials(name, args.delta, args.vocab, args.trials, args.seed, args.variables)))
    table = format_table(rows)
    header = (f"delta = {args.delta}, V = {args.vocab}, {args.trials} trials per divergence, seed {args.seed}, "
              f"variables = {args.variables}")
    print(header)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(f"# Certification: cvxpy (full simplex) vs bandpo.band\n\n`python -m bandpo_theory.certify "
                     f"--divergence {args.divergence} --delta {args.delta} --vocab {args.vocab} --trials {args.trials} "
                     f"--seed {args.seed} --variables {args.variables}`\n\n{header}\n\n{table}\n")
    return rows


class _CallableModule(types.ModuleType):
    """``bandpo_theory.certify`` is this module (``python -m bandpo_theory.certify``) and, called, the function :func:`certify`."""

    def __call__(self, *args, **kwargs) -> Certificate:
        return certify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
