"""bandpo.policy_loss and bandpo.aggregate against a naive per-element Python reference.

Where the expected values come from:

* ``ref_bounds``: the bounds written out per element in Python floats: clip 1 ∓ eps, DCPO's formula
  (arXiv 2509.02333, eq. of its dynamic adaptive clipping), and the band by 200-step bisection on the textbook
  g_f(p, r) = p f(r) + (1-p) f((1-pr)/(1-p)) (independent of bandpo's solvers).
* ``ref_loss``: the per-token loss max(-A r, -A clip(r, l, u)), dual-clip min(., -A c) for A < 0, and each
  aggregation written as lists and Python sums; its gradient by hand (d/dlogp of the active branch: -A r,
  or 0 where clipped, dual-clipped, masked or beyond the ±20 log-ratio clamp).

Tolerances: float64 everywhere; values and gradients agree to rtol 1e-9 / atol 1e-12, set by the reference
bisection (it reaches ~1e-13 relative at the moderate p used) and float64 summation order.
``torch.autograd.gradcheck`` (finite differences, eps 1e-6) uses its default atol 1e-5 / rtol 1e-3; inputs
keep every ratio >= 1e-3 (relative) away from a bound, the dual-clip constant and the cap, so no kink lies
within a finite-difference step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

import bandpo
from bandpo.losses import (
    BUCKET_EDGES,
    BUCKET_NAMES,
    LOG_RATIO_CLAMP,
    METRIC_KEYS,
    Clip,
    LossConfig,
    Method,
    aggregate,
    aggregation_denominator,
    get_method,
    list_aggregations,
    list_methods,
    policy_loss,
    register_method,
    resolve_method,
    unregister_method,
)

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# (label, policy_loss keyword arguments); a method's own settings (eps, delta, cap) apply where not given
METHODS = [
    ("clip", dict(method="clip")),  # GRPO 0.2/0.2
    ("clip_higher", dict(method="clip_higher")),  # 0.2/0.28
    ("dcpo", dict(method="dcpo")),  # 0.16/0.2, r_max 10
    ("band_kl", dict(method="band_kl")),  # delta 0.05, cap 10
    ("band_tv", dict(method="band_tv")),
    ("band_chi2", dict(method="band_chi2")),
    ("band_hellinger", dict(method="band_hellinger", delta=0.1)),
]

# What the reference knows of each method id, written out independently of bandpo's table.
REF_METHODS = {
    "clip": dict(kind="clip", eps_low=0.2, eps_high=0.2, max_ratio=None),
    "clip_higher": dict(kind="clip", eps_low=0.2, eps_high=0.28, max_ratio=None),
    "dcpo": dict(kind="dcpo", eps_low=0.16, eps_high=0.2, max_ratio=None),
    **{f"band_{d}": dict(kind="band", divergence=d, delta=0.05, max_ratio=10.0) for d in ("kl", "tv", "chi2", "hellinger")},
}


def ref_settings(kw: dict) -> dict:
    """The method's reference settings with the keyword overrides of ``kw`` (None keeps the method's own)."""
    out = dict(REF_METHODS[kw.get("method", "band_kl")])
    out.update({k: v for k, v in kw.items() if k in ("eps_low", "eps_high", "divergence", "delta", "max_ratio") and v is not None})
    return out

# ------------------------------------------------------------------------------------------------------
# The naive reference
# ------------------------------------------------------------------------------------------------------

SCALAR_F = {
    "kl": lambda u: math.inf if u == 0 else -math.log(u),
    "tv": lambda u: abs(u - 1) / 2,
    "chi2": lambda u: (u - 1) ** 2,
    "hellinger": lambda u: (math.sqrt(u) - 1) ** 2,
}


def scalar_band(name: str, p: float, delta: float) -> tuple[float, float]:
    """Bisection on g_f(p, r) over [0, 1] (decreasing) and [1, 1/p] (increasing), 200 steps each."""
    f = SCALAR_F[name]

    def g(r):
        return p * f(r) + (1 - p) * f(max((1 - p * r) / (1 - p), 0.0))

    if g(0.0) <= delta:
        lower = 0.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if g(mid) <= delta else (mid, hi)
        lower = hi
    if g(1 / p) <= delta:
        upper = 1 / p
    else:
        lo, hi = 1.0, 1 / p
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if g(mid) <= delta else (lo, mid)
        upper = lo
    return lower, upper


def ref_bounds(kw: dict, p: float) -> tuple[float, float]:
    """Uncapped (lower, upper) of the method in ``kw``."""
    s = ref_settings(kw)
    if s["kind"] == "clip":
        return 1 - s["eps_low"], 1 + s["eps_high"]
    if s["kind"] == "dcpo":
        el, eh = s["eps_low"], s["eps_high"]
        upper = min(0.5 + 0.5 * math.sqrt(1 + 4 * eh / p), 10.0)
        lower = 0.5 + 0.5 * math.sqrt(max(1 - 4 * el / p, 0.0))
        return lower, upper
    return scalar_band(s["divergence"], p, s["delta"])


def ref_token(kw: dict, logp: float, old_logp: float, a: float) -> tuple[float, float]:
    """(ℓ, dℓ/dlogp) for one valid token."""
    lr = logp - old_logp
    inside_clamp = -LOG_RATIO_CLAMP < lr < LOG_RATIO_CLAMP
    r = math.exp(min(max(lr, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP))
    lo, up = ref_bounds(kw, math.exp(old_logp))
    if ref_settings(kw)["max_ratio"] is not None:
        up = min(up, ref_settings(kw)["max_ratio"])
    rc = min(max(r, lo), up)
    unclipped, clipped = -a * r, -a * rc
    if unclipped >= clipped:
        loss, grad = unclipped, -a * r
    else:
        loss, grad = clipped, 0.0
    c = kw.get("dual_clip")
    if c is not None and a < 0 and -a * c < loss:
        loss, grad = -a * c, 0.0
    return loss, grad if inside_clamp else 0.0


def ref_loss(kw: dict, logp, old_logp, adv, mask, agg: str) -> tuple[float, list[list[float]]]:
    """Naive aggregation over nested lists; returns (loss, d loss / d logp)."""
    B, T = len(logp), len(logp[0])
    tok = [[ref_token(kw, logp[b][t], old_logp[b][t], adv[b][t]) if mask[b][t] else None for t in range(T)] for b in range(B)]
    grad = [[0.0] * T for _ in range(B)]
    rows = [[t for t in range(T) if mask[b][t]] for b in range(B)]
    nonempty = [b for b in range(B) if rows[b]]
    if agg == "token-mean":
        n = sum(len(r) for r in rows)
        loss = sum(tok[b][t][0] for b in range(B) for t in rows[b]) / max(n, 1)
        w = {(b, t): 1 / n for b in range(B) for t in rows[b]}
    elif agg == "seq-mean-token-mean":
        seq_means = [sum(tok[b][t][0] for t in rows[b]) / len(rows[b]) for b in nonempty]
        loss = sum(seq_means) / max(len(seq_means), 1)
        w = {(b, t): 1 / (len(rows[b]) * len(nonempty)) for b in nonempty for t in rows[b]}
    elif agg == "seq-mean-token-sum":
        seq_sums = [sum(tok[b][t][0] for t in rows[b]) for b in nonempty]
        loss = sum(seq_sums) / max(len(seq_sums), 1)
        w = {(b, t): 1 / len(nonempty) for b in nonempty for t in rows[b]}
    else:  # seq-mean-token-sum-norm
        loss = sum(tok[b][t][0] for b in range(B) for t in rows[b]) / (B * T)
        w = {(b, t): 1 / (B * T) for b in range(B) for t in rows[b]}
    for (b, t), wt in w.items():
        grad[b][t] = wt * tok[b][t][1]
    return loss, grad


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------

P_GRID = [0.004, 0.02, 0.08, 0.3, 0.7, 0.97]
MASK = [[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]]  # full, partial, one token, empty sequence


def make_inputs(kw: dict, seed: int, B: int = 4, T: int = 4):
    """float64 (logp, old_logp, adv, mask) whose ratios sit >= 1e-3 (relative) away from every kink."""
    g = torch.Generator().manual_seed(seed)

    def u() -> float:
        return float(torch.rand((), generator=g, dtype=torch.float64))

    old = [[math.log(P_GRID[int(u() * len(P_GRID))]) for _ in range(T)] for _ in range(B)]
    adv = [[(u() * 4 - 2) for _ in range(T)] for _ in range(B)]
    kinks_all = [kw.get("dual_clip"), ref_settings(kw)["max_ratio"]]
    logp = [[0.0] * T for _ in range(B)]
    for b, t in itertools.product(range(B), range(T)):
        lo, up = ref_bounds(kw, math.exp(old[b][t]))
        kinks = [k for k in [lo, up, *kinks_all] if k is not None and k > 0]
        hi = min(2.5, -old[b][t] - 0.01)  # r <= 1/p: logp stays a log-probability
        while True:
            lr = -2.5 + u() * (hi + 2.5)
            r = math.exp(lr)
            if all(abs(r - k) > 1e-3 * k for k in kinks):
                break
        logp[b][t] = old[b][t] + lr
    mask = [row[:T] for row in MASK[:B]]
    f64 = dict(dtype=torch.float64)
    return torch.tensor(logp, **f64), torch.tensor(old, **f64), torch.tensor(adv, **f64), torch.tensor(mask, dtype=torch.bool)


def _seed(*parts) -> int:
    """A per-case seed that does not depend on Python's per-process string hashing."""
    return zlib.crc32(repr(parts).encode())


