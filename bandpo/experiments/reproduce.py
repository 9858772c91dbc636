"""Small-scale reproduction of the paper's comparison: GRPO clip, Clip-Higher, DCPO and BandPO (KL; TV and χ² as
ablations), 3 seeds each, on the tiny CPU task.

    python -m bandpo.experiments.reproduce                      # all methods x seeds 0 1 2 into paper_figures/data/runs
    python -m bandpo.experiments.reproduce --methods band_kl clip --seeds 0 --max-steps 50
    python -m bandpo.experiments.reproduce --shard 0/2 &  python -m bandpo.experiments.reproduce --shard 1/2   # two processes

Every run is the ``tiny-cpu`` preset (or ``--preset``) with ``loss.method`` set to the method id (``METHODS``:
ids of the method table ``bandpo.losses.METHODS``, with their own settings) and ``trainer.seed = k``;
everything else is identical across methods, including the warm-started starting point of a given seed (the
warm-start depends only on the seed). Run from the repository root. Finished runs (``summary.json`` present with
``completed_steps >= max_steps``) are skipped; an interrupted run resumes from its checkpoint.
Checkpoints are deleted when a run finishes unless ``--keep-checkpoints``.

Data layout (read by the figure scripts; documented in ``bandpo/training/presets/README.md``)::

    <out>/summary.csv                 one row per finished run (columns in SUMMARY_COLUMNS)
    <out>/<method>-seed<k>/metrics.csv  one row per RL step: column ``step`` (0-based) and the logged metrics
    <out>/<method>-seed<k>/config.yaml  the resolved config of the run
    <out>/<method>-seed<k>/warmstart.json, summary.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..cli import ArgumentParser, int_at_least
from ..losses import get_method
from ..training.config import load_config, preset_path

__all__ = ["METHODS", "SEEDS", "method_overrides", "SUMMARY_COLUMNS", "is_finished", "reproduce", "summarize"]

METHODS: tuple = ("clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2")
"""The paper's comparison, as ids of the method table ``bandpo.losses.METHODS`` (``clip`` is GRPO's 0.2/0.2
clip; each method's own settings are the paper's: docs/paper-notes.md, "Baselines"). Dual-clip 10, the KL term,
the aggregation and everything else come from the preset and are the same for all."""


def method_overrides(method: str) -> dict:
    """The config overrides of one method id: ``{"loss.method": method}`` (its settings are the method's own)."""
    get_method(method)  # ValueError listing the known ids
    return {"loss.method": method}

SEEDS = (0, 1, 2)
DEFAULT_OUT = Path("paper_figures/data/runs")
WINDOW = 25
"""Steps averaged for the 'first'/'last' columns of the summary."""

SUMMARY_COLUMNS = (
    "method", "seed", "steps", "reward_first", "reward_last", "accuracy_first", "accuracy_last", "entropy_first",
    "entropy_last", "clip_region_mean", "ppo_kl_mean", "completion_length_last", "wall_s",
)
"""summary.csv columns: *_first / *_last are means over the first / last WINDOW steps; clip_region_mean and
ppo_kl_mean are means over all steps; wall_s is the sum of the rows' time/step_s (RL steps only)."""


def run_dir(out: Path, method: str, seed: int) -> Path:
    return Path(out) / f"{method}-seed{seed}"


def is_finished(path: Path, max_steps: int) -> bool:
    """True if the run in ``path`` completed at least ``max_steps`` RL steps."""
    summary = Path(path) / "summary.json"
    if not summary.is_file():
        return False
    try:
        return int(json.loads(summary.read_text())["completed_steps"]) >= max_steps
    except (ValueError, KeyError):
        return False


def _mean(rows: list, key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key, "") != ""]
    return statistics.fmean(values) if values else math.nan


