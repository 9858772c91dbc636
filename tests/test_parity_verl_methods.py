"""Every policy loss verl 0.9.1 ships (``core_algos.POLICY_LOSS_REGISTRY``) against bandpo's method of the same
name, and verl's rollout-correction weights against :func:`bandpo.losses.rollout_weights`: the same float64 inputs
(ratios from e^-3 to e^3.7, rare and common tokens, ragged masks, both advantage signs) through verl's own loss
function, its Hydra-composed actor config and ``agg_loss``, and through :func:`bandpo.policy_loss`; loss and gradient
must agree.

The tolerance is rtol 1e-7 (atol 1e-12): verl divides by ``n + 1e-8`` in ``seq-mean-token-mean`` and in ``geo_mean`` where bandpo
divides by n exactly (relative differences up to ~1e-8, more where such means compound, as in GMPO); everything else agrees to rounding.
DPPO's two losses are checked in tests/test_integration_verl_dppo.py, and ``bypass_mode`` is not a loss of its own
(verl's switch to use the rollout log-probabilities as the old ones: pass them as ``old_logp``)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("hydra")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn  # noqa: E402
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

import bandpo  # noqa: E402
from bandpo.losses import RolloutCorrection, rollout_weights  # noqa: E402

CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")
ACTOR = "actor_rollout_ref.actor."
RTOL, ATOL = 1e-7, 1e-12


@functools.lru_cache(maxsize=None)
def _base_actor():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[f"{ACTOR}ppo_micro_batch_size_per_gpu=2"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@functools.lru_cache(maxsize=None)
def _actor(*overrides):
    """verl's actor config (Hydra-composed once, then ``dataclasses.replace`` on its own config classes, which
    validate again): ``"clip_ratio_low=0.2"`` sets an actor field, ``"policy_loss.kl_cov_ratio=0.1"`` a policy-loss one."""
    actor = _base_actor()
    top, loss = {}, {}
    for item in overrides:
        key, value = item.split("=")
        value = value if key.endswith("loss_mode") else float(value)
        (loss if key.startswith("policy_loss.") else top)[key.removeprefix("policy_loss.")] = value
    return dataclasses.replace(actor, policy_loss=dataclasses.replace(actor.policy_loss, **loss), **top)


def _tensors(B=8, T=11, seed=0, empty_row=False):
    """old p log-uniform in [1e-4, 0.99] (rare and common tokens), log r uniform in [-3, 3.7] (kept <= 0), one
    advantage per sequence of both signs plus a token-level wobble, ragged lengths (one empty row if asked)."""
    g = torch.Generator().manual_seed(seed)
    old = torch.empty(B, T, dtype=torch.float64).uniform_(torch.log(torch.tensor(1e-4)).item(), -0.01, generator=g)
    logp = (old + torch.empty(B, T, dtype=torch.float64).uniform_(-3.0, 3.7, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64)
    adv[0], adv[1] = adv[0].abs() + 0.3, -adv[1].abs() - 0.3
    adv = adv + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    if empty_row:
        lengths[-1] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    return old, logp, adv, mask


def _verl(mode, overrides, old, logp, adv, mask, agg, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, _ = get_policy_loss_fn(mode)(
        old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=agg,
        config=_actor(f"policy_loss.loss_mode={mode}", *overrides), **kw,
    )
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


def _ours(method, old, logp, adv, mask, agg, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, _ = bandpo.policy_loss(leaf, old, adv, mask, method=method, agg=agg, **kw)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours[1], theirs[1], rtol=RTOL, atol=ATOL)
    assert (theirs[1] != 0).any()


# (verl mode, verl overrides, bandpo method, bandpo settings, agg)
CASES = [
    ("vanilla", ("clip_ratio_low=0.2", "clip_ratio_high=0.28", "clip_ratio_c=3.0"), "clip_higher", {"dual_clip": 3.0}, "token-mean"),
    ("gspo", ("clip_ratio_low=0.0003", "clip_ratio_high=0.0004"), "gspo", {}, "seq-mean-token-mean"),
    ("gspo", ("clip_ratio_low=0.2", "clip_ratio_high=0.28"), "gspo", {"eps_low": 0.2, "eps_high": 0.28}, "token-mean"),
    ("cispo", ("clip_ratio_low=1.0", "clip_ratio_high=4.0"), "cispo", {}, "token-mean"),
    ("cispo", ("clip_ratio_low=0.2", "clip_ratio_high=0.28"), "cispo", {"eps_low": 0.2, "eps_high": 0.28}, "seq-mean-token-sum"),
    ("sapo", (), "sapo", {}, "seq-mean-token-mean"),
    ("sapo", ("tau_pos=2.0", "tau_neg=3.5"), "sapo", {"tau_pos": 2.0, "tau_neg": 3.5}, "seq-mean-token-mean"),
    ("gpg", (), "gpg", {}, "token-mean"),
    ("gpg", (), "gpg", {}, "seq-mean-token-sum-norm"),
    ("kl_cov", (), "kl_cov", {}, "token-mean"),
    ("kl_cov", ("policy_loss.kl_cov_ratio=0.1", "policy_loss.ppo_kl_coef=0.7"), "kl_cov",
     {"cov_fraction": 0.1, "kl_cov_coef": 0.7}, "seq-mean-token-mean"),
    ("dro", ("policy_loss.dro_beta=0.3",), "dro", {"dro_beta": 0.3}, "token-mean"),
    ("geo_mean", ("clip_ratio_low=0.4", "clip_ratio_high=0.4"), "gmpo", {}, "seq-mean-token-mean"),
    ("geo_mean", ("clip_ratio_low=0.2", "clip_ratio_high=0.28"), "gmpo", {"eps_low": 0.2, "eps_high": 0.28}, "seq-mean-token-mean"),
]


@pytest.mark.parametrize("mode, overrides, method, settings, agg", CASES, ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_equal_verls(mode, overrides, method, settings, agg, seed):
    old, logp, adv, mask = _tensors(seed=seed)
    if mode == "geo_mean":  # GMPO's advantage is per sequence (verl averages it over the tokens)
        adv = adv[:, :1].expand_as(adv).contiguous()
    theirs = _verl(mode, overrides, old, logp, adv, mask, agg)
    ours = _ours(method, old, logp, adv, mask, agg, **settings)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("fraction, seed", [(None, 0), (0.25, 3), (0.25, 4)])
def test_clip_cov_equals_verls_with_the_same_random_pick(fraction, seed):
    """verl picks Clip-Cov's tokens with torch.randperm on the global generator; bandpo with its own generator
    seeded with cov_seed: seeding the global one the same way makes the picks, hence loss and gradient, equal."""
    old, logp, adv, mask = _tensors(seed=seed)
    adv = adv * 3  # covariances reach the (1, 5) window
    overrides = ("clip_ratio=0.2",) + (() if fraction is None else (f"policy_loss.clip_cov_ratio={fraction}",))
    torch.manual_seed(seed)
    theirs = _verl("clip_cov", overrides, old, logp, adv, mask, "token-mean")
    settings = {"cov_seed": seed} | ({} if fraction is None else {"cov_fraction": fraction})
    ours = _ours("clip_cov", old, logp, adv, mask, "token-mean", **settings)
    _assert_same(ours, theirs)
    plain = _ours("clip", old, logp, adv, mask, "token-mean")
    assert not torch.equal(ours[1], plain[1])  # some tokens were detached


OWN = {"gspo": ("clip_ratio_low=0.0003", "clip_ratio_high=0.0004"), "cispo": ("clip_ratio_low=1.0", "clip_ratio_high=4.0"),
       "gmpo": ("clip_ratio_low=0.4", "clip_ratio_high=0.4")}
"""verl's clip range set to each bandpo method's own default."""


@pytest.mark.parametrize("method", ["gspo", "cispo", "sapo", "gpg", "kl_cov"])
def test_an_empty_sequence_changes_nothing(method):
    old, logp, adv, mask = _tensors(seed=5, empty_row=True)
    agg = "seq-mean-token-mean"
    _assert_same(_ours(method, old, logp, adv, mask, agg), _verl(method, OWN.get(method, ()), old, logp, adv, mask, agg))


@pytest.mark.parametrize("method", ["gspo", "cispo", "sapo", "gpg", "kl_cov", "gmpo"])
def test_rollout_correction_multiplies_each_tokens_loss_as_verls(method):
    """verl multiplies every loss's per-token term by ``rollout_is_weights`` (GMPO: by their geometric mean over the
    sequence); bandpo's ``correction="tis"`` multiplies by the weights of :func:`rollout_weights` (equal to verl's own,
    below). For GMPO the two differ (per-token weights vs their per-sequence geometric mean): the test checks that
    bandpo equals verl once the weights are constant along each sequence (sequence-level TIS)."""
    mode = {"gmpo": "geo_mean"}.get(method, method)
    old, logp, adv, mask = _tensors(seed=7)
    if method == "gmpo":
        adv = adv[:, :1].expand_as(adv).contiguous()
    rollout = (old + 0.02 * torch.randn(old.shape, generator=torch.Generator().manual_seed(8), dtype=old.dtype)).clamp(max=0)
    level = "sequence" if method == "gmpo" else "token"
    w, _ = compute_rollout_correction_weights(old - rollout, mask, rollout_is=level, rollout_is_threshold=2.0)
    agg = "seq-mean-token-mean"
    theirs = _verl(mode, OWN.get(method, ()), old, logp, adv, mask, agg, rollout_is_weights=w)
    ours = _ours(method, old, logp, adv, mask, agg, correction="seq_tis" if level == "sequence" else "tis", rollout_logp=rollout)
    _assert_same(ours, theirs)
    assert not torch.allclose(ours[0], _ours(method, old, logp, adv, mask, agg)[0])


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("threshold, correction", [
    (2.0, RolloutCorrection("truncate", upper=2.0)),
    ("0.5_5.0", RolloutCorrection("mask", lower=0.5, upper=5.0)),
    ("1e-12_3.0", RolloutCorrection("mask", lower=1e-12, upper=3.0)),
])
def test_rollout_weights_equal_verls(level, threshold, correction):
    old, _, _, mask = _tensors(seed=9)
    g = torch.Generator().manual_seed(10)
    rollout = (old + 0.8 * torch.randn(old.shape, generator=g, dtype=old.dtype)).clamp(max=0)
    if level == "sequence":  # keep some sequences inside the thresholds
        rollout[:3] = (old[:3] + 0.05 * torch.randn(old[:3].shape, generator=g, dtype=old.dtype)).clamp(max=0)
    theirs, _ = compute_rollout_correction_weights(old - rollout, mask, rollout_is=level, rollout_is_threshold=threshold)
    ours = rollout_weights(old, rollout, mask, dataclasses.replace(correction, level=level))
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-12, atol=0)
    assert (ours[valid] != 1).any()
    if correction.mode == "mask":
        assert (ours[valid] == 0).any() and (ours[valid] > 0).any()


def test_every_verl_loss_is_covered():
    covered = {c[0] for c in CASES} | {"clip_cov", "dppo_kl", "dppo_tv", "bypass_mode"}
    builtin = {m for m in POLICY_LOSS_REGISTRY if not m.startswith("bandpo")}
    assert builtin <= covered, sorted(builtin - covered)
