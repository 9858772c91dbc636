"""Figure 10: the pre-registered experiment: how many seeds have discovered the rare tail by each RL step, per arm,
and the paired difference against GRPO clip with its 95 % interval.

    python paper_figures/fig10_confirm_discovery.py --out paper_figures/out/
    python paper_figures/fig10_confirm_discovery.py --data some/protocol/runs

Data: ``data/protocol/runs/summary.csv``, the ``confirm`` grid of ``bandpo.experiments.testbed`` run as
``docs/protocol-rare-tail.md`` prescribes (arms clip, band_kl, band_kl_upper_rare; paired seeds). A run has
discovered the tail by step s when ``discovered`` is 1 and ``discovery_step`` <= s (the probe's p_tail reached 0.5).
(a) the fraction of seeds discovered by step s, per arm, with a 95 % Wilson score interval (pointwise). (b) the mean
over seeds of the paired difference arm - clip of that 0/1 indicator, with a 95 % Student t interval
(``bandpo.experiments.stats.t_interval``, pointwise). The value at the last step is the protocol's primary endpoint
(band_kl_upper_rare) and its first secondary (band_kl); every earlier step is exploratory and not corrected for
multiplicity. Without the data the script prints why and writes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from style import DATA, GREY, apply_style, method_style, out_parser, panel_label, resolve_out, run_cli, save
from testbed_common import load_summary

NAME = "fig10_confirm_discovery.png"
PROTOCOL_RUNS = DATA / "protocol" / "runs"
ARMS = ("clip", "band_kl", "band_kl_upper_rare")
COMMAND = "the commands of docs/protocol-rare-tail.md (python -m bandpo.experiments.testbed --grid confirm ...)"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> "tuple[float, float]":
    """The Wilson score interval of a proportion k/n (95 % by default); (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def discovered_by(rows, arm: str, steps: np.ndarray) -> "dict[int, np.ndarray]":
    """{seed: 0/1 array over ``steps``}: whether the arm's run of that seed had discovered the tail by each step."""
    out = {}
    for r in rows:
        if r.get("grid") == "confirm" and r["method"] == arm:
            found = float(r["discovered"]) == 1.0
            out[int(r["seed"])] = (found & (steps >= float(r["discovery_step"]))).astype(float)
    return out


def curves(rows, steps: np.ndarray) -> dict:
    """The plotted numbers: per arm the fraction discovered by each step with its Wilson interval, and per arm other
    than clip the paired difference against clip with its t interval, over the seeds every arm has."""
    from bandpo.experiments.stats import t_interval

    by_arm = {a: discovered_by(rows, a, steps) for a in ARMS}
    seeds = sorted(set.intersection(*(set(v) for v in by_arm.values())))
    # (seeds, steps) 0/1 matrix of each arm over the paired seeds
    found = {a: np.array([by_arm[a][s] for s in seeds]).reshape(len(seeds), steps.size) for a in ARMS}
    res: dict = {"seeds": len(seeds), "steps": steps, "rate": {}, "diff": {}}
    for a in ARMS:
        k = found[a].sum(0)
        res["rate"][a] = (k / max(len(seeds), 1), np.array([wilson(int(x), len(seeds)) for x in k]))
    for a in ARMS[1:]:
        d = found[a] - found["clip"]
        ivs = [t_interval(d[:, j]) for j in range(steps.size)]
        res["diff"][a] = np.array([[iv.estimate, iv.low, iv.high] for iv in ivs])
    return res


def make_figure(out, data: Path = PROTOCOL_RUNS):
    """Draw both panels into ``out`` (a .png or a folder); [] with a message when the data is missing."""
    rows = load_summary(data)
    if rows is None or not any(r.get("grid") == "confirm" for r in rows):
        print(f"fig10: skipped: no confirm runs in {Path(data) / 'summary.csv'} (produce them with {COMMAND})",
              flush=True)
        return []
    tau = int(max(float(r["max_steps"]) for r in rows if r.get("grid") == "confirm"))
    steps = np.arange(0, tau + 1)
    res = curves(rows, steps)
    from bandpo.losses import get_method

    apply_style()
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for a in ARMS:
        rate, band = res["rate"][a]
        st = method_style(a)
        ax_a.step(steps, rate, where="post", color=st["color"], ls=st.get("ls", "-"), label=get_method(a).label)
        ax_a.fill_between(steps, band[:, 0], band[:, 1], step="post", color=st["color"], alpha=0.12, lw=0)
    ax_a.set_xlabel("RL step")
    ax_a.set_ylabel("fraction of seeds with the tail discovered")
    ax_a.set_title(f"discovered by step (n = {res['seeds']} seeds per arm)")
    ax_a.set_xlim(0, tau)
    ax_a.set_ylim(0, 1)
    ax_a.legend(loc="upper left", fontsize=8)
    panel_label(ax_a, "a")
    ax_b.axhline(0, color=GREY, lw=0.8)
    for a in ARMS[1:]:
        d = res["diff"][a]
        st = method_style(a)
        ax_b.step(steps, d[:, 0], where="post", color=st["color"], ls=st.get("ls", "-"),
                  label=f"{get_method(a).label} - clip")
        ax_b.fill_between(steps, d[:, 1], d[:, 2], step="post", color=st["color"], alpha=0.15, lw=0)
    ax_b.set_xlabel("RL step")
    ax_b.set_ylabel("paired difference of the rate")
    ax_b.set_title("vs GRPO clip, 95 % t interval (last step: the tests)")
    ax_b.set_xlim(0, tau)
    ax_b.legend(loc="upper left", fontsize=8)
    panel_label(ax_b, "b")
    return [save(fig, resolve_out(out, NAME))]


def main(argv=None):
    ap = out_parser(__doc__.splitlines()[0], NAME)
    ap.add_argument("--data", type=Path, default=PROTOCOL_RUNS, help="folder holding the confirm grid's summary.csv")
    args = ap.parse_args(argv)
    paths = make_figure(args.out, args.data)
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    run_cli(main)
