"""BandPO's OpenRLHF loss, run through OpenRLHF's own ``PolicyLoss.forward`` on CPU.

OpenRLHF cannot be installed with its dependencies here (flash-attn is a CUDA build, and it pins another
transformers): `make test` installs the package alone (``pip install --no-deps openrlhf``) and this test loads
``openrlhf.models.loss`` with stand-ins for the two GPU-side modules its import chain names (``deepspeed``,
imported by ``openrlhf/models/utils.py`` and unused by the loss; and ``openrlhf.models``' package ``__init__``,
which would import the model classes). The loss code itself is OpenRLHF's, unmodified. Not run here: a real
OpenRLHF Ray job (``patch_openrlhf`` is checked on a stand-in ``ppo_actor`` module whose ``training_step`` does
what OpenRLHF 0.11.2's does with the loss and ``experience.info``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("openrlhf") is None:
    pytest.skip("OpenRLHF is not installed (make test installs it with --no-deps)", allow_module_level=True)


@pytest.fixture(scope="module")
def orl(request):
    """Import openrlhf.models.loss behind stand-ins, and bandpo.integrations.openrlhf on top of it."""
    added = []
    if importlib.util.find_spec("deepspeed") is None:
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")
        added.append("deepspeed")
    if "openrlhf.models" not in sys.modules:
        import openrlhf

        pkg = types.ModuleType("openrlhf.models")
        pkg.__path__ = [str(Path(openrlhf.__file__).parent / "models")]
        sys.modules["openrlhf.models"] = pkg
        added.append("openrlhf.models")
    loss_mod = importlib.import_module("openrlhf.models.loss")
    plugin = importlib.import_module("bandpo.integrations.openrlhf")
    yield types.SimpleNamespace(loss=loss_mod, plugin=plugin)
    for name in added + ["openrlhf.models.loss", "openrlhf.models.utils", "bandpo.integrations.openrlhf"]:
        sys.modules.pop(name, None)


def _tensors(B=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(B, T, generator=g) * 0.98 + 0.01)
    logp = (old + torch.empty(B, T).uniform_(-1.5, 2.5, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g)
    # one token far beyond the cap and the dual clip (r = 30) in a sequence with A < 0
    adv[1] = -adv[1].abs() - 0.5
    old[1, 0], logp[1, 0] = torch.log(torch.tensor(0.02)), torch.log(torch.tensor(0.6))
    adv = adv.expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0
    mask[3, 2:] = 0
    return old, logp, adv, mask


@pytest.mark.parametrize(
    "method,settings,token_level,agg",
    [
        ("band_kl", {"delta": 0.05}, False, "seq-mean-token-mean"),
        ("band_hellinger", {"delta": 0.1}, True, "token-mean"),
        ("dcpo", {}, False, "seq-mean-token-mean"),
    ],
)
def test_loss_gradient_and_metrics_match_bandpo_policy_loss(orl, method, settings, token_level, agg):
    from bandpo.integrations import _common

    loss_fn = orl.plugin.BandPOPolicyLoss(method, max_ratio=10.0, dual_clip=10.0, token_level_loss=token_level, **settings)
    assert isinstance(loss_fn, orl.loss.PolicyLoss)
    old, logp, adv, mask = _tensors()
    leaf = logp.clone().requires_grad_(True)
    loss, clip_ratio, ppo_kl, vllm_kl, is_filter = loss_fn(leaf, old, adv, action_mask=mask)
    (g,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logp.clone().requires_grad_(True)
    ref, metrics = _common.policy_loss(ref_leaf, old, adv, mask, method=method, dual_clip=10.0, agg=agg, max_ratio=10.0, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    assert float(metrics["clip_ratio/region_mean"]) > 0 and float(metrics["dual_clip_fraction"]) > 0
    # OpenRLHF's clip_ratio counts tokens whose clipped term binds: BandPO's clip region.
    assert float(clip_ratio) == pytest.approx(float(metrics["clip_ratio/region_mean"]))
    assert float(ppo_kl) == pytest.approx(float(metrics["ppo_kl"]))
    assert vllm_kl is None and is_filter is None
    for key, value in metrics.items():
        assert float(loss_fn.last_metrics[key]) == pytest.approx(float(value)), key
    # Outside a call the module's own attributes are plain numbers again.
    assert loss_fn.clip_eps_low == 0.2 and loss_fn.clip_eps_high == 0.2


def test_clip_method_equals_openrlhf_policy_loss_with_importance_correction(orl):
    """method='clip' (0.2/0.2) through BandPO's subclass is OpenRLHF's own PPO loss, importance correction included."""
    old, logp, adv, mask = _tensors(seed=3)
    rollout = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    common = dict(dual_clip=3.0, token_level_loss=True, is_correction_level="token", is_correction_mode="clip",
                  is_correction_threshold=(0.5, 2.0))
    ours = orl.plugin.BandPOPolicyLoss("clip", max_ratio=10.0, **common)
    theirs = orl.loss.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2, **common)
    outs = []
    for fn in (ours, theirs):
        leaf = logp.clone().requires_grad_(True)
        out = fn(leaf, old, adv, action_mask=mask, rollout_log_probs=rollout, dp_size=2, batch_num_tokens=50.0)
        outs.append((out, torch.autograd.grad(out[0], leaf)[0]))
    (o1, g1), (o2, g2) = outs
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-8)
    assert float(o2[1]) > 0 and float(o2[4]) > 0  # the clip and the correction both acted


NON_CLIP = [m for m in __import__("bandpo").list_methods() if __import__("bandpo").losses.get_method(m).surrogate != "clip"]
"""Every method whose surrogate is not PPO's clip: DPPO's mask and the forms of bandpo.losses.surrogates."""


def _inputs64(method, seed=0):
    import bandpo

    old, logp, adv, mask = (x.to(torch.float64) if x.is_floating_point() else x for x in _tensors(B=6, T=9, seed=seed))
    adv = adv + 0.1 * torch.randn(adv.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=adv.dtype)
    form = bandpo.losses.get_method(method).surrogate
    if form == "geo_mean":  # GMPO's advantage is per sequence
        adv = adv[:, :1].expand_as(adv).contiguous()
    if form == "clip_cov":  # covariances reach the (1, 5) window
        adv = adv * 3
    return old, logp, adv, mask


@pytest.mark.parametrize("token_level,agg", [(True, "token-mean"), (False, "seq-mean-token-mean")])
@pytest.mark.parametrize("method", NON_CLIP)
def test_non_clip_methods_equal_bandpo_policy_loss(orl, method, token_level, agg):
    """Every non-clip method through BandPOPolicyLoss (bandpo's per-token loss, OpenRLHF's aggregate_loss) equals
    bandpo.policy_loss at the matching aggregation, float64 loss and gradient; the dual clip (on by default) is not
    applied to these forms, as in bandpo."""
    import bandpo

    settings = {"dro_beta": 0.3} if method == "dro" else {}
    loss_fn = orl.plugin.BandPOPolicyLoss(method, token_level_loss=token_level, settings=settings or None)
    old, logp, adv, mask = _inputs64(method)
    leaf = logp.clone().requires_grad_(True)
    loss, clip_ratio, ppo_kl, vllm_kl, is_filter = loss_fn(leaf, old, adv, action_mask=mask)
    (g,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logp.clone().requires_grad_(True)
    ref, metrics = bandpo.policy_loss(ref_leaf, old, adv, mask, method=method, agg=agg, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-7, atol=1e-12)  # OpenRLHF divides by n + 1e-8 per sequence
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-12)
    assert (g_ref != 0).any()
    assert float(clip_ratio) == pytest.approx(float(metrics["clip_ratio/region_mean"]))
    assert float(ppo_kl) == pytest.approx(float(metrics["ppo_kl"]))
    assert vllm_kl is None and is_filter is None
    for key, value in metrics.items():
        assert float(loss_fn.last_metrics[key]) == pytest.approx(float(value), rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("mode,threshold", [("clip", (0.5, 2.0)), ("mask", (0.5, 1.5))])
@pytest.mark.parametrize("method", ["clip", "gspo", "cispo_band_kl", "dppo_kl"])
def test_openrlhf_correction_is_bandpos_token_correction(orl, method, mode, threshold):
    """OpenRLHF's token-level correction (is_correction_mode clip = TIS, mask = MIS/IcePop, on [low, high]) is
    bandpo's RolloutCorrection('truncate'|'mask', 'token', low, high): for the clip method through OpenRLHF's own
    forward, for the other forms through bandpo's weights. Dual clip off (the frameworks apply the weight after it)."""
    import bandpo

    old, logp, adv, mask = _inputs64(method, seed=4)
    rollout = (old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2), dtype=old.dtype)).clamp(max=0)
    loss_fn = orl.plugin.BandPOPolicyLoss(
        method, dual_clip=None, token_level_loss=True, is_correction_level="token", is_correction_mode=mode,
        is_correction_threshold=threshold,
    )
    leaf = logp.clone().requires_grad_(True)
    loss, _, _, vllm_kl, is_filter = loss_fn(leaf, old, adv, action_mask=mask, rollout_log_probs=rollout)
    (g,) = torch.autograd.grad(loss, leaf)
    correction = bandpo.losses.RolloutCorrection("truncate" if mode == "clip" else "mask", "token", *threshold)
    settings = {"max_ratio": 10.0} if method == "clip" else {}
    ref_leaf = logp.clone().requires_grad_(True)
    ref, _ = bandpo.policy_loss(ref_leaf, old, adv, mask, method=method, agg="token-mean", dual_clip=None,
                                correction=correction, rollout_logp=rollout, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-12)
    plain, _ = bandpo.policy_loss(logp, old, adv, mask, method=method, agg="token-mean", dual_clip=None, **settings)
    assert not torch.allclose(plain, ref)  # the correction acted
    assert 0 < float(is_filter) < 1 and vllm_kl is not None


