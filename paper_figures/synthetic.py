"""Synthetic training metrics in the reproduction runner's layout, for tests when the real runs are missing.

    write_synthetic_runs(root)   # root/<method>-seed<k>/metrics.csv, Lightning-CSVLogger-shaped

Values are made up but internally consistent the way the trainer's are: per step, the bucket token counts add up
to ``num_tokens`` and ``clip_ratio/high_mean`` is the token-weighted mean of the per-bucket
``bucket/<b>/clip_high_mean`` (the identity docs/metrics.md states); the region fractions are 1.5 times the high
ones, bucket by bucket and overall. Every column of a step is
``method_index + seed/10 + step/1000`` where no such identity is needed, so a reader's output can be checked
exactly. ``split_rows=True`` writes each step as two rows (rollout columns, then loss columns), as a logger
called twice per step would.
"""

from __future__ import annotations

from pathlib import Path

BUCKETS = ("p0-0.01", "p0.01-0.1", "p0.1-0.5", "p0.5-1")
METHODS = ("clip", "clip_higher", "dcpo", "band_kl")
ROLLOUT_COLUMNS = ("reward/mean", "accuracy", "entropy")
BUCKET_TOKENS = (10, 40, 150, 800)
"""Tokens per bucket and step (sum 1000 = num_tokens)."""


def value(method_index: int, seed: int, step: int) -> float:
    """The value written in every plain column."""
    return method_index + seed / 10 + step / 1000


def write_synthetic_runs(root, methods=METHODS, seeds=(0, 1), steps: int = 30, split_rows: bool = False) -> Path:
    """Write ``root/<method>-seed<k>/metrics.csv`` for every method and seed; returns ``root``."""
    root = Path(root)
    loss_cols = ["num_tokens", "clip_ratio/high_mean", "clip_ratio/region_mean"] + [f"bucket/{b}/{k}" for b in BUCKETS
                                                         for k in ("tokens", "clip_high_mean", "clip_region_mean")]
    cols = list(ROLLOUT_COLUMNS) + loss_cols
    for i, method in enumerate(methods):
        for seed in seeds:
            d = root / f"{method}-seed{seed}"
            d.mkdir(parents=True, exist_ok=True)
            lines = ["step,epoch," + ",".join(cols)]
            for t in range(steps):
                v = value(i, seed, t)
                rollout = [f"{v:.6f}"] * len(ROLLOUT_COLUMNS)
                highs = [0.01 * (len(methods) - i) * (t % 3 + 1) / (j + 1) for j in range(len(BUCKETS))]
                n = sum(BUCKET_TOKENS)
                high = sum(h * k for h, k in zip(highs, BUCKET_TOKENS)) / n
                loss = [str(n), repr(high), repr(1.5 * high)]
                for h, k in zip(highs, BUCKET_TOKENS):
                    loss += [str(k), repr(h), repr(1.5 * h)]
                if split_rows:
                    lines.append(f"{t},0," + ",".join(rollout + [""] * len(loss)))
                    lines.append(f"{t},0," + ",".join([""] * len(rollout) + loss))
                else:
                    lines.append(f"{t},0," + ",".join(rollout + loss))
            (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    return root
