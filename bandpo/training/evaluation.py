"""Held-out evaluation: n sampled completions per problem, scored by a verifier, summarised as mean@n, pass@k and
maj@k per eval set.

The paper (arXiv 2603.04918; ``docs/paper-notes.md``, "Evaluation") reports mean@32 and pass@32 on AIME 2024,
AIME 2025 and AMC 2023, from 32 samples per problem at temperature 1.0, before training and every 5 steps. For one
problem with n samples of which c are correct:

* **mean@n** = c / n, the accuracy averaged over the samples (an unbiased estimate of mean@k for every k <= n);
* **pass@k** = 1 − C(n − c, k) / C(n, k), the unbiased estimator of "at least one of k samples is correct" of
  Chen et al. 2021 (arXiv 2107.03374), computed exactly with integers and rounded once (no overflow where the
  binomials exceed a float, no cancellation). verl's ``best@k`` is a different quantity: a bootstrap estimate
  (resampling k of the n answers with replacement), whose expectation 1 − (1 − c/n)^k is at most this estimator;
* **maj@k** = the fraction of the n // k disjoint blocks of k consecutive samples whose most frequent extracted
  answer (the verifier's ``key``; ties go to the answer seen first; samples without an answer do not vote) is
  correct.

Each is averaged over the problems of a set (every problem weighs the same).

Determinism and processes. Problem ``i`` of a set is sampled from its own generator seeded by
``(seed, set name, i)``, in batches of one prompt repeated (no padding), so its samples depend only on the model,
the seed and the sampling settings: not on which process evaluates it, nor on the other problems. With W
processes, rank r evaluates problems r, r + W, ...; each rank writes its problems' scores into a zero table
(problems x metrics), one all-reduce sums the tables, and every rank averages the full table in problem order. The
sum only adds zeros, so the numbers are bit-identical to a single process's (tested with two gloo processes).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from fractions import Fraction
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .verifiers import Verdict, get_verifier

__all__ = [
    "EvalSet",
    "EvalSetSpec",
    "build_eval_sets",
    "evaluate",
    "maj_at_k",
    "metric_names",
    "parse_eval_set",
    "pass_at_k",
    "problem_scores",
    "problem_seed",
    "sample_completions",
]


# ----------------------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: ``1 − C(n−c, k)/C(n, k)`` (arXiv 2107.03374).

    Computed exactly in integer arithmetic (Python's ``math.comb`` and ``Fraction``) and rounded once, so it is
    the correctly rounded value for any n (no overflow of the binomials, no cancellation in ``1 − ratio``);
    pass@1 = c/n exactly rounded.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    total = math.comb(n, k)
    return float(Fraction(total - math.comb(n - c, k), total))


def maj_at_k(keys: Sequence[Optional[str]], correct: Sequence[bool], k: int) -> float:
    """Majority-vote accuracy over the ``len(keys) // k`` disjoint blocks of ``k`` consecutive samples.

    In each block the most frequent non-None key wins (a tie goes to the key that appears first); the block
    scores 1 if a sample with the winning key is correct. A block without any answer scores 0.

    Raises:
        ValueError: unless ``1 <= k <= len(keys) == len(correct)``.
    """
    n = len(keys)
    if n != len(correct) or not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n samples and one correctness flag per sample; got k={k}, "
                         f"{n} keys, {len(correct)} flags")
    blocks = n // k
    hits = 0
    for b in range(blocks):
        ks, cs = keys[b * k:(b + 1) * k], correct[b * k:(b + 1) * k]
        votes = Counter(x for x in ks if x is not None)
        if not votes:
            continue
        top = max(votes.values())
        winner = next(x for x in ks if x is not None and votes[x] == top)  # first seen among the tied
        hits += bool(cs[ks.index(winner)])
    return hits / blocks


def metric_names(n: int, ks: Sequence[int]) -> list:
    """The per-set metric names, in order: ``mean@n``, ``pass@k`` and ``maj@k`` for each k, ``length``."""
    ks = sorted(set(ks) | {n})
    return [f"mean@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks] + ["length"]


def problem_scores(correct: Sequence[bool], keys: Sequence[Optional[str]], ks: Sequence[int]) -> dict:
    """mean@n, pass@k and maj@k (each k of ``ks``, and n itself) of one problem's n samples."""
    n, c = len(correct), int(sum(bool(x) for x in correct))
    ks = sorted(set(ks) | {n})
    out = {f"mean@{n}": c / n}
    out.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks})
    out.update({f"maj@{k}": maj_at_k(keys, correct, k) for k in ks})
    return out


