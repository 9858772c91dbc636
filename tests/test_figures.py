"""Every paper figure script runs headless on small settings into a temporary folder and writes a real PNG.

The scripts are imported and their ``main(argv)`` called in this process (one Python start-up for all).
Scripts that read data (training curves, solver benchmark) are run on small synthetic data written here
when the real data is missing, and on the real data when it is there. Besides "a PNG was written", the
figures' own computations are checked against the definitions they claim to draw.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIG_DIR = ROOT / "paper_figures"
sys.path.insert(0, str(FIG_DIR))

from synthetic import BUCKETS, write_synthetic_runs  # noqa: E402  (paper_figures/synthetic.py)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file is a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_png(path: Path, min_w: int = 600, min_h: int = 300) -> None:
    """A written, non-trivial PNG: right signature, at least min_w x min_h pixels, more than a few KiB."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 10_000, f"{path} missing or nearly empty"
    w, h = png_size(path)
    assert w >= min_w and h >= min_h, f"{path} is only {w}x{h}"


def fig(name: str):
    return importlib.import_module(name)


# ---------------------------------------------------------------------------------------------------------
# Fig. 1: bounds of probability variation
# ---------------------------------------------------------------------------------------------------------


def test_fig1_writes_png_deterministically(tmp_path):
    f1 = fig("fig1_bounds")
    (a,) = f1.main(["--out", str(tmp_path / "a"), "--n", "200"])
    (b,) = f1.main(["--out", str(tmp_path / "b" / "custom.png"), "--n", "200"])
    assert a.name == "fig1_bounds.png" and b.name == "custom.png"
    assert_png(a)
    assert a.read_bytes() == b.read_bytes(), "two runs with the same settings must write identical PNGs"


