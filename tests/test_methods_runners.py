"""Every method id of the method table runs in the bandit and resolves in the testbed (its ``field`` grid); one
new method trains two real testbed steps (``-m slow``). Tiny settings: a smoke test, not a result."""

from __future__ import annotations

import math

import pytest
import torch

from bandpo.experiments import bandit as B
from bandpo.experiments import testbed as tb
from bandpo.losses import get_method, list_methods
from bandpo.training.config import load_config, preset_path

NEW = ["gspo", "cispo", "cispo_band_kl", "sapo", "gpg", "clip_cov", "kl_cov", "gmpo", "gmpo_band_kl", "dro", "vespo"]
TINY = B.BanditConfig(steps=3, seeds=(0, 1), n_groups=2, minibatches=2, group_size=4, epochs=1, rare_prob=0.2)


@pytest.mark.parametrize("method", NEW)
def test_bandit_runs_every_new_method_by_id(method):
    kwargs = dict(method=method, dro_beta=0.1) if method == "dro" else None
    h = B.run_bandit(method, TINY, kwargs)
    assert h.p_rare.shape == (4, 2) and torch.isfinite(h.p_rare).all() and torch.isfinite(h.entropy).all()
    if get_method(method).surrogate != "geo_mean":  # GMPO's sequence (a seed's mini-batch) has mean advantage 0
        assert (h.p_rare[0] - h.p_rare[-1]).abs().max() > 1e-3  # it trained
    rows = B.seed_rows(h, TINY)
    assert [r["seed"] for r in rows] == [0, 1] and set(B.SEED_METRICS) <= set(rows[0])


def test_bandit_cli_needs_dro_beta_and_prints_paired_differences(capsys):
    with pytest.raises(SystemExit):
        B.main(["--methods", "dro", "--steps", "2", "--seeds", "2"])
    assert "--dro-beta" in capsys.readouterr().err
    text = B.main(["--methods", "cispo,cispo_band_kl", "--baseline", "cispo", "--steps", "3", "--seeds", "3"])
    assert "| cispo_band_kl | p_rare_end | 3 |" in text


def test_paired_table_is_the_mean_per_seed_difference():
    rows = [{"method": m, "setting": "default", "seed": s, "p_rare_end": v}
            for m, vals in (("a", [0.1, 0.2, 0.3]), ("b", [0.2, 0.4, 0.3])) for s, v in enumerate(vals)]
    line = B.paired_table(rows, "a", ("p_rare_end",)).splitlines()[2]
    assert line.startswith("| b | p_rare_end | 3 | +0.1 |")


def test_testbed_field_grid_resolves_every_method():
    """The field grid holds every new method but dro (no default); each variant's overrides build a valid config."""
    assert set(tb.FIELD_METHODS) == {"clip"} | (set(NEW) - {"dro"})
    assert "field" not in tb.ALL_GRIDS and {v.grid for v in tb.select(["all"])} == set(tb.ALL_GRIDS)
    cfg = load_config(preset_path("testbed"))
    for v in tb.select(["field"]):
        assert v.method in list_methods()
        loss = load_config(preset_path("testbed"), overrides=v.overrides(cfg.optim.lr)).loss
        assert loss.method_spec().surrogate == get_method(v.method).surrogate


@pytest.mark.slow  # ~15 s: the trainer's start-up; the config of every field method is checked above
def test_testbed_trains_a_new_method(tmp_path):
    table = tb.testbed(tmp_path, ["field"], [0], methods=["cispo_band_kl"], preset="tiny-cpu",
                       overrides={"trainer.max_steps": 2, "warmstart.steps": 2, "rollout.prompts_per_step": 2,
                                  "optim.prompts_per_minibatch": 1}, log=lambda line: None)
    assert [(r["method"], r["steps"]) for r in table] == [("cispo_band_kl", 2)]
    assert math.isfinite(float(table[0]["reward_last"]))
