"""BandPO inside TRL's GRPOTrainer: a real CPU training run, loss/gradient/metric parity through TRL's own loss code,
and the refusals (docs/integrations.md). Skipped when TRL is not installed (`make test` installs it)."""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from bandpo.integrations import _common  # noqa: E402
from bandpo.integrations.trl import BandPOConfig, BandPOTrainer  # noqa: E402
from bandpo.training.tokenizer import build_char_tokenizer  # noqa: E402


def _tiny_model(tok):
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def _reward_digits(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=3, num_iterations=2, learning_rate=5e-3, use_vllm=False, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=1, seed=0, bf16=False,
    )
    base.update(kw)
    return BandPOConfig(**base)


def _trainer(tmp_path, **kw):
    tok = build_char_tokenizer()
    ds = Dataset.from_list([{"prompt": p} for p in ("1+2=", "3+4=", "5+6=", "7+8=")])
    return BandPOTrainer(
        model=_tiny_model(tok), reward_funcs=_reward_digits, args=_config(tmp_path, **kw), train_dataset=ds,
        processing_class=tok,
    )


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    tr = _trainer(tmp_path_factory.mktemp("trl"))
    tr.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the parity tests call _compute_loss directly
    return tr


def test_grpo_trainer_trains_with_band_kl_and_logs_band_metrics(tmp_path):
    tr = _trainer(tmp_path, bandpo_method="band_kl", bandpo_delta=0.05)
    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.train()
    assert out.global_step == 3 and math.isfinite(out.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    logged = [h for h in tr.state.log_history if "bandpo/band_width/mean" in h]
    assert len(logged) == 3
    for h in logged:
        # TRL's own clip metrics and ours, side by side; TRL's now counts tokens outside BandPO's band.
        assert "clip_ratio/region_mean" in h and "bandpo/clip_ratio/region_mean" in h
        assert h["bandpo/num_tokens"] > 0
        assert 0 <= h["bandpo/bounds/lower_mean"] <= 1 <= h["bandpo/bounds/upper_mean"] <= 10.0
        assert sum(h[f"bandpo/bucket/{b}/tokens"] for b in ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1")) == pytest.approx(
            h["bandpo/num_tokens"]
        )
    # Outside each call the trainer's own attributes are plain again.
    assert tr.epsilon_low == 0.2 and tr.epsilon_high == 0.2 and tr.args.delta is None


def test_on_policy_run_without_old_logps_logs_ratio_one(tmp_path):
    """num_iterations=1, aligned generation: TRL keeps no π_old, the ratio is exactly 1 and nothing is clipped."""
    tr = _trainer(tmp_path, num_iterations=1, max_steps=1, bandpo_method="band_tv")
    tr.train()
    (h,) = [h for h in tr.state.log_history if "bandpo/ratio/max" in h]
    assert h["bandpo/ratio/min"] == h["bandpo/ratio/max"] == 1.0
    assert h["bandpo/clip_ratio/region_mean"] == 0.0 and h["clip_ratio/region_mean"] == 0.0
    assert h["bandpo/band_width/mean"] > 0


def _fixed_inputs(trainer, B=4, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float32) * 0.98 + 0.01)
    # ratios spread over [e^-1.5, e^2.5]: many tokens outside every band, some beyond the cap / dual clip
    logp_now = (old + torch.empty(B, T).uniform_(-1.5, 2.5, generator=g)).clamp(max=0.0)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    adv = torch.randn(B, generator=g)
    # one token far beyond the cap and the dual clip (r = 30) in a sequence with A < 0
    adv[1] = -adv[1].abs() - 0.5
    old[1, 0], logp_now[1, 0] = torch.log(torch.tensor(0.02)), torch.log(torch.tensor(0.6))
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum().float(),
    }
    return inputs, logp_now


