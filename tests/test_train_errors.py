"""Bad input to ``python -m bandpo.training`` is one line on stderr (exit status 2), never a traceback; ``--help``
is readable; flag prefixes are refused; ``--dry-run`` says what it checked and replaced.

Run: .venv/bin/python -m pytest -q tests/test_train_errors.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from bandpo.training.cli import main
from bandpo.training.config import CONFIG_DIR, load_config

PREFIX = "bandpo.training: error: "


def _error(capsys, argv):
    """Run the CLI in-process; return its one-line error (asserting status 2 and a single stderr line)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


@pytest.fixture()
def tiny_args():
    return ["--preset", "tiny-cpu", "--trainer.progress_bar", "false"]


def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys, tiny_args):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert _error(capsys, [*tiny_args, "--out", str(f)]) == (
        f"--out {str(f)!r} is a file, not a folder; give a folder for the run (it is created if needed)")
    assert _error(capsys, [*tiny_args, "--out", str(f / "run")]) == (
        f"--out {str(f / 'run')!r} lies under {str(f)!r}, which is a file; choose a folder path")


def test_out_that_cannot_be_written(capsys, tiny_args):
    target = "/sys/bandpo-test-run"  # sysfs refuses new folders, even to root
    if sys.platform != "linux" or not Path("/sys").is_dir():
        pytest.skip("needs Linux sysfs")
    msg = _error(capsys, [*tiny_args, "--out", target])
    assert re.fullmatch(rf"--out '{target}' cannot be written \(.+\); choose a folder you can write to", msg), msg


def test_corrupt_or_truncated_checkpoint(tmp_path, capsys, tiny_args):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    load_config(CONFIG_DIR / "tiny-cpu.yaml", {"trainer.progress_bar": False}).to_yaml(out / "config.yaml")
    ckpt = out / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # a write cut short
    assert _error(capsys, [*tiny_args, "--out", str(out)]) == (
        f"cannot resume from {str(ckpt)!r}: it is truncated or corrupt (not a complete torch zip archive); delete it "
        "to restart the run from scratch (or restore a good copy)")
    ckpt.write_bytes(b"")
    assert "it is empty; delete it to restart" in _error(capsys, [*tiny_args, "--out", str(out)])


def test_resuming_a_folder_with_a_different_config(tmp_path, capsys, tiny_args):
    out = tmp_path / "run"
    out.mkdir()
    load_config(CONFIG_DIR / "tiny-cpu.yaml", {"trainer.progress_bar": False}).to_yaml(out / "config.yaml")
    assert _error(capsys, [*tiny_args, "--out", str(out), "--delta", "0.1", "--lr", "1e-3"]) == (
        f"{out} holds a run with a different config (keys ['loss.delta', 'optim.lr']); resume it with the same "
        "settings or choose another --out")


