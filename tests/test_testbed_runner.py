"""bandpo.experiments.testbed: the grids, the per-run statistics on synthetic frames, and the runner end to end on
a 2-step tiny-cpu grid (in a temporary folder)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from bandpo.experiments import testbed as tb
from bandpo.losses import get_method
from bandpo.losses.metrics import BUCKET_NAMES


# ---------------------------------------------------------------------------------------------------------------
# grids and jobs
# ---------------------------------------------------------------------------------------------------------------


def test_grids_as_specified():
    assert [v.method for v in tb.GRIDS["main"]] == ["clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2",
                                                     "dppo_kl", "dppo_tv", "band_kl_relax", "no_clip"]
    # dppo_tv runs at band_tv's delta (same region, only the loss form differs); every other main row is default
    assert {v.method: v.setting for v in tb.GRIDS["main"] if v.setting != "default"} == {"dppo_tv": "delta=0.05"}
    assert get_method("band_tv").settings()["delta"] == 0.05
    assert [v.setting for v in tb.GRIDS["delta"]] == ["delta=0.01", "delta=0.02", "delta=0.1", "delta=0.2"]
    assert {(v.method, v.setting) for v in tb.GRIDS["lr"]} == {(m, f"lr=x{f}") for m in ("clip", "band_kl")
                                                              for f in ("0.25", "4")}
    assert [v.method for v in tb.GRIDS["ablation"]] == ["band_kl_upper", "band_kl_lower"]
    names = [v.grid + "/" + v.name for g in tb.GRIDS.values() for v in g]
    assert [(v.method, v.setting) for v in tb.GRIDS["rare"]] == [(m, "tail=0.005") for m in tb.RARE_METHODS]
    assert tb.GRIDS["rare"][0].overrides(3e-4) == {"loss.method": "clip", "task.tail_freq": 0.005}
    names = [v.grid + "/" + v.name for g in tb.GRIDS.values() for v in g]
    assert len(names) == len(set(names)) == 24 + len(tb.FIELD_METHODS) + 6 + 3  # + field, mechanism, confirm grids
    assert [(v.method, v.setting) for v in tb.GRIDS["confirm"]] == [(m, "tail=0.005") for m in ("clip", "band_kl", "band_kl_upper_rare")]
    assert tb.SEEDS == tuple(range(8))


def test_variant_overrides_and_folders(tmp_path):
    v = tb.Variant("lr", "clip", lr_factor=0.25)
    assert v.overrides(2e-4) == {"loss.method": "clip", "optim.lr": pytest.approx(5e-5)}
    assert tb.run_dir(tmp_path, v, 3) == tmp_path / "lr" / "clip-lrx0.25-seed3"
    d = tb.Variant("delta", "band_kl", delta=0.02)
    assert d.overrides(1.0) == {"loss.method": "band_kl", "loss.delta": 0.02} and d.name == "band_kl-delta0.02"
    assert tb.Variant("main", "dcpo").overrides(1.0) == {"loss.method": "dcpo"}


def test_select_and_shards():
    assert len(tb.select(["all"])) == 24
    assert [v.name for v in tb.select(["lr", "main"], ["clip"])] == ["clip-lrx0.25", "clip-lrx4", "clip"]
    with pytest.raises(ValueError, match="unknown grid 'nope'"):
        tb.select(["nope"])
    with pytest.raises(ValueError, match="method 'dcpo' is in none"):
        tb.select(["lr"], ["dcpo"])
    variants = tb.select(["main"], ["clip", "band_kl"])
    everything = tb.jobs(variants, [0, 1, 2])
    assert [(s, v.method) for s, v in everything] == [(s, m) for s in (0, 1, 2) for m in ("clip", "band_kl")]
    shards = [tb.jobs(variants, [0, 1, 2], (i, 4)) for i in range(4)]
    assert sorted((s, v.name) for sh in shards for s, v in sh) == sorted((s, v.name) for s, v in everything)
    assert [{s for s, _ in sh} for sh in shards] == [{0}, {1}, {2}, set()]  # a seed's runs share a process
    with pytest.raises(ValueError, match="shard"):
        tb.jobs(variants, [0], (2, 2))


# ---------------------------------------------------------------------------------------------------------------
# per-run statistics on synthetic frames
# ---------------------------------------------------------------------------------------------------------------


def _frame(n=10, p_tail=None, sampled=None, entropy=None):
    steps = np.arange(n, dtype=float)
    f = {"step": steps, "reward/mean": steps / 10, "entropy": np.linspace(1.0, 0.05, n) if entropy is None else
         np.asarray(entropy, float)}
    if p_tail is not None:
        f["testbed/p_tail"] = np.asarray(p_tail, float)
        f["testbed/tail_frac"] = np.asarray(p_tail, float) / 2
        f["testbed/tail_sampled"] = np.asarray(sampled, float)
    for j, b in enumerate(BUCKET_NAMES):
        f[f"bucket/{b}/tokens"] = np.where(steps == 0, 0.0, 10.0) if j == 0 else np.full(n, 5.0)
        f[f"bucket/{b}/clip_region_mean"] = np.where(steps == 0, 0.9, 0.1 * (j + 1))
        f[f"bucket/{b}/clip_high_mean"] = np.full(n, 0.01 * (j + 1))
    return f


def test_discovery_drift_collapse_and_buckets():
    p = [0.02, 0.03, 0.03, 0.1, 0.2, 0.4, 0.6, 0.7, 0.4, 0.9]
    s = [0, 0, 1, 1, 1, 1, 0, 0, 0, 1]
    evals = {"step": np.array([0.0, 10.0]), "eval/heldout/mean@8": np.array([0.1, 0.4]),
             "eval/heldout/pass@1": np.array([0.1, 0.4]), "eval/heldout/pass@8": np.array([0.5, 0.9]),
             "eval/other/mean@4": np.array([0.0, 0.0])}
    st = tb.run_statistics(_frame(10, p, s), evals, max_steps=10, window=4)
    assert st["discovery_step"] == 6 and st["discovered"] == 1
    d = np.diff(p)
    assert st["drift_unsampled"] == pytest.approx(np.mean([d[0], d[1], d[6], d[7], d[8]]))
    assert st["drift_sampled"] == pytest.approx(np.mean([d[2], d[3], d[4], d[5]]))
    assert (st["n_unsampled"], st["n_sampled"]) == (5, 4)
    assert st["p_tail_last"] == pytest.approx(np.mean(p[-4:]))
    assert st["tail_frac_last"] == pytest.approx(np.mean(p[-4:]) / 2)
    h = np.linspace(1.0, 0.05, 10)
    assert st["entropy_start"] == 1.0 and st["entropy_last"] == pytest.approx(h[-4:].mean())
    assert st["entropy_collapsed"] == 0.0  # 0.19 > 0.1 * 1.0
    assert (st["p_tail_start"], st["p_tail_min"], st["collapsed"]) == (0.02, 0.02, 0.0)  # the tail never fell
    assert st["reward_last"] == pytest.approx(np.mean([0.6, 0.7, 0.8, 0.9]))
    # bucket p0-0.01 had no token at step 0 (its 0.9 is ignored); the others count every step
    assert st["clip_region_p0-0.01"] == pytest.approx(0.1)
    assert st["clip_region_p0.01-0.1"] == pytest.approx((0.9 + 9 * 0.2) / 10)
    assert st["clip_high_p0.5-1"] == pytest.approx(0.04)
    assert (st["eval_set"], st["eval_n"], st["eval_k"]) == ("heldout", 8, 8)
    assert (st["eval_mean_start"], st["eval_mean"], st["eval_pass_start"], st["eval_pass"]) == (0.1, 0.4, 0.5, 0.9)


def test_censoring_collapse_and_missing_columns():
    st = tb.run_statistics(_frame(5, [0.01, 0.02, 0.3, 0.49, 0.2], [0, 0, 0, 0, 0],
                                  entropy=[1.0, 0.5, 0.2, 0.05, 0.03]), None, max_steps=300, window=2)
    assert (st["discovery_step"], st["discovered"]) == (300, 0)  # censored at the run's length
    assert st["entropy_collapsed"] == 1.0 and st["entropy_last"] == pytest.approx(0.04)
    assert st["collapsed"] == 0.0  # the tail rose: no collapse at the decision, whatever the token entropy did
    fell = tb.run_statistics(_frame(4, [0.016, 0.01, 0.0039, 0.5], [0, 0, 0, 1]), None)
    assert fell["p_tail_min"] == 0.0039 and fell["collapsed"] == 1.0  # below 0.25 x 0.016 once, even if it recovers
    kept = tb.run_statistics(_frame(4, [0.016, 0.01, 0.0041, 0.005], [0, 0, 0, 0]), None)
    assert kept["collapsed"] == 0.0
    assert math.isnan(st["drift_sampled"]) and st["n_sampled"] == 0 and st["n_unsampled"] == 4
    assert math.isnan(st["eval_mean"]) and st["eval_set"] == ""
    plain = tb.run_statistics({"step": np.arange(3.0), "entropy": np.ones(3)})
    assert math.isnan(plain["discovery_step"]) and math.isnan(plain["p_tail_last"]) and plain["max_steps"] == 3
    # a gap in the steps is not a one-step change
    gap = tb.drift([0.1, 0.2, 0.5], [0, 0, 0], [0, 1, 3])
    assert gap["n_unsampled"] == 1 and gap["drift_unsampled"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="window"):
        tb.run_statistics(plain | {"step": np.arange(3.0)}, window=0)
    with pytest.raises(ValueError, match="at least one step"):
        tb.run_statistics({"step": np.array([])})


def test_read_metrics_merges_rows_of_a_step(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,a,b\n1,,2\n0,1,\n0,,3\n1,4,\n")
    m = tb.read_metrics(tmp_path)
    assert m["step"].tolist() == [0, 1] and m["a"].tolist() == [1, 4] and m["b"].tolist() == [3, 2]
    assert tb.read_evals(tmp_path) == {}


# ---------------------------------------------------------------------------------------------------------------
# end to end: 2 methods x 2 seeds, 2 RL steps each, tiny-cpu with held-out evaluation
# ---------------------------------------------------------------------------------------------------------------

TINY = {"trainer.max_steps": 2, "warmstart.steps": 3, "rollout.prompts_per_step": 4, "optim.prompts_per_minibatch": 1,
        "task.heldout_size": 8, "eval.n": 4, "eval.k": [1, 4], "trainer.checkpoint_every": 1}


def _strip_time(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/")) and k != "eval/time_s"}
                for r in csv.DictReader(f)]


def test_runner_end_to_end(tmp_path):
    logs = []
    table = tb.testbed(tmp_path, ["main"], [0, 1], methods=["clip", "band_kl"], preset="tiny-cpu-eval",
                       overrides=TINY, log=logs.append)
    assert [(r["seed"], r["method"]) for r in table] == [(0, "clip"), (0, "band_kl"), (1, "clip"), (1, "band_kl")]
    with open(tmp_path / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == tb.SUMMARY_COLUMNS
        assert len(list(reader)) == 4
    for seed in (0, 1):
        runs = [tmp_path / "main" / f"{m}-seed{seed}" for m in ("clip", "band_kl")]
        for run in runs:
            assert {"metrics.csv", "config.yaml", "eval.csv", "summary.json"} <= {p.name for p in run.iterdir()}
            assert not (run / "checkpoints").exists()
            rec = json.loads((run / "summary.json").read_text())["testbed"]
            assert rec["seed"] == seed and rec["wall_s"] > 0 and rec["grid"] == "main"
        # paired: the same warm start and sampler seed, so step 0 (before any update) is identical across methods
        a, b = (_strip_time(r / "metrics.csv")[0] for r in runs)
        for key in ("reward/mean", "entropy", "completion_length/mean", "num_tokens"):
            assert a[key] == b[key], key
    assert tb.pairing_problems(table) == [] and len({r["base_config"] for r in table}) == 1
    rows = {(r["method"], r["seed"]): r for r in table}
    assert rows[("clip", 0)]["eval_set"] == "heldout" and rows[("clip", 0)]["eval_n"] == 4
    assert rows[("clip", 0)]["eval_mean_start"] == rows[("band_kl", 0)]["eval_mean_start"]
    assert all(r["wall_s"] > 0 and r["steps"] == 2 for r in table)

    # finished runs are skipped: a runner that is called fails the test
    def boom(cfg, path):
        raise AssertionError(f"re-ran {path}")

    # (a finished run whose record is missing, e.g. trained before an interruption of the runner, gets one)
    summary = tmp_path / "main/clip-seed1/summary.json"
    data = json.loads(summary.read_text())
    del data["testbed"]
    summary.write_text(json.dumps(data))
    again = tb.testbed(tmp_path, ["main"], [0, 1], methods=["clip", "band_kl"], preset="tiny-cpu-eval",
                       overrides=TINY, runner=boom, log=logs.append)
    assert sum("skip" in line for line in logs) == 4 and len(again) == 4
    assert json.loads(summary.read_text())["testbed"]["wall_s"] == data["wall_s_this_process"]

    # same input, same output: a run repeated in the same process (after three others) matches, and a run whose
    # warm-start was reused from the seed's first run (clip) matches the same run training its own
    tb.testbed(tmp_path / "again", ["main"], [1], methods=["band_kl"], preset="tiny-cpu-eval", overrides=TINY,
               log=logs.append)
    reused = json.loads((tmp_path / "main/band_kl-seed1/warmstart.json").read_text())
    own = json.loads((tmp_path / "again/main/band_kl-seed1/warmstart.json").read_text())
    assert "reused_from" in reused and "reused_from" not in own
    assert {k: v for k, v in reused.items() if k not in ("reused_from", "wall_s")} == {
        k: v for k, v in own.items() if k != "wall_s"}
    assert "reused_from" not in json.loads((tmp_path / "main/clip-seed1/warmstart.json").read_text())
    assert _strip_time(tmp_path / "again/main/band_kl-seed1/metrics.csv") == \
        _strip_time(tmp_path / "main/band_kl-seed1/metrics.csv")
    assert _strip_time(tmp_path / "again/main/band_kl-seed1/eval.csv") == \
        _strip_time(tmp_path / "main/band_kl-seed1/eval.csv")
    assert not (tmp_path / tb.WARMSTART_CACHE).exists()  # emptied and removed when the runs were done


def test_pairing_problems_name_what_breaks_the_pairing():
    rows = [{"grid": "main", "run": m, "seed": s, "entropy_start": 0.3 + s, "base_config": "abc"}
            for m in ("clip", "band_kl") for s in (0, 1)]
    assert tb.pairing_problems(rows) == []
    rows[1] = dict(rows[1], entropy_start=0.5, base_config="def")  # clip seed 1 from another start and config
    problems = tb.pairing_problems(rows)
    assert len(problems) == 2
    assert "2 different base configs" in problems[0]
    assert problems[1].startswith("seed 1: step-0 entropy differs") and "main/clip" in problems[1]
    rows.append({"grid": "main", "run": "dcpo", "seed": 0, "entropy_start": math.nan, "base_config": "abc"})
    assert len(tb.pairing_problems(rows)) == 2  # a run without entropy is not a mismatch
    # a rarer tail is another warm-start: its runs pair with each other, not with the preset's
    rare = [{"grid": "rare", "run": m, "setting": "tail=0.005", "seed": 0, "entropy_start": 0.1, "base_config": "abc"}
            for m in ("clip", "band_kl")]
    assert len(tb.pairing_problems(rows + rare)) == 2
    rare[1]["entropy_start"] = 0.2
    assert any(p.startswith("seed (0, 'tail=0.005')") for p in tb.pairing_problems(rows + rare))


def test_rare_grid_pairs_with_its_own_baseline():
    from bandpo.experiments.stats import baseline_of, compare

    assert baseline_of({"method": "band_kl", "setting": "tail=0.005"}) == {"method": "clip", "setting": "tail=0.005"}
    assert baseline_of({"method": "band_kl", "setting": "delta=0.1"}) == {"method": "clip", "setting": "default"}
    rows = [{"method": m, "setting": st, "seed": s, "x": v + s}
            for (m, st, v) in (("clip", "default", 0.0), ("clip", "tail=0.005", 10.0), ("band_kl", "tail=0.005", 11.0))
            for s in (0, 1, 2)]
    cand = {"method": "band_kl", "setting": "tail=0.005"}
    (r,) = compare(rows, ["x"], [cand], baseline_of(cand))
    assert r["diff"] == pytest.approx(1.0) and r["low"] == pytest.approx(1.0) and r["n"] == 3


def test_cli_errors(capsys):
    assert tb.main(["--grid", "nope", "--preset", "tiny-cpu"]) == 2
    assert "unknown grid 'nope'" in capsys.readouterr().err
    assert tb.main(["--shard", "x", "--preset", "tiny-cpu"]) == 2
    assert "--shard expects i/n (e.g. 0/2), got 'x'" in capsys.readouterr().err
    assert tb.main(["--methods", "clip", "--preset", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
