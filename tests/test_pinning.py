"""The pinned numerical mode (bandpo/training/pinning.py) and the recheck command (bandpo.experiments.recheck).

The test process itself runs pinned (tests/conftest.py sets the variables before torch loads), so a pinned config
trains in-process here; the subprocesses start from environments that would make torch and MKL choose other code
paths and other thread counts, and the pinned command must still give the same bits.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bandpo.experiments.recheck import compare_runs, main as recheck_main
from bandpo.training import pinning
from bandpo.training.cli import parse_args
from bandpo.training.launch import run
from bandpo.training.config import load_config, preset_path
from bandpo.training.checks import UserError

REPO = Path(__file__).resolve().parents[1]

SMALL = {"warmstart.steps": 30, "trainer.max_steps": 2, "task.heldout_size": 8, "eval.n": 2, "eval.k": [1],
         "rollout.prompts_per_step": 4, "optim.prompts_per_minibatch": 2, "trainer.progress_bar": False}
"""The testbed preset (pinned), a few seconds long."""


def _flags(overrides: dict) -> list:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v).lower() if isinstance(v, bool)
                else str(v)]
    return out


def _cli(out: Path, env_changes: dict, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in pinning.PINNED_ENV and k != pinning.MARKER}
    env.update(env_changes, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "bandpo.training", "--preset", "testbed", *_flags(SMALL), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small pinned testbed run, trained in this (pinned) process."""
    out = tmp_path_factory.mktemp("pinned") / "ref"
    assert pinning.problems() == [], "tests/conftest.py should have pinned the test process"
    run(load_config(preset_path("testbed"), SMALL), out)
    return out


def test_pinned_mode_gives_the_same_bits_whatever_the_process_would_pick(reference, tmp_path):
    # Started where torch would run its DEFAULT kernels, MKL its AUTO branch and 2 OpenMP threads: the command
    # restarts itself pinned and reproduces the in-process run value for value.
    hostile = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
               "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    proc = _cli(tmp_path / "pinned", hostile)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = compare_runs(reference, tmp_path / "pinned")
    assert result["compared"] > 100 and result["differences"] == []
    machine = json.loads((tmp_path / "pinned" / "machine.json").read_text())["processes"][0]
    assert (machine["aten_cpu_capability"], machine["mkl_branch"], machine["threads"]["intra_op_threads"]) == \
        ("AVX2", "COMPATIBLE", 1)
    # The same start without the pinned mode takes the DEFAULT kernels, and the numbers change: the comparison
    # above would have seen it.
    proc = _cli(tmp_path / "native", {"ATEN_CPU_CAPABILITY": "default"}, "--no-pin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert compare_runs(reference, tmp_path / "native")["differences"]
    assert json.loads((tmp_path / "native" / "machine.json").read_text())["processes"][0]["numerics"] == "native"


def test_machine_json(reference):
    rec = json.loads((reference / "machine.json").read_text())["processes"]
    assert len(rec) == 1 and rec[0]["numerics"] == "pinned" and rec[0]["pinned_ok"] is True
    assert rec[0]["resumed"] is False and rec[0]["aten_cpu_capability"] == "AVX2"
    assert rec[0]["versions"]["torch"].startswith("2.") and "avx2" in rec[0]["cpu"]["isa_flags"]
    assert rec[0]["environment"]["MKL_CBWR"] == "COMPATIBLE" and rec[0]["cpu"]["model"]


def test_an_unpinned_process_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(pinning, "problems", lambda: ["torch's CPU kernels run at AVX512, not AVX2"])
    with pytest.raises(UserError, match=r"trainer.numerics is 'pinned' but this process is not: torch's CPU kernels "
                                        r"run at AVX512.*--no-pin"):
        run(load_config(preset_path("testbed"), SMALL), tmp_path / "x")
    assert not (tmp_path / "x" / "metrics.csv").exists()
    # a restart that is already pinned in its environment but still fails (a CPU without AVX2) does not loop
    monkeypatch.setenv(pinning.MARKER, "1")
    with pytest.raises(pinning.PinningError, match="not available on this machine"):
        pinning.reexec_pinned()


def test_config_and_flag():
    cfg, _ = parse_args(["--preset", "testbed", "--out", "x"])
    assert cfg.trainer.numerics == "pinned" and load_config(preset_path("tiny-cpu")).trainer.numerics == "pinned"
    cfg, _ = parse_args(["--preset", "testbed", "--out", "x", "--no-pin"])
    assert cfg.trainer.numerics == "native"
    assert load_config(preset_path("paper-bandpo-kl")).trainer.numerics == "native"
    with pytest.raises(ValueError, match="trainer.numerics 'pinned' is for CPU runs"):
        load_config(preset_path("testbed"), {"trainer.accelerator": "gpu"})
    with pytest.raises(ValueError, match="needs a fixed thread count"):
        load_config(preset_path("testbed"), {"trainer.num_threads": 0})
    with pytest.raises(ValueError, match=r"trainer.numerics = 'fast' is invalid"):
        load_config(preset_path("testbed"), {"trainer.numerics": "fast"})


def test_recheck_reproduces_a_run_and_names_the_first_difference(reference, tmp_path, capsys):
    # the first step of the run, re-run: identical (nothing of a step depends on max_steps)
    assert recheck_main([str(reference), "--steps", "1", "--out", str(tmp_path / "re")]) == 0
    assert "identical:" in capsys.readouterr().out
    # a committed value changed: the first differing step and column are named
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("config.yaml", "warmstart.json", "eval.csv", "machine.json"):
        (tampered / name).write_bytes((reference / name).read_bytes())
    with open(reference / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["entropy"] = repr(float(rows[1]["entropy"]) + 1e-12)
    with open(tampered / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert recheck_main([str(tampered), "--out", str(tmp_path / "re2")]) == 1
    out = capsys.readouterr().out
    assert "first difference: metrics.csv step 1 column entropy: committed" in out and "1 of " in out
    assert recheck_main([str(reference), "--steps", "5"]) == 2
    assert "--steps 5 is invalid" in capsys.readouterr().err
    assert recheck_main([str(tmp_path)]) == 2


def test_recheck_does_not_count_where_a_warm_start_came_from(reference, tmp_path):
    """A grid run loads its seed's warm-start from the runner's cache (warmstart.json says ``reused_from``); the
    same run training its own compares equal, and a changed value still counts."""
    cache = tmp_path / "cache"
    other = load_config(preset_path("testbed"), {**SMALL, "loss.method": "clip"})
    run(other, tmp_path / "clip", warmstart_cache=cache)  # trains and stores the warm-start
    run(load_config(preset_path("testbed"), SMALL), tmp_path / "reused", warmstart_cache=cache)
    assert "reused_from" in json.loads((tmp_path / "reused" / "warmstart.json").read_text())
    result = compare_runs(tmp_path / "reused", reference)
    assert result["compared"] > 100 and result["differences"] == []
    ws = json.loads((tmp_path / "reused" / "warmstart.json").read_text())
    ws["loss"] = ws["loss"] + 1e-9
    (tmp_path / "reused" / "warmstart.json").write_text(json.dumps(ws))
    assert [d[2] for d in compare_runs(tmp_path / "reused", reference)["differences"]] == ["loss"]
