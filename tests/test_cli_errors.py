"""Every command answers bad input with one line: exit status 2, exactly one line on stderr (``<command>: error:
...``, naming what was wrong and what is allowed, and the file in file errors), no traceback, no usage text (only
``--help`` prints that). The convention is ``bandpo.cli``'s; this module walks the bad inputs of each command:
training, the data tool, the experiments' CLIs (plot, stats, bandit, reproduce, testbed), bandpo_theory's CLIs
(certify, report, dppo) and ``paper_figures/reproduce.py``, plus the verifiers given None.

Commands are called in-process (``main(argv)``) except two subprocess checks of the real exit status and stderr.

Run: .venv/bin/python -m pytest -q tests/test_cli_errors.py
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_RUN = ROOT / "paper_figures" / "data" / "runs" / "clip-seed0"
COMMITTED_SUMMARY = ROOT / "paper_figures" / "data" / "testbed" / "summary.csv"
NOT_UTF8 = b'{"prompt": "caf\xe9", "answer": "1"}\n'  # Latin-1, not UTF-8


def one_line_error(capsys, main, argv, name: str) -> str:
    """Call ``main(argv)``; assert exit status 2 (returned or raised), one stderr line ``<name>: error: ...``
    and no traceback; return the message after ``error: ``."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    assert lines[0].startswith(f"{name}: error: "), err
    return lines[0][len(f"{name}: error: "):]


@pytest.fixture()
def files(tmp_path):
    """A plain file, a folder, an empty JSONL file and a non-UTF-8 one."""
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin1.jsonl").write_bytes(NOT_UTF8)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# The shared parser
# ---------------------------------------------------------------------------------------------------------------


def test_the_shared_parser(capsys):
    from bandpo.cli import ArgumentParser, UsageError, float_in, int_at_least

    p = ArgumentParser(prog="python -m some.tool")
    p.add_argument("--max-steps", type=int_at_least(1))
    p.add_argument("--delta", type=float_in(0, low_open=True))
    assert one_line_error(capsys, p.parse_args, ["--max-step", "3"], "some.tool") == (
        "unrecognized arguments: --max-step 3 (did you mean --max-steps?); `python -m some.tool --help` lists the "
        "options")
    assert one_line_error(capsys, p.parse_args, ["--max-steps", "0"], "some.tool") == (
        "argument --max-steps: 0 is below 1; give an integer >= 1")
    for bad in ("-1", "0", "nan", "inf"):
        assert one_line_error(capsys, p.parse_args, ["--delta", bad], "some.tool") == (
            f"argument --delta: {bad} is out of range; give a finite number > 0")
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--help"])
    assert e.value.code == 0 and "usage: python -m some.tool" in capsys.readouterr().out
    lib = ArgumentParser(prog="lib", exit_on_error=False)
    lib.add_argument("--n", type=int_at_least(1))
    with pytest.raises(UsageError, match=r"^argument --n: 0 is below 1"):
        lib.parse_args(["--n", "0"])
    with pytest.raises(UsageError, match=r"^unrecognized arguments: --m"):
        lib.parse_args(["--m"])
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# python -m bandpo.training
# ---------------------------------------------------------------------------------------------------------------


def test_training_flags_and_config_files(files, capsys):
    from bandpo.training.cli import main

    name = "bandpo.training"
    out = str(files / "run")
    msg = one_line_error(capsys, main, ["--preset", "tiny-cpu", "--out", out, "--bogus"], name)
    assert msg.startswith("unrecognized arguments: --bogus;") and "--help" in msg
    assert "did you mean --max-steps" in one_line_error(capsys, main, ["--preset", "tiny-cpu", "--out", out,
                                                                       "--max-step", "5"], name)
    assert one_line_error(capsys, main, ["--preset", "tiny-cpu"], name) == (
        "the following arguments are required: --out")
    folder = files / "folder"
    assert one_line_error(capsys, main, ["--config", str(folder), "--out", out], name) == (
        f"config file {folder.resolve()} is a folder; give a YAML file (or --preset NAME)")
    bad = files / "latin1.yaml"
    bad.write_bytes(b"model:\n  hidden_size: 32\n# caf\xe9\n")
    assert one_line_error(capsys, main, ["--config", str(bad), "--out", out], name) == (
        f"config file {bad.resolve()} is not UTF-8 text (byte 0xe9 at line 3); save it as UTF-8")


