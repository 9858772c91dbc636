"""Tier 2: the vectorized Band operator against simple scalar versions, and its paths against each other.

* ``scalar_band``: a deliberately plain per-element solver (Python floats, the textbook g_f(p, r) as
  written, 200 bisection steps on each side). It is accurate to ~1e-12 only where p is moderate, so it is
  compared there, at tolerance 1e-9 (its own rounding in g, not bandpo's, sets that).
* closed forms (tv, chi2, hellinger) against the generic solver fed only the generator f;
* the tabulated path (start table + Newton, what ``band`` runs) against the table-free solvers
  (``bandpo.operator.bands._reference_log_band``: KL's bracketed Newton, the robust bisection + Newton).
"""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo.operator.numerics import log1mexp
from bandpo.operator.bands import _reference_log_band, generic_log_band


def reference_band(logp, delta, name):
    """float64 ratio bounds by the table-free solvers."""
    return tuple(torch.exp(t) for t in _reference_log_band(logp.double(), delta, name))

SCALAR_F = {
    "kl": lambda u: math.inf if u == 0 else -math.log(u),
    "reverse_kl": lambda u: 0.0 if u == 0 else u * math.log(u),
    "tv": lambda u: abs(u - 1) / 2,
    "chi2": lambda u: (u - 1) ** 2,
    "neyman_chi2": lambda u: math.inf if u == 0 else (u - 1) ** 2 / u,
    "hellinger": lambda u: (math.sqrt(u) - 1) ** 2,
    "js": lambda u: 0.5 * ((0.0 if u == 0 else u * math.log(u)) - (u + 1) * math.log((u + 1) / 2)),
}


def scalar_band(name: str, p: float, delta: float) -> tuple[float, float]:
    """Bisection on g_f(p, r) = p f(r) + (1-p) f((1-p r)/(1-p)) over [0, 1] and [1, 1/p], per element."""
    f = SCALAR_F[name]

    def g(r):
        return p * f(r) + (1 - p) * f(max((1 - p * r) / (1 - p), 0.0))

    lo, hi = 0.0, 1.0  # g decreasing on [0, 1]
    if g(0.0) <= delta:
        lower = 0.0
    else:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if g(mid) > delta else (lo, mid)
        lower = 0.5 * (lo + hi)
    lo, hi = 1.0, 1.0 / p  # g increasing on [1, 1/p]
    if g(1.0 / p) <= delta:
        upper = 1.0 / p
    else:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if g(mid) <= delta else (lo, mid)
        upper = 0.5 * (lo + hi)
    return lower, upper


@pytest.mark.parametrize("name", sorted(SCALAR_F))
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.2])
def test_vectorized_matches_scalar_reference(name, delta):
    gen = torch.Generator().manual_seed(1234)
    p = torch.exp(-8 * torch.rand(150, generator=gen, dtype=torch.float64))  # p in (3e-4, 1)
    p = p[p < 0.999]
    lower, upper = bandpo.band(torch.log(p), delta, name)
    ref = torch.tensor([scalar_band(name, float(x), delta) for x in p], dtype=torch.float64)
    for got, exp in ((lower, ref[:, 0]), (upper, ref[:, 1])):
        assert torch.allclose(got, exp, rtol=1e-9, atol=1e-12), (got - exp).abs().max()


@pytest.mark.parametrize("name", ["tv", "chi2", "hellinger"])
@pytest.mark.parametrize("delta", [1e-4, 0.01, 0.05, 0.3, 1.0, 1.9])
def test_closed_forms_match_generic_solver(name, delta):
    """Generic path accuracy needs f(1/p) finite: p in [1e-150, 1 - 1e-150]."""
    logp = torch.cat([
        -torch.logspace(-12, math.log10(345), 400, dtype=torch.float64),
        torch.log1p(-torch.logspace(-12, -1, 50, dtype=torch.float64)),
    ])
    div = bandpo.get_divergence(name)
    closed = div.log_band(logp, log1mexp(logp), torch.full_like(logp, delta))
    generic = generic_log_band(div, logp, log1mexp(logp), torch.full_like(logp, delta))
    for c, g in zip(closed, generic):
        assert torch.equal(torch.isinf(c), torch.isinf(g))
        fin = torch.isfinite(c)
        err = (c[fin] - g[fin]).abs()  # = relative error of the ratio
        assert (err <= 1e-10).all(), f"max |Δ log r| = {err.max():.3g}"


