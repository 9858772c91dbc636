"""theory/REPORT.md is what `python -m bandpo_theory.report` writes today.

    .venv/bin/python -m pytest -q tests/test_theory_report.py

The report records the sympy version that wrote it. With that version the committed file must equal a fresh
build byte for byte (regenerate with `python -m bandpo_theory.report` after changing theory/); with another sympy
version (a newer release may print LaTeX differently) every section must still be present and the check
summary must still be all "pass".
"""

from __future__ import annotations

import re

import sympy as sp

from bandpo_theory import report


def test_committed_report_is_fresh():
    committed = report.REPORT_PATH.read_text()
    fresh = report.build_report()
    version = re.search(r"with sympy ([^;\s]+);", committed).group(1)
    for heading in report.SECTIONS:
        assert heading in fresh and heading in committed, heading
    assert "| FAIL |" not in fresh and "FAILS" not in fresh and "DISAGREE" not in fresh
    if version == sp.__version__:
        assert committed == fresh, "theory/REPORT.md is stale: run `python -m bandpo_theory.report`"