@pytest.mark.parametrize(
    "method,settings,loss_type,agg",
    [
        ("band_kl", {"delta": 0.05}, "grpo", "seq-mean-token-mean"),
        ("band_tv", {"delta": 0.1}, "bnpo", "token-mean"),
        ("clip_higher", {}, "grpo", "seq-mean-token-mean"),
        ("dcpo", {}, "bnpo", "token-mean"),
        ("band_chi2", {"delta": 0.2}, "dapo", "token-mean"),
        ("band_js", {}, "dr_grpo", "token-mean"),  # sum / (B * max_completion_length): a token-mean denominator
    ],
)
def test_loss_gradient_and_clip_metrics_match_bandpo_policy_loss(trainer, monkeypatch, method, settings, loss_type, agg):
    inputs, logp_now = _fixed_inputs(trainer)
    leaf = logp_now.clone().requires_grad_(True)
    entropies = torch.zeros_like(leaf)

    def fake_forward(*args, **kwargs):
        return leaf, entropies, None

    args = trainer.args
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", fake_forward)
    monkeypatch.setattr(args, "bandpo_method", method)
    monkeypatch.setattr(args, "loss_type", loss_type)
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    for key in ("delta", "eps_low", "eps_high"):
        monkeypatch.setattr(args, f"bandpo_{key}", settings.get(key))
    monkeypatch.setattr(trainer, "_bandpo_settings", args.bandpo_settings())
    trainer._metrics["train"].clear()
    trainer.model.train()

    loss = trainer._compute_loss(trainer.model, inputs)
    (g_trl,) = torch.autograd.grad(loss, leaf)

    ref_leaf = logp_now.clone().requires_grad_(True)
    adv = inputs["advantages"].unsqueeze(1).expand_as(ref_leaf)
    denominator = ref_leaf.shape[0] * trainer.max_completion_length if loss_type == "dr_grpo" else None
    ref, metrics = _common.policy_loss(
        ref_leaf, inputs["old_per_token_logps"], adv, inputs["completion_mask"], method=method, dual_clip=10.0,
        agg=agg, denominator=denominator, max_ratio=10.0, **settings,
    )
    (g_ref,) = torch.autograd.grad(ref, ref_leaf)
    # dapo divides by num_items_in_batch (all valid tokens here): token-mean.
    torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_trl, g_ref.to(g_trl.dtype), rtol=1e-6, atol=1e-8)
    # the bounds and the dual clip did bite on these tensors
    assert float(metrics["clip_ratio/region_mean"]) > 0 and float(metrics["dual_clip_fraction"]) > 0
    logged = trainer._metrics["train"]
    for key in ("low_mean", "high_mean", "region_mean"):
        assert logged[f"clip_ratio/{key}"][-1] == pytest.approx(float(metrics[f"clip_ratio/{key}"]), abs=1e-7)
        assert logged[f"bandpo/clip_ratio/{key}"][-1] == pytest.approx(float(metrics[f"clip_ratio/{key}"]), abs=1e-7)
    assert logged["bandpo/dual_clip_fraction"][-1] == pytest.approx(float(metrics["dual_clip_fraction"]), abs=1e-7)


def _clamp_bounds(trainer, inputs, monkeypatch):
    """Run TRL's ``_compute_loss`` on ``inputs`` and return the (lower, upper) tensors its ``torch.clamp`` received."""
    seen = {}
    real_clamp = torch.clamp

    def spy_clamp(x, *a, **kw):
        if len(a) == 2 and isinstance(a[0], torch.Tensor):
            seen["lower"], seen["upper"] = a
        return real_clamp(x, *a, **kw)

    monkeypatch.setattr(torch, "clamp", spy_clamp)
    try:
        trainer._compute_loss(trainer.model, inputs)
    finally:
        monkeypatch.setattr(torch, "clamp", real_clamp)
    return seen["lower"], seen["upper"]


