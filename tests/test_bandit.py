"""The rare-arm bandit demo: determinism, per-seed independence, and that its records mean what they say.

No test asserts which method wins: the demo reports that, it does not assume it. Runs here are short
(a few steps, a few seeds) and take well under a second each.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from bandpo.experiments.bandit import METHODS, BanditConfig, format_table, grpo_advantages, main, run_bandit, summarize
from bandpo.losses import BUCKET_NAMES

SMALL = BanditConfig(steps=6, seeds=(0, 1, 2), n_groups=2, group_size=8, minibatches=2, epochs=2)


def test_deterministic_and_each_seed_independent_of_the_others():
    a = run_bandit("band_kl", SMALL)
    b = run_bandit("band_kl", SMALL)
    assert torch.equal(a.p_rare, b.p_rare) and torch.equal(a.entropy, b.entropy) and torch.equal(a.reward, b.reward)
    assert all(torch.equal(a.metrics[k], b.metrics[k]) for k in a.metrics)
    alone = run_bandit("band_kl", replace(SMALL, seeds=(1,)))
    torch.testing.assert_close(alone.p_rare[:, 0], a.p_rare[:, 1], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(alone.entropy[:, 0], a.entropy[:, 1], rtol=1e-12, atol=1e-15)


def test_records_are_consistent():
    cfg = SMALL
    h = run_bandit("clip", cfg)
    S, N, K = len(cfg.seeds), cfg.steps, cfg.n_arms
    assert h.p_rare.shape == (N + 1, S) and h.entropy.shape == (N + 1, S) and h.reward.shape == (N, S)
    # initial policy: π(rare) = rare_prob, the rest uniform, so H = -p log p - (1-p) log((1-p)/(K-1))
    p = cfg.rare_prob
    h0 = -p * math.log(p) - (1 - p) * math.log((1 - p) / (K - 1))
    torch.testing.assert_close(h.p_rare[0], torch.full((S,), p, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(h.entropy[0], torch.full((S,), h0, dtype=torch.float64), rtol=1e-14, atol=0)
    assert ((h.p_rare > 0) & (h.p_rare < 1)).all() and (h.entropy <= math.log(K) + 1e-12).all()
    assert ((h.reward >= 0) & (h.reward <= 1)).all()
    # every sample is one token: the step's token count is minibatches x epochs passes over the rollout
    n_tokens = S * cfg.n_groups * cfg.group_size * cfg.epochs
    assert (h.metrics["num_tokens"] == n_tokens).all()
    buckets = sum(h.metrics[f"bucket/{b}/tokens"] for b in BUCKET_NAMES)
    assert torch.equal(buckets, h.metrics["num_tokens"])
    steps = h.steps_to_discover(0.5)
    hit = (h.p_rare[1:] >= 0.5).any(0)
    assert torch.equal(torch.isfinite(steps), hit)
    for s in torch.nonzero(hit).flatten().tolist():
        t = int(steps[s])
        assert h.p_rare[t, s] >= 0.5 and (h.p_rare[1:t, s] < 0.5).all()


def test_on_policy_training_makes_every_method_the_same():
    """One mini-batch, one epoch: every ratio is 1, nothing clips, so the bounds cannot matter."""
    cfg = replace(SMALL, minibatches=1, epochs=1)
    ref = run_bandit("no_clip", cfg)
    for method in METHODS:
        h = run_bandit(method, cfg)
        torch.testing.assert_close(h.p_rare, ref.p_rare, rtol=1e-12, atol=1e-15)
        assert (h.metrics["clip_ratio/region_mean"] == 0).all() and (h.metrics["ppo_kl"].abs() < 1e-12).all()


def test_off_policy_epochs_make_the_clip_bind():
    """The default regime's point: later epochs move the ratio past 1 ± 0.2 for some tokens."""
    cfg = replace(BanditConfig(), steps=5, seeds=(0, 1, 2, 3))
    h = run_bandit("clip", cfg)
    assert h.metrics["clip_ratio/region_mean"].max() > 0.01
    assert h.metrics["ratio/max"].max() > 1.2 and h.metrics["ratio/min"].min() < 0.8


def test_grpo_advantages_by_hand():
    reward = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = grpo_advantages(reward, 4)
    # group 1: mean 1/4, unbiased std sqrt((9/16 + 3/16)/3) = 1/2; group 2: all equal -> 0
    s = 0.5 + 1e-6
    expected = torch.tensor([[0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=1e-14, atol=0)


def test_loss_kwargs_override():
    """loss_kwargs replaces method=<id>: clip with eps 1/1e6 is the no_clip reference exactly."""
    a = run_bandit("custom", SMALL, loss_kwargs=dict(method="clip", eps_low=1.0, eps_high=1e6))
    b = run_bandit("no_clip", SMALL)
    assert torch.equal(a.p_rare, b.p_rare)


def test_summary_and_cli():
    h = run_bandit("band_kl", SMALL)
    row = summarize(h, SMALL)
    assert 0 <= row["found"] <= 1 and row["entropy_0"] == pytest.approx(float(h.entropy[0].mean()))
    table = format_table({"band_kl": row}, SMALL)
    assert table.count("\n") == 2 and "| band_kl |" in table
    text = main(["--steps", "3", "--seeds", "2", "--methods", "clip,band_kl"])
    assert "| clip |" in text and "| band_kl |" in text
    with pytest.raises(SystemExit):
        main(["--methods", "ppo"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_arms=1), dict(rare_prob=0.0), dict(rare_prob=1.0), dict(common_success=(0.6, 0.1)),
     dict(n_groups=3, minibatches=2), dict(optimizer="rmsprop"), dict(discover_at=1.0), dict(epochs=0)],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        BanditConfig(**kwargs)


def test_run_restores_thread_count():
    before = torch.get_num_threads()
    run_bandit("clip", replace(SMALL, steps=1))
    assert torch.get_num_threads() == before
