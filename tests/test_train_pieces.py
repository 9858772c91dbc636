"""Unit tests of the RL pieces on the tiny model: tokenizer, tasks and rewards, sampling, log-probs and entropy,
advantages, the k3 KL, the rollout, the warm-start.

Tolerances: comparisons of two float32 computations of the same quantity by different kernels (full forward vs
KV cache, padded vs unpadded) use atol 1e-5 on log-probabilities of O(1) (float32 rounding through a 2-layer
model is ~1e-6); identities computed in float64 use 1e-12. Expected values written by hand are derived in the
comments next to them.

Run: .venv/bin/python -m pytest -q tests/test_train_pieces.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bandpo.training.config import TaskConfig, load_config
from bandpo.training.rollout import (
    completion_logp,
    group_advantages,
    k3_kl,
    masked_mean,
    rollout,
    sample_hf_generate,
    sample_loop,
    selective_logp,
    sft_loss,
    token_entropy,
    top_p_filter,
    warm_start,
)
from bandpo.training.tasks import (
    answer_line,
    build_task,
    exact_match,
    extract_answer,
    normalize_answer,
    weighted_rewards,
)
from bandpo.training.tokenizer import build_char_tokenizer, load_char_tokenizer
from bandpo.training.launch import build_policy

TINY = {"model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.intermediate_size": 64}


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    cfg = load_config(overrides=TINY)
    m = build_policy(cfg, tok)
    m.eval()
    return m


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_reload(tok, tmp_path):
    text = "Answer: 12+34=46\n\n(x) {y}"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, len(tok)) == (0, 1, 2, 3, 100)
    tok.save_pretrained(tmp_path)
    again = load_char_tokenizer(tmp_path)
    assert again(text).input_ids == ids and again.eos_token_id == 2 and again.padding_side == "left"
    batch = again(["1+2=", "10+20="], padding=True)
    assert batch.input_ids[0][:2] == [0, 0] and batch.attention_mask[0] == [0, 0, 1, 1, 1, 1]


# ----------------------------------------------------------------------------------------------------------
# Tasks and rewards
# ----------------------------------------------------------------------------------------------------------


def test_addition_task_is_deterministic_and_correct():
    task = build_task(TaskConfig(name="addition", min_digits=1, max_digits=3), seed=5)
    rows = task.rows(7, 50)
    assert rows == task.rows(7, 50) and rows != task.rows(8, 50)
    assert rows != build_task(TaskConfig(name="addition", min_digits=1, max_digits=3), seed=6).rows(7, 50)
    for r in rows:
        a, b = r["prompt"].rstrip("=").split("+")
        assert 1 <= len(a) <= 3 and 1 <= len(b) <= 3 and int(a) + int(b) == int(r["answer"])
    assert {len(r["prompt"].split("+")[0]) for r in task.rows(0, 200)} == {1, 2, 3}
    sft = task.sft_rows(0, 10)
    assert all(str(eval(p.rstrip("="))) == t for p, t in sft)  # noqa: S307 - digits and '+' only
    assert [p for p, _ in sft] != [r["prompt"] for r in task.rows(0, 10)]  # a separate stream


def test_reward_functions():
    assert exact_match(["1+2="] * 3, ["3", " 3 ", "33"], answer=["3"] * 3) == [1.0, 1.0, 0.0]
    assert extract_answer("work\nAnswer: 7\nmore\nAnswer: $\\frac{1}{2}$") == "$\\frac{1}{2}$"
    assert extract_answer("no answer here") is None
    assert extract_answer("Answer: 5" + "x" * 400) is None  # only the last 300 characters count
    assert normalize_answer("\\boxed{1,000}.") == "1000" and normalize_answer("\\dfrac{3}{4}") == "\\frac{3}{4}"
    comps = ["so Answer: 12", "Answer: \\boxed{12}", "Answer: 13", "12"]
    assert answer_line([""] * 4, comps, answer=["12"] * 4) == [1.0, 1.0, -1.0, -1.0]
    total, parts = weighted_rewards(["exact_match", "answer_format"], [2.0, 0.5], ["p"] * 2,
                                    ["Answer: 1", "1"], {"answer": ["1", "1"]})
    assert total == [0.5, 2.0] and parts["exact_match"] == [0.0, 1.0]


def test_math_file_task_reads_nested_columns_and_shuffles_per_epoch(tmp_path):
    path = tmp_path / "d.jsonl"
    with path.open("w") as f:
        for i in range(5):
            f.write(json.dumps({"problem": f"p{i}", "reward_model": {"ground_truth": str(i)}}) + "\n")
    cfg = TaskConfig(name="math_file", path=str(path), prompt_column="problem",
                     answer_column="reward_model.ground_truth", template="Q: {prompt}")
    task = build_task(cfg, seed=0)
    epoch = task.rows(0, 5)
    assert sorted(r["prompt"] for r in epoch) == [f"Q: p{i}" for i in range(5)]
    assert all(r["answer"] == r["prompt"][-1] for r in epoch)
    assert task.rows(0, 5) == epoch  # deterministic
    assert sorted(r["answer"] for r in task.rows(1, 5)) == ["0", "1", "2", "3", "4"]  # next epoch: all rows again
    with pytest.raises(ValueError, match="column 'nope' not found"):
        build_task(TaskConfig(name="math_file", path=str(path), prompt_column="nope"), seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        build_task(TaskConfig(name="math_file", path=str(tmp_path / "missing.jsonl")), seed=0)


# ----------------------------------------------------------------------------------------------------------
# Tensor helpers
# ----------------------------------------------------------------------------------------------------------


def test_selective_logp_and_entropy_match_torch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 11, generator=g, dtype=torch.float64) * 3
    ids = torch.randint(0, 11, (3, 4), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    torch.testing.assert_close(selective_logp(logits, ids), ref.float(), rtol=0, atol=1e-6)
    ent = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(token_entropy(logits), ent.float(), rtol=0, atol=1e-5)
    assert float(token_entropy(torch.zeros(1, 11))[0]) == pytest.approx(math.log(11), abs=1e-6)


def test_top_p_filter_keeps_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two (0.5 < 0.75 <= 0.8); 0.8 keeps two;
    # 0.81 keeps three; the most likely token is always kept.
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.75) == [False, True, False, True]
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [False, True, True, True]
    assert kept(0.01) == [False, True, False, False]
    assert kept(1.0) == [True] * 4


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3) -> ±0.5·sqrt(3); group 2 all equal -> 0.
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(group_advantages(r, 4, scale_by_std=False),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="divisible by group_size"):
        group_advantages(r, 3)


def test_k3_kl_is_an_unbiased_nonnegative_kl_estimator():
    # Σ_x π(x)·k3(x) = Σ π (π_ref/π − log(π_ref/π) − 1) = 1 − 0 + KL(π‖π_ref) − 1 = KL(π‖π_ref) exactly.
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    ref = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    expected = float((logp.exp() * (logp - ref)).sum())
    assert float((logp.exp() * k3_kl(logp, ref)).sum()) == pytest.approx(expected, rel=1e-12)
    assert bool((k3_kl(logp, ref) >= 0).all()) and float(k3_kl(logp, logp).abs().max()) == 0.0
    assert float(k3_kl(torch.tensor([0.0]), torch.tensor([30.0]))) == 10.0  # clamped


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(masked_mean(x, m)) == 2.0
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([1.5, 3.0]))


# ----------------------------------------------------------------------------------------------------------
# Sampling and log-probs on the tiny model
# ----------------------------------------------------------------------------------------------------------


def _prompts(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    return enc.input_ids, enc.attention_mask


def test_completion_logp_does_not_depend_on_left_padding(model, tok):
    """Position ids follow the mask: a padded prompt scores a completion like the unpadded one."""
    comp = torch.tensor([tok("123", add_special_tokens=False).input_ids + [tok.eos_token_id]])
    cmask = torch.ones_like(comp)
    ids1, m1 = _prompts(tok, ["4+5="])
    ids2, m2 = _prompts(tok, ["4+5=", "100+200="])  # the first row gets 4 pad tokens
    with torch.no_grad():
        lp1, ent1 = completion_logp(model, ids1, m1, comp, cmask, with_entropy=True)
        lp2, ent2 = completion_logp(model, ids2, m2, comp.repeat(2, 1), cmask.repeat(2, 1), with_entropy=True)
    torch.testing.assert_close(lp2[:1], lp1, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent2[:1], ent1, rtol=0, atol=1e-5)
    assert bool((ent1 >= 0).all()) and bool((ent1 <= math.log(len(tok)) + 1e-5).all())
    # temperature scales the logits: τ = 2 gives log softmax(z/2)
    with torch.no_grad():
        lp_t, _ = completion_logp(model, ids1, m1, comp, cmask, temperature=2.0)
        z = model(input_ids=torch.cat([ids1, comp], 1)).logits[:, ids1.shape[1] - 1:-1].float() / 2
    torch.testing.assert_close(lp_t, selective_logp(z, comp), rtol=0, atol=1e-5)


def test_sample_loop_masks_and_determinism(model, tok):
    ids, mask = _prompts(tok, ["1+2=", "33+44=", "5+5="] * 4)
    kw = dict(max_new_tokens=6, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    a_ids, a_mask = sample_loop(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b_ids, b_mask = sample_loop(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    c_ids, _ = sample_loop(model, ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a_ids, b_ids) and torch.equal(a_mask, b_mask) and not torch.equal(a_ids, c_ids)
    assert a_ids.shape[0] == 12 and a_ids.shape[1] <= 6
    for row, m in zip(a_ids.tolist(), a_mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # 1s then 0s
        if tok.eos_token_id in row:
            first = row.index(tok.eos_token_id)
            assert n == first + 1 and all(t == tok.pad_token_id for t in row[first + 1:])
        else:
            assert n == len(row)


def test_sample_loop_draws_from_the_model_distribution(model, tok):
    """The first sampled token's empirical distribution matches softmax(z/τ) of a full forward pass."""
    ids, mask = _prompts(tok, ["7+8="])
    n = 4000
    g = torch.Generator().manual_seed(0)
    first, _ = sample_loop(model, ids.repeat(n, 1), mask.repeat(n, 1), max_new_tokens=1, eos_id=tok.eos_token_id,
                           pad_id=tok.pad_token_id, temperature=1.5, generator=g)
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, -1].float() / 1.5, -1)
    freq = torch.bincount(first[:, 0], minlength=len(tok)).float() / n
    # Multinomial frequencies: each within 5 standard errors sqrt(p(1-p)/n) (+1e-3 for p ~ 0).
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 1e-3
    assert bool(((freq - p).abs() <= bound).all()), float((freq - p).abs().max())


