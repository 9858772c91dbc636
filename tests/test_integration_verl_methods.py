"""Every method of bandpo's table whose surrogate is neither PPO's clip nor DPPO's mask (GSPO, CISPO, SAPO, GPG,
Clip-Cov, KL-Cov, GMPO, DRO, VESPO and the band variants) as a verl mode ``bandpo_<id>``: called through verl's
registry with verl's Hydra-composed actor config, the mode's loss (``per_token_loss`` aggregated by verl's
``agg_loss``) must equal ``bandpo.policy_loss`` at the same aggregation, and, where verl ships the method, verl's own
loss; verl's rollout-correction weights compose as bandpo's ``correction``. float64 throughout.

The tolerance is rtol 1e-7 (atol 1e-12), as in tests/test_parity_verl_methods.py: verl's ``agg_loss`` divides by
``n + 1e-8`` in ``seq-mean-token-mean`` (and its ``geo_mean`` in its means) where bandpo divides by n."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("hydra")

from test_parity_verl_methods import _actor, _tensors  # noqa: E402  (verl's Hydra-composed actor config, inputs)
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights  # noqa: E402

import bandpo  # noqa: E402
from bandpo.integrations.verl import BandPOPolicyLossConfig  # noqa: E402

RTOL, ATOL = 1e-7, 1e-12

FORMS = [m for m in bandpo.list_methods() if bandpo.losses.get_method(m).surrogate not in ("clip", "mask")]
"""Every row of the method table with a form of bandpo.losses.surrogates (at collection time)."""

KNOBS = {"dro": (("policy_loss.dro_beta=0.3",), {"dro_beta": 0.3})}
"""verl's own knob a mode needs (DRO has no default beta), and the same as a bandpo setting."""


def _inputs(method, seed):
    old, logp, adv, mask = _tensors(seed=seed)
    if bandpo.losses.get_method(method).surrogate == "geo_mean":  # GMPO's advantage is per sequence
        adv = adv[:, :1].expand_as(adv).contiguous()
    if bandpo.losses.get_method(method).surrogate == "clip_cov":  # covariances reach the (1, 5) window
        adv = adv * 3
    return old, logp, adv, mask


