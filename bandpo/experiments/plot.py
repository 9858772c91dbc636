"""Plot training runs: reward, held-out eval mean@n / pass@k, entropy, and clip fractions by probability bucket.

    python -m bandpo.experiments.plot RUN_DIR [RUN_DIR ...] [--out runs.png] [--smooth 10]

A run folder is what ``python -m bandpo.training --out RUN_DIR`` writes: ``metrics.csv`` (one row per RL step)
and, when the run evaluates, ``eval.csv`` (one row per evaluation, ``step`` = RL steps done before it). Folders
are read as they are (any names; each curve is labelled with the folder's name, or ``parent/name`` where two
names clash). Panels:

* reward (``reward/mean``, moving average over ``--smooth`` steps, raw values faint);
* eval mean@n and maj@n, and pass@k for every logged k, of every eval set (colour: run, marker: set, line
  style: metric or k);
* token entropy (``entropy``, smoothed);
* the fraction of clipped tokens (``bucket/<b>/clip_region_mean``) in each old-probability bucket ``b`` (the
  buckets of ``docs/metrics.md``), smoothed.

Missing columns leave a panel empty with a note (e.g. a run without evaluation). Needs matplotlib (the
``figures`` extra).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import ArgumentParser, check_out_path, one_line

__all__ = ["labels_for", "main", "moving_average", "plot_runs", "read_csv", "read_run"]


IMAGE_SUFFIXES = (".png", ".pdf", ".svg")
"""The image types ``--out`` may name."""


def read_csv(path: Path) -> dict:
    """Columns of a CSV file as float lists (empty cells -> nan), rows sorted by ``step``.

    Raises:
        ValueError: naming the file, when it cannot be read or is not UTF-8 CSV text.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{str(path)!r} cannot be read as a UTF-8 CSV file ({one_line(e)})") from None
    rows.sort(key=lambda r: float(r.get("step") or 0))
    cols: dict = {}
    for r in rows:
        for k, v in r.items():
            try:
                value = float(v) if v not in ("", None) else math.nan
            except ValueError:
                value = math.nan
            cols.setdefault(k, []).append(value)
    return cols


