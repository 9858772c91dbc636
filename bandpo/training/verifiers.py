"""Verifiers: is a completion's final answer correct, and which answer did it give (for majority voting)?

A verifier is ``fn(completion: str, answer: str) -> Verdict``: ``Verdict.correct`` says whether the completion's
final answer equals the ground truth ``answer``; ``Verdict.key`` is the completion's extracted answer in a
canonical form (None when it gave none), so that completions giving the same answer have equal keys (maj@k votes
on keys, ``bandpo.training.evaluation``). Registered in ``VERIFIERS`` (``eval.sets[].verifier`` names one):

* ``exact``: the whole completion, stripped, equals the answer (the built-in ``addition`` task).
* ``dapo``: the DAPO-Math rule the paper trains and evaluates with (arXiv 2503.14476; arXiv 2603.04918,
  ``docs/paper-notes.md``): the value after the last ``Answer:`` in the last 300 characters (the prompt asks for it
  on the last line), compared with the ground truth after normalisation
  (:func:`bandpo.training.answers.normalize_answer`). The ``answer_line`` reward is the same rule as ±1.
* ``math_verify``: Hugging Face's ``math-verify`` (``pip install math-verify``): parses the LaTeX/expression answers
  of both sides (``\\boxed{}`` first) and compares them symbolically (``1/2`` equals ``0.5`` and ``\\frac12``).
  Optional: imported on first use, with a one-line error naming the package when it is missing. The
  ``math_verify`` reward is the same check as 1/0.

* ``number``: the ``dapo`` rule for numeric answers (GSM8K): the last number on the ``Answer:`` line equals the
  ground truth as numbers (``1,000`` = ``1000``, ``$5`` = ``5``, ``5.00`` = ``5``); the ``answer_number`` reward
  is the same check as ±1.

Every built-in verifier refuses, with a one-line ``TypeError`` naming the argument, a completion that is not a
string and an answer that is None (or neither text nor a number), and, with a ``ValueError``, a blank answer.

Register another with ``VERIFIERS.register(name, fn)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from ..registry import Registry
from .answers import canonical_number, extract_answer, normalize_answer

__all__ = ["VERIFIERS", "Verdict", "get_verifier", "verify_dapo", "verify_exact", "verify_math", "verify_number"]


class Verdict(NamedTuple):
    """The outcome of checking one completion."""

    correct: bool
    """The completion's final answer equals the ground truth."""
    key: Optional[str]
    """The extracted answer in canonical form (equal keys = same answer); None when there is no answer."""


Verifier = Callable[[str, str], Verdict]

VERIFIERS: Registry[Verifier] = Registry("verifier", hint="register your own with bandpo.training.verifiers.VERIFIERS.register")
"""Verifier name -> ``fn(completion, answer) -> Verdict``."""


def _check_args(completion: Any, answer: Any, verifier: str) -> None:
    """Refuse what no verifier can score, naming the argument: a completion that is not text (``TypeError``), a
    missing ground truth (None: ``TypeError``; a non-text, non-number: ``TypeError``; blank: ``ValueError``).
    Otherwise ``None`` would be scored as the text "None" and an empty answer would match an empty completion."""
    if not isinstance(completion, str):
        raise TypeError(f"verifier {verifier!r}: completion must be a string (the generated text), got "
                        f"{type(completion).__name__}")
    if answer is None or isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TypeError(f"verifier {verifier!r}: answer must be the ground truth as a string (or a number), got "
                        f"{type(answer).__name__}")
    if not str(answer).strip():
        raise ValueError(f"verifier {verifier!r}: answer is empty; a ground truth is needed to score a completion")


def verify_exact(completion: str, answer: str) -> Verdict:
    """The stripped completion equals the stripped answer; key = the stripped completion (None if empty).

    Raises:
        TypeError, ValueError: a completion that is not text or a missing or empty answer (all verifiers)."""
    _check_args(completion, answer, "exact")
    got = completion.strip()
    return Verdict(got == str(answer).strip(), got or None)


def verify_dapo(completion: str, answer: str) -> Verdict:
    """The DAPO-Math ``Answer:`` rule: the normalised value after the last ``Answer:`` in the last 300 characters
    equals the normalised ground truth. Key = that normalised value (None without an ``Answer:`` line)."""
    _check_args(completion, answer, "dapo")
    got = extract_answer(completion)
    if got is None:
        return Verdict(False, None)
    key = normalize_answer(got)
    return Verdict(key == normalize_answer(str(answer)), key or None)


def verify_number(completion: str, answer: str) -> Verdict:
    """The ``dapo`` rule for numeric answers (GSM8K): the last number on the last ``Answer:`` line in the last 300
    characters equals the number ``answer``, both by :func:`bandpo.training.answers.canonical_number` (``1,000`` =
    ``1000``, ``$5`` = ``5``, ``5.00`` = ``5``). Key = that canonical number (None without one)."""
    _check_args(completion, answer, "number")
    got = extract_answer(completion)
    key = canonical_number(got) if got is not None else None
    if key is None:
        return Verdict(False, None)
    return Verdict(key == canonical_number(answer), key)


@dataclass
class _MathVerify:
    """``math_verify.parse``/``verify``, imported once; timeouts (SIGALRM based) only in the main thread."""

    parse: Any = None
    verify: Any = None

    def load(self) -> "_MathVerify":
        if self.parse is None:
            try:
                from math_verify import parse, verify  # type: ignore[import-not-found]
            except ImportError:
                raise ValueError("the 'math_verify' verifier needs Hugging Face's math-verify: "
                                 "pip install math-verify (it is in bandpo's 'train' extra)") from None
            self.parse, self.verify = parse, verify
        return self


_MATH_VERIFY = _MathVerify()


def verify_math(completion: str, answer: str) -> Verdict:
    """``math-verify``: parse the gold answer and the completion's final answer (a ``\\boxed{}`` or the last
    expression), compare symbolically. Key = the canonical string of the parsed answer (None if none parsed)."""
    _check_args(completion, answer, "math_verify")
    mv = _MATH_VERIFY.load()
    main = threading.current_thread() is threading.main_thread()
    kw_parse = {} if main else {"parsing_timeout": None}
    kw_verify = {} if main else {"timeout_seconds": None}
    gold_text = str(answer).strip()
    if "$" not in gold_text and "\\boxed" not in gold_text:  # a bare ground truth: read it as inline math
        gold_text = f"${gold_text}$"
    gold = mv.parse(gold_text, **kw_parse)
    pred = mv.parse(completion, **kw_parse)
    if not pred:
        return Verdict(False, None)
    ok = bool(gold) and bool(mv.verify(gold, pred, **kw_verify))
    return Verdict(ok, str(pred[0]))


VERIFIERS.register("exact", verify_exact)
VERIFIERS.register("dapo", verify_dapo)
VERIFIERS.register("math_verify", verify_math)
VERIFIERS.register("number", verify_number)


def get_verifier(name: str) -> Verifier:
    """The verifier registered as ``name`` (``ValueError`` listing the known names otherwise)."""
    return VERIFIERS.get(name)
