"""bandpo_theory.dppo: DPPO's mask against BandPO's clip.

The sympy identities (the binary TV/KL equal g_f; g_f is monotone on each side of 1; the gradients of the two loss
forms), then every case of ``bandpo_theory.dppo.CASES`` checked through the loss code itself: the per-token
gradient ∂ℓ/∂log π of ``bandpo.policy_loss`` for ``band_<f>`` (cap 10, dual clip 10) and ``dppo_<f>`` (C = 20) at
the same δ = 0.05, on one constructed token per case, against the derivation's formulas and its same/differ verdict.
"""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo_theory import dppo as D

DELTA = 0.05
DUAL = 10.0


@pytest.mark.parametrize("divergence", D.DPPO_DIVERGENCES)
def test_binary_divergence_is_g_f_and_monotone(divergence):
    assert D.region_identity(divergence) == {"r > 1": 0, "r < 1": 0}
    assert D.monotone_sides(divergence) == {"r > 1": 1, "r < 1": 1}


def test_gradient_identities():
    assert D.gradient_identity() == {"ppo": 0, "dppo": 0, "dppo_as_ratio": 0}
    with pytest.raises(ValueError, match="binary divergences are tv, kl"):
        D.binary_divergence("chi2")


def _grad(method: str, old_logp: float, ratio: float, adv: float, **kw) -> float:
    """∂ℓ/∂log π of one token through bandpo.policy_loss (float64, token-mean over one token)."""
    old = torch.tensor([[old_logp]], dtype=torch.float64)
    logp = (old + math.log(ratio)).clone().requires_grad_(True)
    loss, _ = bandpo.policy_loss(logp, old, torch.tensor([[adv]], dtype=torch.float64),
                                 torch.ones(1, 1, dtype=torch.bool), method=method, agg="token-mean", **kw)
    loss.backward()
    return float(logp.grad)


def _interval(method: str, old_logp: float, **kw) -> "tuple[float, float]":
    lo, up = bandpo.bounds(torch.tensor([old_logp], dtype=torch.float64), method, **kw)
    return float(lo), float(up)


# (case name, p, where r lies as a function of (band interval, DPPO region), A, extra band settings)
def _tokens(divergence):
    out = [
        ("inside, A > 0", 0.3, lambda b, d: 1 + 0.5 * (b[1] - 1), +1.0, {}),
        ("pushed out above, A > 0", 0.3, lambda b, d: 1.05 * d[1], +1.0, {}),
        ("safe side, A > 0", 0.3, lambda b, d: 0.5 * d[0], +1.0, {}),
        ("cap binds, A > 0", 1e-3, lambda b, d: 15.0, +1.0, {}),
        ("pushed out below, A < 0", 0.3, lambda b, d: 0.5 * d[0], -1.0, {}),
        ("inside or safe side, A < 0", 0.3, lambda b, d: 1.5 * d[1], -1.0, {}),
        ("inside or safe side, A < 0", 0.3, lambda b, d: 0.5 * (d[0] + 1), -1.0, {}),
        ("dual clip, A < 0", 0.02, lambda b, d: 15.0, -1.0, {}),
        ("truncation", 1e-3, lambda b, d: 30.0, +1.0, {"max_ratio": math.inf}),
    ]
    if divergence == "tv":  # the TV band saturates (KL's never does)
        out += [
            ("saturated side", 0.97, lambda b, d: (1 - 1e-9) / 0.97, +1.0, {}),  # r̄ = 1/p once p >= 1 - δ
            ("saturated side", 0.03, lambda b, d: 1e-3, -1.0, {}),  # r̲ = 0 once p <= δ
        ]
    return out


@pytest.mark.parametrize("divergence", D.DPPO_DIVERGENCES)
def test_every_case_through_the_loss_code(divergence):
    cases = {c.name: c for c in D.CASES}
    seen = set()
    for name, prob, where, adv, band_kw in _tokens(divergence):
        case = cases[name]
        old = math.log(prob)
        band_m, dppo_m = f"band_{divergence}", f"dppo_{divergence}"
        band_iv = _interval(band_m, old, **band_kw)
        dppo_iv = _interval(dppo_m, old, delta=DELTA)
        ratio = where(band_iv, dppo_iv)
        assert 0 < ratio * prob <= 1, name
        g_band = _grad(band_m, old, ratio, adv, dual_clip=None if band_kw else DUAL, **band_kw)
        g_dppo = _grad(dppo_m, old, ratio, adv, delta=DELTA)
        want_band = D.bandpo_gradient(adv, ratio, *band_iv, None if band_kw else DUAL)
        want_dppo = D.dppo_gradient(adv, ratio, *dppo_iv, tis_cap=20.0)
        assert g_band == pytest.approx(want_band, rel=1e-12, abs=1e-300), name
        assert g_dppo == pytest.approx(want_dppo, rel=1e-12, abs=1e-300), name
        assert (g_band == pytest.approx(g_dppo, rel=1e-12, abs=1e-300)) == case.same, name
        assert math.copysign(1, adv) == case.adv_sign or name == "saturated side", name
        seen.add(name)
    assert seen == set(cases) - ({"saturated side"} if divergence == "kl" else set())


@pytest.mark.parametrize("divergence", D.DPPO_DIVERGENCES)
def test_without_cap_dual_clip_and_truncation_the_gradients_are_equal(divergence):
    """The derived statement: at equal δ and π_old, BandPO-f uncapped without dual clip and DPPO-f with C = inf
    give every token the same gradient (a grid of p, r, both signs of A)."""
    g = torch.Generator().manual_seed(0)
    B, T = 8, 64
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.999 + 1e-4)
    logp = (old + torch.empty(B, T, dtype=torch.float64).uniform_(-4, 4, generator=g)).clamp(max=0)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    grads, masked = [], None
    for method, kw in ((f"band_{divergence}", dict(max_ratio=math.inf, dual_clip=None)),
                       (f"dppo_{divergence}", dict(delta=DELTA, tis_cap=math.inf))):
        leaf = logp.clone().requires_grad_(True)
        loss, metrics = bandpo.policy_loss(leaf, old, adv, mask, method=method, agg="token-mean", **kw)
        loss.backward()
        grads.append(leaf.grad)
        masked = metrics["clip_ratio/region_mean"]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)
    assert 0.05 < float(masked) < 0.95  # both kinds of token occur