@pytest.mark.parametrize("name", ["kl", "neyman_chi2", "reverse_kl"])
@pytest.mark.parametrize("delta", [1e-4, 0.05, 0.7])
def test_table_path_matches_solver_path(name, delta):
    """float64: table start + Newton (the public path) equals the table-free solver to 4e-15, with the same
    saturation. For reverse_kl the
    points within 1% of its kinks (x = -log p = -log(1 - e^-delta) and delta, derived by hand) are left to
    test_band_reference.py, which allows for the condition number there (both paths differ by up to 2.5e-14
    next to a kink); js likewise (at delta = 1e-4 both paths sit ~1e-12 from the reference near its kink)."""
    logp = torch.cat([
        -torch.logspace(-14, math.log10(700), 2000, dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
    ])
    a = bandpo.log_band(logp, delta, name)
    b = _reference_log_band(logp, delta, name)
    for x, y in zip(a, b):
        assert torch.equal(x == -math.inf, y == -math.inf) and torch.equal(x == -logp, y == -logp)  # saturation
        fin = torch.isfinite(y)
        if name == "reverse_kl":
            for kink in (-math.log(-math.expm1(-delta)), delta):
                fin &= ((-logp - kink).abs() > 0.05 * kink)
        x, y = x[fin], y[fin]
        assert ((x - y).abs() <= 4e-15 * torch.clamp(y.abs(), min=1.0)).all(), (x - y).abs().max()


def test_tensor_delta_matches_scalar_delta():
    logp = torch.log(torch.linspace(1e-4, 1, 64, dtype=torch.float64))
    deltas = torch.tensor([0.01, 0.05, 0.2, 1.0], dtype=torch.float64)
    for name in bandpo.list_divergences():
        lo, up = bandpo.band(logp.expand(4, 64), deltas[:, None], name)
        for i, d in enumerate(deltas.tolist()):
            lo1, up1 = bandpo.band(logp, d, name)
            assert torch.allclose(lo[i], lo1, rtol=1e-13, atol=0) and torch.allclose(up[i], up1, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_multidim_tensor_delta_matches_the_flat_call(dtype):
    """A (B, T) input with a per-token or per-row tensor delta (fewer elements than one chunk, so the
    operator sees the 2-D shape) gives bitwise the flat call's bounds, for every divergence. (The saturated-side
    skip of the float32 path once expanded delta as 1-D: a RuntimeError for js and reverse_kl.)"""
    g = torch.Generator().manual_seed(11)
    x = (-25 * torch.rand(6, 7, generator=g, dtype=torch.float64) ** 3).to(dtype)
    for delta in (torch.exp(torch.empty(6, 7).uniform_(-6, 0, generator=g)), torch.full((6, 1), 0.05)):
        flat_d = delta.expand(6, 7).reshape(-1)
        for name in bandpo.list_divergences():
            lo, up = bandpo.band(x, delta, name)
            lo1, up1 = bandpo.band(x.reshape(-1), flat_d, name)
            assert lo.shape == x.shape and up.shape == x.shape, name
            assert torch.equal(lo.reshape(-1), lo1) and torch.equal(up.reshape(-1), up1), (name, dtype)


def test_shape_dtype_device_and_no_grad():
    x = torch.log(torch.rand(3, 5, 7, dtype=torch.float32).clamp(min=1e-6)).requires_grad_(True)
    lo, up = bandpo.band(x, 0.05)
    assert lo.shape == up.shape == x.shape and lo.dtype == up.dtype == torch.float32 and lo.device == x.device
    assert not lo.requires_grad and not up.requires_grad
    for dtype in (torch.float16, torch.bfloat16):
        lo, up = bandpo.band(x.detach().to(dtype), 0.05)
        assert lo.dtype == dtype and torch.isfinite(lo).all()
    empty = bandpo.band(torch.zeros(0, 4), 0.05)
    assert empty[0].shape == (0, 4)
    scalar = bandpo.band(torch.tensor(math.log(0.08)), 0.05)
    assert scalar[0].shape == () and abs(float(scalar[1]) - 2.410553793757364) < 1e-6


def test_p_equal_one_is_the_documented_limit():
    zero = torch.zeros(1, dtype=torch.float64)
    d = 0.05
    expected_lower = {
        "kl": math.exp(-d), "tv": 1 - d, "chi2": 1.0, "hellinger": (1 - d / 2) ** 2,
        "neyman_chi2": 1 / (1 + d), "reverse_kl": 1.0,
    }
    for name, exp in expected_lower.items():
        lo, up = bandpo.band(zero, d, name)
        assert float(up) == 1.0
        assert abs(float(lo) - exp) <= 1e-15, (name, float(lo), exp)


@pytest.mark.parametrize("name, tol", [("kl", 1e-4), ("reverse_kl", 2e-5), ("js", 2e-5), ("neyman_chi2", 3e-5)])
def test_fine_start_table_follows_the_bicubic(name, tol):
    """The fine table of the float32 per-token path (cubic in ζ, linear in τ on a finer τ grid) equals the
    bicubic start table at its τ nodes up to float32 rounding (<= 1e-6), and differs from it between them by at
    most the linear interpolation error its step tolerates (tol in log s*; measured max 6.6e-5 for kl at
    FINE_HALLEY, 9.7e-6 to 2.0e-5 for the Newton-finished generators at FINE_NEWTON), inside and beyond the τ
    range (both extrapolate with the same slopes)."""
    from bandpo.operator import bands, tables

    div = bandpo.get_divergence(name)
    cpu = torch.device("cpu")
    start, fine = tables.get_start_table(div, cpu), bands._fine_table(div, cpu)
    g = torch.Generator().manual_seed(3)
    # ζ of z = logit(a) >= -600: below, a saturating divergence's nodes at τ << 0 stand for a delta under 1e-260
    # (flattened at the smallest normal float64: the two tables differ there by up to 4.4e-5, measured)
    zeta_min = -tables.WARP_C * math.asinh(600 / tables.WARP_C) if start.saturating else -tables.ZETA_MAX
    zeta = zeta_min + (tables.ZETA_MAX - zeta_min) * torch.rand(1 << 16, generator=g)
    t1 = start.tau0 + tables.H_TAU * (start.n_tau - 1)
    tau = start.tau0 - 3 + (t1 - start.tau0 + 6) * torch.rand(1 << 16, generator=g)
    nodes = start.tau0 + fine.h_tau * torch.randint(0, fine.n_fine, (1 << 16,), generator=g).float()
    for t, bound in ((tau, tol), (nodes, 1e-6)):  # at the nodes: measured <= 1.4e-7 (float32 rounding)
        a = tables.lookup_start32(start, zeta.clone(), tables.tau_coords(start, t))
        b = tables.lookup_fine32(fine, zeta.clone(), tables.fine_tau_coords(fine, t))
        scale = a.abs().clamp(min=1.0)  # float32 rounding of the polynomials: relative where |log s*| > 1
        assert ((a - b).abs() / scale).max() <= bound, (name, ((a - b).abs() / scale).max().item())


def _float32_ulps_off(f32: torch.Tensor, ref: torch.Tensor, logp: torch.Tensor, side: int, name: str) -> torch.Tensor:
    """|f32 - ref| in float32 ulps of ref where ref is a normal float32 number; the lower side (side 0) of js
    and reverse_kl only for p > 1e-6 (the float32 per-token path's known limit near their kink at tiny delta)."""
    checked = torch.ones_like(logp, dtype=torch.bool)
    if side == 0 and name in ("reverse_kl", "js"):
        checked = logp > math.log(1e-6)
    r = ref[checked]
    normal = (r > torch.finfo(torch.float32).tiny) & (r < torch.finfo(torch.float32).max)
    return (f32[checked].double() - r).abs()[normal] / (torch.finfo(torch.float32).eps * r[normal])


@pytest.mark.parametrize("name", ["kl", "neyman_chi2", "reverse_kl", "js"])
def test_tiny_deltas_for_rare_tokens(name):
    """delta from 1e-15 to 1e-9 with p from 1e-300 to 1 - 1e-9: the float64 ratios within 1e-12 of the
    table-free solver's and the float32 per-token path within 1 ulp of them. The start table once stopped at
    τ = -28 (delta = 7e-13) and extrapolated with the small-delta slope, which holds only once delta is small
    against the side's mass: kl's log_band was 18% off at delta = 1e-14, reverse_kl's float32 upper bound 14%;
    and log(1 - p) was accurate only to an absolute 1e-16, which moved the lower-side saturation kink
    delta = φ(∞) ≈ p of rare tokens (now log1mexp on the float64 path). The float32 per-token path keeps the
    cheaper log(1 - p): for js and reverse_kl its lower side is checked for p > 1e-6 (within ~1e-16/p of
    that kink it can be off by more)."""
    g = torch.Generator().manual_seed(2)
    n = 4000
    logp = -torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-9), math.log(690), generator=g))
    logp = logp.float().double()  # the same p on the float32 path
    delta = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-15), math.log(1e-9), generator=g))
    delta = delta.float().double()
    ref = [torch.exp(t) for t in _reference_log_band(logp, delta, name)]
    f64 = [torch.exp(t) for t in bandpo.log_band(logp, delta, name)]
    f32 = bandpo.band(logp.float(), delta.float(), name)
    for side in (0, 1):
        rel = ((f64[side] - ref[side]).abs() / ref[side]).nan_to_num(0.0)  # 0/0 where both are 0
        assert rel.max() <= 1e-12, (name, side, rel.max().item())
        ulp = _float32_ulps_off(f32[side], ref[side], logp, side, name)
        assert ulp.max() <= 1.0, (name, side, ulp.max().item())


