"""The DPPO methods (``dppo_kl``, ``dppo_tv``: the mask surrogate), the composite bounds rules (``Union``,
``Split``) and the methods built from them (``band_kl_relax``, ``band_kl_upper``, ``band_kl_lower``).

DPPO's loss is checked against a direct formula written here from arXiv 2602.04879's description: its binary
divergence computed from p and q = π_new directly (not through the band), the mask on the advantage's side, and
the truncated-IS loss -sg(min(r, C))·A·log π, whose gradient the package's loss must have.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import bandpo
from bandpo.losses import (
    METRIC_KEYS,
    Band,
    Clip,
    LossConfig,
    Split,
    Union,
    get_method,
    policy_loss,
    resolve_method,
    rule_settings,
    surrogate,
)

P = [1e-6, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 0.96, 0.999]
NEW_IDS = ("dppo_kl", "dppo_tv", "band_kl_relax", "band_kl_upper", "band_kl_lower")


def _old():
    return torch.log(torch.tensor([P], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------


def test_new_methods_resolve_with_their_settings():
    assert get_method("dppo_kl").settings() == dict(divergence="kl", delta=0.05, max_ratio=None, tis_cap=20.0)
    assert get_method("dppo_tv").settings() == dict(divergence="tv", delta=0.15, max_ratio=None, tis_cap=20.0)
    assert get_method("band_kl_relax").settings() == dict(divergence="kl", delta=0.05, eps_low=0.2, eps_high=0.28, max_ratio=10.0)
    assert get_method("band_kl_upper").settings() == dict(eps_low=0.2, divergence="kl", delta=0.05, max_ratio=10.0)
    assert get_method("band_kl_lower").settings() == dict(divergence="kl", delta=0.05, eps_high=0.2, max_ratio=None)
    assert [get_method(m).surrogate for m in NEW_IDS] == ["mask", "mask", "clip", "clip", "clip"]
    # overrides reach the part that owns them (the experiments sweep delta)
    m = resolve_method("band_kl_relax", delta=0.1, eps_high=0.3)
    assert m.bounds == Union(Band("kl", 0.1), Clip(0.2, 0.3))
    assert resolve_method("band_kl_upper", delta=0.1, eps_low=0.1).bounds == Split(Clip(0.1, 0.2), Band("kl", 0.1))
    assert resolve_method("band_kl_lower", delta=0.02).bounds == Split(Band("kl", 0.02), Clip(0.2, 0.2))
    assert resolve_method("dppo_tv", delta=0.05, tis_cap=math.inf).settings()["tis_cap"] == math.inf
    for mid in NEW_IDS:  # YAML/CLI: loss.method and loss.delta
        cfg = LossConfig(method=mid, delta=0.07)
        assert cfg.method_spec().settings()["delta"] == 0.07
        assert LossConfig(**dataclasses.asdict(cfg)) == cfg
    assert LossConfig(method="dppo_kl", tis_cap=5.0).method_spec().tis_cap == 5.0


@pytest.mark.parametrize("method, settings, match", [
    ("band_kl_upper", dict(eps_high=0.3), "has no setting 'eps_high'; its settings: eps_low, divergence, delta"),
    ("band_kl_lower", dict(eps_low=0.3), "has no setting 'eps_low'"),
    ("band_kl", dict(tis_cap=5.0), "has no setting 'tis_cap'"),
    ("dppo_kl", dict(tis_cap=0.5), "tis_cap must be a number >= 1"),
    ("dppo_kl", dict(tis_cap=True), "tis_cap must be a number >= 1"),
    ("dppo_tv", dict(delta=-0.1), "delta must be a finite number > 0"),
    ("band_kl_relax", dict(eps_low=2.0), r"eps_low must be a number in \[0, 1\]"),
])
def test_bad_settings_are_one_line_errors(method, settings, match):
    with pytest.raises(ValueError, match=match) as info:
        bandpo.bounds(_old(), method, **settings)
    assert "\n" not in str(info.value)


def test_rule_and_method_validation():
    for bad, match in [
        (lambda: Union(Band("kl"), "clip"), "Union's b must be a bounds rule"),
        (lambda: Split(lower=None), "Split's lower must be a bounds rule"),
        (lambda: bandpo.Method("x", Band("kl"), surrogate="dual"), "surrogate must be one of clip, mask"),
        (lambda: bandpo.Method("x", Band("kl"), tis_cap=20.0), "tis_cap applies to surrogate 'mask' only"),
        (lambda: surrogate(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), form="mask"), "tis_cap must be"),
        (lambda: surrogate(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), form="masked"), "form must be"),
        (lambda: LossConfig(method="dppo_kl", eps_low=0.1), "has no setting 'eps_low'"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            bad()
        assert "\n" not in str(info.value)
    # a name two parts share is set on both
    both = Union(Band("kl", 0.05), Band("tv", 0.1))
    assert rule_settings(both) == dict(divergence="kl", delta=0.05)
    assert bandpo.losses.replace_settings(both, delta=0.2) == Union(Band("kl", 0.2), Band("tv", 0.2))


# ----------------------------------------------------------------------------------------------------------
# Composite bounds: exact, float64
# ----------------------------------------------------------------------------------------------------------


def test_relax_is_the_union_and_the_ablations_take_their_sides():
    old = _old()
    b_lo, b_up = bandpo.band(old, 0.05, "kl")
    lo, up = bandpo.bounds(old, "band_kl_relax")
    assert torch.equal(lo, torch.minimum(b_lo, torch.full_like(b_lo, 0.8)))
    assert torch.equal(up, torch.maximum(b_up, torch.full_like(b_up, 1.28)).clamp(max=10.0))
    assert (up >= 1.28).all() and (lo <= 0.8).all() and (up == 10).any() and (up == 1.28).any()
    lo, up = bandpo.bounds(old, "band_kl_upper")
    assert torch.equal(lo, torch.full_like(lo, 0.8)) and torch.equal(up, b_up.clamp(max=10.0))
    lo, up = bandpo.bounds(old, "band_kl_lower")
    assert torch.equal(lo, b_lo) and torch.equal(up, torch.full_like(up, 1.2))
    # and the loss clips to exactly those (the band methods' own read-back is in tests/test_methods.py)
    for mid in ("band_kl_relax", "band_kl_upper", "band_kl_lower"):
        lo, up = bandpo.bounds(old, mid)
        loss_up, _ = policy_loss(old * 0 + 0.0, old, torch.ones_like(old), torch.ones_like(old, dtype=torch.bool),
                                 method=mid, dual_clip=None, agg="seq-mean-token-sum-norm", validate=False)
        r = torch.exp(-old)  # logp = 0: r = 1/p
        torch.testing.assert_close(loss_up * old.numel(), -torch.minimum(r, up).sum(), rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------------------------------------
# DPPO's loss against a direct formula
# ----------------------------------------------------------------------------------------------------------


def _direct(logp, old, adv, divergence, delta, cap):
    """DPPO written from the paper's description: binary divergence from p, q directly; mask; -sg(min(r, C))·A·log π."""
    p, q = torch.exp(old), torch.exp(logp.detach())
    if divergence == "tv":
        div = (q - p).abs()
    else:
        div = p * (old - logp.detach()) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
    outside = div > delta
    masked = ((adv > 0) & outside & (q > p)) | ((adv < 0) & outside & (q < p))
    w = torch.clamp(torch.exp(logp.detach() - old), max=cap)
    per_token = torch.where(masked, torch.zeros_like(logp), -w * adv * logp)
    return per_token, masked, w


