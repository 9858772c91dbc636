"""BandPO's OpenRLHF loss, run through OpenRLHF's own ``PolicyLoss.forward`` on CPU.

OpenRLHF cannot be installed with its dependencies here (flash-attn is a CUDA build, and it pins another
transformers): `make test` installs the package alone (``pip install --no-deps openrlhf``) and this test loads
``openrlhf.models.loss`` with stand-ins for the two GPU-side modules its import chain names (``deepspeed``,
imported by ``openrlhf/models/utils.py`` and unused by the loss; and ``openrlhf.models``' package ``__init__``,
which would import the model classes). The loss code itself is OpenRLHF's, unmodified. Not run here: a real
OpenRLHF Ray job (``patch_openrlhf`` is checked on a stand-in ``ppo_actor`` module).
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


def test_patch_openrlhf_and_setup_hook(orl, monkeypatch):
    ppo_actor = types.ModuleType("openrlhf.trainer.ray.ppo_actor")
    ppo_actor.PolicyLoss = orl.loss.PolicyLoss
    for name in ("openrlhf.trainer", "openrlhf.trainer.ray"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "openrlhf.trainer.ray.ppo_actor", ppo_actor)
    monkeypatch.setattr(sys.modules["openrlhf.trainer.ray"], "ppo_actor", ppo_actor, raising=False)
    monkeypatch.setenv(orl.plugin.ENV_VAR, json.dumps({"method": "band_tv", "delta": 0.1}))
    orl.plugin.setup_hook()
    # Built as OpenRLHF's actor builds it (keyword arguments from its command line).
    fn = ppo_actor.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=None, token_level_loss=True,
                              policy_loss_type="ppo", is_correction_level="off")
    assert isinstance(fn, orl.plugin.BandPOPolicyLoss)
    assert fn.method == "band_tv" and fn.settings["delta"] == 0.1 and fn.dual_clip is None and fn.token_level_loss

    monkeypatch.setenv(orl.plugin.ENV_VAR, "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        orl.plugin.setup_hook()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"policy_loss_type": "gspo"}, "per token"),
        ({"method": "band"}, "known methods"),
        ({"method": "clip", "delta": 0.1}, "does not use delta"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"method": "dppo_tv"}, "cannot mask tokens: method 'dppo_tv' uses DPPO's mask surrogate"),
    ],
)
def test_refusals(orl, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        orl.plugin.BandPOPolicyLoss(**kw)
    assert "\n" not in str(info.value)
