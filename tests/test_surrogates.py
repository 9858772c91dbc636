"""The surrogates of ``bandpo.losses.surrogates`` and rollout correction, on their own terms: the trust region
(any bounds rule) where a method clips or truncates, the sequence-level interval of GSPO, settings and refusals,
masked tokens, determinism. Parity with verl and TRL: tests/test_parity_verl_methods.py, test_parity_trl_methods.py."""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo.losses import (
    SURROGATE_FORMS,
    Band,
    Clip,
    LogClip,
    Method,
    RolloutCorrection,
    Unbounded,
    geometric_interval,
    get_method,
    list_methods,
    method_settings,
    rollout_weights,
    surrogate,
)

NEW = ["gspo", "cispo", "sapo", "gpg", "clip_cov", "kl_cov", "gmpo", "dro", "vespo", "cispo_band_kl", "gmpo_band_kl"]
EXTRA = {"dro": {"dro_beta": 0.1}}


def _tensors(B=6, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.empty(B, T, dtype=torch.float64).uniform_(math.log(1e-4), -0.01, generator=g)
    logp = (old + torch.empty(B, T, dtype=torch.float64).uniform_(-2.0, 2.0, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    return old, logp, adv, mask


def _grad(method, old, logp, adv, mask, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = bandpo.policy_loss(leaf, old, adv, mask, method=method, **kw)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g, metrics


def test_every_new_method_is_a_row_with_its_form():
    assert set(NEW) <= set(list_methods())
    assert {get_method(m).surrogate for m in NEW} == set(SURROGATE_FORMS.names())
    assert method_settings("sapo") == ["tau_pos", "tau_neg"]
    assert method_settings("gspo") == ["eps_low", "eps_high", "max_ratio"]
    assert method_settings("clip_cov") == ["eps_low", "eps_high", "max_ratio", "cov_fraction", "cov_low", "cov_high", "cov_seed"]
    assert method_settings("kl_cov") == ["cov_fraction", "kl_cov_coef"]
    assert method_settings("gmpo_band_kl") == ["divergence", "delta", "max_ratio"]


@pytest.mark.parametrize("method", NEW)
def test_masked_tokens_have_no_effect(method):
    """NaN in padding reaches neither the loss nor the gradient, and the method trains (nonzero gradient)."""
    old, logp, adv, mask = _tensors()
    loss, g, metrics = _grad(method, old, logp, adv, mask, **EXTRA.get(method, {}))
    bad_old, bad_logp, bad_adv = old.clone(), logp.clone(), adv.clone()
    for x in (bad_old, bad_logp, bad_adv):
        x[~mask] = math.nan
    loss2, g2, _ = _grad(method, bad_old, bad_logp, bad_adv, mask, **EXTRA.get(method, {}))
    assert torch.equal(loss, loss2) and torch.equal(g, g2)
    assert torch.isfinite(loss) and (g[mask] != 0).any() and (g[~mask] == 0).all()
    assert set(metrics) == set(bandpo.losses.METRIC_KEYS)


def test_cispo_weight_is_the_ratio_truncated_to_the_methods_interval():
    """The gradient of CISPO is -clip(r, lower, upper)·A·∇log π for any bounds rule: with the KL band, lower and
    upper are the band's (capped at 10), per token."""
    old, logp, adv, mask = _tensors(seed=1)
    for method in ("cispo", "cispo_band_kl"):
        _, g, _ = _grad(method, old, logp, adv, mask, agg="token-mean")
        lower, upper = bandpo.bounds(old, method)
        r = torch.exp(logp - old)
        want = -torch.minimum(torch.maximum(r, lower), upper) * adv / mask.sum()
        torch.testing.assert_close(g[mask], want[mask], rtol=1e-12, atol=1e-15)
    assert not torch.equal(*(bandpo.bounds(old, m)[1] for m in ("cispo", "cispo_band_kl")))


def test_gmpo_with_a_band_clips_each_log_ratio_to_the_log_of_its_band():
    old, logp, adv, mask = _tensors(seed=2)
    lower, upper = bandpo.bounds(old, "gmpo_band_kl")
    assert (upper > lower).all() and (lower[old < -6] < 0.5).all()  # rare tokens: a wide band
    loss, _, _ = _grad("gmpo_band_kl", old, logp, adv, mask, agg="seq-mean-token-mean")
    lr = logp - old
    sign = torch.sign(adv)
    clipped = sign * torch.minimum(sign * lr, sign * torch.clamp(lr, torch.log(lower), torch.log(upper)))
    m = mask.double()
    n = m.sum(-1)
    want = (-(adv * m).sum(-1) / n * torch.exp((clipped * m).sum(-1) / n)).mean()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)


def test_geometric_interval_is_the_image_of_the_token_box():
    """GSPO's sequence ratio over token ratios each inside its interval stays inside the geometric-mean interval,
    and reaches both ends; a constant interval (Clip) is its own sequence interval."""
    old, _, _, mask = _tensors(seed=3)
    lower, upper = bandpo.bounds(old, "band_kl", max_ratio=math.inf)
    lo, up = geometric_interval(lower, upper, mask)
    g = torch.Generator().manual_seed(4)
    m = mask.double()
    for _ in range(20):
        u = torch.rand(old.shape, generator=g, dtype=torch.float64)
        r = lower + u * (upper - lower)
        s = torch.exp((torch.log(r) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True))
        assert (s >= lo * (1 - 1e-12)).all() and (s <= up * (1 + 1e-12)).all()
    s_up = torch.exp((torch.log(upper) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True))
    torch.testing.assert_close(s_up, up, rtol=1e-14, atol=0)
    c_lo, c_up = geometric_interval(*bandpo.bounds(old, "clip_higher"), mask)
    torch.testing.assert_close(c_lo, torch.full_like(c_lo, 0.8), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_up, torch.full_like(c_up, 1.28), rtol=1e-14, atol=0)


def test_gspo_with_a_band_clips_the_sequence_ratio_to_the_geometric_mean_of_the_bands():
    old, logp, adv, mask = _tensors(seed=5)
    gspo_band = Method("gspo_band", Band("kl", 1e-4), None, surrogate="gspo")
    loss, g, _ = _grad(gspo_band, old, logp, adv, mask, agg="seq-mean-token-mean")
    lo, up = geometric_interval(*bandpo.bounds(old, gspo_band), mask)
    m = mask.double()
    s = torch.exp(((logp - old) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True))
    seq = torch.maximum(-adv[:, :1] * s, -adv[:, :1] * torch.clamp(s, lo, up))
    torch.testing.assert_close(loss, seq.mean(), rtol=1e-12, atol=0)
    outside = ((s < lo) | (s > up)).squeeze(-1)
    assert outside.any() and (~outside).any()


def test_settings_are_validated_and_refusals_are_one_line():
    old, logp, adv, mask = _tensors()
    cases = [
        (dict(method="sapo", tau_pos=0.0), "tau_pos must be a finite number > 0"),
        (dict(method="sapo", delta=0.1), "method 'sapo' has no setting 'delta'; its settings: tau_pos, tau_neg"),
        (dict(method="clip_cov", cov_fraction=2.0), "cov_fraction must be a finite number > 0 and <= 1"),
        (dict(method="clip_cov", cov_low=5.0), "cov_low must be < cov_high"),
        (dict(method="kl_cov", max_ratio=10.0), "method 'kl_cov' has no setting 'max_ratio'"),
        (dict(method="dro"), "method 'dro' needs dro_beta > 0"),
        (dict(method="gmpo", eps_high=30.0), r"eps_high must be a number in \[0, 20\]"),
        (dict(method="gspo", correction="tis"), "correction needs rollout_logp"),
        (dict(method="gspo", rollout_logp=old), "rollout_logp was given without a correction"),
        (dict(method="gspo", correction="tis2", rollout_logp=old), "unknown rollout correction 'tis2'"),
        (dict(method="gspo", correction="tis", rollout_logp=old[:, :3]), "rollout_logp must have logp's shape"),
        (dict(method="gspo", correction="tis", rollout_logp=old + 1), "rollout_logp is NaN, infinite or > 0 at"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            bandpo.policy_loss(logp, old, adv, mask, **kw)
        assert "\n" not in str(info.value), kw
    with pytest.raises(ValueError, match="surrogate 'sapo' clips no ratio, so a trust region cannot act on it"):
        Method("sapo_band", Band("kl", 0.05), None, surrogate="sapo")
    with pytest.raises(ValueError, match="form 'gspo' needs the log-probabilities and the padding mask"):
        surrogate(torch.ones(2, 2), torch.ones(2, 2), torch.zeros(2, 2), torch.ones(2, 2), form="gspo")
    with pytest.raises(ValueError, match="level 'sequence' needs one per sequence"):
        RolloutCorrection("mask", "sequence", bounds=Band("kl", 0.05))
    with pytest.raises(ValueError, match="not both"):
        RolloutCorrection("mask", "token", upper=2.0, bounds=Band("kl", 0.05))
    with pytest.raises(ValueError, match="lower must be <= upper"):
        RolloutCorrection("mask", lower=3.0, upper=2.0)
    with pytest.raises(ValueError, match="eps_low must be a number >= 0"):
        LogClip(-0.1, 0.4)


def test_clip_cov_is_deterministic_and_its_pick_moves_with_the_step():
    old, logp, adv, mask = _tensors(seed=6)
    adv = adv * 4
    runs = [_grad("clip_cov", old, logp, adv, mask, cov_fraction=0.04, step=s)[1] for s in (0, 0, 1, 2, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert any(not torch.equal(runs[0], g) for g in runs[2:])  # 1 token picked of 3 candidates


def test_kl_cov_penalises_exactly_the_top_covariance_tokens():
    old, logp, adv, mask = _tensors(seed=7)
    adv = adv + 0.2 * torch.randn(adv.shape, generator=torch.Generator().manual_seed(0), dtype=adv.dtype)
    loss, _, _ = _grad("kl_cov", old, logp, adv, mask, cov_fraction=0.1, kl_cov_coef=0.5, agg="token-mean")
    v = mask
    cov = (adv - adv[v].mean()) * (logp - logp[v].mean())
    k = int(0.1 * int(v.sum()))
    top = torch.topk(torch.where(v, cov, torch.tensor(-math.inf, dtype=cov.dtype)).reshape(-1), k).indices
    penalty = torch.zeros(cov.numel(), dtype=cov.dtype)
    penalty[top] = 0.5 * (logp - old).abs().reshape(-1)[top]
    want = ((-adv * torch.exp(logp - old)).reshape(-1) + penalty)[v.reshape(-1)].mean()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)


def test_rollout_correction_with_a_band_keeps_tokens_inside_the_band_around_the_rollout_policy():
    old, _, _, mask = _tensors(seed=8)
    rollout = (old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1), dtype=old.dtype)).clamp(max=0)
    band = RolloutCorrection("mask", "token", bounds=Band("kl", 0.05))
    w = rollout_weights(old, rollout, mask, band)
    lower, upper = bandpo.band(rollout, 0.05, "kl")
    r = torch.exp(old - rollout)
    inside = (r >= lower) & (r <= upper)
    assert torch.equal(w[mask] == 0, ~inside[mask]) and (w[mask] == 0).any() and (w[mask] > 0).any()
    torch.testing.assert_close(w[mask & inside], r[mask & inside], rtol=1e-14, atol=0)
    trunc = rollout_weights(old, rollout, mask, RolloutCorrection("truncate", "token", bounds=Band("kl", 0.05)))
    torch.testing.assert_close(trunc[mask], torch.minimum(torch.maximum(r, lower), upper)[mask], rtol=1e-14, atol=0)
    assert (rollout_weights(old, rollout, mask, "tis")[~mask] == 1).all()


def test_dppo_mask_takes_any_rule():
    """DPPO's mask is the trust region's mask: with a Clip rule it masks at [1 - ε, 1 + ε]."""
    old, logp, adv, mask = _tensors(seed=9)
    clip_mask = Method("dppo_clip", Clip(0.2, 0.2), None, surrogate="mask")
    _, g, _ = _grad(clip_mask, old, logp, adv, mask, agg="token-mean")
    r = torch.exp(logp - old)
    dropped = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))
    assert ((g == 0) == (dropped | ~mask)).all()


def test_unbounded_has_no_interval():
    old = torch.log(torch.tensor([[1e-6, 0.5, 1.0]], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, "sapo")
    assert (lower == 0).all() and (upper == math.exp(20)).all()
    assert Unbounded()(old)[1].isinf().all()


@pytest.mark.parametrize("method", ["gspo", "cispo_band_kl", "sapo", "clip_cov", "kl_cov", "gmpo", "vespo"])
def test_per_token_loss_is_what_policy_loss_aggregates(method):
    """For frameworks with their own aggregation: the per-token loss, aggregated, is policy_loss's (value and
    gradient), NaN padding included."""
    from bandpo.losses import aggregate
    from bandpo.losses.surrogates import per_token_loss

    old, logp, adv, mask = _tensors(seed=11)
    logp = logp.clone()
    logp[~mask] = math.nan
    spec = get_method(method)
    leaf = logp.clone().requires_grad_(True)
    per_token = per_token_loss(spec.surrogate, leaf, old, adv, mask, *bandpo.bounds(old, method),
                               settings=spec.surrogate_settings, step=2)
    loss = aggregate(per_token, mask, "seq-mean-token-mean")
    (g,) = torch.autograd.grad(loss, leaf)
    want, g_want, _ = _grad(method, old, logp, adv, mask, agg="seq-mean-token-mean", step=2)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(g, g_want, rtol=1e-14, atol=1e-16)
    assert (per_token[~mask] == 0).all()


def test_rollout_correction_keeps_the_compute_dtype():
    old, logp, adv, mask = _tensors(seed=12)
    loss, _ = bandpo.policy_loss(logp.float(), old.float(), adv.float(), mask, method="cispo", correction="icepop",
                                 rollout_logp=old - 0.1)
    assert loss.dtype == torch.float32
