"""The ``rare_strategy`` task and the ``testbed`` preset (docs/testbed.md): pure prompt streams, rewards of each
strategy, the held-out split, the warm-start's strategy mix, and the per-step probes in ``metrics.csv``.

Run: .venv/bin/python -m pytest -q tests/test_testbed.py   (about 15 s on one core)
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bandpo.losses import BUCKET_NAMES
from bandpo.training.launch import build_policy, build_tokenizer, run
from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training.evaluation import problem_scores
from bandpo.training.rollout import warm_start
from bandpo.training.tasks import REWARD_FUNCS, build_task
from bandpo.training.rare_strategy import COMMON, TAIL, WRONG, answer_of, heldout_prompts, probe_prompts
from bandpo.training.verifiers import get_verifier

PRESET = CONFIG_DIR / "testbed.yaml"
PROBE_KEYS = ("testbed/p_tail", "testbed/p_common", "testbed/p_wrong", "testbed/tail_frac", "testbed/wrong_frac",
              "testbed/tail_sampled")


def cfg_of(**overrides):
    return load_config(PRESET, {k.replace("__", "."): v for k, v in overrides.items()})


def test_prompts_and_targets_are_pure_functions_of_seed_and_step():
    cfg = cfg_of()
    a, b, other = build_task(cfg.task, 3), build_task(cfg.task, 3), build_task(cfg.task, 4)
    assert a.rows(7, 8) == b.rows(7, 8)
    assert a.sft_rows(5, 64) == b.sft_rows(5, 64)
    assert a.rows(7, 8) != a.rows(8, 8)
    assert a.rows(7, 8) != other.rows(7, 8)
    assert a.heldout_rows() == other.heldout_rows()  # the same held-out set for every run seed
    r = a.rows(0, 1)[0]
    d = r["prompt"][:3]
    assert r["prompt"] == d + "=" and len(d) == 3 and d.isdigit()
    assert r["answer"] == TAIL + answer_of(d) and r["common"] == COMMON + answer_of(d)
    assert answer_of("472") == "13" and answer_of("000") == "0" and answer_of("999") == "27"


def test_heldout_and_probe_prompts_are_never_trained_on():
    cfg = cfg_of()
    task = build_task(cfg.task, 0)
    held = {r["prompt"] for r in task.heldout_rows()}
    assert len(held) == cfg.task.heldout_size == 100
    assert held == {d + "=" for d in heldout_prompts(100)}
    probes = set(probe_prompts())
    assert len(probes) == 16 and not probes & held
    seen = {r["prompt"] for s in range(200) for r in task.rows(s, 8)}
    seen |= {p[:4] for s in range(100) for p, _ in task.sft_rows(s, 64)}
    assert not seen & (held | probes)
    assert len(seen) > 800  # the rest of the 1000 prompts is drawn


def test_rewards_of_each_strategy():
    fn = REWARD_FUNCS.get("rare_strategy")
    completions = ["T13", "C13", "X13", "Y13", "T12", "C14", "13", " T13 ", ""]
    n = len(completions)
    got = fn(["472="] * n, completions, answer=["T13"] * n, common=["C13"] * n, common_reward=[0.5] * n)
    assert got == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert fn(["472="], ["C13"], answer=["T13"], common=["C13"], common_reward=[0.25]) == [0.25]
    task = build_task(cfg_of().task, 0)
    assert task.correct(["T13", "C13", "X13"], ["T13"] * 3) == [True, False, False]


def test_pass_means_the_tail_strategy_carried_out_correctly():
    task = build_task(cfg_of().task, 0)
    assert task.verifier == "exact"
    row = task.heldout_rows()[0]
    s = answer_of(row["prompt"][:3])
    verify = get_verifier(task.verifier)
    outcomes = [verify(c, row["answer"]).correct for c in (TAIL + s, COMMON + s, WRONG[0] + s, TAIL + s + "1")]
    assert outcomes == [True, False, False, False]
    # 8 samples, 1 of them the tail strategy: mean@8 = 1/8, pass@8 = 1, pass@1 = 1/8.
    scores = problem_scores([True] + [False] * 7, [TAIL + s] + [COMMON + s] * 7, [1, 8])
    assert scores["mean@8"] == 0.125 and scores["pass@8"] == 1.0 and scores["pass@1"] == 0.125


def test_warm_start_targets_hold_the_strategy_mix():
    cfg = cfg_of()
    task = build_task(cfg.task, 0)
    whole = [t for s in range(200) for p, t in task.sft_rows(s, 64) if len(p) == 4]
    cont = [p[4] for s in range(200) for p, t in task.sft_rows(s, 64) if len(p) == 5]
    assert len(whole) == len(cont) == 6400
    counts = {c: sum(t[0] == c for t in whole) for c in (TAIL, COMMON) + WRONG}
    assert abs(counts[TAIL] - 0.015 * 6400) <= 2
    assert all(abs(counts[w] - 0.02 * 6400) <= 2 for w in WRONG)
    assert counts[COMMON] == 6400 - counts[TAIL] - counts[WRONG[0]] - counts[WRONG[1]]
    assert cont.count(TAIL) == cont.count(COMMON) == 3200  # both strategies' computation is taught equally


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="tail_freq"):
        cfg_of(task__tail_freq=0.0)
    with pytest.raises(ValueError, match="must be < 1"):
        build_task(cfg_of(task__tail_freq=0.5, task__wrong_freq=0.3).task, 0)
    with pytest.raises(ValueError, match="heldout_size"):
        build_task(cfg_of(task__heldout_size=600).task, 0)


def test_warm_start_makes_the_tail_rare_and_probes_are_deterministic():
    torch.set_num_threads(1)
    cfg = cfg_of()
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok)
    task = build_task(cfg.task, cfg.trainer.seed)
    w = cfg.warmstart
    warm_start(policy, tok, task.sft_rows, steps=w.steps, lr=w.lr, batch_size=w.batch_size)
    first, second = task.probes(policy, tok), task.probes(policy, tok)
    assert first == second
    assert 0.0 < first["testbed/p_tail"] < 0.05
    assert first["testbed/p_common"] > 0.8
    assert first["testbed/p_wrong"] < 0.1


def test_probe_keys_and_clip_metrics_are_in_metrics_csv(tmp_path):
    cfg = cfg_of(trainer__max_steps=2, warmstart__steps=20, eval__sets=[], trainer__num_threads=1)
    run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1]
    buckets = [f"bucket/{b}/clip_{s}_mean" for b in BUCKET_NAMES for s in ("low", "high", "region")]
    for r in rows:
        for key in PROBE_KEYS + ("entropy", "ratio/rare_pos_max", "ratio/rare_neg_min", *buckets):
            assert key in r, key
        for key in PROBE_KEYS:
            assert 0.0 <= float(r[key]) <= 1.0, (key, r[key])
        assert float(r["testbed/tail_sampled"]) == float(float(r["testbed/tail_frac"]) > 0)
        assert float(r["testbed/p_tail"]) + float(r["testbed/p_common"]) + float(r["testbed/p_wrong"]) <= 1.0
        for key in ("ratio/rare_pos_max", "ratio/rare_neg_min"):
            v = float(r[key])
            assert math.isnan(v) or v > 0, (key, v)
    assert rows[0]["testbed/p_tail"] != rows[1]["testbed/p_tail"]  # step 1 probes the updated weights