def test_fig1_curves_match_their_definitions():
    f1 = fig("fig1_bounds")
    p = np.array([0.08, 0.5, 1.0])
    # DCPO from the losses registry with the figure's eps 0.2/0.28; expected values from DCPO's formula
    # upper = 1/2 + 1/2 sqrt(1 + 4 eps_high / p) (cap 10), lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0))
    lo, up = f1.method_bounds(p, "dcpo", eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(up, [0.5 + 0.5 * math.sqrt(1 + 1.12 / 0.08), 0.5 + 0.5 * math.sqrt(1 + 1.12 / 0.5),
                                    0.5 + 0.5 * math.sqrt(2.12)], rtol=1e-12)
    np.testing.assert_allclose(lo, [0.5, 0.5, 0.5 + 0.5 * math.sqrt(0.2)], rtol=1e-12)
    lo, up = f1.method_bounds(p, "clip", eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(lo, 0.8) and np.testing.assert_allclose(up, 1.28)
    # Band at delta 0.1: TV's variation is exactly +-0.1 where unsaturated (closed form 1 +- delta/p), and the
    # chi2 upper variation peaks at sqrt(delta/4) = 0.158 at p = 1/2 (closed form 1 + sqrt(delta (1-p)/p))
    grid = f1.p_grid(400)
    lo_tv, up_tv = f1.band_bounds(grid, 0.1, "tv")
    mid = (grid > 0.1) & (grid < 0.9)
    np.testing.assert_allclose((up_tv[mid] - 1) * grid[mid], 0.1, rtol=1e-12)
    np.testing.assert_allclose((lo_tv[mid] - 1) * grid[mid], -0.1, rtol=1e-12)
    _, up_chi = f1.band_bounds(np.array([0.5]), 0.1, "chi2")
    assert abs((up_chi[0] - 1) * 0.5 - math.sqrt(0.1 / 4)) < 1e-12
    # every Band lens stays inside the simplex strip -p <= (r-1)p <= 1-p (rounding slack 1e-12)
    for d in f1.DIVERGENCES:
        lo, up = f1.band_bounds(grid, 0.1, d)
        assert np.all((up - 1) * grid <= 1 - grid + 1e-12) and np.all((lo - 1) * grid >= -grid - 1e-12)


# ---------------------------------------------------------------------------------------------------------
# Fig. 2: clipping regions
# ---------------------------------------------------------------------------------------------------------


def test_fig2_writes_png(tmp_path):
    (path,) = fig("fig2_regions").main(["--out", str(tmp_path), "--n", "120"])
    assert_png(path)


def test_fig2_regions_agree_with_the_trust_region_definition():
    """Band allows (p_old, p_new) iff g_KL(p_old, r) <= delta; DAPO iff 0.8 <= r <= 1.28 (independent check)."""
    f2 = fig("fig2_regions")
    gen = np.random.default_rng(0)
    p_old = np.sort(gen.uniform(0.005, 0.995, 300))
    p_new = np.sort(gen.uniform(0.0, 1.0, 300))
    codes = f2.region_codes(p_old, p_new, 0.1)
    kl = __import__("bandpo").get_divergence("kl")
    P = torch.as_tensor(p_old[None, :], dtype=torch.float64)
    R = torch.as_tensor(p_new[:, None] / p_old[None, :], dtype=torch.float64)
    g = kl.g(P, R).numpy()
    band_ok = g <= 0.1
    # points within 1e-9 of the boundary may legitimately round either way
    clear = np.abs(g - 0.1) > 1e-9
    assert np.array_equal((codes >= 2)[clear], band_ok[clear])
    r = R.numpy()
    assert np.array_equal(codes % 2 == 1, (r >= 0.8) & (r <= 1.28))
    # all four regions are present, and the areas add up to the square
    frac = f2.area_fractions(400, 0.1)
    assert all(v > 0 for v in frac.values()) and abs(sum(frac.values()) - 1) < 1e-12


# ---------------------------------------------------------------------------------------------------------
# Fig. 3: band family and delta sweep
# ---------------------------------------------------------------------------------------------------------


def test_fig3_writes_png(tmp_path):
    (path,) = fig("fig3_band_family").main(["--out", str(tmp_path), "--n", "150"])
    assert_png(path)


# ---------------------------------------------------------------------------------------------------------
# Fig. 4: training curves (reads data/runs/<method>-seed<k>/metrics.csv)
# ---------------------------------------------------------------------------------------------------------

def test_fig4_reader_merges_rows_and_aggregates_seeds(tmp_path):
    f4 = fig("fig4_training")
    runs = write_synthetic_runs(tmp_path / "runs", steps=10, split_rows=True)
    found = f4.discover_runs(runs)
    assert list(found) == ["clip", "clip_higher", "dcpo", "band_kl"] and sorted(found["dcpo"]) == [0, 1]
    r = f4.read_metrics(found["dcpo"][1])
    np.testing.assert_array_equal(r["step"], np.arange(10))  # two rows per step merged into one
    np.testing.assert_allclose(r["accuracy"], 2 + 0.1 + np.arange(10) / 1000)
    np.testing.assert_array_equal(r["bucket/p0.5-1/tokens"], 800)  # from the second row of each step
    seeds = [f4.read_metrics(p) for p in found["dcpo"].values()]
    x, mean, lo, hi = f4.aggregate(seeds, "entropy", window=1)
    # seeds 0 and 1 differ by exactly 0.1: mean is the midpoint, min/max the two seeds
    np.testing.assert_allclose(mean, 2.05 + np.arange(10) / 1000)
    np.testing.assert_allclose(hi - lo, 0.1)
    # smoothing a linear ramp with a centred window leaves the interior unchanged
    np.testing.assert_allclose(f4.smooth(np.arange(10.0), 3)[1:-1], np.arange(1.0, 9.0))
    assert f4.buckets_of(seeds, "clip_high_mean") == list(BUCKETS)


def test_fig4_merges_reward_and_accuracy_only_when_equal():
    f4 = fig("fig4_training")
    same = {"m": [{"reward/mean": np.array([0.1, 0.5]), "accuracy": np.array([0.1, 0.5])}]}
    differ = {"m": [{"reward/mean": np.array([0.1, 0.5]), "accuracy": np.array([0.1, 0.4])}]}
    assert [k for k, _, _ in f4.top_panels(same)] == ["reward/mean", "entropy", "clip_ratio/region_mean"]
    assert [k for k, _, _ in f4.top_panels(differ)] == ["reward/mean", "accuracy", "entropy", "clip_ratio/region_mean"]


def test_fig4_writes_png(tmp_path):
    f4 = fig("fig4_training")
    real = f4.discover_runs(f4.RUNS)
    runs = f4.RUNS if real else write_synthetic_runs(tmp_path / "runs")
    (path,) = f4.main(["--out", str(tmp_path), "--runs", str(runs)])
    assert_png(path)


def test_fig4_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        fig("fig4_training").make_figure(tmp_path, tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------
# Fig. 5: rare-arm bandit (reads data/bandit/bandit.json, made by bandpo.experiments.bandit)
# ---------------------------------------------------------------------------------------------------------


def test_fig5_generates_its_data_and_draws(tmp_path):
    pytest.importorskip("bandpo.experiments.bandit")
    f5 = fig("fig5_bandit")
    data = tmp_path / "bandit.json"
    (path,) = f5.main(["--out", str(tmp_path), "--data", str(data), "--regenerate", "--steps", "8", "--seeds", "2",
                       "--methods", "clip_higher", "band_kl"])
    assert_png(path, min_h=250)
    saved = json.loads(data.read_text())
    assert list(saved["methods"]) == ["clip_higher", "band_kl"]
    m = saved["methods"]["band_kl"]
    assert len(m["p_rare"]["mean"]) == 9 and len(m["discover_steps"]) == 2  # steps + 1 (initial) and one per seed
    assert all(q25 <= q75 for q25, q75 in zip(m["p_rare"]["q25"], m["p_rare"]["q75"]))
    assert abs(m["p_rare"]["mean"][0] - saved["config"]["rare_prob"]) < 1e-9  # starts at the configured pi(rare)


def test_fig5_draws_the_committed_data(tmp_path):
    f5 = fig("fig5_bandit")
    if not f5.DEFAULT_DATA.is_file():
        pytest.skip(f"{f5.DEFAULT_DATA} not committed yet (test_fig5_generates_its_data_and_draws covers the script)")
    (path,) = f5.main(["--out", str(tmp_path)])
    assert_png(path, min_h=250)


def test_fig5_committed_data_is_current():
    """The committed bandit data was made with bandpo.experiments.bandit's current defaults; if this fails, regenerate it:
    python paper_figures/fig5_bandit.py --regenerate."""
    pytest.importorskip("bandpo.experiments.bandit")
    f5 = fig("fig5_bandit")
    if not f5.DEFAULT_DATA.is_file():
        pytest.skip(f"{f5.DEFAULT_DATA} not committed yet")
    assert f5.data_complete(), "paper_figures/data/bandit/bandit.json is stale: run fig5_bandit.py --regenerate"


# ---------------------------------------------------------------------------------------------------------
# Fig. 6: solver speed and accuracy (reads the benchmark's JSON)
# ---------------------------------------------------------------------------------------------------------


def _synthetic_bench(path: Path) -> Path:
    rows = [dict(divergence=d, band_tokens_per_s=10.0 ** (6 + i / 3), bisection_tokens_per_s=10.0 ** (5 + i / 5),
                 speedup=10.0 ** (1 + i / 3 - i / 5), band_max_rel_err=6e-8 * (1 + i),
                 bisection_max_rel_err=10.0 ** (i - 3), path="closed form",
                 band_compiled_tokens_per_s=2e7 if d == "tv" else float("nan"),
                 speedup_compiled=40.0 if d == "tv" else float("nan")) for i, d in enumerate(["kl", "tv", "chi2"])]
    path.write_text(json.dumps(dict(n_tokens=4096, dtype="float32", device="cpu (test)", torch="x", rows=rows)))
    return path


def test_fig6_reads_the_benchmark_schema(tmp_path):
    f6 = fig("fig6_solver_speed")
    data = _synthetic_bench(tmp_path / "bench.json")
    (path,) = f6.main(["--out", str(tmp_path), "--data", str(data)])
    assert_png(path)


def test_fig6_rejects_incomplete_data(tmp_path):
    f6 = fig("fig6_solver_speed")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(n_tokens=1, dtype="float32", device="cpu", torch="x",
                                   rows=[dict(divergence="kl", speedup=1.0)])))
    with pytest.raises(ValueError, match=r"rows\[0\] misses keys \['band_tokens_per_s'"):
        f6.make_figure(tmp_path, bad)
    with pytest.raises(FileNotFoundError, match="band_speed.py"):
        f6.make_figure(tmp_path, tmp_path / "nothing.json")


def test_fig6_on_real_benchmark_output(tmp_path):
    """The committed benchmark output when present; otherwise a tiny real benchmark run (about 8 s)."""
    f6 = fig("fig6_solver_speed")
    data = f6.DEFAULT_DATA
    if not data.is_file():
        data = tmp_path / "band_speed.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "band_speed.py"), "--n-tokens", "4096",
                        "--divergences", "kl", "--n-ref", "8", "--repeats", "1", "--out", str(data)],
                       check=True, capture_output=True)
    (path,) = f6.main(["--out", str(tmp_path), "--data", str(data)])
    assert_png(path, min_h=200)


