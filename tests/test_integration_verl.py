"""BandPO's verl policy-loss modes, exercised through verl's own code: the entry point, the registry, verl's Hydra
config and dataclasses, ``agg_loss``, the built-in ``vanilla`` loss and the worker's ``ppo_loss``.

Skipped when verl is not installed (`make test` installs it with ``pip install --no-deps verl``)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("hydra")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

from bandpo.integrations import _common  # noqa: E402
from bandpo.integrations.verl import BandPOPolicyLossConfig, mode_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "bandpo" / "integrations" / "verl_bandpo_kl.sh"
CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


@functools.lru_cache(maxsize=None)
def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def _actor(*overrides):
    """verl's actor config object (FSDPActorConfig), built from verl's own YAML by verl's own converter."""
    base = ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",)  # verl requires a micro-batch size
    return omega_conf_to_dataclass(_compose(base + tuple(overrides)).actor_rollout_ref.actor)  # a fresh object


BANDPO_CFG = "actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig"
VALID = ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2")
"""The micro-batch sizes verl's validate_config insists on."""


def _tensors(B=5, T=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(dtype)
    logp = (old + torch.empty(B, T, dtype=dtype).uniform_(-1.5, 2.5, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g, dtype=dtype)
    # one token far beyond the cap and the dual clip (r = 30) in a sequence with A < 0
    adv[1] = -adv[1].abs() - 0.5
    old[1, 0], logp[1, 0] = torch.log(torch.tensor(0.02, dtype=dtype)), torch.log(torch.tensor(0.6, dtype=dtype))
    adv = adv.expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, T - 2:] = False
    mask[B - 2, 2:] = False
    return old, logp, adv, mask


def test_modes_are_registered_by_a_plain_import_of_verl():
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn\n"
        "names = sorted(k for k in POLICY_LOSS_REGISTRY if k.startswith('bandpo'))\n"
        "get_policy_loss_fn('bandpo_band_kl')\n"
        "print(','.join(names))\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip().split(",") == sorted(mode_names())
    assert {"bandpo", "bandpo_band_kl", "bandpo_clip_higher", "bandpo_dcpo"} <= set(mode_names())


@pytest.mark.parametrize(
    "mode,overrides,method,settings,c,agg",
    [
        ("bandpo_band_kl", (), "band_kl", {"max_ratio": 10.0}, 10.0, "seq-mean-token-mean"),
        ("bandpo_band_tv", ("+actor_rollout_ref.actor.policy_loss.delta=0.1",), "band_tv",
         {"delta": 0.1, "max_ratio": 10.0}, 10.0, "token-mean"),
        ("bandpo", ("+actor_rollout_ref.actor.policy_loss.method=dcpo", "+actor_rollout_ref.actor.policy_loss.max_ratio=4.0"),
         "dcpo", {"max_ratio": 4.0}, 3.0, "seq-mean-token-sum"),
        ("bandpo_clip_higher", (), "clip_higher", {"max_ratio": 10.0}, 5.0, "seq-mean-token-mean"),
    ],
)
def test_loss_gradient_and_metrics_match_bandpo_policy_loss(mode, overrides, method, settings, c, agg):
    cfg = _actor(
        f"actor_rollout_ref.actor.policy_loss.loss_mode={mode}", f"actor_rollout_ref.actor.clip_ratio_c={c}",
        f"actor_rollout_ref.actor.loss_agg_mode={agg}", *((BANDPO_CFG,) + overrides if overrides else ()),
    )
    assert isinstance(cfg.policy_loss, BandPOPolicyLossConfig) == bool(overrides)
    old, logp, adv, mask = _tensors()
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(mode)(
        old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=cfg.loss_agg_mode,
        config=cfg, rollout_is_weights=None,
    )
    (g,) = torch.autograd.grad(loss, leaf)

    ref_leaf = logp.clone().requires_grad_(True)
    ref, ref_metrics = _common.policy_loss(ref_leaf, old, adv, mask, method=method, dual_clip=c, agg=agg, **settings)
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    # the bounds and the dual clip bite on these tensors
    assert float(ref_metrics["clip_ratio/region_mean"]) > 0 and float(ref_metrics["dual_clip_fraction"]) > 0
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float(ref_metrics["clip_ratio/region_mean"]))
    assert metrics["actor/ppo_kl"] == pytest.approx(float(ref_metrics["ppo_kl"]))
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(float(ref_metrics["dual_clip_fraction"]))
    for key, value in ref_metrics.items():
        assert metrics[f"actor/bandpo/{key}"] == pytest.approx(float(value)), key
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_clip_mode_equals_verl_vanilla_loss_with_rollout_weights(agg):
    """bandpo_clip (0.2/0.2, dual clip clip_ratio_c) is verl's own vanilla PPO loss, weights and metrics included."""
    cfg = _actor(
        "actor_rollout_ref.actor.clip_ratio_c=3.0", f"actor_rollout_ref.actor.loss_agg_mode={agg}",
        "actor_rollout_ref.actor.clip_ratio_low=0.2", "actor_rollout_ref.actor.clip_ratio_high=0.2",
    )
    old, logp, adv, mask = _tensors(seed=2)
    weights = torch.rand(logp.shape, generator=torch.Generator().manual_seed(5)) * 2
    results = []
    for mode in ("vanilla", "bandpo_clip"):
        leaf = logp.clone().requires_grad_(True)
        loss, metrics = get_policy_loss_fn(mode)(
            old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=agg, config=cfg,
            rollout_is_weights=weights,
        )
        results.append((loss, torch.autograd.grad(loss, leaf)[0], metrics))
    (l_v, g_v, m_v), (l_b, g_b, m_b) = results
    torch.testing.assert_close(l_b, l_v, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_b, g_v, rtol=1e-6, atol=1e-8)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert m_b[key] == pytest.approx(m_v[key], abs=1e-7), key
    assert m_v["actor/pg_clipfrac"] > 0 and m_v["actor/pg_clipfrac_lower"] > 0


