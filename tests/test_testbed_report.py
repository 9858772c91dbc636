"""docs/testbed-report.md against the committed testbed data: its tables are what the data gives, its figures exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "testbed-report.md"
SUMMARY = ROOT / "paper_figures" / "data" / "testbed" / "summary.csv"


def test_report_tables_match_the_committed_data():
    from bandpo.experiments.stats import render_report
    from bandpo.experiments.testbed import read_summary

    text = REPORT.read_text()
    assert text.count("<!-- stats ") == text.count("<!-- /stats -->") >= 8
    rendered = render_report(text, read_summary(SUMMARY))
    if rendered != text:
        changed = [a for a, b in zip(text.splitlines(), rendered.splitlines()) if a != b][:3]
        raise AssertionError("docs/testbed-report.md is stale (python -m bandpo.experiments.stats --refresh "
                             f"docs/testbed-report.md); first differing lines: {changed}")


def test_report_figures_exist_and_every_run_is_in_the_summary():
    text = REPORT.read_text()
    for img in re.findall(r"\]\((img/[^)]+\.png)\)", text):
        assert (REPORT.parent / img).is_file(), img
    from bandpo.experiments.testbed import SEEDS, read_summary, select

    rows = read_summary(SUMMARY)
    have = {(r["grid"], r["method"], r["setting"], int(r["seed"])) for r in rows}
    want = {(v.grid, v.method, v.setting, s) for v in select(["all"]) for s in SEEDS}
    assert want <= have, sorted(want - have)[:5]
    assert all(r["steps"] == r["max_steps"] == 150 for r in rows)
