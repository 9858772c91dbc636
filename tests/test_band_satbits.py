"""The eager CPU fast path of the saturating divergences (js, reverse_kl) with a Python delta: one lookup by the
float32 bits of x = -old_logp (bandpo.operator.tables.SatBitsTable), the kink table (sat_band) only for marked
elements. Against the table-free float64 solver, the kink table it replaces, and its own special cases."""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo.operator import tables
from bandpo.operator.bands import _log_band_f64, _reference_log_band
from bandpo.operator.divergences import get_divergence

EPS32 = torch.finfo(torch.float32).eps
TINY32 = torch.finfo(torch.float32).tiny


def _tables(name: str, delta: float):
    div = get_divergence(name)
    solve = lambda lp: _log_band_f64(lp, delta, div, False)  # noqa: E731
    sat = tables.get_sat_table(div, delta, torch.device("cpu"), solve)
    return sat, tables.get_sat_bits_table(div, delta, solve)


def _inputs(name: str, delta: float, sat) -> torch.Tensor:
    """float32 old_logp: log-uniform p down to 1e-40 (denormal x included), every special value, and points at
    relative distances 1e-7..1e-1 on both sides of both kinks."""
    g = torch.Generator().manual_seed(31)
    x = torch.exp(torch.empty(10000, dtype=torch.float64).uniform_(math.log(1e-44), math.log(700), generator=g))
    rel = torch.logspace(-7, -1, 300, dtype=torch.float64)
    for kink in (sat.lower.R, sat.upper.L):
        if math.isfinite(kink) and kink > 0:
            x = torch.cat([x, kink * (1 - rel), kink * (1 + rel)])
    special = torch.tensor([0.0, -0.0, 1e-45, 1e-40, 2.0**-126, 2.0**-30, 5.96e-8, 1000.0, 1e30, -1e-7])
    return torch.cat([-x.float(), -special, torch.tensor([math.nan, -math.inf, math.inf])])


@pytest.mark.parametrize(
    "name, delta",
    [("js", 0.05), ("reverse_kl", 1e-4), ("reverse_kl", 1.0)]
    + [pytest.param(n, d, marks=pytest.mark.slow) for n, d in (("js", 1e-4), ("js", 1.0), ("reverse_kl", 0.05))],
)
def test_one_lookup_path_within_one_ulp_and_exactly_saturated(name, delta):
    """Within 1 ulp of the table-free float64 solver where that is a normal float32 (the same 0, subnormal spacing
    and inf elsewhere); exactly 0 and float32(e^x) = 1/p where sat_band saturates, exactly 1 = upper at p = 1, NaN
    exactly where old_logp is not finite; and within 1 ulp of the kink table it replaces."""
    sat, bits = _tables(name, delta)
    logp = _inputs(name, delta, sat)
    lo, up = bandpo.band(logp, delta, name, validate=False)
    lo_k, up_k = tables.sat_band(sat, logp)
    bad = ~torch.isfinite(logp)
    assert torch.equal(lo.isnan(), bad) and torch.equal(up.isnan(), bad)
    ok = ~bad
    x = -logp[ok].double().clamp(max=0.0)
    ref = [torch.exp(t).float() for t in _reference_log_band(-x, delta, name)]
    for a, k, r in ((lo[ok], lo_k[ok], ref[0]), (up[ok], up_k[ok], ref[1])):
        normal = (r.abs() >= TINY32) & torch.isfinite(r)
        for b in (r, k):
            err = (a.double() - b.double()).abs()[normal] / (EPS32 * r.double().abs()[normal])
            assert err.numel() == 0 or err.max() <= 1.0, (name, delta, err.max().item())
        assert ((a - r).abs()[~normal & torch.isfinite(r)] <= TINY32 * EPS32).all()
        assert torch.equal(torch.isinf(a), torch.isinf(r))
    xk = -logp[ok].double()
    sat_lo = torch.zeros_like(xk, dtype=torch.bool) if not sat.lower.kink_right else xk >= sat.lower.R
    sat_up = xk <= sat.upper.L if sat.upper.kink_left else torch.zeros_like(sat_lo)
    if sat.lower.coef is None:
        sat_lo = torch.ones_like(sat_lo)
    assert (lo[ok][sat_lo] == 0).all()
    assert torch.equal(up[ok][sat_up], torch.exp(xk.clamp(min=0.0)[sat_up]).float())
    at_one = logp == 0
    assert (up[at_one] == 1.0).all() and torch.equal(lo[at_one], lo_k[at_one])


@pytest.mark.parametrize("name", ["js", "reverse_kl"])
def test_built_in_tables_mark_no_segment(name):
    """For the built-in saturating divergences every normal float32 x is served by the table itself (no segment is
    left to the kink table), so only denormal or invalid inputs take the slow recomputation; and a bfloat16 input
    gives its float32 answer rounded once (within 1 ulp of bfloat16)."""
    for delta in (0.05, 2.0):
        _, bits = _tables(name, delta)
        assert bits.marked == 0, (name, delta)
    logp = -torch.logspace(-6, 2, 5000, dtype=torch.float64)
    lo16, up16 = bandpo.band(logp.to(torch.bfloat16), 0.05, name)
    lo32, up32 = bandpo.band(logp.to(torch.bfloat16).float(), 0.05, name)
    eps16 = torch.finfo(torch.bfloat16).eps
    for a, b in ((lo16, lo32), (up16, up32)):
        nz = (b.abs() >= torch.finfo(torch.bfloat16).tiny) & torch.isfinite(b)
        assert ((a.double() - b.double()).abs()[nz] <= eps16 * b.double().abs()[nz]).all()
        assert torch.equal(torch.isinf(a), torch.isinf(b.to(torch.bfloat16)))