def test_aggregation_is_verls_agg_loss_with_global_batch_info():
    """With data-parallel batch info set (as verl's worker sets it), the loss is agg_loss's, not a local mean."""
    cfg = _actor("actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl", "actor_rollout_ref.actor.clip_ratio_c=10.0")
    old, logp, adv, mask = _tensors(seed=4)
    cfg.global_batch_info.update(dp_size=4, batch_num_tokens=123, global_batch_size=17)
    try:
        loss, _ = get_policy_loss_fn("bandpo_band_kl")(
            old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=cfg,
        )
    finally:
        cfg.global_batch_info.clear()
    local, _ = _common.policy_loss(logp, old, adv, mask, method="band_kl", dual_clip=10.0, agg="token-mean", max_ratio=10.0)
    # token-mean over the global batch: sum / 123 * dp_size = local mean * n_local / 123 * 4
    torch.testing.assert_close(loss, local * mask.sum() / 123 * 4, rtol=1e-6, atol=1e-7)
    per_token_sum = local * mask.sum()
    torch.testing.assert_close(
        loss, agg_loss(per_token_sum.expand(1, 1), torch.ones(1, 1), "token-mean", dp_size=4, batch_num_tokens=123)
    )


def _worker_batch(B=3, Tp=2, T=4, seed=6, **non_tensor):
    """(data, model_output, leaf, old, logp, adv, mask) as verl's worker hands them to ``ppo_loss``."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    old, logp, adv, _ = _tensors(B=B, T=T, seed=seed)
    resp_len = torch.tensor([4, 2, 3])
    mask = torch.arange(T).unsqueeze(0) < resp_len.unsqueeze(1)
    attention = torch.cat([torch.ones(B, Tp, dtype=torch.long), mask.long()], dim=1)
    # Unpadded model output (one value per prompt+response token); a response token's log-prob sits one
    # position before it, where the model predicted it.
    leaf = logp.clone().requires_grad_(True)
    flat = []
    for b in range(B):
        seq = torch.zeros(Tp + int(resp_len[b]), dtype=logp.dtype)
        seq = torch.cat([seq[: Tp - 1], leaf[b, : int(resp_len[b])], seq[-1:]])
        flat.append(seq)
    data = TensorDict(
        {
            "prompts": torch.ones(B, Tp, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": attention,
            "response_mask": mask.long(),
            "old_log_probs": old,
            "advantages": adv,
        },
        batch_size=[B],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None, **non_tensor)
    return data, {"log_probs": torch.cat(flat)}, leaf, old, logp, adv, mask


def test_worker_ppo_loss_passes_verls_step_to_a_delta_schedule():
    """verl's trainer tags batches with global_steps (1 on the first step); a linear δ schedule in the mode is
    evaluated at global_steps - 1, through verl's own worker loss entry."""
    import verl.workers.utils.losses as losses

    cfg = _actor(
        "actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl", "actor_rollout_ref.actor.clip_ratio_c=10.0",
        "actor_rollout_ref.actor.use_kl_loss=False", BANDPO_CFG,
        "+actor_rollout_ref.actor.policy_loss.delta_schedule=linear",
        "+actor_rollout_ref.actor.policy_loss.delta_end=0.25", "+actor_rollout_ref.actor.policy_loss.delta_steps=8",
    )
    for global_steps, delta in ((1, 0.05), (5, 0.15), (30, 0.25)):
        data, out, leaf, old, logp, adv, mask = _worker_batch(global_steps=global_steps)
        loss, metrics = losses.ppo_loss(cfg, out, data)
        ref, ref_metrics = _common.policy_loss(
            logp, old, adv, mask, method="band_kl", dual_clip=10.0, agg=cfg.loss_agg_mode, delta=delta, max_ratio=10.0
        )
        torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=1e-7)
        assert metrics["actor/bandpo/band_width/mean"].values == [pytest.approx(float(ref_metrics["band_width/mean"]))]
    data, out, *_ = _worker_batch()  # no global_steps with the batch
    with pytest.raises(ValueError, match="needs verl's training step") as info:
        losses.ppo_loss(cfg, out, data)
    assert "\n" not in str(info.value)


