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

Determinism and batching. Problem ``i`` of a set is sampled from its own generator seeded by ``(seed, set name, i)``
(:func:`problem_seed`). Problems are sampled together, up to ``batch_size`` sequences per sampler call, and each
problem's rows draw from its own generator (``bandpo.training.rollout.sample_loop_groups``), exactly the draws they
get when the problem is sampled alone; so a problem's samples depend only on the model, the seed and the sampling
settings (``micro_batch_size`` included, which splits a problem's stream): not on the batch size, on the other
problems, or on which process evaluates it. The one caveat is the model's own batch invariance: padding and batch
shape may change logits in their last bits, which changes a draw only if its uniform falls that close to a token
boundary (on CPU, 100 x 8 samples of the tiny and testbed presets equal those of one problem per call).

Processes. With W processes, rank r evaluates problems r, r + W, ...; each rank writes its problems' scores into a
zero table (problems x metrics), one all-reduce sums the tables, and every rank averages the full table in problem
order. The sum only adds zeros, so the numbers are bit-identical to a single process's (tested with two gloo
processes). A sharded model (FSDP) makes every forward pass a collective, so ranks then sample in lock-step
(``lockstep``): the same number of sampler calls (a rank with fewer problems pads with discarded calls) and of
decoding steps (until every rank's rows are done); tested with torch's ``fully_shard`` on two gloo processes.

Per-sample results (:data:`SAMPLE_COLUMNS`, :class:`SampleLog`): every evaluation's samples, gathered to every rank
and sorted by set, problem and sample, go to one gzip JSON-lines file per evaluation step, written atomically;
:func:`metrics_from_samples` recomputes the reported numbers from it, bit for bit.

The eval log (:class:`EvalLog`): ``eval.csv`` in the run folder, one row per evaluation, ``step`` = the number of RL
steps done before it (0 = before training); rows written after the checkpoint being resumed are dropped, like the
per-sample files.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import zlib
from collections import Counter
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .verifiers import Verdict, get_verifier

__all__ = [
    "EvalLog",
    "EvalSet",
    "EvalSetSpec",
    "SAMPLE_COLUMNS",
    "SampleLog",
    "build_eval_sets",
    "evaluate",
    "maj_at_k",
    "metric_names",
    "metrics_from_samples",
    "parse_eval_set",
    "pass_at_k",
    "problem_scores",
    "problem_seed",
    "problems_per_batch",
    "read_samples",
    "sample_completions",
    "sample_problems",
    "sampler_calls",
    "write_samples",
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


def _chunk(n: int, micro_batch_size: int) -> int:
    """Samples of one problem drawn per sampler call (its generator's stream depends on this)."""
    return micro_batch_size if 0 < micro_batch_size < n else n


def problems_per_batch(n: int, micro_batch_size: int, batch_size: int, sampler: str) -> int:
    """How many problems share one sampler call: ``batch_size // chunk`` (at least 1) with the ``loop`` sampler, where
    chunk = ``micro_batch_size`` if it is in (0, n), else n; 0 for ``batch_size = 0`` (all of them). Other samplers
    draw a batch from one generator, so they sample one problem per call."""
    from .rollout import SAMPLERS, sample_loop

    if SAMPLERS.get(sampler) is not sample_loop:
        return 1
    return max(1, batch_size // _chunk(n, micro_batch_size)) if batch_size > 0 else 0


def sampler_calls(problems: int, n: int, micro_batch_size: int, batch_size: int, sampler: str) -> int:
    """Sampler calls that :func:`sample_problems` makes for ``problems`` problems (the lock-step count)."""
    per = problems_per_batch(n, micro_batch_size, batch_size, sampler) or max(problems, 1)
    return -(-problems // per) * -(-n // _chunk(n, micro_batch_size))


@torch.no_grad()
def sample_problems(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    seeds: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampler: str = "loop",
    micro_batch_size: int = 0,
    batch_size: int = 0,
    all_ranks: Optional[Callable[[bool], bool]] = None,
    min_calls: int = 0,
    pad_text: Optional[str] = None,
) -> list:
    """``n`` completions of each prompt text; prompt i draws from its own generator seeded with ``seeds[i]``.

    Problems are sampled together, up to ``batch_size`` sequences per sampler call (0: all in one call), shortest
    prompts first (less padding); each problem's n samples go in chunks of ``micro_batch_size`` (0: all n at
    once), one chunk per call, from its generator in order. With the ``loop`` sampler each problem's rows draw
    from its own generator (:func:`bandpo.training.rollout.sample_loop_groups`), so its completions are those it
    gets sampled alone (:func:`sample_completions`), whatever the batch size or the other problems (up to the
    model's batch invariance); other samplers take one problem per call.

    Args:
        all_ranks, min_calls: lock-step for a sharded model (FSDP): decode until every process is done
            (``all_ranks(flag)`` is True iff ``flag`` is on every process) and make at least ``min_calls`` sampler
            calls (the extra ones sample ``pad_text``, default the first text, once and discard it), so every
            process makes the same forward passes.
    Returns:
        ``[(completions, lengths), ...]`` per text, in order: n decoded strings (special tokens removed) and their
        token counts.
    """
    from .rollout import SAMPLERS, sample_loop, sample_loop_groups

    if len(texts) != len(seeds):
        raise ValueError(f"sample_problems needs one seed per text; got {len(texts)} texts and {len(seeds)} seeds")
    device = next(model.parameters()).device
    sample = SAMPLERS.get(sampler)
    grouped = sample is sample_loop
    if all_ranks is not None and not grouped:
        raise ValueError(f"lock-step evaluation (FSDP) needs the 'loop' sampler, not {sampler!r}")
    chunk = _chunk(n, micro_batch_size)
    if min_calls and pad_text is None and not texts:
        raise ValueError("lock-step sampling without prompts needs a pad_text")
    prompts = list(texts) + ([pad_text] if pad_text is not None else [])
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    per = problems_per_batch(n, micro_batch_size, batch_size, sampler) or max(len(texts), 1)
    pad = tokenizer.pad_token_id
    kw = dict(max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id, pad_id=pad, temperature=temperature,
              top_p=top_p)

    def call(batch: list, m: int, gens: list) -> tuple:
        rows = [ids[i] for i in batch for _ in range(m)]
        width = max(len(r) for r in rows)
        prompt = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
        prompt_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long,
                                   device=device)
        if grouped:
            return sample_loop_groups(model, prompt, prompt_mask, generators=gens, all_ranks=all_ranks, **kw)
        return sample(model, prompt, prompt_mask, generator=gens[0], **kw)

    results = [([], []) for _ in texts]
    calls = 0
    for b in range(0, len(order), per):
        batch = order[b:b + per]
        gens = []
        for i in batch:
            gens.append(torch.Generator(device=device))
            gens[-1].manual_seed(seeds[i])
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            out_ids, out_mask = call(batch, m, gens)
            calls += 1
            decoded = tokenizer.batch_decode(out_ids.masked_fill(out_mask == 0, pad), skip_special_tokens=True)
            lengths = out_mask.sum(1).tolist()
            for j, i in enumerate(batch):
                results[i][0].extend(decoded[j * m:(j + 1) * m])
                results[i][1].extend(lengths[j * m:(j + 1) * m])
    while calls < min_calls:  # lock-step padding: the same forward passes as the busiest process
        call([len(texts) if pad_text is not None else 0], 1, [torch.Generator(device=device)])
        calls += 1
    return results


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
    """``n`` completions of one prompt text alone, drawn from a generator seeded with ``seed``
    (:func:`sample_problems` for one problem: what the problem gets in any batch).

    Returns:
        ``(completions, lengths)``: n decoded strings (special tokens removed) and their token counts.
    """
    return sample_problems(model, tokenizer, [text], [seed], n, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, sampler=sampler,
                           micro_batch_size=micro_batch_size)[0]


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
    batch_size: int = 0,
    rank: int = 0,
    world: int = 1,
    all_reduce_sum: Optional[Callable[[Tensor], Tensor]] = None,
    lockstep: Optional[Callable[[bool], bool]] = None,
    all_gather: Optional[Callable[[list], list]] = None,
    return_samples: bool = False,
) -> Any:
    """Evaluate ``model`` on every set; returns ``{"eval/<set>/<metric>": float}`` (same on every rank).

    Args:
        n: samples per problem. ks: the k of pass@k / maj@k (n is always added; each must be <= n).
        micro_batch_size, batch_size: samples of a problem per sampler call (0: n) and sequences per sampler call
            across problems (0: all of this rank's problems of a set); see :func:`sample_problems`. The numbers
            depend on ``micro_batch_size`` (it splits a problem's stream), not on ``batch_size``.
        rank, world, all_reduce_sum: this process's share (problems ``rank::world``) and a function summing a
            tensor over processes (required when ``world > 1``).
        lockstep: for a sharded model (FSDP): ``lockstep(flag)`` is True iff ``flag`` is True on every process;
            every process then makes the same forward passes (:func:`sample_problems`).
        all_gather: ``all_gather(list)`` is the concatenation of every process's list (required with
            ``return_samples`` and ``world > 1``).
        return_samples: also return the per-sample records (see :data:`SAMPLE_COLUMNS`) of every process, sorted
            by set (in ``sets`` order), problem and sample.
    Returns:
        the metrics, or ``(metrics, samples)`` with ``return_samples``. Metrics per set: ``mean@n``, ``pass@k``,
        ``maj@k`` (means over problems), ``length`` (mean completion tokens) and ``problems`` (how many).
    """
    from .data import render_prompt

    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"eval k values {list(ks)} must lie in [1, n = {n}]")
    if world > 1 and all_reduce_sum is None:
        raise ValueError("evaluate with world > 1 needs all_reduce_sum")
    if world > 1 and return_samples and all_gather is None:
        raise ValueError("evaluate with world > 1 and return_samples needs all_gather")
    names = metric_names(n, ks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict = {}
    samples: list = []
    try:
        for es in sets:
            verify = get_verifier(es.verifier)
            table = torch.zeros(len(es.problems), len(names), dtype=torch.float64, device=device)
            mine = list(range(rank, len(es.problems), world))
            texts = [render_prompt(tokenizer, es.problems[i]["prompt"], chat_template=es.chat_template) for i in mine]
            seeds = [problem_seed(seed, es.name, i) for i in mine]
            lock: dict = {}
            if lockstep is not None and es.problems:
                # As many sampler calls as rank 0, which has the most problems; a rank without any pads with the
                # set's first problem.
                busiest = len(range(0, len(es.problems), world))
                pad_text = texts[0] if texts else render_prompt(tokenizer, es.problems[0]["prompt"],
                                                                chat_template=es.chat_template)
                lock = dict(all_ranks=lockstep, pad_text=pad_text,
                            min_calls=sampler_calls(busiest, n, micro_batch_size, batch_size, sampler))
            drawn = sample_problems(model, tokenizer, texts, seeds, n, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, sampler=sampler,
                                    micro_batch_size=micro_batch_size, batch_size=batch_size, **lock)
            for i, seed_i, (completions, lengths) in zip(mine, seeds, drawn):
                prob = es.problems[i]
                verdicts: list[Verdict] = [verify(c, prob["answer"]) for c in completions]
                scores = problem_scores([v.correct for v in verdicts], [v.key for v in verdicts], ks)
                scores["length"] = sum(lengths) / n
                table[i] = torch.tensor([scores[m] for m in names], dtype=torch.float64)
                if return_samples:
                    samples += [{"set": es.name, "problem": i, "id": prob.get("id"), "sample": j,
                                 "seed": seed_i,
                                 "completion": c, "extracted": v.key, "answer": prob["answer"],
                                 "correct": bool(v.correct), "tokens": int(t)}
                                for j, (c, v, t) in enumerate(zip(completions, verdicts, lengths))]
            if world > 1:
                table = all_reduce_sum(table)
            values = table.cpu().tolist()
            for j, m in enumerate(names):
                out[f"eval/{es.name}/{m}"] = math.fsum(row[j] for row in values) / max(len(values), 1)
            out[f"eval/{es.name}/problems"] = float(len(es.problems))
    finally:
        model.train(was_training)
    if not return_samples:
        return out
    if world > 1:
        samples = all_gather(samples)
    order = {es.name: s for s, es in enumerate(sets)}
    samples.sort(key=lambda r: (order[r["set"]], r["problem"], r["sample"]))
    return out, samples


# ----------------------------------------------------------------------------------------------------------
# Per-sample results
# ----------------------------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ("set", "problem", "id", "sample", "seed", "completion", "extracted", "answer", "correct", "tokens")
"""The fields of one per-sample record, in file order: eval set name; problem index in the set; the problem's id
(the set's ``id_column``; the index as text otherwise); sample index j in [0, n); the seed of the problem's generator
(:func:`problem_seed`: sample j is the j-th of the n that :func:`sample_completions` draws from it); the decoded
completion; the verifier's extracted answer (its vote in maj@k; null: no answer); the ground truth; the verdict;
the completion's length in tokens."""


def write_samples(path: Union[str, Path], samples: Sequence[dict]) -> Path:
    """Write per-sample records as gzip-compressed JSON lines (fields :data:`SAMPLE_COLUMNS`), atomically.

    The file is written to ``<path>.tmp``, flushed to disk and renamed over ``path``, so a reader (or a run resumed
    after a kill) sees the whole previous file or the whole new one, never a part. The gzip header carries no time
    or name, so the same records give the same bytes.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as f:
            for r in samples:
                f.write((json.dumps({k: r[k] for k in SAMPLE_COLUMNS}, ensure_ascii=False) + "\n").encode())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return path


def read_samples(path: Union[str, Path]) -> list:
    """The records of a file written by :func:`write_samples`.

    Raises:
        ValueError: the file is not gzip JSON lines with the fields of :data:`SAMPLE_COLUMNS` (naming the file
            and, for a bad row, its line).
    """
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"per-sample file '{path}' is not readable gzip text: {e}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"per-sample file '{path}', line {number}: not JSON ({e})") from None
        if not isinstance(row, dict) or set(row) != set(SAMPLE_COLUMNS):
            raise ValueError(f"per-sample file '{path}', line {number}: expected the fields {list(SAMPLE_COLUMNS)}")
        rows.append(row)
    return rows


class SampleLog:
    """The per-sample files of a run: ``<folder>/step_<step, 6 digits>.jsonl.gz``, one per evaluation (``folder``
    is ``eval_samples/`` beside ``eval.csv``).

    Resume-safe: an evaluation replaces its step's file atomically (:func:`write_samples`), so repeating one after a
    kill does not duplicate rows, and :meth:`keep_until` drops the files of evaluations newer than the checkpoint
    being resumed (they are redone), like the rows of ``eval.csv``.
    """

    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder)

    def path(self, step: int) -> Path:
        return self.folder / f"step_{step:06d}.jsonl.gz"

    def write(self, step: int, samples: Sequence[dict]) -> Path:
        """Write (or replace) the file of the evaluation after RL step ``step``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_samples(self.path(step), samples)

    def read(self, step: int) -> list:
        return read_samples(self.path(step))

    def steps(self) -> list:
        """The steps that have a file, ascending."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name[5:-9]) for p in self.folder.glob("step_*.jsonl.gz") if p.name[5:-9].isdigit())

    def keep_until(self, step: Optional[int]) -> int:
        """Delete the files of steps after ``step`` (every file for None: a fresh start) and any partly written
        ``.tmp`` file. Returns how many step files were deleted."""
        dropped = [s for s in self.steps() if step is None or s > step]
        for s in dropped:
            self.path(s).unlink()
        if self.folder.is_dir():
            for tmp in self.folder.glob("step_*.jsonl.gz.tmp"):
                tmp.unlink()
        return len(dropped)


class EvalLog:
    """``eval.csv``: one row per evaluation (``step`` first, then the metric keys in a fixed order)."""

    def __init__(self, path: Any) -> None:
        self.path = Path(path)

    def append(self, step: int, metrics: dict) -> None:
        """Append one row (a new header, with the union of the keys, if the keys changed)."""
        rows = self.read()
        keys = ["step"] + sorted({k for r in rows for k in r if k != "step"} | set(metrics))
        new = {"step": step, **{k: repr(float(v)) for k, v in metrics.items()}}
        if rows and list(rows[0]) == keys:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=keys).writerow(new)
            return
        self._write(keys, rows + [new])

    def read(self) -> list:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def keep_until(self, step: Optional[int]) -> int:
        """Drop rows with ``step > step`` (all rows for None: a fresh start). Returns how many were dropped."""
        rows = self.read()
        keep = [] if step is None else [r for r in rows if int(float(r["step"])) <= step]
        if len(keep) != len(rows):
            if keep:
                self._write(list(rows[0]), keep)
            else:
                self.path.unlink()
        return len(rows) - len(keep)

    def _write(self, keys: Sequence[str], rows: list) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(keys), restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


def metrics_from_samples(samples: Sequence[dict], ks: Sequence[int] = (1,)) -> dict:
    """Recompute an evaluation's numbers from its per-sample records: ``{"eval/<set>/<metric>": float}`` with the
    metrics of :func:`evaluate` (mean@n, pass@k, maj@k for each k and n, length, problems), each problem's n samples
    in sample order, problems weighing the same. Equal, bit for bit, to what :func:`evaluate` reported (and
    ``eval.csv`` holds) for the same records: an audit needs only the file.

    Raises:
        ValueError: problems with different numbers of samples, or sample indices that are not 0..n-1.
    """
    by_problem: dict = {}
    for r in samples:
        by_problem.setdefault(r["set"], {}).setdefault(r["problem"], []).append(r)
    out: dict = {}
    for name, problems in by_problem.items():
        rows = []
        for index in sorted(problems):
            recs = sorted(problems[index], key=lambda r: r["sample"])
            n = len(recs)
            if [r["sample"] for r in recs] != list(range(n)):
                raise ValueError(f"eval set {name!r}, problem {index}: sample indices are not 0..{n - 1}")
            scores = problem_scores([r["correct"] for r in recs], [r["extracted"] for r in recs], ks)
            scores["length"] = sum(r["tokens"] for r in recs) / n
            rows.append(scores)
        if len({len(r) for r in rows}) != 1 or len({next(iter(r)) for r in rows}) != 1:
            raise ValueError(f"eval set {name!r}: problems have different numbers of samples")
        for metric in rows[0]:
            out[f"eval/{name}/{metric}"] = math.fsum(r[metric] for r in rows) / len(rows)
        out[f"eval/{name}/problems"] = float(len(rows))
    return out