# ----------------------------------------------------------------------------------------------------------
# Eval sets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSetSpec:
    """One entry of ``eval.sets``: a name and where its problems come from."""

    name: str
    """Metric prefix (``eval/<name>/pass@k``): letters, digits, '_', '-', '.'."""
    path: Optional[str] = None
    """Local .jsonl/.json/.parquet file or datasets folder; None: the task's built-in held-out split."""
    prompt_column: str = "prompt"
    """Column with the problem text or chat messages (dots read nested fields)."""
    answer_column: str = "answer"
    """Column with the ground truth."""
    id_column: Optional[str] = None
    """Optional problem-id column."""
    source_column: Optional[str] = None
    """Optional source column."""
    split: str = "train"
    """Split of a .json dict or a DatasetDict folder."""
    template: Optional[str] = None
    """Prompt template ('none', 'dapo' or a format string with '{prompt}'); None: the task's ``task.template``."""
    verifier: Optional[str] = None
    """Verifier (``bandpo.training.verifiers.VERIFIERS``); None: the task's (``exact`` for addition, ``dapo``
    for math files)."""
    limit: Optional[int] = None
    """Keep only the first ``limit`` problems."""


_SPEC_KEYS = {f for f in EvalSetSpec.__dataclass_fields__}


def parse_eval_set(entry: Any) -> EvalSetSpec:
    """An ``eval.sets`` entry as a spec: ``"heldout"`` (the task's held-out split), ``"NAME=PATH"``, a bare path
    (named after the file), or a mapping with the fields of :class:`EvalSetSpec`.

    Raises:
        ValueError: one line naming the entry and what is allowed.
    """
    if isinstance(entry, EvalSetSpec):
        spec = entry
    elif isinstance(entry, str):
        text = entry.strip()
        if text == "heldout":
            spec = EvalSetSpec(name="heldout")
        elif "=" in text:
            name, _, path = text.partition("=")
            spec = EvalSetSpec(name=name.strip(), path=path.strip())
        elif text:
            stem = text.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
            spec = EvalSetSpec(name=stem, path=text)
        else:
            raise ValueError("config eval.sets has an empty entry; use 'heldout', 'NAME=PATH' or a mapping")
    elif isinstance(entry, dict):
        unknown = set(entry) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"config eval.sets entry {entry!r}: unknown key(s) {sorted(unknown)}; allowed: "
                             f"{sorted(_SPEC_KEYS)}")
        if "name" not in entry:
            raise ValueError(f"config eval.sets entry {entry!r} needs a 'name'")
        spec = EvalSetSpec(**{k: (str(v) if k != "limit" and v is not None else v) for k, v in entry.items()})
    else:
        raise ValueError(f"config eval.sets entry {entry!r} must be 'heldout', 'NAME=PATH' or a mapping")
    if not spec.name or not all(ch.isalnum() or ch in "_-." for ch in spec.name):
        raise ValueError(f"config eval.sets name {spec.name!r} must be letters, digits, '_', '-' or '.'")
    if spec.limit is not None and (not isinstance(spec.limit, int) or spec.limit < 1):
        raise ValueError(f"config eval.sets {spec.name!r}: limit = {spec.limit!r} must be an integer >= 1")
    if spec.verifier is not None:
        get_verifier(spec.verifier)
    return spec


@dataclass
class EvalSet:
    """Problems ready to evaluate: rows ``{"prompt", "answer", "id", "source"}`` (prompt already templated)."""

    name: str
    problems: list
    verifier: str = "dapo"
    chat_template: bool = False


def build_eval_sets(entries: Sequence[Any], task: Any, task_cfg: Any) -> list:
    """The :class:`EvalSet` of each ``eval.sets`` entry: the task's built-in held-out split (``heldout``) or a local
    file read with :func:`bandpo.training.data.load_problems` (template and chat template from ``task_cfg`` unless
    the entry sets its own; verifier: the entry's, else the task's).

    Raises:
        ValueError: a missing file or column, or ``heldout`` for a task without a held-out split.
    """
    from .data import Columns, load_problems

    out, names = [], set()
    for entry in entries:
        spec = parse_eval_set(entry)
        if spec.name in names:
            raise ValueError(f"config eval.sets: the name {spec.name!r} is used twice")
        names.add(spec.name)
        if spec.path is None:
            if task.heldout_rows is None:
                raise ValueError(f"eval set {spec.name!r}: task {task.name!r} has no built-in held-out split "
                                 "(the addition task has one with task.heldout_size > 0); give the set a path")
            problems = task.heldout_rows()[:spec.limit]
        else:
            columns = Columns(spec.prompt_column, spec.answer_column, spec.id_column, spec.source_column)
            problems = load_problems(spec.path, columns=columns, split=spec.split,
                                     template=spec.template or task_cfg.template, limit=spec.limit,
                                     what=f"eval set {spec.name!r}: file")
        out.append(EvalSet(spec.name, problems, spec.verifier or task.verifier, bool(task_cfg.chat_template)))
    return out


