"""Held-out evaluation (bandpo.training.evaluation): the pass@k / maj@k estimators, eval-set entries, the tiny
task's held-out split, determinism, batching across problems, the per-sample files, and the split over two gloo
processes (plain and sharded with torch's fully_shard).

Run: .venv/bin/python -m pytest -q tests/test_train_eval.py
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training import rollout as rollout_module
from bandpo.training.evaluation import (
    SAMPLE_COLUMNS,
    EvalSet,
    EvalSetSpec,
    SampleLog,
    build_eval_sets,
    evaluate,
    maj_at_k,
    metric_names,
    metrics_from_samples,
    parse_eval_set,
    pass_at_k,
    problem_scores,
    problem_seed,
    read_samples,
    sample_completions,
    sample_problems,
    write_samples,
)
from bandpo.training.tasks import build_task
from bandpo.training.verifiers import VERIFIERS, Verdict

REPO = Path(__file__).resolve().parents[1]

def _even_first_char(completion, answer):
    """"Correct" when the first character has an even code: random completions of an untrained model are correct
    about half of the time, so every metric is non-trivial. The key (the vote) is the first character."""
    head = completion.strip()[:1]
    return Verdict(bool(head) and ord(head) % 2 == 0, head or None)


if "test_even_first_char" not in VERIFIERS:
    VERIFIERS.register("test_even_first_char", _even_first_char)


# ----------------------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------------------


def _pass_by_enumeration(n, c, k):
    """The fraction of the k-subsets of n samples (c correct) that contain a correct one, exactly."""
    flags = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(flags[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = _pass_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == float(exact), (n, c, k)  # correctly rounded
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-15)


def test_pass_at_k_special_values_and_large_n():
    assert pass_at_k(32, 0, 32) == 0.0 and pass_at_k(32, 1, 32) == 1.0 and pass_at_k(32, 32, 1) == 1.0
    assert pass_at_k(32, 5, 1) == 5 / 32 and pass_at_k(30, 7, 1) == 7 / 30  # pass@1 is the mean
    # n = 2000: C(2000, 1000) overflows a float; the product form stays exact to rounding.
    exact = 1 - Fraction(math.comb(1990, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == float(exact) and math.comb(2000, 1000) > 1e308
    values = [pass_at_k(32, c, 8) for c in range(33)]
    assert values == sorted(values)  # more correct samples never lower pass@k
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*bad)


def test_maj_at_k_by_hand():
    keys = ["7", "7", "3", None, "3", "3", None, None]
    ok = [k == "3" for k in keys]
    assert maj_at_k(keys, ok, 8) == 1.0        # "3" x3 beats "7" x2
    assert maj_at_k(keys, ok, 4) == 0.5        # block 1 "7" (wrong), block 2 "3" (right)
    assert maj_at_k(keys, ok, 2) == 0.5        # [7,7] wrong, [3,None] right, [3,3] right, [None,None] no answer
    assert maj_at_k(["a", "b", "b", "a"], [True, False, False, True], 4) == 1.0  # a tie goes to the first seen
    assert maj_at_k(["b", "a", "a", "b"], [False, True, True, False], 4) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    assert maj_at_k(["x", "y", "z"], [True, False, False], 1) == pytest.approx(1 / 3)  # maj@1 = mean
    with pytest.raises(ValueError, match="maj@k needs"):
        maj_at_k(["x"], [True], 2)


def test_problem_scores_and_metric_names():
    s = problem_scores([True, False, False, False], ["1", "2", "2", None], [1, 2])
    assert list(s) == ["mean@4", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"]
    assert s["mean@4"] == s["pass@1"] == s["maj@1"] == 0.25
    assert s["pass@2"] == pytest.approx(0.5) and s["pass@4"] == 1.0
    assert s["maj@2"] == 0.5 and s["maj@4"] == 0.0  # "2" wins the 4-block
    assert metric_names(4, [2, 1]) == [*s, "length"]


# ----------------------------------------------------------------------------------------------------------
# Eval-set entries and the held-out split
# ----------------------------------------------------------------------------------------------------------


def test_eval_set_entries():
    assert parse_eval_set("heldout") == EvalSetSpec("heldout")
    assert parse_eval_set("aime24=data/aime_2024.jsonl") == EvalSetSpec("aime24", "data/aime_2024.jsonl")
    assert parse_eval_set("data/amc_2023.parquet").name == "amc_2023"
    spec = parse_eval_set({"name": "amc", "path": "x.jsonl", "prompt_column": "problem", "limit": 5,
                           "verifier": "math_verify"})
    assert (spec.prompt_column, spec.limit, spec.verifier) == ("problem", 5, "math_verify")
    for bad, msg in [({"path": "x"}, "needs a 'name'"), ({"name": "a", "colour": 1}, r"unknown key\(s\) \['colour'\]"),
                     ("bad name=x.jsonl", "must be letters"), ({"name": "a", "verifier": "nope"}, "verifier"),
                     ({"name": "a", "limit": 0}, "limit"), (3, "must be 'heldout'")]:
        with pytest.raises(ValueError, match=msg):
            parse_eval_set(bad)


def _tiny_cfg(**kw):
    base = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64}
    base.update(kw)
    return load_config(CONFIG_DIR / "tiny-cpu.yaml", base)


def test_addition_heldout_split_is_fixed_and_never_trained_on():
    cfg = _tiny_cfg()
    cfg.task.heldout_size = 200
    a, b = build_task(cfg.task, 0), build_task(cfg.task, 1)
    held = a.heldout_rows()
    assert held == b.heldout_rows() and len(held) == 200  # the same for every run seed
    prompts = {r["prompt"] for r in held}
    assert len(prompts) == 200
    assert all(r["answer"] == str(eval(r["prompt"][:-1])) for r in held)
    for step in range(40):
        assert not prompts & {r["prompt"] for r in a.rows(step, 64)}
        assert not prompts & {p for p, _ in a.sft_rows(step, 64)}
    # Without a held-out split the training stream is the one of earlier versions (no redraws).
    cfg.task.heldout_size = 0
    plain = build_task(cfg.task, 0)
    assert plain.heldout_rows is None
    from bandpo.training.tasks import _operand, _rng

    rng = _rng(0, 0, 5)
    assert [r["prompt"] for r in plain.rows(5, 8)] == [f"{_operand(rng, 1, 2)}+{_operand(rng, 1, 2)}="
                                                       for _ in range(8)]
    cfg.task.heldout_size = 6000
    with pytest.raises(ValueError, match="at most half"):
        build_task(cfg.task, 0)


def test_build_eval_sets_from_files_and_heldout(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}+{i}=", "sol": {"gt": str(2 * i)}, "year": 2023}) + "\n"
                            for i in range(5)))
    cfg = _tiny_cfg()
    cfg.task.heldout_size = 10
    task = build_task(cfg.task, 0)
    sets = build_eval_sets(["heldout", {"name": "amc", "path": str(path), "prompt_column": "problem",
                                        "answer_column": "sol.gt", "source_column": "year", "limit": 3}], task, cfg.task)
    assert [s.name for s in sets] == ["heldout", "amc"] and [s.verifier for s in sets] == ["exact", "exact"]
    assert len(sets[0].problems) == 10
    assert sets[1].problems[2] == {"prompt": "2+2=", "answer": "4", "id": "2", "source": "2023"}
    with pytest.raises(ValueError, match=r"eval set 'gone': file '.*missing.jsonl' does not exist"):
        build_eval_sets([f"gone={tmp_path / 'missing.jsonl'}"], task, cfg.task)
    with pytest.raises(ValueError, match="used twice"):
        build_eval_sets(["heldout", "heldout"], task, cfg.task)
    cfg.task.heldout_size = 0
    with pytest.raises(ValueError, match="no built-in held-out split"):
        build_eval_sets(["heldout"], build_task(cfg.task, 0), cfg.task)


# ----------------------------------------------------------------------------------------------------------
# Sampling and scoring with the tiny model
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from bandpo.training.launch import build_policy, build_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads, and they spin on a busy machine
    cfg = _tiny_cfg()
    cfg.task.heldout_size = 12
    tok = build_tokenizer(cfg)
    yield build_policy(cfg, tok), tok, build_task(cfg.task, 0)
    torch.set_num_threads(threads)


def test_evaluate_matches_a_recount_and_is_deterministic(tiny):
    policy, tok, task = tiny
    es = EvalSet("heldout", task.heldout_rows(), "test_even_first_char")
    kw = dict(n=8, ks=[1, 4], max_new_tokens=4, seed=3)
    out = evaluate(policy, tok, [es], **kw)
    assert out == evaluate(policy, tok, [es], **kw)  # same checkpoint and seed: the same numbers
    assert out != evaluate(policy, tok, [es], **{**kw, "seed": 4})
    assert policy.training  # the model's mode is restored
    # Recount from the samples themselves.
    rows = []
    for i, prob in enumerate(es.problems):
        comps, lengths = sample_completions(policy, tok, prob["prompt"], 8, max_new_tokens=4,
                                            seed=problem_seed(3, "heldout", i))
        v = [VERIFIERS.get("test_even_first_char")(c, prob["answer"]) for c in comps]
        rows.append({**problem_scores([x.correct for x in v], [x.key for x in v], [1, 4]),
                     "length": sum(lengths) / 8})
    for name in metric_names(8, [1, 4]):
        assert out[f"eval/heldout/{name}"] == pytest.approx(sum(r[name] for r in rows) / len(rows), abs=1e-15)
    assert out["eval/heldout/problems"] == 12.0
    assert 0 < out["eval/heldout/mean@8"] < out["eval/heldout/pass@4"] <= out["eval/heldout/pass@8"] <= 1
    # A problem's samples do not depend on the other problems: evaluating the set in two halves (ranks 0 and 1
    # of 2, their tables summed here) gives the same numbers.
    tables = []
    for rank in range(2):
        def keep(t, tables=tables):
            tables.append(t.clone())
            return t
        evaluate(policy, tok, [es], **kw, rank=rank, world=2, all_reduce_sum=keep)
    total = tables[0] + tables[1]
    names = metric_names(8, [1, 4])
    for j, name in enumerate(names):
        assert math.fsum(total[:, j].tolist()) / 12 == out[f"eval/heldout/{name}"]


def test_eval_sampling_settings_are_its_own(tiny):
    policy, tok, task = tiny
    prompt = task.heldout_rows()[0]["prompt"]
    a, la = sample_completions(policy, tok, prompt, 6, max_new_tokens=3, seed=1)
    b, lb = sample_completions(policy, tok, prompt, 6, max_new_tokens=3, seed=1, micro_batch_size=6)
    assert (a, la) == (b, lb) and max(la) <= 3
    greedy, _ = sample_completions(policy, tok, prompt, 4, max_new_tokens=3, seed=1, temperature=1e-4)
    assert len(set(greedy)) == 1  # near-zero temperature: the same completion every time


def test_ks_larger_than_n_are_refused(tiny):
    policy, tok, task = tiny
    with pytest.raises(ValueError, match=r"eval k values \[1, 16\] must lie in \[1, n = 8\]"):
        evaluate(policy, tok, [EvalSet("h", task.heldout_rows(), "exact")], n=8, ks=[1, 16], max_new_tokens=2)


def test_eval_batch_settings_are_validated():
    assert _tiny_cfg().eval.batch_size == 256 and _tiny_cfg().eval.save_samples is True
    assert _tiny_cfg(**{"eval.n": 8, "eval.batch_size": 8}).eval.batch_size == 8
    assert _tiny_cfg(**{"eval.n": 8, "eval.micro_batch_size": 2, "eval.batch_size": 2}).eval.batch_size == 2
    for over, msg in [({"eval.batch_size": -1}, "config eval.batch_size = -1 is invalid: must be 0 or hold"),
                      ({"eval.n": 8, "eval.batch_size": 5}, r"eval.batch_size = 5 is invalid: .*\(8: eval.n"),
                      ({"eval.n": 8, "eval.micro_batch_size": 4, "eval.batch_size": 3}, r"= 3 is invalid: .*\(4: ")]:
        with pytest.raises(ValueError, match=msg):
            _tiny_cfg(**over)
    # FSDP: evaluation runs in lock-step, which the loop sampler does.
    fsdp = {"trainer.strategy": "fsdp", "trainer.accelerator": "gpu", "trainer.numerics": "native", "task.heldout_size": 10, "eval.sets": ["heldout"]}
    assert _tiny_cfg(**fsdp).eval.sets == ["heldout"]
    with pytest.raises(ValueError, match="config rollout.sampler = 'hf_generate' is invalid: held-out evaluation "
                                         "under trainer.strategy 'fsdp'"):
        _tiny_cfg(**fsdp, **{"rollout.sampler": "hf_generate"})


def test_one_group_draws_what_sample_loop_draws(tiny):
    """sample_loop_groups with one generator is sample_loop: batching keeps the rollout sampler's random stream."""
    policy, tok, task = tiny
    enc = tok(["12+7="] * 5, return_tensors="pt", add_special_tokens=False)
    kw = dict(max_new_tokens=4, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    a = rollout_module.sample_loop(policy, enc["input_ids"], enc["attention_mask"],
                                   generator=torch.Generator().manual_seed(5), **kw)
    b = rollout_module.sample_loop_groups(policy, enc["input_ids"], enc["attention_mask"],
                                          generators=[torch.Generator().manual_seed(5)], **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="5 rows to split into len\\(generators\\) = 2 equal groups"):
        rollout_module.sample_loop_groups(policy, enc["input_ids"], enc["attention_mask"],
                                          generators=[torch.Generator()] * 2, **kw)


@pytest.mark.parametrize("micro", [0, 3])
def test_batch_sizes_give_identical_per_sample_results(tiny, monkeypatch, micro):
    """One problem per sampler call, three, or all of them: the same completions, sample for sample, equal to each
    problem sampled alone (with micro = 3 each problem's 8 samples go in chunks of 3, 3, 2 from its generator)."""
    policy, tok, task = tiny
    es = EvalSet("heldout", task.heldout_rows(), "test_even_first_char")
    n = 8
    chunk = micro or n
    rows_per_call: list = []
    grouped = rollout_module.sample_loop_groups

    def counting(model, ids, mask, **kw):
        rows_per_call.append(ids.shape[0])
        return grouped(model, ids, mask, **kw)

    monkeypatch.setattr(rollout_module, "sample_loop_groups", counting)
    kw = dict(n=n, ks=[1, 4], max_new_tokens=4, seed=3, micro_batch_size=micro, return_samples=True)
    results = {}
    for problems in (1, 3, None):
        rows_per_call.clear()
        results[problems] = evaluate(policy, tok, [es], batch_size=(problems or 0) * chunk, **kw)
        calls = -(-12 // (problems or 12)) * -(-n // chunk)
        assert len(rows_per_call) == calls and max(rows_per_call) == (problems or 12) * chunk
    assert results[1] == results[3] == results[None]
    samples = results[1][1]
    assert len(samples) == 12 * n and [list(r) for r in samples[:1]] == [list(SAMPLE_COLUMNS)]
    for i, prob in enumerate(es.problems):
        alone = sample_completions(policy, tok, prob["prompt"], n, max_new_tokens=4, seed=problem_seed(3, "heldout", i),
                                   micro_batch_size=micro)
        mine = [r for r in samples if r["problem"] == i]
        assert ([r["completion"] for r in mine], [r["tokens"] for r in mine]) == alone
        assert {r["seed"] for r in mine} == {problem_seed(3, "heldout", i)} and [r["sample"] for r in mine] == list(
            range(n))
    # The chunking is a sampling setting (it splits each problem's stream), so it does change the samples.
    if micro:
        assert samples != evaluate(policy, tok, [es], batch_size=0, **{**kw, "micro_batch_size": 0})[1]


def test_samples_recompute_the_reported_numbers(tiny):
    policy, tok, task = tiny
    sets = [EvalSet("heldout", task.heldout_rows(), "test_even_first_char"),
            EvalSet("few", task.heldout_rows()[:5], "exact")]
    out, samples = evaluate(policy, tok, sets, n=8, ks=[1, 2, 4], max_new_tokens=4, seed=3, batch_size=24,
                            return_samples=True)
    assert metrics_from_samples(samples, [1, 2, 4]) == out  # bit for bit
    assert [(r["set"], r["problem"], r["sample"]) for r in samples] == [
        (es.name, i, j) for es in sets for i in range(len(es.problems)) for j in range(8)]
    first = samples[0]
    verdict = VERIFIERS.get("test_even_first_char")(first["completion"], first["answer"])
    assert (first["correct"], first["extracted"]) == (verdict.correct, verdict.key)
    assert first["id"] == sets[0].problems[0]["id"] == "0"
    heldout = [r for r in samples if r["set"] == "heldout"]
    assert out["eval/heldout/mean@8"] == pytest.approx(sum(r["correct"] for r in heldout) / len(heldout), abs=1e-15)
    with pytest.raises(ValueError, match="problem 0: sample indices are not 0..6"):
        metrics_from_samples([r for r in samples if r["sample"] != 3], [1])


def test_sample_files_are_atomic_deterministic_and_checked(tmp_path):
    rows = [{"set": "s", "problem": i // 2, "id": str(i // 2), "sample": i % 2, "seed": 7, "completion": f"{i} é",
             "extracted": None if i == 3 else str(i), "answer": "1", "correct": i == 1, "tokens": i} for i in range(4)]
    log = SampleLog(tmp_path / "eval_samples")
    assert log.steps() == [] and log.keep_until(None) == 0
    p = log.write(5, rows)
    assert p.name == "step_000005.jsonl.gz" and log.read(5) == rows
    first = p.read_bytes()
    log.write(5, rows)
    assert p.read_bytes() == first  # the same records, the same bytes (no time stamp in the header)

    class Boom(dict):
        def __getitem__(self, key):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        log.write(5, rows[:2] + [Boom(rows[2])])
    assert p.read_bytes() == first  # a write that dies leaves the previous file whole
    assert (log.folder / "step_000005.jsonl.gz.tmp").exists()
    for step in (0, 10, 12):
        log.write(step, rows)
    assert log.steps() == [0, 5, 10, 12]
    assert log.keep_until(5) == 2 and log.steps() == [0, 5] and not list(log.folder.glob("*.tmp"))
    assert log.keep_until(None) == 2 and log.steps() == []
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="per-sample file '.*bad.jsonl.gz' is not readable gzip"):
        read_samples(bad)
    write_samples(bad, rows)
    import gzip

    with gzip.open(bad, "at") as f:
        f.write('{"set": "s"}\n')
    with pytest.raises(ValueError, match="bad.jsonl.gz', line 5: expected the fields"):
        read_samples(bad)


def test_a_rank_without_problems(tiny):
    """More processes than problems: rank 1 of 2 has nothing to sample in a one-problem set, and adds zeros."""
    policy, tok, task = tiny
    es = EvalSet("one", task.heldout_rows()[:1], "test_even_first_char")
    kw = dict(n=4, ks=[1], max_new_tokens=3, seed=2, return_samples=True)
    tables = []

    def keep(t):
        tables.append(t.clone())
        return t

    out, samples = evaluate(policy, tok, [es], rank=1, world=2, all_reduce_sum=keep, all_gather=lambda x: x, **kw)
    assert samples == [] and float(tables[0].abs().sum()) == 0.0 and out["eval/one/problems"] == 1.0


def test_lockstep_pads_the_calls_and_needs_the_loop_sampler(tiny):
    policy, tok, task = tiny
    texts = [r["prompt"] for r in task.heldout_rows()[:2]]
    flags: list = []

    def all_ranks(flag):
        flags.append(flag)
        return flag

    got = sample_problems(policy, tok, texts, [1, 2], 4, max_new_tokens=3, batch_size=4, all_ranks=all_ranks,
                          min_calls=3)
    assert got == [sample_completions(policy, tok, t, 4, max_new_tokens=3, seed=s) for t, s in zip(texts, [1, 2])]
    assert flags  # asked the other ranks at every decoding step
    empty = sample_problems(policy, tok, [], [], 4, max_new_tokens=3, all_ranks=all_ranks, min_calls=2,
                            pad_text=texts[0])
    assert empty == []
    with pytest.raises(ValueError, match="lock-step evaluation \\(FSDP\\) needs the 'loop' sampler"):
        sample_problems(policy, tok, texts, [1, 2], 4, max_new_tokens=3, sampler="hf_generate", all_ranks=all_ranks)


# ----------------------------------------------------------------------------------------------------------
# Two gloo processes
# ----------------------------------------------------------------------------------------------------------


def _gloo_sets(cfg):
    held = build_task(cfg.task, 0).heldout_rows()
    # 12 problems split 6 + 6; 5 split 3 + 2, so with one problem per call the ranks make different numbers of calls.
    return [EvalSet("heldout", held, "test_even_first_char"), EvalSet("five", held[:5], "test_even_first_char")]


_GLOO_EVAL = dict(n=8, ks=[1, 4], max_new_tokens=4, seed=3)


def _gloo_main(rank: int, world: int, port: str, out: str) -> None:
    """Run as a script: rank ``rank`` of ``world`` evaluates its share of the tiny policy, then (world > 1) the same
    policy sharded with torch's ``fully_shard`` (FSDP2, whose every forward pass is a collective) in lock-step; each
    writes the reduced numbers and the gathered samples."""
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    from bandpo.training.launch import build_policy, build_tokenizer

    cfg = _tiny_cfg()
    cfg.task.heldout_size = 12
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok)
    sets = _gloo_sets(cfg)

    def reduce(t):
        dist.all_reduce(t)
        return t

    def gather(items):
        parts = [None] * world
        dist.all_gather_object(parts, items)
        return [x for p in parts for x in p]

    def all_ranks(flag):
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t)

    def save(name, result):
        metrics, samples = result
        Path(out, f"{name}{rank}.json").write_text(json.dumps({"metrics": {k: v.hex() for k, v in metrics.items()},
                                                               "samples": samples}))

    dist_kw = dict(rank=rank, world=world, all_reduce_sum=reduce, all_gather=gather) if world > 1 else {}
    save("plain", evaluate(policy, tok, sets, **_GLOO_EVAL, return_samples=True, **dist_kw))
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in policy.model.layers:
            fully_shard(layer)
        fully_shard(policy)
        local = sum(p.to_local().numel() for p in policy.parameters())
        assert local < sum(p.numel() for p in policy.parameters())  # each rank holds a shard
        save("fsdp", evaluate(policy, tok, sets, **_GLOO_EVAL, batch_size=8, lockstep=all_ranks, return_samples=True,
                              **dist_kw))
        # Both ranks reach this point before either tears gloo down: without the barrier, one rank closing its
        # connections while the other's gloo threads still run can abort the other at exit ("terminate called
        # without an active exception"), a teardown race this test is not about.
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_processes_plain_and_sharded_give_the_single_process_results_bit_for_bit(tmp_path, tiny):
    """Two processes, each evaluating its share (all-reduced numbers, gathered samples): the single process's numbers
    (float.hex) and samples on both ranks; and the same with the policy sharded by fully_shard (FSDP2), where the
    ranks must sample in lock-step (one problem per call: on the 5-problem set rank 1 pads with a discarded call)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    port = str(29500 + os.getpid() % 1000)
    procs = [subprocess.Popen([sys.executable, __file__, "--gloo", str(r), "2", port, str(tmp_path)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    policy, tok, _ = tiny
    cfg = _tiny_cfg()
    cfg.task.heldout_size = 12
    metrics, samples = evaluate(policy, tok, _gloo_sets(cfg), **_GLOO_EVAL, return_samples=True)
    single = {"metrics": {k: v.hex() for k, v in metrics.items()}, "samples": samples}
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for name in ("plain", "fsdp"):
        for r in range(2):
            assert json.loads((tmp_path / f"{name}{r}.json").read_text()) == single, (name, r)
    assert float.fromhex(single["metrics"]["eval/heldout/mean@8"]) > 0 and len(samples) == (12 + 5) * 8


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_module_wires_lockstep_under_fsdp_only(tmp_path, monkeypatch, strategy):
    """BandPOModule.evaluate_now with 2 processes: the strategy's sum and gather always; lock-step (the strategy's
    boolean all-reduce) only under FSDP. Lightning's FSDP needs CUDA, so the trainer is a stand-in here."""
    from types import SimpleNamespace

    from bandpo.training import evaluation
    from bandpo.training.module import BandPOModule

    cfg = _run_cfg(**{"trainer.strategy": strategy, "trainer.accelerator": "gpu", "trainer.numerics": "native", "objective.kl_coef": 0.0})
    task = build_task(cfg.task, 0)
    seen: dict = {}

    def fake_evaluate(*args, **kw):
        seen.update(kw)
        return {"eval/heldout/mean@4": 0.5}, []

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    decisions = []
    strat = SimpleNamespace(reduce=lambda t, reduce_op: t,
                            reduce_boolean_decision=lambda flag, all: decisions.append((flag, all)) or flag)
    module = BandPOModule(torch.nn.Linear(1, 1), None, cfg, task, eval_sets=build_eval_sets(["heldout"], task,
                                                                                             cfg.task))
    trainer = SimpleNamespace(world_size=2, strategy=strat, is_global_zero=False, global_rank=1,
                              default_root_dir=str(tmp_path))
    monkeypatch.setattr(BandPOModule, "trainer", property(lambda self: trainer))
    monkeypatch.setattr(BandPOModule, "global_rank", property(lambda self: 1))
    module.evaluate_now(0)
    assert (seen["rank"], seen["world"], seen["return_samples"], seen["batch_size"]) == (1, 2, True, 256)
    assert seen["all_reduce_sum"] is not None and seen["all_gather"] is not None
    if strategy == "fsdp":
        assert seen["lockstep"](True) is True and decisions == [(True, True)]
    else:
        assert seen["lockstep"] is None