@pytest.mark.parametrize("method, divergence, delta, cap", [
    ("dppo_kl", "kl", 0.05, 20.0), ("dppo_tv", "tv", 0.15, 20.0), ("dppo_tv", "tv", 0.05, math.inf),
])
def test_dppo_loss_gradient_and_metrics_match_a_direct_formula(method, divergence, delta, cap):
    g = torch.Generator().manual_seed(1)
    B, T = 6, 40
    old = torch.empty(B, T, dtype=torch.float64).uniform_(-7.0, -0.05, generator=g)  # p from 1e-3 to 0.95
    logp = (old + torch.empty(B, T, dtype=torch.float64).uniform_(-3, 3.5, generator=g)).clamp(max=-1e-6)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.1
    per_token, masked, w = _direct(logp, old, adv, divergence, delta, cap)
    # keep the test off the region's edge, where the band solver's last ulp decides
    lo, up = bandpo.bounds(old, method, delta=delta)
    r = torch.exp(logp - old)
    mask &= ((r / up - 1).abs() > 1e-9) & ((r / lo - 1).abs() > 1e-9)
    settings = dict(delta=delta, tis_cap=cap)
    leaf = logp.clone().requires_grad_(True)
    loss, m = policy_loss(leaf, old, adv, mask, method=method, agg="token-mean", **settings)
    loss.backward()
    # direct: gradient of Σ m·(-sg(w)·A·log π)/N
    leaf_d = logp.clone().requires_grad_(True)
    n = mask.sum().to(torch.float64)
    direct = (torch.where(mask, _direct(leaf_d, old, adv, divergence, delta, cap)[0], 0.0)).sum() / n
    direct.backward()
    torch.testing.assert_close(leaf.grad, leaf_d.grad, rtol=1e-12, atol=1e-15)
    # value: -A·min(r, C) on kept tokens (DPPO's own value differs by -sg(w)·A·log π_old, no gradient)
    want = torch.where(mask & ~masked, -adv * torch.minimum(r, torch.tensor(cap, dtype=r.dtype)), 0.0).sum() / n
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-15)
    # metrics: the masked fraction by side, the truncated fraction, no dual clip
    assert set(m) == set(METRIC_KEYS)
    hi = (mask & masked & (adv > 0)).sum() / n
    low = (mask & masked & (adv < 0)).sum() / n
    assert float(m["clip_ratio/high_mean"]) == pytest.approx(float(hi), abs=1e-15) and float(hi) > 0
    assert float(m["clip_ratio/low_mean"]) == pytest.approx(float(low), abs=1e-15) and float(low) > 0
    trunc = (mask & ~masked & (r > cap) & (adv != 0)).sum() / n
    assert float(m["truncated_fraction"]) == pytest.approx(float(trunc), abs=1e-15)
    assert (float(trunc) > 0) == math.isfinite(cap)
    assert float(m["dual_clip_fraction"]) == 0.0


