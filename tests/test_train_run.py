"""End-to-end training runs on CPU with a tiny model: smoke test, resume, non-finite handling, a dry run of every
shipped config, and a real 2-process DDP run (gloo).

Run: .venv/bin/python -m pytest -q tests/test_train_run.py   (the kill-and-resume test is marked slow)
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import bandpo.training.module
from bandpo.training.config import CONFIG_DIR, list_presets, load_config
from bandpo.losses import METRIC_KEYS
from bandpo.training.module import BandPOModule, NonFiniteError
from bandpo.training.tasks import REWARD_FUNCS, build_task, register_reward
from bandpo.training.checks import dry_run_config
from bandpo.training.launch import build_policy, build_tokenizer, build_trainer, run

REPO = Path(__file__).resolve().parents[1]

if "test_completion_length" not in REWARD_FUNCS:
    # A dense reward, so that even an untrained model gets non-zero advantages (exact match would give all zeros).
    @register_reward("test_completion_length")
    def _length_reward(prompts, completions, **_):
        return [float(len(c)) for c in completions]


def tiny_cfg(**overrides):
    base = {
        "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
        "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 5,
        "optim.prompts_per_minibatch": 2, "optim.lr": 1e-3, "warmstart.steps": 2, "warmstart.batch_size": 8,
        "trainer.max_steps": 3, "trainer.progress_bar": False, "trainer.num_threads": 2,
        "task.reward_funcs": ["test_completion_length"],
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(CONFIG_DIR / "tiny-cpu.yaml", base)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TIMING = ("time/", "perf/")

# Keys every row must have (besides the loss metrics of bandpo.losses.METRIC_KEYS).
ROW_KEYS = {
    "step", "reward/mean", "reward/std", "accuracy", "completion_length/mean", "completion_length/truncated_frac",
    "entropy", "frac_reward_zero_std", "loss/policy", "loss/total", "kl_ref", "grad_norm", "lr", "optim_steps",
    "nonfinite/skipped", "perf/tokens_per_s", "time/rollout_s", "time/update_s", "time/step_s",
}


def test_smoke_three_steps_every_parameter_changes(tmp_path):
    cfg = tiny_cfg(optim__weight_decay=0.0)  # no decay: a parameter changes only through its gradient
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    task = build_task(cfg.task, cfg.trainer.seed)
    module = BandPOModule(policy, tok, cfg, task, ref_policy=build_policy(cfg, tok))
    trainer = build_trainer(cfg, tmp_path)
    trainer.fit(module)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    missing = (ROW_KEYS | set(METRIC_KEYS)) - set(rows[0])
    assert not missing, missing
    for r in rows:
        for key in ("loss/policy", "loss/total", "grad_norm", "kl_ref", "entropy", "ppo_kl"):
            assert math.isfinite(float(r[key])), (key, r[key])
        assert float(r["nonfinite/skipped"]) == 0.0
        assert float(r["optim_steps"]) == 2 * (int(r["step"]) + 1)  # 4 prompts / 2 per mini-batch = 2 per step
        # The update saw each of the 16 sequences' completion tokens once (ppo_epochs = 1).
        assert float(r["num_tokens"]) == pytest.approx(16 * float(r["completion_length/mean"]), rel=1e-12)
    assert float(rows[-1]["kl_ref"]) > 0  # the policy moved away from the reference
    unchanged = [n for n, p in policy.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(trainer__max_steps=6, trainer__checkpoint_every=2)
    run(cfg, tmp_path / "a")

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if pl_module.rl_step == 5:  # step 4's row is written; the last checkpoint is after step 3
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, tmp_path / "b", extra_callbacks=[Crash()])
    assert [int(r["step"]) for r in read_rows(tmp_path / "b" / "metrics.csv")] == [0, 1, 2, 3, 4]
    assert not (tmp_path / "b" / "summary.json").exists()
    summary = run(cfg, tmp_path / "b")  # resumes from last.ckpt (rl_step 4), drops row 4, reruns steps 4-5
    assert summary["completed_steps"] == 6

    a, b = read_rows(tmp_path / "a" / "metrics.csv"), read_rows(tmp_path / "b" / "metrics.csv")
    assert [int(r["step"]) for r in b] == list(range(6))
    for ra, rb in zip(a, b):
        same = {k: v for k, v in ra.items() if not k.startswith(TIMING)}
        assert same == {k: v for k, v in rb.items() if not k.startswith(TIMING)}, ra["step"]
    sa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    # Running again with the same folder and max_steps is a no-op; a different loss setting is refused.
    assert run(cfg, tmp_path / "b")["completed_steps"] == 6
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 6
    with pytest.raises(ValueError, match="different config"):
        run(cfg.replace({"loss.delta": 0.1}), tmp_path / "b")


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_nonfinite_loss_is_reported(tmp_path, monkeypatch, capsys, mode):
    calls = {"n": 0}
    real = bandpo.training.module.policy_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # RL step 1, first optimiser step (2 optimiser steps per RL step, 1 micro-batch each)
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(bandpo.training.module, "policy_loss", poisoned)
    cfg = tiny_cfg(trainer__nonfinite=mode, warmstart__steps=0)
    if mode == "stop":
        with pytest.raises(NonFiniteError, match=r"non-finite loss at RL step 1, optimiser step 0.*logp range"):
            run(cfg, tmp_path)
        return
    run(cfg, tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [float(r["nonfinite/skipped"]) for r in rows] == [0.0, 1.0, 0.0]
    assert [float(r["optim_steps"]) for r in rows] == [2.0, 3.0, 5.0]  # the skipped step did not step
    assert "non-finite loss at RL step 1" in capsys.readouterr().out
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


@pytest.mark.parametrize("name", list_presets())
def test_dry_run_of_every_config(tmp_path, name):
    """Each shipped config, with the tiny model substituted, runs 2 RL steps on CPU with its loss settings."""
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    dry = dry_run_config(cfg, tmp_path / "data")
    assert dry.loss == cfg.loss and dry.task.name == cfg.task.name and dry.task.template == cfg.task.template
    dry = dry.replace({"trainer.num_threads": 2})
    run(dry, tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 2
    assert all(math.isfinite(float(r["loss/total"])) and math.isfinite(float(r["entropy"])) for r in rows)


DDP_OVERRIDES = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
    "rollout.prompts_per_step": 4, "rollout.group_size": 4, "optim.prompts_per_minibatch": 2, "warmstart.steps": 2,
    "warmstart.batch_size": 8, "trainer.max_steps": 2, "trainer.progress_bar": False, "trainer.num_threads": 1,
    "trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp",
}


def _ddp_main(out: str) -> None:
    """Run as a script (see the bottom of this file): Lightning's launcher re-runs it as rank 1."""

    class Checksum(L.Callback):
        def on_train_end(self, trainer, pl_module):
            total = sum(float(p.detach().double().sum()) for p in pl_module.policy.parameters())
            Path(out, f"rank{trainer.global_rank}.txt").write_text(f"{total!r} {trainer.world_size}")

    run(load_config(CONFIG_DIR / "tiny-cpu.yaml", DDP_OVERRIDES), out, extra_callbacks=[Checksum()])