GRID = list(itertools.product(METHODS, [None, 3.0], [None, 2.0], AGGS))


@pytest.mark.parametrize(
    "method, dual_clip, max_ratio, agg",
    GRID,
    ids=[f"{m[0]}-dual{d}-cap{c}-{a}" for m, d, c, a in GRID],
)
def test_matches_naive_reference_value_and_gradient(method, dual_clip, max_ratio, agg):
    label, base = method
    kw = dict(base, dual_clip=dual_clip, max_ratio=max_ratio)
    logp, old, adv, mask = make_inputs(kw, _seed(label, dual_clip, max_ratio, agg))
    x = logp.clone().requires_grad_(True)
    loss, metrics = policy_loss(x, old, adv, mask, agg=agg, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    expected, expected_grad = ref_loss(kw, logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), agg)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # autograd against finite differences of the loss itself
    assert torch.autograd.gradcheck(lambda y: policy_loss(y, old, adv, mask, agg=agg, **kw)[0], (x,), eps=1e-6)


def test_grid_actually_exercises_every_branch():
    """The reference grid's inputs clip low and high, hit the cap and the dual clip (else the test is weak)."""
    seen = dict(low=0, high=0, dual=0, cap=0)
    for (label, base), dual_clip, max_ratio, agg in GRID:
        kw = dict(base, dual_clip=dual_clip, max_ratio=max_ratio)
        logp, old, adv, mask = make_inputs(kw, _seed(label, dual_clip, max_ratio, agg))
        _, m = policy_loss(logp, old, adv, mask, agg=agg, **kw)
        seen["low"] += m["clip_ratio/low_mean"].item() > 0
        seen["high"] += m["clip_ratio/high_mean"].item() > 0
        seen["dual"] += m["dual_clip_fraction"].item() > 0
        cap = ref_settings(kw)["max_ratio"]
        if cap is not None:
            spec = resolve_method(base["method"], **{k: v for k, v in base.items() if k != "method"})
            lo, up = spec.bounds(old)  # the rule itself, before the cap
            seen["cap"] += bool(((up > cap) & mask & (adv > 0) & (logp - old > math.log(cap))).any())
    assert all(v >= 5 for v in seen.values()), seen


