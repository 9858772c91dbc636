"""Band operator vs a plain 50-iteration bisection: speed and accuracy, side by side in one run.

    python benchmarks/band_speed.py                       # 2^20 float32 tokens, every divergence
    python benchmarks/band_speed.py --n-tokens 65536 --divergences kl tv --n-ref 64

The baseline is the algorithm the official BandPO implementation describes (written here from that
description, not copied): per root, bisection on the bracket [1, 1/p] (upper) or [0, 1] (lower) for at
most 50 iterations, in the input dtype (float32), with g_f evaluated on clamped arguments, an early exit
when the widest bracket in the batch is below tol = 1e-6 (one host-device sync per iteration through
``.item()``), saturation tested first, and the p -> 1 override (the limit r*) where 1 - p rounds to 0.
(The official code's p < 1e-6 override, upper = 1/p, is left out: it is a post-processing choice, not part
of the solver, and would make the baseline's error look worse than its bisection is.)

Tokens are shaped like an LLM's sampled-token log-probs: most near 0, a long tail (seeded).
Accuracy is measured against the 60-digit mpmath reference of tests/reference/make_band_table.py on a
subsample that always includes the extremes; the error is the relative error of the ratio where the
reference ratio is a normal float32 (elsewhere the float32 answer is 0 or inf for both).

Per divergence, side by side in one run, each against the same 50-step bisection (fixed delta):
* "fixed": band with one Python-number delta on every call;
* "schedule": band with a new Python delta on every call (0.05·(1 + k·1e-3), k = call number);
* "tensor": band with a per-token delta tensor (float32, 0.05 everywhere);
* "first call": the wall time of the very first band call in the process for that divergence (it builds the
  divergence's start table and, float32 with a Python delta, the per-delta bits or kink table), next to the
  bisection's time;
* "compiled": torch.compile(band) with a fixed delta (compile time excluded).
The timings are the best of ``--repeats`` interleaved rounds (band, schedule, tensor, bisection in turn), so a
load spike on a shared machine hits all of them alike. With glibc, the process first tells the allocator to keep
freed memory (``mallopt``: no trimming, no fresh ``mmap`` per large buffer; ``--default-malloc`` turns this off):
by default the bisection's 4-8 MB temporaries are returned to the system and page-faulted back on some calls and
not on others (measured: 0 to 470 000 minor faults per call, its speed 0.4-2.7 M tokens/s from one run to the next),
which moved every ratio by up to 2x. Kept memory makes the baseline as fast as it gets (the conservative
comparison) and the ratios repeatable; both sides run under the same setting.

Writes a JSON summary (``--out``, default benchmarks/results/band_speed.json) that the solver-speed figure reads.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import bandpo  # noqa: E402

# p -> 1 limits of the lower bound used by the baseline's override (as in the official description)
R_STAR = {"kl": lambda d: math.exp(-d), "tv": lambda d: max(1 - d, 0.0), "chi2": lambda d: 1.0}


def llm_like_logp(n: int, seed: int = 0) -> torch.Tensor:
    """Sampled-token log-probs: 70% confident (p ≈ 1), 25% moderate, 5% deep tail down to p = e^-20."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    confident = -torch.empty(n).exponential_(50.0, generator=g)  # mean 0.02
    moderate = -torch.empty(n).exponential_(1.0, generator=g)
    tail = -3 - 17 * torch.rand(n, generator=g)
    x = torch.where(u < 0.70, confident, torch.where(u < 0.95, moderate, tail))
    return x.to(torch.float32)