# ---------------------------------------------------------------------------------------------------------
# Figs. 7-9 and fig4 --testbed: the testbed (synthetic runs in the runner's layout; the real data when present)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def testbed_data(tmp_path_factory):
    from synthetic_testbed import write_synthetic_testbed

    return write_synthetic_testbed(tmp_path_factory.mktemp("testbed"), seeds=(0, 1, 2), steps=30)


def test_fig7_forest_numbers_are_the_paired_differences(testbed_data, tmp_path):
    from bandpo.experiments.testbed import read_summary

    f7 = fig("fig7_testbed_forest")
    rows = read_summary(testbed_data)
    table = f7.forest(rows)
    assert [c[0] for c in f7.candidates(rows)] == ["clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "dppo_kl",
                                                  "dppo_tv", "band_kl_relax", "no_clip", "band_kl_upper",
                                                  "band_kl_lower"]
    by = {(r["method"], r["setting"], r["seed"]): r for r in rows if r["grid"] in ("main", "ablation")}
    for t in table:
        diffs = [by[(t["method"], t["setting"], s)][t["metric"]] - by[("clip", "default", s)][t["metric"]]
                 for s in (0, 1, 2)]
        assert t["n"] == 3 and t["diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
        # the Student t interval with 2 degrees of freedom: mean ± 4.302653 · sd / sqrt(3)
        half = 4.302652729911275 * np.std(diffs, ddof=1) / np.sqrt(3)
        assert (t["low"], t["high"]) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half), abs=1e-9)
    (a,) = f7.main(["--out", str(tmp_path / "a"), "--data", str(testbed_data)])
    (b,) = f7.main(["--out", str(tmp_path / "b"), "--data", str(testbed_data)])
    assert_png(a, min_h=250)
    assert a.read_bytes() == b.read_bytes(), "fig7 is not deterministic"