def summarize(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> list:
    """Write ``<out>/summary.csv`` from the finished runs' metrics; returns its rows."""
    out = Path(out)
    table = []
    for method in methods:
        for seed in seeds:
            path = run_dir(out, method, seed) / "metrics.csv"
            if not (run_dir(out, method, seed) / "summary.json").is_file() or not path.is_file():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            first, last = rows[:WINDOW], rows[-WINDOW:]
            table.append({
                "method": method, "seed": seed, "steps": len(rows),
                "reward_first": _mean(first, "reward/mean"), "reward_last": _mean(last, "reward/mean"),
                "accuracy_first": _mean(first, "accuracy"), "accuracy_last": _mean(last, "accuracy"),
                "entropy_first": _mean(first, "entropy"), "entropy_last": _mean(last, "entropy"),
                "clip_region_mean": _mean(rows, "clip_ratio/region_mean"), "ppo_kl_mean": _mean(rows, "ppo_kl"),
                "completion_length_last": _mean(last, "completion_length/mean"),
                "wall_s": sum(float(r["time/step_s"]) for r in rows),
            })
    if table:
        with open(out / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(table)
    return table


def format_table(table: list, methods: Sequence[str]) -> str:
    """Per method: mean ± std over seeds (sample std) of the final reward, accuracy and entropy."""
    lines = [f"{'method':<11} {'n':>2}  {'reward_last':>15}  {'accuracy_last':>15}  {'entropy_first':>15}  "
             f"{'entropy_last':>15}  {'clip_region':>8}"]
    for method in methods:
        rows = [r for r in table if r["method"] == method]
        if not rows:
            continue

        def ms(key: str) -> str:
            v = [r[key] for r in rows]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            return f"{statistics.fmean(v):.3f} ± {sd:.3f}"

        lines.append(f"{method:<11} {len(rows):>2}  {ms('reward_last'):>15}  {ms('accuracy_last'):>15}  "
                     f"{ms('entropy_first'):>15}  {ms('entropy_last'):>15}  "
                     f"{statistics.fmean(r['clip_region_mean'] for r in rows):8.4f}")
    return "\n".join(lines)


def reproduce(
    out: Path = DEFAULT_OUT,
    methods: Sequence[str] = tuple(METHODS),
    seeds: Sequence[int] = SEEDS,
    *,
    preset: str = "tiny-cpu",
    overrides: Optional[dict] = None,
    keep_checkpoints: bool = False,
    shard: tuple = (0, 1),
    runner: Optional[Callable] = None,
) -> list:
    """Train every (method, seed) not yet finished, in seed-major order; returns the summary rows.

    ``shard = (i, n)`` runs only every n-th job starting at i (to split the work over processes).
    """
    from ..training.launch import run

    runner = runner or run
    for m in methods:
        get_method(m)  # ValueError listing the known ids
    out = Path(out)
    jobs = [(seed, method) for seed in seeds for method in methods]
    for n, (seed, method) in enumerate(jobs):
        if n % shard[1] != shard[0]:
            continue
        cfg = load_config(preset_path(preset), {**(overrides or {}), **method_overrides(method), "trainer.seed": seed,
                                                "trainer.progress_bar": False})
        path = run_dir(out, method, seed)
        if is_finished(path, cfg.trainer.max_steps):
            print(f"[reproduce] skip {path} (finished)", flush=True)
            continue
        print(f"[reproduce] run {path} ({n + 1}/{len(jobs)})", flush=True)
        runner(cfg, path)
        if not keep_checkpoints:
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return summarize(out, methods, seeds)


def _parse_set(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects section.field=value, got {item!r}")
        out[key] = value
    return out


def _parse_shard(text: str) -> tuple:
    """``"i/n"`` (the ``--shard`` option of the runners) -> (i, n) with 0 <= i < n; ValueError naming the expected
    form."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: needs 0 <= i < n (e.g. 0/2 and 1/2 split the jobs over two processes)")
    return i, n


def check_out_root(out: str, summary_only: bool) -> Path:
    """The ``--out`` root of a runner: for ``--summary-only`` an existing folder, else a folder that can be created
    and written (``bandpo.training.checks.check_out_dir``). ValueError naming the folder otherwise."""
    p = Path(out).expanduser()
    if not summary_only:
        from ..training.checks import check_out_dir

        return check_out_dir(out)
    if not p.is_dir():
        why = "is a file" if p.exists() else "does not exist"
        raise ValueError(f"--out {str(out)!r} {why}; --summary-only reads the run folders of a runner's output folder")
    return p


def _run_options(args: argparse.Namespace) -> "tuple[dict, tuple]":
    """(config overrides, (i, n)) from a runner's ``--set``, ``--max-steps`` (-> ``trainer.max_steps``) and
    ``--shard`` options (both runners share them); ValueError naming the bad option."""
    overrides = _parse_set(args.set)
    if args.max_steps is not None:
        overrides["trainer.max_steps"] = args.max_steps
    if getattr(args, "no_pin", False):
        overrides["trainer.numerics"] = "native"
    return overrides, _parse_shard(args.shard)


def _pin_if_asked(preset: str, overrides: dict) -> None:
    """At a runner's entry point: restart the process in the pinned numerical mode (``bandpo.training.pinning``)
    when the runs' base config asks for it (the CPU presets do; ``--no-pin`` does not)."""
    from ..training.config import load_config, preset_path
    from ..training.pinning import PinningError, reexec_pinned

    if load_config(preset_path(preset), overrides).trainer.numerics == "pinned":
        try:
            reexec_pinned()
        except PinningError as e:
            raise ValueError(f"{e} (--no-pin runs with this machine's native numerics)") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python -m bandpo.experiments.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output root (default {DEFAULT_OUT})")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"method ids (default: {list(METHODS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--preset", default="tiny-cpu")
    p.add_argument("--max-steps", type=int_at_least(1), help="RL steps per run (default: the preset's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    p.add_argument("--summary-only", action="store_true", help="only rewrite summary.csv and print the table")
    p.add_argument("--no-pin", action="store_true",
                   help="this CPU's native numerics instead of the preset's pinned mode (docs/reproducibility.md)")
    args = p.parse_args(argv)
    try:
        overrides, (i, n) = _run_options(args)
        out = check_out_root(args.out, args.summary_only)
        if args.summary_only:
            table = summarize(out, args.methods, args.seeds)
        else:
            if argv is None:
                _pin_if_asked(args.preset, overrides)
            table = reproduce(out, args.methods, args.seeds, preset=args.preset, overrides=overrides,
                              keep_checkpoints=args.keep_checkpoints, shard=(i, n))
    except ValueError as e:
        return p.report(e)
    print(format_table(table, args.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
