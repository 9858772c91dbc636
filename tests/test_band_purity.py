"""band() and log_band() are pure functions of their input, handle invalid input without validation, and
keep their accuracy for a delta that changes every call and for a per-token delta tensor.

* Purity: in FRESH Python processes (so that the first call really is the first: the start table is
  built by it), for every built-in divergence and for float64, float32 and bfloat16 inputs, the first call
  equals the second call and a call made after other divergences, deltas and dtypes ran and after the
  table cache was emptied, bitwise; a second fresh process running the calls in the opposite order gives
  the same bits (compared by SHA-256 of the raw bytes).
* validate=False: NaN, +inf, -inf old_logp and NaN, inf, 0, negative tensor delta give NaN in both bounds,
  on every path (Python delta, tensor delta, chunked and unchunked, every divergence).
* Schedules and tensor deltas: float64 results within 1e-12 (relative, on the log bound) of the table-free
  reference solvers (``bandpo.operator.bands._reference_log_band``); float32 results within 1 ulp of the
  float64 reference rounded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import bandpo
from bandpo.operator.bands import CHUNK, _reference_log_band

BUILTINS = ["chi2", "hellinger", "js", "kl", "neyman_chi2", "reverse_kl", "tv"]

_SCRIPT = r"""
import hashlib, json, sys
import torch
import bandpo
from bandpo.operator import tables
from bandpo.operator.bands import CHUNK

names, reverse = json.loads(sys.argv[1]), sys.argv[2] == "reverse"
g = torch.Generator().manual_seed(0)
x64 = torch.cat([
    -torch.logspace(-9, 2.7, 2000, dtype=torch.float64),
    -30 * torch.rand(CHUNK + 1000, generator=g, dtype=torch.float64),  # > CHUNK: the chunked path
    torch.tensor([0.0, -1e-300, -700.0], dtype=torch.float64),
])
dtypes = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}

def digest(ts):
    h = hashlib.sha256()
    for t in ts:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

def calls(name, dt):
    x = x64.to(dtypes[dt])
    return digest(bandpo.band(x, 0.05, name) + bandpo.log_band(x, 0.05, name))

keys = [(n, d) for n in names for d in dtypes]
if reverse:
    keys = keys[::-1]
first, second = {}, {}
for n, d in keys:
    first[f"{n}/{d}"] = calls(n, d)
    second[f"{n}/{d}"] = calls(n, d)
# other work in between: other deltas (Python, tensor), dtypes, divergences, then an emptied table cache
for n in names:
    bandpo.band(x64[:5000].float(), 0.3, n)
    bandpo.band(x64[:5000], torch.full((5000,), 0.01, dtype=torch.float64), n)