# ------------------------------------------------------------------------------------------------------
# Bounds methods
# ------------------------------------------------------------------------------------------------------


def test_dcpo_bounds_match_the_worked_examples():
    """p = 0.08 -> [0.5, (1+√11)/2 = 2.1583], p = 1 -> [(1+√0.36)/2 = 0.8, (1+√1.8)/2 = 1.1708] (0.16/0.2)."""
    old = torch.log(torch.tensor([0.08, 1.0], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, "dcpo")
    torch.testing.assert_close(lower, torch.tensor([0.5, 0.8], dtype=torch.float64), rtol=1e-15, atol=0)
    expected_upper = torch.tensor([(1 + math.sqrt(11)) / 2, (1 + math.sqrt(1.8)) / 2], dtype=torch.float64)
    torch.testing.assert_close(upper, expected_upper, rtol=1e-15, atol=0)
    assert abs(upper[0].item() - 2.158) < 5e-4 and abs(upper[1].item() - 1.1708) < 5e-5
    # r_max = 10 binds for p < 4 eps_high / ((2·10 - 1)² - 1) = 0.8/360
    tiny = torch.tensor([math.log(1e-3), -700.0], dtype=torch.float64)
    lower, upper = bandpo.bounds(tiny, "dcpo")
    assert upper.tolist() == [10.0, 10.0] and lower.tolist() == [0.5, 0.5]
    assert bandpo.bounds(tiny, "dcpo", r_max=5)[1].tolist() == [5.0, 5.0]


def test_clip_and_band_bounds():
    old = torch.log(torch.tensor([0.01, 0.08, 0.5, 0.99], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, "clip_higher")
    assert lower.tolist() == [0.8] * 4 and upper.tolist() == [1.28] * 4
    lower, upper = bandpo.bounds(old, "clip")
    assert upper.tolist() == [1.2] * 4
    assert bandpo.bounds(old, "clip", eps_high=0.28)[1].tolist() == [1.28] * 4
    for div in ("kl", "tv", "chi2"):
        got = bandpo.bounds(old, f"band_{div}", max_ratio=1e6)  # a cap that does not bind here
        want = bandpo.band(old, 0.05, div)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert torch.equal(bandpo.bounds(old, "band_kl", divergence=div, max_ratio=1e6)[1], want[1])


def test_method_table_and_registry():
    assert list_methods() == sorted([
        "clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "band_hellinger", "band_js",
        "band_reverse_kl", "band_neyman_chi2", "band_kl_relax", "band_kl_upper", "band_kl_lower", "dppo_kl",
        "dppo_tv", "no_clip", "band_kl_upper_rare",
        # tests/test_parity_verl_methods.py, tests/test_surrogates.py
        "gspo", "cispo", "sapo", "gpg", "clip_cov", "kl_cov", "gmpo", "dro", "vespo", "cispo_band_kl", "gmpo_band_kl",
    ])
    assert get_method("clip").bounds == Clip(0.2, 0.2) and get_method("clip").max_ratio is None
    assert get_method("clip_higher").bounds == Clip(0.2, 0.28)
    assert get_method("dcpo").settings() == dict(eps_low=0.16, eps_high=0.2, r_max=10.0, max_ratio=None)
    assert get_method("band_kl").settings() == dict(divergence="kl", delta=0.05, max_ratio=10.0)
    assert get_method("no_clip").bounds == Clip(1.0, 1e6)
    assert LossConfig(method="clip_higher").method_spec() == get_method("clip_higher")
    assert LossConfig(method="dcpo", eps_high=0.3).method_spec().settings()["eps_high"] == 0.3
    cfg = LossConfig(method="dcpo", dual_clip=10.0, agg="seq-mean-token-mean")
    assert LossConfig(**dataclasses.asdict(cfg)) == cfg  # a config round-trips through a dict (YAML, CLI)
    assert list_aggregations() == sorted(AGGS)

    class Half:
        """test only: [0.5, 2]"""

        def __call__(self, old_logp, *, step=None):
            return torch.full_like(old_logp, 0.5), torch.full_like(old_logp, 2.0)

    register_method(Method("half", Half()))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method(Method("half", Half()))
        logp, old, adv, mask = make_inputs(dict(method="clip", eps_low=0.5, eps_high=1.0), 3)
        a = policy_loss(logp, old, adv, mask, method="half")[0]
        b = policy_loss(logp, old, adv, mask, method="clip", eps_low=0.5, eps_high=1.0)[0]
        assert torch.equal(a, b)
        assert torch.equal(policy_loss(logp, old, adv, mask, method=Half())[0], a)  # a bare rule works too
    finally:
        unregister_method("half")
    assert "half" not in list_methods()


# ------------------------------------------------------------------------------------------------------
# Masking and micro-batches
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("method", ["clip_higher", "dcpo", "band_kl"])
def test_masked_tokens_have_no_effect(method, agg):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 7
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 6
    logp = (old + torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.4
    mask[0] = False  # an empty sequence too
    garbage = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 5.0, -800.0], dtype=torch.float64)
    pick = torch.randint(0, len(garbage), (3, B, T), generator=g)
    outs = []
    for dirty in (False, True):
        lp, ol, ad = logp.clone(), old.clone(), adv.clone()
        if dirty:
            for x, k in zip((lp, ol, ad), pick):
                x[~mask] = garbage[k][~mask]
        x = lp.requires_grad_(True)
        loss, metrics = policy_loss(x, ol, ad, mask, method=method, agg=agg, dual_clip=3.0, max_ratio=10.0)
        (grad,) = torch.autograd.grad(loss, x)
        outs.append((loss, grad, metrics))
    (l0, g0, m0), (l1, g1, m1) = outs
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert torch.all(g1[~mask] == 0)
    assert all(torch.equal(m0[k], m1[k]) for k in METRIC_KEYS)
    # the float mask gives the same as the bool mask
    l2, _ = policy_loss(logp, old, adv, mask.to(torch.float32), method=method, agg=agg, dual_clip=3.0, max_ratio=10.0)
    assert torch.equal(l0, l2)


def _batch(seed: int, B: int = 8, T: int = 6, empty_rows: bool = True):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    logp = (old + 0.7 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    lengths = torch.randint(0 if empty_rows else 1, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    if empty_rows:
        mask[1] = False
    return logp, old, adv, mask


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batches_sum_to_the_whole_with_the_global_denominator(agg):
    """Every mode: each micro-batch divided by the whole batch's denominator; the parts sum to the whole."""
    logp, old, adv, mask = _batch(2)
    kw = dict(method="band_kl", agg=agg, dual_clip=10.0, max_ratio=10.0)
    x = logp.clone().requires_grad_(True)
    whole, _ = policy_loss(x, old, adv, mask, **kw)
    (g_whole,) = torch.autograd.grad(whole, x)
    den = aggregation_denominator(mask, agg)
    x = logp.clone().requires_grad_(True)
    parts = [policy_loss(x[i : i + 3], old[i : i + 3], adv[i : i + 3], mask[i : i + 3], denominator=den, **kw)[0] for i in (0, 3, 6)]
    total = sum(parts)
    (g_parts,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(total, whole, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-14, atol=1e-15)
    # a Python-number denominator does the same
    total_float = sum(
        policy_loss(logp[i : i + 4], old[i : i + 4], adv[i : i + 4], mask[i : i + 4], denominator=float(den), **kw)[0]
        for i in (0, 4)
    )
    torch.testing.assert_close(total_float, whole, rtol=1e-14, atol=1e-15)


def _rank_worker(rank: int, world: int, init_file: str, agg: str, out: str) -> None:
    """One process of test_ranks_average_to_the_whole_with_the_mean_denominator (gloo, CPU)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        logp, old, adv, mask = _batch(2)
        rows = slice(0, 3) if rank == 0 else slice(3, 8)  # unequal shares of rows and valid tokens
        kw = dict(method="band_kl", agg=agg, dual_clip=10.0, max_ratio=10.0)
        results = []
        for mean_den in (True, False):
            den = aggregation_denominator(mask[rows], agg)
            if mean_den:  # what BandPOModule does with several processes
                dist.all_reduce(den, op=dist.ReduceOp.SUM)
                den = den / world
            x = logp.clone().requires_grad_(True)
            loss, _ = policy_loss(x[rows], old[rows], adv[rows], mask[rows], denominator=den, **kw)
            (grad,) = torch.autograd.grad(loss, x)
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # DDP's gradient average
            results.append(grad / world)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_ranks_average_to_the_whole_with_the_mean_denominator(tmp_path, agg):
    """Two real gloo processes with unequal valid-token counts: averaging their gradients (as DDP does) gives
    the whole batch's gradient when each divides by the mean of the ranks' denominators, and not when each
    uses its own (a mean of per-rank means)."""
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "pg"), agg, str(out)), nprocs=2, join=True)
    g_mean_den, g_own_den = torch.load(out)
    logp, old, adv, mask = _batch(2)
    x = logp.clone().requires_grad_(True)
    whole, _ = policy_loss(x, old, adv, mask, method="band_kl", agg=agg, dual_clip=10.0, max_ratio=10.0)
    (g_whole,) = torch.autograd.grad(whole, x)
    torch.testing.assert_close(g_mean_den, g_whole, rtol=1e-13, atol=1e-15)
    assert not torch.allclose(g_own_den, g_whole, rtol=1e-6, atol=0)


@pytest.mark.parametrize("agg", AGGS)
def test_plain_mean_of_equal_micro_batches(agg):
    """Which modes recombine as the plain mean of equal-size micro-batch losses (the documented list)."""
    kw = dict(method="clip_higher", agg=agg, dual_clip=3.0)
    for empty_rows in (False, True):
        logp, old, adv, mask = _batch(5, empty_rows=empty_rows)
        whole = policy_loss(logp, old, adv, mask, **kw)[0]
        parts = [policy_loss(logp[i : i + 4], old[i : i + 4], adv[i : i + 4], mask[i : i + 4], **kw)[0] for i in (0, 4)]
        mean = (parts[0] + parts[1]) / 2
        recombines = agg == "seq-mean-token-sum-norm" or (agg.startswith("seq-mean") and not empty_rows)
        assert torch.allclose(mean, whole, rtol=1e-13, atol=1e-15) == recombines, (agg, empty_rows)
        if agg == "token-mean":  # token-count weights recombine it
            n = [mask[i : i + 4].sum() for i in (0, 4)]
            weighted = (parts[0] * n[0] + parts[1] * n[1]) / (n[0] + n[1])
            torch.testing.assert_close(weighted, whole, rtol=1e-13, atol=1e-15)


def test_aggregate_all_masked_is_zero_and_direct_values():
    loss_mat = torch.tensor([[1.0, 2.0, 4.0], [8.0, math.nan, 16.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    # hand-computed from the formulas in the aggregate docstring
    assert aggregate(loss_mat, mask, "token-mean").item() == (1 + 2 + 8 + 16) / 4
    assert aggregate(loss_mat, mask, "seq-mean-token-mean").item() == (1.5 + 12) / 2
    assert aggregate(loss_mat, mask, "seq-mean-token-sum").item() == (3 + 24) / 2
    assert aggregate(loss_mat, mask, "seq-mean-token-sum-norm").item() == 27 / 6
    for agg in AGGS:
        assert aggregate(loss_mat, torch.zeros_like(mask), agg).item() == 0.0


# ------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------


def test_metrics_definitions():
    """Hand-checked metrics on tokens placed in each bucket with known clipping (clip 0.2/0.28, dual c = 3)."""
    p = torch.tensor([[0.005, 0.05, 0.3, 0.8, 0.9, 0.02]], dtype=torch.float64)
    r = torch.tensor([[4.0, 1.5, 0.5, 1.1, 0.7, 2.0]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0, -1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    old = torch.log(p)
    _, m = policy_loss(old + torch.log(r), old, adv, mask, method="clip_higher", dual_clip=3.0)
    assert set(m) == set(METRIC_KEYS)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    f = {k: v.item() for k, v in m.items()}
    # token 0: r=4 > 1.28, A<0: not sign-clipped (low needs r<0.8), dual-clipped (4 > 3)
    # token 1: r=1.5 > 1.28, A>0: high-clipped. token 2: r=0.5 < 0.8, A<0: low-clipped.
    # token 3: inside. token 4: r=0.7 < 0.8 but A>0: not clipped. token 5: masked.
    assert f["num_tokens"] == 5
    assert f["clip_ratio/low_mean"] == pytest.approx(1 / 5, abs=1e-15)
    assert f["clip_ratio/high_mean"] == pytest.approx(1 / 5, abs=1e-15)
    assert f["clip_ratio/region_mean"] == pytest.approx(2 / 5, abs=1e-15)
    assert f["dual_clip_fraction"] == pytest.approx(1 / 5, abs=1e-15)
    assert f["ratio/mean"] == pytest.approx((4 + 1.5 + 0.5 + 1.1 + 0.7) / 5, rel=1e-14)
    assert f["ratio/min"] == pytest.approx(0.5, rel=1e-14) and f["ratio/max"] == pytest.approx(4.0, rel=1e-14)
    assert f["ppo_kl"] == pytest.approx(-sum(math.log(x) for x in (4, 1.5, 0.5, 1.1, 0.7)) / 5, rel=1e-12)
    assert f["bounds/lower_mean"] == pytest.approx(0.8) and f["band_width/mean"] == pytest.approx(0.48)
    # buckets: [0,.01): token 0; [.01,.1): token 1 (token 5 masked); [.1,.5): token 2; [.5,1]: tokens 3, 4
    assert [f[f"bucket/{b}/tokens"] for b in BUCKET_NAMES] == [1, 1, 1, 2]
    assert [f[f"bucket/{b}/clip_low_mean"] for b in BUCKET_NAMES] == [0, 0, 1, 0]
    assert [f[f"bucket/{b}/clip_high_mean"] for b in BUCKET_NAMES] == [0, 1, 0, 0]
    assert [f[f"bucket/{b}/clip_region_mean"] for b in BUCKET_NAMES] == [0, 1, 1, 0]
    assert f["bucket/p0.5-1/band_width_mean"] == pytest.approx(0.48)


def test_bucket_edges_and_band_width_with_cap():
    """A token exactly at an edge goes to the upper bucket; band width uses the capped upper bound."""
    p = torch.tensor([[0.01, 0.1, 0.5, 0.001]], dtype=torch.float64)
    old = torch.log(p)
    _, m = policy_loss(old, old, torch.ones_like(p), torch.ones_like(p, dtype=torch.bool), method="band_kl", max_ratio=10.0)
    assert [m[f"bucket/{b}/tokens"].item() for b in BUCKET_NAMES] == [1, 1, 1, 1]
    lower, upper = bandpo.band(old, 0.05, "kl")
    assert upper[0, 3] > 10  # the cap binds for the p = 0.001 token
    width = (upper.clamp(max=10) - lower)[0]
    torch.testing.assert_close(m["bucket/p0-0.01/band_width_mean"], width[3], rtol=1e-15, atol=0)
    torch.testing.assert_close(m["band_width/mean"], width.mean(), rtol=1e-15, atol=1e-15)
    assert BUCKET_EDGES == (0.01, 0.1, 0.5)


def test_every_metric_key_is_documented():
    root = Path(__file__).resolve().parents[1]
    docs = [root / "docs" / "metrics.md", root / "README.md"]
    text = "\n".join(d.read_text() for d in docs if d.exists())
    missing = [k for k in METRIC_KEYS if f"`{k}`" not in text and "bucket/" not in k]
    assert not missing, f"metric keys not documented: {missing}"
    for stat in ("tokens", "clip_low_mean", "clip_high_mean", "clip_region_mean", "band_width_mean"):
        assert f"`bucket/<bucket>/{stat}`" in text
    for name in BUCKET_NAMES:
        assert f"`{name}`" in text


# ------------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------------------


@st.composite
def batches(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 5.0, 40.0]))
    logp = (old + draw(st.sampled_from([0.1, 1.0, 5.0])) * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.3, 0.8, 1.0]))
    kw = dict(draw(st.sampled_from(METHODS))[1], agg=draw(st.sampled_from(AGGS)))
    kw["max_ratio"] = draw(st.sampled_from([None, 1.5, 10.0]))
    return logp, old, adv, mask, kw


@given(batches())
def test_property_pessimistic_and_dual_clip_bounds(batch):
    """Without dual-clip the loss is >= the unclipped surrogate (PPO's pessimism); dual-clip only lowers it,
    and caps each A<0 token's loss at |A|·c."""
    logp, old, adv, mask, kw = batch
    loss, m = policy_loss(logp, old, adv, mask, dual_clip=None, **kw)
    unclipped = aggregate(-adv * torch.exp(logp - old), mask, kw["agg"])
    assert loss >= unclipped - 1e-12 * (1 + unclipped.abs())
    loss_dual, _ = policy_loss(logp, old, adv, mask, dual_clip=3.0, **kw)
    assert loss_dual <= loss + 1e-12 * (1 + loss.abs())
    neg = -adv.abs()
    loss_neg, _ = policy_loss(logp, old, neg, mask, dual_clip=3.0, **kw)
    assert loss_neg <= aggregate(-neg * 3.0, mask, kw["agg"]) + 1e-12
    # metric consistency
    assert 0 <= m["clip_ratio/region_mean"] <= 1
    torch.testing.assert_close(m["clip_ratio/region_mean"], m["clip_ratio/low_mean"] + m["clip_ratio/high_mean"])
    n_b = torch.stack([m[f"bucket/{b}/tokens"] for b in BUCKET_NAMES])
    assert n_b.sum() == m["num_tokens"] == mask.sum()
    for stat, key in (("clip_low_mean", "clip_ratio/low_mean"), ("band_width_mean", "band_width/mean")):
        pooled = (torch.stack([m[f"bucket/{b}/{stat}"] for b in BUCKET_NAMES]) * n_b).sum() / n_b.sum().clamp(min=1)
        torch.testing.assert_close(pooled, m[key], rtol=1e-12, atol=1e-12)


@given(batches())
def test_property_on_policy_step_is_the_plain_policy_gradient(batch):
    """At logp = old_logp every ratio is 1, inside every band: loss = agg(-A) and grad = agg-weights·(-A)."""
    _, old, adv, mask, kw = batch
    x = old.clone().requires_grad_(True)
    loss, m = policy_loss(x, old, adv, mask, dual_clip=3.0, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    y = old.clone().requires_grad_(True)
    plain = aggregate(-adv * torch.exp(y - old), mask, kw["agg"])
    (grad_plain,) = torch.autograd.grad(plain, y)
    torch.testing.assert_close(loss, plain, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad, grad_plain, rtol=1e-14, atol=1e-15)
    assert m["clip_ratio/region_mean"] == 0 and m["ppo_kl"] == 0


# ------------------------------------------------------------------------------------------------------
# Numerics at the extremes
# ------------------------------------------------------------------------------------------------------

EXTREME_OLD = [-700.0, -300.0, -103.0, -88.0, -20.0, -1.0, -1e-7, 0.0]
EXTREME_LR = [-100.0, -20.5, -1.0, 0.0, 1.0, 20.5, 100.0]


def _extreme_batch(dtype):
    pairs = [(o, o + lr) for o in EXTREME_OLD for lr in EXTREME_LR if o + lr <= 0]
    old = torch.tensor([[o for o, _ in pairs]], dtype=torch.float64)
    logp = torch.tensor([[lp for _, lp in pairs]], dtype=torch.float64)
    n = old.shape[1]
    adv = torch.tensor([[(-1.0) ** i * (1 + i % 3) for i in range(n)]], dtype=torch.float64)
    return logp.to(dtype), old.to(dtype), adv.to(dtype), torch.ones(1, n, dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label, kw", METHODS, ids=[m[0] for m in METHODS])
def test_finite_at_the_extremes(label, kw, dtype):
    logp, old, adv, mask = _extreme_batch(dtype)
    for dual_clip, max_ratio in ((None, None), (10.0, 10.0)):
        x = logp.clone().requires_grad_(True)
        loss, m = policy_loss(x, old, adv, mask, dual_clip=dual_clip, max_ratio=max_ratio, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.dtype == dtype
        bad = [k for k, v in m.items() if not torch.isfinite(v)]
        assert not bad, bad
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("label, kw", METHODS, ids=[m[0] for m in METHODS])
def test_bfloat16_is_computed_in_float32(label, kw):
    """bf16 inputs give exactly the float32 result on the same (bf16-rounded) values."""
    logp, old, adv, mask = _batch(7, empty_rows=False)
    lp16, old16, adv16 = (t.to(torch.bfloat16) for t in (logp, old, adv))
    a, ma = policy_loss(lp16, old16, adv16, mask, dual_clip=10.0, max_ratio=10.0, **kw)
    b, mb = policy_loss(*(t.to(torch.float32) for t in (lp16, old16, adv16)), mask, dual_clip=10.0, max_ratio=10.0, **kw)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert all(torch.equal(ma[k], mb[k]) for k in METRIC_KEYS)


def test_validate_false_gives_the_same_result():
    logp, old, adv, mask = _batch(11)
    a = policy_loss(logp, old, adv, mask, dual_clip=10.0)
    b = policy_loss(logp, old, adv, mask, dual_clip=10.0, validate=False)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in METRIC_KEYS)


# ------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------


def _good():
    logp, old, adv, mask = _batch(0, B=2, T=3, empty_rows=False)
    return dict(logp=logp, old_logp=old, adv=adv, mask=mask)


BAD_ARGS = [
    (dict(method="ppo"), "unknown method 'ppo'; known methods: " + ", ".join(list_methods()) + " "),
    (dict(agg="mean"), "unknown aggregation 'mean'; known aggregations: seq-mean-token-mean"),
    (dict(divergence="kl2"), "unknown divergence 'kl2'"),
    (dict(delta=0.0), "delta must be a finite number > 0"),
    (dict(delta=-0.1), "delta must be a finite number > 0"),
    (dict(delta=math.nan), "delta must be a finite number > 0"),
    (dict(delta=math.inf), "delta must be a finite number > 0"),
    (dict(method="clip", eps_low=-0.1), r"eps_low must be a number in \[0, 1\]"),
    (dict(method="clip", eps_low=1.5), r"eps_low must be a number in \[0, 1\]"),
    (dict(method="clip", eps_high=-0.01), "eps_high must be a finite number >= 0"),
    (dict(method="clip", eps_high=math.inf), "eps_high must be a finite number >= 0"),
    (dict(method="clip", eps_high=math.nan), "eps_high must be a finite number >= 0"),
    (dict(dual_clip=1.0), "dual_clip must be None or a finite number > 1"),
    (dict(dual_clip=0.5), "dual_clip must be None or a finite number > 1"),
    (dict(dual_clip=-3.0), "dual_clip must be None or a finite number > 1"),
    (dict(max_ratio=0.9), "max_ratio must be None, a number >= 1"),
    (dict(max_ratio=math.nan), "max_ratio must be None, a number >= 1"),  # inf is allowed: no cap (test_methods)
    (dict(denominator=0.0), "denominator must be finite and > 0"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGS, ids=[str(a) for a, _ in BAD_ARGS])
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_loss(**_good(), **kwargs)


def test_bad_shapes_and_dtypes_raise():
    good = _good()
    B, T = good["logp"].shape
    with pytest.raises(ValueError, match=r"expand a per-sequence advantage explicitly"):
        policy_loss(**{**good, "adv": good["adv"][:, 0]})
    with pytest.raises(ValueError, match=r"expand a per-sequence advantage explicitly"):
        policy_loss(**{**good, "adv": good["adv"][:, :1]})
    with pytest.raises(ValueError, match=r"old_logp must have logp's shape"):
        policy_loss(**{**good, "old_logp": good["old_logp"][:, :2]})
    with pytest.raises(ValueError, match=r"mask must have logp's shape"):
        policy_loss(**{**good, "mask": good["mask"].T})
    with pytest.raises(ValueError, match=r"logp must be a \(B, T\) tensor"):
        policy_loss(**{**good, "logp": good["logp"].reshape(-1)})
    with pytest.raises(ValueError, match=r"adv must be a floating tensor"):
        policy_loss(**{**good, "adv": torch.ones(B, T, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"old_logp must be a torch.Tensor"):
        policy_loss(**{**good, "old_logp": good["old_logp"].tolist()})
    with pytest.raises(ValueError, match=r"loss_mat and mask must both be \(B, T\)"):
        aggregate(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"unknown aggregation"):
        aggregation_denominator(torch.ones(2, 3), "sum")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("logp", math.nan, "logp is NaN or infinite"),
        ("logp", 0.5, "logp > 0"),
        ("old_logp", -math.inf, "old_logp is NaN or infinite"),
        ("old_logp", 1.0, "old_logp > 0"),
        ("adv", math.inf, "adv is NaN or infinite"),
        ("mask", 0.5, "mask holds a value other than 0 and 1"),
    ],
)
def test_bad_values_at_valid_tokens_raise(name, value, message):
    good = _good()
    if name == "mask":
        good["mask"] = good["mask"].to(torch.float32)
    good[name] = good[name].clone()
    assert good["mask"][0, 0]  # a valid token
    good[name][0, 0] = value
    with pytest.raises(ValueError, match=message):
        policy_loss(**good)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that validate=False never syncs")
@pytest.mark.parametrize("method", ["clip", "dcpo"])
def test_no_host_sync_without_validation_on_cuda(method):
    """With validate=False, computing the loss, its gradient and every metric issues no host-device sync.

    (``band`` is left out here: its own sync-freedom belongs to bandpo.band's tests.)
    """
    logp, old, adv, mask = (t.cuda() for t in _batch(3))
    x = logp.clone().requires_grad_(True)
    policy_loss(x, old, adv, mask, method=method, dual_clip=10.0, max_ratio=10.0, validate=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for agg in AGGS:
            loss, metrics = policy_loss(
                x, old, adv, mask, method=method, dual_clip=10.0, max_ratio=10.0, agg=agg, validate=False
            )
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(metrics) == set(METRIC_KEYS) and torch.isfinite(x.grad).all()
