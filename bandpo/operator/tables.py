"""Delta-independent start tables for the Band root solve, and the tabulated solve itself.

Every divergence without a closed form reduces, on each side, to the one-sided problem of
:mod:`bandpo.operator.solvers`: the root s* of φ_a(s) = delta, where a is the mass that shrinks (the
lower side has a = p, the upper side a = 1 - p) and b = 1 - a. The root depends on two numbers only:

* ζ = C·asinh(z / C) with z = logit(a) = log a - log b (C = 16: spacing ~H in z near a = 1/2, ~45·H at
  |z| = 700, where the root varies slowly);
* τ, a coordinate for delta: τ = log delta for divergences that never saturate (f(0) = +inf); for the
  others the side saturates (s* = ∞) iff delta >= φ(∞) = a f(0) + b f(1/b), and
  τ = log(-log(1 - delta/φ(∞))), which maps the saturation kink to τ = +∞ where log s* ≈ τ is smooth
  (away from it, delta -> 0 gives log s* ≈ τ/2 + const, the small-delta band).

One table per divergence, built once on first use (on the CPU, then copied to a device once), holds
log s* on a uniform (ζ, τ) grid (575 x 201 nodes, ~0.1 s of CPU to build), solved at every node by the
robust bisection + Newton solver, as the monomial coefficients of the bicubic Lagrange interpolant of each
cell. Both sides of every element, whatever its delta (a Python number, a schedule, a per-token tensor),
read the same table (16 gathers of one float32 coefficient, a Horner evaluation), and the start (relative
error of s* at most 2.3e-4 for kl, 1.3e-5 for neyman_chi2, 7e-6 for js and reverse_kl, median ~1e-6;
measured over p in [1e-300, 1], delta in [1e-6, 10]) is refined by a fixed number of float64 steps:
Halley steps with closed-form φ'' for the built-in generators (cubic convergence: one step takes 2e-4 to
~1e-11, enough for a float32/16 result; two for float64), except that a float32/16 result of js,
reverse_kl and neyman_chi2 takes one Newton step (their starts are within 1.3e-5: ~1e-9 after it, see
NEWTON_FINISH), Newton steps for user generators (two and three). Beyond the τ range the start is extrapolated linearly (slope 1/2 below, 1 above) and
every step is safeguarded (an iterate is kept >= 1/16 of the previous one, the previous one is kept where
a step is not finite). Accuracy is tested for delta in [1e-4, 2] against 60-digit references
(tests/test_band_reference.py, tests/test_band_properties.py) and for delta down to 1e-15 against the
table-free solver (tests/test_band_solvers.py).

The float32/16 path with a tensor delta reads a :class:`FineStartTable` derived from it instead: cubic in ζ,
linear in τ on a grid 4x (kl, before a Halley step) or 8x (the NEWTON_FINISH generators) finer in τ, so a
lookup gathers 8 coefficients instead of 16 (the linear interpolation adds at most 6.6e-5 to log s* for kl,
1e-5 to 2e-5 for the others, measured; the float32 results were within 0.5 ulp of the float64 answer on 1M
LLM-like and log-uniform inputs, as before).

The table depends only on the divergence; building it is deterministic (elementwise float64 arithmetic
only), so a result never depends on what ran before: the cache is a pure speed-up.

Two per-delta tables serve float32/16 outputs with a Python-number delta, their nodes solved by the float64
path above, their result within 1 ulp of the float64 answer: :class:`BitsTable` for divergences that never
saturate (indexed by the float32 bits of x = -log p) and :class:`SatTable` for those that do (indexed by
the float64 bits of the distance of x to a saturation kink; exact 0 and 1/p beyond it). Both are
deterministic functions of (divergence, delta) and are used from the first call on.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .divergences import Divergence
from .numerics import LOG_TINY
from .solvers import HALLEY, PHI_AT_INF, js_phi, neyman_chi2_phi, reverse_kl_phi, PhiFn, autograd_derivative, generic_phi, solve_side_robust, softplus

__all__ = ["BitsTable", "StartTable", "bits_band", "build_bits_table", "build_start_table", "delta_coords",
           "get_bits_table", "get_start_table", "phi_at_inf", "phi_fn", "saturates", "side_phi_at_inf",
           "tabulated_side", "tau_coords", "warp", "SatHalf", "SatSide", "SatTable", "build_sat_table",
           "get_sat_table", "sat_band", "lookup_start32", "FineStartTable", "build_fine_table", "get_fine_table",
           "fine_tau_coords", "lookup_fine32", "SatBitsTable", "build_sat_bits_table", "get_sat_bits_table",
           "sat_bits_band"]

# Grid (see the module docstring). The nodes span exactly the logits the solvers see: masses are clamped
# at the smallest normal float64, so |log a - log b| <= -LOG_TINY = 708.4 (a node beyond it would repeat the
# clamped value and put a kink into the cubics of the last cells).
WARP_C = 16.0
Z_MAX = -LOG_TINY
ZETA_MAX = WARP_C * math.asinh(Z_MAX / WARP_C)
N_ZETA = int(math.ceil(2 * ZETA_MAX / 0.25)) + 1
H_ZETA = 2 * ZETA_MAX / (N_ZETA - 1)  # ~0.25
H_TAU = 0.25
# τ = log delta for never-saturating divergences: delta in [e^-42, e^8] = [5.7e-19, 2981]. Below ~1e-12
# the small-delta asymptote (slope 1/2) sets in only once delta is small against the side's mass b, so a
# table that stopped at e^-28 extrapolated wrongly for rare tokens: kl's log_band 18% off at delta = 1e-14,
# p ~ 1e-10 (now ~1e-8 relative on the log bound, the float32 path within 0.5 ulp down to delta = 1e-16).
TAU_RANGE_PLAIN = (-42.0, 8.0)
# τ = log t, t = -log(1 - delta/φ(∞)), for saturating ones: delta/φ(∞) from 5.7e-19 (all the lowp path's
# clamp at 2^-60 reaches) to 1 - 2e-9 (closer to the kink the node values are limited by the rounding of φ
# near φ(∞); the start is extrapolated there).
TAU_RANGE_SAT = (-42.0, 3.0)
# Slopes d log s* / d τ used to extrapolate beyond the τ range (small-delta and near-kink asymptotes).
SLOPE_BELOW, SLOPE_ABOVE = 0.5, 1.0

# Steps after the table start (within 2.3e-4 relative of s*, ~1e-6 typically; see the module docstring),
# indexed by ``lowp`` (the result is rounded to float32/16). Halley (cubic): 2e-4 -> ~1e-11 -> 1e-16.
# Newton (quadratic, user generators): 1e-5 -> 1e-10 -> 1e-16 -> margin.
HALLEY_STEPS = {False: 2, True: 1}
NEWTON_STEPS = {False: 3, True: 2}
# Built-in generators whose start is accurate enough (<= 1.3e-5 relative) for one Newton step (error ~ e0²,
# < 1e-9 relative) to give a float32/16 result within 1 ulp: the lowp path skips φ'' for them (kl's start,
# up to 2.3e-4, is not).
NEWTON_FINISH = frozenset({js_phi, reverse_kl_phi, neyman_chi2_phi})

_CACHE: "OrderedDict[tuple, Optional[StartTable]]" = OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()

# Lagrange cubic through u = -1, 0, 1, 2 in monomial form: c_k = Σ_m _M[k][m] y(u = m - 1).
_M = (
    (0.0, 1.0, 0.0, 0.0),
    (-1.0 / 3.0, -0.5, 1.0, -1.0 / 6.0),
    (0.5, -1.0, 0.5, 0.0),
    (-1.0 / 6.0, 0.5, -0.5, 1.0 / 6.0),
)


@dataclass(frozen=True)
class StartTable:
    """Bicubic cells of log s*(ζ, τ) for one divergence.

    ``coef``: (16, N_ZETA · n_tau) float32 (solved and fitted in float64, then rounded: the start needs
    ~1e-4, float32 halves the memory a lookup gathers and doubles its vector width); column i·n_tau + j
    holds c[k][l] (row 4k + l) of log s* ≈ Σ c[k][l] u^k v^l on the cell whose nodes are
    (i - 1 .. i + 2, j - 1 .. j + 2), with u = (ζ - ζ_i)/H_ZETA and v = (τ - τ_j)/H_TAU. Only columns with
    1 <= i <= N_ZETA - 3 and 1 <= j <= n_tau - 3 are filled (lookups clamp the cell index there).
    Coefficient-major: a lookup gathers each coefficient into its own contiguous vector and evaluates the
    polynomial on contiguous vectors (measured ~1.5x faster than one gather of 16 floats per element
    followed by arithmetic on (n, 4) rows).
    """

    coef: Tensor
    tau0: float
    n_tau: int
    saturating: bool

    def to(self, device: torch.device) -> "StartTable":
        return StartTable(self.coef.to(device), self.tau0, self.n_tau, self.saturating)


@dataclass(frozen=True)
class FineStartTable:
    """log s*(ζ, τ) cubic in ζ and linear in τ, on a τ grid ``fine`` times finer than the StartTable's,
    for the float32/16 path with a per-token delta (:func:`lookup_fine32`).

    Derived from the StartTable (:func:`build_fine_table`): each bicubic cell evaluated in v at the fine τ
    nodes gives the cubic-in-u coefficients q_k there, so the fine table agrees with the bicubic at its nodes
    (to float32 rounding) and interpolates linearly between them. ``coef``: (8, N_ZETA · n_fine) float32,
    column i·n_fine + m: rows 0-3 q_k at fine node m, rows 4-7 q_k(m + 1) - q_k(m). A lookup gathers 8
    floats instead of 16 and evaluates one Horner pass in u after one multiply-add in τ (instead of Horner in
    both): one float32 chunk 9-15% faster, measured. Its extra error is the linear interpolation's in τ:
    max |Δ log s*| against the bicubic over 2^20 random points of the table domain, measured, 6.6e-5 for kl at
    fine = 4 (FINE_HALLEY: a Halley step tolerates ~2e-4), 9.7e-6 (reverse_kl), 1.1e-5 (js) and 2.0e-5
    (neyman_chi2) at fine = 8 (FINE_NEWTON, before one Newton step). The float32 results were bitwise those of
    the bicubic start on 524k LLM-like and log-uniform inputs for kl, and differed by one rounding in ~1 in
    5 000 to 30 000 elements for the others, all within 0.5 ulp of the float64 answer
    (tests/test_band_solvers.py checks the table against the bicubic).
    """

    coef: Tensor
    tau0: float
    h_tau: float
    n_fine: int
    saturating: bool

    def to(self, device: torch.device) -> "FineStartTable":
        return FineStartTable(self.coef.to(device), self.tau0, self.h_tau, self.n_fine, self.saturating)


# τ refinement of the fine table by the step that follows its start: Halley (kl) tolerates ~2e-4, Newton ~1e-5.
FINE_HALLEY, FINE_NEWTON = 4, 8


def saturates(div: Divergence) -> bool:
    """Whether a bound can saturate (at 0 or 1/p) for 0 < p < 1: f(0) finite, so φ(∞) is finite."""
    return not (math.isinf(div.f_at_0) and div.f_at_0 > 0)


def phi_fn(div: Divergence) -> PhiFn:
    """The divergence's own log-space φ evaluator, or the generic one built from f and f'."""
    return div.phi or _generic_phi(div)


@functools.lru_cache(maxsize=64)
def _generic_phi(div: Divergence) -> PhiFn:
    return generic_phi(div.f, div.df or autograd_derivative(div.f))


def phi_at_inf(div: Divergence, log_a: Tensor, log_b: Tensor) -> Tensor:
    """φ(∞) = a f(0) + b f(1/b): the divergence of the saturated bound (shrinking mass a moved entirely),
    from the generator (the robust solver's saturation test).

    a f(0) is 0 where a underflows even if f(0) = inf."""
    a = torch.exp(log_a)
    if math.isinf(div.f_at_0):
        f0 = torch.where(a > 0, a * div.f_at_0, torch.zeros_like(a))
    else:
        f0 = a * div.f_at_0
    b_c = torch.exp(torch.clamp(log_b, min=-690.0))  # b f(1/b) -> lim f(u)/u as b -> 0
    return f0 + b_c * div.f(1 / b_c)


def side_phi_at_inf(div: Divergence, log_a: Tensor, log_b: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """φ(∞) for the tabulated path: the divergence's closed form where it has one (reverse_kl: -log b; js),
    accurate to ~1e-15 relative also as a -> 0, else :func:`phi_at_inf`."""
    fn = PHI_AT_INF.get(div.phi)
    return fn(log_a, log_b, a, b) if fn is not None else phi_at_inf(div, log_a, log_b)


def _side_masses(z: Tensor) -> "tuple[Tensor, Tensor]":
    """(log a, log b) for logit(a) = z, masses clamped at the smallest normal float64 (as the solvers do)."""
    return torch.clamp(-softplus(-z), min=LOG_TINY), torch.clamp(-softplus(z), min=LOG_TINY)


def _delta_from_tau(div: Divergence, sat: bool, log_a: Tensor, log_b: Tensor, tau: Tensor) -> Tensor:
    if not sat:
        return torch.exp(tau)
    phinf = side_phi_at_inf(div, log_a, log_b, torch.exp(log_a), torch.exp(log_b))
    # at the smallest masses (φ(∞) ~ a ~ 1e-308) and τ far below 0 the delta of a node would be subnormal or 0,
    # no delta a caller can pass: kept at the smallest normal float64, so those nodes are flat in τ (instead of
    # the noise of a subnormal delta, which the cubics of the reachable cells next to them would inherit)
    return torch.clamp(phinf * -torch.expm1(-torch.exp(tau)), min=math.exp(LOG_TINY))


def _solve_nodes(div: Divergence, sat: bool, zeta: Tensor, tau: Tensor) -> Tensor:
    """log s* at the points (zeta, tau) (same shape), by the robust solver.

    Where s* overflows float64 (kl's shrinking side at the smallest masses, a <= ~1e-307, with delta >~ 2:
    30 nodes at the ζ edge), log s* is its asymptote log(delta/a) = τ - log a (φ ≈ a s for f(u) ~ -log u),
    not 0: a start of s = 1 there gave a lower bound of e^-1 instead of 0 (and the cubics of the cells next to
    the edge would inherit the jump). Other non-finite values (none for the built-in generators) -> 0."""
    z = WARP_C * torch.sinh(zeta / WARP_C)
    log_a, log_b = _side_masses(z)
    delta = _delta_from_tau(div, sat, log_a, log_b, tau)
    s, _ = solve_side_robust(phi_fn(div), log_a, log_b, delta, bisect_iters=64, polish_steps=3)
    y = torch.log(s)
    y = torch.where(s == math.inf, torch.log(delta) - log_a, y)
    return torch.where(torch.isfinite(y), y, torch.zeros_like(y))


def _cubic_rows(y: Tensor, dim: int) -> "list[Tensor]":
    """Monomial coefficients c_0..c_3 along ``dim`` of the cubic through 4 consecutive nodes (u = -1..2)."""
    n = y.shape[dim]
    parts = [y.narrow(dim, m, n - 3) for m in range(4)]
    out = []
    for k in range(4):
        acc = None
        for m in range(4):
            w = _M[k][m]
            if w == 0.0:
                continue
            term = parts[m] * w
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def build_start_table(div: Divergence) -> StartTable:
    """Solve log s* at every (ζ, τ) node and store each cell's bicubic coefficients (CPU, float64)."""
    sat = saturates(div)
    t0, t1 = TAU_RANGE_SAT if sat else TAU_RANGE_PLAIN
    n_tau = int(round((t1 - t0) / H_TAU)) + 1
    zeta = torch.linspace(-ZETA_MAX, ZETA_MAX, N_ZETA, dtype=torch.float64)
    tau = t0 + H_TAU * torch.arange(n_tau, dtype=torch.float64)
    zz, tt = torch.meshgrid(zeta, tau, indexing="ij")
    with torch.no_grad():
        y = _solve_nodes(div, sat, zz.reshape(-1), tt.reshape(-1)).reshape(N_ZETA, n_tau)
        along_tau = _cubic_rows(y, 1)  # 4 x (N_ZETA, n_tau - 3)
        coef = torch.zeros(N_ZETA, n_tau, 4, 4, dtype=torch.float64)
        for l_, c_l in enumerate(along_tau):
            for k, c_kl in enumerate(_cubic_rows(c_l, 0)):  # (N_ZETA - 3, n_tau - 3)
                coef[1 : N_ZETA - 2, 1 : n_tau - 2, k, l_] = c_kl
    return StartTable(coef.reshape(N_ZETA * n_tau, 16).t().to(torch.float32).contiguous(), t0, n_tau, sat)


def _eager_only(fn):
    """Run ``fn`` outside any compiled graph (``torch.compiler.disable``), without importing torch._dynamo
    for eager callers: that import costs ~1 s (and pulls sympy) for every user of ``import bandpo``."""
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


_MISSING = object()


def _cached(key: tuple, device: torch.device, build):
    """The table for ``key`` on ``device``: built once on the CPU by ``build()`` (which may return None: no table),
    copied to the device once, cached (LRU, _CACHE_SIZE entries).

    Keys hold what determines a table (the divergence object itself, so its id cannot be reused, the delta, the
    kind); a rebuilt table (after an eviction) is bitwise the same, so caching never changes a result. The build
    runs outside the lock (it may call the float64 path, which reads the start table)."""
    dev_key, cpu_key = key + (str(device),), key + ("cpu",)
    with _LOCK:
        table = _CACHE.get(dev_key, _MISSING)
        if table is not _MISSING:
            _CACHE.move_to_end(dev_key)
            return table
        cpu = _CACHE.get(cpu_key, _MISSING)
    if cpu is _MISSING:
        cpu = build()
    table = cpu if cpu is None or str(device) == "cpu" else cpu.to(device)
    with _LOCK:
        _CACHE[cpu_key] = cpu
        _CACHE[dev_key] = table
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return table


def build_fine_table(table: StartTable, fine: int) -> FineStartTable:
    """The :class:`FineStartTable` of ``table`` (CPU; evaluated in float64 from its float32 coefficients)."""
    n_tau, n_fine = table.n_tau, fine * (table.n_tau - 1) + 1
    c = table.coef.to(torch.float64).view(4, 4, N_ZETA, n_tau)  # c[k, l] of cell (i, j)
    m = torch.arange(n_fine)
    j = torch.clamp(torch.div(m, fine, rounding_mode="floor"), 1, n_tau - 3)  # the cell a lookup at τ_m uses
    v = (m - fine * j).to(torch.float64) / fine  # its v there (in [-1, 0) below cell 1, up to 2 above)
    cj = c[:, :, :, j]  # (4, 4, N_ZETA, n_fine)
    q = cj[:, 3]
    for l_ in (2, 1, 0):
        q = cj[:, l_] + v * q  # Horner in v, as the bicubic lookup evaluates it
    dq = torch.zeros_like(q)
    dq[..., :-1] = q[..., 1:] - q[..., :-1]
    coef = torch.cat((q, dq)).reshape(8, N_ZETA * n_fine).to(torch.float32).contiguous()
    return FineStartTable(coef, table.tau0, H_TAU / fine, n_fine, table.saturating)


@_eager_only
def get_fine_table(div: Divergence, device: torch.device, fine: int) -> FineStartTable:
    """The divergence's :class:`FineStartTable` on ``device``, derived from its start table on first use."""
    cpu = torch.device("cpu")
    return _cached((div, "fine", fine), device, lambda: build_fine_table(get_start_table(div, cpu), fine))


def fine_tau_coords(table: FineStartTable, tau: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """The τ part of :func:`lookup_fine32`: (m, w, extrapolation) in float32, as :func:`tau_coords` on the fine
    grid (the fine node m and the position w ∈ [0, 1] in its interval; linear extrapolation beyond the table
    with slope SLOPE_BELOW below and SLOPE_ABOVE above)."""
    return _grid_coords(tau, table.tau0, table.h_tau, table.n_fine, 0.0, table.n_fine - 2.0)


def lookup_fine32(table: FineStartTable, zeta: Tensor, coords: "tuple[Tensor, Tensor, Tensor]") -> Tensor:
    """Interpolated log s* (float32) at float32 ``zeta`` of any shape and τ coordinates
    (:func:`fine_tau_coords`) broadcastable to it: one gather of the 8 coefficient rows, q_k = q_k(m) + w Δq_k,
    then Horner in u."""
    m, w, extra = coords
    u, idx = _zeta_cell(zeta, m, table.n_fine)
    c = table.coef.index_select(1, idx).view(2, 4, *zeta.shape)
    q = c[0].addcmul_(w, c[1])
    return q[0].addcmul_(u, q[1].addcmul_(u, q[2].addcmul_(u, q[3]))).add_(extra)


@_eager_only
def get_start_table(div: Divergence, device: torch.device) -> StartTable:
    """The divergence's start table on ``device`` (independent of delta), built on first use (:func:`_cached`)."""
    return _cached((div, "start"), device, lambda: build_start_table(div))


def warp(z: Tensor) -> Tensor:
    """ζ = C·asinh(z / C), written with log and sqrt (torch's asinh is not vectorised on the CPU)."""
    y = z.abs().mul_(1.0 / WARP_C)
    one = torch.ones((), dtype=y.dtype, device=y.device)
    return torch.addcmul(one, y, y).sqrt_().add_(y).log_().mul_(WARP_C).copysign_(z)  # in place


def tau_coords(table: StartTable, tau: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """The τ part of a lookup: (j, v, extrapolation) in float32 for :func:`_lookup`, so that two sides that
    share τ (divergences that never saturate: τ = log delta) compute it once."""
    return _grid_coords(tau, table.tau0, H_TAU, table.n_tau, 1.0, table.n_tau - 3.0)


def _grid_coords(
    tau: Tensor, tau0: float, h: float, n_nodes: int, first: float, last: float
) -> "tuple[Tensor, Tensor, Tensor]":
    """(cell, position in it, extrapolation) of τ on the grid tau0 + h·[0, n_nodes), float32: the cell index is
    kept in [first, last] (the cells a lookup may use), the position is measured from it, and beyond the grid
    the start is extrapolated linearly (slope SLOPE_BELOW below, SLOPE_ABOVE above)."""
    tau = tau.to(torch.float32)
    tv_raw = torch.sub(tau, tau0).mul_(1.0 / h)
    tv = torch.clamp(tv_raw, 0.0, n_nodes - 1.0)
    j = torch.floor(tv).clamp_(first, last)
    # extrapolation: r = tv_raw - tv is the distance beyond the table in cells (< 0 below, > 0 above, else 0);
    # h (SA r + (SB - SA) min(r, 0)) is h SB r below and h SA r above, with the same bits as summing the two
    # clamped parts (h, SB, SA and SB - SA are powers of two or zero: every product is exact)
    r = tv_raw.sub_(tv)
    extra = torch.clamp(r, max=0.0).mul_(h * (SLOPE_BELOW - SLOPE_ABOVE)).add_(r, alpha=h * SLOPE_ABOVE)
    return j, tv - j, extra


def _zeta_cell(zeta: Tensor, j: Tensor, n_tau_nodes: int) -> "tuple[Tensor, Tensor]":
    """(u, column) of float32 ``zeta`` in a table laid out column i·n_tau_nodes + j: u the position in the ζ cell
    i (kept in [1, N_ZETA - 3]), the column flat (int64) for a gather."""
    tz = (zeta + ZETA_MAX) * (1.0 / H_ZETA)
    i = torch.clamp(torch.floor(tz), 1.0, N_ZETA - 3.0)
    u = tz.sub_(i)
    idx = torch.addcmul(j, i, torch.full((), float(n_tau_nodes))).long().reshape(-1)  # exact integers < 2^24
    return u, idx


def _finite_tau(tau: Tensor) -> Tensor:
    return torch.nan_to_num(tau, nan=0.0, posinf=1e3, neginf=-1e3)


def delta_coords(table: StartTable, delta: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """:func:`tau_coords` of τ = log delta (never-saturating divergences), in delta's own shape (0-dim for
    a Python delta: broadcast in the lookup)."""
    return tau_coords(table, _finite_tau(torch.log(delta)))


def _lookup(table: StartTable, zeta: Tensor, coords: "tuple[Tensor, Tensor, Tensor]") -> Tensor:
    """Interpolated log s* at (zeta, τ) (τ given by its :func:`tau_coords`, broadcastable to zeta; float64),
    extrapolated linearly in τ beyond the table.

    The coordinates and the cell's polynomial are evaluated in float32 (the start needs ~1e-4; float32
    rounding of the coordinates moves it by < 1e-6); the result is float64. zeta lies in
    [-ZETA_MAX, ZETA_MAX] (masses are clamped) and the cell index is clamped in any case."""
    return lookup_start32(table, zeta.to(torch.float32), coords).to(torch.float64)


def lookup_start32(table: StartTable, zeta: Tensor, coords: "tuple[Tensor, Tensor, Tensor]") -> Tensor:
    """The float32 part of :func:`_lookup`: interpolated log s* at float32 ``zeta`` of any shape (e.g. (2, n),
    both sides stacked) and τ coordinates broadcastable to it. One gather of the 16 coefficient rows at once
    (a (16, n) index_select along the columns: one call instead of 16, measured ~20% faster, same values), then
    Horner in v and in u, in place on the gathered rows (c[4k + l] of the element's cell)."""
    j, v, extra = coords
    u, idx = _zeta_cell(zeta, j, table.n_tau)
    c = table.coef.index_select(1, idx).view(4, 4, *zeta.shape)  # c[k, l]: contiguous rows
    # Horner in v for the four k at once (3 operations on (4, ...) views instead of 12: the same arithmetic
    # per element, so the same bits; fewer operations matter most on the threaded lowp path)
    q = c[:, 0].addcmul_(v, c[:, 1].addcmul_(v, c[:, 2].addcmul_(v, c[:, 3])))
    return q[0].addcmul_(u, q[1].addcmul_(u, q[2].addcmul_(u, q[3]))).add_(extra)


def _safe_step(s: Tensor, step: Tensor) -> Tensor:
    """max(s - step, s/16), and s itself where s - step would not be finite (a NaN or -inf step; s and
    step finite otherwise, so s - step cannot overflow). A +inf step gives s/16, as max(-inf, s/16) would.
    One nan_to_num instead of an isfinite test and a select (torch.where costs ~10 multiplications on the
    CPU)."""
    new = step.nan_to_num_(nan=0.0, neginf=0.0).neg_().add_(s)  # s - step, in place on the fresh step
    return torch.maximum(new, s * (1.0 / 16), out=new)


def _safe_step_neg(s: Tensor, step: Tensor) -> Tensor:
    """-:func:`_safe_step` (s, step), bitwise (step - s = -(s - step) exactly, and min(-x, -y) = -max(x, y)):
    the lowp path finishes on -s (e^{-s}, expm1(-s)), so it saves the negations."""
    new = step.nan_to_num_(nan=0.0, neginf=0.0).sub_(s)  # step - s, in place on the fresh step
    return torch.minimum(new, s * (-1.0 / 16), out=new)


def tabulated_side(
    div: Divergence,
    table: StartTable,
    log_a: Tensor,
    log_b: Tensor,
    a: Tensor,
    b: Tensor,
    zeta: Tensor,
    delta: Tensor,
    lowp: bool,
    rab: Optional[Tensor] = None,
    coords: "Optional[tuple[Tensor, Tensor, Tensor]]" = None,
) -> "tuple[Tensor, Optional[Tensor]]":
    """(s*, saturated) for one side: table start, then a fixed number of safeguarded steps in float64:
    Halley steps for the built-in generators (HALLEY_STEPS), Newton steps otherwise (NEWTON_STEPS); the
    fewer ``lowp`` counts where the result is rounded to float32/16.

    ``log_a``, ``log_b``: logs of the shrinking and growing masses (clamped, finite), ``a``, ``b`` their
    exps, ``zeta`` = warp(log_a - log_b); ``delta`` float64, broadcastable. ``saturated`` is None for
    divergences that never saturate; where it is True, s* is meaningless (the caller substitutes the
    saturated bound). Each Newton iterate is kept >= 1/16 of the previous one (and the previous one is
    kept where the step is not finite). Optional, to share work between the two sides: ``rab`` = a/b
    (else exp(log_a - log_b), once), ``coords`` = :func:`tau_coords` of τ = log delta (never-saturating
    divergences only; else computed here)."""
    if table.saturating:
        phinf = side_phi_at_inf(div, log_a, log_b, a, b)
        saturated = ~(delta < phinf)  # φ(∞) <= delta (also where φ(∞) is NaN): no interior root
        ratio = torch.div(delta, phinf).nan_to_num_(nan=0.5).clamp_(0.0, 1.0 - 2.0**-52)
        # τ = log(-log1p(-ratio)), in place on one fresh buffer, made finite as _finite_tau does
        tau = ratio.neg_().log1p_().neg_().log_().nan_to_num_(nan=0.0, posinf=1e3, neginf=-1e3)
        coords = tau_coords(table, tau)
    else:
        saturated = None
        if coords is None:
            coords = delta_coords(table, delta)
    s = torch.exp(_lookup(table, zeta, coords))
    halley = HALLEY.get(div.phi)
    if halley is not None:
        if rab is None:
            rab = torch.exp(log_a - log_b)
        if lowp and div.phi in NEWTON_FINISH:
            phi, d1, _ = halley(s, log_a, log_b, a, b, rab, second=False)
            return _safe_step(s, phi.sub_(delta).div_(d1)), saturated
        one = torch.ones((), dtype=s.dtype, device=s.device)
        for _ in range(HALLEY_STEPS[lowp]):
            phi, d1, d2 = halley(s, log_a, log_b, a, b, rab)
            t = (phi - delta) / d1  # the Newton step; Halley divides it by 1 - t φ''/(2 φ') (kept in [1/2, 2])
            corr = torch.addcmul(one, t, d2 / d1, value=-0.5).clamp_(0.5, 2.0)
            s = _safe_step(s, t.div_(corr))
        return s, saturated
    fn = phi_fn(div)
    for _ in range(NEWTON_STEPS[lowp]):
        phi, dphi, _ = fn(s, log_a, log_b, a, b)
        new = torch.maximum(s - (phi - delta) / dphi, s * (1.0 / 16))
        s = torch.where(torch.isfinite(new), new, s)
    return s, saturated



# ----------------------------------------------------------------------------------------------------------
# Fixed-delta fast path: float32/16 outputs of never-saturating divergences with a Python-number delta
# ----------------------------------------------------------------------------------------------------------

# A per-(divergence, delta) table indexed by the float32 bit pattern of x = -old_logp: the top bits (exponent
# and the first BITS_M mantissa bits) pick a segment, the remaining bits are the position u ∈ [0, 1) in it.
# Segments are uniform in x within each binade [2^e, 2^(e+1)) (relative width 2^-8), so both regimes are
# resolved: p -> 1 (x -> 0, where the bounds depend on log x) and p -> 0 (x large, nearly linear in x). Each
# segment stores the cubic through four nodes of log(∓log r) solved by the float64 path (start table +
# Halley), which gives the float32 result within 1 ulp of the float64 answer (tests/test_band_solvers.py).
# 40960 nodes: building it costs ~4% of a 2^20-token call, so a delta that changes every call (a schedule)
# builds one per call and stays fast. The build is deterministic, so the cache never changes a result.
BITS_M = 8
_BITS_SHIFT = 23 - BITS_M
X_MIN_EXP, X_MAX_EXP = -30, 10  # x is clamped to [2^-30, 2^10): p within 1e-9 of 1 is the p -> 1 limit
_X_MIN = 2.0**X_MIN_EXP
_X_MAX = float(torch.nextafter(torch.tensor(2.0**X_MAX_EXP, dtype=torch.float32), torch.tensor(0.0)))
_BITS_OFFSET = (127 + X_MIN_EXP) << BITS_M
_N_SEGMENTS = (X_MAX_EXP - X_MIN_EXP) << BITS_M


_LOG2E = 1.0 / math.log(2.0)
_LOG2_LOG2E = math.log2(_LOG2E)


def _exp2_pairs(coef: Tensor, shift: int) -> Tensor:
    """(n_segments, 2, 4) cubics of y = log(∓log r) in u = m·2^-shift (m the integer position in the segment) ->
    (4, n_segments) complex128 pairs (lower, upper) of the cubics of y·log2(e) + log2(log2(e)) in m itself.

    Then M = 2^(that) = |log r|·log2(e) and r = 2^(∓M): two exp2, which torch computes ~4x faster than exp in
    float64 on the CPU, and no multiplication by 2^-shift (folded into c_k as the exact factor 2^(-shift·k)).
    The rescaling rounds each coefficient once (~1e-16 relative), far below the float32/16 result's ulp."""
    scaled = coef * _LOG2E
    scaled[..., 0] += _LOG2_LOG2E
    scaled = scaled * torch.exp2(-shift * torch.arange(4, dtype=torch.float64))
    return torch.view_as_complex(scaled.permute(2, 0, 1).contiguous())  # (4, n, 2) -> (4, n) pairs


_SIGN_PAIRS = 1 << 16  # (lower, upper) sign pairs kept per table: a multiplication by a broadcast (2,) vector costs
# ~8x one by a flat vector of the same length on the CPU


@dataclass(frozen=True)
class BitsTable:
    """(n_segments, 2, 4) cubic coefficients of log(-log r_lower) and log(log r_upper) in u, float64;
    ``signs`` = (-1, 1) on the table's device; ``pairs``: the same cubics as evaluated
    (:func:`_exp2_pairs`), (4, n_segments) complex128, one gather per coefficient for both sides;
    ``sign_pairs``: ``signs`` repeated _SIGN_PAIRS times, flat."""

    coef: Tensor
    signs: Tensor
    pairs: Tensor
    sign_pairs: Tensor

    def to(self, device: torch.device) -> "BitsTable":
        return BitsTable(self.coef.to(device), self.signs.to(device), self.pairs.to(device), self.sign_pairs.to(device))


def build_bits_table(solve, delta: float) -> BitsTable:
    """``solve``: float64 logp -> (log_lower, log_upper) by the float64 path, for this divergence and delta."""
    j = torch.arange(_N_SEGMENTS, dtype=torch.float64)
    e = torch.floor(j / 2**BITS_M) + X_MIN_EXP
    width = torch.exp2(e - BITS_M)
    start = torch.exp2(e) + (j - (e - X_MIN_EXP) * 2**BITS_M) * width
    # each segment's cubic through its own nodes u = -1, 0, 1, 2 (so binade edges need no special case)
    x = (start[:, None] + width[:, None] * torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)).reshape(-1)
    log_lower, log_upper = solve(-x)
    coef = []
    # log(-log lower) is +inf where the lower bound's log overflows float64 (kl at masses below ~1e-307 with
    # delta >~ 4): capped at 710 > log(max float64), so the cubics stay finite and e^{-e^y} is still 0 there
    for y in (torch.log(-log_lower).clamp_(max=710.0), torch.log(log_upper)):
        ym1, y0, y1, y2 = y.reshape(-1, 4).unbind(1)
        coef.append(torch.stack([
            y0,
            -ym1 / 3 - y0 / 2 + y1 - y2 / 6,
            ym1 / 2 - y0 + y1 / 2,
            -ym1 / 6 + y0 / 2 - y1 / 2 + y2 / 6,
        ], dim=1))
    coef = torch.stack(coef, dim=1)
    signs = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    return BitsTable(coef, signs, _exp2_pairs(coef, _BITS_SHIFT), signs.repeat(_SIGN_PAIRS))


@_eager_only
def get_bits_table(div: Divergence, delta: float, device: torch.device, solve) -> BitsTable:
    """The cached :class:`BitsTable` for (divergence, delta, device), built on the CPU on first use."""
    return _cached((div, delta, "bits"), device, lambda: build_bits_table(solve, delta))


def _gather_pairs(pairs: Tensor, k: int, idx: Tensor) -> Tensor:
    """(n, 2) float64 coefficient k of both sides at segments ``idx``: one gather of complex128 pairs (on the
    CPU two gathers of float64 cost ~1.8x one of complex128, measured); under torch.compile a gather of the
    real view's rows (inductor fuses it, and does not take complex tensors)."""
    if torch.compiler.is_compiling():
        return torch.view_as_real(pairs[k]).index_select(0, idx)
    return torch.view_as_real(pairs[k].index_select(0, idx))


def bits_band(
    table: BitsTable, old_logp: Tensor, out: "Optional[tuple[Tensor, Tensor]]" = None
) -> "tuple[Tensor, Tensor]":
    """(lower, upper) in old_logp's dtype: one lookup per element, no iteration (~20 operations, both sides in
    one (n, 2) tensor); NaN where old_logp is not finite (sanitised before the lookup: no index leaves the
    table; ``pad``, 0 or NaN, is added at the end). ``out``: two flat tensors of old_logp's dtype to write into."""
    x = old_logp.detach().to(torch.float32).reshape(-1)
    pad = x - x  # 0 where old_logp is finite, NaN where it is ±inf or NaN
    x = torch.neg(x).nan_to_num_(nan=1.0).clamp_(_X_MIN, _X_MAX)  # ±inf -> the clamp; NaN -> any finite x
    bits = x.view(torch.int32)
    idx = torch.bitwise_right_shift(bits, _BITS_SHIFT).sub_(_BITS_OFFSET)
    m = torch.bitwise_and(bits, (1 << _BITS_SHIFT) - 1).to(torch.float64)  # u·2^shift
    m = torch.view_as_real(torch.complex(m, m))  # (n, 2): an operand broadcast from (n, 1) costs ~5x more
    y = _gather_pairs(table.pairs, 3, idx)
    for k in (2, 1, 0):  # Horner, in place on the gathered coefficients
        y = _gather_pairs(table.pairs, k, idx).addcmul_(m, y)  # (n, 2): finally log2(|log r|·log2(e))
    n = x.numel()
    signs = table.sign_pairs[: 2 * n] if n <= _SIGN_PAIRS else table.signs.repeat(n)
    ratio = y.exp2_().view(-1).mul_(signs).exp2_().view(n, 2)  # r = 2^(∓|log r| log2 e): lower, upper
    if out is None:
        out = tuple(torch.empty(x.shape, dtype=old_logp.dtype, device=x.device) for _ in range(2))
    torch.add(ratio[:, 0], pad, out=out[0])  # computed in float64 (pad is 0 or NaN), rounded once
    torch.add(ratio[:, 1], pad, out=out[1])
    return out[0].view(old_logp.shape), out[1].view(old_logp.shape)


# ----------------------------------------------------------------------------------------------------------
# Fixed-delta fast path: float32/16 outputs of saturating divergences with a Python-number delta
# ----------------------------------------------------------------------------------------------------------

# With f(0) finite each bound saturates on one end of the x = -log p axis: the lower bound is exactly 0 for
# x >= R (rare tokens), the upper bound exactly 1/p for x <= L (confident tokens); φ(∞) grows with the
# shrinking mass, so each saturated set is one interval at an end (checked at build time; else no table).
# Near a kink the root behaves like d / log(1/d) in the distance d to it, which no polynomial in x resolves,
# so each side's unsaturated interval is cut at its midpoint and each half is tabulated against the distance
# d to its own end (0, a kink, or x = 2^10), indexed by the float64 bits of d: 2^BITS_M segments per binade,
# the same relative resolution in d at every distance from the kink. Each segment stores the cubic of
# log(∓log r) through four nodes solved by the float64 path (start table + Halley) at their true (rounded)
# positions, which gives the float32/16 result within 1 ulp of the float64 answer
# (tests/test_band_solvers.py). Thresholds and nodes are deterministic functions of (divergence, delta),
# ~60k nodes: a delta that changes every call builds one table per call and stays fast.
_SAT_SHIFT = 52 - BITS_M  # float64 mantissa bits below a segment index
SAT_X_MAX = 2.0**X_MAX_EXP  # x = -log p is clamped here
_SAT_E_ZERO = -150  # halves anchored at x = 0 (p -> 1) reach d = 2^-150 (below every nonzero float32 x)
_SAT_KINK_BITS = 36  # halves anchored at a kink X reach d = 2^(floor(log2 X) - 36)


@dataclass(frozen=True)
class SatHalf:
    """One half of a side's unsaturated interval, tabulated against d = x - anchor (from_left) or anchor - x;
    its segments are rows ``base`` on of the side's coefficients, d is clamped to [2^e_min, d_max]."""

    anchor: float
    from_left: bool
    e_min: int
    d_max: float
    base: int


@dataclass(frozen=True)
class SatSide:
    """A side's unsaturated interval (L, R) of x; saturated for x <= L (``kink_left``) / x >= R
    (``kink_right``). ``coef``: (n_segments, 4) float64 cubic coefficients of log(∓log r) in the position
    u ∈ [0, 1) within a segment; None: saturated everywhere."""

    L: float
    R: float
    split: float
    kink_left: bool
    kink_right: bool
    halves: "tuple[SatHalf, ...]"
    coef: Optional[Tensor]

    @functools.cached_property
    def cols(self) -> Tensor:
        """(4, n_segments) the coefficients by rows: four gathers of one float64 each cost ~1/3 of one gather of
        the (n, 4) rows on the CPU (measured)."""
        return self.coef.t().contiguous()

    def to(self, device: torch.device) -> "SatSide":
        coef = None if self.coef is None else self.coef.to(device)
        return SatSide(self.L, self.R, self.split, self.kink_left, self.kink_right, self.halves, coef)


@dataclass(frozen=True)
class SatTable:
    """Both sides, and the lower ratio at p = 1 exactly (the float64 path's value there)."""

    lower: SatSide
    upper: SatSide
    lower_at_one: float

    def to(self, device: torch.device) -> "SatTable":
        return SatTable(self.lower.to(device), self.upper.to(device), self.lower_at_one)


def _side_saturated(div: Divergence, delta: float, x: Tensor, side: int) -> Tensor:
    """The float64 path's saturation test at x = -log p (float64): ~(delta < φ(∞)) on the side's masses."""
    logp = -x
    log1mp = torch.log(-torch.expm1(logp))
    lp, l1 = torch.clamp(logp, min=LOG_TINY), torch.clamp(log1mp, min=LOG_TINY)
    log_a, log_b = (lp, l1) if side == 0 else (l1, lp)
    return ~(delta < side_phi_at_inf(div, log_a, log_b, torch.exp(log_a), torch.exp(log_b)))


def _saturation_interval(div: Divergence, delta: float, side: int) -> "Optional[tuple[float, float]]":
    """(L, R): the side's unsaturated interval of x in (0, SAT_X_MAX), or None if the saturated set is not
    one interval at the side's end on a 4000-point grid (then no table). Located on the grid, then refined
    to float64 resolution."""
    grid = torch.logspace(-45, math.log10(SAT_X_MAX), 4000, dtype=torch.float64)
    sat = _side_saturated(div, delta, grid, side)
    change = sat if side == 0 else ~sat  # lower: saturated on a suffix; upper: on a prefix
    k = int(change.long().argmax()) if bool(change.any()) else len(grid)
    if not bool(change[k:].all()):
        return None
    if k == len(grid):  # lower never saturated / upper always saturated
        return (0.0, math.inf) if side == 0 else (SAT_X_MAX, SAT_X_MAX)
    if k == 0:  # lower always saturated / upper never saturated
        return (0.0, 0.0) if side == 0 else (0.0, math.inf)
    lo, hi = float(grid[k - 1]), float(grid[k])  # change is False at lo, True at hi
    for _ in range(16):
        pts = torch.linspace(lo, hi, 1025, dtype=torch.float64)
        c = _side_saturated(div, delta, pts, side)
        c = c if side == 0 else ~c
        if not bool(c[-1]) or bool(c[0]):
            return None
        j = int(c.long().argmax())  # the first change (φ(∞) is rounded: within a few ulps of x of the
        # kink the float64 test may flip more than once; the table takes the first flip as the kink)
        new_lo, new_hi = float(pts[j - 1]), float(pts[j])
        if (new_lo, new_hi) == (lo, hi):
            break
        lo, hi = new_lo, new_hi
    # lower: saturated for x >= hi (the first saturated x); upper: saturated for x <= lo (the last one)
    return (0.0, hi) if side == 0 else (lo, math.inf)


def _cubic_through(u: Tensor, y: Tensor) -> Tensor:
    """(n, 4) monomial coefficients c_0..c_3 of the cubic through the four points (u[:, m], y[:, m]) of each
    row, by Newton's divided differences expanded to monomials (the nodes sit near u = -1, 0, 1, 2: well
    separated, so the differences lose nothing; ~20 elementwise operations where a batched 4 x 4 LU solve of a
    Vandermonde matrix cost ~8 ms per table)."""
    u0, u1, u2, u3 = u.unbind(1)
    y0, y1, y2, y3 = y.unbind(1)
    d01, d12, d23 = (y1 - y0) / (u1 - u0), (y2 - y1) / (u2 - u1), (y3 - y2) / (u3 - u2)
    d012, d123 = (d12 - d01) / (u2 - u0), (d23 - d12) / (u3 - u1)
    d0123 = (d123 - d012) / (u3 - u0)
    # p(u) = y0 + d01 (u - u0) + d012 (u - u0)(u - u1) + d0123 (u - u0)(u - u1)(u - u2), expanded
    s01, p01 = u0 + u1, u0 * u1
    c3 = d0123
    c2 = d012 - d0123 * (s01 + u2)
    c1 = d01 - d012 * s01 + d0123 * (p01 + s01 * u2)
    c0 = y0 - d01 * u0 + d012 * p01 - d0123 * p01 * u2
    return torch.stack((c0, c1, c2, c3), dim=1)


class SatShape(NamedTuple):
    """A side's saturated set (x = -log p): x <= L where ``kink_left``, x >= R where ``kink_right``, every x where
    ``always`` (then the kink table stores no coefficients for the side)."""

    L: float
    R: float
    kink_left: bool
    kink_right: bool
    always: bool


def _sat_shape(div: Divergence, delta: float, side: int) -> "Optional[SatShape]":
    """The side's :class:`SatShape`, or None where its saturated set is not one interval at its end."""
    interval = _saturation_interval(div, delta, side)
    if interval is None:
        return None
    L, R = interval
    return SatShape(L, R, L > 0, math.isfinite(R), not L < min(R, SAT_X_MAX))


def _lower_at_one(solve) -> float:
    """The lower ratio at p = 1 exactly, by the float64 path ``solve``."""
    return float(torch.exp(solve(torch.zeros(1, dtype=torch.float64))[0]))


def _build_sat_side(div: Divergence, delta: float, side: int, solve) -> "Optional[SatSide]":
    shape = _sat_shape(div, delta, side)
    if shape is None:
        return None
    L, R, kink_left, kink_right, always = shape
    if always:
        return SatSide(L, R, math.inf, kink_left, kink_right, (), None)
    mid = 0.5 * (L + R) if math.isfinite(R) else math.inf
    specs = [(L, True, min(mid, SAT_X_MAX) - L)]
    if math.isfinite(R):
        specs.append((R, False, R - mid))
    halves, coefs, base = [], [], 0
    for anchor, from_left, d_max in specs:
        e_min = _SAT_E_ZERO if anchor == 0 else math.floor(math.log2(anchor)) - _SAT_KINK_BITS
        e_max = max(math.ceil(math.log2(d_max)), e_min + 1)
        e = torch.arange(e_min, e_max, dtype=torch.float64)
        width = torch.exp2(e - BITS_M)[:, None]
        # per binade: nodes at 2^e + (i - 1) 2^(e - BITS_M), i = 0..2^BITS_M + 2; segment k uses nodes k..k+3
        i = torch.arange(2**BITS_M + 3, dtype=torch.float64)
        d_nom = torch.exp2(e)[:, None] + (i - 1) * width
        start = d_nom[:, 1:-2]  # segment starts (u = 0)
        n_keep = int((start <= d_max).sum())  # the segments in use: a prefix (starts increase)
        need = d_nom <= d_max + 2 * width  # the nodes they use (all unsaturated: inside the half)
        x = anchor + d_nom[need] if from_left else anchor - d_nom[need]
        d_act = torch.full_like(d_nom, math.nan)
        d_act[need] = x - anchor if from_left else anchor - x  # where each node really sits (x is rounded)
        log_lower, log_upper = solve(-x)
        y_need = torch.log(-log_lower) if side == 0 else torch.log(log_upper)
        y = torch.full_like(d_nom, math.nan)
        y[need] = y_need
        idx = torch.arange(2**BITS_M)[:, None] + torch.arange(4)
        u = ((d_act[:, idx] - start[..., None]) / width[..., None]).reshape(-1, 4)[:n_keep]
        y_seg = y[:, idx].reshape(-1, 4)[:n_keep]
        if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(y_seg).all())):
            return None
        coefs.append(_cubic_through(u, y_seg))
        halves.append(SatHalf(anchor, from_left, e_min, d_max, base))
        base += coefs[-1].shape[0]
    return SatSide(L, R, mid, kink_left, kink_right, tuple(halves), torch.cat(coefs))


def build_sat_table(div: Divergence, delta: float, solve) -> "Optional[SatTable]":
    """``solve``: float64 logp -> (log_lower, log_upper) by the float64 path, for this divergence and delta.
    None where a side's saturated set is not one interval at its end, or a node is not finite."""
    with torch.no_grad():
        lower, upper = _build_sat_side(div, delta, 0, solve), _build_sat_side(div, delta, 1, solve)
        if lower is None or upper is None:
            return None
        at_one = _lower_at_one(solve)
    return SatTable(lower, upper, at_one)


@_eager_only
def get_sat_table(div: Divergence, delta: float, device: torch.device, solve) -> "Optional[SatTable]":
    """The cached :class:`SatTable` (or None: no table) for (divergence, delta, device), built on the CPU."""
    return _cached((div, delta, "sat"), device, lambda: build_sat_table(div, delta, solve))


def _sat_side_ratio(side: SatSide, x: Tensor, sign: float) -> "tuple[Tensor, Tensor]":
    """(r, saturated) for float64 x = -old_logp in [0, SAT_X_MAX]: r = e^(sign·e^cubic), the side's ratio where
    unsaturated, and ``saturated`` as 0/1 float64. Selections by 0/1 arithmetic (exact: every operand is
    finite) instead of where, whose CPU kernel mispredicts a branch per element on these masks."""
    if side.coef is None:
        return torch.ones_like(x), torch.ones_like(x)
    d, off = None, None
    for h in side.halves:
        dh = (x - h.anchor) if h.from_left else (h.anchor - x)
        dh = torch.clamp(dh, 2.0**h.e_min, h.d_max)
        oh = h.base - ((1023 + h.e_min) << BITS_M)
        if d is None:
            d, off = dh, oh
        else:  # the second half (anchored at R) takes x from the midpoint on
            right = torch.ge(x, side.split, out=torch.empty_like(x))
            d = torch.sub(1.0, right).mul_(d).addcmul_(right, dh)
            off = torch.ge(x, side.split, out=torch.empty(x.shape, dtype=torch.int64, device=x.device)).mul_(oh - off).add_(off)
    bits = d.view(torch.int64)
    idx = torch.bitwise_right_shift(bits, _SAT_SHIFT).add_(off).reshape(-1)
    u = torch.bitwise_and(bits, (1 << _SAT_SHIFT) - 1).to(torch.float64).mul_(2.0**-_SAT_SHIFT)
    cols = side.cols
    y = cols[3].index_select(0, idx).view(x.shape)
    for k in (2, 1, 0):  # Horner, the same operations as on the rows
        y = torch.addcmul(cols[k].index_select(0, idx).view(x.shape), u, y)
    saturated = torch.zeros_like(x)
    if side.kink_left:
        saturated.add_(torch.le(x, side.L, out=torch.empty_like(x)))
    if side.kink_right:
        saturated.add_(torch.ge(x, side.R, out=torch.empty_like(x)))
    # e^(±e^y) as 2^(±2^(y log2 e) log2 e): torch's float64 exp2 is ~4x faster than its exp on the CPU
    ratio = y.mul_(_LOG2E).exp2_().mul_(sign * _LOG2E).exp2_()
    return ratio, saturated


def sat_band(
    table: SatTable, old_logp: Tensor, out: "Optional[tuple[Tensor, Tensor]]" = None
) -> "tuple[Tensor, Tensor]":
    """(lower, upper) in old_logp's dtype: one lookup per side, no iteration; exact 0 and 1/p beyond the
    kinks, the stored limit at p = 1, NaN where old_logp is not finite (sanitised before the lookup; ``pad``, 0 or
    NaN, is added at the end). ``out``: two flat tensors of old_logp's dtype to write into."""
    x = old_logp.detach().reshape(-1).to(torch.float64)
    pad = x - x  # 0 where old_logp is finite, NaN where it is ±inf or NaN
    x = torch.neg(x).nan_to_num_(nan=1.0).clamp_(0.0, SAT_X_MAX)  # ±inf -> the clamp; NaN -> any finite x
    r_lo, sat_lo = _sat_side_ratio(table.lower, x, -1.0)
    r_up, sat_up = _sat_side_ratio(table.upper, x, 1.0)
    inv_p = torch.exp(x)  # (torch's exp: the saturated upper bound is 1/p exactly as the float64 path gives it)
    lower = r_lo.mul_(torch.sub(1.0, sat_lo))  # 0 where saturated
    at_one = torch.eq(x, 0.0, out=torch.empty_like(x))
    lower = lower.mul_(torch.sub(1.0, at_one)).add_(at_one, alpha=table.lower_at_one)
    # 1/p where saturated: fmax skips the NaN of inf·0 (1/p overflows float64 beyond x = 709.8)
    upper = torch.fmax(torch.minimum(r_up, inv_p), inv_p.mul_(sat_up))
    if out is None:
        out = tuple(torch.empty(x.shape, dtype=old_logp.dtype, device=x.device) for _ in range(2))
    torch.add(lower, pad, out=out[0])  # float64, rounded once
    torch.add(upper, pad, out=out[1])
    return out[0].view(old_logp.shape), out[1].view(old_logp.shape)


# ----------------------------------------------------------------------------------------------------------
# Fixed-delta fast path of saturating divergences on the eager CPU: one lookup by the float32 bits of x
# ----------------------------------------------------------------------------------------------------------

# The kink table above resolves each root near its saturation kink (d / log(1/d) in the distance d) with one lookup
# per side, each with its own coordinate. On the eager CPU one index serves both sides instead, as in BitsTable:
# the float32 bits of x = -log p pick a coarse segment (2^BITS_M per binade), whose entry in ``info`` says where
# its rows start in the coefficient table and how many of the 2^_BITS_SHIFT float32 values of x in it each row
# covers (2^sh, sh <= _BITS_SHIFT): a smooth segment is one row, a segment next to a kink is cut into rows of 2^12,
# 2^9, 2^6, 2^3 values or single values (sh = 0: the value itself, no interpolation), whichever is the coarsest
# whose cubics all meet SAT_BITS_TOL at their midpoints. Each row stores, for both sides at once, the cubic of
# log2 r (one exp2 per side) through four nodes solved by the float64 path. Beyond a kink a row holds -inf (lower:
# 2^-inf = 0) or +inf (upper: 1/p by the minimum with 1/p), the saturated values. The index is read from the bits
# of x minus one, so that x = 0 (p = 1, the most common float32 log-probability of a confident token) gets a row
# of its own; a row of 2^sh values then covers (x_0, x_0 + 2^sh ulp], its position in it is
# v = (u + 1)·2^-sh with u the low sh bits of (bits - 1) & (2^_BITS_SHIFT - 1). 0 < x < 2^X_MIN_EXP (denormal or
# tiny log-probabilities) and segments that no level resolves give an infinite lower bound, and those elements are
# recomputed by the caller (band: sat_band of the kink table, which is built only then: this table needs only the
# saturated sets, and the kink table's coefficients would cost more than the rest of its build).
SAT_BITS_TOL = 2.0**-32
"""Largest |Δ log2 r| of a kept row's cubic at its midpoint (a relative error of r of 2^-32 ln 2, ~1/260 of a float32
ulp; the interpolation error of a cubic through v = -1, 0, 1, 2 is largest on [0, 1] at v = 1/2), plus 2^-40 |log2 r|
for the rounding of the evaluation where |log2 r| is large."""
SB_MIN_EXP = -126  # the table covers x from the smallest normal float32 up; denormal x is marked
SB_KEY_BITS = 12  # float32 mantissa bits below a coarse segment's index: 2^11 coarse segments per binade
_SB_BINADES = X_MAX_EXP - SB_MIN_EXP
_SB_PER_BINADE = 1 << (23 - SB_KEY_BITS)  # coarse segments per binade
_SB_SEGMENTS = _SB_BINADES * _SB_PER_BINADE
# info is indexed by (bits(x) - 1 >> SB_KEY_BITS) + 1: entry 0 is x = 0 (bits - 1 = -1), then _SB_DENORMAL entries of
# denormal x (marked), then the segments
_SB_DENORMAL = _SB_PER_BINADE
_SB_LEVELS = (23, 19, 15, 12, 9, 6, 3, 0)  # row widths tried (log2 of float32 values per row): a binade, 2^19, ...
_SB_MAX_SINGLE = 16  # coarse segments tabulated value by value (2^SB_KEY_BITS rows each); further ones are marked
_SB_MARKED_ROW, _SB_ZERO_ROW = 0, 1  # rows of the coefficient table: lower = 2^inf (marked), and x = 0
_SB_INVALID = 1e-40  # the x of a NaN or infinite old_logp: denormal, so its row is marked


@dataclass(frozen=True)
class SatBitsTable:
    """``info``: (1 + _SB_DENORMAL + _SB_SEGMENTS,) int32, row0 · 32 + sh per coarse segment (row0 the row of
    position 0 of the segment's binade at that width, so row = row0 + (position in the binade >> sh)); ``pairs``:
    (4, n_rows) complex128, coefficient k of the cubics (lower, upper) of log2 r in the position u within a row
    (:func:`sat_bits_band`); ``marked``: how many segments are marked besides denormal x (their elements, like
    denormal and invalid ones, are recomputed by the caller's ``redo``: the kink table)."""

    info: Tensor
    pairs: Tensor
    marked: int


def _sat_bits_nodes(x0: Tensor, w: Tensor) -> "tuple[Tensor, Tensor]":
    """(nodes, where): the distinct float64 x of rows (x0, w) at v = -1, 0, 1, 2 (x0 + v·w) and their midpoints
    v = 1/2, and (n, 5) indices of each row's five nodes (v = -1, 0, 1, 2, 1/2) in ``nodes``. A row that starts where
    the one before it ends, with its width, shares the previous row's nodes v = 0, 1, 2 as its v = -1, 0, 1 (every
    node is a float32 value or a midpoint between two: exact in float64, so shared nodes are equal values); the other
    rows get all four. A node that two rows share otherwise is listed twice: the solve is elementwise, so the values are
    the same either way."""
    n = x0.numel()
    joined = torch.zeros(n, dtype=torch.bool)
    joined[1:] = (x0[1:] == x0[:-1] + w[:-1]) & (w[1:] == w[:-1])
    new = torch.where(joined, 1, 4)
    last = torch.cumsum(new, 0) - 1  # the index of each row's node v = 2
    lattice = torch.empty(int(last[-1]) + 1 if n else 0, dtype=torch.float64)
    lattice[last] = x0 + 2 * w
    first = ~joined
    for k in (1, 2, 3):  # v = 1, 0, -1 of the rows that share nothing
        lattice[last[first] - k] = x0[first] + (2 - k) * w[first]
    where = torch.stack((last - 3, last - 2, last - 1, last, lattice.numel() + torch.arange(n)), dim=1)
    return torch.cat((lattice, x0 + 0.5 * w)), where


def _sat_bits_rows(
    shapes: "tuple[SatShape, SatShape]", solve, x0: Tensor, w: Tensor, sh: int
) -> "tuple[Tensor, Tensor, Tensor]":
    """Rows covering (x0, x0 + w] (w = 2^sh float32 ulps): (lower (n, 4), upper (n, 4), ok (n,)), coefficients in u.
    ``shapes``: the saturated sets of (lower, upper)."""
    def saturate(y: Tensor, side: SatShape, lower: bool, at_most: Tensor, at_least: Tensor) -> "tuple[Tensor, Tensor]":
        """(y, saturated): y with the saturated rows replaced, lower: -inf (2^-inf = 0); upper: log2(1/p) =
        x log2(e), x = x0 + (u + 1)·ulp, which is linear in u."""
        if side.always:
            saturated = torch.ones(y.shape[0], dtype=torch.bool)
        else:
            saturated = torch.zeros(y.shape[0], dtype=torch.bool)
            if side.kink_left:  # saturated for x <= L
                saturated |= at_most <= side.L
            if side.kink_right:  # saturated for x >= R
                saturated |= at_least >= side.R
        if lower:
            y[saturated] = torch.tensor([-math.inf, 0.0, 0.0, 0.0], dtype=torch.float64)
        else:
            one_ulp = w * 2.0**-sh
            inv_p = torch.stack(((x0 + one_ulp) * _LOG2E, one_ulp * _LOG2E, 0 * w, 0 * w), dim=1)
            y[saturated] = inv_p[saturated]
        return y, saturated

    sides = ((shapes[0], True), (shapes[1], False))
    if sh == 0:  # the value at x0 + w itself
        x = x0 + w
        with torch.no_grad():
            logs = solve(-x)
        out = []
        for (side, lower), logr in zip(sides, logs):
            y = torch.zeros(x.numel(), 4, dtype=torch.float64)
            y[:, 0] = logr * _LOG2E
            out.append(saturate(y, side, lower, x, x)[0])
        ok = ~torch.isnan(out[0][:, 0]) & ~torch.isnan(out[1][:, 0])
        return out[0], out[1], ok
    nodes, where = _sat_bits_nodes(x0, w)
    with torch.no_grad():
        logs = tuple(t[where] for t in solve(-nodes))  # (n, 5) each: v = -1, 0, 1, 2, 1/2
    s = 2.0**-sh
    m_mid = 2.0 ** (sh - 1) - 1.0  # v = 1/2
    out, ok_all = [], None
    for (side, lower), logr in zip(sides, logs):
        ym1, y0, y1, y2, ymid = (logr * _LOG2E).unbind(1)
        c0, c1 = y0, -ym1 / 3 - y0 / 2 + y1 - y2 / 6
        c2, c3 = ym1 / 2 - y0 + y1 / 2, -ym1 / 6 + y0 / 2 - y1 / 2 + y2 / 6
        # in u, with v = (u + 1)·s: d_i = Σ_{k >= i} C(k, i) c_k s^k
        d = torch.stack((c0 + s * (c1 + s * (c2 + s * c3)), s * (c1 + s * (2 * c2 + s * 3 * c3)),
                         s * s * (c2 + s * 3 * c3), s**3 * c3), dim=1)
        at_mid = d[:, 0] + m_mid * (d[:, 1] + m_mid * (d[:, 2] + m_mid * d[:, 3]))
        ok = torch.isfinite(d).all(1) & ((at_mid - ymid).abs() <= SAT_BITS_TOL + 2.0**-40 * ymid.abs())
        if not side.always:  # no node beyond a kink
            if side.kink_left:
                ok &= x0 - w > side.L
            if side.kink_right:
                ok &= x0 + 2 * w < side.R
        d, saturated = saturate(d, side, lower, x0 + w, x0)
        out.append(d)
        ok = ok | saturated
        ok_all = ok if ok_all is None else ok_all & ok
    return out[0], out[1], ok_all


def build_sat_bits_table(shapes: "tuple[SatShape, SatShape]", lower_at_one: float, solve) -> SatBitsTable:
    """``shapes``: the saturated sets of (lower, upper) (:func:`_sat_shape`); ``lower_at_one``: the lower ratio at
    p = 1; ``solve``: float64 logp -> (log_lower, log_upper) by the float64 path. Each binade is tried as one row,
    the units (binades, blocks, segments) that fail in blocks of 2^19, then 2^15 values, then each coarse segment still
    unserved (2^SB_KEY_BITS values) at the finer widths of _SB_LEVELS; a row: nodes at v = -1, 0, 1, 2 and a check at
    v = 1/2 (five solves, nodes shared between neighbouring rows solved once), or the value itself (sh = 0). The width
    is the same in a unit. Only the units tried are computed on (never every segment per level); ``info`` is
    written once at the end, each unit's entry repeated over its segments."""
    firsts = torch.arange(_SB_BINADES) * _SB_PER_BINADE  # the first segment of each unit to try
    unit = _SB_PER_BINADE  # segments per unit
    groups = []  # (the units' first segments, their info entries), per level
    rows_lo, rows_up = [], []
    base = 2  # rows 0 and 1: _SB_MARKED_ROW, _SB_ZERO_ROW
    for sh in _SB_LEVELS:
        if firsts.numel() == 0 or (sh == 0 and firsts.numel() * unit > _SB_MAX_SINGLE):
            break
        level_unit = 1 << max(sh - SB_KEY_BITS, 0)  # segments per unit at this width
        if level_unit < unit:  # the failed units, cut into this width's units
            firsts = (firsts[:, None] + torch.arange(0, unit, level_unit)).reshape(-1)
            unit = level_unit
        per = 1 << max(SB_KEY_BITS - sh, 0)  # rows per unit
        e = (firsts // _SB_PER_BINADE).to(torch.float64) + SB_MIN_EXP
        ulp = torch.exp2(e - 23)  # float32 spacing in the unit's binade
        start = torch.exp2(e) + (firsts % _SB_PER_BINADE).to(torch.float64) * ulp * 2**SB_KEY_BITS
        w = ulp * 2.0**sh
        x0 = (start[:, None] + torch.arange(per, dtype=torch.float64) * w[:, None]).reshape(-1)
        lo, up, ok = _sat_bits_rows(shapes, solve, x0, w[:, None].expand(-1, per).reshape(-1), sh)
        good = ok.view(-1, per).all(1)
        rows = good[:, None].expand(-1, per).reshape(-1)
        rows_lo.append(lo[rows])
        rows_up.append(up[rows])
        kept = firsts[good]
        # row = row0 + (position in the binade >> sh), so row0 = (the unit's first row) - (its first position >> sh)
        row_first = base + per * torch.arange(kept.numel())
        pos0 = (kept % _SB_PER_BINADE) << SB_KEY_BITS
        groups.append((kept, (row_first - (pos0 >> sh)) * 32 + sh))
        base += per * kept.numel()
        firsts = firsts[~good]
    # the rest is marked: each unit's segments read the marked row (row 0 + (position >> 23) = 0)
    groups.append((firsts, torch.full_like(firsts, _SB_MARKED_ROW * 32 + 23)))
    marked = firsts.numel() * unit
    starts = torch.cat([g[0] for g in groups])
    order = torch.argsort(starts)
    starts = starts[order]
    sizes = torch.diff(starts, append=torch.tensor([_SB_SEGMENTS]))  # the units partition the segments
    seg_info = torch.cat([g[1] for g in groups])[order].repeat_interleave(sizes)
    special = torch.zeros(2, 4, dtype=torch.float64)
    special_up = torch.zeros(2, 4, dtype=torch.float64)
    special[_SB_MARKED_ROW, 0] = special_up[_SB_MARKED_ROW, 0] = math.inf
    # x = 0: the stored p -> 1 limit, and 1/p = 1 (2^0)
    special[_SB_ZERO_ROW, 0] = math.log2(lower_at_one) if lower_at_one > 0 else -math.inf
    lower = torch.cat([special] + rows_lo)
    upper = torch.cat([special_up] + rows_up)
    info = torch.cat((torch.tensor([_SB_ZERO_ROW * 32 + 23]), torch.full((_SB_DENORMAL,), _SB_MARKED_ROW * 32 + 23),
                      seg_info))
    pairs = torch.view_as_complex(torch.stack((lower, upper), dim=2).permute(1, 0, 2).contiguous())
    return SatBitsTable(info.to(torch.int32), pairs, marked)


@_eager_only
def get_sat_bits_table(div: Divergence, delta: float, solve) -> "Optional[SatBitsTable]":
    """The cached :class:`SatBitsTable` for (divergence, delta) on the CPU, or None where a side's saturated set is
    not one interval at its end (as for the kink table). Built from the saturated sets and ``solve`` alone: the kink
    table's coefficients, which only marked, denormal and invalid elements need, are not built here."""
    def build() -> "Optional[SatBitsTable]":
        shapes = (_sat_shape(div, delta, 0), _sat_shape(div, delta, 1))
        if shapes[0] is None or shapes[1] is None:
            return None
        with torch.no_grad():
            return build_sat_bits_table(shapes, _lower_at_one(solve), solve)

    return _cached((div, delta, "satbits"), torch.device("cpu"), build)


def sat_bits_band(
    table: SatBitsTable, old_logp: Tensor, redo, out: "Optional[tuple[Tensor, Tensor]]" = None
) -> "tuple[Tensor, Tensor]":
    """(lower, upper) in old_logp's (float32/16) dtype on the CPU, eager: one lookup of both sides by the float32
    bits of x = -old_logp (see SatBitsTable); marked, denormal and invalid elements recomputed by ``redo`` (their
    old_logp -> (lower, upper) in its dtype, NaN where not finite: :func:`sat_band` of the kink table). ``out``: two
    flat tensors to write into."""
    x = torch.sub(0.0, old_logp.detach().reshape(-1).to(torch.float32))  # -old_logp, and +0 (not -0) at p = 1
    # NaN and ±inf -> a denormal x, whose row is marked: redo gives them NaN
    x = x.nan_to_num_(nan=_SB_INVALID, posinf=_SB_INVALID, neginf=_SB_INVALID).clamp_(0.0, _X_MAX)
    b1 = x.view(torch.int32).sub(1)  # x = 0 -> -1
    info = table.info.index_select(0, torch.bitwise_right_shift(b1, SB_KEY_BITS).add_(1))
    sh = torch.bitwise_and(info, 31)
    pos = b1.bitwise_and_((1 << 23) - 1)  # the position in the binade
    q = torch.bitwise_right_shift(pos, sh)
    row = info.bitwise_right_shift_(5).add_(q)
    u = pos.sub_(q.bitwise_left_shift_(sh)).to(torch.float64)
    u = torch.view_as_real(torch.complex(u, u))  # (n, 2)
    y = _gather_pairs(table.pairs, 3, row)
    for k in (2, 1, 0):  # Horner, in place on the gathered coefficients: log2 of (lower, upper)
        y = _gather_pairs(table.pairs, k, row).addcmul_(u, y)
    ratio = y.exp2_()
    n = x.numel()
    if out is None:
        out = tuple(torch.empty(n, dtype=old_logp.dtype, device=x.device) for _ in range(2))
    out[0].copy_(ratio[:, 0])  # float64, rounded once
    out[1].copy_(ratio[:, 1])
    if table.marked or int(row.min()) == _SB_MARKED_ROW:  # marked segments, or a denormal or invalid x
        redo_at = torch.isinf(out[0]).nonzero().view(-1)  # a lower bound is never inf otherwise
        if redo_at.numel():
            lo, up = redo(old_logp.detach().reshape(-1).index_select(0, redo_at))
            out[0].index_copy_(0, redo_at, lo)
            out[1].index_copy_(0, redo_at, up)
    return out[0].view(old_logp.shape), out[1].view(old_logp.shape)