def bisection_band(old_logp: torch.Tensor, delta: float, divergence: str, max_iter: int = 50, tol: float = 1e-6):
    """The baseline: dtype-preserving bisection with a host sync per iteration."""
    f = bandpo.get_divergence(divergence).f
    p = torch.exp(torch.clamp(old_logp, -700.0, 0.0))
    one_m_p = torch.clamp(1 - p, min=1e-12)

    def g(r):
        comp = torch.clamp((1 - r * p) / one_m_p, min=1e-12)
        return p * f(torch.clamp(r, min=1e-12)) + one_m_p * f(comp)

    inv_p = 1 / torch.clamp(p, min=1e-12)
    sat_up = g(inv_p) <= delta
    sat_lo = g(torch.zeros_like(p)) <= delta
    lo, hi = torch.ones_like(p), inv_p.clone()
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        below = g(mid) < delta
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        if float((hi - lo).max().item()) <= tol:
            break
    upper = torch.where(sat_up, inv_p, 0.5 * (lo + hi))
    lo, hi = torch.zeros_like(p), torch.ones_like(p)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        above = g(mid) > delta
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
        if float((hi - lo).max().item()) <= tol:
            break
    lower = torch.where(sat_lo, torch.zeros_like(p), 0.5 * (lo + hi))
    r_star = R_STAR.get(divergence)
    if r_star is not None:  # where 1 - p rounds to 0 in float32 the bracket is meaningless: use the limit
        near_one = p > 1 - 1e-6
        upper = torch.where(near_one, torch.ones_like(p), upper)
        lower = torch.where(near_one, torch.full_like(p, r_star(delta)), lower)
    return lower, upper


