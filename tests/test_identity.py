"""BandPO and DPPO at the same trust region: their per-token gradients are equal bit for bit but at the three events
of ``bandpo/experiments/identity.py`` (dual clip, cap, truncation), and ``compare_pair`` / ``render_identity`` on
synthetic run folders."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch

from bandpo.experiments.identity import compare_pair, identity_table, render_identity
from bandpo.losses import policy_loss

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "paper_figures" / "data" / "testbed" / "main"
PAIRS = (("band_kl", "dppo_kl", {}), ("band_tv", "dppo_tv", {"delta": 0.05}))


def _grads(method: str, p, r, adv, mask=None, agg="seq-mean-token-mean", dtype=torch.float64, **settings) -> torch.Tensor:
    """d loss / d logp per token for tokens of old probability p, ratio r and advantage adv."""
    old = torch.log(torch.tensor([p], dtype=torch.float64))
    logp = (old + torch.log(torch.tensor([r], dtype=torch.float64))).to(dtype).requires_grad_(True)
    old, a = old.to(dtype), torch.tensor([adv], dtype=dtype)
    m = torch.ones_like(a, dtype=torch.bool) if mask is None else torch.tensor([mask])
    loss, _ = policy_loss(logp, old, a, m, method=method, agg=agg, **settings)
    (g,) = torch.autograd.grad(loss, logp)
    return g[0]


# Tokens where no event fires: inside the band, clipped/masked on the advantage's side, below the lower bound with
# A > 0, above the upper bound with A < 0 (r < 10), at the ends of the band, A = 0, the TV band saturated at 0
# (p <= 0.05) and at 1/p (p >= 0.95), a ratio just below the dual clip c = 10, a masked token.
QUIET = [  # (p, r, adv)
    (0.5, 1.02, 1.0), (0.5, 1.5, 1.0), (0.5, 0.5, 1.0), (0.5, 0.5, -1.0), (0.5, 1.5, -1.0), (0.3, 0.97, -0.7),
    (0.02, 3.0, 0.8), (0.02, 9.0, -0.8), (0.02, 0.01, -0.8), (0.01, 6.0, 0.3), (0.9, 1.03, 0.0),
    (0.03, 1e-3, -1.0), (0.03, 1e-3, 1.0), (0.97, 1.02, 1.0), (0.97, 1.02, -1.0), (0.05, 9.99, -1.0),
    (0.004, 8.0, 1.0), (1e-4, 0.5, -2.0),
]


@pytest.mark.parametrize("band, dppo, settings", PAIRS)
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float64 as asked; float32 as trained
def test_gradients_are_bit_identical_when_no_event_fires(band, dppo, settings, agg, dtype):
    p, r, adv = map(list, zip(*QUIET))
    mask = [True] * (len(p) - 1) + [False]
    gb = _grads(band, p, r, adv, mask, agg, dtype, **settings)
    gd = _grads(dppo, p, r, adv, mask, agg, dtype, **settings)
    assert torch.equal(gb, gd), (gb - gd).abs().max()
    assert (gb != 0).sum() >= 8  # not vacuous: most tokens carry a gradient


@pytest.mark.parametrize("band, dppo, settings", PAIRS)
@pytest.mark.parametrize("event, token", [
    ("dual clip", (0.05, 12.0, -1.0)),  # A < 0, r > c = 10: the clip form holds it at -A·c
    ("cap", (0.002, 12.0, 1.0)),  # A > 0, 10 < r <= upper (the band's upper bound at p = 0.002 is > 12)
    ("truncation, A < 0", (0.03, 25.0, -1.0)),  # r > C = 20: DPPO's weight is C/r, and it is a dual clip too
    ("truncation, A > 0", (0.0005, 25.0, 1.0)),  # a kept token with r > C: also a cap event
])
def test_gradients_differ_exactly_at_an_event(band, dppo, settings, event, token):
    p, r, adv = map(list, zip(*(QUIET[:6] + [token])))
    n = len(p)
    gb = _grads(band, p, r, adv, agg="token-mean", **settings)
    gd = _grads(dppo, p, r, adv, agg="token-mean", **settings)
    assert torch.equal(gb[:-1], gd[:-1])  # the other tokens are untouched
    a, ratio = token[2], token[1]
    assert gb[-1] == 0  # clipped (cap) or held at the floor (dual clip): no gradient
    assert gd[-1] == pytest.approx(-a * min(ratio, 20.0) / n, rel=1e-12)  # DPPO keeps it: -A·min(r, C)


# ----------------------------------------------------------------------------------------------------------
# compare_pair on synthetic run folders
# ----------------------------------------------------------------------------------------------------------

COLUMNS = ["step", "reward/mean", "grad_norm", "loss/policy", "bounds/upper_mean", "dual_clip_fraction",
           "truncated_fraction", "ratio/rare_pos_max", "time/step_s", "perf/tokens_per_s"]


def _run(folder: Path, config_from: str, rows: list, extra: "dict | None" = None) -> Path:
    """A run folder: a committed run's config.yaml and a metrics.csv of ``rows`` (dicts over COLUMNS)."""
    folder.mkdir(parents=True)
    shutil.copy(MAIN / config_from / "config.yaml", folder / "config.yaml")
    cols = COLUMNS + sorted(extra or {})
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({**row, **{k: v[i] for k, v in (extra or {}).items()}})
    return folder


