"""Regenerate every paper figure into paper_figures/out/: ``make reproduce`` runs this.

    python paper_figures/reproduce.py                  # data that is missing is produced first, then all figures
    python paper_figures/reproduce.py --only fig1 fig2 # a subset (matched on the script name's prefix)
    python paper_figures/reproduce.py --no-data        # figures only, from the data already on disk
    python paper_figures/reproduce.py --testbed-jobs 4 # the testbed grid in 4 processes (shards)

Steps, each skipped when its output already exists (delete the file or folder to redo it):
1. training runs: the tiny-model reproduction runner writes paper_figures/data/runs/<method>-seed<k>/metrics.csv
   and skips finished runs itself; its progress bars are shown as it goes;
2. the rare-arm bandit histories: paper_figures/data/bandit/ (seconds);
3. the solver benchmark: benchmarks/results/band_speed.json (about a minute on 2 CPU cores);
4. the testbed grid (``python -m bandpo.experiments.testbed --grid all``, 24 variants x 8 seeds, preset
   ``testbed``) into paper_figures/data/testbed/, when a run is missing (the runner skips finished runs; all 192
   runs took 1.6 CPU-hours, 47 minutes of wall time as 2 processes on 2 cores; ``--testbed-jobs N`` splits it over N
   processes); skipped with a message when the preset or one of its
   methods is not in this checkout;
5. every figure script, in-process (one Python start-up for all of them), into ``--out``; fig4 is drawn a second
   time for the testbed (``--testbed``). A testbed figure without its data says so and is skipped.
It ends by listing the files it wrote, with their sizes.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from style import DATA, OUT, ROOT  # noqa: E402

from bandpo.cli import ArgumentParser, check_out_path, int_at_least  # noqa: E402

FIGURES = (
    "fig1_bounds",
    "fig2_regions",
    "fig3_band_family",
    "fig4_training",
    "fig5_bandit",
    "fig6_solver_speed",
    "fig7_testbed_forest",
    "fig8_testbed_curves",
    "fig9_testbed_sweeps",
    "fig10_confirm_discovery",
)
"""Every figure script (module name in paper_figures/), in the order they are drawn."""
EXTRA = {"fig4_training": (["--testbed"],)}
"""Further calls of a script's ``main`` with these arguments (besides ``--out``)."""
TESTBED_FIGURES = ("fig7_testbed_forest", "fig8_testbed_curves", "fig9_testbed_sweeps")
"""The figures whose data is the testbed grid (``fig4 --testbed`` draws whatever testbed runs exist)."""


def _run(cmd: list[str], what: str) -> None:
    """Run a data-producing command with its output streaming to this terminal; stop on failure."""
    print(f"\n==> {what}\n    $ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"paper_figures/reproduce.py: error: {what} failed (exit status {code}): {' '.join(cmd)}")
    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)


def ensure_training_runs() -> None:
    """Step 1: run the reproduction runner (it skips finished runs) unless every run is already complete."""
    fig4 = importlib.import_module("fig4_training")
    cmd = fig4.runner_command()
    if cmd is None:
        print("==> training runs: no reproduction runner (bandpo.experiments.reproduce) in this checkout; using the runs on disk",
              flush=True)
        return
    if fig4.runs_complete():
        print(f"==> training runs: all present under {fig4.RUNS.relative_to(ROOT)}, skipping", flush=True)
        return
    _run(cmd, "training runs (tiny model on CPU; the runner skips finished runs)")


def ensure_bandit() -> None:
    """Step 2: the bandit histories."""
    fig5 = importlib.import_module("fig5_bandit")
    if fig5.data_complete():
        print(f"==> bandit: data present under {fig5.BANDIT.relative_to(ROOT)}, skipping", flush=True)
        return
    print("\n==> rare-arm bandit (seconds)", flush=True)
    fig5.generate_data()


def ensure_benchmark() -> None:
    """Step 3: the solver speed/accuracy benchmark."""
    fig6 = importlib.import_module("fig6_solver_speed")
    if fig6.DEFAULT_DATA.is_file():
        print(f"==> solver benchmark: {fig6.DEFAULT_DATA.relative_to(ROOT)} present, skipping", flush=True)
        return
    _run([sys.executable, str(ROOT / "benchmarks" / "band_speed.py"), "--out", str(fig6.DEFAULT_DATA)],
         "solver benchmark")