def test_bounds_reach_trl_exactly(trainer, monkeypatch):
    """TRL's clamp sees BandPO's lower/upper tensors themselves (no 1 - (1 - lower) rounding)."""
    inputs, logp_now = _fixed_inputs(trainer, seed=3)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (logp_now, logp_now * 0, None))
    seen_lower, seen_upper = _clamp_bounds(trainer, inputs, monkeypatch)
    lower, upper = _common.bounds(inputs["old_per_token_logps"], trainer.args.bandpo_method, **trainer._bandpo_settings)
    valid = inputs["completion_mask"].bool()  # masked tokens hold garbage; only valid ones matter
    assert torch.equal(seen_lower[valid], lower[valid]) and torch.equal(seen_upper[valid], upper[valid])
    assert (lower[valid] < 1).all() and (upper[valid] > 1).all()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"loss_type": "cispo"}, "no ratio clip"),
        ({"loss_type": "sapo"}, "no ratio clip"),
        ({"loss_type": "vespo"}, "no ratio clip"),
        ({"importance_sampling_level": "sequence"}, "per token"),
        ({"delta": 3.0}, "bandpo_dual_clip"),
        ({"epsilon": 0.3}, "would be ignored"),
        ({"epsilon_high": 0.28}, "would be ignored"),
        ({"bandpo_max_ratio": 20.0}, "bandpo_max_ratio <= bandpo_dual_clip"),
        ({"bandpo_max_ratio": None}, "bandpo_max_ratio <= bandpo_dual_clip"),
        ({"bandpo_method": "band"}, "known methods"),
        ({"bandpo_method": "band_kl", "bandpo_eps_low": 0.1}, "does not use eps_low"),
        ({"bandpo_method": "clip", "bandpo_delta": 0.1}, "does not use delta"),
        ({"bandpo_delta": -1.0}, "delta"),
        ({"bandpo_dual_clip": 1.0}, "dual_clip"),
        ({"bandpo_method": "dppo_kl"}, "cannot express method 'dppo_kl' \\(surrogate 'mask'; the verl plug-in"),
        ({"bandpo_method": "gspo"}, "cannot express method 'gspo' \\(surrogate 'gspo'"),
        ({"bandpo_method": "cispo_band_kl"}, "cannot express method 'cispo_band_kl' \\(surrogate 'cispo'"),
        ({"bandpo_method": "sapo", "bandpo_max_ratio": None, "bandpo_dual_clip": None}, "cannot express method 'sapo'"),
        ({"bandpo_method": "band_kl", "bandpo_divergence": "tv"}, "has divergence 'kl' but divergence='tv' was given: use 'band_tv'"),
        ({"bandpo_delta_schedule": "linear", "bandpo_delta_end": 0.1}, "needs an end value and a number of steps"),
        ({"bandpo_delta_schedule": "step"}, "schedule"),
        ({"bandpo_delta_end": 0.1}, "need delta_schedule 'linear' or 'cosine'"),
        ({"bandpo_method": "clip", "bandpo_delta_schedule": "linear", "bandpo_delta_end": 0.1, "bandpo_delta_steps": 5},
         "no setting 'delta' to schedule"),
        ({"bandpo_delta_schedule": "linear", "bandpo_delta_end": -0.1, "bandpo_delta_steps": 5}, "delta"),
    ],
)
def test_refuses_what_it_cannot_honour(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        _config(tmp_path, **kw)
    assert "\n" not in str(info.value)


def test_plain_grpo_config_is_refused(tmp_path):
    from trl import GRPOConfig

    with pytest.raises(ValueError, match="BandPOConfig"):
        BandPOTrainer(model=None, reward_funcs=_reward_digits, args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))


def test_trl_clip_ratio_keys_count_by_bandpos_definition(trainer, monkeypatch):
    """A token with A > 0 above a capped upper bound (p = 0.002: upper = cap = 10, r = 30) is clipped high. TRL's own
    count tests its ratio after clamping it at delta = 10 and missed it; the plug-in's keys count it."""
    inputs, logp_now = _fixed_inputs(trainer, seed=5)
    adv = inputs["advantages"]
    adv[0] = adv[0].abs() + 0.5
    old = inputs["old_per_token_logps"]
    old[0, 0], logp_now[0, 0] = torch.log(torch.tensor(0.002)), torch.log(torch.tensor(0.06))
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (logp_now, logp_now * 0, None))
    trainer._metrics["train"].clear()
    trainer.model.train()
    trainer._compute_loss(trainer.model, inputs)
    logged = trainer._metrics["train"]

    mask = inputs["completion_mask"].bool()
    adv_bt = adv.unsqueeze(1).expand_as(old)
    lower, upper = _common.bounds(old, trainer.args.bandpo_method, **trainer._bandpo_settings)
    assert upper[0, 0] == 10.0
    ratio = torch.exp(logp_now - old)
    low = (adv_bt < 0) & (ratio < lower) & mask
    high = (adv_bt > 0) & (ratio > upper) & mask
    n = mask.sum()
    assert logged["clip_ratio/high_mean"][-1] == pytest.approx(float(high.sum() / n), abs=1e-7)
    assert logged["clip_ratio/low_mean"][-1] == pytest.approx(float(low.sum() / n), abs=1e-7)
    assert logged["clip_ratio/region_mean"][-1] == pytest.approx(float((low | high).sum() / n), abs=1e-7)
    per_seq_high = (high.sum(-1) / mask.sum(-1)).max()
    per_seq_low = (low.sum(-1) / mask.sum(-1)).min()
    assert logged["clip_ratio/high_max"][-1] == pytest.approx(float(per_seq_high), abs=1e-7)
    assert logged["clip_ratio/low_min"][-1] == pytest.approx(float(per_seq_low), abs=1e-7)
    # TRL's own test, (min(r, 10) > upper) & (A > 0), misses the token at r = 30: the counts differ here.
    trl_high = (adv_bt > 0) & (ratio.clamp(max=10.0) > upper) & mask
    assert int(trl_high.sum()) == int(high.sum()) - 1