tables._CACHE.clear()
third = {f"{n}/{d}": calls(n, d) for n, d in keys}
print(json.dumps({"first": first, "second": second, "third": third}))
"""


def _run(names, order):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(names), order],
        capture_output=True, text=True, timeout=900, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("names", [["kl", "reverse_kl", "tv"], ["js", "neyman_chi2", "chi2", "hellinger"]])
def test_first_call_equals_later_calls_in_fresh_processes(names):
    a = _run(names, "forward")
    b = _run(names, "reverse")
    assert set(a["first"]) == {f"{n}/{d}" for n in names for d in ("float64", "float32", "bfloat16")}
    for key, h in a["first"].items():
        assert a["second"][key] == h, f"{key}: second call differs from the first"
        assert a["third"][key] == h, f"{key}: a call after other work and an emptied cache differs"
        assert b["first"][key] == h, f"{key}: another process (other call order) differs"
        assert b["third"][key] == h


# ----------------------------------------------------------------------------------------------------------
# validate=False: invalid elements give NaN, valid ones are unaffected
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("n", [64, CHUNK + 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_invalid_inputs_give_nan_without_validation(name, n, dtype):
    g = torch.Generator().manual_seed(5)
    x = -10 * torch.rand(n, generator=g, dtype=torch.float64)
    x[[0, 1, 2]] = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    x = x.to(dtype)
    clean = x.clone()
    clean[[0, 1, 2]] = -1.0
    d = torch.full((n,), 0.05, dtype=torch.float64)
    d[[3, 4, 5, 6]] = torch.tensor([math.nan, math.inf, 0.0, -0.5], dtype=torch.float64)
    bad_x = torch.zeros(n, dtype=torch.bool)
    bad_x[:3] = True
    bad_d = bad_x.clone()
    bad_d[3:7] = True
    clean_d = torch.where(bad_d, 0.05, d)
    for fn in (bandpo.band, bandpo.log_band):
        for delta, bad, ref_delta in ((0.05, bad_x, 0.05), (d, bad_d, clean_d), (d.float(), bad_d, clean_d.float())):
            lo, up = fn(x, delta, name, validate=False)
            assert torch.isnan(lo[bad]).all() and torch.isnan(up[bad]).all(), (fn.__name__, name)
            assert not torch.isnan(lo[~bad]).any() and not torch.isnan(up[~bad]).any()
            # the valid elements are what a clean call gives
            ref = fn(clean, ref_delta, name, validate=False)
            assert torch.equal(lo[~bad], ref[0][~bad]) and torch.equal(up[~bad], ref[1][~bad])


def test_validated_calls_still_raise():
    with pytest.raises(ValueError, match="NaN"):
        bandpo.band(torch.tensor([math.nan, -1.0]), 0.05, "js")
    with pytest.raises(ValueError, match="delta"):
        bandpo.band(torch.tensor([-2.0, -1.0]), torch.tensor([0.05, -1.0]), "kl")


# ----------------------------------------------------------------------------------------------------------
# Schedules and per-token deltas: accuracy
# ----------------------------------------------------------------------------------------------------------

LOGP = torch.cat([
    -torch.logspace(-12, math.log10(690.0), 1500, dtype=torch.float64),
    torch.tensor([0.0], dtype=torch.float64),
])


def _near_kink(name, logp, delta):
    """Within 1% of a saturation kink in x = -log p, where the problem itself is ill-conditioned (see
    tests/test_band_reference.py): reverse_kl's kinks are x = delta (upper) and x = -log(1 - e^-delta)
    (lower), derived by hand; js's are located from the reference's own saturation pattern."""
    x = -logp
    if name == "reverse_kl":
        kinks = torch.tensor([delta, -math.log(-math.expm1(-delta))], dtype=torch.float64)
        return ((x[:, None] - kinks).abs() <= 0.01 * kinks).any(1)
    if name == "js":
        lo, up = _reference_log_band(logp, delta, name)
        near = torch.zeros_like(x, dtype=torch.bool)
        for sat in (torch.isinf(lo), up == -logp):
            edge = (sat[1:] != sat[:-1]).nonzero().flatten()
            for i in edge.tolist():
                near |= (x - x[i]).abs() <= 0.01 * x[i]
        return near
    return torch.zeros_like(x, dtype=torch.bool)


def _assert_close_f64(got, exp, ok):
    for a, b in zip(got, exp):
        assert torch.equal(torch.isinf(a)[ok], torch.isinf(b)[ok]), "saturation differs"
        fin = ok & torch.isfinite(b)
        err = (a[fin] - b[fin]).abs() / torch.clamp(b[fin].abs(), min=1.0)
        assert (err <= 1e-12).all(), f"max {err.max():.3g}"


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "neyman_chi2", "js"])
def test_changing_python_delta_matches_the_reference(name):
    for k in (1, 7, 100, 555):
        delta = 0.05 * (1 + k * 1e-3) ** 3
        got = bandpo.log_band(LOGP, delta, name)
        exp = _reference_log_band(LOGP, delta, name)
        _assert_close_f64(got, exp, ~_near_kink(name, LOGP, delta))


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "neyman_chi2", "js"])
def test_tensor_delta_matches_the_reference_and_the_python_delta(name):
    g = torch.Generator().manual_seed(11)
    deltas = torch.exp(torch.empty(6, dtype=torch.float64).uniform_(math.log(1e-3), math.log(0.7), generator=g))
    x = LOGP.expand(6, -1)
    got = bandpo.log_band(x, deltas[:, None], name)
    for i, dv in enumerate(deltas.tolist()):
        exp = _reference_log_band(LOGP, dv, name)
        _assert_close_f64((got[0][i], got[1][i]), exp, ~_near_kink(name, LOGP, dv))
        # one algorithm for both kinds of delta: a Python delta equals the same float64 delta as a tensor
        py = bandpo.log_band(LOGP, dv, name)
        assert torch.equal(py[0], got[0][i]) and torch.equal(py[1], got[1][i])


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "neyman_chi2", "js"])
def test_float32_schedule_and_tensor_delta_within_one_ulp(name):
    x32 = LOGP[LOGP > -80].to(torch.float32)  # beyond, the float32 upper bound overflows
    g = torch.Generator().manual_seed(12)
    per_token = torch.exp(torch.empty(x32.shape, dtype=torch.float32).uniform_(math.log(1e-3), math.log(0.5), generator=g))
    cases = [(0.05 * (1 + k * 1e-3), 0.05 * (1 + k * 1e-3)) for k in (3, 400)] + [(per_token, per_token.double())]
    eps = torch.finfo(torch.float32).eps
    for delta32, delta64 in cases:
        got = bandpo.band(x32, delta32, name)
        exp = [torch.exp(t).float() for t in _reference_log_band(x32.double(), delta64, name)]
        for a, b in zip(got, exp):
            normal = (b >= torch.finfo(torch.float32).tiny) & torch.isfinite(b)
            err = (a.double() - b.double()).abs()[normal] / (eps * b.double()[normal])
            assert err.max() <= 1.0, f"{err.max():.3g} ulp"
            assert torch.equal(a[~normal], b[~normal]) or ((a[~normal] - b[~normal]).abs() <= torch.finfo(torch.float32).tiny * eps).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threaded_tensor_delta_chunks_equal_serial_and_single_chunk_calls(dtype):
    """float32/16 with a per-token tensor delta runs its chunks (CHUNK elements) on Python threads when torch
    has more than one: bitwise the same as with one thread (a serial loop) and as calling each chunk alone, for a
    2-D non-contiguous input with a broadcast delta, every built-in divergence with a table path."""
    g = torch.Generator().manual_seed(21)
    n_rows = 2 * CHUNK // 16 + 3  # 2 full chunks and a partial one (with 16 columns)
    x = -30 * torch.rand(16, n_rows, generator=g, dtype=torch.float64) ** 3
    x = x.to(dtype).t()  # (n_rows, 16), not contiguous
    delta = torch.exp(torch.empty(n_rows, 1, dtype=torch.float32).uniform_(math.log(1e-3), math.log(0.5), generator=g))
    threads = torch.get_num_threads()
    for name in ["kl", "reverse_kl", "neyman_chi2", "js"]:
        try:
            torch.set_num_threads(2)
            lo, up = bandpo.band(x, delta, name, validate=False)
            torch.set_num_threads(1)
            lo1, up1 = bandpo.band(x, delta, name, validate=False)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(lo, lo1) and torch.equal(up, up1), name
        flat, flat_d = x.reshape(-1), delta.expand(x.shape).reshape(-1)
        for start in (0, CHUNK, 2 * CHUNK):
            part = slice(start, start + CHUNK)
            lo_c, up_c = bandpo.band(flat[part], flat_d[part], name, validate=False)
            assert torch.equal(lo.reshape(-1)[part], lo_c) and torch.equal(up.reshape(-1)[part], up_c), (name, start)



def test_start_table_built_once_before_the_workers_run(monkeypatch):
    """Every chunk runs on the pool, the first included, so band builds the start table in the calling thread
    first: on a call that finds no table, one build (not one per worker), and the result equals a serial
    call's. A tensor delta (the start-table path) and float64 (log_band), 3 chunks on 2 workers."""
    from bandpo.operator import tables

    builds = []
    real = tables.build_start_table
    monkeypatch.setattr(tables, "build_start_table", lambda div: builds.append(div) or real(div))
    g = torch.Generator().manual_seed(5)
    x = -20 * torch.rand(3 * CHUNK, generator=g, dtype=torch.float64) ** 3
    delta = torch.full((3 * CHUNK,), 0.05)
    threads = torch.get_num_threads()
    for name, call in [("kl", lambda: bandpo.band(x.float(), delta, "kl")),
                       ("js", lambda: bandpo.log_band(x, delta.double(), "js"))]:
        with tables._LOCK:
            tables._CACHE.clear()  # rebuilt tables are bitwise the same (test_band_purity's fresh processes)
        builds.clear()
        try:
            torch.set_num_threads(2)
            threaded = call()
            torch.set_num_threads(1)
            serial = call()
        finally:
            torch.set_num_threads(threads)
        assert len(builds) == 1, (name, len(builds))
        assert all(torch.equal(a, b) for a, b in zip(threaded, serial)), name


