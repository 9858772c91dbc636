"""bandpo.experiments.stats: the paired bootstrap against cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandpo.experiments.stats import Interval, bootstrap_mean, compare, main, paired_differences, seed_mean


def test_constant_values_give_a_zero_width_interval():
    iv = bootstrap_mean([0.3] * 8)
    assert iv.low == iv.high
    assert iv.estimate == pytest.approx(0.3, abs=1e-15) and iv.low == pytest.approx(0.3, abs=1e-15)
    assert iv.n == 8 and not bootstrap_mean([0.0] * 5).excludes_zero()


def test_data_symmetric_about_c_give_an_interval_symmetric_about_c():
    c = 1.5
    x = [c - 2, c - 0.5, c - 0.25, c, c + 0.25, c + 0.5, c + 2]
    iv = bootstrap_mean(x, seed=3)
    assert iv.estimate == c
    assert iv.low < c < iv.high
    assert (c - iv.low) == pytest.approx(iv.high - c, rel=0, abs=1e-9)


def test_large_n_agrees_with_the_normal_interval():
    """n = 400 normal values: the percentile bootstrap of the mean is within 0.1 standard errors of
    mean +- 1.96 sigma/sqrt(n) (Monte-Carlo error of a 2.5 % quantile with 10 000 resamples is ~0.03 se; the
    skewness term is O(1/sqrt(n)))."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=400)
    se = x.std() / math.sqrt(x.size)  # the bootstrap's own variance of the mean uses ddof = 0
    iv = bootstrap_mean(x)
    z = 1.959963984540054
    assert iv.low == pytest.approx(x.mean() - z * se, abs=0.1 * se)
    assert iv.high == pytest.approx(x.mean() + z * se, abs=0.1 * se)


def test_deterministic_and_seed_dependent():
    x = [0.1, -0.4, 0.9, 0.3, 0.0, 0.7]
    assert bootstrap_mean(x) == bootstrap_mean(x)
    assert bootstrap_mean(x, seed=1) != bootstrap_mean(x, seed=2)
    # the values' order does not matter (sorted before resampling)
    assert bootstrap_mean(x) == bootstrap_mean(x[::-1])


def test_interval_contains_the_estimate_and_narrows_with_level():
    x = [0.1, -0.4, 0.9, 0.3, 0.0, 0.7, 0.2, 0.5]
    wide, narrow = bootstrap_mean(x, level=0.95), bootstrap_mean(x, level=0.5)
    assert wide.low <= narrow.low <= narrow.estimate <= narrow.high <= wide.high
    # a bootstrap mean is a mean of values: the interval stays within [min, max]
    assert min(x) <= wide.low and wide.high <= max(x)


def test_edge_cases_and_bad_input():
    assert math.isnan(bootstrap_mean([]).estimate) and bootstrap_mean([]).n == 0
    one = bootstrap_mean([2.0, math.nan])
    assert one.estimate == 2.0 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_mean([1, 2], resamples=9)
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([1, 2], level=95)


def _rows():
    rows = []
    for seed in range(6):
        rows.append({"method": "clip", "setting": "default", "seed": seed, "m": float(seed), "rate": 0.0})
        rows.append({"method": "band_kl", "setting": "default", "seed": seed, "m": seed + 0.5,
                     "rate": float(seed % 2)})
    rows.append({"method": "band_kl", "setting": "delta=0.1", "seed": 0, "m": 100.0, "rate": 1.0})
    rows.append({"method": "dcpo", "setting": "default", "seed": 9, "m": 1.0, "rate": 0.0})  # no clip pair
    return rows


def test_paired_differences_pair_by_seed():
    rows = _rows()
    d = paired_differences(rows, "m", {"method": "band_kl", "setting": "default"})
    assert d == {s: 0.5 for s in range(6)}
    assert paired_differences(rows, "m", {"method": "dcpo"}) == {}
    # a rate: the mean paired difference is the difference of the rates
    (r,) = compare(rows, ["rate"], [{"method": "band_kl", "setting": "default"}])
    assert r["diff"] == pytest.approx(0.5) and r["n"] == 6
    assert r["candidate_mean"] - r["baseline_mean"] == pytest.approx(r["diff"])
    assert 0.0 <= r["low"] <= 0.5 <= r["high"] <= 1.0
    (m,) = compare(rows, ["m"], [{"method": "band_kl", "setting": "default"}])
    assert m["low"] == m["high"] == pytest.approx(0.5)


def test_ambiguous_selection_and_unknown_metric_are_errors():
    rows = _rows()
    with pytest.raises(ValueError, match="two rows for seed 0"):
        paired_differences(rows, "m", {"method": "band_kl"})
    with pytest.raises(ValueError, match="no column 'nope'"):
        paired_differences(rows, "nope", {"method": "band_kl", "setting": "default"})
    iv = seed_mean(rows, "m", {"method": "clip"})
    assert isinstance(iv, Interval) and iv.estimate == pytest.approx(2.5)


