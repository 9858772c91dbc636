"""Tier 1: the Band operator against a committed 60-digit table.

Where the expected values come from: tests/reference/band_table.csv, written by
tests/reference/make_band_table.py (mpmath, 60 significant digits, plain bisection on g_f(p, r) = delta,
independent of bandpo's solvers). Its inputs are float64 values, so it is the exact answer for them.

Tolerance: 1e-12 relative on the ratio (the issue's target), plus 64 ulps times the problem's own
condition number kappa = |d log r / d log p| from the table. kappa only matters within ~1% of a
saturation kink (TV's lower bound at p = delta, say), where no float64 method can do better because
exp(old_logp) itself is rounded.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import bandpo
from bandpo.operator.bands import _reference_log_band

TABLE = Path(__file__).parent / "reference" / "band_table.csv"
EPS = torch.finfo(torch.float64).eps


def _rows():
    with TABLE.open() as fh:
        return list(csv.DictReader(fh))


ROWS = _rows()
GROUPS = sorted({(r["divergence"], float(r["delta"])) for r in ROWS})


def _group(name, delta):
    rows = [r for r in ROWS if r["divergence"] == name and float(r["delta"]) == delta]
    logp = torch.tensor([float.fromhex(r["logp_hex"]) for r in rows], dtype=torch.float64)
    ref = {
        "lower": [float(r["log_lower"]) for r in rows],
        "upper": [float(r["log_upper"]) for r in rows],
        "kappa_lower": [float(r["kappa_lower"]) for r in rows],
        "kappa_upper": [float(r["kappa_upper"]) for r in rows],
    }
    return logp, {k: torch.tensor(v, dtype=torch.float64) for k, v in ref.items()}


def test_table_covers_the_issue_domain():
    logp = torch.tensor([float.fromhex(r["logp_hex"]) for r in ROWS], dtype=torch.float64)
    assert logp.min() <= math.log(1e-300) and (logp < 0).any() and (logp == 0).any()
    assert (-torch.expm1(logp[logp < 0])).min() <= 1e-12
    assert {r["divergence"] for r in ROWS} == set(bandpo.list_divergences())
    deltas = {float(r["delta"]) for r in ROWS}
    assert min(deltas) == 1e-4 and max(deltas) == 1.0
    assert any(r["log_lower"] == "-inf" for r in ROWS)  # saturated lower bounds are covered


@pytest.mark.parametrize("name,delta,path", [
    (name, delta, path) for name, delta in GROUPS for path in ("public", "tensor-delta", "solver")
])
def test_log_band_matches_reference(name, delta, path):
    """Every path: "public" (``log_band`` with a Python delta: the start table + Newton, or the closed
    form), "tensor-delta" (the same with a per-token delta tensor), "solver" (the table-free reference
    solvers, ``bandpo.operator.bands._reference_log_band``)."""
    logp, ref = _group(name, delta)
    if path == "public":
        got = bandpo.log_band(logp, delta, name)
    elif path == "tensor-delta":
        got = bandpo.log_band(logp, torch.full_like(logp, delta), name)
    else:
        got = _reference_log_band(logp, delta, name)
    for side, value in zip(("lower", "upper"), got):
        expected, kappa = ref[side], ref["kappa_" + side]
        sat = torch.isinf(expected)
        differ = sat ^ torch.isinf(value)
        # Exactly at a kink (p = delta for TV, say) rounding decides whether the lower bound is 0 or
        # 1e-16: there, the ratio must be 0 to within 1e-12 absolute.
        assert (torch.where(sat, value, expected)[differ] < math.log(1e-12)).all(), (
            f"{side}: saturation differs at p={logp[differ].exp()}"
        )
        sat = sat | differ
        e, v, k = expected[~sat], value[~sat], kappa[~sat]
        # relative accuracy of the ratio while it is representable; of its log beyond (|log r| > 700)
        err = (v - e).abs() / torch.clamp(e.abs() / 700, min=1.0)
        tol = 1e-12 + 64 * EPS * k
        bad = err > tol
        assert not bad.any(), (
            f"{name} delta={delta} {side}: p={logp[~sat][bad].exp().tolist()} got {v[bad].tolist()} "
            f"expected {e[bad].tolist()} (err {err[bad].tolist()}, tol {tol[bad].tolist()})"
        )


@pytest.mark.parametrize("name,delta", [g for g in GROUPS if g[1] in (1e-4, 0.05, 1.0)])
def test_band_ratio_matches_reference(name, delta):
    """band() is exp(log_band): ratio relative error <= 1e-12 (+ kappa term), exact 0 and 1/p when saturated."""
    logp, ref = _group(name, delta)
    lower, upper = bandpo.band(logp, delta, name)
    for side, value in (("lower", lower), ("upper", upper)):
        e = torch.exp(ref[side])
        normal = (e > 1e-300) & (e < 1e300)
        tol = 1e-12 + 64 * EPS * ref["kappa_" + side]
        rel = ((value - e).abs() / e)[normal]
        assert (rel <= tol[normal]).all(), f"{side}: max rel err {rel.max():.3g}"
        assert (value[e == 0] == 0).all()
    sat_up = ref["upper"] == -logp
    assert torch.equal(upper[sat_up], torch.exp(-logp[sat_up]))  # exactly 1/p


@pytest.mark.parametrize("name", bandpo.list_divergences())
def test_float32_within_a_few_ulps_of_float64(name):
    logp32 = torch.tensor([float.fromhex(r["logp_hex"]) for r in ROWS if r["divergence"] == name], dtype=torch.float32)
    logp32 = logp32[logp32 > -80]  # beyond, the float32 upper bound overflows and the lower underflows
    for delta in (1e-3, 0.05, 0.3):
        lo32, up32 = bandpo.band(logp32, delta, name)
        lo64, up64 = bandpo.band(logp32.double(), delta, name)
        for a, b in ((lo32, lo64), (up32, up64)):
            assert a.dtype == torch.float32
            b32 = b.float()
            normal = (b32.abs() >= torch.finfo(torch.float32).tiny) & torch.isfinite(b32)
            ulp = torch.finfo(torch.float32).eps * b32.abs()
            assert ((a - b32).abs()[normal] <= 2 * ulp[normal]).all()
            assert torch.equal(a[~normal], b32[~normal])
