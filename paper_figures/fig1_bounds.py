"""Figure 1: bounds of probability variation, BandPO vs fixed and dynamic clipping.

    python paper_figures/fig1_bounds.py --out paper_figures/out/

(a) Ratio bounds [lower, upper] against the old probability p of the sampled token: the Band operator
    Band_{f,δ}(p) for KL, TV and Pearson χ² at δ = 0.1 (bandpo.band), DAPO's fixed [0.8, 1.28], DCPO's
    dynamic adaptive clipping with ε = 0.2/0.28 (bandpo.losses), and the simplex limits 0 <= r <= 1/p.
(b) The same bounds as the change of probability (r - 1)·p. Every Band is a closed "lens" inside the
    simplex strip -p <= Δ <= 1 - p, whereas DAPO's upper line 0.28·p crosses 1 - p at p = 1/1.28 ≈ 0.78:
    beyond it the fixed bound allows probabilities above 1.

Parameters follow the paper's Fig. 1 (δ = 0.1, DCPO ε₋ = 0.2, ε₊ = 0.28; see docs/paper-notes.md, "Baselines").
No data is read; everything is computed here.
"""

from __future__ import annotations

import numpy as np
import torch

from style import (
    THEORY, apply_style, divergence_style, int_at_least, method_style, out_parser, panel_label, resolve_out, run_cli,
    save,
)

import bandpo

NAME = "fig1_bounds.png"
DELTA = 0.1
DIVERGENCES = ("kl", "tv", "chi2")
DAPO_EPS = (0.2, 0.28)
DCPO_EPS = (0.2, 0.28)


