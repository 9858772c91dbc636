"""A run folder is never silently shared, contradicted or resumed from damaged bytes: the folder lock (a second
run fails at once, naming the holder; kill -9 leaves no stale lock), the config check against the checkpoint's own
config (with or without config.yaml), and checkpoint checksums with the fallback to the previous checkpoint.

Run: .venv/bin/python -m pytest -q tests/test_run_folder.py
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from bandpo.training.cli import main
from bandpo.training.launch import run
from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training.checks import UserError

REPO = Path(__file__).resolve().parents[1]
PREFIX = "bandpo.training: error: "
TIMING = ("time/", "perf/")
SMALL = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
         "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 5,
         "optim.prompts_per_minibatch": 2, "optim.lr": 1e-3, "warmstart.steps": 2, "warmstart.batch_size": 8,
         "trainer.max_steps": 4, "trainer.checkpoint_every": 2, "trainer.progress_bar": False,
         "trainer.num_threads": 1}


ARGS = ["--preset", "tiny-cpu", *[f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()]]
"""SMALL as command-line flags."""


def _cfg(**kw):
    return load_config(CONFIG_DIR / "tiny-cpu.yaml", {**SMALL, **kw})


def _rows(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a, b):
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if not k.startswith(TIMING)} == {
            k: v for k, v in y.items() if not k.startswith(TIMING)}, x["step"]


def _weights(folder):
    return torch.load(Path(folder) / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run (checkpoints after steps 2 and 4: last.ckpt and prev.ckpt) to copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run(_cfg(), out)
    return out


# ----------------------------------------------------------------------------------------------------------
# One process per run folder
# ----------------------------------------------------------------------------------------------------------


HOLD = """
import sys, time
from bandpo.training.run_folder import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_second_run_into_a_busy_folder_fails_at_once_and_kill_9_leaves_no_stale_lock(tmp_path, capsys):
    from bandpo.training.run_folder import RunLock

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        code = main([*ARGS, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(PREFIX), err
        assert re.fullmatch(rf"{re.escape(str(out))} is in use by another run \(pid {holder.pid} on \S+ since "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to end, or choose another --out",
                            err[0][len(PREFIX):]), err[0]
        assert time.time() - t0 < 30  # at once: before building anything
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written into the busy folder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(out):  # kill -9 released it: nothing to clean up by hand
        pass


class _AssertLocked(L.Callback):
    """Checks, while the run trains, that its folder is locked against a second run."""

    def __init__(self, out):
        self.out, self.checked = out, False

    def on_train_start(self, trainer, pl_module):
        from bandpo.training.run_folder import RunLock

        with pytest.raises(UserError, match=f"pid {os.getpid()} on "):
            with RunLock(self.out):
                pass
        self.checked = True


def test_the_lock_is_held_for_the_block_only(tmp_path):
    from bandpo.training.run_folder import RunLock

    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))} is in use by another run \(pid "):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released on exit (also when the block raises: see the refused runs below)
        pass


# ----------------------------------------------------------------------------------------------------------
# Resuming compares the checkpoint's own config
# ----------------------------------------------------------------------------------------------------------


def test_a_different_config_is_refused_even_without_config_yaml(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "config.yaml").unlink()
    with pytest.raises(UserError) as e:
        run(_cfg(**{"loss.method": "clip", "trainer.seed": 7, "optim.lr": 0.5}), out)
    assert str(e.value) == (f"{out} holds a run with a different config (keys ['loss.method', 'optim.lr', "
                            "'trainer.seed']); resume it with the same settings or choose another --out")
    assert not (out / "config.yaml").exists()  # not rewritten with the contradicting settings
    # What may differ on resume (max_steps, logging, threads, ...) is accepted, and config.yaml follows.
    locked = _AssertLocked(out)
    summary = run(_cfg(**{"trainer.max_steps": 5, "trainer.num_threads": 2, "trainer.nonfinite": "skip"}), out,
                  extra_callbacks=[locked])
    assert summary["completed_steps"] == 5 and locked.checked
    assert load_config(out / "config.yaml").trainer.max_steps == 5


def test_config_yaml_that_contradicts_the_checkpoint_is_refused(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    _cfg(**{"trainer.seed": 3}).to_yaml(out / "config.yaml")  # edited by hand
    before = (out / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"different config \(keys \['trainer.seed'\]\)"):
        run(_cfg(**{"trainer.seed": 3}), out)
    assert (out / "config.yaml").read_text() == before


# ----------------------------------------------------------------------------------------------------------
# Checksums and the previous checkpoint
# ----------------------------------------------------------------------------------------------------------


def _flip_middle(path, n=4096):
    """Invert ``n`` bytes in the middle of the file's largest tensor: headers and zip index stay intact, so only a
    checksum of the contents can tell (torch loads such a file without complaint)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.file_size // 2 - n // 2
    assert start <= mid and mid + n <= start + info.file_size
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_checkpoints_carry_their_sha256(finished):
    import hashlib

    folder = finished / "checkpoints"
    for name in ("last.ckpt", "prev.ckpt"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert (folder / f"{name}.sha256").read_text() == f"{digest}  {name}\n"  # sha256sum -c format
    steps = [torch.load(folder / n, weights_only=False, map_location="cpu")["bandpo"]["rl_step"]
             for n in ("last.ckpt", "prev.ckpt")]
    assert steps == [4, 2]


def test_a_damaged_last_checkpoint_costs_one_interval_not_the_run(finished, tmp_path, capsys):
    whole = tmp_path / "whole"
    run(_cfg(**{"trainer.max_steps": 6}), whole)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    import zipfile

    _flip_middle(out / "checkpoints" / "last.ckpt")
    with zipfile.ZipFile(out / "checkpoints" / "last.ckpt") as z:  # the zip index is intact: only bytes changed
        assert any(n.endswith("data.pkl") for n in z.namelist())
    capsys.readouterr()
    summary = run(_cfg(**{"trainer.max_steps": 6}), out)
    log = capsys.readouterr().out
    assert summary["completed_steps"] == 6
    warning = [line for line in log.splitlines() if "WARNING" in line]
    assert warning == [f"[bandpo] WARNING: {out / 'checkpoints' / 'last.ckpt'} does not match the SHA-256 recorded in "
                       "last.ckpt.sha256 when it was written (it was damaged afterwards, or the write was cut short); "
                       f"resuming from {out / 'checkpoints' / 'prev.ckpt'}, the checkpoint before it (the steps since "
                       "are recomputed); the damaged file is kept as last.ckpt.damaged"], log
    assert (out / "checkpoints" / "last.ckpt.damaged").is_file()
    _same_rows(whole / "metrics.csv", out / "metrics.csv")  # steps 2, 3 recomputed, the same as before
    a, b = _weights(whole), _weights(out)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_both_checkpoints_damaged_is_one_line_and_nothing_is_overwritten(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    for name in ("last.ckpt", "prev.ckpt"):
        _flip_middle(out / "checkpoints" / name)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    code = main([*ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    folder = out / "checkpoints"
    assert code == 2 and err == [
        f"{PREFIX}cannot resume from {str(folder)!r}: last.ckpt does not match the SHA-256 recorded in "
        "last.ckpt.sha256 when it was written (it was damaged afterwards, or the write was cut short), and prev.ckpt "
        "does not match the SHA-256 recorded in prev.ckpt.sha256 when it was written (it was damaged afterwards, or "
        f"the write was cut short); delete {str(folder)!r} to restart the run from scratch (or restore a good copy)"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("hard_links", [True, False], ids=["links", "no-links"])
def test_a_kill_at_any_point_of_a_checkpoint_write_leaves_one_that_verifies(tmp_path, monkeypatch, hard_links):
    """Stop ``commit_checkpoint`` after each of its file-system steps in turn (as kill -9 would): the folder always
    holds a checkpoint that verifies, the old one or the new one."""
    from bandpo.training import run_folder

    real_replace, real_link = os.replace, os.link

    class Killed(BaseException):
        pass

    for k in range(10):
        folder = tmp_path / f"kill{k}" / "checkpoints"
        folder.mkdir(parents=True)
        for content in (b"P" * 1000, b"L" * 1000):
            (folder / "last.ckpt.tmp").write_bytes(content)
            run_folder.commit_checkpoint(folder / "last.ckpt.tmp", folder / "last.ckpt", folder / "prev.ckpt")
        (folder / "last.ckpt.tmp").write_bytes(b"N" * 1000)
        budget = {"n": k}

        def step(real):
            def wrapped(*args, **kwargs):
                if budget["n"] == 0:
                    raise Killed
                budget["n"] -= 1
                return real(*args, **kwargs)
            return wrapped

        def no_link(*args, **kwargs):
            raise OSError("hard links are not supported here")

        monkeypatch.setattr(os, "replace", step(real_replace))
        monkeypatch.setattr(os, "link", step(real_link) if hard_links else no_link)
        try:
            run_folder.commit_checkpoint(folder / "last.ckpt.tmp", folder / "last.ckpt", folder / "prev.ckpt")
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "link", real_link)
        found = run_folder.find_resume_checkpoint(folder, main=False)
        assert found is not None and found.read_bytes() in (b"L" * 1000, b"N" * 1000), (k, sorted(
            p.name for p in folder.iterdir()))
        if finished:
            assert found.name == "last.ckpt" and found.read_bytes() == b"N" * 1000
            assert (folder / "prev.ckpt").read_bytes() == b"L" * 1000
            break
    else:
        raise AssertionError("commit_checkpoint never finished")
