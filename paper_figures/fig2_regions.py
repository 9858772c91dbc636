"""Figure 2: ratio-clipping regions of BandPO-KL (δ = 0.1) and DAPO ([0.8, 1.28]) over (old, new) probability.

    python paper_figures/fig2_regions.py --out paper_figures/out/

Every point (p_old, p_new) of the unit square is an update of the sampled token's probability, with ratio
r = p_new / p_old. BandPO-KL allows it when lower(p_old) <= r <= upper(p_old) with [lower, upper] =
Band_{KL,0.1}(p_old) (bandpo.band, no upper cap: the paper's cap of 10 binds only for p_old < 0.0137 at
δ = 0.1); DAPO allows it when 0.8 <= r <= 1.28. The four colours are the four combinations.
(a) the unit square on linear axes, with the area of each region in the legend;
(b) the same map on log axes, which shows the rare-token corner (p_old down to 1e-4).
No data is read.
"""

from __future__ import annotations

import numpy as np
import torch

from style import GREEN, SKY, apply_style, int_at_least, out_parser, panel_label, resolve_out, run_cli, save

import bandpo

NAME = "fig2_regions.png"
DELTA = 0.1
DAPO = (0.8, 1.28)
REGIONS = (  # (code, label, colour); code = 2 * band_allows + dapo_allows
    (0, "both clip", "#F2F2F2"),
    (1, "DAPO allows, BandPO clips", GREEN),
    (2, "BandPO allows, DAPO clips", SKY),
    (3, "both allow", "#B9B3D9"),
)


def region_codes(p_old: np.ndarray, p_new: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Region code 2*[Band-KL allows] + [DAPO allows] for each (p_old[j], p_new[i]); shape (len(p_new), len(p_old))."""
    lower, upper = bandpo.band(torch.log(torch.as_tensor(p_old, dtype=torch.float64)), delta, "kl")
    lower, upper = lower.numpy()[None, :], upper.numpy()[None, :]
    r = p_new[:, None] / p_old[None, :]
    band_ok = (r >= lower) & (r <= upper)
    dapo_ok = (r >= DAPO[0]) & (r <= DAPO[1])
    return 2 * band_ok.astype(np.int8) + dapo_ok.astype(np.int8)


def area_fractions(n: int = 1000, delta: float = DELTA) -> dict[int, float]:
    """Share of the unit square (cell-centred n x n grid) in each region."""
    x = (np.arange(n) + 0.5) / n
    codes = region_codes(x, x, delta)
    return {code: float(np.mean(codes == code)) for code, _, _ in REGIONS}


def make_figure(out, n: int = 700, delta: float = DELTA):
    """Draw both panels on n x n grids and save to ``out`` (a .png path or a folder)."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cmap = ListedColormap([c for _, _, c in REGIONS])
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(7.4, 3.6), constrained_layout=True)

    # (a) linear unit square
    x = (np.arange(n) + 0.5) / n
    codes = region_codes(x, x, delta)
    frac = {code: float(np.mean(codes == code)) for code, _, _ in REGIONS}
    ax_a.imshow(codes, origin="lower", extent=(0, 1, 0, 1), cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto")
    ax_a.plot([0, 1], [0, 1], color="0.3", lw=0.8, ls="--")
    ax_a.text(0.60, 0.53, "no change", rotation=45, fontsize=7, color="0.3", ha="center", va="center",
              rotation_mode="anchor", transform_rotates_text=True)
    ax_a.set(xlim=(0, 1), ylim=(0, 1), xlabel=r"old probability $\pi_{old}(a|s)$",
             ylabel=r"new probability $\pi_{new}(a|s)$", title=f"BandPO-KL ($\\delta$={delta:g}) vs DAPO")
    ax_a.grid(False)
    panel_label(ax_a, "a")

    # (b) log axes: the rare-token corner
    xl = np.geomspace(1e-4, 1, n)
    yl = np.geomspace(1e-6, 1, n)
    codes_l = region_codes(xl, yl, delta)
    ax_b.pcolormesh(xl, yl, codes_l, cmap=cmap, vmin=-0.5, vmax=3.5, shading="nearest", rasterized=True)
    ax_b.plot([1e-4, 1], [1e-4, 1], color="0.3", lw=0.8, ls="--")
    ax_b.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-6, 1), xlabel=r"old probability $\pi_{old}(a|s)$",
             ylabel=r"new probability $\pi_{new}(a|s)$", title="log axes: rare tokens")
    ax_b.grid(False)
    panel_label(ax_b, "b")

    handles = [Patch(facecolor=c, edgecolor="0.6", lw=0.5, label=f"{lab} ({100 * frac[code]:.1f}% of square)")
               for code, lab, c in REGIONS[::-1]]
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    return save(fig, resolve_out(out, NAME))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--n", type=int_at_least(2), default=700, help="grid points per axis")
    args = ap.parse_args(argv)
    path = make_figure(args.out, n=args.n)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
