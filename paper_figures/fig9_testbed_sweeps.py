"""Figure 9: testbed sweeps and ablations: BandPO-KL's δ, the learning rate of clip and BandPO-KL, and the one-sided
bands, each metric as a mean over seeds with its 95 % Student t interval.

    python paper_figures/fig9_testbed_sweeps.py --out paper_figures/out/
    python paper_figures/fig9_testbed_sweeps.py --data some/testbed --metrics eval_mean collapsed

Data: ``data/testbed/summary.csv`` (``python -m bandpo.experiments.testbed --grid all``). Columns of panels:
(δ) band_kl at δ = 0.01, 0.02, 0.1, 0.2 (grid ``delta``) and 0.05 (its own δ, grid ``main``), log axis, with GRPO
clip's mean (grey line) and interval (grey band) for reference; (lr) clip and band_kl at 0.25, 1 and 4 times the
preset's learning rate (grid ``lr``; x1 from ``main``), log axis; (ablation) clip, band_kl, band_kl_upper (the
band's upper bound with clip's lower 0.8) and band_kl_lower (the band's lower bound with clip's upper 1.2).
Rows: one per metric (default held-out mean@n, steps to discover the tail, final entropy). Points: mean over seeds;
bars: 95 % Student t interval of that mean over seeds (``bandpo.experiments.stats.seed_mean`` with ``interval="t"``). Missing settings are left out; without the data the script prints why and writes nothing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from style import GREY, apply_style, method_style, out_parser, resolve_out, run_cli, save
from testbed_common import TESTBED, load_summary, metric_label, skip

NAME = "fig9_testbed_sweeps.png"
METRICS = ("eval_mean", "discovery_step", "entropy_last")
DELTA_OWN = 0.05
"""band_kl's own δ (its ``main`` run is the δ = 0.05 point of the sweep)."""


def _interval(rows, metric, spec):
    from bandpo.experiments.stats import seed_mean

    return seed_mean(rows, metric, spec, interval="t")


def delta_points(rows, metric) -> list:
    """(δ, Interval) of band_kl, δ ascending, for the settings present (``main``'s own δ as DELTA_OWN)."""
    pts = []
    for r in {(r["grid"], r["setting"]) for r in rows if r["method"] == "band_kl"}:
        grid, setting = r
        if grid == "delta" and setting.startswith("delta="):
            pts.append((float(setting.split("=")[1]), {"grid": "delta", "method": "band_kl", "setting": setting}))
        elif grid == "main" and setting == "default":
            pts.append((DELTA_OWN, {"grid": "main", "method": "band_kl", "setting": "default"}))
    return [(d, _interval(rows, metric, spec)) for d, spec in sorted(pts, key=lambda t: t[0])]


def lr_points(rows, metric, method) -> list:
    """(lr factor, Interval) of ``method``, factor ascending (``main``'s run as factor 1)."""
    pts = []
    for grid, setting in {(r["grid"], r["setting"]) for r in rows if r["method"] == method}:
        if grid == "lr" and setting.startswith("lr=x"):
            pts.append((float(setting[4:]), {"grid": "lr", "method": method, "setting": setting}))
        elif grid == "main" and setting == "default":
            pts.append((1.0, {"grid": "main", "method": method, "setting": "default"}))
    return [(f, _interval(rows, metric, spec)) for f, spec in sorted(pts, key=lambda t: t[0])]


ABLATION = (("main", "clip"), ("main", "band_kl"), ("ablation", "band_kl_upper"), ("ablation", "band_kl_lower"))
SHORT = {"clip": "GRPO\nclip", "band_kl": "BandPO\nKL", "band_kl_upper": "KL upper\n+clip 0.8",
         "band_kl_lower": "KL lower\n+clip 1.2"}
"""Tick labels of the ablation panel."""


def ablation_points(rows, metric) -> list:
    """(method, Interval) of the ablation's methods present, in ABLATION order."""
    have = {(r["grid"], r["method"]) for r in rows if r["setting"] == "default"}
    return [(m, _interval(rows, metric, {"grid": g, "method": m, "setting": "default"})) for g, m in ABLATION
            if (g, m) in have]


