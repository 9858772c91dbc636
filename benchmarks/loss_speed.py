"""Cost of ``policy_loss`` (with its metrics) against a bare clipped surrogate, side by side in one run.

    python benchmarks/loss_speed.py                    # B=256, T=1024 (2^18 tokens), float32, CPU, 2 threads
    python benchmarks/loss_speed.py --batch 64 --length 512 --repeats 5

Forward + backward of a token-mean loss on the same tokens (LLM-like old log-probs, seeded), three variants:

* (a) ``bare``: ratio = exp(logp - old_logp), max(-A·r, -A·clip(r, 0.8, 1.2)), masked token mean (no metrics);
* (b) ``bare+band``: (a) with the bounds from ``bandpo.band(old_logp, 0.05, "kl")`` capped at 10;
* (c) ``policy_loss``: ``bandpo.policy_loss(method="band_kl")`` with every metric of docs/metrics.md
  (``validate=False`` as in the trainer's hot loop; ``validate=True`` adds one host sync and a few passes, also
  timed).

The variants run interleaved (round robin, after a warm-up), so a busy machine slows them alike; the table gives
the fastest and the median seconds per call, and the ratios (c)/(b) and (c)/(a) of the fastest (on a shared
machine the minimum is the least disturbed estimate of a variant's own cost). Writes ``--out`` (default
benchmarks/results/loss_speed.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bandpo  # noqa: E402


def make_batch(B: int, T: int, seed: int = 0):
    """float32 (logp, old_logp, adv, mask): old_logp mostly near 0 with a long tail, ratios around 1."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.distributions.Exponential(torch.tensor(1.5)).sample((B, T)) ** 2  # heavy tail towards low p
    old = old.clamp(min=-30.0)
    logp = (old + 0.2 * torch.randn(B, T, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous()
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return logp, old, adv, mask


def bare(logp, old, adv, mask, lower=0.8, upper=1.2):
    ratio = torch.exp(logp - old)
    per_token = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lower, upper))
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum()


def bare_band(logp, old, adv, mask):
    with torch.no_grad():
        lower, upper = bandpo.band(old, 0.05, "kl", validate=False)
        upper = upper.clamp(max=10.0)
    return bare(logp, old, adv, mask, lower, upper)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loss_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logp, old, adv, mask = make_batch(args.batch, args.length)

    variants = {
        "bare": lambda x: bare(x, old, adv, mask),
        "bare+band": lambda x: bare_band(x, old, adv, mask),
        "policy_loss": lambda x: bandpo.policy_loss(x, old, adv, mask, method="band_kl", agg="token-mean",
                                                    validate=False)[0],
        "policy_loss(validate=True)": lambda x: bandpo.policy_loss(x, old, adv, mask, method="band_kl",
                                                                   agg="token-mean")[0],
    }

    def once(fn) -> float:
        x = logp.clone().requires_grad_(True)
        t0 = time.perf_counter()
        fn(x).backward()
        return time.perf_counter() - t0

    for fn in variants.values():  # warm-up (the band's table is built on the second call)
        for _ in range(3):
            once(fn)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            times[k].append(once(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    result = {
        "tokens": args.batch * args.length, "shape": [args.batch, args.length], "dtype": "float32",
        "threads": args.threads, "repeats": args.repeats, "min_s": best, "median_s": med,
        "ratio_policy_loss_over_bare_band": best["policy_loss"] / best["bare+band"],
        "ratio_policy_loss_over_bare": best["policy_loss"] / best["bare"],
        "ratio_validated_over_bare_band": best["policy_loss(validate=True)"] / best["bare+band"],
        "median_ratio_policy_loss_over_bare_band": med["policy_loss"] / med["bare+band"],
        "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
        "note": "interleaved runs on a shared, loaded 2-core CPU; ratios of the fastest run; compare ratios, not seconds",
    }
    for k in variants:
        print(f"{k:>28}: fastest {best[k] * 1e3:8.1f} ms, median {med[k] * 1e3:8.1f} ms")
    print(f"(c)/(b) policy_loss / bare+band = {result['ratio_policy_loss_over_bare_band']:.2f}x; "
          f"(c)/(a) policy_loss / bare = {result['ratio_policy_loss_over_bare']:.2f}x; "
          f"validated / bare+band = {result['ratio_validated_over_bare_band']:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