class _StandInActorTrainer:
    """The part of OpenRLHF 0.11.2's ``ActorPPOTrainer.training_step`` the plug-in relies on: it calls
    ``self.actor_loss_fn(...)``, then logs every 0-d tensor of ``experience.info`` as a token-weighted metric."""

    def __init__(self, loss_fn, scheduler_steps):
        self.actor_loss_fn = loss_fn
        self.actor_scheduler = types.SimpleNamespace(last_epoch=scheduler_steps)

    def training_step(self, experience, kl_ctl, step, loss_batch_info=None):
        loss, clip_ratio, ppo_kl, *_ = self.actor_loss_fn(
            experience.logp, experience.old, experience.adv, action_mask=experience.mask, **(loss_batch_info or {})
        )
        experience.info["ppo_clip_ratio"] = clip_ratio.detach()
        metrics = {"policy_loss": loss.detach()}
        weights = {"policy_loss": "token"}
        for k, v in experience.info.items():
            if isinstance(v, torch.Tensor):
                metrics[k] = v
                weights[k] = "token" if v.dim() == 0 else "sample"
        return {"metrics": metrics, "weights": weights, "loss": loss}


@pytest.fixture
def ppo_actor(orl, monkeypatch):
    mod = types.ModuleType("openrlhf.trainer.ray.ppo_actor")
    mod.PolicyLoss = orl.loss.PolicyLoss
    mod.ActorPPOTrainer = type("ActorPPOTrainer", (_StandInActorTrainer,), {})
    for name in ("openrlhf.trainer", "openrlhf.trainer.ray"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "openrlhf.trainer.ray.ppo_actor", mod)
    monkeypatch.setattr(sys.modules["openrlhf.trainer.ray"], "ppo_actor", mod, raising=False)
    return mod


