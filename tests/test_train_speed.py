"""The trainer's speed-ups leave its numbers unchanged: each fast path against the plain computation it replaces,
compared bit for bit (tokens, log-probs, weights), on the tiny models of the presets.

Run: .venv/bin/python -m pytest -q tests/test_train_speed.py
"""

from __future__ import annotations

import torch

from bandpo.training.launch import build_policy
from bandpo.training.config import load_config, preset_path
from bandpo.training.rollout import sample_loop
from bandpo.training.tokenizer import build_char_tokenizer


def _model(preset: str, **overrides):
    tok = build_char_tokenizer()
    cfg = load_config(preset_path(preset), overrides)
    return build_policy(cfg, tok).eval(), tok


def _prompts(tok, texts, group: int):
    enc = tok([t for t in texts for _ in range(group)], return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _sample(model, tok, ids, mask, seed: int, share: bool, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample_loop(model, ids, mask, max_new_tokens=kw.pop("max_new_tokens", 5), eos_id=tok.eos_token_id,
                       pad_id=tok.pad_token_id, generator=g, share_prompts=share, **kw)


def test_shared_prompt_sampling_is_bitwise_the_per_row_sampling():
    """Running each distinct prompt once and copying its KV cache to the repeats draws exactly the same tokens as
    the forward over every row: equal prompts (groups of 8, 2 and 1), left padding, temperature and top-p."""
    cases = 0
    for arch in ("qwen2", "llama"):  # q/k/v with and without bias
        model, tok = _model("testbed", **{"model.arch": arch})
        for texts, group in ((["472=", "015=", "999="], 8), (["1+2=", "12+345=", "7="], 2), (["31=", "4="], 1),
                             (["5="], 6)):
            ids, mask = _prompts(tok, texts, group)
            for seed, kw in ((0, {}), (1, {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2})):
                a = _sample(model, tok, ids, mask, seed, True, **dict(kw))
                b = _sample(model, tok, ids, mask, seed, False, **dict(kw))
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (arch, texts, group, seed)
                cases += 1
    assert cases == 16


def test_shared_prompt_sampling_runs_each_distinct_prompt_once():
    """The prompt forward sees the distinct rows only (3 of 24 here); later tokens run on every row."""
    model, tok = _model("testbed")
    ids, mask = _prompts(tok, ["472=", "015=", "999="], 8)
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        _sample(model, tok, ids, mask, 0, True, max_new_tokens=3)
    finally:
        hook.remove()
    assert rows[0] == (3, 4)
    assert all(r == (24, 1) for r in rows[1:]) and len(rows) >= 2


def test_trainer_adamw_is_the_multi_tensor_form_with_the_per_parameter_weights():
    """The module's AdamW runs the multi-tensor (foreach) update, and its weights after steps with weight decay,
    gradient clipping and a warm-up schedule equal the per-parameter loop's bit for bit."""
    from bandpo.training.module import BandPOModule
    from bandpo.training.tasks import build_task

    model, tok = _model("testbed", **{"optim.warmup_steps": 3})
    cfg = load_config(preset_path("testbed"), {"optim.warmup_steps": 3})
    ref, twin = build_policy(cfg, tok), build_policy(cfg, tok)
    twin.load_state_dict(model.state_dict())
    module = BandPOModule(model, tok, cfg, build_task(cfg.task, 0), ref_policy=ref)
    opts = module.configure_optimizers()
    fast, sched = opts["optimizer"], opts["lr_scheduler"]["scheduler"]
    assert fast.defaults["foreach"] is True
    o = cfg.optim
    plain = torch.optim.AdamW(twin.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                              foreach=False)
    plain_sched = torch.optim.lr_scheduler.LambdaLR(plain, sched.lr_lambdas[0])
    ids = torch.randint(4, 90, (16, 8), generator=torch.Generator().manual_seed(0))
    for step in range(6):
        for m, opt, s in ((model, fast, sched), (twin, plain, plain_sched)):
            m.train()
            logits = m(input_ids=ids).logits
            (logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).mean() * (1 - step % 3)).backward()
            torch.nn.utils.clip_grad_norm_(list(m.parameters()), o.grad_clip)
            opt.step()
            s.step()
            opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
