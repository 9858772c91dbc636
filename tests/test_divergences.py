"""The divergence registry: built-ins, user-registered generators, and bad generators."""

from __future__ import annotations

import math

import pytest
import torch

import bandpo


def test_builtins_registered_with_their_curvature():
    expected_f2 = {"kl": 1.0, "reverse_kl": 1.0, "chi2": 2.0, "neyman_chi2": 2.0, "hellinger": 0.5, "js": 0.25}
    assert set(bandpo.list_divergences()) >= set(expected_f2) | {"tv"}
    u = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    for name, f2 in expected_f2.items():
        div = bandpo.get_divergence(name)
        assert div.f2_at_1 == f2
        assert float(div.f(torch.ones(1, dtype=torch.float64))) == 0.0
        # the declared derivative matches autograd of the generator
        x = u.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(div.f(x).sum(), x)
        assert torch.allclose(div.df(u), g, rtol=1e-12, atol=1e-12), name


def test_user_generator_alone_gets_correct_bounds():
    """2·(-log u) is KL scaled by 2: its delta-band is KL's (delta/2)-band. Only f is given."""
    try:
        bandpo.register_divergence("kl_x2", lambda u: -2 * torch.log(u))
        x = torch.log(torch.tensor([1e-6, 0.01, 0.08, 0.5, 0.99], dtype=torch.float64))
        lo, up = bandpo.band(x, 0.1, "kl_x2")
        lo_ref, up_ref = bandpo.band(x, 0.05, "kl")
        assert torch.allclose(lo, lo_ref, rtol=1e-12) and torch.allclose(up, up_ref, rtol=1e-12)
        div = bandpo.get_divergence("kl_x2")
        assert abs(div.f2_at_1 - 2.0) < 1e-6 and math.isinf(div.f_at_0) and abs(div.slope_at_inf) < 1e-12
    finally:
        bandpo.unregister_divergence("kl_x2")


def test_user_saturating_generator_matches_closed_form():
    """TV written by a user (no closed form given) goes through the generic solver and matches tv."""
    try:
        bandpo.register_divergence("my_tv", lambda u: 0.5 * (u - 1).abs())
        x = torch.log(torch.tensor([0.01, 0.04, 0.06, 0.3, 0.97], dtype=torch.float64))
        lo, up = bandpo.band(x, 0.05, "my_tv")
        lo_ref, up_ref = bandpo.band(x, 0.05, "tv")
        assert torch.equal(lo == 0, lo_ref == 0)
        assert torch.allclose(lo, lo_ref, rtol=1e-12, atol=0) and torch.allclose(up, up_ref, rtol=1e-12)
    finally:
        bandpo.unregister_divergence("my_tv")


@pytest.mark.parametrize("f,match", [
    (lambda u: (u - 1) ** 2 + 0.1, "f\\(1\\) = 0"),
    (lambda u: -((u - 1) ** 2), "not convex"),
    (lambda u: torch.sin(u - 1), "not convex"),
    (lambda u: (u - 1) ** 2 + torch.where(u > 1e5, torch.inf, 0.0), "finite"),
    (lambda u: [0.0], "tensor"),
])
def test_bad_generators_raise(f, match):
    with pytest.raises(ValueError, match=match):
        bandpo.register_divergence("bad", f)
    assert "bad" not in bandpo.list_divergences()


def test_duplicate_registration_needs_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        bandpo.register_divergence("kl", lambda u: -torch.log(u))


def test_two_point_reduction_helper():
    div = bandpo.get_divergence("chi2")
    p = torch.tensor(0.2, dtype=torch.float64)
    r = torch.tensor(1.5, dtype=torch.float64)
    assert torch.allclose(div.g(p, r), p * (r - 1) ** 2 / (1 - p))  # chi2: g = p (r-1)^2 / (1-p)