def _build_as_openrlhf_does(ppo_actor, dual_clip=None, agg="token-mean"):
    """ActorPPOTrainer.__init__'s call, with OpenRLHF's defaults (--actor.dual_clip None, --actor.loss_agg_mode token-mean)."""
    return ppo_actor.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual_clip,
                                token_level_loss=agg == "token-mean", policy_loss_type="ppo", is_correction_level="off")


def test_setup_hook_trains_with_the_papers_dual_clip_and_aggregation(orl, ppo_actor, monkeypatch):
    monkeypatch.setenv(orl.plugin.ENV_VAR, json.dumps({"method": "band_tv", "delta": 0.1}))
    orl.plugin.setup_hook()
    with pytest.warns(UserWarning, match="BandPO trains with dual_clip=10.0, token_level_loss=False") as rec:
        fn = _build_as_openrlhf_does(ppo_actor)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert isinstance(fn, orl.plugin.BandPOPolicyLoss)
    assert fn.method == "band_tv" and fn.settings["delta"] == 0.1
    assert fn.dual_clip == 10.0 and fn.token_level_loss is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flags that agree with BandPO's: no warning
        _build_as_openrlhf_does(ppo_actor, dual_clip=10.0, agg="seq-mean-token-mean")

    monkeypatch.setenv(orl.plugin.ENV_VAR, json.dumps({"method": "band_kl", "dual_clip": 3.0, "token_level_loss": True}))
    orl.plugin.setup_hook()
    fn = _build_as_openrlhf_does(ppo_actor, dual_clip=3.0)
    assert fn.dual_clip == 3.0 and fn.token_level_loss is True

    monkeypatch.setenv(orl.plugin.ENV_VAR, "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        orl.plugin.setup_hook()


def test_training_step_logs_bandpo_metrics_and_passes_the_optimiser_step(orl, ppo_actor, monkeypatch):
    """Through the patched training step: the δ schedule is evaluated at actor_scheduler.last_epoch, and bandpo's
    token-weighted metrics reach the metrics OpenRLHF logs."""
    from bandpo.integrations import _common

    monkeypatch.setenv(orl.plugin.ENV_VAR, json.dumps(
        {"method": "band_kl", "delta": 0.05, "delta_schedule": "linear", "delta_end": 0.25, "delta_steps": 8}
    ))
    orl.plugin.setup_hook()
    old, logp, adv, mask = _tensors(seed=4)
    for scheduler_steps, delta in ((0, 0.05), (4, 0.15), (100, 0.25)):
        trainer = ppo_actor.ActorPPOTrainer(
            _build_as_openrlhf_does(ppo_actor, dual_clip=10.0, agg="seq-mean-token-mean"), scheduler_steps
        )
        experience = types.SimpleNamespace(logp=logp, old=old, adv=adv, mask=mask, info={})
        status = trainer.training_step(experience, 0.0, 0)
        ref, ref_metrics = _common.policy_loss(logp, old, adv, mask, method="band_kl", dual_clip=10.0, delta=delta,
                                               max_ratio=10.0)
        torch.testing.assert_close(status["loss"], ref, rtol=1e-6, atol=1e-7)
        assert trainer.actor_loss_fn.step == scheduler_steps and trainer.actor_loss_fn.info_sink is None
        for key in orl.plugin.LOGGED_KEYS:
            assert status["weights"][f"bandpo/{key}"] == "token"
            assert float(status["metrics"][f"bandpo/{key}"]) == pytest.approx(float(ref_metrics[key])), key
    assert {"clip_ratio/region_mean", "band_width/mean", "dual_clip_fraction"} <= set(orl.plugin.LOGGED_KEYS)
    assert "num_tokens" not in orl.plugin.LOGGED_KEYS  # a count: OpenRLHF's token-weighted mean would garble it

    loss_fn = orl.plugin.BandPOPolicyLoss("band_kl", delta_schedule="linear", delta_end=0.1, delta_steps=5)
    with pytest.raises(ValueError, match="needs OpenRLHF's optimiser step") as info:
        loss_fn(logp, old, adv, action_mask=mask)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"policy_loss_type": "gspo"}, "per token"),
        ({"method": "band"}, "known methods"),
        ({"method": "clip", "delta": 0.1}, "does not use delta"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"method": "gspo", "is_correction_level": "seq"}, "must be is_correction_level='token' with"),
        ({"method": "cispo", "is_correction_level": "token", "is_correction_gating": "tv",
          "is_correction_threshold": (0.0, 0.1)}, "is_correction_gating='ratio'"),
        ({"method": "sapo", "max_ratio": 5.0}, "does not use max_ratio"),
        ({"method": "dro"}, "dro_beta"),
        ({"method": "band_kl", "divergence": "tv"}, "has divergence 'kl' but divergence='tv' was given: use 'band_tv'"),
        ({"delta_schedule": "linear", "delta_steps": 5}, "needs an end value"),
    ],
)
def test_refusals(orl, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        orl.plugin.BandPOPolicyLoss(**kw)
    assert "\n" not in str(info.value)


def test_documented_command_line_uses_openrlhf_flags():
    """The flags in docs/integrations.md's OpenRLHF command exist in OpenRLHF 0.11.2's train_ppo_ray parser."""
    import re

    import openrlhf

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "integrations.md").read_text()
    section = doc[doc.index("## OpenRLHF"):doc.index("## What was tested")]
    command = section[section.index("ray job submit"):]
    command = command[:command.index("```")]
    flags = re.findall(r"\s(--[a-z][\w.]*)", command.split("-- python3", 1)[1])
    assert {"--actor.dual_clip", "--actor.loss_agg_mode"} <= set(flags)
    cli = (Path(openrlhf.__file__).parent / "cli" / "train_ppo_ray.py").read_text()
    for flag in flags:
        assert f'"{flag}"' in cli, flag