def testbed_missing() -> "tuple[list, str]":
    """(the (seed, variant) jobs of the full testbed grid that have not finished, why it cannot run or '')."""
    from bandpo.experiments.reproduce import is_finished
    from bandpo.experiments.testbed import DEFAULT_OUT, DEFAULT_PRESET, SEEDS, jobs, run_dir, select
    from bandpo.losses import METHODS
    from bandpo.training.config import list_presets, load_config, preset_path

    if DEFAULT_PRESET not in list_presets():
        return [], f"no preset {DEFAULT_PRESET!r} in this checkout"
    variants = select(["all"])
    unknown = sorted({v.method for v in variants if METHODS.find(v.method) is None})
    if unknown:
        return [], f"methods not in this checkout: {', '.join(unknown)}"
    max_steps = load_config(preset_path(DEFAULT_PRESET)).trainer.max_steps
    out = ROOT / DEFAULT_OUT
    return [(s, v) for s, v in jobs(variants, SEEDS) if not is_finished(run_dir(out, v, s), max_steps)], ""


def ensure_testbed(n_jobs: int = 1) -> None:
    """Step 4: run the testbed grid (every grid, seeds 0..7) unless every run has finished; ``n_jobs`` processes."""
    todo, why = testbed_missing()
    if why:
        print(f"==> testbed: {why}; using the runs on disk", flush=True)
        return
    cmd = [sys.executable, "-m", "bandpo.experiments.testbed", "--grid", "all"]
    if not todo:
        print("==> testbed: every run present under paper_figures/data/testbed, skipping", flush=True)
        if not (DATA / "testbed" / "summary.csv").is_file():
            _run(cmd + ["--summary-only"], "testbed summary.csv")
        return
    if n_jobs <= 1:
        _run(cmd, f"testbed grid ({len(todo)} runs to go; the runner skips finished runs)")
        return
    print(f"\n==> testbed grid ({len(todo)} runs to go) in {n_jobs} processes", flush=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/{n_jobs}"], cwd=ROOT) for i in range(n_jobs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"paper_figures/reproduce.py: error: testbed shards exited with {codes}")
    _run(cmd + ["--summary-only"], "testbed summary.csv")
    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)


def draw(names, out: Path) -> "tuple[list[Path], dict[str, str]]":
    """Step 4: run each figure's ``main`` in this process; returns the files written and {figure: why not}."""
    written, missing = [], {}
    for name in names:
        for extra in ([],) + tuple(EXTRA.get(name, ())):
            t0 = time.perf_counter()
            try:
                paths = importlib.import_module(name).main(["--out", str(out), *extra])
            except FileNotFoundError as exc:  # its data is missing: say so, draw the others, fail at the end
                missing[name] = str(exc)
                print(f"    {name}: NOT DRAWN: {exc}", flush=True)
                continue
            print(f"    {' '.join([name, *extra])}: {time.perf_counter() - t0:.1f} s", flush=True)
            written += paths
    return written, missing


def main(argv=None) -> list[Path]:
    ap = ArgumentParser(prog="python paper_figures/reproduce.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: paper_figures/out)")
    ap.add_argument("--only", nargs="*", default=None, help="figure name prefixes, e.g. fig1 fig4")
    ap.add_argument("--no-data", action="store_true", help="do not produce missing data; draw from what exists")
    ap.add_argument("--testbed-jobs", type=int_at_least(1), default=1,
                    help="processes for the testbed grid (default 1)")
    args = ap.parse_args(argv)

    names = [n for n in FIGURES if args.only is None or any(n.startswith(o) for o in args.only)]
    if not names:
        ap.error(f"--only {' '.join(args.only)} matches none of {', '.join(FIGURES)}")
    try:
        check_out_path(args.out, folder=True)
    except ValueError as e:
        ap.error(e)
    t0 = time.perf_counter()
    if not args.no_data:
        if "fig4_training" in names:
            ensure_training_runs()
        if "fig5_bandit" in names:
            ensure_bandit()
        if "fig6_solver_speed" in names:
            ensure_benchmark()
        if any(n in TESTBED_FIGURES for n in names):
            ensure_testbed(args.testbed_jobs)
    print(f"\n==> figures into {args.out}", flush=True)
    written, missing = draw(names, args.out)
    print(f"\nwrote {len(written)} files in {time.perf_counter() - t0:.0f} s:")
    for path in written:
        print(f"  {path}  ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"data: {DATA}")
    if missing:
        raise SystemExit(f"paper_figures/reproduce.py: error: {len(missing)} figure(s) not drawn for lack of data: {', '.join(missing)}")
    return written


if __name__ == "__main__":
    main()