def _docstring_overrides(text):
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith(("actor_rollout_ref.", "+actor_rollout_ref."))]


def test_documented_overrides_compose_through_hydra():
    """The overrides in the module docstring and in docs/integrations.md parse with Hydra's override parser,
    compose with verl's config, pass verl's validate_config and build BandPO's policy-loss config."""
    import verl.utils.config as vcfg
    from hydra.errors import ConfigCompositionException

    import bandpo.integrations.verl as plugin

    doc = (ROOT / "docs" / "integrations.md").read_text()
    section = doc[doc.index("## verl"):doc.index("## OpenRLHF")]
    for overrides in (_docstring_overrides(plugin.__doc__), _docstring_overrides(section.replace("\\\n", "\n"))):
        assert any("_target_" in o for o in overrides) and any(o.startswith("+") for o in overrides)
        cfg = _compose(tuple(overrides) + VALID)
        vcfg.validate_config(cfg, use_reference_policy=False, use_critic=False)
        pl = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).policy_loss
        assert isinstance(pl, BandPOPolicyLossConfig) and (pl.loss_mode, pl.delta, pl.max_ratio) == ("bandpo_band_kl", 0.05, 10.0)
    # the form the docstring used to show: Hydra refuses to append a key verl's config already has
    with pytest.raises(ConfigCompositionException):
        _compose(("+" + BANDPO_CFG,))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (("actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kll",), "is no BandPO mode; known: bandpo, "),
        (("actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl", "algorithm.rollout_correction.bypass_mode=true"),
         "bypass_mode=true makes verl replace loss_mode='bandpo_band_kl'"),
    ],
)
def test_validate_config_refuses_what_a_bandpo_mode_cannot_run(overrides, match):
    """At configuration time (verl's validate_config, which main_ppo calls), not at the first loss call."""
    import verl.utils.config as vcfg

    cfg = _compose(overrides + VALID)
    with pytest.raises(ValueError, match=match) as info:
        vcfg.validate_config(cfg, use_reference_policy=False, use_critic=False)
    assert "\n" not in str(info.value)
    # verl's own modes are not ours to check
    vcfg.validate_config(
        _compose(VALID + ("algorithm.rollout_correction.bypass_mode=true",)),
        use_reference_policy=False, use_critic=False,
    )