def test_dual_clip_is_ignored_by_mask_methods_and_surrogate_matches():
    g = torch.Generator().manual_seed(2)
    old = torch.log(torch.rand(4, 16, generator=g, dtype=torch.float64) * 0.9 + 0.01)
    logp = (old + torch.empty(4, 16, dtype=torch.float64).uniform_(-2, 3.5, generator=g)).clamp(max=0)
    adv = -torch.rand(4, 16, generator=g, dtype=torch.float64) - 0.1  # A < 0: where a dual clip would act
    mask = torch.ones(4, 16, dtype=torch.bool)
    assert (torch.exp(logp - old) > 3).any()
    out = [policy_loss(logp, old, adv, mask, method="dppo_kl", dual_clip=c) for c in (None, 3.0, 10.0)]
    assert all(torch.equal(o[0], out[0][0]) for o in out) and all(float(o[1]["dual_clip_fraction"]) == 0 for o in out)
    assert float(policy_loss(logp, old, adv, mask, method="band_kl", dual_clip=3.0)[1]["dual_clip_fraction"]) > 0
    # the per-token surrogate for frameworks is the loss's own per-token term
    spec = get_method("dppo_kl")
    lo, up = bandpo.bounds(old, "dppo_kl")
    ratio = torch.exp(logp - old).requires_grad_(True)
    per = surrogate(ratio, adv, lo, up, dual_clip=3.0, form=spec.surrogate, tis_cap=spec.tis_cap)
    torch.testing.assert_close(per.mean(), out[0][0], rtol=1e-14, atol=0)
    # loss_metrics (what the plug-ins log) agrees with policy_loss's metrics
    lm = bandpo.losses.loss_metrics(ratio.detach(), adv, lo, up, mask, old, form="mask", tis_cap=spec.tis_cap)
    assert all(torch.allclose(lm[k], out[0][1][k], rtol=1e-14, atol=0) for k in METRIC_KEYS)
