"""Figure 4: tiny-model RL training curves per method, mean and spread over seeds.

    python paper_figures/fig4_training.py --out paper_figures/out/
    python paper_figures/fig4_training.py --runs some/other/runs --smooth 1
    python paper_figures/fig4_training.py --testbed --out paper_figures/out/   # the testbed's main grid

Data: ``data/runs/<method>-seed<k>/metrics.csv``, one folder per (method, seed), written by the reproduction
runner (Lightning CSVLogger, one row per RL step, column ``step``; several rows of one step are merged, the last
value of each column winning). Panels, each against the RL step:
top:    reward mean, accuracy (one panel "reward = accuracy" when they are equal in every run, as with exact-match
        0/1 rewards), token entropy of the full next-token distribution (nats), % of all tokens clipped;
bottom: per old-probability bucket, the fraction of the bucket's tokens clipped at the upper bound with positive
        advantage (``bucket/<b>/clip_high_mean``; ``--clip-stat clip_region_mean`` for both sides), in percent.
Lines: mean over seeds of a centred moving average (``--smooth`` steps, default 1/25 of the run); bands: min and
max over seeds of the same smoothed curves. Steps present in every seed of a method are used.

``--testbed`` draws the same panels for the testbed's main grid (``data/testbed/main/<method>-seed<k>``, written by
``python -m bandpo.experiments.testbed``) into ``fig4_training_testbed.png``: the testbed logs the same reward,
entropy and per-bucket clip columns, and the per-bucket upper-clip fractions are where the methods differ at the
rare tail token. The testbed's own columns (p(tail)) and seed bands of 8 seeds are in fig8_testbed_curves.py.
Without testbed runs, ``--testbed`` prints why and writes nothing.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from style import (
    DATA, OUT, apply_style, int_at_least, method_style, out_parser, panel_label, resolve_out, run_cli, save,
)

NAME = "fig4_training.png"
RUNS = DATA / "runs"
TESTBED_NAME = "fig4_training_testbed.png"
TESTBED_RUNS = DATA / "testbed" / "main"
RUN_DIR = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")
TOP = (
    ("reward/mean", "reward (mean)", 1.0),
    ("accuracy", "accuracy", 1.0),
    ("entropy", "token entropy (nats)", 1.0),
    ("clip_ratio/region_mean", "% tokens clipped (all)", 100.0),
)
"""Top-row panels: (column, axis label, scale). ``accuracy`` is left out when it equals the reward in every run."""


def top_panels(data: dict) -> list:
    """TOP without the accuracy panel when accuracy == reward/mean everywhere (exact-match 0/1 rewards)."""
    same = all("accuracy" in r and "reward/mean" in r and np.allclose(r["accuracy"], r["reward/mean"], rtol=0,
                                                                     atol=1e-12, equal_nan=True)
               for seeds in data.values() for r in seeds)
    if not same:
        return list(TOP)
    rest = [t for t in TOP if t[0] not in ("reward/mean", "accuracy")]
    return [("reward/mean", "reward = accuracy (mean)", 1.0)] + rest
BUCKET_KEY = re.compile(r"^bucket/(?P<bucket>[^/]+)/(?P<stat>[^/]+)$")
METHOD_ORDER = ("clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "dppo_kl", "dppo_tv", "band_kl_relax")


def runner_command() -> "list[str] | None":
    """The reproduction runner's command line (``bandpo.experiments.reproduce``, which skips finished runs); None without it."""
    import importlib.util

    if importlib.util.find_spec("bandpo.experiments.reproduce") is None:
        return None
    return [sys.executable, "-m", "bandpo.experiments.reproduce", "--out", str(RUNS)]