def test_fig8_seed_bands_are_quartiles_over_seeds(testbed_data, tmp_path):
    f8 = fig("fig8_testbed_curves")
    per_seed = [{"step": np.arange(3.0), "x": np.array([v, v, v]) * (k + 1)} for k, v in enumerate([1.0, 2, 3, 4, 5])]
    steps, mid, lo, hi = f8.seed_band(per_seed, "x", 1)
    values = [1.0, 4, 9, 16, 25]  # seed k holds (k + 1)^2 at every step
    assert mid.tolist() == [np.percentile(values, 50)] * 3
    assert lo.tolist() == [np.percentile(values, 25)] * 3 and hi.tolist() == [np.percentile(values, 75)] * 3
    assert f8.seed_band(per_seed, "missing", 1) is None
    runs = f8.load(testbed_data)
    assert list(runs)[:3] == ["clip", "clip_higher", "dcpo"] and all(len(v) == 3 for v in runs.values())
    (path,) = f8.main(["--out", str(tmp_path), "--data", str(testbed_data)])
    assert_png(path, min_h=250)


def test_fig9_sweeps_take_the_main_runs_as_the_middle_points(testbed_data, tmp_path):
    from bandpo.experiments.testbed import read_summary

    f9 = fig("fig9_testbed_sweeps")
    rows = read_summary(testbed_data)
    assert [d for d, _ in f9.delta_points(rows, "eval_mean")] == [0.01, 0.02, 0.05, 0.1, 0.2]
    assert [f for f, _ in f9.lr_points(rows, "eval_mean", "clip")] == [0.25, 1.0, 4.0]
    pts = dict(f9.delta_points(rows, "eval_mean"))
    main_kl = [r["eval_mean"] for r in rows if (r["grid"], r["method"]) == ("main", "band_kl")]
    assert pts[0.05].estimate == pytest.approx(np.mean(main_kl)) and pts[0.05].n == 3
    assert [m for m, _ in f9.ablation_points(rows, "collapsed")] == ["clip", "band_kl", "band_kl_upper",
                                                                      "band_kl_lower"]
    (path,) = f9.main(["--out", str(tmp_path), "--data", str(testbed_data)])
    assert_png(path, min_h=300)


def test_fig4_draws_the_testbed_main_grid(testbed_data, tmp_path):
    f4 = fig("fig4_training")
    (path,) = f4.main(["--testbed", "--runs", str(testbed_data / "main"), "--out", str(tmp_path)])
    assert path.name == "fig4_training_testbed.png"
    assert_png(path)