@pytest.mark.parametrize("name", ["kl", "neyman_chi2", "reverse_kl", "js"])
def test_small_python_deltas_float32_within_one_ulp(name):
    """A Python delta below TABLE_DELTA_MIN (1e-5) takes the per-token path instead of the per-delta float32
    tables, which were off by up to 3 ulps (kl's bits table at 3e-6) and thousands at 1e-13 (kink tables):
    within 1 ulp of the table-free float64 solver at 3e-6, 1e-9 and 1e-13, p from 1e-300 to 1 (lower side of
    js and reverse_kl for p > 1e-6, as in test_tiny_deltas_for_rare_tokens); at 1e-5 the tables still serve."""
    from bandpo.operator.bands import TABLE_DELTA_MIN

    g = torch.Generator().manual_seed(4)
    logp = -torch.exp(torch.empty(20000, dtype=torch.float64).uniform_(math.log(1e-12), math.log(690), generator=g))
    logp = logp.float().double()
    assert TABLE_DELTA_MIN == 1e-5
    for delta in (1e-5, 3e-6, 1e-9, 1e-13):
        ref = [torch.exp(t) for t in _reference_log_band(logp, delta, name)]
        f32 = bandpo.band(logp.float(), delta, name)
        for side in (0, 1):
            ulp = _float32_ulps_off(f32[side], ref[side], logp, side, name)
            assert ulp.max() <= 1.0, (name, delta, side, ulp.max().item())


