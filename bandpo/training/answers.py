"""Answer text: the value a completion gives, and canonical forms of answers for comparing them.

Pure string functions shared by the reward functions (``bandpo.training.tasks``), the verifiers
(``bandpo.training.verifiers``) and the data tooling (``bandpo.training.data``); this module imports nothing of the
package, so each of those imports it and none of them imports another to reach it.

* :func:`extract_answer`: the value after the last ``Answer:`` in a completion's tail (the DAPO-Math rule).
* :func:`normalize_answer`: a small Minerva-style normaliser for final answers (LaTeX wrappers, spacing, ``$``).
* :func:`canonical_number`: the last number in a text, in one canonical decimal form (GSM8K's answers).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

__all__ = ["canonical_number", "extract_answer", "normalize_answer"]

_ANSWER_RE = re.compile(r"Answer\s*:\s*([^\n]*)")


def extract_answer(text: str, *, tail_chars: int = 300) -> Optional[str]:
    """The value after the last ``Answer:`` in the last ``tail_chars`` characters, or None if there is none."""
    found = _ANSWER_RE.findall(text[-tail_chars:])
    return found[-1].strip() if found else None


def _unwrap(s: str, command: str) -> str:
    """Replace ``\\command{x}`` by ``x`` (balanced braces)."""
    key = "\\" + command + "{"
    while (i := s.find(key)) >= 0:
        depth, j = 1, i + len(key)
        while j < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            j += 1
        if depth:  # unbalanced: leave as is
            break
        s = s[:i] + s[i + len(key) : j - 1] + s[j:]
    return s


def normalize_answer(s: str) -> str:
    """A small Minerva-style normaliser for final answers (written for this package).

    Unwraps ``\\boxed{}``/``\\text{}``/``\\mathrm{}``, drops ``$``, ``\\left``/``\\right``, LaTeX spacing,
    ``^\\circ``, a trailing period and all whitespace, maps ``\\dfrac``/``\\tfrac`` to ``\\frac``, and removes
    thousands separators from plain integers (``1,000`` -> ``1000``).

    Examples:
        >>> normalize_answer("$\\\\boxed{1,000}$."), normalize_answer("\\\\dfrac{1}{2}")
        ('1000', '\\\\frac{1}{2}')
    """
    s = s.strip()
    for cmd in ("boxed", "text", "textbf", "mathrm", "mbox"):
        s = _unwrap(s, cmd)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", "")):
        s = s.replace(old, new)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("$", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


# ----------------------------------------------------------------------------------------------------------
# Numbers (GSM8K: grade-school maths word problems, arXiv 2110.14168)
# ----------------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_LATEX_NOISE = ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "\\ ")


def canonical_number(text: Any) -> Optional[str]:
    """The last number written in ``text``, in one canonical decimal form, or None if ``text`` holds no number.

    Thousands separators (``1,000``), currency and percent signs (``$5``, ``\\$5``, ``5%``), ``\\boxed{}`` /
    ``\\text{}`` wrappers, units and words around the number are ignored; trailing zeros go (``5.00`` -> ``5``,
    ``0.50`` -> ``0.5``, ``-0`` -> ``0``, ``+7`` -> ``7``), never rounding. The *last* number counts, as in the usual
    GSM8K answer extraction (``"5 + 3 = 8"`` -> ``8``). Fractions are not evaluated (``3/4`` -> ``4``): GSM8K's
    answers are integers (arXiv 2110.14168).

    Examples:
        >>> [canonical_number(t) for t in ("1,000", "$5", "5.00", "\\boxed{72} apples", "-3.50", "none")]
        ['1000', '5', '5', '72', '-3.5', None]
    """
    s = str(text)
    for cmd in ("boxed", "text", "textbf", "mathrm", "mbox"):
        if "\\" + cmd + "{" in s:
            s = normalize_answer(s)
            break
    for noise in _LATEX_NOISE:
        s = s.replace(noise, " ")
    s = _THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), s)
    found = _NUMBER_RE.findall(s)
    if not found:
        return None
    try:
        value = Decimal(found[-1].rstrip(".") or "0")
    except InvalidOperation:  # pragma: no cover - the regex only matches valid decimals
        return None
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "+0") else out
