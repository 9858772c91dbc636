"""Synthetic testbed runs in the layout of ``python -m bandpo.experiments.testbed``, for the figure tests.

    write_synthetic_testbed(root)   # root/<grid>/<variant>-seed<k>/{metrics.csv, eval.csv, summary.json}, summary.csv

Made-up but shaped like the real thing: p(tail) rises along a logistic curve whose rate depends on the variant
(variant index i: rate 0.05 + 0.03 i per step, midpoint shifted by the seed), entropy decays, the tail is sampled
at a step with probability 1 - (1 - p_tail)^64, and the held-out numbers grow with the final p(tail). Everything is
drawn from a NumPy generator seeded by (variant index, seed), so the files are the same on every call. summary.csv
is written by the runner's own ``summarize``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BUCKETS = ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1")


def write_synthetic_testbed(root, grids=("main", "delta", "lr", "ablation"), seeds=(0, 1, 2), steps: int = 30,
                            methods=None) -> Path:
    """Write every (variant, seed) of ``grids`` (only ``methods`` if given) under ``root``; returns ``root``."""
    from bandpo.experiments.testbed import GRIDS, run_dir, summarize

    root = Path(root)
    variants = [v for g in grids for v in GRIDS[g] if methods is None or v.method in methods]
    cols = ["reward/mean", "entropy", "testbed/p_tail", "testbed/p_common", "testbed/tail_frac",
            "testbed/tail_sampled"] + [f"bucket/{b}/{s}" for b in BUCKETS for s in ("tokens", "clip_region_mean",
                                                                                    "clip_high_mean")]
    t = np.arange(steps)
    for i, v in enumerate(variants):
        for seed in seeds:
            rng = np.random.default_rng([i, seed])
            rate, mid = 0.05 + 0.03 * i, steps * (0.9 - 0.04 * i) + 2 * seed
            p_tail = 0.03 + 0.9 / (1 + np.exp(-rate * (t - mid)))
            entropy = 0.8 * np.exp(-t / (steps * (0.5 + 0.1 * (i % 4)))) + 0.02 * rng.random(steps)
            sampled = (rng.random(steps) < 1 - (1 - p_tail) ** 64).astype(float)
            reward = 0.3 + 0.6 * p_tail + 0.02 * rng.standard_normal(steps)
            path = run_dir(root, v, seed)
            path.mkdir(parents=True, exist_ok=True)
            lines = ["step," + ",".join(cols)]
            for s in t:
                row = [reward[s], entropy[s], p_tail[s], 1 - p_tail[s], p_tail[s] * 0.9, sampled[s]]
                for j in range(len(BUCKETS)):
                    row += [10.0 * (j + 1), 0.05 * (j + 1) * (1 + i % 3) / 3, 0.02 * (j + 1)]
                lines.append(f"{s}," + ",".join(repr(float(x)) for x in row))
            (path / "metrics.csv").write_text("\n".join(lines) + "\n")
            final = float(p_tail[-1])
            ev = ["step,eval/heldout/mean@8,eval/heldout/pass@1,eval/heldout/pass@8",
                  f"0,{0.3!r},{0.3!r},{0.6!r}",
                  f"{steps},{0.3 + 0.5 * final + 0.01 * seed!r},{0.3 + 0.5 * final!r},{min(1.0, 0.6 + 0.4 * final)!r}"]
            (path / "eval.csv").write_text("\n".join(ev) + "\n")
            rec = {"grid": v.grid, "run": v.name, "method": v.method, "setting": v.setting, "seed": seed,
                   "overrides": {}, "wall_s": 1.0 + i + seed / 10}
            (path / "summary.json").write_text(json.dumps({"completed_steps": steps, "max_steps": steps,
                                                           "testbed": rec}, indent=1) + "\n")
    summarize(root)
    return root
