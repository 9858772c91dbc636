"""``rare_strategy``: a built-in task where the clipping of rare tokens decides the outcome (the ``testbed`` preset).

The prompt is three digits and ``=`` (``"472="``). The first completion token is a **decision** between
strategies, and the rest carries the chosen strategy out: the digit sum in decimal, then EOS.

====================  ==========================  ===================================================
first token            completion (for ``472=``)   reward
====================  ==========================  ===================================================
``T`` (tail)           ``T13``                     1.0 if the sum is right, else 0
``C`` (common)         ``C13``                     ``task.common_reward`` (0.5) if the sum is right, else 0
``X``, ``Y`` (wrong)   ``X13``                     0
``M`` (middle)         ``M13``                     ``task.middle_reward`` (0.4) if the sum is right, else 0;
                                                   only with ``task.middle_freq`` > 0 (otherwise 0 like any other)
anything else          ...                         0
====================  ==========================  ===================================================

The middle strategy (``task.middle_freq``, default 0: off, the task as committed) is a competitor of middle
probability, e.g. 0.35 of the warm-start's whole targets, taken from ``C``'s share (which then has about 0.6):
two common strategies and a rare one, to tell which side of a bound moves the tail when something else is also
probable (exploratory).

The supervised warm-start (:func:`sft_rows`) sets the strategy mix: half of its rows are whole targets whose first
token is ``T`` with frequency ``task.tail_freq``, ``X`` and ``Y`` with ``task.wrong_freq`` each and ``C``
otherwise, chosen by a Weyl (golden-ratio) sequence so every batch holds the mix up to one row; the other half
put a ``T`` or ``C`` (alternately) at the end of the prompt and train only the digit sum, so the warm-started model
carries out both strategies equally well while giving ``T`` a low probability at the decision point. RL then
has to find the rare ``T`` (reward 1) against the common ``C`` (0.5): the clip on a rare positive-advantage
token, and the lower bound on the rare wrong tokens ``X``/``Y`` (negative advantage), decide how fast.

Everything is a pure function of ``(seed, step)``; the held-out prompts (``task.heldout_size``, drawn with a fixed
seed, the same for every run seed) and the probe prompts are never drawn for RL or the warm-start.

Hooks (the general task hooks of :class:`bandpo.training.tasks.Task`, written by the trainer to ``metrics.csv``):

* ``probes(model, tokenizer)``: at the start of each RL step, with the current weights, no sampling,
  ``testbed/p_tail``, ``testbed/p_common`` and ``testbed/p_wrong`` = the mean over :data:`PROBE_SIZE` fixed probe
  prompts of the policy's probability (temperature 1) of ``T``, ``C`` and ``X`` + ``Y`` at the decision point;
* ``rollout_stats(completions, columns)``: ``testbed/tail_frac`` and ``testbed/wrong_frac`` (fractions of the
  step's rollout completions whose first character is ``T``, resp. ``X``/``Y``) and ``testbed/tail_sampled``
  (1.0 if any completion of the step chose ``T``; the maximum over processes).

Held-out evaluation (``eval.sets: [heldout]``, verifier ``exact``): a sample **passes** iff it is exactly the tail
strategy carried out correctly (``T`` + the digit sum), i.e. it earns reward 1. So ``mean@n`` is the fraction of
samples that choose ``T`` and compute the sum right, and ``pass@k`` the probability that at least one of k samples
does. See ``docs/testbed.md``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch

from .tasks import Task, _rng, register_reward, register_task

__all__ = [
    "COMMON",
    "HELDOUT_SEED",
    "MIDDLE",
    "PROBE_SIZE",
    "TAIL",
    "WRONG",
    "answer_of",
    "heldout_prompts",
    "probe_prompts",
    "rare_strategy_reward",
]

TAIL = "T"
"""The tail strategy's decision token (reward 1 when carried out correctly)."""
COMMON = "C"
"""The common strategy's decision token (reward ``task.common_reward`` when carried out correctly)."""
WRONG = ("X", "Y")
"""Wrong strategies (reward 0 whatever follows)."""
MIDDLE = "M"
"""The middle strategy's decision token (reward ``task.middle_reward`` when ``task.middle_freq`` > 0, else 0)."""
HELDOUT_SEED = 20_260_305
"""Seed of the held-out and probe prompts: fixed, so every run seed holds out and probes the same prompts."""
PROBE_SIZE = 16
"""Probe prompts whose decision-point probabilities are logged every RL step."""
N_PROMPTS = 1000
"""All prompts: the digit strings 000 ... 999."""
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _digits(i: int) -> str:
    return f"{i:03d}"


def answer_of(digits: str) -> str:
    """The computation both strategies carry out: the digit sum of ``digits`` in decimal (``"472"`` -> ``"13"``)."""
    return str(sum(int(c) for c in digits))


