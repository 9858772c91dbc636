"""Inputs that used to pass silently are refused before any work, in one line: a δ schedule that leaves δ > 0 at
some step, ``bounds`` given NaN or a log-probability > 0, data rows without an answer, ``--out ""``.

Run: .venv/bin/python -m pytest -q tests/test_input_checks.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import bandpo
from bandpo.losses import Band, Constant, Cosine, Linear, LossConfig
from bandpo.training.cli import main
from bandpo.training.data import load_problems

PREFIX = "bandpo.training: error: "
# A small run, so that a check that is missing costs seconds, not the preset's full run.
SMALL = ["--preset", "tiny-cpu", "--max-steps", "4", "--warmstart.steps", "0", "--rollout.prompts_per_step", "4",
         "--optim.prompts_per_minibatch", "2", "--trainer.progress_bar", "false"]


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


# ----------------------------------------------------------------------------------------------------------
# δ schedules: checked over every step before training
# ----------------------------------------------------------------------------------------------------------


def test_schedule_value_range():
    assert Linear(0.05, 0.15, 10).value_range() == (0.05, 0.15)
    assert Linear(0.05, 0.15, 10).value_range(6) == pytest.approx((0.05, 0.10), rel=1e-15)  # steps 0..5
    assert Cosine(0.1, -0.02, 10).value_range() == (-0.02, 0.1)
    lo, hi = Cosine(0.1, -0.02, 10).value_range(3)
    assert (lo, hi) == (Cosine(0.1, -0.02, 10)(2), 0.1) and lo > 0  # the run never reaches the negative part
    assert Constant(0.3).value_range() == (0.3, 0.3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        Linear(0.1, 0.2, 5).value_range(0)


@pytest.mark.parametrize("schedule", [Cosine(0.05, -0.02, 10), Linear(0.05, 0.0, 3), Linear(-0.01, 0.05, 3)])
def test_band_refuses_a_schedule_that_reaches_zero_at_any_step(schedule):
    with pytest.raises(ValueError, match=r"^delta must be > 0 at every step, but the schedule .* reaches "):
        Band("kl", schedule)
    with pytest.raises(ValueError, match="delta must be > 0 at every step"):
        LossConfig(delta_schedule=type(schedule).__name__.lower(), delta=schedule.start, delta_end=schedule.end,
                   delta_steps=schedule.steps)
    Band("kl", Cosine(0.05, 0.01, 10))  # stays > 0: accepted


def test_cli_refuses_a_negative_delta_schedule_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    msg = _one_line_error(capsys, [*SMALL, "--delta-schedule", "cosine", "--delta-end", "-0.02", "--delta-steps", "4",
                                   "--out", str(out)])
    assert msg == ("config section 'loss' is invalid: delta must be > 0 at every step, but the schedule "
                   "Cosine(start=0.05, end=-0.02, steps=4) reaches -0.02; give a schedule whose values stay > 0 "
                   "(e.g. its end)")
    assert not (out / "metrics.csv").exists()


# ----------------------------------------------------------------------------------------------------------
# bounds validates like band
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), 0.5, float("inf")])
@pytest.mark.parametrize("method", ["band_kl", "clip", "dppo_tv"])
def test_bounds_rejects_what_band_rejects(bad, method):
    old = torch.log(torch.tensor([0.3, 0.7]))
    old = torch.cat([old, torch.tensor([bad])])
    with pytest.raises(ValueError) as from_band:
        bandpo.band(old, 0.05)
    with pytest.raises(ValueError) as from_bounds:
        bandpo.bounds(old, method)
    assert str(from_bounds.value) == str(from_band.value)
    assert "\n" not in str(from_bounds.value)


def test_bounds_validate_false_skips_the_check_like_band():
    old = torch.tensor([math.log(0.3), float("nan"), 0.5])
    lower, upper = bandpo.bounds(old, "band_kl", validate=False)
    assert math.isnan(lower[1]) and math.isnan(upper[1])  # NaN in, NaN out, like band(validate=False)
    one = bandpo.bounds(torch.zeros(1), "band_kl")
    assert float(lower[2]) == float(one[0][0]) and float(upper[2]) == float(one[1][0])  # clamped to p = 1
    good = torch.log(torch.tensor([0.01, 0.3, 0.9]))
    for a, b in zip(bandpo.bounds(good, "band_kl"), bandpo.bounds(good, "band_kl", validate=False)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# Data rows without an answer
# ----------------------------------------------------------------------------------------------------------


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, why", [
    ({"prompt": "2+2?"}, "has no answer (the key is missing or null)"),
    ({"prompt": "2+2?", "answer": None}, "has no answer (the key is missing or null)"),
    ({"prompt": "2+2?", "answer": ""}, "has an empty answer (an empty answer cannot be verified)"),
    ({"prompt": "2+2?", "answer": "  "}, "has an empty answer (an empty answer cannot be verified)"),
])
def test_a_row_without_an_answer_is_refused_with_file_and_line(tmp_path, row, why):
    path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "1+1?", "answer": "2"}, "", row, {"prompt": "3+3?",
                                                                                         "answer": "6"}])
    with pytest.raises(ValueError) as e:
        load_problems(path, what="eval set 'x': file")
    assert str(e.value) == (f"eval set 'x': file {str(path)!r} line 3: column 'answer' {why}; give every problem its "
                            "ground-truth answer or remove the row")


def test_a_json_file_names_the_row(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"train": [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": []}]}))
    with pytest.raises(ValueError, match=r"^data file '.*eval.json' row 1: column 'answer' has an empty answer list; "):
        load_problems(path)


def test_answers_that_are_kept(tmp_path):
    path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "a", "answer": 0}, {"prompt": "b", "answer": ["7"]},
                                            {"prompt": "c", "answer": "x"}])
    assert [r["answer"] for r in load_problems(path)] == ["0", "7", "x"]


def test_training_data_without_an_answer_is_refused(tmp_path, capsys):
    path = _jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": None}])
    msg = _one_line_error(capsys, [*SMALL, "--task.name", "math_file", "--task.path", str(path),
                                   "--out", str(tmp_path / "run")])
    assert msg == (f"task.path {str(path)!r} line 2: column 'answer' has no answer (the key is missing or null); "
                   "give every problem its ground-truth answer or remove the row")


def test_eval_set_without_an_answer_is_refused(tmp_path, capsys):
    path = _jsonl(tmp_path / "aime.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    msg = _one_line_error(capsys, [*SMALL, "--eval.sets", f"aime={path}", "--out",
                                   str(tmp_path / "run")])
    assert msg == (f"eval set 'aime': file {str(path)!r} line 2: column 'answer' has no answer (the key is missing "
                   "or null); give every problem its ground-truth answer or remove the row")


# ----------------------------------------------------------------------------------------------------------
# --out ""
# ----------------------------------------------------------------------------------------------------------


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _one_line_error(capsys, [*SMALL, "--out", ""]) == (
        "--out is empty; give a folder for the run (it is created if needed)")
    assert _one_line_error(capsys, [*SMALL, "--out", "  "]) == (
        "--out is empty; give a folder for the run (it is created if needed)")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
