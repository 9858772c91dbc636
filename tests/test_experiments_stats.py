"""bandpo.experiments.stats: the paired intervals, tables, censoring columns and a report's multiplicity block against
cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandpo.experiments.stats import (Interval, bootstrap_mean, compare, main, paired_differences, seed_mean,
                                      t_interval)


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
    values = [r["m"] for r in rows if r["method"] == "clip"]
    assert seed_mean(rows, "m", {"method": "clip"}, interval="t") == t_interval(values)
    with pytest.raises(ValueError, match="interval must be one of"):
        seed_mean(rows, "m", {"method": "clip"}, interval="wald")


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
    caption, blank, *lines = markdown_table(rows, ["x", "t_step"]).splitlines()
    assert blank == "" and caption == ("*clip (mean): plain mean over seeds; other rows: mean over seeds of the "
                                       "paired difference row minus clip (same seed) [95 % Student t interval], "
                                       "unadjusted (exploratory).*")
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
    only_main = markdown_table(rows, ["x"], grids=["main"]).splitlines()[2:]
    assert len(only_main) == 4 and "tail" not in "".join(only_main)
    vs_band = markdown_table(rows, ["x"], grids=["main"], baseline="band_kl", methods=["clip"]).splitlines()[2:]
    assert vs_band[2:] == ["| band_kl (mean) | default | 2 | 1.000 |", "| clip | default | 2 | -0.500 [-0.500, -0.500] |"]


def test_same_setting_pairs_within_a_setting():
    from bandpo.experiments.stats import baseline_of, markdown_table

    assert baseline_of({"method": "band_kl", "setting": "lr=x4"}, same_setting=True) == {"method": "clip",
                                                                                         "setting": "lr=x4"}
    rows = [{"grid": "lr", "method": m, "setting": st, "seed": s, "x": v}
            for (m, st, v) in (("clip", "default", 0.0), ("clip", "lr=x4", 3.0), ("band_kl", "lr=x4", 1.0))
            for s in (0, 1)]
    lines = markdown_table(rows, ["x"], methods=["band_kl"], same_setting=True).splitlines()[2:]
    assert lines[2:] == ["| clip (mean) | lr=x4 | 2 | 3.000 |", "| band_kl | lr=x4 | 2 | -2.000 [-2.000, -2.000] |"]
    lines = markdown_table(rows, ["x"], methods=["band_kl"]).splitlines()[2:]
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


def test_markdown_table_interval_option():
    from bandpo.experiments.stats import bca_mean, interval_of, markdown_table, t_interval

    x = {0: 0.3, 1: -0.1, 2: 0.8, 3: 0.2, 4: 0.05, 5: 0.6}
    rows = [{"grid": "main", "method": m, "setting": "default", "seed": s, "x": v}
            for s, d in x.items() for (m, v) in (("clip", 1.0 + s), ("band_kl", 1.0 + s + d))]
    d = list(x.values())
    for interval, iv, words in (("t", t_interval(d), "[95 % Student t interval]"),
                                ("bca", bca_mean(d), "[95 % BCa bootstrap interval, 10,000 resamples]"),
                                ("percentile", bootstrap_mean(d),
                                 "[95 % percentile bootstrap interval, 10,000 resamples]")):
        caption, _, *lines = markdown_table(rows, ["x"], interval=interval).splitlines()
        assert words in caption
        assert lines[-1] == f"| band_kl | default | 6 | {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] |"
        assert interval_of(d, interval) == iv
    assert t_interval(d).high - t_interval(d).low > bootstrap_mean(d).high - bootstrap_mean(d).low  # n = 6: wider
    with pytest.raises(ValueError, match="interval must be one of t, bca, percentile, got 'normal'"):
        markdown_table(rows, ["x"], interval="normal")


def _censored_rows(max_steps=(150, 150)):
    # clip discovers at 40, never (150), 90, never (150); band_kl at 60, 30, never, never
    out = []
    for (m, steps, tau) in (("clip", (40, None, 90, None), max_steps[0]),
                            ("band_kl", (60, 30, None, None), max_steps[1])):
        for seed, t in enumerate(steps):
            out.append({"grid": "rare", "method": m, "setting": "default", "seed": seed, "max_steps": tau,
                        "discovery_step": float(tau if t is None else t), "discovered": float(t is not None)})
    return out


def test_censored_discovery_step_is_a_restricted_mean_with_a_censored_count():
    from bandpo.experiments.stats import markdown_table

    caption, _, head, _, base, cand = markdown_table(_censored_rows(), ["discovery_step", "discovered"]).splitlines()
    assert head == "| method | setting | n | restricted mean discovery step (τ = 150) | censored | discovered |"
    assert base == "| clip (mean) | default | 4 | 107.5 | 2/4 | 0.500 |"  # (40 + 150 + 90 + 150) / 4
    d, r = t_interval([20, -120, 60, 0]), t_interval([0, 1, -1, 0])  # r: 3.182 x sqrt(2/3) / 2 = 1.299
    assert cand == (f"| band_kl | default | 4 | {d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}] | 2/4 | "
                    "+0.000 [-1.299, +1.299] |")
    assert r.high == pytest.approx(1.299, abs=5e-4)
    assert ("Restricted mean discovery step: mean of min(discovery step, τ = 150), a run without the event counting "
            "as 150 (censored); `censored`: the row's runs censored (a difference row: the candidate's).*") in caption
    # the mean of min(step, tau) is the Kaplan-Meier restricted mean when all censoring is at tau
    from bandpo.experiments.stats import rmst

    assert rmst([40, 150, 90, 150], [1, 0, 1, 0], 150).estimate == pytest.approx(107.5, abs=1e-12)
    with pytest.raises(ValueError, match=r"runs of different lengths \(max_steps \[100.0, 150.0\]\) in one table"):
        markdown_table(_censored_rows((150, 100)), ["discovery_step"])
    # without the event column nothing is claimed about censoring
    plain = [{k: v for k, v in r.items() if k != "discovered"} for r in _censored_rows()]
    assert markdown_table(plain, ["discovery_step"]).splitlines()[2] == "| method | setting | n | discovery_step |"


def _family_rows():
    # band_kl - clip on x: 1, 2, ..., 10 (all 2^10 patterns: p = 2/1024); on y: 0; dcpo - clip on x: +-1 .. +-5 (p = 1)
    rows = []
    for s in range(10):
        rows.append({"grid": "main", "method": "clip", "setting": "default", "seed": s, "x": 0.0, "y": 1.0})
        rows.append({"grid": "main", "method": "band_kl", "setting": "default", "seed": s, "x": s + 1.0, "y": 1.0})
        rows.append({"grid": "main", "method": "dcpo", "setting": "default", "seed": s,
                     "x": (s // 2 + 1.0) * (-1) ** s, "y": 1.0})
    return rows


def test_family_block_of_a_report():
    from bandpo.experiments.stats import render_report

    text = ("<!-- stats --metrics x y -->\n<!-- /stats -->\n<!-- stats --methods band_kl --metrics x -->\n"
            "<!-- /stats -->\n<!-- family -->\nstale\n<!-- /family -->\n")
    out = render_report(text, _family_rows())
    block = out[out.index("<!-- family -->\n") + 16:out.index("<!-- /family -->")].splitlines()
    assert block[0].startswith("*Multiplicity: each of the m = 4 difference cells of this page's tables (a repeated "
                               "cell counted once) is one exploratory test")
    assert "(all 2^n sign patterns for 4; for a 0/1 outcome it is the exact McNemar test)" in block[0]
    assert "n = 10: 0.00195" in block[0]
    # 4 tests, p = 2/1024, 1, 1, 1: Holm 4 x 2/1024 = 0.0078125, BH the same
    assert block[2:5] == ["| method | setting | vs | metric | n | diff | p | Holm p | BH q |", "|" + "---|" * 9,
                          "| band_kl | default | clip default | x | 10 | +5.500 | 0.00195 | 0.00781 | 0.00781 |"]
    assert block[-1] == ("4 tests; 1 with unadjusted p < 0.05; 1 survive Holm at 0.05: band_kl default x; 1 with BH q "
                         "≤ 0.05 (smallest Holm p 0.00781, smallest BH q 0.00781).")
    assert render_report(out, _family_rows()) == out  # idempotent
    # nothing below 0.05: no table, only the caption and the summary
    none = render_report("<!-- stats --methods dcpo --metrics x y -->\n<!-- /stats -->\n<!-- family -->\n"
                         "<!-- /family -->", _family_rows())
    assert none.endswith("\n\n2 tests; 0 with unadjusted p < 0.05; 0 survive Holm at 0.05; 0 with BH q ≤ 0.05 "
                         "(smallest Holm p 1, smallest BH q 1).\n<!-- /family -->")


def test_cli_interval_option(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    path.write_text("grid,method,setting,seed,x\n" + "".join(f"main,{r['method']},default,{r['seed']},{r['x']}\n"
                                                             for r in _family_rows()))
    assert main([str(path), "--metrics", "x", "--interval", "percentile"]) == 0
    assert "95% percentile bootstrap interval, 10000 resamples" in capsys.readouterr().out
    assert main([str(path), "--metrics", "x", "--markdown"]) == 0
    assert "[95 % Student t interval]" in capsys.readouterr().out
    report = tmp_path / "r.md"
    report.write_text("<!-- stats --metrics x -->\n<!-- /stats -->\n")
    assert main([str(path), "--refresh", str(report), "--interval", "bca"]) == 2
    err = capsys.readouterr().err
    assert "--interval applies to printed tables; a report block takes it among its own options" in err
    report.write_text("<!-- stats --metrics x --interval bca -->\n<!-- /stats -->\n")
    assert main([str(path), "--refresh", str(report)]) == 0 and "BCa bootstrap interval" in report.read_text()
