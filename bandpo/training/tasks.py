"""Verifiable tasks: where prompts come from and how completions are scored.

A task turns an RL step index into a batch of prompt rows, and scores completions with plain reward functions

    fn(prompts: list[str], completions: list[str], **columns) -> list[float]

(the convention of TRL's ``reward_funcs``): ``prompts[i]`` is the text the policy was conditioned on,
``completions[i]`` the decoded sampled text (special tokens removed), and every other column of the prompt rows
is passed by name as a list aligned with ``completions`` (each prompt's value repeated once per completion).
Reward functions must accept and ignore extra keyword arguments.

Three tasks are registered (``TASKS``; add one with :func:`register_task`):

* ``addition``: procedurally generated ``"a+b="`` prompts with ``min_digits``..``max_digits``-digit operands
  and the exact decimal sum as the answer; reward ``exact_match`` (1.0 if the completion equals the answer,
  else 0.0). Batch ``step`` of a run with seed ``seed`` is a pure function of ``(seed, step)``, so a resumed run
  sees the same prompts as an uninterrupted one. It also yields supervised targets for the warm-start. With
  ``task.heldout_size > 0`` a fixed set of that many problems (the same for every run seed) is held out: never
  drawn for RL or the warm-start, it is the ``heldout`` eval set (verifier ``exact``).
* ``math_file``: prompts and answers read from a local file (``.jsonl``, ``.json``, ``.parquet``) or a
  ``datasets.save_to_disk`` folder through Hugging Face ``datasets`` (``bandpo.training.data``); the DAPO-Math prompt template ("... The last line of your response should be
  of the form Answer: $Answer ...") and the ``answer_line`` reward (+1 when the value after the last
  ``Answer:`` in the last 300 characters equals the ground truth after normalisation, else -1; the paper's
  DAPO-Math scoring). Rows are visited in a seeded random order, reshuffled each epoch. Nothing is downloaded.

* ``rare_strategy`` (``bandpo.training.rare_strategy``, the ``testbed`` preset): a decision between a rare
  high-reward strategy and a common middling one, where the clipping of rare tokens decides the outcome
  (``docs/testbed.md``).

Reward functions (``exact_match``, ``answer_line``, ``answer_number``, ``answer_format``, ``math_verify``) are registered in ``REWARD_FUNCS``; a config names them (``task.reward_funcs``).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..registry import Registry
from .answers import canonical_number, extract_answer, normalize_answer
from .data import DAPO_TEMPLATE, TEMPLATES, read_table
from .verifiers import verify_math

__all__ = [
    "DAPO_TEMPLATE",
    "REWARD_FUNCS",
    "SFT_TASKS",
    "TASKS",
    "TEMPLATES",
    "Task",
    "answer_format",
    "answer_line",
    "build_task",
    "exact_match",
    "extract_answer",
    "load_rows",
    "math_verify_reward",
    "normalize_answer",
    "register_reward",
    "register_task",
    "weighted_rewards",
]

RewardFunc = Callable[..., list]

# ----------------------------------------------------------------------------------------------------------
# Reward functions
# ----------------------------------------------------------------------------------------------------------

REWARD_FUNCS: Registry[RewardFunc] = Registry(
    "reward function", hint="register your own with bandpo.training.tasks.register_reward"
)
"""Reward function name -> ``fn(prompts, completions, **columns) -> list[float]`` (``task.reward_funcs``)."""


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: register a reward function ``fn(prompts, completions, **columns) -> list[float]`` by name.

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    return REWARD_FUNCS.decorator(name, overwrite=overwrite)


@register_reward("exact_match")
def exact_match(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 where ``completion.strip() == answer``, else 0.0 (the ``addition`` task's reward)."""
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer, strict=True)]