def test_apply_bypass_mode_refuses_to_replace_a_bandpo_mode():
    from verl.trainer.ppo import rollout_corr_helper

    with pytest.raises(ValueError, match="would replace loss_mode='bandpo_band_kl'"):
        rollout_corr_helper.apply_bypass_mode(None, None, {"loss_mode": "bandpo_band_kl"})


def test_worker_ppo_loss_runs_the_mode():
    """verl's worker entry (verl/workers/utils/losses.py::ppo_loss) picks the mode from the config and runs it."""
    losses = pytest.importorskip("verl.workers.utils.losses")

    cfg = _actor(
        "actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl", "actor_rollout_ref.actor.clip_ratio_c=10.0",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean", "actor_rollout_ref.actor.use_kl_loss=False",
    )
    data, out, leaf, old, logp, adv, mask = _worker_batch()
    loss, metrics = losses.ppo_loss(cfg, out, data)
    (g,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logp.clone().requires_grad_(True)
    ref, ref_metrics = _common.policy_loss(
        ref_leaf, old, adv, mask, method="band_kl", dual_clip=10.0, agg="seq-mean-token-mean", max_ratio=10.0
    )
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    assert "actor/pg_clipfrac" in metrics and "actor/bandpo/band_width/mean" in metrics


def test_paper_recipe_parses_with_verls_config():
    """The shipped BandPO-KL recipe composes with verl's Hydra config, passes verl's validation and instantiates
    verl's actor config with BandPO's policy-loss config; its numbers are the paper preset's."""
    import yaml
    from verl.utils.config import validate_config

    env = {**os.environ, "PRINT_OVERRIDES": "1", "MODEL_PATH": "Qwen/Qwen2.5-3B-Instruct"}
    out = subprocess.run(["bash", str(RECIPE)], capture_output=True, text=True, check=True, env=env)
    overrides = [line for line in out.stdout.splitlines() if line]
    cfg = _compose(tuple(overrides))
    validate_config(cfg, use_reference_policy=True, use_critic=False)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    preset = yaml.safe_load((ROOT / "bandpo" / "training" / "presets" / "paper-bandpo-kl.yaml").read_text())
    loss = {**preset["loss"], **preset.get("objective", {})}
    roll, optim = preset["rollout"], preset["optim"]
    method = loss["method"] if loss["method"] != "band" else f"band_{loss['divergence']}"
    if "delta" in loss:
        delta, max_ratio = loss["delta"], loss["max_ratio"]
    else:  # the preset takes the method's own settings
        from bandpo.losses import get_method

        spec = get_method(method)
        delta, max_ratio = spec.bounds.delta, spec.max_ratio

    pl = actor.policy_loss
    assert isinstance(pl, BandPOPolicyLossConfig) and pl.loss_mode == f"bandpo_{method}" == "bandpo_band_kl"
    assert (pl.delta, pl.max_ratio, actor.clip_ratio_c) == (delta, max_ratio, loss["dual_clip"])
    assert actor.loss_agg_mode == loss["agg"] and actor.kl_loss_coef == loss["kl_coef"] and actor.use_kl_loss
    assert cfg.algorithm.norm_adv_by_std_in_grpo == loss["scale_adv_by_std"]
    assert cfg.actor_rollout_ref.model.path == preset["model"]["name_or_path"]
    assert cfg.data.train_batch_size == roll["prompts_per_step"] and cfg.actor_rollout_ref.rollout.n == roll["group_size"]
    assert cfg.data.max_response_length == roll["max_new_tokens"]
    assert cfg.actor_rollout_ref.rollout.temperature == roll["temperature"] and cfg.actor_rollout_ref.rollout.top_p == roll["top_p"]
    assert actor.ppo_mini_batch_size == optim["prompts_per_minibatch"] and actor.ppo_epochs == optim["ppo_epochs"]
    assert actor.optim.lr == optim["lr"] and actor.optim.weight_decay == optim["weight_decay"]
    assert actor.grad_clip == optim["grad_clip"]
    assert cfg.data.train_batch_size // actor.ppo_mini_batch_size == 4  # 4 optimiser steps per rollout batch
    assert cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes == preset["trainer"]["devices"] * preset["trainer"]["num_nodes"]
    assert cfg.trainer.save_freq == preset["trainer"]["checkpoint_every"]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"loss_mode": "vanilla"}, "needs loss_mode 'bandpo' or 'bandpo_<method>'"),
        ({"loss_mode": "bandpo_band"}, "known methods"),
        ({"loss_mode": "bandpo_band_kl", "method": "clip"}, "fixes method='band_kl'"),
        ({"loss_mode": "bandpo", "method": "clip", "delta": 0.1}, "does not use delta"),
        ({"loss_mode": "bandpo", "delta": -0.1}, "delta"),
        ({"loss_mode": "bandpo", "max_ratio": 0.5}, "max_ratio"),
        ({"loss_mode": "bandpo_band_kl", "divergence": "tv"}, "has divergence 'kl' but divergence='tv' was given"),
        ({"loss_mode": "bandpo", "delta_schedule": "linear", "delta_end": 0.1}, "needs an end value"),
        ({"loss_mode": "bandpo", "delta_end": 0.1}, "need delta_schedule"),
    ],
)
def test_config_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        BandPOPolicyLossConfig(**kw)
    assert "\n" not in str(info.value)