def test_marked_elements_are_recomputed_by_the_kink_table():
    """A table with every segment marked (as a user generator's could be where no width resolves its kink) gives
    sat_band's values exactly: the recomputation is complete."""
    sat, bits = _tables("js", 0.05)
    info = torch.full_like(bits.info, 23)  # every segment: row 0, the marked row
    marked = tables.SatBitsTable(info, bits.pairs, marked=bits.info.numel())
    logp = _inputs("js", 0.05, sat)
    lo, up = tables.sat_bits_band(marked, logp, lambda lp: tables.sat_band(sat, lp))
    lo_k, up_k = tables.sat_band(sat, logp)
    assert torch.equal(lo.nan_to_num(7.0), lo_k.nan_to_num(7.0)) and torch.equal(up.nan_to_num(7.0), up_k.nan_to_num(7.0))


def _cached_kinds(div, delta) -> set:
    return {k[2] for k in tables._CACHE if k[:2] == (div, delta)}


def test_kink_table_built_only_when_an_element_needs_it():
    """A new delta builds the bits table alone (the kink table's coefficients cost more than the rest of the build);
    the first denormal input builds the kink table, and its elements get sat_band's values exactly; the other
    elements' bits are the same before and after (a result never depends on what was built before)."""
    div, delta = get_divergence("reverse_kl"), 0.0517
    normal = -torch.logspace(-30, 2.5, 3000, dtype=torch.float64).float()
    lo1, up1 = bandpo.band(normal, delta, "reverse_kl")
    assert _cached_kinds(div, delta) == {"satbits"}
    odd = torch.cat([normal, torch.tensor([-1e-40, -1e-45, -2.0**-127])])
    lo2, up2 = bandpo.band(odd, delta, "reverse_kl")
    assert _cached_kinds(div, delta) == {"satbits", "sat"}
    sat, _ = _tables("reverse_kl", delta)
    lo_k, up_k = tables.sat_band(sat, odd[-3:])
    assert torch.equal(lo2[-3:], lo_k) and torch.equal(up2[-3:], up_k)
    lo3, up3 = bandpo.band(normal, delta, "reverse_kl")
    assert torch.equal(lo1, lo2[:-3]) and torch.equal(up1, up2[:-3]) and torch.equal(lo1, lo3) and torch.equal(up1, up3)


def test_elements_left_to_a_missing_kink_table_take_the_start_table_path(monkeypatch):
    """Where the kink table would be None (a node not finite), the elements the bits table does not serve get the
    start table + one step (the tensor-delta path), within 1 ulp of the reference; NaN where old_logp is NaN."""
    from bandpo.operator.bands import _tabulated_band_lowp

    monkeypatch.setattr(tables, "build_sat_table", lambda *a: None)
    delta = 0.0433
    logp = torch.tensor([-0.5, -1e-40, -1e-45, math.nan, -3.0])
    try:
        lo, up = bandpo.band(logp, delta, "js", validate=False)
        lo_t, up_t = _tabulated_band_lowp(logp[1:4], delta, get_divergence("js"))
    finally:
        for key in [k for k in tables._CACHE if k[1] == delta]:
            del tables._CACHE[key]
    assert torch.equal(lo[1:4].nan_to_num(7.0), lo_t.nan_to_num(7.0))
    assert torch.equal(up[1:4].nan_to_num(7.0), up_t.nan_to_num(7.0))
    assert lo[3].isnan() and up[3].isnan() and lo[1] > 0 and up[1] == 1.0
    ref = [torch.exp(t).float() for t in _reference_log_band(logp[[0, 4]].double(), delta, "js")]
    for a, r in ((lo[[0, 4]], ref[0]), (up[[0, 4]], ref[1])):
        assert ((a.double() - r.double()).abs() <= EPS32 * r.double().abs()).all()


@pytest.mark.parametrize("name", ["js", "reverse_kl"])
def test_every_coarse_segment_within_one_ulp_of_the_float64_path(name):
    """Every coarse segment of the table (2^12 float32 values of x from 2^-126 to 2^10, whatever row width serves it)
    at its first, last and one random value: within 1 ulp of the float64 path whose nodes the table holds."""
    delta = 0.05
    seg = torch.arange(136 * 2048, dtype=torch.int64)
    first = (1 << 23) + (seg << 12)
    g = torch.Generator().manual_seed(3)
    bits = torch.cat([first, first + 4095, first + torch.randint(0, 4096, seg.shape, generator=g)])
    x = bits.to(torch.int32).view(torch.float32)
    x = x[x < 1024]
    lo, up = bandpo.band(-x, delta, name)
    ref = [t.exp() for t in _log_band_f64(-x.double(), delta, get_divergence(name), False)]
    for a, r in ((lo, ref[0]), (up, ref[1])):
        normal = (r >= TINY32) & (r <= torch.finfo(torch.float32).max)
        assert ((a.double() - r).abs()[normal] <= EPS32 * r[normal]).all(), name
        assert (a[r == 0] == 0).all()