_DDP_EVAL = {"rollout.prompts_per_step": 4, "trainer.max_steps": 1, "eval.every": 0, "eval.at_end": False,
             "trainer.accelerator": "cpu"}


@pytest.mark.slow
def test_trainer_evaluation_under_ddp_equals_one_process(tmp_path):
    """A 2-process DDP run (Lightning's launcher, gloo): its evaluation before training (after the same warm-start)
    has the single-process run's eval.csv numbers and, gathered from both ranks, the same per-sample file bytes."""
    from bandpo.training.launch import run

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, __file__, "--ddp-eval", str(tmp_path / "ddp")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run(_run_cfg(**_DDP_EVAL), tmp_path / "one")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "MEMBER: 2/2" in out
    strip = lambda rows: [{k: v for k, v in r.items() if k != "eval/time_s"} for r in rows]  # noqa: E731
    assert strip(_csv(tmp_path / "ddp" / "eval.csv")) == strip(_csv(tmp_path / "one" / "eval.csv"))
    one, ddp = (SampleLog(tmp_path / d / "eval_samples").path(0).read_bytes() for d in ("one", "ddp"))
    assert one == ddp and len(SampleLog(tmp_path / "ddp" / "eval_samples").read(0)) == 10 * 4


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--gloo":
    Path(sys.argv[5]).mkdir(parents=True, exist_ok=True)
    _gloo_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])