def test_testbed_figures_skip_cleanly_without_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("fig7_testbed_forest", "fig8_testbed_curves", "fig9_testbed_sweeps"):
        assert fig(name).main(["--out", str(tmp_path), "--data", str(empty)]) == []
    assert fig("fig4_training").main(["--testbed", "--runs", str(empty), "--out", str(tmp_path)]) == []
    out = capsys.readouterr().out
    assert out.count("skipped") == 4 and "bandpo.experiments.testbed" in out
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.skipif(not (FIG_DIR / "data" / "testbed" / "summary.csv").is_file(), reason="no testbed data yet")
def test_testbed_figures_on_the_committed_data(tmp_path):
    for name in ("fig7_testbed_forest", "fig8_testbed_curves", "fig9_testbed_sweeps"):
        (path,) = fig(name).main(["--out", str(tmp_path)])
        assert_png(path, min_h=200)


# ---------------------------------------------------------------------------------------------------------
# Fig. 10: the pre-registered experiment (a summary.csv of confirm rows written here)
# ---------------------------------------------------------------------------------------------------------


def _confirm_summary(folder: Path, found: dict) -> Path:
    """A summary.csv of confirm-grid rows: ``found[arm]`` = {seed: discovery step or None (never)}."""
    from bandpo.experiments.testbed import SUMMARY_COLUMNS

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, restval="0")
        w.writeheader()
        for arm, seeds in found.items():
            for seed, step in seeds.items():
                w.writerow({"grid": "confirm", "run": arm, "method": arm, "setting": "tail=0.005", "seed": seed,
                            "steps": 150, "max_steps": 150, "discovered": 0.0 if step is None else 1.0,
                            "discovery_step": 150.0 if step is None else float(step)})
    return folder


def test_fig10_counts_discoveries_by_step_and_pairs_them(tmp_path):
    f10 = fig("fig10_confirm_discovery")
    # Wilson's interval against the textbook value for 5/20: [0.1119, 0.4687]
    low, high = f10.wilson(5, 20)
    assert low == pytest.approx(0.11186, abs=1e-4) and high == pytest.approx(0.46869, abs=1e-4)
    found = {"clip": {0: None, 1: 40, 2: None, 3: 149},
             "band_kl": {0: None, 1: None, 2: 10, 3: 149},
             "band_kl_upper_rare": {0: 5, 1: 40, 2: 100, 3: None, 4: 7}}  # seed 4: no pair, left out
    data = _confirm_summary(tmp_path / "runs", found)
    from bandpo.experiments.testbed import read_summary

    steps = np.arange(151)
    res = f10.curves(read_summary(data / "summary.csv"), steps)
    assert res["seeds"] == 4
    rate, band = res["rate"]["clip"]
    assert rate[39] == 0 and rate[40] == 0.25 and rate[149] == 0.5 and rate[150] == 0.5
    assert np.all(band[:, 0] <= rate) and np.all(rate <= band[:, 1])
    d = res["diff"]["band_kl_upper_rare"]  # per seed at step 150: +1, 0, +1, -1 -> mean 0.25
    assert d[150, 0] == pytest.approx(0.25) and d[150, 1] < 0.25 < d[150, 2]
    assert d[4, 0] == 0 and d[5, 0] == pytest.approx(0.25)
    (a,) = f10.main(["--out", str(tmp_path / "a"), "--data", str(data)])
    (b,) = f10.main(["--out", str(tmp_path / "b"), "--data", str(data)])
    assert_png(a) and a.read_bytes() == b.read_bytes()
    assert f10.main(["--out", str(tmp_path / "c"), "--data", str(tmp_path)]) == []


# ---------------------------------------------------------------------------------------------------------
# The driver and the index
# ---------------------------------------------------------------------------------------------------------


def test_every_figure_script_is_driven_and_documented():
    reproduce = fig("reproduce")
    scripts = sorted(p.stem for p in FIG_DIR.glob("fig*.py"))
    assert sorted(reproduce.FIGURES) == scripts, "reproduce.FIGURES must list every paper_figures/fig*.py"
    index = (FIG_DIR / "README.md").read_text()
    for name in scripts:
        assert f"{name}.py" in index, f"paper_figures/README.md does not mention {name}.py"


def test_fig4_reads_a_testbed_runs_method_from_its_record(tmp_path):
    f4 = fig("fig4_training")
    run = tmp_path / "dppo_tv-delta0.05-seed3"
    run.mkdir()
    (run / "metrics.csv").write_text("step,entropy\n0,0.5\n")
    (run / "summary.json").write_text('{"testbed": {"method": "dppo_tv", "setting": "delta=0.05"}}')
    plain = tmp_path / "clip-seed3"
    plain.mkdir()
    (plain / "metrics.csv").write_text("step,entropy\n0,0.5\n")
    assert f4.discover_runs(tmp_path) == {"clip": {3: plain / "metrics.csv"}, "dppo_tv": {3: run / "metrics.csv"}}
