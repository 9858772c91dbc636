"""Figure 6: solver speed and accuracy, bandpo's Band operator vs a 50-iteration bisection.

    python benchmarks/band_speed.py                      # writes benchmarks/results/band_speed.json
    python paper_figures/fig6_solver_speed.py --out paper_figures/out/

Reads the benchmark's saved output (``--data``, default benchmarks/results/band_speed.json; schema below)
and draws, per divergence:
(a) throughput in tokens/s of ``bandpo.band`` and of the bisection baseline (log axis), with the speed-up;
(b) the largest relative error of each against the 60-digit mpmath reference (log axis), with float32's
    unit roundoff 2^-24 ≈ 6e-8 for scale.

Schema: {"n_tokens": int, "dtype": str, "device": str, "torch": str, "rows": [{"divergence": str,
"band_tokens_per_s": float, "bisection_tokens_per_s": float, "speedup": float, "band_max_rel_err": float,
"bisection_max_rel_err": float}, ...]}. Optional row keys drawn when present: "path" (which code path
bandpo took), "band_compiled_tokens_per_s" and "speedup_compiled" (torch.compile; NaN where not measured).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from style import (
    GREY, ROOT, apply_style, divergence_style, out_parser, panel_label, read_json, resolve_out, run_cli, save,
)

NAME = "fig6_solver_speed.png"
DEFAULT_DATA = ROOT / "benchmarks" / "results" / "band_speed.json"
TOP_KEYS = ("n_tokens", "dtype", "device", "torch", "rows")
ROW_KEYS = ("divergence", "band_tokens_per_s", "bisection_tokens_per_s", "speedup", "band_max_rel_err",
            "bisection_max_rel_err")


def load(path: Path) -> dict:
    """Read and check the benchmark JSON; a clear ValueError names any missing key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python benchmarks/band_speed.py --out {path}` first")
    data = read_json(path)
    missing = [k for k in TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing top-level keys {missing}; expected {list(TOP_KEYS)}")
    if not data["rows"]:
        raise ValueError(f"{path}: 'rows' is empty; expected one row per divergence")
    for i, row in enumerate(data["rows"]):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: rows[{i}] misses keys {missing}; expected {list(ROW_KEYS)}")
    return data


def _finite(x) -> float:
    """A JSON number, or NaN for null/NaN/missing."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def make_figure(out, data_path: Path = DEFAULT_DATA):
    """Draw both panels from the JSON at ``data_path`` and save to ``out`` (a .png path or a folder)."""
    data = load(data_path)
    apply_style()
    import matplotlib.pyplot as plt

    rows = sorted(data["rows"], key=lambda r: r["divergence"])
    names = [r["divergence"] for r in rows]
    y = np.arange(len(rows))
    h = 0.38
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(7.4, 1.0 + 0.5 * len(rows)), sharey=True,
                                     constrained_layout=True)
    colors = [divergence_style(n)["color"] for n in names]

    band_tps = np.array([r["band_tokens_per_s"] for r in rows])
    bis_tps = np.array([r["bisection_tokens_per_s"] for r in rows])
    comp_tps = np.array([_finite(r.get("band_compiled_tokens_per_s")) for r in rows])
    has_comp = bool(np.isfinite(comp_tps).any())
    hb = 0.27 if has_comp else h
    ax_a.barh(y - hb, band_tps, hb, color=colors, label="bandpo.band")
    if has_comp:
        ax_a.barh(y, np.nan_to_num(comp_tps), hb, color=colors, alpha=0.45, edgecolor=colors, lw=0.8)
    ax_a.barh(y + (hb if has_comp else h / 2), bis_tps, hb, color="white", edgecolor=GREY, hatch="////", lw=0.8)
    if not has_comp:  # two bars: centre them on the tick
        for patch in ax_a.patches[: len(rows)]:
            patch.set_y(patch.get_y() + h / 2)
    xmax = np.nanmax(np.concatenate([band_tps, bis_tps, comp_tps]))
    for yi, r, c in zip(y, rows, comp_tps):
        text = f"{r['speedup']:.3g}x"
        if np.isfinite(c):
            text += f"\n{_finite(r.get('speedup_compiled')):.3g}x compiled"
        ax_a.text(xmax * 3, yi, text, va="center", ha="left", fontsize=7)
    ax_a.set(xscale="log", xlim=(min(band_tps.min(), bis_tps.min()) / 3, xmax * 60),
             xlabel="tokens / s (higher is better)",
             title="throughput (speed-up = band / bisection)")
    ax_a.set_yticks(y, [divergence_style(n)["label"] + (f"\n({r['path']})" if r.get("path") else "")
                        for n, r in zip(names, rows)])
    ax_a.invert_yaxis()
    ax_a.grid(axis="y", visible=False)
    panel_label(ax_a, "a")

    band_err = np.array([r["band_max_rel_err"] for r in rows])
    bis_err = np.array([r["bisection_max_rel_err"] for r in rows])
    ax_b.barh(y - h / 2, band_err, h, color=colors, label="bandpo.band")
    ax_b.barh(y + h / 2, bis_err, h, color="white", edgecolor=GREY, hatch="////", lw=0.8, label="bisection, 50 it.")
    roundoff = ax_b.axvline(2.0**-24, color="k", ls=":", lw=1.0, label=r"float32 unit roundoff $2^{-24}$")
    positive = np.concatenate([band_err, bis_err])
    positive = positive[positive > 0]
    lo = min(positive.min() if positive.size else 1e-9, 2.0**-24) / 5
    ax_b.set(xscale="log", xlim=(lo, max(positive.max() if positive.size else 1.0, 1.0) * 5),
             xlabel="max relative error vs mpmath reference (lower is better)", title="accuracy")
    ax_b.grid(axis="y", visible=False)
    panel_label(ax_b, "b")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="0.45", label="bandpo.band (colour: divergence)")]
    if has_comp:
        handles.append(Patch(facecolor="0.45", alpha=0.45, edgecolor="0.45", label="torch.compile(bandpo.band)"))
    handles += [Patch(facecolor="white", edgecolor=GREY, hatch="////", label="bisection baseline, 50 iterations"),
                roundoff]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    fig.suptitle(f"{data['n_tokens']:,} {data['dtype']} tokens, {data['device']}, torch {data['torch']}", fontsize=9)
    return save(fig, resolve_out(out, NAME))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="benchmark JSON (benchmarks/band_speed.py --out)")
    args = ap.parse_args(argv)
    path = make_figure(args.out, args.data)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
