"""Figure 8: testbed training curves per method, p(tail), entropy and reward against the RL step, with seed bands.

    python paper_figures/fig8_testbed_curves.py --out paper_figures/out/
    python paper_figures/fig8_testbed_curves.py --data some/testbed --methods clip band_kl --smooth 1

Data: ``data/testbed/main/<method>-seed<k>/metrics.csv`` (``python -m bandpo.experiments.testbed``), the main
grid's methods (their own settings). Panels against the RL step: (a) ``testbed/p_tail``, the policy's probability
of the high-reward tail strategy at the fork (dotted: the discovery threshold 0.5); (b) ``entropy``, the token
entropy of the full next-token distribution (nats); (c) ``reward/mean``. Lines: the median over seeds of a centred
moving average (``--smooth`` steps, default 1/25 of the run); bands: the range between the 25th and 75th percentile
over seeds of the same smoothed curves (the middle half of the seeds), so a band is visible even with 8 seeds and
one outlier does not widen it. Steps present in every seed of a method are used. Without the data the script prints
why and writes nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fig4_training import stack_seeds
from style import apply_style, int_at_least, method_style, out_parser, panel_label, resolve_out, run_cli, save
from testbed_common import TESTBED, skip

NAME = "fig8_testbed_curves.png"
PANELS = (
    ("testbed/p_tail", "p(tail strategy)"),
    ("entropy", "token entropy (nats)"),
    ("reward/mean", "reward (mean)"),
)
"""(column, axis label) of each panel."""


def load(data: Path = TESTBED, methods=None) -> dict:
    """{method: [metrics of each seed]} of the main grid's default-setting runs under ``data``, in grid order."""
    from bandpo.experiments.testbed import GRIDS, read_metrics, run_dir

    out = {}
    for v in GRIDS["main"]:
        if methods is not None and v.method not in methods:
            continue
        folders = sorted(run_dir(data, v, 0).parent.glob(f"{v.name}-seed*"),
                         key=lambda p: int(p.name.rsplit("-seed", 1)[1]))
        runs = [read_metrics(f) for f in folders if (f / "metrics.csv").is_file() and
                f.name.rsplit("-seed", 1)[1].isdigit()]
        if runs:
            out[v.method] = runs
    return out


def seed_band(per_seed: list, key: str, window: int):
    """(steps, median, 25th percentile, 75th percentile) over seeds of the smoothed column ``key`` on the steps
    common to every seed that has it; None when no seed has it."""
    stacked = stack_seeds(per_seed, key, window)
    if stacked is None:
        return None
    common, ys = stacked
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan steps give nan, as intended
        q25, q50, q75 = np.nanpercentile(ys, [25, 50, 75], axis=0)
    return common, q50, q25, q75


def make_figure(out, data: Path = TESTBED, methods=None, window=None):
    """Draw the curves into ``out`` (a .png or a folder); [] with a message when the data is missing."""
    runs = load(data, methods)
    if not runs:
        return skip("fig8", f"no main-grid runs (<method>-seed<k>/metrics.csv) under {Path(data) / 'main'}")
    n_steps = max(len(r["step"]) for seeds in runs.values() for r in seeds)
    window = max(1, n_steps // 25) if window is None else window
    apply_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(7.4, 2.9), layout="constrained")
    for method, seeds in runs.items():
        st = method_style(method)
        for ax, (key, _) in zip(axes, PANELS):
            band = seed_band(seeds, key, window)
            if band is None:
                continue
            x, mid, lo, hi = band
            ax.plot(x, mid, color=st["color"], ls=st["ls"], lw=1.3, label=f"{st['label']} ({len(seeds)})")
            ax.fill_between(x, lo, hi, color=st["color"], alpha=0.15, lw=0)
    for ax, (key, label), letter in zip(axes, PANELS, "abc"):
        ax.set(xlabel="RL step", ylabel=label, title=label.split(" (")[0])
        panel_label(ax, letter)
    axes[0].axhline(0.5, color="0.3", lw=0.8, ls=":")
    axes[0].set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
    steps_txt = f"{window} step{'s' if window != 1 else ''}"
    fig.suptitle(f"testbed: median over seeds (bands: 25th to 75th percentile; seeds in brackets), moving average "
                 f"over {steps_txt}", fontsize=9)
    return [save(fig, resolve_out(out, NAME))]


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=TESTBED, help="testbed root holding main/<method>-seed<k>/")
    ap.add_argument("--methods", nargs="+", default=None, help="only these method ids (default: every one present)")
    ap.add_argument("--smooth", type=int_at_least(1), default=None, help="moving-average window in steps (default: run/25)")
    args = ap.parse_args(argv)
    paths = make_figure(args.out, args.data, args.methods, args.smooth)
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    run_cli(main)
