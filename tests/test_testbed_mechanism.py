"""The exploratory mechanism options: a middle-probability competitor in the ``rare_strategy`` task
(``task.middle_freq``, off by default), SGD beside AdamW (``optim.optimizer``), and the ``mechanism`` grid of the
testbed runner ({AdamW, SGD} x {clip, band_kl_upper, band_kl_lower}); smoke tests, the grid is not run here."""

from __future__ import annotations

import csv

import pytest
import torch

from bandpo.experiments import testbed as tb
from bandpo.training.launch import run
from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training.tasks import REWARD_FUNCS, build_task
from bandpo.training.rare_strategy import COMMON, MIDDLE, TAIL, WRONG

PRESET = CONFIG_DIR / "testbed.yaml"


def cfg_of(**overrides):
    return load_config(PRESET, {k.replace("__", "."): v for k, v in overrides.items()})


def test_middle_strategy_off_by_default_and_rewarded_when_on():
    off, on = build_task(cfg_of().task, 0), build_task(cfg_of(task__middle_freq=0.35).task, 0)
    assert "middle" not in off.rows(0, 4)[0]  # the committed task: same columns, 'M' earns 0 like 'X'
    row = on.rows(0, 1)[0]
    s = row["answer"][1:]
    assert row["middle"] == MIDDLE + s and row["middle_reward"] == 0.4
    fn = REWARD_FUNCS.get("rare_strategy")
    comps = [TAIL + s, COMMON + s, MIDDLE + s, MIDDLE + "99", WRONG[0] + s]
    cols = {k: [v] * len(comps) for k, v in row.items() if k != "prompt"}
    assert fn([row["prompt"]] * len(comps), comps, **cols) == [1.0, 0.5, 0.4, 0.0, 0.0]
    plain = {k: v for k, v in cols.items() if not k.startswith("middle")}
    assert fn([row["prompt"]] * len(comps), comps, **plain) == [1.0, 0.5, 0.0, 0.0, 0.0]
    # the warm-start mix: M at 0.35 of the whole targets, taken from C; T, X, Y as before
    whole = [t for st in range(100) for p, t in on.sft_rows(st, 64) if len(p) == 4]
    counts = {c: sum(t[0] == c for t in whole) for c in (TAIL, COMMON, MIDDLE) + WRONG}
    assert abs(counts[MIDDLE] - 0.35 * len(whole)) <= 2 and abs(counts[TAIL] - 0.015 * len(whole)) <= 2
    assert abs(counts[COMMON] - (1 - 0.35 - 0.015 - 0.04) * len(whole)) <= 3
    base = [t for st in range(100) for p, t in off.sft_rows(st, 64)]
    assert base == [t for st in range(100) for p, t in build_task(cfg_of(task__middle_reward=0.9).task, 0).sft_rows(st, 64)]
    with pytest.raises(ValueError, match="middle_freq = .* must be < 1"):
        build_task(cfg_of(task__middle_freq=0.95).task, 0)
    with pytest.raises(ValueError, match="task.middle_freq"):
        cfg_of(task__middle_freq=-0.1)


def test_sgd_option():
    assert cfg_of().optim.optimizer == "adamw"
    with pytest.raises(ValueError, match=r"optim.optimizer = 'adam' is invalid: one of \('adamw', 'sgd'\)"):
        cfg_of(optim__optimizer="adam")
    with pytest.raises(ValueError, match="applies to optim.optimizer 'sgd' only"):
        cfg_of(optim__momentum=0.9)
    with pytest.raises(ValueError, match="optim.momentum"):
        cfg_of(optim__optimizer="sgd", optim__momentum=1.0)


def test_sgd_middle_run_smoke(tmp_path):
    cfg = cfg_of(optim__optimizer="sgd", optim__lr=0.1, optim__momentum=0.5, task__middle_freq=0.35,
                 warmstart__steps=20, trainer__max_steps=2, eval__sets=[], rollout__prompts_per_step=4,
                 optim__prompts_per_minibatch=2, trainer__progress_bar=False)
    run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert all(0 <= float(r["testbed/p_middle"]) <= 1 and r["testbed/middle_frac"] != "" for r in rows)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    (opt,) = ckpt["optimizer_states"]
    assert opt["param_groups"][0]["momentum"] == 0.5 and "betas" not in opt["param_groups"][0]


def test_mechanism_grid():
    grid = tb.GRIDS["mechanism"]
    assert [(v.method, v.setting) for v in grid] == [
        ("clip", "middle=0.35"), ("band_kl_upper", "middle=0.35"), ("band_kl_lower", "middle=0.35"),
        ("clip", "middle=0.35,sgd"), ("band_kl_upper", "middle=0.35,sgd"), ("band_kl_lower", "middle=0.35,sgd")]
    assert grid[3].overrides(3e-4) == {"loss.method": "clip", "task.middle_freq": 0.35, "optim.optimizer": "sgd",
                                       "optim.lr": tb.SGD_LR}
    assert grid[4].name == "band_kl_upper-middle0.35-sgd"
    assert "mechanism" not in {v.grid for v in tb.select(["all"])}  # exploratory: run by name only
    # runs of one seed with a middle competitor share their own warm-start (AdamW and SGD alike), not the preset's
    rows = [{"grid": "mechanism", "run": v.name, "seed": 0, "setting": v.setting, "entropy_start": 0.3,
             "base_config": "b"} for v in grid]
    rows += [{"grid": "main", "run": "clip", "seed": 0, "setting": "default", "entropy_start": 0.2, "base_config": "b"}]
    assert tb.pairing_problems(rows) == []