def test_worker_pool_leaves_the_thread_count_alone():
    """The band pool's workers run torch single-threaded (torch.set_num_threads(1) in each worker, which also
    sets the count that threads started later inherit): the caller's count and a new thread's count are as
    before, and the workers' own count is 1."""
    import threading

    from bandpo.operator import bands

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        old, bands._POOL = bands._POOL, None  # a fresh pool: its workers start now
        if old is not None:
            old[1].shutdown()
        pool = bands._executor(2)
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert torch.get_num_threads() == 2 and seen == [2]
        assert set(pool.map(lambda _: torch.get_num_threads(), range(8))) == {1}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["reverse_kl", "js"])
def test_skipping_saturated_sides_changes_no_bit(name, monkeypatch):
    """The eager CPU path of a saturating divergence with a tensor delta solves only the unsaturated sides; on
    accelerators and under torch.compile every side is solved (no data-dependent shape). Both give the same bits
    (the same operations per side), here forced on the CPU by making torch.compiler.is_compiling() true, on
    inputs with both sides saturated somewhere, p = 1, invalid inputs and invalid deltas."""
    from bandpo.operator.bands import _tabulated_band_lowp
    from bandpo.operator.divergences import get_divergence

    g = torch.Generator().manual_seed(23)
    x = torch.cat([-torch.logspace(-9, 2.5, 3000, dtype=torch.float64), -40 * torch.rand(3000, generator=g,
                   dtype=torch.float64), torch.tensor([0.0, math.nan, -math.inf, math.inf, -1e30, -0.01])])
    x = x.to(torch.float32)
    delta = torch.exp(torch.empty(x.numel()).uniform_(math.log(1e-3), math.log(2.0), generator=g))
    delta[-6:] = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.0, -1.0])
    div = get_divergence(name)
    skipped = _tabulated_band_lowp(x, delta, div)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    every = _tabulated_band_lowp(x, delta, div)
    for a, b in zip(skipped, every):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    lo = skipped[0]
    assert bool((lo == 0).any()) and bool((skipped[1] == torch.exp(-x.double()).float()).any())  # both saturate