def test_kl_lower_bound_is_zero_where_its_log_overflows():
    """KL at p below the smallest normal float64 (masses clamped to a = 2^-1022): the lower bound's log is
    -(delta/a + ~1), beyond float64 for delta >~ 4, so the bound is 0 (and its log -inf or ~-1e308), on every
    path. (The start table's nodes there used to hold 0, a start of s = 1, which gave e^-1 instead.)"""
    logp = torch.tensor([-1000.0, -727.25, -717.0, -710.0, -708.5], dtype=torch.float64)
    for d in (2.5, 4.5, 7.25, 20.0):
        log_lo, _ = bandpo.log_band(logp, d, "kl")
        if math.isfinite(d * 2.0**1022):  # representable: -delta/a to 1e-12 relative (the +1 is below its ulp)
            assert torch.allclose(log_lo, torch.full_like(log_lo, -d * 2.0**1022), rtol=1e-12, atol=0.0), (d, log_lo)
        else:
            assert (log_lo == -math.inf).all(), (d, log_lo)
        for delta in (d, torch.full((logp.numel(),), d)):  # the per-delta bits table, the per-token path
            lo, up = bandpo.band(logp.float(), delta, "kl")
            assert (lo == 0).all(), (d, lo)
            assert torch.isfinite(up).all() or (up == math.inf).all()