def test_dual_clip_must_be_a_dual_clip():
    cfg = _actor("actor_rollout_ref.actor.clip_ratio_c=1.0")
    old, logp, adv, mask = _tensors()
    with pytest.raises(ValueError, match="dual_clip"):
        get_policy_loss_fn("bandpo")(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, config=cfg)


def test_a_new_row_of_the_method_table_becomes_a_mode():
    """Modes are made from bandpo.list_methods(): a method registered later is a mode after register_modes()."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from bandpo.integrations.verl import register_modes
    from bandpo.losses import Band, Method, register_method, unregister_method

    register_method(Method("plugin_test_band", Band("js", 0.1), 10.0, "test", "a row added after import"))
    try:
        assert "bandpo_plugin_test_band" in register_modes()
        cfg = _actor("actor_rollout_ref.actor.clip_ratio_c=10.0")
        old, logp, adv, mask = _tensors(seed=8)
        loss, _ = get_policy_loss_fn("bandpo_plugin_test_band")(
            old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=cfg,
        )
        ref, metrics = _common.policy_loss(logp, old, adv, mask, method="band_js", dual_clip=10.0, agg="token-mean", delta=0.1)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
        assert float(metrics["clip_ratio/region_mean"]) > 0
    finally:
        unregister_method("plugin_test_band")
        POLICY_LOSS_REGISTRY.pop("bandpo_plugin_test_band", None)


def test_a_rows_own_settings_go_through_policy_loss_settings(width_method):
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from bandpo.integrations.verl import register_modes

    register_modes()
    try:
        cfg = _actor(
            f"actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_{width_method}", BANDPO_CFG,
            "+actor_rollout_ref.actor.policy_loss.settings.width=0.1", "actor_rollout_ref.actor.clip_ratio_c=10.0",
        )
        old, logp, adv, mask = _tensors(seed=10)
        loss, _ = get_policy_loss_fn(f"bandpo_{width_method}")(
            old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean", config=cfg,
        )
        ref, _ = _common.policy_loss(logp, old, adv, mask, method=width_method, dual_clip=10.0, agg="token-mean", width=0.1)
        other, _ = _common.policy_loss(logp, old, adv, mask, method=width_method, dual_clip=10.0, agg="token-mean")
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(ref, other)  # the setting changed the loss
        with pytest.raises(ValueError, match="policy_loss.settings repeats delta: set policy_loss.delta instead"):
            BandPOPolicyLossConfig(loss_mode="bandpo", settings={"delta": 0.1})
    finally:
        POLICY_LOSS_REGISTRY.pop(f"bandpo_{width_method}", None)
