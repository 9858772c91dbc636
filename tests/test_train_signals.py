"""Preemption and non-finite values: SIGTERM/SIGINT to a real training process (checkpoint, one line, non-zero
exit, bit-exact resume), also during the supervised warm-start, and a NaN in the old log-probs reaching the
trainer's nonfinite policy.

Run: .venv/bin/python -m pytest -q tests/test_train_signals.py
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bandpo.training.module
from bandpo.training.launch import run
from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training.module import NonFiniteError
from bandpo.training.tasks import REWARD_FUNCS, register_reward

REPO = Path(__file__).resolve().parents[1]
# The resume hint names the interpreter that ran (relative to the working folder, REPO, when inside it).
_EXE = (Path(sys.executable).relative_to(REPO) if Path(sys.executable).is_relative_to(REPO) else Path(sys.executable))
TIMING = ("time/", "perf/")

# Small enough to be quick, slow enough (about 0.1-0.3 s per RL step) for a signal to land mid-run.
COMMON = ["--preset", "tiny-cpu", "--max-steps", "12", "--warmstart.steps", "20", "--rollout.prompts_per_step", "16",
          "--trainer.checkpoint_every", "100", "--trainer.progress_bar", "false", "--trainer.num_threads", "1"]


def _rows(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cli(out):
    return subprocess.Popen([sys.executable, "-m", "bandpo.training", *COMMON, "--out", str(out)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _signal_when(procs):
    """``procs``: (process, run folder, rows to wait for, signal). Sends each signal as soon as that run has written
    that many metrics rows (polling all runs together), then returns each process's output."""
    pending, deadline = list(procs), time.time() + 240
    while pending and time.time() < deadline:
        for item in list(pending):
            proc, out, n_rows, sig = item
            if len(_rows(out / "metrics.csv")) >= n_rows or proc.poll() is not None:
                proc.send_signal(sig)
                pending.remove(item)
        time.sleep(0.01)
    return [p.communicate(timeout=240)[0] for p, *_ in procs]


def test_sigterm_and_sigint_checkpoint_exit_nonzero_and_resume_bit_exactly(tmp_path):
    full, term, intr = _cli(tmp_path / "full"), _cli(tmp_path / "term"), _cli(tmp_path / "int")
    out_term, out_int = _signal_when([(term, tmp_path / "term", 2, signal.SIGTERM),
                                      (intr, tmp_path / "int", 1, signal.SIGINT)])
    assert full.wait(timeout=240) == 0, full.communicate()[0][-2000:]

    for proc, out, folder, code, name in ((term, out_term, "term", 143, "SIGTERM"), (intr, out_int, "int", 130,
                                                                                    "SIGINT")):
        assert proc.returncode == code, out[-3000:]  # 128 + the signal: a preempted job does not look successful
        rows = _rows(tmp_path / folder / "metrics.csv")
        assert 1 <= len(rows) < 12, out[-3000:]
        ckpt = tmp_path / folder / "checkpoints" / "last.ckpt"
        assert ckpt.is_file()  # checkpoint_every is 100: this one was written because of the signal
        assert torch.load(ckpt, weights_only=False, map_location="cpu")["bandpo"]["rl_step"] == len(rows)
        line = (f"[bandpo] stopped by {name} after RL step {len(rows)} of 12; checkpoint {ckpt}; resume with: "
                f"{_EXE} -m bandpo.training {' '.join(COMMON)} --out {tmp_path / folder}")
        assert line in out.splitlines(), out[-3000:]
        assert "Traceback" not in out
        assert not (tmp_path / folder / "summary.json").exists()

    # Rerunning the command resumes from the checkpoint and ends exactly where the uninterrupted run ended.
    resumed = _cli(tmp_path / "term")
    log = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, log[-3000:]
    a, b = _rows(tmp_path / "full" / "metrics.csv"), _rows(tmp_path / "term" / "metrics.csv")
    assert [int(r["step"]) for r in b] == list(range(12))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if not k.startswith(TIMING)} == {
            k: v for k, v in rb.items() if not k.startswith(TIMING)}, ra["step"]
    sa = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sb = torch.load(tmp_path / "term" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())


# ----------------------------------------------------------------------------------------------------------
# Signals during the supervised warm-start
# ----------------------------------------------------------------------------------------------------------

