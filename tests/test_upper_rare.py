"""``band_kl_upper_rare``: the KL band's upper bound for tokens below ``rare_p``, GRPO's clip everywhere else
(the :class:`~bandpo.losses.rules.ByProbability` rule inside a ``Split``), and its ``rare_p`` setting."""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo.losses import Band, Clip, LossConfig, Split, get_method, policy_loss, resolve_method
from bandpo.losses.rules import ByProbability


def _old():
    p = torch.tensor([1e-6, 1e-3, 0.01, 0.03, 0.0499999, 0.05, 0.0500001, 0.2, 0.5, 0.94, 0.999], dtype=torch.float64)
    return torch.log(p)


def test_row_and_settings():
    m = get_method("band_kl_upper_rare")
    assert m.bounds == Split(Clip(0.2, 0.2), ByProbability(Band("kl", 0.05), Clip(0.2, 0.2), 0.05))
    assert m.max_ratio == 10.0 and m.surrogate == "clip"
    assert m.settings() == dict(eps_low=0.2, divergence="kl", delta=0.05, eps_high=0.2, rare_p=0.05, max_ratio=10.0)
    r = resolve_method("band_kl_upper_rare", rare_p=0.2, delta=0.1, eps_high=0.28, eps_low=0.1)
    assert r.bounds == Split(Clip(0.1, 0.2), ByProbability(Band("kl", 0.1), Clip(0.2, 0.28), 0.2))


def test_band_upper_below_the_threshold_clip_elsewhere():
    old = _old()
    lo, up = bandpo.bounds(old, "band_kl_upper_rare")
    _, band_up = bandpo.band(old, 0.05, "kl")
    rare = torch.exp(old) < 0.05
    assert rare.tolist() == [True] * 5 + [False] * 6  # p = 0.05 itself is not rare
    assert torch.equal(lo, torch.full_like(lo, 0.8))
    assert torch.equal(up[rare], band_up[rare].clamp(max=10.0))
    assert torch.equal(up[~rare], torch.full_like(up[~rare], 1.2))
    assert up[0] == 10.0 and up[3] > 1.2  # the cap binds for the rarest; the band is wider than clip below 0.05
    # against band_kl_upper: equal below the threshold, clip's 1.2 above (where the band would give 1.05 at p = 0.94)
    _, up_all = bandpo.bounds(old, "band_kl_upper")
    assert torch.equal(up[rare], up_all[rare]) and up_all[9] < 1.2 < up_all[7]


def test_the_threshold_is_a_setting():
    old = _old()
    _, up = bandpo.bounds(old, "band_kl_upper_rare", rare_p=0.3)
    _, band_up = bandpo.band(old, 0.05, "kl")
    rare = torch.exp(old) < 0.3
    assert torch.equal(up[rare], band_up[rare].clamp(max=10.0)) and torch.equal(up[~rare], torch.full_like(up[~rare], 1.2))
    cfg = LossConfig(method="band_kl_upper_rare", rare_p=0.3)
    assert cfg.method_spec().settings()["rare_p"] == 0.3
    with pytest.raises(ValueError, match=r"rare_p must be a number in \(0, 1\]"):
        LossConfig(method="band_kl_upper_rare", rare_p=0.0)
    with pytest.raises(ValueError, match=r"rare_p must be a number in \(0, 1\]"):
        ByProbability(rare_p=math.nan)
    with pytest.raises(ValueError, match="has no setting 'rare_p'"):
        LossConfig(method="band_kl", rare_p=0.1)


def test_the_loss_clips_to_those_bounds():
    old = _old()[None]  # (B, T) = (1, 11)
    _, up = bandpo.bounds(old, "band_kl_upper_rare")
    ones = torch.ones_like(old)
    loss, _ = policy_loss(old * 0, old, ones, ones.bool(), method="band_kl_upper_rare", dual_clip=None,
                          agg="seq-mean-token-sum-norm", validate=False)
    r = torch.exp(-old)  # logp = 0: r = 1/p, far above every bound
    torch.testing.assert_close(loss * old.numel(), -torch.minimum(r, up).sum(), rtol=1e-15, atol=0)
