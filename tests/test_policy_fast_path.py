"""policy_loss's clip form runs a hand-written backward (bandpo.losses.policy._ClipGrad) and chunked metric sums:
the loss and the gradient must equal, bitwise, autograd's graph of the documented formula, ties included, and
an empty batch gives the defined zero-token result instead of an error."""

from __future__ import annotations

import math

import pytest
import torch

import bandpo
from bandpo.losses import METRIC_KEYS
from bandpo.losses import metrics as metrics_mod
from bandpo.losses.aggregation import aggregate


def reference_loss(logp, old_logp, adv, mask, lower, upper, dual_clip, agg):
    """The formula of policy_loss's docstring through autograd (what the loss computed before its backward was
    written by hand)."""
    valid = mask if mask.dtype == torch.bool else mask != 0
    cdtype = torch.promote_types(torch.promote_types(logp.dtype, old_logp.dtype), torch.float32)
    zero = torch.zeros((), dtype=cdtype)
    logp_c = torch.where(valid, logp.to(cdtype), zero)
    old_c = torch.where(valid, old_logp.to(cdtype), zero).clamp(max=0)
    adv_c = torch.where(valid, adv.to(cdtype), zero)
    ratio = torch.exp(torch.clamp(logp_c - old_c, -20.0, 20.0))
    per_token = torch.maximum(-adv_c * ratio, -adv_c * torch.clamp(ratio, lower, upper))
    if dual_clip is not None:
        floor = -adv_c * dual_clip
        with torch.no_grad():
            dual = (adv_c < 0) & (per_token > floor)
        per_token = torch.where(dual, floor, per_token)
    return aggregate(per_token, valid, agg)


def batch(B, T, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    old = -(torch.empty(B, T, dtype=torch.float64).exponential_(1.5, generator=g) ** 2).clamp(max=30.0)
    logp = (old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).clone()
    adv[::4] = 0.0
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp.to(dtype), old.to(dtype), adv.to(dtype), mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dual_clip", [10.0, 1.5, None])
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_clip_form_equals_autograd_bitwise(dtype, dual_clip, agg):
    logp, old, adv, mask = batch(16, 50, seed=1, dtype=dtype)
    logp = logp.masked_fill(~mask & (torch.arange(50) % 3 == 0), math.nan)  # garbage at masked tokens
    # ties: ratios exactly at a bound (torch.clamp passes its gradient there), one float step outside it (where
    # -A·r and -A·clip(r) can round to the same number: torch.maximum splits the gradient), and log-ratios at
    # the clamp 20
    lower, upper = bandpo.bounds(old, "band_kl")
    cdt = lower.dtype
    r = torch.exp((torch.where(mask, logp, 0).to(cdt) - torch.where(mask, old, 0).to(cdt)).clamp(-20, 20))
    pick = torch.rand(lower.shape, generator=torch.Generator().manual_seed(2))
    lower = torch.where((pick < 0.1) & (r <= 1), r, lower)
    lower = torch.where((pick > 0.9) & (r <= 1), torch.nextafter(r, torch.ones_like(r)), lower)
    upper = torch.where((pick < 0.1) & (r >= 1), r, upper)
    upper = torch.where((pick > 0.9) & (r > 1), torch.nextafter(r, torch.zeros_like(r)), upper)
    logp[0, :5] = (old[0, :5].to(torch.float64) + 20.0).clamp(max=0).to(dtype)
    rule = lambda old_logp, step=None: (lower, upper)  # noqa: E731  (a bounds rule returning fixed bounds)
    x = logp.clone().requires_grad_(True)
    loss, metrics = bandpo.policy_loss(x, old, adv, mask, method=rule, dual_clip=dual_clip, agg=agg, validate=False)
    (loss * 0.37).backward()
    y = logp.clone().requires_grad_(True)
    ref = reference_loss(y, old, adv, mask, lower, upper, dual_clip, agg)
    (ref * 0.37).backward()
    assert torch.equal(loss, ref)
    assert torch.equal(x.grad, y.grad)
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()
    assert set(metrics) == set(METRIC_KEYS)


def test_metrics_sum_in_chunks_like_one_pass(monkeypatch):
    """Batches above METRIC_CHUNK tokens are summed chunk by chunk (float64 across chunks): the same metrics, up to
    float32 rounding of the sums, as one chunk; counts exactly."""
    logp, old, adv, mask = batch(64, 257, seed=4)
    one = bandpo.policy_loss(logp, old, adv, mask, validate=False)[1]
    monkeypatch.setattr(metrics_mod, "METRIC_CHUNK", 1000)
    monkeypatch.setattr(bandpo.losses.policy, "METRIC_CHUNK", 1000)
    many = bandpo.policy_loss(logp, old, adv, mask, validate=False)[1]
    for k in METRIC_KEYS:
        if k.endswith("tokens") or k in ("ratio/min", "ratio/max"):
            assert torch.equal(one[k], many[k]), k
        else:
            assert torch.allclose(one[k], many[k], rtol=1e-6, atol=1e-7), k


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (0, 0)])
@pytest.mark.parametrize("method", ["band_kl", "dppo_kl"])
def test_empty_batch_is_the_zero_token_result(shape, method):
    """A batch without tokens is what an all-masked batch already was: loss 0 with a (zero-size) gradient,
    num_tokens 0, every mean 0, ratio/min and ratio/max 1 (docs/metrics.md); it used to raise from amin."""
    logp = torch.zeros(shape, requires_grad=True)
    loss, metrics = bandpo.policy_loss(logp, torch.zeros(shape), torch.zeros(shape), torch.ones(shape, dtype=torch.bool),
                                       method=method)
    loss.backward()
    assert float(loss.detach()) == 0.0 and logp.grad.shape == shape
    for k in METRIC_KEYS:
        expected = 1.0 if k in ("ratio/min", "ratio/max") else 0.0
        assert float(metrics[k]) == expected, k
    masked = bandpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                                method=method)[1]
    assert {k: float(v) for k, v in masked.items()} == {k: float(v) for k, v in metrics.items()}