def test_malformed_and_empty_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_size: 32\ntask:\n  name: [addition\n")
    msg = _error(capsys, ["--config", str(bad), "--out", str(tmp_path / "o")])
    assert msg.startswith(f"config file {bad.resolve()} is not valid YAML at line 5, column 1: "), msg
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert _error(capsys, ["--config", str(empty), "--out", str(tmp_path / "o")]) == (
        f"config file {empty.resolve()} is empty; it needs a mapping of sections (model:, task:, rollout:, loss:, "
        "...), or use --preset tiny-cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_requested_without_a_gpu(tmp_path, capsys, tiny_args):
    # --no-pin: the CPU preset's pinned numerics are refused for a GPU run first (test below)
    msg = _error(capsys, [*tiny_args, "--accelerator", "gpu", "--no-pin", "--out", str(tmp_path / "o")])
    assert msg.startswith("trainer.accelerator = 'gpu' but no GPU is visible (torch ") and msg.endswith(
        "use --accelerator cpu, or --dry-run to check a GPU config on this machine"), msg


def test_pinned_numerics_on_a_gpu_are_refused(tmp_path, capsys, tiny_args):
    msg = _error(capsys, [*tiny_args, "--accelerator", "gpu", "--out", str(tmp_path / "o")])
    assert "trainer.numerics 'pinned' is for CPU runs" in msg and "--no-pin" in msg, msg


def test_missing_eval_file(tmp_path, capsys, tiny_args):
    msg = _error(capsys, [*tiny_args, "--eval.sets", f"aime24={tmp_path / 'aime.jsonl'}", "--out", str(tmp_path)])
    assert msg.startswith(f"eval set 'aime24': file '{tmp_path / 'aime.jsonl'}' does not exist; nothing is "
                          "downloaded at run time"), msg


def test_flag_prefixes_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--preset", "tiny-cpu", "--max-step", "5", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "unrecognized arguments: --max-step 5" in capsys.readouterr().err


def test_help_is_readable_and_shows_the_preset_values(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny-cpu", "--help"])
    text = capsys.readouterr().out
    assert "Optional" not in text and "Union" not in text and "typing" not in text and "NoneType" not in text
    flat = " ".join(text.split())
    assert "--trainer.max_steps INT" in flat and "--model.name_or_path STR|none" in flat
    assert "--trainer.devices INT|STR" in flat and "--eval.k INT,..." in flat and "--task.chat_template true|false" in flat
    assert "[300]" in flat and "[band_kl]" in flat  # tiny-cpu's max_steps and method, not the dataclass defaults
    assert "are those of the preset tiny-cpu" in flat
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "[200]" in " ".join(capsys.readouterr().out.split())  # without a preset: the built-in default


def test_dry_run_reports_what_it_checked_and_replaced(tmp_path, capsys):
    """The paper config on this machine: no model, no data, no eval files; the dry run says so and still runs."""
    code = main(["--config", str(CONFIG_DIR / "paper-bandpo-kl.yaml"), "--dry-run", "--out", str(tmp_path / "dry"),
                 "--trainer.num_threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "model 'Qwen/Qwen2.5-3B-Instruct': MISSING (not a local folder and not in the Hugging Face cache" in out
    assert "-> replaced by the tiny random model" in out
    assert "task.path 'data/dapo_math_train.jsonl': MISSING -> replaced by 16 generated problems" in out
    for name, path in (("aime24", "data/aime_2024.jsonl"), ("aime25", "data/aime_2025.jsonl"),
                       ("amc23", "data/amc_2023.jsonl")):
        assert f"eval set '{name}' '{path}': MISSING -> replaced by 4 generated problems" in out
    assert ("dry run passed with stand-ins, but the real run would FAIL at start-up on this machine: missing "
            "model.name_or_path, task.path, eval set aime24 (data/aime_2024.jsonl), eval set aime25 "
            "(data/aime_2025.jsonl), eval set amc23 (data/amc_2023.jsonl)") in out
    assert (tmp_path / "dry" / "eval.csv").is_file()  # the stand-in eval sets were evaluated


def test_resume_hint_names_this_interpreter_and_a_finished_run_says_nothing_was_trained(monkeypatch, tmp_path):
    """The resume hint is the command that works here (the README runs `.venv/bin/python -m ...`, not a bare
    `python`), and a run resumed with a smaller --max-steps than its checkpoint's step says so instead of
    'done: 30/20 steps'."""
    import sys

    from bandpo.training.cli import done_past_max_steps, resume_command

    monkeypatch.chdir(tmp_path)
    exe = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(exe))
    assert resume_command(["--preset", "tiny-cpu", "--out", "runs/x y"]) == (
        ".venv/bin/python -m bandpo.training --preset tiny-cpu --out 'runs/x y'")
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert resume_command([]).startswith("/usr/bin/python3 -m bandpo.training")
    line = done_past_max_steps(30, 20, "runs/x")
    assert "RL step 30, past max_steps 20" in line and "30/20" not in line