WARM = ["--preset", "tiny-cpu", "--max-steps", "2", "--warmstart.steps", "8", "--warmstart.batch_size", "8",
        "--rollout.prompts_per_step", "4", "--optim.prompts_per_minibatch", "2", "--model.num_layers", "1",
        "--model.hidden_size", "32", "--model.num_heads", "2", "--model.intermediate_size", "64",
        "--trainer.progress_bar", "false", "--trainer.num_threads", "1"]


@pytest.fixture(scope="module")
def warm_whole(tmp_path_factory):
    """The uninterrupted run the interrupted ones must end equal to."""
    from bandpo.training.cli import main

    out = tmp_path_factory.mktemp("warm") / "whole"
    assert main([*WARM, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("sig, at_call, code", [(signal.SIGINT, 3, 130), (signal.SIGTERM, 6, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_warm_start_checkpoints_it_and_the_rerun_ends_the_same(tmp_path, capsys, monkeypatch,
                                                                                warm_whole, sig, at_call, code):
    import bandpo.training.rollout as rollout_mod
    from bandpo.training.cli import main

    real, calls = rollout_mod.sft_loss, {"n": 0}

    def signalled(*args, **kwargs):  # a real signal to this process while warm-start step `at_call` runs
        calls["n"] += 1
        if calls["n"] == at_call:
            handler = signal.getsignal(sig)
            assert handler not in (signal.SIG_DFL, signal.default_int_handler), "nothing handles the signal"
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(rollout_mod, "sft_loss", signalled)
    capsys.readouterr()
    assert main([*WARM, "--out", str(out)]) == code
    log = capsys.readouterr().out
    ckpt = out / "checkpoints" / "warmstart.ckpt"
    name = signal.Signals(sig).name
    assert (f"[bandpo] stopped by {name} after warm-start step {at_call} of 8; checkpoint {ckpt}; resume with: "
            f"{_EXE} -m bandpo.training {' '.join(WARM)} --out {out}") in log.splitlines(), log
    assert ckpt.is_file() and (out / "checkpoints" / "warmstart.ckpt.sha256").is_file()
    assert not (out / "warmstart.json").exists() and not _rows(out / "metrics.csv")
    monkeypatch.setattr(rollout_mod, "sft_loss", real)

    assert main([*WARM, "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert f"resuming the supervised warm-start at step {at_call} of 8" in log, log
    assert not ckpt.exists()  # the first RL checkpoint holds the warm-started weights from then on
    drop = {"wall_s"}
    whole = json.loads((warm_whole / "warmstart.json").read_text())
    again = json.loads((out / "warmstart.json").read_text())
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}
    a, b = _rows(warm_whole / "metrics.csv"), _rows(out / "metrics.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if not k.startswith(TIMING)} == {
            k: v for k, v in rb.items() if not k.startswith(TIMING)}
    sa = torch.load(warm_whole / "checkpoints" / "last.ckpt", weights_only=False)
    sb = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(v, sb["state_dict"][k]) for k, v in sa["state_dict"].items())
    ra, rb = sa["bandpo"]["ref_state"], sb["bandpo"]["ref_state"]  # the reference is the warm-started policy
    assert all(torch.equal(v, rb[k]) for k, v in ra.items())


def test_signal_during_the_last_warm_start_step_finishes_it_and_stops_after_one_rl_step(tmp_path, capsys,
                                                                                      monkeypatch, warm_whole):
    import bandpo.training.rollout as rollout_mod
    from bandpo.training.cli import main

    real, calls = rollout_mod.sft_loss, {"n": 0}

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # the last warm-start step: nothing is left to checkpoint in the warm-start
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(rollout_mod, "sft_loss", signalled)
    capsys.readouterr()
    assert main([*WARM, "--out", str(out)]) == 130
    log = capsys.readouterr().out
    assert f"[bandpo] stopped by SIGINT after RL step 1 of 2; checkpoint {out / 'checkpoints' / 'last.ckpt'}" in log
    assert (out / "warmstart.json").is_file() and not (out / "checkpoints" / "warmstart.ckpt").exists()
    monkeypatch.setattr(rollout_mod, "sft_loss", real)
    assert main([*WARM, "--out", str(out)]) == 0
    a, b = _rows(warm_whole / "metrics.csv"), _rows(out / "metrics.csv")
    assert [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in a] == [
        {k: v for k, v in r.items() if not k.startswith(TIMING)} for r in b]


# ----------------------------------------------------------------------------------------------------------
# Non-finite inputs reach the nonfinite policy
# ----------------------------------------------------------------------------------------------------------

if "test_completion_length" not in REWARD_FUNCS:
    @register_reward("test_completion_length")
    def _length_reward(prompts, completions, **_):
        return [float(len(c)) for c in completions]


def _tiny(**kw):
    base = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
            "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 5,
            "optim.prompts_per_minibatch": 2, "optim.lr": 1e-3, "warmstart.steps": 0, "trainer.max_steps": 4,
            "trainer.progress_bar": False, "trainer.num_threads": 1, "task.reward_funcs": ["test_completion_length"]}
    base.update(kw)
    return load_config(CONFIG_DIR / "tiny-cpu.yaml", base)


@pytest.fixture()
def nan_old_logp(monkeypatch):
    """The rollout of RL step 1 gets a NaN old log-prob on the first token of sequence 0 (first mini-batch)."""
    real, calls = bandpo.training.module.rollout, {"n": 0}

    def poisoned(*args, **kwargs):
        ro = real(*args, **kwargs)
        if calls["n"] == 1:
            ro.old_logp[0, 0] = float("nan")
        calls["n"] += 1
        return ro

    monkeypatch.setattr(bandpo.training.module, "rollout", poisoned)


@pytest.mark.parametrize("method", ["band_kl", "band_js", "clip"])
def test_nan_old_logp_is_skipped_and_training_carries_on(tmp_path, capsys, nan_old_logp, method):
    run(_tiny(**{"trainer.nonfinite": "skip", "loss.method": method}), tmp_path)
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]  # carried on after the skipped step
    assert [float(r["nonfinite/skipped"]) for r in rows] == [0.0, 1.0, 0.0, 0.0]
    assert [float(r["optim_steps"]) for r in rows] == [2.0, 3.0, 5.0, 7.0]
    assert all(math.isfinite(float(r["loss/total"])) for r in rows if r["step"] != "1")
    assert "non-finite loss at RL step 1, optimiser step 0" in capsys.readouterr().out
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


def test_nan_old_logp_stops_with_the_report(tmp_path, nan_old_logp):
    with pytest.raises(NonFiniteError, match=r"non-finite loss at RL step 1.*old_logp range .*\(1 non-finite\)"):
        run(_tiny(**{"trainer.nonfinite": "stop"}), tmp_path)


# ----------------------------------------------------------------------------------------------------------
# The progress bar after a resume
# ----------------------------------------------------------------------------------------------------------


def test_progress_bar_has_its_total_after_a_resume(tmp_path, capsys):
    cfg = _tiny(**{"trainer.progress_bar": True, "trainer.max_steps": 2, "trainer.checkpoint_every": 1})
    run(cfg, tmp_path)
    capsys.readouterr()
    run(cfg.replace({"trainer.max_steps": 4}), tmp_path)  # resumes at step 2
    captured = capsys.readouterr()
    bar = (captured.out + captured.err).replace("\r", "\n")
    assert re.search(r"RL step:  75%\|.*\| 3/4 \[[0-9:]+<[0-9:]+, +[0-9.]+(it/s|s/it), reward=", bar), bar[-2000:]
    assert re.search(r"RL step: 100%\|.*\| 4/4 ", bar) and "/?" not in bar
    last = [line for line in bar.splitlines() if "4/4" in line][-1]
    for key in ("reward=", "acc=", "H=", "clip=", "kl_ref=", "ppo_kl="):
        assert key in last, last


def test_progress_postfix_shows_the_latest_eval():
    from bandpo.training.console import progress_postfix

    row = {"reward/mean": 0.5, "accuracy": 0.25, "entropy": 0.7, "clip_ratio/region_mean": 0.0123, "kl_ref": 0.002,
           "ppo_kl": 1e-4}
    evals = {"eval/aime24/mean@32": 0.1, "eval/aime24/pass@8": 0.3, "eval/aime24/pass@32": 0.5,
             "eval/aime24/maj@32": 0.2, "eval/aime24/length": 900.0, "eval/time_s": 3.0}
    assert progress_postfix(row, evals) == {
        "reward": "0.500", "acc": "0.250", "H": "0.700", "clip": "1.23%", "kl_ref": "0.002", "ppo_kl": "0.0001",
        "aime24 mean@32": "0.100", "aime24 pass@32": "0.500"}
    assert progress_postfix(None, None) == {}