def test_ddp_two_cpu_processes(tmp_path):
    """A real 2-process DDP run (gloo): the processes sample different prompts, yet end with identical weights."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__, "--ddp", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    r0, r1 = (out / "rank0.txt").read_text(), (out / "rank1.txt").read_text()
    assert r0 == r1 and r0.endswith(" 2"), (r0, r1)  # bitwise-equal parameter sums: gradients were all-reduced
    rows = read_rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 1]
    for r in rows:
        assert math.isfinite(float(r["loss/total"])) and math.isfinite(float(r["grad_norm"]))
        assert float(r["optim_steps"]) == 2 * (int(r["step"]) + 1)
        # Metrics are reduced over both processes: the update saw every completion token of the 16 sequences
        # (2 processes x 2 prompts x G = 4) once, so num_tokens = 16 x the global mean completion length.
        assert float(r["num_tokens"]) == pytest.approx(16 * float(r["completion_length/mean"]), rel=1e-12)
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "summary.json").is_file()


@pytest.mark.slow
def test_ddp_through_the_command_line(tmp_path):
    """`python -m bandpo.training ... --devices 2 --strategy ddp`: Lightning relaunches the module as rank 1."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "bandpo.training", "--preset", "tiny-cpu", "--out", str(out)]
    for key, value in DDP_OVERRIDES.items():
        cmd += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    assert [int(r["step"]) for r in read_rows(out / "metrics.csv")] == [0, 1]