def keep_freed_memory() -> bool:
    """glibc only: never trim the heap, never serve a buffer by its own mmap (True if it took effect)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_interleaved(fns: dict, repeats: int) -> dict:
    """Best wall time of each function over ``repeats`` rounds that call every function in turn."""
    for fn in fns.values():
        fn()  # warm-up
    best = {k: math.inf for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def reference(name: str, logp: torch.Tensor, delta: float):
    import make_band_table as ref  # mpmath, 60 digits

    lo, up = [], []
    for x in logp.tolist():
        a, b = ref.bounds(name, x, delta)
        lo.append(0.0 if a is None else float(ref.mp.exp(a)) if a > -745 else 0.0)
        up.append(float(ref.mp.exp(b)) if b < 709 else math.inf)
    return torch.tensor(lo, dtype=torch.float64), torch.tensor(up, dtype=torch.float64)


def max_rel_err(got: torch.Tensor, exp: torch.Tensor) -> float:
    tiny = torch.finfo(torch.float32).tiny
    big = torch.finfo(torch.float32).max
    ok = (exp >= tiny) & (exp <= big)
    return float(((got.double() - exp).abs() / exp)[ok].max())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-tokens", type=int, default=2**20)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--divergences", nargs="*", default=None, help="default: every registered divergence")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (best of)")
    ap.add_argument("--n-ref", type=int, default=160, help="tokens checked against the mpmath reference")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CI has 2 cores)")
    ap.add_argument("--compile", nargs="*", default=["kl", "tv", "chi2"],
                    help="divergences also timed under torch.compile (compile time excluded); none: skip")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (freed memory returned to the system; noisier ratios)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "band_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else keep_freed_memory()

    logp = llm_like_logp(args.n_tokens)
    g = torch.Generator().manual_seed(1)
    sub = logp[torch.randperm(args.n_tokens, generator=g)[: max(args.n_ref - 4, 0)]]
    sub = torch.cat([sub, torch.tensor([logp.min(), logp.max(), math.log(0.5), math.log(1e-3)])]).to(torch.float32)

    names = args.divergences or bandpo.list_divergences()
    rows = []
    head = (f"{'divergence':<12} {'path':<12} {'bisect tok/s':>12} {'fixed':>7} {'schedule':>9} {'tensor':>7} "
            f"{'compiled':>9} {'first call':>11} {'band err':>9} {'sched err':>9} {'tensor err':>10} {'bisect err':>10}")
    allocator = "glibc, freed memory kept (mallopt)" if kept else "default"
    print(f"{args.n_tokens} float32 tokens, delta={args.delta}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, allocator: {allocator}")
    print(head)
    print("-" * len(head))
    delta_t = torch.full_like(logp, args.delta)
    for name in names:
        div = bandpo.get_divergence(name)
        t0 = time.perf_counter()
        bandpo.band(logp, args.delta, name, validate=False)  # the first call in this process: builds the table
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        bisection_band(logp, args.delta, name)
        t_first_bis = time.perf_counter() - t0
        step = [0]

        def schedule():
            step[0] += 1
            return bandpo.band(logp, args.delta * (1 + step[0] * 1e-3), name, validate=False)

        t = time_interleaved({
            "fixed": lambda: bandpo.band(logp, args.delta, name, validate=False),
            "schedule": schedule,
            "tensor": lambda: bandpo.band(logp, delta_t, name, validate=False),
            "bisection": lambda: bisection_band(logp, args.delta, name),
        }, args.repeats)
        t_band, t_bis = t["fixed"], t["bisection"]
        ref_lo, ref_up = reference(name, sub.double(), args.delta)
        b_lo, b_up = bandpo.band(sub, args.delta, name)
        s_lo, s_up = bisection_band(sub, args.delta, name)
        band_err = max(max_rel_err(b_lo, ref_lo), max_rel_err(b_up, ref_up))
        bis_err = max(max_rel_err(s_lo, ref_lo), max_rel_err(s_up, ref_up))
        # the schedule's and the tensor delta's accuracy: a delta the reference has not seen, per call kind
        d_s = args.delta * (1 + 7e-3)
        r_lo, r_up = reference(name, sub.double(), d_s)
        q_lo, q_up = bandpo.band(sub, d_s, name)
        sched_err = max(max_rel_err(q_lo, r_lo), max_rel_err(q_up, r_up))
        t_lo, t_up = bandpo.band(sub, torch.full_like(sub, args.delta), name)
        exact32 = float(torch.tensor(args.delta, dtype=torch.float32))  # the float32 tensor's delta
        e_lo, e_up = reference(name, sub.double(), exact32)
        tensor_err = max(max_rel_err(t_lo, e_lo), max_rel_err(t_up, e_up))
        # float32 tokens with a Python delta on the eager CPU: closed forms; the per-delta bits table, for the
        # saturating divergences one with rows refined next to the kinks (the kink table only for denormal or
        # invalid inputs). A tensor delta: start table + one Halley step.
        if div.log_band is not None:
            path = "closed form"
        elif math.isinf(div.f_at_0):
            path = "bits table"
        else:
            path = "bits table, kink rows"
        t_comp = math.nan
        if name in (args.compile or []):
            compiled = torch.compile(lambda x: bandpo.band(x, args.delta, name, validate=False), dynamic=False)
            compiled(logp)  # compile once (excluded from the timing)
            t_comp = time_it(lambda: compiled(logp), args.repeats)
        row = {
            "divergence": name,
            "path": path,
            "band_tokens_per_s": args.n_tokens / t_band,
            "bisection_tokens_per_s": args.n_tokens / t_bis,
            "speedup": t_bis / t_band,
            "schedule_tokens_per_s": args.n_tokens / t["schedule"],
            "speedup_schedule": t_bis / t["schedule"],
            "tensor_delta_tokens_per_s": args.n_tokens / t["tensor"],
            "speedup_tensor_delta": t_bis / t["tensor"],
            "first_call_s": t_first,
            "bisection_first_call_s": t_first_bis,
            "band_compiled_tokens_per_s": args.n_tokens / t_comp,
            "speedup_compiled": t_bis / t_comp,
            "band_max_rel_err": band_err,
            "schedule_max_rel_err": sched_err,
            "tensor_delta_max_rel_err": tensor_err,
            "bisection_max_rel_err": bis_err,
        }
        rows.append(row)
        comp = f"{row['speedup_compiled']:>8.1f}x" if math.isfinite(t_comp) else f"{'-':>9}"
        print(
            f"{name:<12} {path:<12} {row['bisection_tokens_per_s']:>12.3g} {row['speedup']:>6.1f}x "
            f"{row['speedup_schedule']:>8.1f}x {row['speedup_tensor_delta']:>6.1f}x {comp} "
            f"{t_first:>5.2f}/{t_first_bis:<5.2f} {band_err:>9.1e} {sched_err:>9.1e} {tensor_err:>10.1e} {bis_err:>10.1e}",
            flush=True,
        )
    result = {
        "n_tokens": args.n_tokens,
        "dtype": "float32",
        "delta": args.delta,
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "timing": f"best of {args.repeats} interleaved rounds; first_call_s: band's first call in the process "
                  "(builds the start table and the per-delta table) vs the bisection's first call",
        "torch": torch.__version__,
        "allocator": allocator,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