def test_cli_prints_the_table(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    cols = ["grid", "run", "method", "setting", "seed", "steps", "max_steps", "eval_set", "eval_mean"]
    lines = [",".join(cols)]
    for seed in range(3):
        lines.append(f"main,clip,clip,default,{seed},5,5,heldout,{0.1 * seed}")
        lines.append(f"main,band_kl,band_kl,default,{seed},5,5,heldout,{0.1 * seed + 0.25}")
    path.write_text("\n".join(lines) + "\n")
    assert main([str(path), "--metrics", "eval_mean"]) == 0
    out = capsys.readouterr().out
    assert "band_kl" in out and "0.2500" in out
    assert main([str(tmp_path / "missing.csv")]) == 2


def test_markdown_table_rows_and_baselines():
    from bandpo.experiments.stats import markdown_table

    rows = [{"grid": g, "method": m, "setting": st, "seed": s, "x": v + s, "t_step": 10.0 * v}
            for (g, m, st, v) in (("main", "clip", "default", 0.0), ("main", "band_kl", "default", 0.5),
                                  ("rare", "clip", "tail=0.005", 2.0), ("rare", "band_kl", "tail=0.005", 1.0))
            for s in (0, 1)]
    lines = markdown_table(rows, ["x", "t_step"]).splitlines()
    assert lines[0] == "| method | setting | n | x | t_step |"
    assert lines[2] == "| clip (mean) | default | 2 | 0.500 | 0.0 |"
    assert lines[3] == "| clip (mean) | tail=0.005 | 2 | 2.500 | 20.0 |"
    # constant paired differences: zero-width intervals; each candidate against the clip runs of its own start
    assert lines[4] == "| band_kl | default | 2 | +0.500 [+0.500, +0.500] | +5.0 [+5.0, +5.0] |"
    assert lines[5] == "| band_kl | tail=0.005 | 2 | -1.000 [-1.000, -1.000] | -10.0 [-10.0, -10.0] |"
    assert len(lines) == 6
    from bandpo.experiments.stats import candidates

    assert candidates(rows) == [{"method": "band_kl", "setting": "default"},
                                {"method": "band_kl", "setting": "tail=0.005"}]  # clip's own runs are baselines
    assert candidates(rows, "band_kl") == [{"method": "clip", "setting": "default"},
                                           {"method": "clip", "setting": "tail=0.005"}]
    only_main = markdown_table(rows, ["x"], grids=["main"]).splitlines()
    assert len(only_main) == 4 and "tail" not in "".join(only_main)
    vs_band = markdown_table(rows, ["x"], grids=["main"], baseline="band_kl", methods=["clip"]).splitlines()
    assert vs_band[2:] == ["| band_kl (mean) | default | 2 | 1.000 |", "| clip | default | 2 | -0.500 [-0.500, -0.500] |"]


def test_same_setting_pairs_within_a_setting():
    from bandpo.experiments.stats import baseline_of, markdown_table

    assert baseline_of({"method": "band_kl", "setting": "lr=x4"}, same_setting=True) == {"method": "clip",
                                                                                         "setting": "lr=x4"}
    rows = [{"grid": "lr", "method": m, "setting": st, "seed": s, "x": v}
            for (m, st, v) in (("clip", "default", 0.0), ("clip", "lr=x4", 3.0), ("band_kl", "lr=x4", 1.0))
            for s in (0, 1)]
    lines = markdown_table(rows, ["x"], methods=["band_kl"], same_setting=True).splitlines()
    assert lines[2:] == ["| clip (mean) | lr=x4 | 2 | 3.000 |", "| band_kl | lr=x4 | 2 | -2.000 [-2.000, -2.000] |"]
    lines = markdown_table(rows, ["x"], methods=["band_kl"]).splitlines()
    assert lines[3] == "| band_kl | lr=x4 | 2 | +1.000 [+1.000, +1.000] |"


def test_render_report_refills_blocks_and_is_idempotent(tmp_path):
    from bandpo.experiments.stats import main, markdown_table, render_report

    rows = [{"grid": "main", "method": m, "setting": "default", "seed": s, "x": v + s}
            for (m, v) in (("clip", 0.0), ("band_kl", 0.25)) for s in (0, 1, 2)]
    text = "intro\n<!-- stats --grid main --metrics x -->\nstale\n<!-- /stats -->\noutro\n"
    out = render_report(text, rows)
    assert out == ("intro\n<!-- stats --grid main --metrics x -->\n" + markdown_table(rows, ["x"], ["main"])
                   + "\n<!-- /stats -->\noutro\n")
    assert render_report(out, rows) == out and "+0.250 [+0.250, +0.250]" in out
    # empty blocks are filled and the text between blocks is kept
    two = "a\n<!-- stats --metrics x -->\n<!-- /stats -->\nkeep me\n<!-- stats --metrics x -->\n<!-- /stats -->\nz\n"
    filled = render_report(two, rows)
    table = markdown_table(rows, ["x"])
    assert filled == two.replace("-->\n<!-- /stats", "-->\n" + table + "\n<!-- /stats")
    assert render_report(filled, rows) == filled
    with pytest.raises(ValueError, match="bad options in report block"):
        render_report("<!-- stats --nope -->\nx\n<!-- /stats -->", rows)
    summary = tmp_path / "summary.csv"
    summary.write_text("grid,method,setting,seed,x\n" + "".join(f"main,{r['method']},default,{r['seed']},{r['x']}\n"
                                                               for r in rows))
    report = tmp_path / "r.md"
    report.write_text(text)
    assert main([str(summary), "--refresh", str(report)]) == 0
    assert report.read_text() == render_report(text, rows)
