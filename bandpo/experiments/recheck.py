"""Re-run a committed run (or its first N RL steps) and say whether it reproduces, bit for bit.

    python -m bandpo.experiments.recheck paper_figures/data/testbed/rare/clip-tail0.005-seed3 --steps 10
    python -m bandpo.experiments.recheck RUN_DIR                 # the whole run (its max_steps)
    python -m bandpo.experiments.recheck RUN_DIR --out /tmp/re   # keep the re-run (default: a temporary folder)

The run is trained again from its own ``config.yaml`` (every field; keys a newer bandpo added take their defaults),
with ``trainer.max_steps`` = N when ``--steps`` is given, in the run's numerical mode (``trainer.numerics``: a pinned
run is re-run pinned, the command restarting itself in the pinned environment). Then the files are compared value by
value, timings excluded (:data:`TIMING`): ``warmstart.json``, then ``metrics.csv`` step by step in the committed
file's column order, then the ``eval.csv`` rows of the steps both have. The first difference is printed as
``first difference: metrics.csv step S column C: committed X, re-run Y`` with the number of differing values, and
the exit status is 0 (identical), 1 (different) or 2 (an error: no such run, N larger than the run).

What to expect: a run trained with ``trainer.numerics: pinned`` reproduces on any x86-64 CPU with AVX2 with the same
torch wheel and libraries (``docs/reproducibility.md``; both machines are printed, from ``machine.json``). A run
trained ``native`` (every run committed before the pinned mode existed) reproduces only on a machine whose CPU makes
torch and MKL take the same code paths as the one that trained it. The first N steps of a run equal the first N of
the full run: nothing in a step depends on ``max_steps`` (the evaluation after the last step excepted, which is why
only the eval rows of common steps are compared).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["TIMING", "Difference", "compare_runs", "recheck"]

TIMING = ("time/", "perf/", "wall_s", "time_s")
BOOKKEEPING = ("reused_from",)
"""``warmstart.json`` keys that say where a warm-start came from, not what it computed (a grid run loads its seed's
warm-start from the runner's cache, ``launch.run(warmstart_cache=)``; a re-check trains it): not compared."""
"""Column and key names that measure time, not numbers of the run, never compared: a name that starts with one of
these or whose last ``/`` part is one (``eval/time_s``)."""


class Difference(tuple):
    """(file, step, column, committed, rerun): one value that differs (step None for warmstart.json)."""

    __slots__ = ()

    def __new__(cls, file: str, step: Optional[int], column: str, committed: str, rerun: str):
        return super().__new__(cls, (file, step, column, committed, rerun))

    def __str__(self) -> str:
        where = f"{self[0]}" + (f" step {self[1]}" if self[1] is not None else "")
        return f"{where} column {self[2]}: committed {self[3]}, re-run {self[4]}"


def _timing(key: str) -> bool:
    return key.startswith(TIMING) or key.rsplit("/", 1)[-1] in TIMING


def _same(a: str, b: str) -> bool:
    """Equal values: the same float bits (nan equals nan), else the same text."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return x == y or (math.isnan(x) and math.isnan(y))


def _rows_by_step(path: Path) -> "tuple[list, dict]":
    """(column order, {step: {column: text}}) of a per-step CSV; rows of one step merged, empty cells skipped."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c != "step"]
        rows: dict = {}
        for row in reader:
            if row.get("step") in (None, ""):
                continue
            slot = rows.setdefault(int(float(row["step"])), {})
            slot.update({k: v for k, v in row.items() if k != "step" and v not in ("", None)})
    return columns, rows


def _compare_csv(name: str, committed: Path, rerun: Path, steps: Optional[Sequence[int]] = None) -> "tuple[list, int]":
    """Differences of two per-step CSVs over ``steps`` (default: the re-run's steps) and the number of values
    compared. A step or column missing from one side is a difference."""
    cols_a, a = _rows_by_step(committed)
    cols_b, b = _rows_by_step(rerun)
    columns = [c for c in cols_a if not _timing(c)] + [c for c in cols_b if c not in cols_a and not _timing(c)]
    diffs, n = [], 0
    for step in (sorted(b) if steps is None else steps):
        ra, rb = a.get(step), b.get(step)
        if ra is None or rb is None:
            diffs.append(Difference(name, step, "(row)", "present" if ra else "missing", "present" if rb else "missing"))
            continue
        for c in columns:
            va, vb = ra.get(c, ""), rb.get(c, "")
            n += 1
            if not _same(va, vb):
                diffs.append(Difference(name, step, c, va or "(empty)", vb or "(empty)"))
    return diffs, n


def compare_runs(committed: "str | Path", rerun: "str | Path") -> dict:
    """Compare the re-run folder ``rerun`` with ``committed`` over what the re-run has: ``warmstart.json`` (keys but
    timings and :data:`BOOKKEEPING`), ``metrics.csv`` (every step of the re-run, every column but timings) and ``eval.csv`` (the steps both
    have). Returns {"differences": [Difference, ...] in the order of the files and steps, "compared": number of
    values compared, "steps": the re-run's steps}."""
    a, b = Path(committed), Path(rerun)
    diffs: list = []
    n = 0
    wa, wb = a / "warmstart.json", b / "warmstart.json"
    if wa.is_file() or wb.is_file():
        ja = json.loads(wa.read_text()) if wa.is_file() else {}
        jb = json.loads(wb.read_text()) if wb.is_file() else {}
        keep = [k for k in ja if not _timing(k)] + [k for k in jb if k not in ja and not _timing(k)]
        for key in [k for k in keep if k not in BOOKKEEPING]:
            n += 1
            if not _same(repr(ja.get(key)), repr(jb.get(key))):
                diffs.append(Difference("warmstart.json", None, key, repr(ja.get(key)), repr(jb.get(key))))
    metric_diffs, m = _compare_csv("metrics.csv", a / "metrics.csv", b / "metrics.csv")
    diffs += metric_diffs
    n += m
    steps = sorted(_rows_by_step(b / "metrics.csv")[1])
    if (a / "eval.csv").is_file() and (b / "eval.csv").is_file():
        common = sorted(set(_rows_by_step(a / "eval.csv")[1]) & set(_rows_by_step(b / "eval.csv")[1]))
        eval_diffs, m = _compare_csv("eval.csv", a / "eval.csv", b / "eval.csv", common)
        diffs += eval_diffs
        n += m
    return {"differences": diffs, "compared": n, "steps": steps}


def _machine(path: Path) -> str:
    try:
        rec = json.loads((path / "machine.json").read_text())["processes"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return "not recorded (the run predates machine.json)"
    cpu = rec.get("cpu", {})
    return (f"{cpu.get('model')} ({', '.join(f for f in cpu.get('isa_flags', []) if f.startswith('avx'))}), "
            f"numerics {rec.get('numerics')}, ATen {rec.get('aten_cpu_capability')}, MKL {rec.get('mkl_branch')}, "
            f"torch {rec.get('versions', {}).get('torch')}")


def _load(run: Path, steps: Optional[int]):
    from ..training.config import TrainConfig
    import yaml

    if not (run / "config.yaml").is_file() or not (run / "metrics.csv").is_file():
        raise ValueError(f"{run} is not a run folder (it needs config.yaml and metrics.csv)")
    cfg = TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    have = len(_rows_by_step(run / "metrics.csv")[1])
    if steps is not None:
        if not 1 <= steps <= cfg.trainer.max_steps:
            raise ValueError(f"--steps {steps} is invalid: the run has max_steps {cfg.trainer.max_steps}; "
                             f"give 1 to {cfg.trainer.max_steps}")
        if steps > have:
            raise ValueError(f"--steps {steps} is invalid: {run / 'metrics.csv'} holds {have} steps")
        cfg = cfg.replace({"trainer.max_steps": steps})
    return cfg.replace({"trainer.progress_bar": False})


def recheck(run: "str | Path", out: "str | Path", steps: Optional[int] = None, log=print) -> dict:
    """Train ``run`` again into ``out`` (its first ``steps`` RL steps, or all) and :func:`compare_runs` them;
    returns the comparison with "machines" (committed, re-run). ValueError for a folder that is not a run."""
    from ..training.launch import run as train

    run, out = Path(run), Path(out)
    cfg = _load(run, steps)
    log(f"[recheck] re-running {run} for {cfg.trainer.max_steps} steps (numerics {cfg.trainer.numerics}) into {out}")
    train(cfg, out)
    result = compare_runs(run, out)
    result["machines"] = (_machine(run), _machine(out))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    entry_point = argv is None
    p = argparse.ArgumentParser(prog="python -m bandpo.experiments.recheck", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (config.yaml, metrics.csv, ...)")
    p.add_argument("--steps", type=int, default=None, help="re-run only the first N RL steps (default: all)")
    p.add_argument("--out", default=None, help="folder for the re-run (default: a temporary folder, deleted)")
    args = p.parse_args(argv)
    from ..training.checks import UserError

    try:
        cfg = _load(Path(args.run), args.steps)
        if entry_point and cfg.trainer.numerics == "pinned":
            from ..training.pinning import PinningError, reexec_pinned

            try:
                reexec_pinned()
            except PinningError as e:
                raise ValueError(str(e)) from None
        with tempfile.TemporaryDirectory(prefix="bandpo-recheck-") as tmp:
            out = Path(args.out) if args.out else Path(tmp) / "run"
            result = recheck(args.run, out, args.steps)
    except (ValueError, UserError, OSError) as e:
        print(f"bandpo.experiments.recheck: error: {e}", file=sys.stderr)
        return 2
    committed, rerun = result["machines"]
    print(f"committed on: {committed}")
    print(f"re-run on:    {rerun}")
    diffs = result["differences"]
    steps = result["steps"]
    span = f"steps {steps[0]}-{steps[-1]}" if steps else "no steps"
    if not diffs:
        print(f"identical: {result['compared']} values ({span}; warmstart.json, metrics.csv, eval.csv; timings excluded)")
        return 0
    print(f"first difference: {diffs[0]}")
    print(f"{len(diffs)} of {result['compared']} values differ ({span})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
