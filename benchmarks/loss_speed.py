"""Cost of ``policy_loss`` (with every metric) and of ``band`` against a bare clipped surrogate, side by side.

    python benchmarks/loss_speed.py                          # 2^18 and 2^24 float32 tokens, 2 threads
    python benchmarks/loss_speed.py --shifts 18 --repeats 5  # quicker

For each size (2^shift tokens, B = 256 sequences of 2^shift / 256 tokens, LLM-like old log-probs, seeded):

* ``bare``: forward + backward of the bare clipped surrogate, ratio = exp(logp - old_logp),
  max(-A·r, -A·clip(r, 0.8, 1.2)), masked token mean (no metrics, no band);
* ``policy_loss(band_kl)``: forward + backward of ``bandpo.policy_loss`` with its defaults (BandPO-KL: δ = 0.05,
  cap 10, dual clip 10, seq-mean-token-mean) and every metric of docs/metrics.md, ``validate=False`` as in the
  trainer's hot loop; ``policy_loss(clip)`` the same with GRPO's fixed bounds (the loss without a band);
* ``band(<divergence>)``: ``bandpo.band(old_logp, 0.05, divergence, validate=False)`` (float32, Python δ: the
  fixed-δ path), for every built-in divergence.

The variants run interleaved (round robin after a warm-up), and the table gives the fastest wall time of
``--repeats`` rounds and its ratio to ``bare`` (on a shared machine the minimum is the least disturbed
estimate, and interleaving hits all variants alike); process CPU time (all threads) is recorded too.

Peak memory: each of bare, policy_loss(band_kl) and policy_loss(clip) runs once more in a fresh process, after
one warm-up call, and the memory is the resident-set high-water mark of that call above the resident set before
it (Linux: ``/proc/self/clear_refs`` resets the mark, ``VmHWM`` in ``/proc/self/status`` reads it). That is what
the process took from the system, torch's allocations included (tracemalloc does not see them); memory glibc
kept from the warm-up call is reused and not counted again.

Writes ``--out`` (default benchmarks/results/loss_speed.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bandpo  # noqa: E402

MEMORY_VARIANTS = ("bare", "policy_loss(band_kl)", "policy_loss(clip)")


def make_batch(B: int, T: int, seed: int = 0):
    """float32 (logp, old_logp, adv, mask): old_logp mostly near 0 with a long tail, ratios around 1 (seeded)."""
    g = torch.Generator().manual_seed(seed)
    old = -(torch.empty(B, T).exponential_(1.5, generator=g) ** 2)  # heavy tail towards low p
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


def variants(logp, old, adv, mask, with_band: bool = True) -> dict:
    def fwd_bwd(loss_of):
        def run():
            x = logp.clone().requires_grad_(True)
            loss_of(x).backward()
        return run

    out = {
        "bare": fwd_bwd(lambda x: bare(x, old, adv, mask)),
        "policy_loss(band_kl)": fwd_bwd(lambda x: bandpo.policy_loss(x, old, adv, mask, validate=False)[0]),
        "policy_loss(clip)": fwd_bwd(lambda x: bandpo.policy_loss(x, old, adv, mask, method="clip", validate=False)[0]),
    }
    if with_band:
        for name in bandpo.list_divergences():
            out[f"band({name})"] = (lambda name: lambda: bandpo.band(old, 0.05, name, validate=False))(name)
    return out


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_of(variant: str, shift: int, threads: int) -> dict:
    """In this (fresh) process: the RSS high-water mark of one call of ``variant`` above the RSS before it."""
    torch.set_num_threads(threads)
    batch = make_batch(256, 2**shift // 256)
    fn = variants(*batch, with_band=False)[variant]
    fn()  # warm-up: tables, the band's thread pool, torch's lazy initialisation
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return {"peak_above_start_mb": (_rss_kib("VmHWM") - before) / 1024, "rss_before_mb": before / 1024}


def time_variants(shift: int, threads: int, repeats: int) -> dict:
    batch = make_batch(256, 2**shift // 256)
    runs = variants(*batch)
    for fn in runs.values():  # warm-up
        fn()
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    return {
        "tokens": 2**shift,
        "min_wall_s": best,
        "min_cpu_s": best_cpu,
        "ratio_to_bare": {k: best[k] / best["bare"] for k in runs},
        "cpu_ratio_to_bare": {k: best_cpu[k] / best_cpu["bare"] for k in runs},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shifts", type=int, nargs="+", default=[18, 24], help="sizes: 2^shift tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds at 2^18 (3 above 2^20)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one memory measurement, in a fresh process
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loss_speed.json")
    args = ap.parse_args(argv)
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, args.shifts[0], args.threads)))
        return {}
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "dtype": "float32", "sizes": {},
              "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
              "note": ("interleaved rounds in one process, best of N (wall and process CPU time); peak memory: "
                       "RSS high-water mark of one call above the RSS before it, in a fresh process (VmHWM)")}
    for shift in args.shifts:
        repeats = args.repeats if shift <= 20 else min(args.repeats, 3)
        res = time_variants(shift, args.threads, repeats)
        res["repeats"] = repeats
        if not args.no_memory:
            res["peak_memory"] = {}
            for v in MEMORY_VARIANTS:
                cmd = [sys.executable, __file__, "--memory-of", v, "--shifts", str(shift), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res["peak_memory"][v] = json.loads(out.stdout.strip().splitlines()[-1])
        result["sizes"][f"2^{shift}"] = res
        print(f"2^{shift} tokens ({repeats} interleaved rounds, {args.threads} threads):")
        for k in res["min_wall_s"]:
            mem = res.get("peak_memory", {}).get(k)
            mem_s = f", peak +{mem['peak_above_start_mb']:.0f} MB" if mem else ""
            print(f"  {k:>22}: {res['min_wall_s'][k] * 1e3:9.1f} ms wall ({res['ratio_to_bare'][k]:5.2f}x bare), "
                  f"{res['min_cpu_s'][k] * 1e3:9.1f} ms cpu ({res['cpu_ratio_to_bare'][k]:5.2f}x){mem_s}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
