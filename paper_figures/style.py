"""Shared look of every paper figure: fonts, colours, line styles, the ``--out`` flag and saving.

Every figure script does

    from style import apply_style, save, out_parser, METHOD, DIVERGENCE

so a colour or a font size is changed here once. The backend is Agg (headless) and nothing in a figure
depends on the clock or on a random seed that is not fixed, so two runs write byte-identical PNGs.
Palette: Okabe & Ito's colour-blind-safe set, with one colour per method and one per divergence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
"""Committed data the figures read (training metrics, bandit histories)."""
OUT = HERE / "out"
"""Default output folder (gitignored): ``make reproduce`` writes every PNG here."""

if str(ROOT) not in sys.path:  # run as ``python paper_figures/figX.py`` from a fresh clone
    sys.path.insert(0, str(ROOT))

from bandpo.cli import ArgumentParser, UsageError, check_out_path, int_at_least, one_line  # noqa: E402,F401

# Okabe-Ito
BLUE, VERMILLION, ORANGE, GREEN = "#0072B2", "#D55E00", "#E69F00", "#009E73"
SKY, PURPLE, YELLOW, GREY, BLACK = "#56B4E9", "#CC79A7", "#F0E442", "#7F7F7F", "#000000"
BROWN = "#8C564B"

DIVERGENCE = {
    "kl": dict(color=BLUE, label="KL"),
    "tv": dict(color=VERMILLION, label="TV"),
    "chi2": dict(color=ORANGE, label=r"$\chi^2$"),
    "hellinger": dict(color=GREEN, label="Hellinger$^2$"),
    "js": dict(color=PURPLE, label="JS"),
    "neyman_chi2": dict(color=SKY, label=r"Neyman $\chi^2$"),
    "reverse_kl": dict(color=BROWN, label="reverse KL"),
}
"""Colour and legend label per registered divergence (unknown names fall back to grey)."""

METHOD = {
    "clip": dict(color=GREY, ls="-"),
    "clip_higher": dict(color=BLACK, ls="--"),
    "dcpo": dict(color=PURPLE, ls=":"),
    "band_kl": dict(color=BLUE, ls="-"),
    "band_tv": dict(color=VERMILLION, ls="-"),
    "band_chi2": dict(color=ORANGE, ls="-"),
    "band_hellinger": dict(color=GREEN, ls="-"),
    "band_js": dict(color=PURPLE, ls="-"),
    "band_reverse_kl": dict(color=BROWN, ls="-"),
    "band_neyman_chi2": dict(color=SKY, ls="-"),
    "no_clip": dict(color="#BBBBBB", ls=(0, (1, 1))),
    "dppo_kl": dict(color=BLUE, ls="--"),
    "dppo_tv": dict(color=VERMILLION, ls="--"),
    "band_kl_relax": dict(color=SKY, ls="-."),
    "band_kl_upper": dict(color=GREEN, ls="-."),
    "band_kl_upper_rare": dict(color=GREEN, ls="-"),
    "band_kl_lower": dict(color=BROWN, ls="-."),
}
"""Colour and line style per method id of ``bandpo.losses.METHODS`` (the ids in run folder names and data
files); the legend label is the method's own ``Method.label``."""

THEORY = dict(color=BLACK, ls=(0, (1, 1.5)), lw=1.2)
"""The simplex limits 0 and 1/p (ratio) or -p and 1-p (probability change)."""


def divergence_style(name: str) -> dict:
    """Colour and label of a divergence; grey and its own name for one registered by a user."""
    return dict(DIVERGENCE.get(name, dict(color=GREY, label=name)))


def method_style(name: str) -> dict:
    """Colour, line style and label of a method id (label: ``bandpo.get_method(name).label``); grey and its own
    name when unknown."""
    from bandpo.losses import METHODS

    method = METHODS.find(name)
    return dict(METHOD.get(name, dict(color=GREY, ls="-")), label=method.label if method is not None else name)


def apply_style() -> None:
    """Set the rcParams every figure shares (sizes chosen for a 7-inch-wide, two-column paper figure)."""
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 160,
            "font.family": "DejaVu Sans",
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 7.5,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "grid.linewidth": 0.6,
            "lines.linewidth": 1.6,
            "legend.frameon": True,
            "legend.framealpha": 0.9,
            "legend.edgecolor": "0.8",
            "image.interpolation": "nearest",
            "svg.hashsalt": "bandpo",
        }
    )


def _out_path(text: str) -> Path:
    """``--out``: a .png file or a folder that can be written (checked before the figure is computed)."""
    try:
        return check_out_path(text, suffixes=(".png",)) if Path(text).suffix.lower() == ".png" else check_out_path(
            text, folder=True)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--out ")) from None


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file when it is not UTF-8 JSON holding an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a UTF-8 JSON file ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, not a {type(data).__name__}")
    return data


def run_cli(main) -> None:
    """Run a figure script's ``main`` as a command: missing or unreadable data becomes one line on stderr and exit
    status 2 (``bandpo.cli``'s convention), not a traceback. (``reproduce.py`` calls ``main`` itself and catches
    ``FileNotFoundError`` to report a figure without data.)"""
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"paper_figures/{Path(sys.argv[0]).name}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


def out_parser(description: str, default_name: str) -> ArgumentParser:
    """An argument parser with the shared ``--out`` flag (a .png path, or a folder to put ``default_name`` in)."""
    ap = ArgumentParser(prog=f"python paper_figures/{Path(default_name).stem}.py", description=description)
    ap.add_argument(
        "--out",
        type=_out_path,
        default=OUT / default_name,
        help=f"output PNG, or a folder to write {default_name} into (default: paper_figures/out/{default_name})",
    )
    return ap


def resolve_out(out: Path, default_name: str) -> Path:
    """``out`` itself when it names a .png, else ``out/default_name``; parent folders are created."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def save(fig, out: Path) -> Path:
    """Write ``fig`` as PNG with a tight bounding box (nothing clipped), no timestamp metadata, and close it."""
    fig.savefig(out, bbox_inches="tight", pad_inches=0.05, metadata={"Software": None})
    plt.close(fig)
    return out


def panel_label(ax, letter: str) -> None:
    """Turn the axes' title into a left-aligned "(a) title" (a long title can then never hit the letter)."""
    text = ax.get_title()
    ax.set_title("")
    ax.set_title(f"({letter}) {text}".rstrip(), loc="left")
