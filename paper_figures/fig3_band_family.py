"""Figure 3: the band of every registered divergence at δ = 0.05, and a δ sweep for KL.

    python paper_figures/fig3_band_family.py --out paper_figures/out/

(a) Ratio bounds [lower, upper] = Band_{f,0.05}(p) for every divergence in ``bandpo.list_divergences()``
    (solid: upper, dashed: lower) on log axes, with the simplex limit 1/p. Divergences whose f(0) is finite
    (TV, χ², Hellinger, JS, ...) saturate: their lower bound reaches 0 and drops out of the log plot.
(b) KL for δ in {0.01, 0.02, 0.05, 0.1, 0.2} as probability change (r - 1)·p: a family of nested lenses;
    the dots at p -> 0 mark the rare-token limit 1 - e^{-δ} of the largest upward change.
No data is read.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from style import (
    THEORY, apply_style, divergence_style, int_at_least, out_parser, panel_label, resolve_out, run_cli, save,
)

import bandpo

NAME = "fig3_band_family.png"
DELTA = 0.05
SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2)


def bounds(p: np.ndarray, delta: float, divergence: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) = Band_{f,δ}(p) in float64 via bandpo.band's per-element solver (no fixed-delta table)."""
    lower, upper = bandpo.band(torch.log(torch.as_tensor(p, dtype=torch.float64)), delta, divergence)
    return lower.numpy(), upper.numpy()


def make_figure(out, n: int = 600, delta: float = DELTA, sweep=SWEEP):
    """Draw both panels on ``n`` grid points and save to ``out`` (a .png path or a folder)."""
    apply_style()
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(7.4, 3.9), constrained_layout=True)

    # (a) every registered divergence, log-log
    p = np.geomspace(1e-4, 1.0, n)
    ax_a.plot(p, 1 / p, **THEORY, label="simplex $1/p$")
    for name in bandpo.list_divergences():
        st = divergence_style(name)
        lo, up = bounds(p, delta, name)
        ax_a.plot(p, up, color=st["color"], ls="-", lw=1.4, label=st["label"])
        ax_a.plot(p, np.where(lo > 0, lo, np.nan), color=st["color"], ls="--", lw=1.2)
    ax_a.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-2, 2e3),
             xlabel=r"old probability $p$", ylabel=r"ratio bound $r$ (upper solid, lower dashed)",
             title=f"every registered $f$, $\\delta$ = {delta:g}")
    ax_a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=4, fontsize=7)
    panel_label(ax_a, "a")

    # (b) KL delta sweep as probability change lenses
    q = np.concatenate([np.geomspace(1e-9, 1e-3, 30, endpoint=False), np.linspace(1e-3, 1.0, n)])
    cmap = plt.get_cmap("viridis")
    ax_b.plot(q, 1 - q, **THEORY)
    ax_b.plot(q, -q, **THEORY)
    for i, d in enumerate(sweep):
        color = cmap(0.9 * i / max(len(sweep) - 1, 1))
        lo, up = bounds(q, d, "kl")
        xs = np.concatenate([[0.0], q, q[::-1], [0.0]])
        ys = np.concatenate([[(up[0] - 1) * q[0]], (up - 1) * q, ((lo - 1) * q)[::-1], [(up[0] - 1) * q[0]]])
        ax_b.plot(xs, ys, color=color, lw=1.4, label=f"$\\delta$ = {d:g}")
        ax_b.plot([0], [1 - math.exp(-d)], "o", color=color, ms=4, clip_on=False, zorder=5)
    ax_b.set(xlim=(0, 1), ylim=(-0.45, 0.45), xlabel=r"old probability $p$",
             ylabel=r"probability change $\Delta = (r-1)\,p$", title="KL band, $\\delta$ sweep")
    ax_b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=7)
    ax_b.text(0.02, 0.40, r"dots: $p \to 0$ limit $1-e^{-\delta}$", fontsize=7.5, color="0.3", va="top")
    panel_label(ax_b, "b")
    return save(fig, resolve_out(out, NAME))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--n", type=int_at_least(2), default=600, help="grid points on p")
    args = ap.parse_args(argv)
    path = make_figure(args.out, n=args.n)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