def problem_seed(seed: int, set_name: str, index: int) -> int:
    """The seed of problem ``index`` of set ``set_name``: a pure function (CRC-32 of the name, not Python's hash)."""
    return ((seed * 1_000_003 + zlib.crc32(set_name.encode())) * 1_000_000_007 + index) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------
# Sampling and scoring
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    text: str,
    n: int,
    *,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampler: str = "loop",
    micro_batch_size: int = 0,
) -> tuple:
    """``n`` completions of one prompt text, drawn from a generator seeded with ``seed``.

    Returns:
        ``(completions, lengths)``: n decoded strings (special tokens removed) and their token counts.
    """
    from .rollout import SAMPLERS

    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    sample = SAMPLERS.get(sampler)
    size = micro_batch_size if micro_batch_size > 0 else n
    completions, lengths = [], []
    for start in range(0, n, size):
        m = min(size, n - start)
        enc = tokenizer([text] * m, return_tensors="pt", add_special_tokens=False)
        ids, mask = sample(model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                           max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                           pad_id=tokenizer.pad_token_id, temperature=temperature, top_p=top_p, generator=gen)
        completions += tokenizer.batch_decode(ids.masked_fill(mask == 0, tokenizer.pad_token_id),
                                              skip_special_tokens=True)
        lengths += mask.sum(1).tolist()
    return completions, lengths


def evaluate(
    model: Any,
    tokenizer: Any,
    sets: Sequence[EvalSet],
    *,
    n: int,
    ks: Sequence[int] = (1,),
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampler: str = "loop",
    micro_batch_size: int = 0,
    rank: int = 0,
    world: int = 1,
    all_reduce_sum: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict:
    """Evaluate ``model`` on every set; returns ``{"eval/<set>/<metric>": float}`` (same on every rank).

    Args:
        n: samples per problem. ks: the k of pass@k / maj@k (n is always added; each must be <= n).
        rank, world, all_reduce_sum: this process's share (problems ``rank::world``) and a function summing a
            tensor over processes (required when ``world > 1``).
    Metrics per set: ``mean@n``, ``pass@k``, ``maj@k`` (means over problems), ``length`` (mean completion tokens)
    and ``problems`` (how many).
    """
    from .data import render_prompt

    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"eval k values {list(ks)} must lie in [1, n = {n}]")
    if world > 1 and all_reduce_sum is None:
        raise ValueError("evaluate with world > 1 needs all_reduce_sum")
    names = metric_names(n, ks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict = {}
    try:
        for es in sets:
            verify = get_verifier(es.verifier)
            table = torch.zeros(len(es.problems), len(names), dtype=torch.float64, device=device)
            for i in range(rank, len(es.problems), world):
                prob = es.problems[i]
                text = render_prompt(tokenizer, prob["prompt"], chat_template=es.chat_template)
                completions, lengths = sample_completions(
                    model, tokenizer, text, n, max_new_tokens=max_new_tokens, seed=problem_seed(seed, es.name, i),
                    temperature=temperature, top_p=top_p, sampler=sampler, micro_batch_size=micro_batch_size)
                verdicts: list[Verdict] = [verify(c, prob["answer"]) for c in completions]
                scores = problem_scores([v.correct for v in verdicts], [v.key for v in verdicts], ks)
                scores["length"] = sum(lengths) / n
                table[i] = torch.tensor([scores[m] for m in names], dtype=torch.float64)
            if world > 1:
                table = all_reduce_sum(table)
            values = table.cpu().tolist()
            for j, m in enumerate(names):
                out[f"eval/{es.name}/{m}"] = math.fsum(row[j] for row in values) / max(len(values), 1)
            out[f"eval/{es.name}/problems"] = float(len(es.problems))
    finally:
        model.train(was_training)
    return out
