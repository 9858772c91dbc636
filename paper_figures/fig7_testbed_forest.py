"""Figure 7: testbed, paired differences against GRPO clip, per method, with 95 % Student t intervals (forest plot).

    python paper_figures/fig7_testbed_forest.py --out paper_figures/out/
    python paper_figures/fig7_testbed_forest.py --data some/testbed --metrics eval_mean collapsed

Data: ``data/testbed/summary.csv`` (``python -m bandpo.experiments.testbed``). Rows: every method of the ``main``
and ``ablation`` grids present in the data (their own settings), clip excluded. Panels: one per metric (default
held-out mean@n, pass@k, final entropy and steps to discover the tail). Each point is the mean over seeds of the
paired difference method - clip (same seed: same warm start and sampler seed), the bar its 95 % Student t interval
over seeds (``bandpo.experiments.stats.t_interval``, as in docs/testbed-report.md's tables: the percentile bootstrap
under-covers at n = 8), and the label the number of paired seeds. Every interval is unadjusted and exploratory. Discovery is censored at the run's length (a run that never finds the tail
counts as finding it at the last step, so a difference is biased towards 0). Without the data the script prints why
and writes nothing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from style import GREY, apply_style, method_style, out_parser, resolve_out, run_cli, save
from testbed_common import TESTBED, load_summary, metric_label, skip

NAME = "fig7_testbed_forest.png"
METRICS = ("eval_mean", "eval_pass", "entropy_last", "discovery_step")
BASELINE = {"method": "clip", "setting": "default"}


def candidates(rows) -> list:
    """(method, setting) of the forest's rows: the main and ablation grids' methods present, in grid order."""
    from bandpo.experiments.testbed import GRIDS

    present = {(r["method"], r["setting"]) for r in rows}
    order = [(v.method, v.setting) for g in ("main", "ablation") for v in GRIDS[g]]
    return [c for c in order if c in present and c != (BASELINE["method"], BASELINE["setting"])]


def forest(rows, metrics=METRICS) -> list:
    """The plotted numbers: ``bandpo.experiments.stats.compare`` of every candidate against clip."""
    from bandpo.experiments.stats import compare

    cands = [{"method": m, "setting": s} for m, s in candidates(rows)]
    return compare(rows, metrics, cands, BASELINE, interval="t")


def make_figure(out, data: Path = TESTBED, metrics=METRICS):
    """Draw the forest plot into ``out`` (a .png or a folder); [] with a message when the data is missing."""
    rows = load_summary(data)
    if rows is None:
        return skip("fig7", f"no {Path(data) / 'summary.csv'}")
    if not any(r["method"] == BASELINE["method"] and r["setting"] == BASELINE["setting"] for r in rows):
        return skip("fig7", f"no clip run in {Path(data) / 'summary.csv'} to compare with")
    cands = candidates(rows)
    if not cands:
        return skip("fig7", f"only clip in {Path(data) / 'summary.csv'}")
    table = forest(rows, metrics)
    apply_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(max(7.4, 2.2 * len(metrics)), 0.42 * len(cands) + 1.3),
                             sharey=True, layout="constrained")
    axes = np.atleast_1d(axes)
    y = np.arange(len(cands))[::-1]
    for ax, metric, letter in zip(axes, metrics, "abcdefgh"):
        for yi, (method, setting) in zip(y, cands):
            (r,) = [t for t in table if t["metric"] == metric and t["method"] == method and t["setting"] == setting]
            st = method_style(method)
            if r["n"] == 0:
                ax.text(0, yi, "no pair", ha="center", va="center", fontsize=7, color=GREY)
                continue
            lo, hi = (r["low"], r["high"]) if r["n"] > 1 else (r["diff"], r["diff"])
            ax.plot([lo, hi], [yi, yi], color=st["color"], lw=2.0, solid_capstyle="butt")
            ax.plot([r["diff"]], [yi], "o", color=st["color"], ms=5, mec="white", mew=0.6)
            ax.annotate(f"n={r['n']}", (hi, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=6.5,
                        color=GREY)
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        ax.set_title(textwrap.fill(f"({letter}) {metric_label(metric, rows)}", 18), loc="left")
        ax.set_xlabel("difference vs clip")
        ax.margins(x=0.25)
    axes[0].set_yticks(y, [method_style(m)["label"] + ("" if s == "default" else f" ({s})") for m, s in cands])
    axes[0].set_ylim(-0.7, len(cands) - 0.3)
    seeds = sorted({r["seed"] for r in rows if r["grid"] in ("main", "ablation")})
    fig.suptitle(f"testbed: paired difference vs GRPO clip, mean over seeds with 95% t interval "
                 f"({len(seeds)} seeds)", fontsize=9)
    return [save(fig, resolve_out(out, NAME))]


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=TESTBED, help="testbed root holding summary.csv")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), help="summary.csv columns, one panel each")
    args = ap.parse_args(argv)
    paths = make_figure(args.out, args.data, tuple(args.metrics))
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    run_cli(main)