def test_a_new_row_of_the_method_table_flows_through_by_id(orl):
    from bandpo.integrations import _common
    from bandpo.losses import Clip, Method, register_method, unregister_method

    register_method(Method("plugin_test_clip", Clip(0.1, 0.3), 10.0, "test", "a row added after import"))
    try:
        loss_fn = orl.plugin.BandPOPolicyLoss("plugin_test_clip", dual_clip=10.0, token_level_loss=False)
        old, logp, adv, mask = _tensors(seed=9)
        loss = loss_fn(logp, old, adv, action_mask=mask)[0]
        ref, metrics = _common.policy_loss(logp, old, adv, mask, method="plugin_test_clip", dual_clip=10.0)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
        assert float(metrics["clip_ratio/region_mean"]) > 0
    finally:
        unregister_method("plugin_test_clip")


def test_a_rows_own_settings_go_through_settings(orl, width_method):
    from bandpo.integrations import _common

    loss_fn = orl.plugin.BandPOPolicyLoss(width_method, settings={"width": 0.1}, dual_clip=10.0)
    old, logp, adv, mask = _tensors(seed=12)
    ref, _ = _common.policy_loss(logp, old, adv, mask, method=width_method, dual_clip=10.0, width=0.1)
    torch.testing.assert_close(loss_fn(logp, old, adv, action_mask=mask)[0], ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="settings repeats delta: set delta instead"):
        orl.plugin.BandPOPolicyLoss(width_method, settings={"delta": 0.1})