def read_run(path: "str | Path") -> dict:
    """``{"path", "metrics", "eval"}`` of a run folder (``eval`` is {} without ``eval.csv``).

    Raises:
        ValueError: the folder does not exist or has no ``metrics.csv``.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"run folder {str(p)!r} is a file; give a folder written by python -m bandpo.training --out")
    if not p.is_dir():
        raise ValueError(f"run folder {str(p)!r} does not exist")
    if not (p / "metrics.csv").is_file():
        raise ValueError(f"{str(p)!r} is not a run folder: it has no metrics.csv (written by python -m bandpo.training)")
    ev = p / "eval.csv"
    return {"path": p, "metrics": read_csv(p / "metrics.csv"), "eval": read_csv(ev) if ev.is_file() else {}}


def labels_for(paths: Sequence[Path]) -> list:
    """Folder names, or ``parent/name`` for names that occur more than once."""
    names = [Path(p).resolve().name for p in paths]
    return [f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def moving_average(values: Sequence[float], window: int) -> list:
    """Trailing moving average over the last ``window`` finite values (nan until there is one)."""
    out, buf = [], []
    for v in values:
        if math.isfinite(v):
            buf.append(v)
            buf = buf[-window:]
        out.append(sum(buf) / len(buf) if buf else math.nan)
    return out


_BUCKET = re.compile(r"^bucket/(?P<b>[^/]+)/clip_region_mean$")
_EVAL = re.compile(r"^eval/(?P<set>[^/]+)/(?P<metric>mean|pass|maj)@(?P<k>\d+)$")


def _bucket_key(b: str) -> float:
    m = re.match(r"p([0-9.]+)", b)
    return float(m.group(1)) if m else math.inf


def plot_runs(paths: Sequence["str | Path"], out: "str | Path", *, smooth: int = 10, title: Optional[str] = None) -> Path:
    """Draw the panels for the run folders ``paths`` into the image ``out`` (PNG/PDF/SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(p) for p in paths]
    labels = labels_for([r["path"] for r in runs])
    buckets = sorted({m.group("b") for r in runs for k in r["metrics"] if (m := _BUCKET.match(k))}, key=_bucket_key)
    n_cols = max(4, len(buckets))
    fig, axes = plt.subplots(2, n_cols, figsize=(3.3 * n_cols, 6.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def curve(ax, run, key, color, label):
        cols = run["metrics"]
        if key not in cols:
            return False
        x, y = cols["step"], cols[key]
        if smooth > 1:
            ax.plot(x, y, color=color, alpha=0.2, lw=0.8)
        ax.plot(x, moving_average(y, smooth), color=color, lw=1.5, label=label)
        return True

    panels = [(axes[0][0], "reward/mean", "reward (sampled, train)"), (axes[0][3], "entropy", "token entropy (nats)")]
    for ax, key, name in panels:
        drawn = [curve(ax, r, key, colors[i % len(colors)], labels[i]) for i, r in enumerate(runs)]
        ax.set_title(name, fontsize=10)
        if not any(drawn):
            ax.text(0.5, 0.5, f"no column {key!r}", ha="center", va="center", transform=ax.transAxes, fontsize=8)

    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for col, metrics, name in ((1, ("mean", "maj"), "eval mean@n (solid), maj@n (dashed)"),
                               (2, ("pass",), "eval pass@k (k = 1 solid, ...)")):
        ax = axes[0][col]
        drawn = False
        for i, r in enumerate(runs):
            ev = r["eval"]
            found: dict = {}
            for key in ev:
                m = _EVAL.match(key)
                if m and m.group("metric") in metrics:
                    found.setdefault(m.group("set"), []).append((m.group("metric"), int(m.group("k")), key))
            for j, (set_name, entries) in enumerate(sorted(found.items())):
                if col == 1:  # mean@n and the largest maj@k (maj@n)
                    n_max = max(k for _, k, _ in entries)
                    chosen = [(0 if metric == "mean" else 1, metric, k, key) for metric, k, key in entries
                              if k == n_max]
                else:
                    chosen = [(idx, metric, k, key) for idx, (metric, k, key) in enumerate(sorted(entries, key=lambda e: e[1]))]
                for style_idx, metric, k, key in sorted(chosen):
                    ax.plot(ev["step"], ev[key], styles[style_idx % len(styles)], color=colors[i % len(colors)],
                            marker=markers[j % len(markers)], ms=3, lw=1.3, label=f"{labels[i]} {set_name} {metric}@{k}")
                    drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        if drawn:
            ax.legend(fontsize=6, loc="lower right", handlelength=4.5)  # long handles: the dashes show beside the marker
        else:
            ax.text(0.5, 0.5, "no eval.csv (set eval.sets)", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)

    for j in range(n_cols):
        ax = axes[1][j]
        if j >= len(buckets):
            ax.axis("off")
            continue
        b = buckets[j]
        for i, r in enumerate(runs):
            curve(ax, r, f"bucket/{b}/clip_region_mean", colors[i % len(colors)], labels[i])
        ax.set_title(f"clipped fraction, old p in {b[1:].replace('-', '–')}", fontsize=10)
    if not buckets:
        axes[1][0].axis("on")
        axes[1][0].text(0.5, 0.5, "no bucket/*/clip_region_mean columns", ha="center", va="center",
                        transform=axes[1][0].transAxes, fontsize=8)
    for row in axes:
        for ax in row:
            if ax.axison:
                ax.set_xlabel("RL step", fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{len(runs)} run(s): " + ", ".join(labels), fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python -m bandpo.experiments.plot",
                       description="Plot reward, eval mean@n/pass@k, entropy and clip fractions by "
                                   "probability bucket of training run folders.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by python -m bandpo.training --out")
    p.add_argument("--out", default="runs.png", metavar="FILE", help="image to write (.png/.pdf/.svg) [runs.png]")
    p.add_argument("--smooth", type=int, default=10, metavar="N", help="moving-average window in steps [10]")
    p.add_argument("--title", metavar="TEXT", help="figure title")
    args = p.parse_args(argv)
    try:
        if args.smooth < 1:
            raise ValueError(f"--smooth {args.smooth}: must be >= 1")
        check_out_path(args.out, suffixes=IMAGE_SUFFIXES)
        out = plot_runs(args.runs, args.out, smooth=args.smooth, title=args.title)
    except (ValueError, OSError) as e:
        return p.report(e)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
