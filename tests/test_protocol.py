"""The pre-registered analysis (bandpo.experiments.protocol) on synthetic summary rows with known answers."""

from __future__ import annotations

import pytest

from bandpo.experiments.protocol import ARMS, N_SEEDS, analyze
from bandpo.experiments.stats import mcnemar
from bandpo.experiments.testbed import GRIDS


def _rows(found: dict, n: int = 12):
    rows = []
    for m in ARMS:
        for s in range(n):
            f = found[m](s)
            rows.append({"grid": "confirm", "method": m, "setting": "tail=0.005", "seed": s, "discovered": float(f),
                         "discovery_step": 40.0 + s if f else 150.0, "max_steps": 150,
                         "eval_mean": (480 + s) / 800 if f else 1 / 800, "drift_log_unsampled": 0.01 * (s % 3 - 1)})
    return rows


def test_primary_and_holm_family():
    found = {"clip": lambda s: s < 3, "band_kl": lambda s: s < 2, "band_kl_upper_rare": lambda s: s < 9}
    res = analyze(_rows(found))
    pr = res["primary"]
    assert res["seeds"] == 12 and res["planned"] == N_SEEDS == 96
    assert (pr["new_only"], pr["clip_only"]) == (6, 0)
    assert pr["p"] == mcnemar([1.0] * 9 + [0.0] * 3, [1.0] * 3 + [0.0] * 9).p_value == 2 / 64 and pr["reject"]
    assert pr["estimate"] == pytest.approx(0.5)
    names = [s["name"][:2] for s in res["secondary"]]
    assert names == ["S1", "S2", "S3", "S4", "S2", "S3", "S4"]
    assert all(s["p_holm"] >= s["p"] for s in res["secondary"])
    assert [g.method for g in GRIDS["confirm"]] == list(ARMS)
    with pytest.raises(ValueError, match="no seed"):
        analyze([])


def test_markdown_and_the_report_block(tmp_path):
    from bandpo.experiments.protocol import markdown, render_protocol
    from bandpo.experiments.testbed import SUMMARY_COLUMNS

    found = {"clip": lambda s: s < 3, "band_kl": lambda s: s < 2, "band_kl_upper_rare": lambda s: s < 9}
    res = analyze(_rows(found))
    md = markdown(res)
    assert "| tail discovered by step 150 | 0.750 | 0.250 | +0.500 [" in md
    assert "| 6 / 0 | 0.031 | **rejected** |" in md and md.count("\n| S") == 7
    # the block: refilled from a summary.csv under root, idempotent, a missing file named
    import csv

    with open(tmp_path / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, restval="0")
        w.writeheader()
        for r in _rows(found):
            w.writerow({**r, "run": r["method"], "steps": 150})
    text = "# r\n<!-- protocol summary.csv -->\nold\n<!-- /protocol -->\ntail\n"
    once = render_protocol(text, tmp_path)
    assert "old" not in once and "**rejected**" in once and once.endswith("<!-- /protocol -->\ntail\n")
    assert render_protocol(once, tmp_path) == once
    with pytest.raises(ValueError, match="no file"):
        render_protocol(text, tmp_path / "nowhere")