def _fixed_split(heldout_size: int) -> tuple:
    """(held-out indices, probe indices): disjoint, drawn with :data:`HELDOUT_SEED`, the same for every run."""
    if not 0 <= heldout_size <= N_PROMPTS // 2:
        raise ValueError(f"config task.heldout_size = {heldout_size} is invalid for task 'rare_strategy': "
                         f"must be in [0, {N_PROMPTS // 2}] (half of the {N_PROMPTS} prompts)")
    order = list(range(N_PROMPTS))
    random.Random(HELDOUT_SEED).shuffle(order)
    return tuple(order[:heldout_size]), tuple(order[N_PROMPTS // 2:N_PROMPTS // 2 + PROBE_SIZE])


def heldout_prompts(heldout_size: int) -> list:
    """The held-out digit strings (the first ``heldout_size`` of one fixed shuffle; nested for growing sizes)."""
    return [_digits(i) for i in _fixed_split(heldout_size)[0]]


def probe_prompts() -> list:
    """The :data:`PROBE_SIZE` probe prompt texts (``"ddd="``), never held out, never trained on."""
    return [_digits(i) + "=" for i in _fixed_split(0)[1]]


@register_reward("rare_strategy")
def rare_strategy_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str],
                         common: Sequence[str], common_reward: Sequence[float], middle: Any = None,
                         middle_reward: Any = None, **_: Any) -> list[float]:
    """1.0 if the completion (stripped) is the tail target ``answer`` (``T`` + digit sum), ``common_reward`` if it is
    the common target ``common`` (``C`` + digit sum), ``middle_reward`` if it is the middle target ``middle``
    (``M`` + digit sum; columns present only when the task has a middle strategy), else 0.0 (the ``rare_strategy``
    task's reward)."""
    n = len(completions)
    mids = middle if middle is not None else [None] * n
    mid_w = middle_reward if middle_reward is not None else [0.0] * n
    out = []
    for c, a, b, w, m, wm in zip(completions, answer, common, common_reward, mids, mid_w, strict=True):
        c = c.strip()
        out.append(1.0 if c == a else float(w) if c == b else float(wm) if m is not None and c == m else 0.0)
    return out


@register_task("rare_strategy", sft=True)
def _rare_strategy(cfg: Any, seed: int) -> Task:
    tail_freq, wrong_freq, common_reward = cfg.tail_freq, cfg.wrong_freq, cfg.common_reward
    middle_freq, middle_reward = getattr(cfg, "middle_freq", 0.0), getattr(cfg, "middle_reward", 0.4)
    if tail_freq + 2 * wrong_freq + middle_freq >= 1.0:
        raise ValueError(f"config task.tail_freq + 2 * task.wrong_freq + task.middle_freq = "
                         f"{tail_freq + 2 * wrong_freq + middle_freq} is invalid for task 'rare_strategy': must be < 1 "
                         "(the common strategy takes the rest)")
    held, probes = _fixed_split(cfg.heldout_size)
    pool = [i for i in range(N_PROMPTS) if i not in set(held) | set(probes)]
    probe_texts = [_digits(i) + "=" for i in probes]

    def row(d: str) -> dict:
        s = answer_of(d)
        out = {"prompt": d + "=", "answer": TAIL + s, "common": COMMON + s, "common_reward": common_reward}
        if middle_freq > 0:
            out.update(middle=MIDDLE + s, middle_reward=middle_reward)
        return out

    def rows(step: int, n: int) -> list:
        rng = _rng(seed, 10, step)
        return [row(_digits(rng.choice(pool))) for _ in range(n)]

    offset = _rng(seed, 12, 0).random()  # the Weyl sequence's start: one per seed

    def decision(j: int) -> str:
        u = (offset + j * _PHI) % 1.0
        if u < tail_freq:
            return TAIL
        if u < tail_freq + wrong_freq:
            return WRONG[0]
        if u < tail_freq + 2 * wrong_freq:
            return WRONG[1]
        if u < tail_freq + 2 * wrong_freq + middle_freq:
            return MIDDLE
        return COMMON

    def sft_rows(step: int, n: int) -> list:
        """Even global rows: whole targets with the strategy mix; odd rows: ``T``/``C`` in the prompt, sum only."""
        rng = _rng(seed, 11, step)
        out = []
        for i in range(n):
            k = step * n + i
            d = _digits(rng.choice(pool))
            if k % 2 == 0:
                out.append((d + "=", decision(k // 2) + answer_of(d)))
            else:
                out.append((d + "=" + (TAIL if (k // 2) % 2 == 0 else COMMON), answer_of(d)))
        return out

    def correct(completions: Sequence[str], answers: Sequence[str]) -> list:
        return [c.strip() == str(a) for c, a in zip(completions, answers, strict=True)]

    def heldout_rows() -> list:
        return [dict(row(_digits(i)), id=str(j), source="rare_strategy") for j, i in enumerate(held)]

    @torch.no_grad()
    def probe(model: Any, tokenizer: Any) -> dict:
        device = next(model.parameters()).device
        enc = tokenizer(probe_texts, return_tensors="pt", add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        was_training = model.training
        model.eval()
        try:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].float()
        finally:
            model.train(was_training)
        p = torch.softmax(logits, dim=-1)
        tid = tokenizer.convert_tokens_to_ids
        values = torch.stack([p[:, tid(TAIL)].mean(), p[:, tid(COMMON)].mean(),
                              p[:, [tid(w) for w in WRONG]].sum(-1).mean()]).tolist()
        out = dict(zip(("testbed/p_tail", "testbed/p_common", "testbed/p_wrong"), values))
        if middle_freq > 0:
            out["testbed/p_middle"] = float(p[:, tid(MIDDLE)].mean())
        return out

    def rollout_stats(completions: Sequence[str], columns: dict) -> dict:
        first = [c.strip()[:1] for c in completions]
        n = max(len(first), 1)
        tail = sum(f == TAIL for f in first)
        out = {"testbed/tail_frac": tail / n, "testbed/wrong_frac": sum(f in WRONG for f in first) / n,
               "testbed/tail_sampled": float(tail > 0)}
        if middle_freq > 0:
            out["testbed/middle_frac"] = sum(f == MIDDLE for f in first) / n
        return out

    return Task("rare_strategy", rows, ("rare_strategy",), correct, sft_rows,
                heldout_rows if held else None, "exact", probes=probe, rollout_stats=rollout_stats,
                rollout_stat_reductions={"testbed/tail_sampled": "max"})
