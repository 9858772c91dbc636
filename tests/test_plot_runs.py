"""python -m bandpo.experiments.plot: run folders (any names) -> one figure.

Run: .venv/bin/python -m pytest -q tests/test_plot_runs.py
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from bandpo.experiments.plot import labels_for, main, moving_average, read_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _fake_run(folder, shift=0.0, with_eval=True):
    folder.mkdir(parents=True)
    rows = []
    for s in range(30):
        row = {"step": s, "reward/mean": 0.2 + shift + s / 100, "entropy": 0.8 - s / 100}
        for b in ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1"):
            row[f"bucket/{b}/clip_region_mean"] = 0.01 * (s % 3)
        rows.append(row)
    rows[5]["entropy"] = ""  # an empty cell (e.g. a skipped step) is read as nan
    _write(folder / "metrics.csv", rows[::-1])  # any row order
    if with_eval:
        _write(folder / "eval.csv", [{"step": s, "eval/heldout/mean@8": 0.1 + s / 100, "eval/heldout/pass@1": 0.1,
                                      "eval/heldout/pass@8": 0.3 + s / 100, "eval/heldout/maj@8": 0.2}
                                     for s in (0, 10, 20, 30)])


def test_reads_any_run_folders_and_draws_one_figure(tmp_path, capsys):
    _fake_run(tmp_path / "a" / "seed0")
    _fake_run(tmp_path / "b" / "seed0", shift=0.1)
    _fake_run(tmp_path / "no-eval", with_eval=False)
    run = read_run(tmp_path / "a" / "seed0")
    assert run["metrics"]["step"] == list(range(30))  # sorted by step
    assert math.isnan(run["metrics"]["entropy"][5]) and run["eval"]["eval/heldout/pass@8"][-1] == pytest.approx(0.6)
    assert read_run(tmp_path / "no-eval")["eval"] == {}
    paths = [tmp_path / "a" / "seed0", tmp_path / "b" / "seed0", tmp_path / "no-eval"]
    assert labels_for(paths) == ["a/seed0", "b/seed0", "no-eval"]  # clashing names get their parent
    out = tmp_path / "fig" / "runs.png"
    assert main([*map(str, paths), "--out", str(out), "--smooth", "5"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert f"wrote {out}" in capsys.readouterr().out
    # The committed reproduction runs (no eval.csv) plot too.
    committed = REPO / "paper_figures" / "data" / "runs" / "band_kl-seed0"
    if committed.is_dir():
        assert main([str(committed), "--out", str(tmp_path / "committed.pdf")]) == 0


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    _fake_run(tmp_path / "ok")
    assert main([str(tmp_path / "ok"), "--smooth", "0", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bandpo.experiments.plot: error: run folder {str(tmp_path / 'missing')!r} does not exist",
                   f"bandpo.experiments.plot: error: {str(tmp_path / 'empty')!r} is not a run folder: it has no "
                   "metrics.csv (written by python -m bandpo.training)",
                   "bandpo.experiments.plot: error: --smooth 0: must be >= 1"]
    assert not (tmp_path / "x.png").exists()


def test_moving_average_skips_missing_values():
    assert moving_average([1.0, 3.0, math.nan, 5.0], 2) == [1.0, 2.0, 2.0, 4.0]
    assert math.isnan(moving_average([math.nan, 1.0], 3)[0])


def test_pass_at_k_lines_differ_in_the_legend_too(tmp_path, monkeypatch):
    """pass@1, pass@4, pass@8 of one run share its colour and marker, so only the line style tells them apart; a
    legend handle of matplotlib's default length (2 font sizes) shows a marker on a short stroke, too short for a
    dash, and every k looked solid there. The legend's handles are long enough to show the dashes."""
    import matplotlib.pyplot as plt

    folder = tmp_path / "run"
    folder.mkdir()
    _write(folder / "metrics.csv", [{"step": s, "reward/mean": 0.1} for s in range(5)])
    _write(folder / "eval.csv", [{"step": s, "eval/heldout/pass@1": 0.1, "eval/heldout/pass@4": 0.2,
                                  "eval/heldout/pass@8": 0.3} for s in (0, 2, 4)])
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to inspect it
    assert main([str(folder), "--out", str(tmp_path / "f.png")]) == 0
    (ax,) = [a for a in kept[0].axes if a.get_title().startswith("eval pass@k")]
    legend = ax.get_legend()
    styles = {t.get_text().rsplit(" ", 1)[1]: h.get_linestyle() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert set(styles) == {"pass@1", "pass@4", "pass@8"} and len(set(styles.values())) == 3, styles
    assert legend.handlelength >= 4