def test_kl_term_is_the_papers_plain_k3_by_default(trainer, monkeypatch, tmp_path):
    """TRL 1.16 multiplies its KL by the ratio unless use_bias_correction_kl=False; the plug-in defaults to False,
    so TRL's loss is bandpo's plus beta times the plain k3 estimator (seq-mean-token-mean, as loss_type grpo)."""
    from pathlib import Path

    from bandpo.losses import aggregate

    assert _config(tmp_path).use_bias_correction_kl is False and trainer.args.use_bias_correction_kl is False
    assert _config(tmp_path, use_bias_correction_kl=True).use_bias_correction_kl is True
    doc = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    assert "`use_bias_correction_kl=False`" in doc

    inputs, logp_now = _fixed_inputs(trainer, seed=11)
    ref_logp = (logp_now + torch.empty_like(logp_now).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))).clamp(max=0)
    inputs["ref_per_token_logps"] = ref_logp
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (logp_now, logp_now * 0, None))
    monkeypatch.setattr(trainer, "beta", 0.1)
    loss = trainer._compute_loss(trainer.model, inputs)
    mask = inputs["completion_mask"]
    adv = inputs["advantages"].unsqueeze(1).expand_as(logp_now)
    ref, _ = _common.policy_loss(logp_now, inputs["old_per_token_logps"], adv, mask, method="band_kl", dual_clip=10.0,
                                 max_ratio=10.0)
    k3 = torch.exp(ref_logp - logp_now) - (ref_logp - logp_now) - 1
    torch.testing.assert_close(loss, ref + 0.1 * aggregate(k3, mask, "seq-mean-token-mean"), rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", True)  # TRL's default: k3 times the ratio
    ratio = torch.exp(logp_now - inputs["old_per_token_logps"])
    weighted = ref + 0.1 * aggregate(k3 * ratio, mask, "seq-mean-token-mean")
    assert float((weighted - loss).abs()) > 1e-4
    torch.testing.assert_close(trainer._compute_loss(trainer.model, inputs), weighted, rtol=1e-6, atol=1e-7)


def test_delta_schedule_follows_trls_optimiser_step(trainer, monkeypatch, tmp_path):
    """A linear δ schedule reaches TRL's clamp at δ(state.global_step)."""
    cfg = _config(tmp_path, bandpo_delta=0.05, bandpo_delta_schedule="linear", bandpo_delta_end=0.25, bandpo_delta_steps=8)
    inputs, logp_now = _fixed_inputs(trainer, seed=7)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (logp_now, logp_now * 0, None))
    monkeypatch.setattr(trainer, "_bandpo_settings", cfg.bandpo_settings())
    valid = inputs["completion_mask"].bool()
    old = inputs["old_per_token_logps"]
    for step, delta in ((0, 0.05), (2, 0.1), (8, 0.25), (20, 0.25)):
        monkeypatch.setattr(trainer.state, "global_step", step)
        seen_lower, seen_upper = _clamp_bounds(trainer, inputs, monkeypatch)
        lower, upper = _common.bounds(old, "band_kl", delta=delta)
        torch.testing.assert_close(seen_lower[valid], lower[valid], rtol=1e-6, atol=0)
        torch.testing.assert_close(seen_upper[valid], upper[valid], rtol=1e-6, atol=0)


def test_a_new_row_of_the_method_table_flows_through_by_id(trainer, monkeypatch):
    """The plug-in names no method list of its own: a clip method registered later trains by its id."""
    from bandpo.losses import Clip, Method, register_method, unregister_method

    register_method(Method("plugin_test_clip", Clip(0.1, 0.3), 10.0, "test", "a row added after import"))
    try:
        test_loss_gradient_and_clip_metrics_match_bandpo_policy_loss(
            trainer, monkeypatch, "plugin_test_clip", {}, "grpo", "seq-mean-token-mean"
        )
    finally:
        unregister_method("plugin_test_clip")


def test_a_rows_own_settings_go_through_bandpo_extra_settings(tmp_path, width_method):
    cfg = _config(tmp_path, bandpo_method=width_method, bandpo_extra_settings='{"width": 0.1}')
    assert cfg.bandpo_settings() == {"width": 0.1, "max_ratio": 10.0}
    assert _config(tmp_path, bandpo_method=width_method, bandpo_extra_settings={"width": 0.2}).bandpo_settings()["width"] == 0.2
    for extra, match in (({"delta": 0.1}, "bandpo_extra_settings repeats delta: set bandpo_delta instead"),
                         ({"widht": 0.1}, "does not use widht"), ("{", "must be a JSON object")):
        with pytest.raises(ValueError, match=match):
            _config(tmp_path, bandpo_method=width_method, bandpo_extra_settings=extra)