@register_reward("answer_line")
def answer_line(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """+1.0 if the ``Answer:`` value (see :func:`extract_answer`) matches ``answer`` after
    :func:`normalize_answer`, else -1.0 (also when there is no ``Answer:`` line): the DAPO-Math scoring."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        got = extract_answer(c)
        out.append(1.0 if got is not None and normalize_answer(got) == normalize_answer(str(a)) else -1.0)
    return out


@register_reward("answer_number")
def answer_number(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """+1.0 if the last number on the ``Answer:`` line (see :func:`extract_answer`) equals the number ``answer``
    after :func:`bandpo.training.answers.canonical_number` (``1,000`` = ``1000``, ``$5`` = ``5``, ``5.00`` = ``5``),
    else -1.0 (also without an ``Answer:`` line or a number): the ``answer_line`` rule for numeric answers (GSM8K)."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        got, want = extract_answer(c), canonical_number(a)
        out.append(1.0 if got is not None and want is not None and canonical_number(got) == want else -1.0)
    return out


@register_reward("math_verify")
def math_verify_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 if Hugging Face's ``math-verify`` finds the completion's final answer equal to ``answer``, else 0.0
    (:func:`bandpo.training.verifiers.verify_math`; needs ``pip install math-verify``)."""
    return [1.0 if verify_math(c, str(a)).correct else 0.0 for c, a in zip(completions, answer, strict=True)]


@register_reward("answer_format")
def answer_format(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 if the completion has an ``Answer:`` line in its last 300 characters, else 0.0 (format only)."""
    return [1.0 if extract_answer(c) is not None else 0.0 for c in completions]


# ----------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """A prompt source plus its scoring.

    Attributes:
        name: registry key.
        rows: ``rows(step, n) -> list[dict]`` with at least ``"prompt"`` (str, or a list of chat messages) and
            ``"answer"``; a pure function of ``(step, n)`` for a given task object.
        reward_funcs: default reward function names (a config may override them).
        correct: ``correct(completions, answers) -> list[bool]``, the logged ``accuracy``.
        sft_rows: optional ``sft_rows(step, n) -> list[(prompt, target)]`` for the supervised warm-start.
        heldout_rows: optional ``heldout_rows() -> list[dict]``, the task's fixed held-out problems (``"prompt"``,
            ``"answer"``, ``"id"``, ``"source"``), never among ``rows`` or ``sft_rows`` (the ``heldout`` eval set).
        verifier: the verifier of ``bandpo.training.verifiers.VERIFIERS`` that scores its held-out evaluation.
        probes: optional ``probes(model, tokenizer) -> dict[str, float]``, called by the trainer at the start of every
            RL step with the current weights (before the rollout); it must not sample or train (deterministic
            forward passes only). Its values go into that step's ``metrics.csv`` row.
        rollout_stats: optional ``rollout_stats(completions, columns) -> dict[str, float]`` on this process's
            decoded rollout completions (N = prompts x G) and their prompt columns (each repeated G times); into the
            step's row, reduced over processes as a mean weighted by completions unless
            ``rollout_stat_reductions`` names another reduction (``"max"``, ``"min"``, ``"sum"``).
        rollout_stat_reductions: key -> reduction of ``bandpo.losses.reduce_metrics`` for ``rollout_stats`` keys.
    """

    name: str
    rows: Callable[[int, int], list]
    reward_funcs: tuple = ()
    correct: Callable[[Sequence[str], Sequence[str]], list] = field(default=lambda c, a: [False] * len(c))
    sft_rows: Optional[Callable[[int, int], list]] = None
    heldout_rows: Optional[Callable[[], list]] = None
    verifier: str = "dapo"
    probes: Optional[Callable[[Any, Any], dict]] = None
    rollout_stats: Optional[Callable[[Sequence[str], dict], dict]] = None
    rollout_stat_reductions: dict = field(default_factory=dict)


TaskFactory = Callable[..., Task]

TASKS: Registry[TaskFactory] = Registry("task", hint="register your own with bandpo.training.tasks.register_task")
"""Task name -> ``factory(cfg: TaskConfig, seed: int) -> Task`` (``task.name``)."""
SFT_TASKS: Registry[TaskFactory] = Registry("task with supervised targets")
"""The tasks whose rows come with supervised targets (usable with a warm-start); a subset of :data:`TASKS`."""


def register_task(name: str, *, sft: bool = False, overwrite: bool = False) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register ``factory(cfg: TaskConfig, seed: int) -> Task`` under ``name``; ``sft=True`` if the
    task provides ``sft_rows`` for the supervised warm-start.

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """

    def deco(factory: TaskFactory) -> TaskFactory:
        TASKS.register(name, factory, overwrite=overwrite)
        if sft:
            SFT_TASKS.register(name, factory, overwrite=overwrite)
        elif name in SFT_TASKS:  # overwritten by a task without targets
            SFT_TASKS.unregister(name)
        return factory

    return deco


def build_task(cfg: Any, seed: int) -> Task:
    """Build the task named by ``cfg.name`` (a :class:`bandpo.training.config.TaskConfig`) for a run seeded ``seed``.

    Raises:
        ValueError: unknown task name (the message lists the registered tasks).
    """
    return TASKS.get(cfg.name)(cfg, seed)


def _rng(seed: int, stream: int, step: int) -> random.Random:
    # One independent stream per (seed, purpose, step); int seeding is stable across Python versions.
    return random.Random((seed * 1_000_003 + stream) * 1_000_000_007 + step)


def _operand(rng: random.Random, lo_digits: int, hi_digits: int) -> int:
    d = rng.randint(lo_digits, hi_digits)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)


HELDOUT_SEED = 20_260_304
"""Seed of the addition task's held-out problems: fixed, so every run (any ``trainer.seed``) holds out the same."""


def _addition_heldout(lo: int, hi: int, size: int) -> list:
    """``size`` distinct (a, b) pairs drawn from the task's operand distribution with :data:`HELDOUT_SEED`."""
    n_operands = sum(10**d - (10 ** (d - 1) if d > 1 else 0) for d in range(lo, hi + 1))
    if size > n_operands**2 // 2:
        raise ValueError(f"config task.heldout_size = {size} is invalid: at most half of the {n_operands ** 2} "
                         f"possible problems ({n_operands ** 2 // 2}) may be held out")
    rng, seen, out = _rng(HELDOUT_SEED, 3, 0), set(), []
    while len(out) < size:
        pair = (_operand(rng, lo, hi), _operand(rng, lo, hi))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