def p_grid(n: int) -> np.ndarray:
    """Old probabilities in (0, 1]: a geometric run-in from 1e-9 (to close the lenses at p -> 0), then linear."""
    tail = np.geomspace(1e-9, 1e-3, max(n // 20, 5), endpoint=False)
    return np.concatenate([tail, np.linspace(1e-3, 1.0, n)])


def band_bounds(p: np.ndarray, delta: float, divergence: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) ratio bounds of Band_{f,δ}(p) in float64 (bandpo.band's per-element solver, no cap)."""
    lower, upper = bandpo.band(torch.log(torch.as_tensor(p, dtype=torch.float64)), delta, divergence)
    return lower.numpy(), upper.numpy()


def method_bounds(p: np.ndarray, method: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of a loss method's clip range (``bandpo.bounds``, the interval the loss clips to), as
    float64 arrays.

    ``kwargs`` are the method's settings (e.g. ``eps_low``, ``eps_high``).
    """
    old_logp = torch.log(torch.as_tensor(p, dtype=torch.float64))
    lower, upper = bandpo.bounds(old_logp, method, **kwargs)
    return lower.numpy(), upper.numpy()


def make_figure(out, n: int = 1500, delta: float = DELTA):
    """Draw both panels on ``n`` grid points and save to ``out`` (a .png path or a folder)."""
    apply_style()
    import matplotlib.pyplot as plt

    p = p_grid(n)
    bands = {d: band_bounds(p, delta, d) for d in DIVERGENCES}
    dapo = method_bounds(p, "clip", eps_low=DAPO_EPS[0], eps_high=DAPO_EPS[1])
    dcpo = method_bounds(p, "dcpo", eps_low=DCPO_EPS[0], eps_high=DCPO_EPS[1])
    s_dapo = dict(color=method_style("clip")["color"], ls="-", lw=1.4)
    s_dcpo = dict(color=method_style("dcpo")["color"], ls="--", lw=1.4)

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(7.4, 3.3), constrained_layout=True)

    # (a) ratio bounds
    inv_p = 1 / p
    ax_a.fill_between(p, inv_p, 10, color="0.92", lw=0, zorder=0)
    ax_a.fill_between(p, -1, 0, color="0.92", lw=0, zorder=0)
    ax_a.plot(p, inv_p, **THEORY, label="simplex: $0 \\leq r \\leq 1/p$ (a), $-p \\leq \\Delta \\leq 1-p$ (b)")
    ax_a.axhline(0, **THEORY)
    for d, (lo, up) in bands.items():
        st = divergence_style(d)
        ax_a.plot(p, up, color=st["color"], ls="-.", label=f"Band {st['label']}, $\\delta$={delta:g}")
        ax_a.plot(p, lo, color=st["color"], ls="-.")
    ax_a.plot(p, dapo[1], **s_dapo, label=f"DAPO [{1 - DAPO_EPS[0]:g}, {1 + DAPO_EPS[1]:g}]")
    ax_a.plot(p, dapo[0], **s_dapo)
    ax_a.plot(p, dcpo[1], **s_dcpo, label=f"DCPO $\\varepsilon$={DCPO_EPS[0]:g}/{DCPO_EPS[1]:g}")
    ax_a.plot(p, dcpo[0], **s_dcpo)
    ax_a.set(xlim=(0, 1), ylim=(-0.15, 4), xlabel=r"old probability $p = \pi_{old}(a|s)$",
             ylabel=r"ratio bound $r = \pi_{new}/\pi_{old}$", title="Ratio bounds")
    ax_a.text(0.97, 3.75, "$r > 1/p$: new probability > 1", fontsize=7.5, color="0.35", ha="right", va="top")
    panel_label(ax_a, "a")

    # (b) probability variation (r - 1) p: closed lenses for Band
    ax_b.fill_between(p, 1 - p, 1.2, color="0.92", lw=0, zorder=0)
    ax_b.text(0.97, 0.93, "$p + \\Delta > 1$", fontsize=7.5, color="0.35", ha="right", va="top")
    ax_b.fill_between(p, -1.2, -p, color="0.92", lw=0, zorder=0)
    ax_b.plot(p, 1 - p, **THEORY)
    ax_b.plot(p, -p, **THEORY)
    for d, (lo, up) in bands.items():
        st = divergence_style(d)
        # polygon: upper edge left to right, lower edge back; the vertical ends at p -> 0 and p = 1 close it
        xs = np.concatenate([[0.0], p, p[::-1], [0.0]])
        ys = np.concatenate([[(up[0] - 1) * p[0]], (up - 1) * p, ((lo - 1) * p)[::-1], [(up[0] - 1) * p[0]]])
        ax_b.plot(xs, ys, color=st["color"], ls="-.")
    ax_b.plot(p, (dapo[1] - 1) * p, **s_dapo)
    ax_b.plot(p, (dapo[0] - 1) * p, **s_dapo)
    ax_b.plot(p, (dcpo[1] - 1) * p, **s_dcpo)
    ax_b.plot(p, (dcpo[0] - 1) * p, **s_dcpo)
    p_cross = 1 / (1 + DAPO_EPS[1])  # 0.28 p = 1 - p
    ax_b.plot([p_cross], [1 - p_cross], "o", ms=5, mfc="white", mec="k", mew=1.2, zorder=5)
    ax_b.annotate(
        f"DAPO upper crosses $1-p$\nat $p = 1/1.28 \\approx {p_cross:.2f}$",
        xy=(p_cross, 1 - p_cross), xytext=(0.50, 0.62), fontsize=7.5,
        arrowprops=dict(arrowstyle="->", color="0.3", lw=0.8),
    )
    ax_b.set(xlim=(0, 1), ylim=(-1, 1), xlabel=r"old probability $p = \pi_{old}(a|s)$",
             ylabel=r"probability change $\Delta = (r-1)\,p$", title="Bounds of probability variation")
    panel_label(ax_b, "b")

    handles, labels = ax_a.get_legend_handles_labels()
    order = [1, 2, 3, 4, 5, 0]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncol=3)
    return save(fig, resolve_out(out, NAME))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--n", type=int_at_least(2), default=1500, help="grid points on p in [1e-3, 1]")
    args = ap.parse_args(argv)
    path = make_figure(args.out, n=args.n)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
