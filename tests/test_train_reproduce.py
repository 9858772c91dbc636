"""The reproduction runner: folder layout, method settings, skipping finished runs, summary table.

Run: .venv/bin/python -m pytest -q tests/test_train_reproduce.py
"""

from __future__ import annotations

import csv
import json

import pytest

from bandpo.experiments.reproduce import METHODS, SUMMARY_COLUMNS, format_table, main, method_overrides, reproduce
from bandpo.losses import get_method

SMALL = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
    "rollout.prompts_per_step": 4, "rollout.group_size": 4, "optim.prompts_per_minibatch": 2,
    "warmstart.steps": 2, "warmstart.batch_size": 8, "trainer.max_steps": 2, "trainer.num_threads": 2,
}


def test_methods_are_the_papers_comparison():
    assert list(METHODS) == ["clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2"]
    s = {m: get_method(m).settings() for m in METHODS}  # the runner uses the method table's own settings
    assert s["clip"]["eps_high"] == 0.2 and s["clip_higher"]["eps_high"] == 0.28
    assert (s["dcpo"]["eps_low"], s["dcpo"]["eps_high"]) == (0.16, 0.2)
    assert [s[m]["divergence"] for m in ("band_kl", "band_tv", "band_chi2")] == ["kl", "tv", "chi2"]
    assert method_overrides("band_tv") == {"loss.method": "band_tv"}


def test_runner_layout_and_skipping(tmp_path):
    calls = []

    def fake_run(cfg, path):
        settings = cfg.loss.method_spec().settings()
        calls.append((cfg.loss.method, settings.get("divergence"), settings.get("eps_high"), cfg.trainer.seed,
                      path.name))
        path.mkdir(parents=True)
        (path / "checkpoints").mkdir()
        with open(path / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "reward/mean", "accuracy", "entropy", "clip_ratio/region_mean",
                                              "ppo_kl", "completion_length/mean", "time/step_s"])
            w.writeheader()
            for s in range(cfg.trainer.max_steps):
                w.writerow({"step": s, "reward/mean": cfg.trainer.seed + s / 10, "accuracy": 0.5, "entropy": 1.0,
                            "clip_ratio/region_mean": 0.0, "ppo_kl": 0.0, "completion_length/mean": 3,
                            "time/step_s": 1.0})
        (path / "summary.json").write_text(json.dumps({"completed_steps": cfg.trainer.max_steps}))

    table = reproduce(tmp_path, ["clip", "band_tv"], [0, 1], overrides={"trainer.max_steps": 4}, runner=fake_run)
    assert [c[-1] for c in calls] == ["clip-seed0", "band_tv-seed0", "clip-seed1", "band_tv-seed1"]
    assert calls[0][:4] == ("clip", None, 0.2, 0) and calls[1][:2] == ("band_tv", "tv")
    assert not (tmp_path / "clip-seed0" / "checkpoints").exists()  # removed once finished
    assert len(table) == 4
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS and rows[0]["method"] == "clip"
    assert [(r["method"], r["seed"]) for r in rows] == [("clip", "0"), ("clip", "1"), ("band_tv", "0"), ("band_tv", "1")]
    assert float(rows[1]["reward_first"]) == pytest.approx(1 + (0 + 0.1 + 0.2 + 0.3) / 4)  # seed 1, 4 steps
    # A second call skips everything; a longer run re-runs (resuming where possible).
    calls.clear()
    reproduce(tmp_path, ["clip", "band_tv"], [0, 1], overrides={"trainer.max_steps": 4}, runner=fake_run)
    assert calls == []
    assert "clip" in format_table(table, ["clip", "band_tv"]) and "±" in format_table(table, ["clip"])
    # Sharding splits the jobs between processes.
    calls.clear()
    reproduce(tmp_path / "s", ["clip", "band_tv"], [0, 1], overrides={"trainer.max_steps": 2}, runner=fake_run,
              shard=(1, 2))
    assert [c[-1] for c in calls] == ["band_tv-seed0", "band_tv-seed1"]


def test_runner_end_to_end_one_real_run(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--methods", "band_kl", "--seeds", "3", "--set"]
    args += [f"{k}={v}" for k, v in SMALL.items()]
    assert main(args) == 0
    run = tmp_path / "band_kl-seed3"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "machine.json", "metrics.csv",
                                                     "summary.json", "warmstart.json"]
    with open(run / "metrics.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["0", "1"]
    assert "band_kl" in capsys.readouterr().out
    assert main(["--out", str(tmp_path), "--methods", "nope"]) == 2
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--shard", "1of2"]) == 2
    assert "--shard expects i/n (e.g. 0/2), got '1of2'" in capsys.readouterr().err