@pytest.mark.parametrize(
    "name",
    ["kl", "tv", "reverse_kl"] + [pytest.param(n, marks=pytest.mark.slow) for n in ("chi2", "hellinger", "js", "neyman_chi2")],
)
def test_torch_compile_matches_eager(name):
    """The start table is built outside the graph (a deliberate graph break on the first call), the lookup
    and Newton steps run compiled; tv is a closed form. Both calls match eager."""
    pytest.importorskip("torch._dynamo")
    logp = torch.log(torch.rand(257, dtype=torch.float32).clamp(min=1e-7))
    delta = 0.0517  # a delta no other test has used: the first call really is the first
    fn = torch.compile(lambda x: bandpo.band(x, delta, name, validate=False), dynamic=False, fullgraph=False)
    lo0, up0 = bandpo.band(logp, delta, name)
    for _ in range(2):
        lo, up = fn(logp)
        assert torch.allclose(lo, lo0, rtol=1e-6, atol=0) and torch.allclose(up, up0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["kl", "neyman_chi2", "reverse_kl", "js"])
@pytest.mark.parametrize("delta", [1e-4, 0.05, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_table_path_is_the_float64_answer_rounded(name, delta, dtype):
    """float32/16 inputs take the table start and NEWTON_STEPS_LOWP Newton steps: <= 1 ulp from the
    table-free float64 solver's answer, within one subnormal spacing where it underflows, the same inf where
    it overflows, and exactly 1 = upper at p = 1. kl and neyman_chi2 never saturate; reverse_kl and js
    saturate (exact 0 and 1/p beyond their kinks; js at delta = 1 exceeds its maximum log 2 on the lower
    side, which is then always saturated)."""
    g = torch.Generator().manual_seed(7)
    logp = torch.cat([
        -torch.logspace(-9, 2.5, 4000, dtype=torch.float64),
        -100 * torch.rand(4000, generator=g, dtype=torch.float64),
        torch.tensor([0.0, -1e-40, -1e30], dtype=torch.float64),
    ]).to(dtype)
    lo, up = bandpo.band(logp, delta, name)
    lo64, up64 = reference_band(logp, delta, name)
    assert lo.dtype == up.dtype == dtype
    eps = torch.finfo(dtype).eps
    for a, b in ((lo, lo64), (up, up64)):
        b_r = b.to(dtype)
        normal = (b_r.abs() >= torch.finfo(dtype).tiny) & torch.isfinite(b_r)
        err = ((a.double() - b_r.double()).abs() / (eps * b_r.double().abs()))[normal]
        assert err.numel() == 0 or err.max() <= 1.0, f"{err.max():.3g} ulp"  # js, delta 1: lower all 0
        sub = ~normal & torch.isfinite(b_r)  # subnormal or 0: one subnormal spacing
        assert ((a[sub].double() - b_r[sub].double()).abs() <= torch.finfo(dtype).tiny * eps).all()
        assert torch.equal(a[~torch.isfinite(b_r)], b_r[~torch.isfinite(b_r)])
    assert float(up[-3]) == 1.0


@pytest.mark.parametrize("name", ["kl", "tv", "js"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_inputs_are_processed_in_chunks_with_identical_results(name, dtype):
    """Inputs above bandpo.operator.bands.CHUNK elements go through the chunked CPU path: same values as per-row calls,
    for a non-contiguous (transposed) 2-D input, in band and log_band."""
    import importlib

    chunk = importlib.import_module("bandpo.operator.bands").CHUNK
    g = torch.Generator().manual_seed(3)
    x = torch.log(torch.rand(64, chunk // 16, generator=g, dtype=dtype).clamp(min=1e-6)).t()  # (T, B) view
    assert x.numel() > chunk and not x.is_contiguous()
    for fn in (bandpo.band, bandpo.log_band):
        lo, up = fn(x, 0.05, name)
        assert lo.shape == x.shape
        for j in (0, 17, 63):
            lo_j, up_j = fn(x[:, j].contiguous(), 0.05, name)
            assert torch.equal(lo[:, j], lo_j) and torch.equal(up[:, j], up_j)


@pytest.mark.parametrize("delta", [1e-3, 0.05, 0.5])
def test_saturating_table_near_the_kinks(delta):
    """reverse_kl (f = u log u) saturates where the whole shrinking mass can go: the lower bound is 0 iff
    -log(1-p) <= delta and the upper bound is 1/p iff -log p <= delta (φ(∞) = -log b, derived by hand and
    independent of the code's own saturation test). At relative distances 1e-6..1e-1 from each kink the
    float32 result agrees with the table-free float64 solver to 2 ulps, and beyond the kinks it is exactly 0
    and 1/p.
    (Closer than ~1e-7 the float64 solver itself loses digits: the problem's condition number grows like
    1/distance, see test_band_reference.py.)"""
    kinks = {"lower": -math.log(-math.expm1(-delta)), "upper": delta}  # in x = -log p
    rel = torch.logspace(-6, -1, 200, dtype=torch.float64)
    for side, X in kinks.items():
        x = torch.cat([X * (1 - rel), X * (1 + rel)])
        logp = (-x).to(torch.float32)
        lo, up = bandpo.band(logp, delta, "reverse_kl")
        lo64, up64 = reference_band(logp, delta, "reverse_kl")
        a, b = (lo, lo64) if side == "lower" else (up, up64)
        xs = -logp.double()
        saturated = xs >= X if side == "lower" else xs <= X
        expected_sat = torch.zeros_like(b) if side == "lower" else torch.exp(xs)
        assert torch.equal(a[saturated], expected_sat[saturated].float())
        b32 = b[~saturated].float()
        ulp = torch.finfo(torch.float32).eps * b32.abs()
        assert ((a[~saturated] - b32).abs() <= 2 * ulp).all(), side


def test_user_generator_with_finite_f0_gets_the_saturating_table():
    """A generator registered from f alone (triangular discrimination f = (u-1)^2/(u+1): f(0) = 1, slope 1,
    so both bounds saturate) gets its own start table on the first call and matches the float64 robust
    generic solver to 1 ulp in float32, over p from 1e-30 to 1."""
    bandpo.register_divergence("triangular", lambda u: (u - 1) ** 2 / (u + 1))
    try:
        logp = -torch.logspace(-8, math.log10(69.0), 3000, dtype=torch.float32)
        logp = torch.cat([logp, torch.zeros(1)])
        for delta in (0.01, 0.2):
            lo, up = bandpo.band(logp, delta, "triangular")
            lo64, up64 = reference_band(logp, delta, "triangular")
            assert (lo == 0).any() and (up == torch.exp(-logp)).any()  # both kinks are inside the range
            for a, b in ((lo, lo64), (up, up64)):
                b32 = b.float()
                normal = b32.abs() >= torch.finfo(torch.float32).tiny
                err = (a - b32).abs()[normal] / (torch.finfo(torch.float32).eps * b32.abs()[normal])
                assert err.max() <= 1.0, f"{err.max():.3g} ulp"
                assert torch.equal(a[~normal], b32[~normal])
    finally:
        bandpo.unregister_divergence("triangular")