def _errorbar(ax, x, iv, color, marker="o", ls="none"):
    lo = np.array([i.estimate - i.low if i.n > 1 else 0.0 for i in iv])
    hi = np.array([i.high - i.estimate if i.n > 1 else 0.0 for i in iv])
    return ax.errorbar(x, [i.estimate for i in iv], yerr=[lo, hi], color=color, marker=marker, ms=4.5, ls=ls,
                       lw=1.2, capsize=2.5)


def make_figure(out, data: Path = TESTBED, metrics=METRICS):
    """Draw the sweeps into ``out`` (a .png or a folder); [] with a message when the data is missing."""
    rows = load_summary(data)
    if rows is None:
        return skip("fig9", f"no {Path(data) / 'summary.csv'}")
    if not any(r["grid"] in ("delta", "lr", "ablation") for r in rows):
        return skip("fig9", f"no run of the delta, lr or ablation grids in {Path(data) / 'summary.csv'}")
    apply_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 3, figsize=(7.4, 2.0 * len(metrics) + 0.6), layout="constrained",
                             squeeze=False)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    clip = {"grid": "main", "method": "clip", "setting": "default"}
    has_clip = any(all(r.get(k) == v for k, v in clip.items()) for r in rows)
    for row, metric in zip(axes, metrics):
        ax_d, ax_lr, ax_ab = row
        label = textwrap.fill(metric_label(metric, rows), 22)
        # delta sweep
        pts = delta_points(rows, metric)
        if pts:
            _errorbar(ax_d, [d for d, _ in pts], [iv for _, iv in pts], method_style("band_kl")["color"], ls="-")
        if has_clip:
            c = _interval(rows, metric, clip)
            ax_d.axhline(c.estimate, color=GREY, lw=1.0, label="GRPO clip")
            if c.n > 1:
                ax_d.axhspan(c.low, c.high, color=GREY, alpha=0.15, lw=0)
        ax_d.set_xscale("log")
        ax_d.set(xlabel="δ (band_kl)", ylabel=label)
        # learning rate
        for k, method in enumerate(("clip", "band_kl")):
            pts = lr_points(rows, metric, method)
            if pts:
                x = np.array([f for f, _ in pts]) * (1.06 if k else 1 / 1.06)  # side by side, not on top
                _errorbar(ax_lr, x, [iv for _, iv in pts], method_style(method)["color"], ls="-",
                          marker="os"[k]).set_label(method_style(method)["label"])
        ax_lr.set_xscale("log")
        ax_lr.set_xticks([0.25, 1, 4], ["x0.25", "x1", "x4"])
        ax_lr.minorticks_off()
        ax_lr.set(xlabel="learning rate (x preset's)")
        # ablations
        pts = ablation_points(rows, metric)
        for i, (method, iv) in enumerate(pts):
            _errorbar(ax_ab, [i], [iv], method_style(method)["color"])
        ax_ab.set_xticks(range(len(pts)), [SHORT[m] for m, _ in pts], fontsize=6.5)
        ax_ab.set_xlim(-0.5, max(len(pts), 1) - 0.5)
        for ax, what in ((ax_d, "δ sweep"), (ax_lr, "learning rate"), (ax_ab, "one-sided bands")):
            ax.set_title(f"({next(letters)}) {what}", loc="left")
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2)
    seeds = sorted({r["seed"] for r in rows if r["grid"] in ("main", "delta", "lr", "ablation")})
    fig.suptitle(f"testbed sweeps: mean over seeds with 95% t interval ({len(seeds)} seeds)", fontsize=9)
    return [save(fig, resolve_out(out, NAME))]


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=TESTBED, help="testbed root holding summary.csv")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), help="summary.csv columns, one row each")
    args = ap.parse_args(argv)
    paths = make_figure(args.out, args.data, tuple(args.metrics))
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    run_cli(main)