def test_hf_generate_sampler_contract(model, tok):
    ids, mask = _prompts(tok, ["1+2=", "33+44="])
    kw = dict(max_new_tokens=5, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    a, am = sample_hf_generate(model, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    b, bm = sample_hf_generate(model, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b) and torch.equal(am, bm) and a.shape[1] <= 5 and a.shape == am.shape
    for row, m in zip(a.tolist(), am.tolist()):
        if tok.eos_token_id in row:
            assert sum(m) == row.index(tok.eos_token_id) + 1


def test_rollout_rewards_advantages_and_old_logp(model, tok):
    task = build_task(TaskConfig(name="addition", min_digits=1, max_digits=1), seed=0)
    rows = task.rows(0, 3)
    G = 4
    ro = rollout(model, tok, rows, group_size=G, max_new_tokens=4, reward_funcs=["exact_match"],
                 correct_fn=task.correct, generator=torch.Generator().manual_seed(0), ref_model=model)
    N = 3 * G
    assert ro.old_logp.shape == ro.mask.shape == ro.entropy.shape == (N, ro.completion_ids.shape[1])
    assert len(ro.completions) == N
    answers = [r["answer"] for r in rows for _ in range(G)]
    assert ro.rewards.tolist() == exact_match([], ro.completions, answer=answers)
    assert ro.correct.tolist() == ro.rewards.tolist()
    torch.testing.assert_close(ro.adv, group_advantages(ro.rewards, G))
    # Old log-probs are a forward pass's, identical to recomputing them; the reference is the same model here.
    with torch.no_grad():
        lp, _ = completion_logp(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.mask)
    assert torch.equal(lp, ro.old_logp) and torch.equal(ro.ref_logp, ro.old_logp)
    assert bool((ro.old_logp[ro.mask.bool()] <= 0).all())
    # Prompts are repeated G times, groups contiguous.
    texts = tok.batch_decode(ro.prompt_ids, skip_special_tokens=True)
    assert texts == [r["prompt"] for r in rows for _ in range(G)]


def test_warm_start_learns_and_is_deterministic(tok):
    task = build_task(TaskConfig(name="addition", min_digits=1, max_digits=1), seed=0)
    cfg = load_config(overrides=TINY)
    a, b = build_policy(cfg, tok), build_policy(cfg, tok)
    before, _, _ = sft_loss(a, tok, task.sft_rows(0, 64))
    stats = warm_start(a, tok, task.sft_rows, steps=30, lr=3e-3, batch_size=32)
    warm_start(b, tok, task.sft_rows, steps=30, lr=3e-3, batch_size=32)
    after, _, _ = sft_loss(a, tok, task.sft_rows(0, 64))
    # From uniform-ish (log 100 = 4.6 nats per token) the loss must at least halve in 30 steps.
    assert after.item() < 0.5 * before.item() and stats["loss"] < 0.5 * before.item()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