def runs_complete(runs: Path = RUNS) -> bool:
    """True when every (method, seed) the runner plans has finished (its own ``is_finished`` test)."""
    from bandpo.training.config import load_config, preset_path
    from bandpo.experiments.reproduce import METHODS, SEEDS, is_finished, run_dir

    max_steps = load_config(preset_path("tiny-cpu")).trainer.max_steps
    return all(is_finished(run_dir(runs, m, s), max_steps) for m in METHODS for s in SEEDS)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """A run's metrics.csv -> {column: values per step}, steps sorted, rows of one step merged (for each step the
    last non-empty value of each column is kept): the reader of ``bandpo.experiments.testbed.read_metrics``."""
    from bandpo.experiments.testbed import read_metrics as read

    return read(path)


def discover_runs(runs: Path = RUNS) -> dict[str, dict[int, Path]]:
    """{method: {seed: metrics.csv}} for every ``<method>-seed<k>/metrics.csv`` under ``runs``; a testbed run's
    method id comes from its summary.json record (its folder may carry a setting, ``dppo_tv-delta0.05-seed3``)."""
    found: dict[str, dict[int, Path]] = {}
    for d in sorted(Path(runs).glob("*")):
        m = RUN_DIR.match(d.name)
        if m and (d / "metrics.csv").is_file():
            method = m["method"]
            if (d / "summary.json").is_file():
                method = json.loads((d / "summary.json").read_text()).get("testbed", {}).get("method", method)
            found.setdefault(method, {})[int(m["seed"])] = d / "metrics.csv"
    known = [m for m in METHOD_ORDER if m in found]
    return {m: found[m] for m in known + sorted(set(found) - set(known))}


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, ignoring NaNs; the window shrinks at the ends."""
    if window <= 1:
        return y.astype(float)
    ok = np.isfinite(y)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def stack_seeds(per_seed: list[dict[str, np.ndarray]], key: str, window: int):
    """(steps common to every seed that has column ``key``, (seeds, steps) array of the smoothed column), or None
    when no seed has it."""
    have = [r for r in per_seed if key in r]
    if not have:
        return None
    common = have[0]["step"]
    for r in have[1:]:
        common = np.intersect1d(common, r["step"])
    return common, np.stack([smooth(r[key][np.isin(r["step"], common)], window) for r in have])


def aggregate(per_seed: list[dict[str, np.ndarray]], key: str, window: int):
    """(steps, mean, min, max) over seeds of the smoothed column ``key``, on the steps common to all seeds.

    Returns None when no seed has the column.
    """
    stacked = stack_seeds(per_seed, key, window)
    if stacked is None:
        return None
    common, ys = stacked
    with np.errstate(all="ignore"):
        return common, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)


def buckets_of(per_seed: list[dict[str, np.ndarray]], stat: str) -> list[str]:
    """Bucket names that carry ``stat``, in the order of their lower edge (``p0-0.01`` before ``p0.01-0.1``)."""
    names = {m["bucket"] for r in per_seed for k in r if (m := BUCKET_KEY.match(k)) and m["stat"] == stat}

    def lower_edge(b: str) -> float:
        try:
            return float(b.lstrip("p").split("-")[0])
        except ValueError:
            return math.inf

    return sorted(names, key=lambda b: (lower_edge(b), b))


def load_runs(runs: Path = RUNS) -> dict[str, list[dict[str, np.ndarray]]]:
    """{method: [metrics of each seed]}; a clear error when there is nothing to plot."""
    found = discover_runs(runs)
    if not found:
        raise FileNotFoundError(f"no <method>-seed<k>/metrics.csv under {runs}: run `make reproduce` "
                                f"(or the reproduction runner) first")
    return {m: [read_metrics(p) for _, p in sorted(seeds.items())] for m, seeds in found.items()}


def make_figure(out, runs: Path = RUNS, window: int | None = None, clip_stat: str = "clip_high_mean", *,
                name: str = NAME, title: str = "tiny-model RL on CPU"):
    """Draw the curves of every run under ``runs`` and save to ``out`` (a .png path or a folder holding ``name``)."""
    data = load_runs(runs)
    n_steps = max(len(r["step"]) for seeds in data.values() for r in seeds)
    window = max(1, n_steps // 25) if window is None else window
    buckets = buckets_of([r for seeds in data.values() for r in seeds], clip_stat)
    apply_style()
    import matplotlib.pyplot as plt

    n_bottom = max(len(buckets), 1)
    fig = plt.figure(figsize=(max(7.4, 2.2 * n_bottom), 5.6), layout="constrained")
    top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[1, 1])
    panels = top_panels(data)
    top_axes = top_fig.subplots(1, len(panels))
    bottom_axes = np.atleast_1d(bottom_fig.subplots(1, n_bottom, sharey=True))
    letters = iter("abcdefghijk")
    for method, seeds in data.items():
        st = method_style(method)
        label = f"{st['label']} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        for ax, (key, _, scale) in zip(top_axes, panels):
            agg = aggregate(seeds, key, window)
            if agg is not None:
                x, mean, lo, hi = agg
                ax.plot(x, scale * mean, color=st["color"], ls=st["ls"], lw=1.4, label=label)
                ax.fill_between(x, scale * lo, scale * hi, color=st["color"], alpha=0.06, lw=0)
        for ax, b in zip(bottom_axes, buckets):
            agg = aggregate(seeds, f"bucket/{b}/{clip_stat}", window)
            if agg is not None:
                x, mean, lo, hi = agg
                ax.plot(x, 100 * mean, color=st["color"], ls=st["ls"], lw=1.3)
                ax.fill_between(x, 100 * lo, 100 * hi, color=st["color"], alpha=0.08, lw=0)
    for ax, (_, ylabel, _) in zip(top_axes, panels):
        ax.set(xlabel="RL step", ylabel=ylabel, title=ylabel.split(" (")[0].lstrip("% "))
        panel_label(ax, next(letters))
    what = {"clip_high_mean": "clipped high, A > 0", "clip_low_mean": "clipped low, A < 0",
            "clip_region_mean": "clipped"}.get(clip_stat, clip_stat)
    for i, (ax, b) in enumerate(zip(bottom_axes, buckets)):
        ax.set(xlabel="RL step", title=f"old prob. {b.lstrip('p').replace('-', ' to ')}")
        if i == 0:
            ax.set_ylabel(f"% of bucket's tokens {what}")
        ax.set_ylim(bottom=0)
        panel_label(ax, next(letters))
    if not buckets:
        bottom_axes[0].text(0.5, 0.5, f"no bucket/*/{clip_stat} columns", ha="center",
                            transform=bottom_axes[0].transAxes)
    handles, labels = top_axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
    steps_txt = f"{window} step{'s' if window != 1 else ''}"
    fig.suptitle(f"{title}: mean over seeds (bands: min to max), moving average over {steps_txt}", fontsize=9)
    return save(fig, resolve_out(out, name))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--runs", type=Path, default=None,
                    help="folder of <method>-seed<k>/metrics.csv runs (default data/runs, with --testbed data/testbed/main)")
    ap.add_argument("--smooth", type=int_at_least(1), default=None, help="moving-average window in steps (default: run/25)")
    ap.add_argument("--clip-stat", default="clip_high_mean",
                    choices=["clip_high_mean", "clip_low_mean", "clip_region_mean"],
                    help="bucket statistic (bottom row)")
    ap.add_argument("--testbed", action="store_true",
                    help=f"draw the testbed's main grid ({TESTBED_RUNS.relative_to(DATA.parent)}) as {TESTBED_NAME}")
    args = ap.parse_args(argv)
    if args.testbed:
        if args.out == OUT / NAME:
            args.out = OUT / TESTBED_NAME
        runs = TESTBED_RUNS if args.runs is None else args.runs
        if not discover_runs(runs):
            print(f"fig4 --testbed: skipped: no <method>-seed<k>/metrics.csv under {runs} (produce it with "
                  f"`python -m bandpo.experiments.testbed` or `make reproduce`)", flush=True)
            return []
        path = make_figure(args.out, runs, args.smooth, args.clip_stat, name=TESTBED_NAME,
                           title="testbed, main grid")
        print(f"wrote {path}")
        return [path]
    path = make_figure(args.out, RUNS if args.runs is None else args.runs, args.smooth, args.clip_stat)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