def test_training_data_files(files, capsys):
    """Empty, non-UTF-8 and column-less data files, as the task's data and as an eval set: the file is named."""
    from bandpo.training.cli import main

    name = "bandpo.training"
    (files / "nocol.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    task = ["--preset", "tiny-cpu", "--task.name", "math_file", "--warmstart.steps", "0", "--out", str(files / "r")]
    msg = one_line_error(capsys, main, [*task, "--task.path", str(files / "empty.jsonl")], name)
    assert msg.startswith(f"task.path {str(files / 'empty.jsonl')!r} is empty; it needs rows") and "Stop" not in msg
    assert one_line_error(capsys, main, [*task, "--task.path", str(files / "latin1.jsonl")], name) == (
        f"task.path {str(files / 'latin1.jsonl')!r} is not UTF-8 text (byte 0xe9 at line 1, byte offset 15); save "
        "it as UTF-8")
    msg = one_line_error(capsys, main, [*task, "--task.path", str(files / "nocol.jsonl")], name)
    assert msg.startswith(f"task.path {str(files / 'nocol.jsonl')!r} row 0: column 'prompt' not found"), msg
    evals = ["--preset", "tiny-cpu", "--out", str(files / "r")]
    for file, words in (("empty.jsonl", "is empty"), ("latin1.jsonl", "is not UTF-8 text"),
                        ("nocol.jsonl", "row 0: column 'prompt' not found")):
        msg = one_line_error(capsys, main, [*evals, "--eval.sets", f"x={files / file}"], name)
        assert msg.startswith(f"eval set 'x': file {str(files / file)!r} {words}"), msg


def test_training_unknown_flag_as_a_command():
    """The real command: exit status 2 and one line, no usage dump."""
    out = subprocess.run([sys.executable, "-m", "bandpo.training", "--preset", "tiny-cpu", "--out", "unused",
                          "--bogus"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.splitlines() == [
        "bandpo.training: error: unrecognized arguments: --bogus; `python -m bandpo.training --help` lists the "
        "options"]


# ---------------------------------------------------------------------------------------------------------------
# python -m bandpo.training.data
# ---------------------------------------------------------------------------------------------------------------


def test_data_tool(files, capsys):
    from bandpo.training.data import main

    name = "bandpo.training.data"
    good = files / "g.jsonl"
    good.write_text('{"question": "1+1?", "answer": "so #### 2"}\n')
    dst = str(files / "o.jsonl")
    assert one_line_error(capsys, main, ["gsm8k", str(files / "empty.jsonl"), dst], name).startswith(
        f"GSM8K file {str(files / 'empty.jsonl')!r} is empty")
    assert one_line_error(capsys, main, ["gsm8k", str(files / "latin1.jsonl"), dst], name).startswith(
        f"GSM8K file {str(files / 'latin1.jsonl')!r} is not UTF-8 text (byte 0xe9")
    assert one_line_error(capsys, main, ["gsm8k", str(good), str(files / "folder")], name) == (
        f"DST {str(files / 'folder')!r} is a folder; give a file path (.jsonl)")
    assert one_line_error(capsys, main, ["gsm8k", str(good), str(files / "afile" / "o.jsonl")], name) == (
        f"DST {str(files / 'afile' / 'o.jsonl')!r} lies under {str(files / 'afile')!r}, which is a file; choose a "
        "path in a folder")
    assert one_line_error(capsys, main, ["gsm8k", str(good)], name) == (
        "the following arguments are required: dst")
    assert one_line_error(capsys, main, ["bogus"], name).startswith("argument command: invalid choice: 'bogus'")
    assert not (files / "o.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------
# The experiments
# ---------------------------------------------------------------------------------------------------------------


def test_plot(files, capsys):
    from bandpo.experiments.plot import main

    name = "bandpo.experiments.plot"
    run = str(COMMITTED_RUN)
    under = files / "afile" / "x.png"
    assert one_line_error(capsys, main, [run, "--out", str(under)], name) == (
        f"--out {str(under)!r} lies under {str(files / 'afile')!r}, which is a file; choose a path in a folder")
    assert one_line_error(capsys, main, [run, "--out", str(files / "folder")], name) == (
        f"--out {str(files / 'folder')!r} is a folder; give a file path (.png, .pdf, .svg)")
    assert one_line_error(capsys, main, [run, "--out", str(files / "x.jpgg")], name) == (
        f"--out {str(files / 'x.jpgg')!r}: unsupported file type '.jpgg'; use .png, .pdf, .svg")
    assert one_line_error(capsys, main, [str(files / "afile"), "--out", str(files / "x.png")], name) == (
        f"run folder {str(files / 'afile')!r} is a file; give a folder written by python -m bandpo.training --out")
    (files / "badrun").mkdir()
    (files / "badrun" / "metrics.csv").write_bytes(b"step,reward/mean\n0,caf\xe9\n")
    assert one_line_error(capsys, main, [str(files / "badrun"), "--out", str(files / "x.png")], name).startswith(
        f"{str(files / 'badrun' / 'metrics.csv')!r} cannot be read as a UTF-8 CSV file (")
    assert "unrecognized arguments: --bogus" in one_line_error(capsys, main, [run, "--bogus"], name)
    assert not (files / "x.png").exists()


def test_stats(files, capsys):
    from bandpo.experiments.stats import main

    name = "bandpo.experiments.stats"
    metrics = COMMITTED_RUN / "metrics.csv"
    assert one_line_error(capsys, main, [str(metrics)], name) == (
        f"{str(metrics)!r} is not a testbed summary.csv: it lacks the columns ['grid', 'method', 'setting', "
        "'seed'] (write one with python -m bandpo.experiments.testbed)")
    assert one_line_error(capsys, main, [str(files / "folder")], name) == (
        f"{str(files / 'folder')!r} is a folder without summary.csv; give the summary.csv written by python -m "
        "bandpo.experiments.testbed")
    header = COMMITTED_SUMMARY.read_text().splitlines()[0]
    (files / "header-only.csv").write_text(header + "\n")
    assert one_line_error(capsys, main, [str(files / "header-only.csv")], name) == (
        "the summary has no rows; run python -m bandpo.experiments.testbed first")
    (files / "latin1.csv").write_bytes(header.encode() + b"\nmain,caf\xe9\n")
    assert one_line_error(capsys, main, [str(files / "latin1.csv")], name).startswith(
        f"{str(files / 'latin1.csv')!r} cannot be read as a UTF-8 CSV file (")
    summary = str(COMMITTED_SUMMARY)
    assert one_line_error(capsys, main, [summary, "--grid", "nope"], name).startswith(
        "--grid nope: not in the summary; its grids: ablation, ")
    assert one_line_error(capsys, main, [summary, "--baseline", "nope"], name).startswith(
        "--baseline nope: not in the summary; its methods: ")
    assert one_line_error(capsys, main, [summary, "--markdown", "--methods", "clip", "nope"], name).startswith(
        "--methods nope: not in the summary; its methods: ")


def test_stats_report_block_with_bad_options():
    from bandpo.experiments.stats import render_report

    with pytest.raises(ValueError, match=r"^bad options in report block <!-- stats --grid -->: argument --grid: "
                                         r"expected at least one argument$"):
        render_report("<!-- stats --grid -->\n<!-- /stats -->", [])


def test_bandit(capsys):
    from bandpo.experiments.bandit import main

    name = "bandpo.experiments.bandit"
    for flag, value, allowed in (("--steps", "-1", "give an integer >= 1"), ("--steps", "0", "give an integer >= 1"),
                                 ("--seeds", "0", "give an integer >= 1"),
                                 ("--minibatches", "0", "give an integer >= 1"),
                                 ("--epochs", "-1", "give an integer >= 1"),
                                 ("--lr", "-1", "give a finite number > 0"),
                                 ("--rare-prob", "1", "give a number in (0, 1)")):
        msg = one_line_error(capsys, main, [flag, value], name)
        assert msg.startswith(f"argument {flag}: {value} is ") and msg.endswith(allowed), msg
    assert one_line_error(capsys, main, ["--minibatches", "3"], name) == (
        "n_groups (4) must be a multiple of minibatches (3)")
    assert one_line_error(capsys, main, ["--methods", ","], name).startswith("--methods names no method; give ")


def test_bandit_as_a_command():
    out = subprocess.run([sys.executable, "-m", "bandpo.experiments.bandit", "--steps", "-1"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.splitlines() == [
        "bandpo.experiments.bandit: error: argument --steps: -1 is below 1; give an integer >= 1"]


@pytest.mark.parametrize("runner", ["reproduce", "testbed"])
def test_runners(runner, files, capsys):
    main = importlib.import_module(f"bandpo.experiments.{runner}").main
    name = f"bandpo.experiments.{runner}"
    out = ["--out", str(files / "o"), "--seeds", "0"]
    for shard in ("2/1", "0/0", "-1/2"):
        assert one_line_error(capsys, main, [*out, f"--shard={shard}"], name) == (
            f"--shard {shard}: needs 0 <= i < n (e.g. 0/2 and 1/2 split the jobs over two processes)")
    for steps in ("0", "-1"):
        assert one_line_error(capsys, main, [*out, "--max-steps", steps], name) == (
            f"argument --max-steps: {steps} is below 1; give an integer >= 1")
    for where, why in ((files / "missing", "does not exist"), (files / "afile", "is a file")):
        assert one_line_error(capsys, main, ["--out", str(where), "--summary-only"], name) == (
            f"--out {str(where)!r} {why}; --summary-only reads the run folders of a runner's output folder")
    assert one_line_error(capsys, main, ["--out", str(files / "afile"), "--seeds", "0"], name) == (
        f"--out {str(files / 'afile')!r} is a file, not a folder; give a folder for the run (it is created if "
        "needed)")
    assert not (files / "o").exists()


# ---------------------------------------------------------------------------------------------------------------
# bandpo_theory
# ---------------------------------------------------------------------------------------------------------------


def test_certify(files, capsys):
    pytest.importorskip("cvxpy")
    from bandpo_theory.certify import main

    name = "bandpo_theory.certify"
    for bad in ("-1", "0", "nan"):
        assert one_line_error(capsys, main, ["--delta", bad], name) == (
            f"argument --delta: {bad} is out of range; give a finite number > 0")
    assert one_line_error(capsys, main, ["--vocab", "1"], name) == (
        "argument --vocab: 1 is below 2; give an integer >= 2")
    assert one_line_error(capsys, main, ["--trials", "0"], name) == (
        "argument --trials: 0 is below 1; give an integer >= 1")
    under = files / "afile" / "table.md"
    assert one_line_error(capsys, main, ["--trials", "1", "--out", str(under)], name) == (
        f"--out {str(under)!r} lies under {str(files / 'afile')!r}, which is a file; choose a path in a folder")
    assert capsys.readouterr().out == ""  # refused before any solve


def test_report_and_dppo(files, capsys):
    pytest.importorskip("sympy")
    from bandpo_theory.dppo import main as dppo_main
    from bandpo_theory.report import main as report_main

    assert one_line_error(capsys, report_main, ["--out", str(files / "folder")], "bandpo_theory.report") == (
        f"--out {str(files / 'folder')!r} is a folder; give a file path")
    assert one_line_error(capsys, report_main, ["--check", "--out", str(files / "no.md")], "bandpo_theory.report") == (
        f"--out {str(files / 'no.md')!r} does not exist; --check compares a written report file (run without "
        "--check to write it)")
    assert one_line_error(capsys, dppo_main, ["--bogus"], "bandpo_theory.dppo").startswith(
        "unrecognized arguments: --bogus;")


# ---------------------------------------------------------------------------------------------------------------
# paper_figures/reproduce.py
# ---------------------------------------------------------------------------------------------------------------


def test_paper_figures_reproduce(files, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(ROOT / "paper_figures"))
    main = importlib.import_module("reproduce").main
    name = "paper_figures/reproduce.py"
    assert one_line_error(capsys, main, ["--only", "nope"], name).startswith(
        "--only nope matches none of fig1_bounds, ")
    assert one_line_error(capsys, main, ["--testbed-jobs", "0"], name) == (
        "argument --testbed-jobs: 0 is below 1; give an integer >= 1")
    assert one_line_error(capsys, main, ["--no-data", "--only", "fig1", "--out", str(files / "afile")], name) == (
        f"--out {str(files / 'afile')!r} is a file; give a folder path")


def test_figure_scripts(files, capsys, monkeypatch):
    """A figure script: counts and --out checked before drawing; unreadable data is one line (``style.run_cli``)."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(ROOT / "paper_figures"))
    fig1 = importlib.import_module("fig1_bounds").main
    name = "paper_figures/fig1_bounds.py"
    assert one_line_error(capsys, fig1, ["--n", "0"], name) == "argument --n: 0 is below 2; give an integer >= 2"
    under = files / "afile" / "x.png"
    assert one_line_error(capsys, fig1, ["--out", str(under)], name) == (
        f"argument --out: {str(under)!r} lies under {str(files / 'afile')!r}, which is a file; choose a path in a "
        "folder")
    fig5 = importlib.import_module("fig5_bandit")
    monkeypatch.setattr(sys, "argv", ["fig5_bandit.py", "--data", str(files / "afile"), "--out", str(files)])
    assert one_line_error(capsys, lambda argv: importlib.import_module("style").run_cli(fig5.main), [],
                          "paper_figures/fig5_bandit.py").startswith(
        f"{str(files / 'afile')!r} is not a UTF-8 JSON file (Expecting value")
    assert not list(files.glob("*.png"))


# ---------------------------------------------------------------------------------------------------------------
# Verifiers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verifier", ["exact", "dapo", "number", "math_verify"])
def test_verifiers_refuse_none_and_empty_answers(verifier):
    from bandpo.training.verifiers import get_verifier

    verify = get_verifier(verifier)
    with pytest.raises(TypeError, match=rf"^verifier '{verifier}': completion must be a string \(the generated "
                                        r"text\), got NoneType$"):
        verify(None, "1")
    with pytest.raises(TypeError, match=rf"^verifier '{verifier}': answer must be the ground truth as a string "
                                        r"\(or a number\), got NoneType$"):
        verify("Answer: 1", None)
    with pytest.raises(ValueError, match=rf"^verifier '{verifier}': answer is empty; a ground truth is needed"):
        verify("", " ")