@pytest.mark.slow
def test_kill_mid_run_loses_at_most_the_steps_since_the_checkpoint(tmp_path):
    """SIGKILL a CLI run after its first checkpoint, rerun the command: the result equals an uninterrupted run."""
    common = ["--preset", "tiny-cpu", "--max-steps", "12", "--trainer.checkpoint_every", "4",
              "--trainer.progress_bar", "false", "--trainer.num_threads", "1", "--warmstart.steps", "20"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def cli(out, **kw):
        return subprocess.Popen([sys.executable, "-m", "bandpo.training", *common, "--out", str(out)], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

    assert cli(tmp_path / "a").wait(timeout=600) == 0
    proc = cli(tmp_path / "b")
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    while len(read_rows(tmp_path / "b" / "metrics.csv")) < 6 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) < 12
    assert cli(tmp_path / "b").wait(timeout=600) == 0
    a, b = read_rows(tmp_path / "a" / "metrics.csv"), read_rows(tmp_path / "b" / "metrics.csv")
    assert len(b) == 12
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if not k.startswith(TIMING)} == {
            k: v for k, v in rb.items() if not k.startswith(TIMING)}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--ddp":
    _ddp_main(sys.argv[2])


def test_warmstart_cache_across_commands(tmp_path, capsys):
    """`--warmstart-cache DIR`: the second command (another method) loads the first's warm-start instead of training
    it, and its run equals the same run training its own; a cache path under a file is a one-line error."""
    from bandpo.training.cli import main
    from bandpo.training.launch import warmstart_cache_file

    common = ["--preset", "tiny-cpu", "--no-pin", "--max-steps", "2", "--warmstart.steps", "4",
              "--rollout.prompts_per_step", "4", "--optim.prompts_per_minibatch", "2", "--trainer.checkpoint_every", "2"]
    cache = tmp_path / "cache"
    assert main(common + ["--method", "clip", "--out", str(tmp_path / "a"), "--warmstart-cache", str(cache)]) == 0
    assert len(list(cache.glob("warmstart-*.pt"))) == 1
    capsys.readouterr()
    assert main(common + ["--method", "band_kl", "--out", str(tmp_path / "b"), "--warmstart-cache", str(cache)]) == 0
    assert "reused from" in capsys.readouterr().out
    assert main(common + ["--method", "band_kl", "--out", str(tmp_path / "c")]) == 0
    b, c = (read_rows(tmp_path / x / "metrics.csv") for x in "bc")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]  # noqa: E731
    assert len(b) == 2 and strip(b) == strip(c)
    cfg = load_config(CONFIG_DIR / "tiny-cpu.yaml", {"warmstart.steps": 4, "trainer.numerics": "native",
                                                   "rollout.prompts_per_step": 4, "optim.prompts_per_minibatch": 2})
    assert warmstart_cache_file(cfg, cache).is_file()  # the key the CLI used: settings, code, versions, machine
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "d"), "--warmstart-cache", str(tmp_path / "file" / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bandpo.training: error: --warmstart-cache") and "is a file" in err