@register_task("addition", sft=True)
def _addition(cfg: Any, seed: int) -> Task:
    lo, hi = cfg.min_digits, cfg.max_digits
    held = _addition_heldout(lo, hi, getattr(cfg, "heldout_size", 0))
    held_set = frozenset(held)

    def pairs(stream: int, step: int, n: int) -> list:
        rng = _rng(seed, stream, step)
        out: list = []
        while len(out) < n:  # held-out problems are redrawn (with none held out, the stream is unchanged)
            pair = (_operand(rng, lo, hi), _operand(rng, lo, hi))
            if pair not in held_set:
                out.append(pair)
        return out

    def rows(step: int, n: int) -> list:
        return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs(0, step, n)]

    def sft_rows(step: int, n: int) -> list:  # a separate stream: warm-start problems are not the RL problems
        return [(f"{a}+{b}=", str(a + b)) for a, b in pairs(1, step, n)]

    def correct(completions: Sequence[str], answers: Sequence[str]) -> list:
        return [c.strip() == str(a) for c, a in zip(completions, answers, strict=True)]

    def heldout_rows() -> list:
        return [{"prompt": f"{a}+{b}=", "answer": str(a + b), "id": str(i), "source": "addition"}
                for i, (a, b) in enumerate(held)]

    return Task("addition", rows, ("exact_match",), correct, sft_rows, heldout_rows if held else None, "exact")


def _get(row: dict, column: str) -> Any:
    """``row[column]``, where a dotted column (``reward_model.ground_truth``) reads into nested dicts."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"column {column!r} not found in a data row with keys {sorted(row)}")
        value = value[part]
    return value


def load_rows(path: str, split: str = "train", columns: Sequence[str] = ()) -> list:
    """Read all rows of a local ``.jsonl``/``.json``/``.parquet`` file or ``datasets.save_to_disk`` folder
    (through Hugging Face ``datasets``: :func:`bandpo.training.data.read_table`); a row without one of ``columns``
    is a ``ValueError`` naming the file and the row."""
    rows = read_table(path, split=split, what="task.path")
    for i, row in enumerate(rows):
        for column in columns:
            try:
                _get(row, column)
            except ValueError as e:
                raise ValueError(f"task.path {str(path)!r} row {i}: {e} (set task.prompt_column/answer_column)"
                                 ) from None
    return rows


@register_task("math_file")
def _math_file(cfg: Any, seed: int) -> Task:
    if cfg.path is None:
        raise ValueError("task 'math_file' needs task.path (a local .jsonl/.json/.parquet file or datasets folder)")
    raw = load_rows(cfg.path, cfg.split, columns=(cfg.prompt_column, cfg.answer_column))
    if not raw:
        raise ValueError(f"task.path {cfg.path!r} has no rows")
    from .data import row_answer

    template = TEMPLATES.find(cfg.template) or cfg.template
    data = []
    for i, r in enumerate(raw):
        prompt = _get(r, cfg.prompt_column)
        if isinstance(prompt, str):
            prompt = template.format(prompt=prompt)
        elif not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
            raise ValueError(f"column {cfg.prompt_column!r} must hold a string or a list of chat messages")
        data.append({"prompt": prompt, "answer": row_answer(r, cfg.answer_column, "task.path", cfg.path, i)})
    n_rows = len(data)

    @functools.lru_cache(maxsize=2)
    def order(epoch: int) -> list:
        perm = list(range(n_rows))
        _rng(seed, 2, epoch).shuffle(perm)
        return perm

    def rows(step: int, n: int) -> list:
        out = []
        for k in range(step * n, step * n + n):
            epoch, i = divmod(k, n_rows)
            out.append(data[order(epoch)[i]])
        return out

    def correct(completions: Sequence[str], answers: Sequence[str]) -> list:
        return [r > 0 for r in answer_line([""] * len(completions), completions, answers)]

    return Task("math_file", rows, ("answer_line",), correct, None)


def weighted_rewards(
    names: Sequence[str], weights: Optional[Sequence[float]], prompts: list, completions: list, columns: dict
) -> tuple:
    """Sum of weighted reward functions, plus each function's scores.

    Returns:
        ``(total, per_func)``: ``total[i] = Σ_k w_k fn_k(...)[i]`` (list of N floats) and a dict name -> list.
    Raises:
        ValueError: a function returned the wrong number of values or a non-finite value.
    """
    weights = list(weights) if weights is not None else [1.0] * len(names)
    total = [0.0] * len(completions)
    per_func = {}
    for name, w in zip(names, weights, strict=True):
        scores = [float(x) for x in REWARD_FUNCS.get(name)(prompts, completions, **columns)]
        if len(scores) != len(completions):
            raise ValueError(f"reward function {name!r} returned {len(scores)} values for {len(completions)} completions")
        if not all(math.isfinite(x) for x in scores):
            raise ValueError(f"reward function {name!r} returned a non-finite value")
        per_func[name] = scores
        total = [t + w * s for t, s in zip(total, scores)]
    return total, per_func

