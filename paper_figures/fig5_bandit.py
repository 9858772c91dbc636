"""Figure 5: the rare-arm bandit, does a probability-aware bound help a policy find a good arm it rarely samples?

    python paper_figures/fig5_bandit.py --out paper_figures/out/                # draws from data/bandit/
    python paper_figures/fig5_bandit.py --regenerate                            # re-runs bandpo.experiments.bandit first

Data: ``data/bandit/bandit.json``, written by :func:`generate_data` from :func:`bandpo.experiments.bandit.run_all` with
``BanditConfig()``'s defaults (seeded, so regenerating gives the same numbers on the same torch version).
It holds, per method and per step, the mean and the 25/75 % quantiles over seeds of π(rare arm), the policy
entropy and the rollout reward, the pooled per-bucket high-clip fractions, and each seed's discovery step.
Panels:
(a) π(rare arm) vs step (mean over seeds, band: interquartile range);
(b) policy entropy (nats);
(c) fraction of tokens clipped at the upper bound with positive advantage, per old-probability bucket, pooled
    over seeds and over the whole run (weighted by the bucket's token count per step);
(d) steps until π(rare) >= the discovery threshold, one dot per seed (right edge: never within the run).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from style import (
    DATA, apply_style, int_at_least, method_style, out_parser, panel_label, read_json, resolve_out, run_cli, save,
)

NAME = "fig5_bandit.png"
BANDIT = DATA / "bandit"
DEFAULT_DATA = BANDIT / "bandit.json"
SERIES = ("p_rare", "entropy", "reward")
SIG = 6  # significant digits kept in the JSON


def _round(x) -> list:
    return [float(f"{v:.{SIG}g}") if math.isfinite(v) else None for v in np.asarray(x, dtype=float).ravel()]


def _summary(values: np.ndarray) -> dict:
    """(N, S) -> mean and 25/75 % quantiles over seeds, per step."""
    return {"mean": _round(values.mean(1)), "q25": _round(np.quantile(values, 0.25, axis=1)),
            "q75": _round(np.quantile(values, 0.75, axis=1))}


def _config_dict(cfg) -> dict:
    """A BanditConfig as JSON-ready values (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def data_complete(path: Path = DEFAULT_DATA) -> bool:
    """True when the data file exists and was made with the current ``BanditConfig()`` defaults."""
    path = Path(path)
    if not path.is_file():
        return False
    from bandpo.experiments.bandit import BanditConfig

    saved = read_json(path).get("config")
    if saved != _config_dict(BanditConfig()):
        print(f"{path}: made with other BanditConfig settings than bandpo.experiments.bandit's current defaults")
        return False
    return True


def generate_data(path: Path = DEFAULT_DATA, cfg=None, methods=None) -> Path:
    """Run the bandit for every method and write the summaries to ``path`` (JSON)."""
    from bandpo.experiments.bandit import BanditConfig, run_all

    cfg = cfg or BanditConfig()
    runs = run_all(cfg, methods)
    from bandpo.losses import BUCKET_NAMES

    out = {"config": _config_dict(cfg),
           "buckets": list(BUCKET_NAMES), "methods": {}}
    for name, h in runs.items():
        entry = {s: _summary(getattr(h, s).numpy()) for s in SERIES}
        entry["discover_steps"] = _round(h.steps_to_discover(cfg.discover_at).numpy())
        entry["clip_high"] = {b: _round(h.metrics[f"bucket/{b}/clip_high_mean"].numpy()) for b in BUCKET_NAMES}
        entry["tokens"] = {b: _round(h.metrics[f"bucket/{b}/tokens"].numpy()) for b in BUCKET_NAMES}
        entry["seconds"] = round(h.seconds, 2)
        out["methods"][name] = entry
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def load(path: Path = DEFAULT_DATA) -> dict:
    """Read the bandit JSON; a clear error when it is missing or lacks a key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python paper_figures/fig5_bandit.py --regenerate`")
    data = read_json(path)
    for key in ("config", "buckets", "methods"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}; expected config, buckets, methods")
    if not data["methods"]:
        raise ValueError(f"{path}: no methods")
    return data


def _arr(xs) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in xs], dtype=float)


def pooled(method_entry: dict, bucket: str) -> float:
    """High-clip fraction of ``bucket`` over the whole run: Σ_t clip_t·tokens_t / Σ_t tokens_t (0 if no tokens)."""
    c, n = _arr(method_entry["clip_high"][bucket]), _arr(method_entry["tokens"][bucket])
    ok = np.isfinite(c) & np.isfinite(n)
    total = n[ok].sum()
    return float((c[ok] * n[ok]).sum() / total) if total > 0 else 0.0


def make_figure(out, data_path: Path = DEFAULT_DATA):
    """Draw the four panels from ``data_path`` and save to ``out`` (a .png path or a folder)."""
    data = load(data_path)
    cfg, methods = data["config"], data["methods"]
    buckets = data["buckets"]
    apply_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(11, 3.1), constrained_layout=True,
                             gridspec_kw=dict(width_ratios=[1, 1, 1, 0.9]))
    ax_p, ax_h, ax_c, ax_d = axes
    steps_max = cfg["steps"]
    for i, (name, m) in enumerate(methods.items()):
        st = method_style(name)
        label = st["label"]
        x = np.arange(len(m["p_rare"]["mean"]))
        for ax, key in ((ax_p, "p_rare"), (ax_h, "entropy")):
            ax.plot(x, _arr(m[key]["mean"]), color=st["color"], ls=st["ls"], lw=1.4, label=label)
            ax.fill_between(x, _arr(m[key]["q25"]), _arr(m[key]["q75"]), color=st["color"], alpha=0.08, lw=0)
        width = 0.8 / len(methods)
        for j, b in enumerate(buckets):
            ax_c.bar(j - 0.4 + (i + 0.5) * width, 100 * pooled(m, b), width, color=st["color"],
                     hatch="//" if st["ls"] not in ("-", "solid") else None, edgecolor="white", lw=0.3)
        d = _arr(m["discover_steps"])
        d = np.where(np.isfinite(d), d, steps_max * 1.08)
        jitter = (np.arange(len(d)) - (len(d) - 1) / 2) * (0.5 / max(len(d), 1))
        ax_d.plot(d, np.full_like(d, i) + jitter, "o", ms=3, color=st["color"], alpha=0.8)
    ax_p.axhline(cfg["discover_at"], color="0.5", lw=0.8, ls=":")
    ax_p.set(xlabel="step", ylabel=r"$\pi$(rare arm)", ylim=(0, 1.02), title="rare best arm")
    ax_h.set(xlabel="step", ylabel="entropy (nats)", title="policy entropy")
    ax_c.set_xticks(range(len(buckets)), [b.lstrip("p").replace("-", "–") for b in buckets])
    ax_c.set(xlabel="old probability of the token", ylabel="% clipped high (A > 0), whole run",
             title="upper clipping by bucket")
    ax_c.grid(axis="x", visible=False)
    names = list(methods)
    ax_d.axvline(steps_max, color="0.5", lw=0.8, ls=":")
    ax_d.set_yticks(range(len(names)), names)
    ax_d.invert_yaxis()
    ax_d.set(xlabel=f"steps to $\\pi$(rare) $\\geq$ {cfg['discover_at']:g}", xlim=(0, steps_max * 1.15),
             title="discovery, one dot per seed")
    ticks = [t for t in ax_d.get_xticks() if 0 <= t <= steps_max * 0.95]
    ax_d.set_xticks(ticks + [steps_max * 1.08], [f"{t:g}" for t in ticks] + ["never"])
    ax_d.grid(axis="y", visible=False)
    for ax, letter in zip(axes, "abcd"):
        panel_label(ax, letter)
    n_seeds = len(cfg["seeds"])
    fig.legend(*ax_p.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(names), 7))
    fig.suptitle(f"rare-arm bandit: {cfg['n_arms']} arms, initial $\\pi$(rare) = {cfg['rare_prob']:g}, "
                 f"{n_seeds} seeds (lines: mean, bands: 25-75 %), {cfg['minibatches']} optimiser steps per rollout",
                 fontsize=9)
    return save(fig, resolve_out(out, NAME))


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="bandit JSON to read (and to write with --regenerate)")
    ap.add_argument("--regenerate", action="store_true", help="run bandpo.experiments.bandit and rewrite --data first")
    ap.add_argument("--steps", type=int_at_least(1), default=None, help="with --regenerate: steps per run (default: BanditConfig)")
    ap.add_argument("--seeds", type=int_at_least(1), default=None, help="with --regenerate: number of seeds")
    ap.add_argument("--methods", nargs="*", default=None, help="with --regenerate: bandpo.experiments.bandit.METHODS keys")
    args = ap.parse_args(argv)
    if args.regenerate or not Path(args.data).is_file():
        from dataclasses import replace

        from bandpo.experiments.bandit import BanditConfig

        cfg = BanditConfig()
        if args.steps is not None:
            cfg = replace(cfg, steps=args.steps)
        if args.seeds is not None:
            cfg = replace(cfg, seeds=tuple(range(args.seeds)))
        generate_data(args.data, cfg, args.methods)
    path = make_figure(args.out, args.data)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    run_cli(main)
