"""The README's Python snippets run and print exactly what the README says they print.

Convention in README.md: a ```python block immediately followed by a ```text block; the text block is the
snippet's stdout. Blocks are executed in one namespace, in order, from the repository root.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PAIR = re.compile(r"```python\n(.*?)```\s*\n```text\n(.*?)```", re.S)


def _pairs():
    return PAIR.findall(README.read_text())


def test_readme_has_checked_snippets():
    assert len(_pairs()) >= 2


def test_readme_snippets_print_what_the_readme_says():
    import bandpo

    before = set(bandpo.list_divergences())
    try:
        _run_snippets()
    finally:  # the README registers a divergence: leave the registry as other tests expect it
        for name in set(bandpo.list_divergences()) - before:
            bandpo.unregister_divergence(name)


def _run_snippets():
    namespace: dict = {}
    for i, (code, expected) in enumerate(_pairs()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README snippet {i}", "exec"), namespace)  # noqa: S102
        got = [line.rstrip() for line in out.getvalue().strip().splitlines()]
        want = [line.rstrip() for line in expected.strip().splitlines()]
        if got != want:
            pytest.fail(f"README snippet {i} printed:\n" + "\n".join(got) + "\nREADME says:\n" + "\n".join(want))