def _rows(n: int, **changes) -> list:
    """n identical rows; ``changes`` maps column -> {step: value}."""
    rows = []
    for s in range(n):
        row = {"step": s, "reward/mean": 0.5 + s / 100, "grad_norm": 1.0 + s, "loss/policy": -0.01,
               "bounds/upper_mean": 1.2, "dual_clip_fraction": 0.0, "truncated_fraction": 0.0,
               "ratio/rare_pos_max": "nan", "time/step_s": 0.1, "perf/tokens_per_s": 1000.0}
        for col, at in changes.items():
            if s in at:
                row[col] = at[s]
        rows.append(row)
    return rows


def test_compare_pair_finds_the_first_difference_and_the_events(tmp_path):
    rare = {"ratio/rare_pos_max": {1: 9.5, 2: 11.0}}  # > the cap 10 from step 2, the same in both runs
    a = _run(tmp_path / "a", "band_kl-seed0", _rows(8, dual_clip_fraction={3: 0.01, 5: 0.02},
                                                      grad_norm={3: 9.0, 4: 9.0}, **rare, **{"time/step_s": {0: 0.3}}))
    b = _run(tmp_path / "b", "dppo_kl-seed0", _rows(8, truncated_fraction={6: 0.1}, **rare,
                                                      **{"loss/policy": {s: -0.02 for s in range(1, 8)},
                                                         "perf/tokens_per_s": {0: 5.0}}))
    r = compare_pair(a, b)
    assert (r.seed, r.steps) == (0, 8)
    assert r.first_difference == 1  # loss/policy (timing columns never count)
    assert r.first_training_difference == 3 and r.training_columns == ("grad_norm",)
    assert (r.first_dual_clip, r.first_truncation, r.first_event) == (3, 6, 3)
    assert not r.cap_logged and r.first_cap is None and r.cap_not_before == 2  # ratio/rare_pos_max > 10
    assert r.identical_before_first_event
    table = identity_table([r])
    assert "| 0 | 3 | 1 | 3 | not logged; >= 2 | 6 | yes; differ from E |" in table


def test_a_difference_before_any_event_and_a_logged_cap(tmp_path):
    a = _run(tmp_path / "a", "band_kl-seed0", _rows(6, dual_clip_fraction={4: 0.01}, **{"reward/mean": {2: 0.9}}),
             extra={"cap_fraction": [0, 0, 0, 0.05, 0, 0]})
    b = _run(tmp_path / "b", "dppo_kl-seed0", _rows(6))
    r = compare_pair(a, b)
    assert r.cap_logged and r.first_cap == 3 and r.cap_not_before is None
    assert (r.first_training_difference, r.first_event) == (2, 3)
    assert not r.identical_before_first_event and identity_table([r]).endswith("| no |")
    # identical runs, no event: identical, and "never" everywhere
    c = _run(tmp_path / "c", "dppo_kl-seed0", _rows(6))
    r = compare_pair(b, c)
    assert (r.first_difference, r.first_training_difference, r.first_event) == (None, None, None)
    assert r.identical_before_first_event and "yes; never differ |" in identity_table([r])
    # a difference one step after the event
    d = _run(tmp_path / "d", "band_kl-seed0", _rows(6, dual_clip_fraction={1: 0.01}, grad_norm={2: 0.0}))
    assert "yes; differ from E + 1 |" in identity_table([compare_pair(d, c)])


def test_compare_pair_refuses_bad_folders(tmp_path):
    a = _run(tmp_path / "a", "band_kl-seed0", _rows(3))
    b = _run(tmp_path / "b", "dppo_kl-seed1", _rows(3))
    with pytest.raises(ValueError, match="different seeds"):
        compare_pair(a, b)
    with pytest.raises(ValueError, match="is not a run folder"):
        compare_pair(a, tmp_path / "nothing")


def test_render_identity_fills_blocks_and_is_idempotent(tmp_path):
    for k in (0, 1):
        _run(tmp_path / "g" / f"band_kl-seed{k}", f"band_kl-seed{k}", _rows(4, dual_clip_fraction={2: 0.1},
                                                                        grad_norm={2: 0.0, 3: 0.0}))
        _run(tmp_path / "g" / f"dppo_kl-seed{k}", f"dppo_kl-seed{k}", _rows(4))
    _run(tmp_path / "g" / "band_kl-seed5", "band_kl-seed5", _rows(4))  # no twin: left out
    text = "intro\n<!-- identity --grid g --pair band_kl dppo_kl -->\nold\n<!-- /identity -->\nend\n"
    out = render_identity(text, tmp_path)
    assert out.startswith("intro\n<!-- identity") and out.endswith("<!-- /identity -->\nend\n") and "old" not in out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "seed" not in line] \
        == ["0", "1"]
    assert render_identity(out, tmp_path) == out
    with pytest.raises(ValueError, match="bad options"):
        render_identity("<!-- identity --grid g -->\n<!-- /identity -->", tmp_path)
    with pytest.raises(ValueError, match="no seed has both"):
        render_identity("<!-- identity --grid g --pair band_kl clip -->\n<!-- /identity -->", tmp_path)
    with pytest.raises(ValueError, match="needs the run folders"):
        render_identity(text, None)
    assert render_identity("no blocks", None) == "no blocks"


def test_rare_p_is_the_trainers():
    """cap_not_before reads ratio/rare_pos_max, which the trainer logs for tokens below its RARE_P."""
    from bandpo.experiments.identity import RARE_P
    from bandpo.training.module import RARE_P as TRAINER_RARE_P

    assert RARE_P == TRAINER_RARE_P