# ----------------------------------------------------------------------------------------------------------
# In the trainer
# ----------------------------------------------------------------------------------------------------------


def _run_cfg(**kw):
    base = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
            "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 4,
            "optim.prompts_per_minibatch": 2, "warmstart.steps": 2, "warmstart.batch_size": 8,
            "trainer.max_steps": 4, "trainer.checkpoint_every": 2, "trainer.progress_bar": False,
            "trainer.num_threads": 1, "task.heldout_size": 10, "eval.sets": ["heldout"], "eval.every": 2,
            "eval.n": 4, "eval.k": [1, 2]}
    base.update(kw)
    return load_config(CONFIG_DIR / "tiny-cpu.yaml", base)


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_trainer_evaluates_before_every_and_at_the_end_without_changing_training(tmp_path, monkeypatch):
    import lightning as L

    from bandpo.training import evaluation
    from bandpo.training.launch import run

    run(_run_cfg(), tmp_path / "a")
    ev = _csv(tmp_path / "a" / "eval.csv")
    assert [int(r["step"]) for r in ev] == [0, 2, 4]
    assert {"eval/heldout/mean@4", "eval/heldout/pass@1", "eval/heldout/pass@2", "eval/heldout/pass@4",
            "eval/heldout/maj@2", "eval/heldout/maj@4", "eval/heldout/length", "eval/time_s"} <= set(ev[0])
    assert all(float(r["eval/heldout/problems"]) == 10 for r in ev)
    # Every eval.csv row has its per-sample file, from which its numbers recompute exactly.
    log = SampleLog(tmp_path / "a" / "eval_samples")
    assert log.steps() == [0, 2, 4]
    for row in ev:
        samples = log.read(int(row["step"]))
        assert len(samples) == 10 * 4 and {r["set"] for r in samples} == {"heldout"}
        recount = metrics_from_samples(samples, [1, 2])
        assert recount == {k: float(v) for k, v in row.items() if k.startswith("eval/heldout/")}
    # Evaluating does not change what training samples: the same run without evaluation logs the same rows.
    run(_run_cfg(**{"eval.sets": []}), tmp_path / "plain")
    assert not (tmp_path / "plain" / "eval.csv").exists()
    timing = ("time/", "perf/")
    for ra, rb in zip(_csv(tmp_path / "a" / "metrics.csv"), _csv(tmp_path / "plain" / "metrics.csv")):
        assert {k: v for k, v in ra.items() if not k.startswith(timing)} == {
            k: v for k, v in rb.items() if not k.startswith(timing)}

    # A crash in the evaluation after step 4, between its per-sample file and its eval.csv row (last checkpoint after
    # step 2): the resumed run drops the orphaned file, redoes steps 3-4, and ends with the uninterrupted run's rows
    # and the same per-sample files, byte for byte (none duplicated, none lost).
    append = evaluation.EvalLog.append

    def crash_at_4(self, step, metrics):
        if step == 4:
            raise RuntimeError("simulated crash")
        return append(self, step, metrics)

    monkeypatch.setattr(evaluation.EvalLog, "append", crash_at_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_run_cfg(), tmp_path / "b")
    monkeypatch.setattr(evaluation.EvalLog, "append", append)
    assert [int(r["step"]) for r in _csv(tmp_path / "b" / "eval.csv")] == [0, 2]
    assert SampleLog(tmp_path / "b" / "eval_samples").steps() == [0, 2, 4]
    seen = []

    class AtResume(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            if not seen:
                seen.append(SampleLog(tmp_path / "b" / "eval_samples").steps())

    # Resumed with one problem per sampler call instead of 256 sequences (a speed setting a resume may change).
    run(_run_cfg(**{"eval.batch_size": 4}), tmp_path / "b", extra_callbacks=[AtResume()])
    assert seen == [[0, 2]]  # the file of the lost evaluation went when the run resumed from step 2
    strip = lambda rows: [{k: v for k, v in r.items() if k != "eval/time_s"} for r in rows]  # noqa: E731
    assert strip(_csv(tmp_path / "b" / "eval.csv")) == strip(ev)
    files = lambda run_dir: {p.name: p.read_bytes() for p in (run_dir / "eval_samples").iterdir()}  # noqa: E731
    assert files(tmp_path / "b") == files(tmp_path / "a") and len(files(tmp_path / "a")) == 3


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--ddp-eval":
    from bandpo.training.launch import run

    run(_run_cfg(**_DDP_EVAL, **{"trainer.devices": 2, "trainer.strategy": "ddp"}), sys.argv[2])
