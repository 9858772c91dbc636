"""DPPO's mask methods through BandPO's verl plug-in: modes ``bandpo_dppo_kl`` / ``bandpo_dppo_tv`` equal
``bandpo.policy_loss`` (loss, gradient, metrics), ignore ``clip_ratio_c`` and the plug-in's cap; on the same
tensors they also match verl's own ``dppo_kl`` / ``dppo_tv`` losses in gradient (verl's thresholds set to the same δ,
its truncation cap C = ``clip_ratio_c`` = 20).

Skipped when verl is not installed (`make test` installs it with ``pip install --no-deps verl``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("hydra")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

from bandpo.integrations import _common  # noqa: E402
from bandpo.integrations.verl import BandPOPolicyLossConfig, mode_names  # noqa: E402

CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")
BANDPO_CFG = "actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig"


def _actor(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", *overrides])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def _tensors(B=6, T=9, seed=3):
    """Tokens across the probability range, ratios from 0.05 to 40: every mask case and the truncation occur."""
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.98 + 0.01).float()
    logp = (old + torch.empty(B, T).uniform_(-3.0, 3.7, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g)
    # r = 30 on the safe side (A < 0, kept, weight truncated to C = 20) and inside the region (A > 0, p = 0.001)
    adv[1], adv[2] = -adv[1].abs() - 0.5, adv[2].abs() + 0.5
    old[1, 0], logp[1, 0] = torch.log(torch.tensor(0.02)), torch.log(torch.tensor(0.6))
    old[2, 0], logp[2, 0] = torch.log(torch.tensor(0.001)), torch.log(torch.tensor(0.03))
    adv = adv.expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, T - 3:] = False
    return old, logp, adv, mask


@pytest.mark.parametrize("method, delta, agg", [
    ("dppo_kl", None, "seq-mean-token-mean"), ("dppo_tv", 0.05, "token-mean"), ("dppo_tv", None, "seq-mean-token-sum"),
])
def test_mask_modes_equal_bandpo_policy_loss(method, delta, agg):
    assert f"bandpo_{method}" in mode_names()
    overrides = [f"actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_{method}", "actor_rollout_ref.actor.clip_ratio_c=3.0",
                 f"actor_rollout_ref.actor.loss_agg_mode={agg}"]
    if delta is not None:
        overrides += [BANDPO_CFG, f"+actor_rollout_ref.actor.policy_loss.delta={delta}"]
    cfg = _actor(*overrides)
    old, logp, adv, mask = _tensors()
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(f"bandpo_{method}")(
        old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=agg, config=cfg,
    )
    (g,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logp.clone().requires_grad_(True)
    settings = {} if delta is None else {"delta": delta}
    # no dual clip, no cap: clip_ratio_c = 3 and the plug-in's max_ratio = 10 do not apply to mask methods
    ref, ref_m = _common.policy_loss(ref_leaf, old, adv, mask, method=method, dual_clip=None, agg=agg, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    assert 0 < float(ref_m["clip_ratio/region_mean"]) < 1 and float(ref_m["truncated_fraction"]) > 0
    assert float(ref_m["dual_clip_fraction"]) == 0
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float(ref_m["clip_ratio/region_mean"]))
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(float(ref_m["truncated_fraction"]))
    for key, value in ref_m.items():
        assert metrics[f"actor/bandpo/{key}"] == pytest.approx(float(value)), key


@pytest.mark.parametrize("method, delta", [("dppo_kl", 0.05), ("dppo_tv", 0.15)])
def test_mask_modes_have_verls_own_dppo_gradient(method, delta):
    """verl's built-in dppo_kl/dppo_tv (threshold clip_ratio_low = clip_ratio_high = δ, C = clip_ratio_c = 20) and
    bandpo's mode give the same gradient (tokens are kept well away from the region's edge, where verl's 1e-8 in the
    binary KL and our band solver's rounding could disagree)."""
    old, logp, adv, mask = _tensors()
    lower, upper = _common.bounds(old.clamp(max=0), method)
    r = torch.exp(logp - old)
    near = ((r / upper - 1).abs() < 1e-3) | ((r / lower.clamp(min=1e-30) - 1).abs() < 1e-3)
    mask = mask & ~near
    leaf = logp.clone().requires_grad_(True)
    loss, _ = get_policy_loss_fn(f"bandpo_{method}")(
        old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
        config=_actor(f"actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_{method}"),
    )
    (g,) = torch.autograd.grad(loss, leaf)
    verl_cfg = _actor(f"actor_rollout_ref.actor.policy_loss.loss_mode={method}", "actor_rollout_ref.actor.clip_ratio_c=20.0",
                      f"actor_rollout_ref.actor.clip_ratio_low={delta}", f"actor_rollout_ref.actor.clip_ratio_high={delta}")
    leaf_v = logp.clone().requires_grad_(True)
    loss_v, metrics_v = get_policy_loss_fn(method)(
        old_log_prob=old, log_prob=leaf_v, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=verl_cfg,
    )
    (g_v,) = torch.autograd.grad(loss_v, leaf_v)
    torch.testing.assert_close(g, g_v, rtol=1e-5, atol=1e-7)
    assert (g != 0).sum() > 10 and ((g == 0) & mask).sum() > 0  # some tokens kept, some masked


def test_mask_method_settings_in_the_config():
    cfg = BandPOPolicyLossConfig(loss_mode="bandpo_dppo_kl", tis_cap=5.0, delta=0.1)
    assert cfg.bandpo_settings("dppo_kl")["tis_cap"] == 5.0
    with pytest.raises(ValueError, match="tis_cap must be a number >= 1") as info:
        BandPOPolicyLossConfig(loss_mode="bandpo_dppo_tv", tis_cap=0.5)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not use tis_cap"):
        BandPOPolicyLossConfig(loss_mode="bandpo_band_kl", tis_cap=5.0)
