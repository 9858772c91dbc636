"""The trainer's speed-ups leave its numbers unchanged: each fast path against the plain computation it replaces,
compared bit for bit (tokens, log-probs, weights), on the tiny models of the presets.

Run: .venv/bin/python -m pytest -q tests/test_train_speed.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
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


def test_shared_prompt_sampling_draws_the_per_row_tokens():
    """Running each distinct prompt once and copying its KV cache to the repeats draws the same tokens as the
    forward over every row: equal prompts (groups of 8, 2 and 1), left padding, temperature and top-p (in the test
    process's numerical mode; see sample_loop for where the last bits of the logits may differ)."""
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
    """The sampler ``loop_shared``'s prompt forward sees the distinct rows only (3 of 24 here), later tokens run on
    every row; the default ``loop`` runs every row."""
    from bandpo.training.rollout import SAMPLERS

    model, tok = _model("testbed")
    ids, mask = _prompts(tok, ["472=", "015=", "999="], 8)
    for name, first in (("loop_shared", (3, 4)), ("loop", (24, 4))):
        rows = []
        hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
        try:
            SAMPLERS.get(name)(model, ids, mask, max_new_tokens=3, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                               generator=torch.Generator().manual_seed(0))
        finally:
            hook.remove()
        assert rows[0] == first, name
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


@pytest.mark.slow
def test_trainer_benchmark_runs_equal_work_and_writes_its_report(tmp_path):
    """benchmarks/trainer_speed.py end to end on 3 RL steps: its equal-work assertions hold for bandpo and TRL, and
    the report has both trainers' rates, shares and the ratio."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_speed.py"
    spec = importlib.util.spec_from_file_location("trainer_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    bench.main(["--steps", "3", "--rounds", "1", "--methods", "clip", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["work"]["completions_per_rl_step"] == 256 and report["work"]["optimizer_steps_per_rl_step"] == 4
    for name in ("bandpo/clip", "trl/clip"):
        best = report["best"][name]
        assert best["rl_steps_timed"] == 1 and best["rl_steps_per_cpu_s"] > 0
        assert 0 < best["share"]["generation"] < best["share"]["rollout"] < 1
    assert report["best"]["trl/clip"]["share"]["band"] == 0  # TRL's stock loss clips to constants
    assert report["ratio_bandpo_over_trl"]["clip"]["cpu"] > 0


def test_rare_ratio_extremes_skip_optimiser_steps_without_rare_tokens():
    """An RL step's ``ratio/rare_neg_min`` (``rare_pos_max``) is the extreme over the optimiser steps that had rare
    tokens with A < 0 (A > 0): a step without any must not count as ratio 0 (the row would then read NaN while
    ``rare/neg_tokens`` counts tokens)."""
    import math

    from bandpo.losses import reduce_metrics
    from bandpo.training.module import _RARE_REDUCTIONS, _rare_ratio_metrics

    old = torch.tensor([[math.log(0.01), math.log(0.9)]])
    mask = torch.ones(1, 2)
    with_rare = _rare_ratio_metrics(old + math.log(0.5), old, torch.full((1, 2), -1.0), mask)  # r = 0.5, A < 0
    pos_rare = _rare_ratio_metrics(old + math.log(2.0), old, torch.full((1, 2), 1.0), mask)  # r = 2, A > 0
    without = _rare_ratio_metrics(old, old, torch.zeros(1, 2), mask)  # A = 0: no rare token counts
    for parts in ([with_rare, without], [without, with_rare], [without, pos_rare, with_rare]):
        steps = [reduce_metrics([p], _RARE_REDUCTIONS, distributed=False) for p in parts]  # per optimiser step
        row = reduce_metrics(steps, _RARE_REDUCTIONS, distributed=False)  # the RL step
        assert float(row["ratio/rare_neg_min"]) == 0.5
        assert float(row["rare/neg_tokens"]) == 1.0
    row = reduce_metrics([reduce_metrics([p], _RARE_REDUCTIONS, distributed=False) for p in (without, pos_rare)],
                         _RARE_REDUCTIONS, distributed=False)
    assert float(row["ratio/rare_pos_max"]) == 2.0 and math.isinf(float(row["ratio/rare_neg_min"]))


def test_reduce_metrics_matches_exact_arithmetic_key_by_key():
    """reduce_metrics reduces every key at once (one gather of the weights, one division for all means): on dyadic
    values, where every sum is exact, each result is the correctly rounded exact reduction, for sums, weighted and
    plain means (0 without weight), extremes over parts with data, ``empty`` without, and keys missing from parts."""
    import random
    from fractions import Fraction

    from bandpo.losses import Reduction, reduce_metrics

    rng = random.Random(0)
    specs = {"s": Reduction("sum"), "m": Reduction("mean", "w"), "p": Reduction("mean"),
             "lo": Reduction("min", "w", 7.0), "hi": Reduction("max", "w", -3.0)}
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(0, 5)):
            part = {"w": torch.tensor(float(rng.choice([0, 0, 1, 2, 3, 5])), dtype=torch.float32)}
            part.update({k: torch.tensor(rng.randint(-64, 64) / 8, dtype=torch.float32) for k in specs
                         if rng.random() < 0.8})
            parts.append(part)
        got = reduce_metrics(parts, {**specs, "w": "sum"}, distributed=False)
        for k, spec in specs.items():
            have = [(Fraction(float(p[k])), Fraction(float(p["w"]))) for p in parts if k in p]
            if not have:
                assert k not in got
                continue
            if spec.kind == "sum":
                want = float(sum(v for v, _ in have))
            elif spec.kind == "mean":
                ws = [w if spec.weight else Fraction(1) for _, w in have]
                den = sum(ws)
                want = float(sum(v * w for (v, _), w in zip(have, ws)) / den) if den > 0 else 0.0
            else:
                data = [v for v, w in have if w > 0]
                want = float((min if spec.kind == "min" else max)(data)) if data else spec.empty
            assert got[k].dtype == torch.float64 and got[k].item() == want, (k, parts, got[k], want)


def test_warm_start_tokenizes_each_text_once_with_the_same_loss():
    """sft_loss with a kept text -> ids dict gives the loss and accuracies bit for bit, and tokenizes only texts it
    has not seen (the warm-start's texts repeat across steps)."""
    from bandpo.training.rollout import sft_loss
    from bandpo.training.tasks import build_task

    model, tok = _model("testbed")
    model.train()
    cfg = load_config(preset_path("testbed"))
    task = build_task(cfg.task, 0)
    seen: list = []
    real_call = type(tok).__call__

    class Counting(type(tok)):
        def __call__(self, texts, *a, **kw):
            seen.append(len(texts))
            return real_call(self, texts, *a, **kw)

    counted = build_char_tokenizer()
    counted.__class__ = Counting
    encoded: dict = {}
    for step in range(3):
        pairs = task.sft_rows(step, 64) + task.sft_rows(0, 8)  # step 0's first rows again
        plain = sft_loss(model, tok, pairs)
        kept = sft_loss(model, counted, pairs, encoded)
        assert torch.equal(plain[0], kept[0]) and plain[1:] == kept[1:]
    texts = [t for s in range(3) for p in task.sft_rows(s, 64) for t in p]
    assert sum(seen) == len(set(texts)) and len(encoded) == len(set(texts))


def test_cpu_step_seeding_draws_what_torch_manual_seed_draws():
    """training_step's seeding of the global RNG on a CPU run (the CPU generator only) gives the draws of
    torch.manual_seed (dropout's stream)."""
    from bandpo.training.module import _seed_global_rng

    for seed in (0, 7, 2**62 + 5):
        torch.manual_seed(seed)
        want = torch.rand(5), torch.randn(3)
        torch.manual_seed(seed + 1)
        _seed_global_rng(seed, torch.device("cpu"))
        got = torch.rand(5), torch.randn(3)
        assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc's mallopt: Linux only")
def test_cpu_runs_keep_freed_memory_on_linux():
    """A CPU run sets glibc's trim and mmap thresholds (launch._keep_freed_memory); a freed 64 MB buffer then stays
    with the process instead of going back to the kernel. Runs in a child process (the setting is process-wide)."""
    import subprocess
    import sys

    code = ("import ctypes, torch\n"
            "from bandpo.training.launch import _keep_freed_memory\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1])\n"
            "assert _keep_freed_memory()\n"
            "x = torch.ones(16 << 20); before = rss(); del x\n"
            "print(before - rss())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 0  # no page given back (by default glibc unmaps a 64 MB buffer at once)