def _mode(mode, cfg, old, logp, adv, mask, agg, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(mode)(
        old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=agg, config=cfg, **kw
    )
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g, metrics


def _ours(method, old, logp, adv, mask, agg, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = bandpo.policy_loss(leaf, old, adv, mask, method=method, agg=agg, **kw)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g, metrics


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours[1], theirs[1], rtol=RTOL, atol=ATOL)
    assert (theirs[1] != 0).any()


def test_the_forms_are_the_new_rows():
    assert {"gspo", "cispo", "sapo", "gpg", "clip_cov", "kl_cov", "gmpo", "dro", "vespo", "cispo_band_kl",
            "gmpo_band_kl"} <= set(FORMS)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("method", FORMS)
def test_mode_equals_bandpo_policy_loss(method, agg):
    """bandpo_<id> through verl's registry and agg_loss = bandpo.policy_loss(method=id, agg=loss_agg_mode): loss,
    gradient and bandpo's metrics (verl's dual clip clip_ratio_c = 3 is on in the config and must not act)."""
    knobs, settings = KNOBS.get(method, ((), {}))
    cfg = _actor(f"policy_loss.loss_mode=bandpo_{method}", "clip_ratio_c=3.0", *knobs)
    old, logp, adv, mask = _inputs(method, seed=0)
    theirs = _mode(f"bandpo_{method}", cfg, old, logp, adv, mask, agg)
    ours = _ours(method, old, logp, adv, mask, agg, **settings)
    _assert_same(ours, theirs)
    for key, value in ours[2].items():
        assert theirs[2][f"actor/bandpo/{key}"] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
    assert theirs[2]["actor/pg_clipfrac"] == pytest.approx(float(ours[2]["clip_ratio/region_mean"]))
    assert theirs[2]["actor/pg_clipfrac_lower"] == 0.0  # no dual clip on these forms


# (bandpo mode, verl's own mode, verl overrides read by both, aggregation)
OWN = [
    ("bandpo_gspo", "gspo", ("clip_ratio_low=0.0003", "clip_ratio_high=0.0004"), "seq-mean-token-mean"),
    ("bandpo_cispo", "cispo", ("clip_ratio_low=1.0", "clip_ratio_high=4.0"), "token-mean"),
    ("bandpo_sapo", "sapo", ("tau_pos=2.0", "tau_neg=3.5"), "seq-mean-token-mean"),
    ("bandpo_gpg", "gpg", (), "seq-mean-token-sum-norm"),
    ("bandpo_kl_cov", "kl_cov", ("policy_loss.kl_cov_ratio=0.1", "policy_loss.ppo_kl_coef=0.7"), "token-mean"),
    ("bandpo_dro", "dro", ("policy_loss.dro_beta=0.3",), "seq-mean-token-mean"),
    ("bandpo_gmpo", "geo_mean", ("clip_ratio_low=0.4", "clip_ratio_high=0.4"), "seq-mean-token-mean"),
]


@pytest.mark.parametrize("ours_mode, verl_mode, overrides, agg", OWN, ids=[c[0] for c in OWN])
def test_mode_equals_verls_own_loss(ours_mode, verl_mode, overrides, agg):
    """The BandPO mode is a drop-in for verl's own: same config (verl's own knobs such as actor.tau_pos and
    policy_loss.dro_beta reach the BandPO mode), same loss and gradient."""
    method = ours_mode.removeprefix("bandpo_")
    old, logp, adv, mask = _inputs(method, seed=1)
    theirs = _mode(verl_mode, _actor(f"policy_loss.loss_mode={verl_mode}", *overrides), old, logp, adv, mask, agg)
    ours = _mode(ours_mode, _actor(f"policy_loss.loss_mode={ours_mode}", *overrides), old, logp, adv, mask, agg)
    _assert_same(ours, theirs)
    if overrides and verl_mode in ("sapo", "kl_cov"):  # the knobs changed the loss
        default = _mode(ours_mode, _actor(f"policy_loss.loss_mode={ours_mode}"), old, logp, adv, mask, agg)
        assert not torch.allclose(default[0], ours[0])


def test_clip_cov_mode_equals_verls_with_the_same_random_pick():
    old, logp, adv, mask = _inputs("clip_cov", seed=3)
    overrides = ("clip_ratio=0.2", "policy_loss.clip_cov_ratio=0.25")
    torch.manual_seed(0)  # verl draws from the global generator; bandpo from cov_seed (0) + step (0)
    theirs = _mode("clip_cov", _actor("policy_loss.loss_mode=clip_cov", *overrides), old, logp, adv, mask, "token-mean")
    ours = _mode("bandpo_clip_cov", _actor("policy_loss.loss_mode=bandpo_clip_cov", *overrides), old, logp, adv, mask,
                 "token-mean")
    _assert_same(ours, theirs)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("method", ["gspo", "cispo_band_kl", "sapo", "vespo", "gmpo"])
def test_verls_rollout_weights_compose_as_bandpos_correction(method, level):
    """verl computes rollout_is_weights from algorithm.rollout_correction (rollout_is=token|sequence, threshold 2)
    and hands them to the mode, which multiplies each token's loss: bandpo.policy_loss with correction tis/seq_tis
    and the rollout log-probabilities does the same."""
    old, logp, adv, mask = _inputs(method, seed=7)
    g = torch.Generator().manual_seed(8)
    rollout = (old + 0.3 * torch.randn(old.shape, generator=g, dtype=old.dtype)).clamp(max=0)
    w, _ = compute_rollout_correction_weights(old - rollout, mask, rollout_is=level, rollout_is_threshold=2.0)
    agg = "seq-mean-token-mean"
    theirs = _mode(f"bandpo_{method}", _actor(f"policy_loss.loss_mode=bandpo_{method}"), old, logp, adv, mask, agg,
                   rollout_is_weights=w)
    correction = "seq_tis" if level == "sequence" else "tis"
    ours = _ours(method, old, logp, adv, mask, agg, correction=correction, rollout_logp=rollout)
    _assert_same(ours, theirs)
    assert not torch.allclose(ours[0], _ours(method, old, logp, adv, mask, agg)[0])  # the weights acted


def test_bandpo_config_carries_surrogate_settings_and_refuses_bad_ones():
    """Through BandPOPolicyLossConfig: a surrogate's settings by name, refused at construction when missing or
    contradictory (DRO without beta would otherwise fail at the first loss call)."""
    with pytest.raises(ValueError, match="dro_beta"):
        BandPOPolicyLossConfig(loss_mode="bandpo_dro")
    cfg = BandPOPolicyLossConfig(loss_mode="bandpo_dro", settings={"dro_beta": 0.3})
    assert cfg.bandpo_settings("dro") == {"dro_beta": 0.3}
    assert BandPOPolicyLossConfig(loss_mode="bandpo_dro", dro_beta=0.3).bandpo_settings("dro") == {"dro_beta": 0.3}
    with pytest.raises(ValueError, match="dro_beta=0.3 and BandPO's setting dro_beta=0.5 disagree"):
        BandPOPolicyLossConfig(loss_mode="bandpo_dro", dro_beta=0.3, settings={"dro_beta": 0.5})
    with pytest.raises(ValueError, match="does not use max_ratio"):
        BandPOPolicyLossConfig(loss_mode="bandpo_sapo", max_ratio=5.0)
    assert BandPOPolicyLossConfig(loss_mode="bandpo_sapo").bandpo_settings("sapo") == {}  # the default cap is left out
    assert BandPOPolicyLossConfig(loss_mode="bandpo_cispo_band_kl").bandpo_settings("cispo_band_kl") == {"max_ratio": 10.0}

    actor = dataclasses.replace(_actor("policy_loss.loss_mode=bandpo_sapo"),
                                policy_loss=BandPOPolicyLossConfig(loss_mode="bandpo_sapo", settings={"tau_pos": 2.0}))
    old, logp, adv, mask = _inputs("sapo", seed=2)
    theirs = _mode("bandpo_sapo", actor, old, logp, adv, mask, "seq-mean-token-mean")
    _assert_same(_ours("sapo", old, logp, adv, mask, "seq-mean-token-mean", tau_pos=2.0), theirs)
    clash = dataclasses.replace(actor, tau_pos=1.5)  # verl's actor.tau_pos against settings.tau_pos
    with pytest.raises(ValueError, match="tau_pos=1.5 and BandPO's setting tau_pos=2.0 disagree"):
        _mode("bandpo_sapo", clash, old, logp, adv, mask, "seq-mean-token-mean")


def test_dro_mode_without_beta_names_the_knob():
    old, logp, adv, mask = _inputs("dro", seed=0)
    with pytest.raises(ValueError, match="dro_beta"):
        _mode("bandpo_dro", _actor("policy_loss.loss_mode=bandpo_dro"), old, logp, adv, mask, "token-mean")


@pytest.mark.parametrize("method", ["gspo", "gmpo_band_kl", "vespo", "clip_cov"])
def test_sequence_level_modes_through_verls_worker_entry(method):
    """verl's worker loss entry (verl/workers/utils/losses.py::ppo_loss) turns the unpadded model output back into
    one row per response and runs the mode: the sequence-level forms see whole sequences, and Clip-Cov's pick is
    seeded with verl's step (global_steps - 1 = 4)."""
    losses = pytest.importorskip("verl.workers.utils.losses")
    from test_integration_verl import _actor as _hydra_actor
    from test_integration_verl import _worker_batch

    cfg = _hydra_actor(
        f"actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_{method}",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean", "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.entropy_coeff=0", "actor_rollout_ref.actor.policy_loss.clip_cov_ratio=0.5",
        "actor_rollout_ref.actor.policy_loss.clip_cov_lb=-5.0",  # most tokens are candidates
    )
    data, out, leaf, old, logp, adv, mask = _worker_batch(global_steps=5)
    loss, _ = losses.ppo_loss(cfg, out, data)
    (g,) = torch.autograd.grad(loss, leaf)
    settings = {"cov_fraction": 0.5, "cov_low": -5.0} if method == "clip_cov" else {}
    ref_leaf = logp.clone().requires_grad_(True)
    ref, _ = bandpo.policy_loss(ref_leaf, old, adv, mask, method=method, agg="seq-mean-token-mean", step=4, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    assert (g_ref != 0).any()
    if method == "clip_cov":  # the pick depends on the step: step 0 would detach other tokens
        other, _ = bandpo.policy_loss(logp, old, adv, mask, method=method, agg="seq-mean-token-mean", step=0, **settings)
        assert not torch.allclose(other, ref)
