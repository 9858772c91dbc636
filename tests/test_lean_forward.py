"""bandpo.training.lean_forward computes what transformers' forward computes, bit for bit: the logits and every
gradient autograd takes through them, on the tiny models of the presets (Qwen2 with q/k/v biases, Llama without),
under every padding the trainer produces; it declines every model it does not reproduce; and a training run gives the
same numbers with it on and off.

Run: .venv/bin/python -m pytest -q tests/test_lean_forward.py
"""

from __future__ import annotations

import csv

import pytest
import torch

from bandpo.training import launch
from bandpo.training.config import load_config, preset_path
from bandpo.training.lean_forward import CHECKED_TRANSFORMERS, lean_logits, lean_unsupported
from bandpo.training.rollout import completion_logp, position_ids
from bandpo.training.tokenizer import build_char_tokenizer

transformers = pytest.importorskip("transformers")
CHECKED = ".".join(transformers.__version__.split(".")[:2]) in CHECKED_TRANSFORMERS
needs_checked = pytest.mark.skipif(not CHECKED, reason="the installed transformers is not a checked series")


def _model(dtype: str = "float32", **overrides):
    tok = build_char_tokenizer()
    cfg = load_config(preset_path("testbed"), {"model.dtype": dtype, **overrides})
    return launch.build_policy(cfg, tok), tok


def _batch(tok, B: int, L: int, padding: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    if padding in ("left", "both"):
        mask[: B // 3, :2] = 0  # left-padded prompts (the first query rows see no key)
    if padding in ("right", "both"):
        mask[B // 2:, -1] = 0  # completions that ended early
    return ids, mask


def _grads(model, logits_fn):
    model.zero_grad(set_to_none=True)
    logits = logits_fn()
    weights = torch.linspace(-1, 1, logits.shape[1])
    (logits.float().logsumexp(-1) * weights).sum().backward()
    return logits.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_checked
@pytest.mark.parametrize("arch,dtype,heads", [("qwen2", "float32", None), ("llama", "float32", None),
                                              ("qwen2", "bfloat16", None), ("qwen2", "float32", 2)])
def test_logits_and_gradients_are_bit_identical_to_transformers(arch, dtype, heads):
    """Every padding pattern, with and without ``logits_to_keep``, and a one-token input; grouped-query attention
    (2 key/value heads for 4 query heads) where ``heads`` is set."""
    model, tok = _model(dtype, **{"model.arch": arch})
    if heads is not None:  # the trainer's tiny configs have as many key/value heads as query heads: rebuild one
        cfg = model.config
        cfg.num_key_value_heads = heads
        torch.manual_seed(0)
        model = type(model)(cfg).to(getattr(torch, dtype))
    assert lean_unsupported(model) is None
    cases = 0
    for padding in ("none", "left", "right", "both"):
        for B, L, keep in ((16, 9, 5), (8, 12, 0), (3, 1, 0)):
            if L == 1 and padding != "none":
                continue
            ids, mask = _batch(tok, B, L, padding, seed=cases)
            pos = position_ids(mask)
            kw = {"logits_to_keep": keep} if keep else {}
            ref = _grads(model, lambda: model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                              **kw).logits)
            lean = _grads(model, lambda: lean_logits(model, ids, mask, pos, keep))
            assert ref[0].dtype == lean[0].dtype and torch.equal(ref[0], lean[0]), (padding, B, L, keep)
            assert ref[1].keys() == lean[1].keys() and len(ref[1]) >= 10
            for name in ref[1]:
                assert torch.equal(ref[1][name], lean[1][name]), (padding, B, L, keep, name)
            cases += 1
    assert cases == 9


@needs_checked
def test_bit_identical_under_cpu_autocast():
    """Lightning's ``bf16-mixed`` on the CPU runs the forward under autocast; the rotary angles stay float32."""
    model, tok = _model()
    for padding in ("none", "both"):
        ids, mask = _batch(tok, 8, 9, padding)
        pos = position_ids(mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = _grads(model, lambda: model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                              use_cache=False).logits)
            lean = _grads(model, lambda: lean_logits(model, ids, mask, pos))
        assert ref[0].dtype == torch.bfloat16 and torch.equal(ref[0], lean[0]), padding
        assert all(torch.equal(ref[1][n], lean[1][n]) for n in ref[1]), padding


@needs_checked
def test_completion_logp_is_the_same_through_either_forward():
    model, tok = _model()
    ids, mask = _batch(tok, 16, 9, "both")
    p_ids, p_mask, c_ids, c_mask = ids[:, :5], mask[:, :5], ids[:, 5:], mask[:, 5:]
    a = completion_logp(model, p_ids, p_mask, c_ids, c_mask, with_entropy=True, lean=True)
    b = completion_logp(model, p_ids, p_mask, c_ids, c_mask, with_entropy=True, lean=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_models_it_does_not_reproduce_are_declined():
    """Each condition of lean_unsupported turns the lean forward off (the caller then calls the model)."""
    def reason(**overrides):
        model, _ = _model(**overrides)
        return model, lean_unsupported(model)

    model, why = reason()
    assert (why is None) == CHECKED
    if not CHECKED:
        assert "transformers" in why
        return
    assert "'eager'" in reason(**{"model.attn_implementation": "eager"})[1]
    assert "gradient checkpointing" in reason(**{"model.gradient_checkpointing": True})[1]
    handle = model.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: None)
    assert "hooks" in lean_unsupported(model)
    handle.remove()
    assert lean_unsupported(model) is None
    global_handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert "hooks" in lean_unsupported(model)
    finally:
        global_handle.remove()
    model.model.layers[1].mlp.up_proj = torch.nn.Sequential(model.model.layers[1].mlp.up_proj)  # e.g. an adapter
    assert "replaced module" in lean_unsupported(model)
    assert "is not transformers'" in lean_unsupported(torch.nn.Linear(2, 2))
    model, _ = _model()
    model.config.hidden_act = "gelu"
    assert "'gelu'" in lean_unsupported(model)


@needs_checked
def test_a_training_run_is_the_same_with_and_without_it(tmp_path):
    """The testbed task's warm-start, RL steps and held-out evaluations: every logged value (timings aside) and
    the final weights."""
    tiny = {"trainer.max_steps": 3, "warmstart.steps": 6, "task.heldout_size": 8, "eval.n": 2, "eval.k": [1, 2],
            "trainer.checkpoint_every": 3, "trainer.numerics": "native"}
    rows, weights, evals = {}, {}, {}
    for lean in (True, False):
        cfg = load_config(preset_path("testbed"), {**tiny, "model.lean_forward": lean})
        out = tmp_path / f"lean{lean}"
        launch.run(cfg, out)
        with open(out / "metrics.csv", newline="") as f:
            rows[lean] = [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}
                          for r in csv.DictReader(f)]
        with open(out / "eval.csv", newline="") as f:
            evals[lean] = [{k: v for k, v in r.items() if k != "eval/time_s"} for r in csv.DictReader(f)]
        weights[lean] = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu",
                                   weights_only=False)["state_dict"]
    assert len(rows[True]) == 3 and rows[True] == rows[False]
    assert len(evals[True]) == 2 and evals[True] == evals[False]  # before and after training
    assert weights[True].keys() == weights[False].keys()
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])
