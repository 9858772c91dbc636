"""One-shot device check of bandpo: accuracy, sync-freedom, torch.compile, speed and training on a GPU.

    PYTHONPATH=. python3 benchmarks/device_check.py --out $OUT              # on the GPU machine (~2-4 min)
    .venv/bin/python benchmarks/device_check.py --device cpu --quick --threads 1 --out /tmp/devcheck  # CPU rehearsal

Every check prints one ``[PASS]``/``[FAIL]``/``[SKIP]`` line (``[INFO]`` lines carry numbers only), each section
runs inside its own try/except (a crash is one FAIL, the other sections still run), ``device_check.json`` in
``--out`` is rewritten after every check (so a run killed by a timeout still leaves its numbers; each check has
its elapsed time ``t_s``), and the exit status is 1 if any check failed. Sections (run in the order 1 2 3 4 6 7 5, so that the elastic speed section
gets whatever is left of ``--budget-s``; ``--sections`` picks a subset):

1. Environment: torch/CUDA versions, device, bandpo git commit and a hash of each bandpo source file (another
   version of band.py may be on the machine than the commit says; the hashes tell which ran).
2. Accuracy on the device, for every registered divergence and delta in (1e-3, 0.05, 0.5) (``--deltas``), on a
   grid of old_logp from log(1e-300) to 0 (p = 1 exactly, p = 1 - 1e-300 ... 1 - 1e-1, 0.01 ... 0.99, p -> 0):
   * float64 ``log_band`` on the device against the same call on the CPU. Error per element:
     |Δ log r| / max(1, |log r|), i.e. the relative error of the ratio r where |log r| <= 1 and the relative
     error of log r where r itself may under/overflow. PASS: max <= 1e-12, the same -inf (lower bound
     saturated at 0) pattern, no NaN.
   * float32 and bfloat16 ``band`` on the device against the exact answer: exp of the CPU float64 solver's
     ``log_band`` at the *rounded* input, rounded to the dtype. Error in ulps = distance in representable
     numbers (bit patterns), on the points where that answer is a normal number of the dtype; where it rounds
     to 0 or inf the device must give exactly 0 or inf. PASS: float32 <= 2 ulps (band.py documents "one or
     two ulps"), bfloat16 <= 1 ulp.
   Each (divergence, delta, dtype) is called twice on the device; the two results must be bitwise equal (``band``
   is a pure function: the first call, which builds the tables, gives the same bits as later ones).
3. No host-device sync (CUDA only): under ``torch.cuda.set_sync_debug_mode("error")``, ``band(x, 0.05, div,
   validate=False)`` for every divergence (float32 and float64, tables already built) and ``policy_loss(...,
   validate=False)`` + backward for methods clip, dcpo, band_kl (every aggregation). On CPU the calls run without
   the sync check (SKIP).
4. torch.compile on the device: ``torch.compile(lambda x: band(x, 0.05, d, validate=False))`` for kl, tv, chi2
   (each with a code object of its own, see ``_compile_band``) on a (4096,) float32 tensor; compile time, then
   calls 2 and 3 under ``torch.compiler.set_stance("fail_on_recompile")``. PASS: compiled within 2 ulps of eager
   with the same 0/inf pattern and no recompile on the 3rd call (a recompile on the 2nd call is reported, not
   failed: band.py's ``_eager_only`` wrapper fails one guard after its first compiled call).
5. Speed on the device: 2^20 and 2^24 float32 LLM-like log-probs (``llm_like_logp`` and ``bisection_band``
   from benchmarks/band_speed.py), best of 3 after two warm-up calls (CUDA events), tokens/s of eager band,
   the 50-step bisection and their ratio for every divergence, and compiled band for kl/tv/chi2. Rows that
   would overrun ``--budget-s`` are skipped (SKIP). PASS: every timed output finite where it should be.
6. Tiny LM training: ``python -m bandpo.training --preset tiny-cpu`` for 20 RL steps (fp32) and 10 steps
   (``--precision bf16-mixed``) on the device (a shortened warm-start, which runs on the CPU), 90 s timeout each.
   PASS: exit 0, one metrics.csv row per step with finite loss/total, loss/policy and reward/mean, and
   (CUDA) Lightning reporting the GPU used. metrics.csv is copied to --out.
7. ``python -m pytest -q tests/test_losses.py -k cuda`` (on CUDA the tests must pass, not skip).

Only public torch APIs that exist in torch 2.11 and 2.13 are used (torch.cuda.Event, set_sync_debug_mode,
torch.compile, torch.compiler.set_stance).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bandpo  # noqa: E402

DELTAS = (1e-3, 0.05, 0.5)
TOL_F64 = 1e-12
TOL_ULPS = {torch.float32: 2, torch.bfloat16: 1}
TOL_COMPILE_ULPS = 2
COMPILE_DIVS = ("kl", "tv", "chi2")
POLICY_METHODS = ("clip", "dcpo", "band_kl")
AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
RUN_ORDER = (1, 2, 3, 4, 6, 7, 5)


def _load_band_speed():
    """benchmarks/band_speed.py as a module (benchmarks/ is not a package); its main() is not run."""
    spec = importlib.util.spec_from_file_location("band_speed", ROOT / "benchmarks" / "band_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------


def _jsonable(x):
    """Strict JSON: non-finite floats become strings, tensors and tuples become lists/numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    return str(x)


class Report:
    """Collects check lines and numbers; rewrites ``device_check.json`` after every section."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.t0 = time.monotonic()
        self.data = {"meta": meta, "sections": {}, "checks": []}
        self.current = "?"

    def check(self, name: str, status, detail: str = "", **numbers) -> None:
        if isinstance(status, bool):
            status = "PASS" if status else "FAIL"
        t = self.elapsed()
        print(f"[{status}] {self.current}: {name}" + (f" -- {detail}" if detail else "") + f"  (t={t:.0f}s)", flush=True)
        self.data["checks"].append({"section": self.current, "name": name, "status": status, "detail": detail,
                                    "t_s": t, **numbers})
        self.write()  # a run killed by a timeout keeps every check so far

    def info(self, line: str) -> None:
        print(f"[INFO] {self.current}: {line}", flush=True)

    def put(self, key: str, value) -> None:
        """Numbers of the current section (JSON only)."""
        self.data["sections"].setdefault(self.current, {})[key] = value

    def run_section(self, key: str, title: str, fn, *args) -> None:
        self.current = key
        print(f"\n== {key}. {title} ==", flush=True)
        t = time.monotonic()
        try:
            fn(self, *args)
        except Exception as e:  # one crashing section must not hide the others
            traceback.print_exc()
            self.check("section completed", False, f"{type(e).__name__}: {e}".splitlines()[0][:300],
                       traceback=traceback.format_exc()[-3000:])
        self.put("wall_s", time.monotonic() - t)
        self.write()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def write(self) -> None:
        self.data["total_wall_s"] = self.elapsed()
        self.data["counts"] = {s: sum(c["status"] == s for c in self.data["checks"])
                               for s in ("PASS", "FAIL", "SKIP")}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(_jsonable(self.data), indent=1) + "\n")

    def failures(self) -> list:
        return [c for c in self.data["checks"] if c["status"] == "FAIL"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int = 3, warmup: int = 2) -> float:
    """Best of ``repeats`` wall times in seconds after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
        best = min(best, dt)
    return best


def _first_line(e: BaseException) -> str:
    return (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300]


# ----------------------------------------------------------------------------------------------------------
# 1. Environment
# ----------------------------------------------------------------------------------------------------------


def _git(*args: str):
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        return r.stdout.strip() if r.returncode == 0 else None
    except Exception:
        return None


def section_env(rep: Report, device: torch.device, args) -> None:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_bandpo": _git("status", "--porcelain", "--", "bandpo"),
        "bandpo_file_sha256_12": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                                  for p in sorted((ROOT / "bandpo").glob("*.py"))},
        "divergences": bandpo.list_divergences(),
    }
    for pkg in ("lightning", "transformers", "sympy", "mpmath", "hypothesis", "pytest", "triton"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except Exception:
            env[pkg] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_gib=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}")
    else:
        env["device_name"] = f"cpu ({platform.machine()})"
    rep.put("env", env)
    rep.info(f"torch {env['torch']} (CUDA {env['torch_cuda']}), device {env['device_name']}, "
             f"bandpo commit {env['git_commit'] or 'n/a'}"
             + (" (bandpo/ has uncommitted changes)" if env["git_dirty_bandpo"] else ""))
    rep.info("band.py " + env["bandpo_file_sha256_12"].get("band.py", "?") + ", solvers.py "
             + env["bandpo_file_sha256_12"].get("solvers.py", "?") + " (sha256, first 12 hex)")
    rep.check("device usable", device.type == "cpu" or torch.cuda.is_available(), str(device))


# ----------------------------------------------------------------------------------------------------------
# 2. Accuracy
# ----------------------------------------------------------------------------------------------------------


def logp_grid() -> torch.Tensor:
    """float64 old_logp from log(1e-300) to 0: a log-spaced -old_logp (so p -> 1 as closely as 1 - 1e-300 and
    p -> 1e-300), p = 0.01 ... 0.99, p = 1 - 10^-k, and exactly 0 (p = 1)."""
    f64 = torch.float64
    x = torch.logspace(-300, math.log10(-math.log(1e-300)), 600, dtype=f64)
    mid = torch.log(torch.linspace(0.01, 0.99, 99, dtype=f64))
    near_one = torch.log1p(-(10.0 ** -torch.arange(1, 17, dtype=f64)))
    ends = torch.tensor([0.0, math.log(1e-300), math.log(0.5), math.log(1e-3), math.log(1e-6)], dtype=f64)
    return torch.unique(torch.cat([-x, mid, near_one, ends]))


def compare_log(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """float64 log bounds vs reference: |Δ| / max(1, |ref|) on finite values, -inf pattern, NaNs."""
    got = got.detach().cpu()
    nan = int(torch.isnan(got).sum())
    pattern = int(((torch.isneginf(got) != torch.isneginf(ref)) | (torch.isposinf(got) != torch.isposinf(ref))).sum())
    fin = torch.isfinite(got) & torch.isfinite(ref)
    err = torch.zeros_like(ref)
    err[fin] = (got[fin] - ref[fin]).abs() / ref[fin].abs().clamp(min=1.0)
    i = int(err.argmax()) if err.numel() else 0
    return {"max_err": float(err.max()) if err.numel() else 0.0, "argmax": i, "nan": nan, "inf_mismatch": pattern,
            "n": int(fin.sum())}


def compare_ulps(got: torch.Tensor, exact: torch.Tensor) -> dict:
    """Low-precision ratios vs the exact float64 ratios: distance in ulps to the rounded exact value where that
    is a normal number of the dtype; where it rounds to 0 or inf the result must equal it exactly."""
    dtype = got.dtype
    got = got.detach().cpu()
    fi = torch.finfo(dtype)
    ref = exact.to(dtype)
    normal = torch.isfinite(ref) & (ref.abs() >= fi.tiny)
    itype = torch.int32 if dtype == torch.float32 else torch.int16
    dist = (got.view(itype).long() - ref.view(itype).long()).abs()
    dist = torch.where(normal & ~torch.isnan(got), dist, torch.zeros_like(dist))
    # error against the unrounded float64 answer, in ulps of the answer (0.5 = correctly rounded at worst)
    ulp = fi.eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp(min=fi.tiny))))
    raw = torch.where(normal, (got.double() - exact).abs() / ulp, torch.zeros_like(exact))
    edge = (ref == 0) | torch.isinf(ref)
    edge_bad = int((edge & (got != ref)).sum())
    i = int(dist.argmax()) if dist.numel() else 0
    return {"max_ulps": int(dist.max()) if dist.numel() else 0, "max_ulps_vs_unrounded": float(raw.max()),
            "argmax": i, "nan": int(torch.isnan(got).sum()), "edge_mismatch": edge_bad, "n": int(normal.sum())}


def _brief(r: dict) -> str:
    keys = ("max_err", "max_ulps", "nan", "inf_mismatch", "edge_mismatch")
    return "{" + ", ".join(f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in keys if k in r) + "}"


def section_accuracy(rep: Report, device: torch.device, args) -> None:
    old64 = logp_grid()
    rep.info(f"{old64.numel()} old_logp values in [{float(old64.min()):.4g}, 0], deltas {args.deltas}; float64 "
             f"tolerance {TOL_F64:g} on |Δ log r|/max(1, |log r|); ulp tolerances float32 {TOL_ULPS[torch.float32]}, "
             f"bfloat16 {TOL_ULPS[torch.bfloat16]}")
    dtypes = (torch.float32, torch.bfloat16, torch.float64)
    details = []
    for name in bandpo.list_divergences():
        t_div = time.monotonic()
        div = bandpo.get_divergence(name)
        acc = {dt: {"worst": 0.0, "at": None, "problems": []} for dt in dtypes}
        for d in args.deltas:
            for dtype in dtypes:
                x = old64.to(dtype)
                x_dev = x.to(device)
                call = bandpo.log_band if dtype == torch.float64 else bandpo.band
                got = {label: call(x_dev, d, name) for label in ("call#1", "call#2")}
                a = acc[dtype]
                if not all(torch.equal(g1, g2) for g1, g2 in zip(got["call#1"], got["call#2"])):
                    a["problems"].append(f"delta={d}: call#1 and call#2 differ (band must be pure)")
                if dtype == torch.float64:
                    cpu = bandpo.log_band(old64, d, name)
                else:
                    exact = [torch.exp(t) for t in bandpo.log_band(x.double(), d, name)]
                for label, out in got.items():
                    if dtype == torch.float64:
                        res = [compare_log(g, r) for g, r in zip(out, cpu)]
                        key = "max_err"
                        bad = any(r["nan"] or r["inf_mismatch"] for r in res) or not max(r[key] for r in res) <= TOL_F64
                    else:
                        if any(g.dtype != dtype or g.device != x_dev.device for g in out):
                            a["problems"].append(f"{label}: output dtype/device {out[0].dtype}/{out[0].device}")
                        res = [compare_ulps(g, e) for g, e in zip(out, exact)]
                        key = "max_ulps"
                        bad = any(r["nan"] or r["edge_mismatch"] for r in res) or max(r[key] for r in res) > TOL_ULPS[dtype]
                    err = max(r[key] for r in res)
                    side = 0 if res[0][key] >= res[1][key] else 1
                    at = {"delta": d, "variant": label, "bound": ("lower", "upper")[side],
                          "old_logp": float(x[res[side]["argmax"]].double())}
                    details.append({"divergence": name, "dtype": str(dtype).replace("torch.", ""), **at,
                                    "lower": res[0], "upper": res[1]})
                    if bad:
                        a["problems"].append(f"delta={d} {label}: lower {_brief(res[0])}, upper {_brief(res[1])}")
                    if err >= a["worst"]:
                        a["worst"], a["at"] = err, at
        kind = "closed form" if div.closed_form else "start table + Halley"
        wall = time.monotonic() - t_div
        for dtype in dtypes:
            a = acc[dtype]
            dname = str(dtype).replace("torch.", "")
            unit = "rel" if dtype == torch.float64 else "ulps"
            at = a["at"]
            where = (f"max {a['worst']:.3g} {unit} at delta={at['delta']} {at['variant']} "
                     f"{at['bound']} old_logp={at['old_logp']:.6g}" if a["worst"] else f"max 0 {unit}: identical")
            rep.check(f"{name:<11} {dname:<8} [{kind}]", not a["problems"],
                      where + ("; " + " | ".join(a["problems"][:3]) if a["problems"] else ""),
                      divergence=name, dtype=dname, worst=a["worst"], worst_at=at, problems=a["problems"])
        rep.info(f"{name}: {wall:.1f} s for {len(args.deltas)} deltas x 3 dtypes (includes table builds)")
    rep.put("details", details)


# ----------------------------------------------------------------------------------------------------------
# 3. No host-device sync
# ----------------------------------------------------------------------------------------------------------


def _loss_batch(device: torch.device, dtype: torch.dtype, B: int = 8, T: int = 6):
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    logp = (old + 0.7 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    mask[1] = False  # an empty row
    return [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in (logp, old, adv, mask)]


class _SyncErrors:
    """``torch.cuda.set_sync_debug_mode("error")`` inside the block (CUDA only), always restored."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"

    def __enter__(self):
        if self.on:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if self.on:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        return False


def section_sync(rep: Report, device: torch.device, args) -> None:
    cuda = device.type == "cuda"
    skip_note = "" if cuda else "needs CUDA (the calls ran on CPU without the sync check)"
    band_speed = _load_band_speed()
    x32 = band_speed.llm_like_logp(4096, seed=2).to(device)
    for name in bandpo.list_divergences():
        try:
            for x in (x32, x32.double()):
                for _ in range(3):  # auto: solver, then the table is built, then cached
                    bandpo.band(x, 0.05, name, validate=False)
            _sync(device)
            with _SyncErrors(device):
                for x in (x32, x32.double()):
                    lo, up = bandpo.band(x, 0.05, name, validate=False)
            ok = bool(torch.isfinite(lo).all()) and bool((up >= 1).all())
            rep.check(f"band[{name}] float32+float64 validate=False", ok if cuda else "SKIP",
                      skip_note if ok else "non-finite lower or upper < 1")
        except Exception as e:
            rep.check(f"band[{name}] float32+float64 validate=False", False, _first_line(e))
    for method in POLICY_METHODS:
        label = f"policy_loss[{method}] + backward, every agg, float32+float64, validate=False"
        try:
            for dtype in (torch.float32, torch.float64):
                logp, old, adv, mask = _loss_batch(device, dtype)
                x = logp.clone().requires_grad_(True)
                kw = dict(method=method, dual_clip=10.0, max_ratio=10.0, validate=False)
                for _ in range(2):  # warm-up (the first call builds the start table)
                    bandpo.policy_loss(x, old, adv, mask, **kw)
                _sync(device)
                with _SyncErrors(device):
                    for agg in AGGS:
                        loss, metrics = bandpo.policy_loss(x, old, adv, mask, agg=agg, **kw)
                        loss.backward()
                ok = bool(torch.isfinite(x.grad).all()) and all(bool(torch.isfinite(v)) for v in metrics.values())
                if not ok:
                    break
            rep.check(label, ok if cuda else "SKIP", skip_note if ok else f"non-finite gradient or metric ({dtype})")
        except Exception as e:
            rep.check(label, False, _first_line(e))


# ----------------------------------------------------------------------------------------------------------
# 4. torch.compile
# ----------------------------------------------------------------------------------------------------------


def _f32_ulps(a: torch.Tensor, b: torch.Tensor) -> "tuple[int, int]":
    """(max ulp distance where both are finite and non-zero, count of elements whose 0/inf/NaN status differs)."""
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    both = torch.isfinite(a) & torch.isfinite(b) & (a != 0) & (b != 0)
    dist = (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()
    status = lambda t: torch.stack([t == 0, torch.isinf(t), torch.isnan(t)])  # noqa: E731
    return int(dist[both].max()) if both.any() else 0, int((status(a) != status(b)).any(0).sum())


def _compile_band(name: str, delta: float = 0.05):
    """``torch.compile(lambda x: band(x, delta, name, validate=False))`` with a code object of its own.

    Dynamo keeps its cache, and its recompile limit (8), per code object: one lambda compiled for 3
    divergences x 3 shapes would reach it and silently run the 9th case eagerly."""

    def band_fixed(x):
        return bandpo.band(x, delta, name, validate=False)

    band_fixed.__code__ = band_fixed.__code__.replace(co_name=f"band_{name}")
    return torch.compile(band_fixed, dynamic=False)


def section_compile(rep: Report, device: torch.device, args, compiled: dict) -> None:
    band_speed = _load_band_speed()
    x = band_speed.llm_like_logp(4096, seed=3)
    x[:6] = torch.tensor([0.0, -1e-30, -1e-7, math.log(0.5), -20.0, -690.0])
    x = x.to(device)
    has_stance = hasattr(torch.compiler, "set_stance")
    for name in args.compile_divs:
        try:
            for _ in range(3):  # eager warm-up: kl's table is in use from here on, as it will be when compiling
                eager = bandpo.band(x, 0.05, name, validate=False)
            fn = _compile_band(name)
            t = time.perf_counter()
            out = fn(x)
            _sync(device)
            compile_s = time.perf_counter() - t
            # Calls 2 and 3 under fail_on_recompile: a recompile on the 2nd call is reported (bandpo's
            # _eager_only wrapper sets a closure cell on its first compiled call, which fails a guard once);
            # one on the 3rd call, with nothing changed, is a failure (a recompile every call).
            recompiled = [None, None]
            outs = []
            for k in range(2):
                if not has_stance:
                    outs.append(fn(x))
                    continue
                try:
                    with torch.compiler.set_stance("fail_on_recompile"):
                        outs.append(fn(x))
                except Exception as e:
                    recompiled[k] = _first_line(e)
                    outs.append(fn(x))
            out2 = outs[-1]
            steady_s = best_time(lambda: fn(x), device, repeats=3, warmup=1)
            compiled[name] = fn
            ulps, status_diff = zip(*(_f32_ulps(o, e) for o, e in zip(out2, eager)))
            same = all(torch.equal(a, b) for o in outs for a, b in zip(out, o))
            ok = max(ulps) <= TOL_COMPILE_ULPS and sum(status_diff) == 0 and recompiled[1] is None and same
            detail = (f"compile {compile_s:.1f} s, then {steady_s * 1e6:.0f} us/call; vs eager max {max(ulps)} ulps "
                      f"(lower {ulps[0]}, upper {ulps[1]}), 0/inf/NaN mismatches {sum(status_diff)}"
                      + ("" if same else "; compiled calls differ from each other")
                      + ("; recompiled once on the 2nd call" if recompiled[0] else "")
                      + (f"; recompiled again on the 3rd call: {recompiled[1]}" if recompiled[1] else "")
                      + ("" if has_stance else "; (no torch.compiler.set_stance: recompiles not checked)"))
            rep.check(f"compiled band[{name}] (4096,) float32", ok, detail, compile_s=compile_s,
                      steady_s=steady_s, ulps=list(ulps), status_mismatch=sum(status_diff),
                      recompile_2nd_call=recompiled[0], recompile_3rd_call=recompiled[1])
        except Exception as e:
            rep.check(f"compiled band[{name}] (4096,) float32", False, _first_line(e),
                      traceback=traceback.format_exc()[-3000:])


# ----------------------------------------------------------------------------------------------------------
# 5. Speed
# ----------------------------------------------------------------------------------------------------------


def section_speed(rep: Report, device: torch.device, args, compiled: dict) -> None:
    band_speed = _load_band_speed()
    deadline = args.budget_s
    rows = {}
    ok_all = True

    def left() -> float:
        return deadline - rep.elapsed()

    for n in args.sizes:
        if left() < 15:
            rep.check(f"speed at n={n}", "SKIP", f"budget: {left():.0f} s left of --budget-s {args.budget_s:g}")
            continue
        logp = band_speed.llm_like_logp(n).to(device)
        for name in bandpo.list_divergences():
            if left() < 5:
                rep.check(f"speed {name} n={n}", "SKIP", "budget")
                continue
            try:
                t_band = best_time(lambda: bandpo.band(logp, 0.05, name, validate=False), device)
                t_bis = best_time(lambda: band_speed.bisection_band(logp, 0.05, name), device)
                lo, up = bandpo.band(logp, 0.05, name, validate=False)
                fin = bool(torch.isfinite(lo).all()) and bool((up >= 1).all())
                ok_all &= fin
                rows[(name, n)] = {"divergence": name, "n": n, "band_tokens_per_s": n / t_band,
                                   "bisection_tokens_per_s": n / t_bis, "speedup": t_bis / t_band,
                                   "band_s": t_band, "bisection_s": t_bis, "outputs_ok": fin}
            except Exception as e:
                ok_all = False
                rep.check(f"speed {name} n={n}", False, _first_line(e))
        del logp
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for n in args.sizes:
        logp = None
        for name in args.compile_divs:
            if (name, n) not in rows:
                continue
            if left() < args.compile_reserve_s:
                rep.check(f"compiled speed {name} n={n}", "SKIP", f"budget: {left():.0f} s left")
                continue
            try:
                if logp is None:
                    logp = band_speed.llm_like_logp(n).to(device)
                fn = compiled.get(name) or _compile_band(name)
                compiled[name] = fn
                t = time.perf_counter()
                lo, up = fn(logp)  # compiles for this shape (excluded from the timing)
                _sync(device)
                compile_s = time.perf_counter() - t
                t_comp = best_time(lambda: fn(logp), device)
                fin = bool(torch.isfinite(lo).all()) and bool((up >= 1).all())
                ok_all &= fin
                r = rows[(name, n)]
                r.update(compiled_tokens_per_s=n / t_comp, compiled_s=t_comp, compile_s=compile_s,
                         speedup_compiled=r["bisection_s"] / t_comp, compiled_outputs_ok=fin)
            except Exception as e:
                ok_all = False
                rep.check(f"compiled speed {name} n={n}", False, _first_line(e))
        del logp
    head = (f"{'divergence':<12} {'n':>9} {'band tok/s':>11} {'bisect tok/s':>13} {'speed-up':>9} "
            f"{'compiled tok/s':>15} {'comp. speed-up':>15}")
    print(head + "\n" + "-" * len(head))
    for r in rows.values():
        comp = (f"{r['compiled_tokens_per_s']:>15.3g} {r['speedup_compiled']:>14.1f}x" if "compiled_s" in r
                else f"{'-':>15} {'-':>15}")
        print(f"{r['divergence']:<12} {r['n']:>9} {r['band_tokens_per_s']:>11.3g} {r['bisection_tokens_per_s']:>13.3g} "
              f"{r['speedup']:>8.1f}x {comp}")
    rep.put("rows", list(rows.values()))
    rep.put("dtype", "float32")
    rep.put("delta", 0.05)
    if not rows and ok_all:
        rep.check("speed table", "SKIP", f"no row fit in --budget-s {args.budget_s:g}")
        return
    rep.check("speed table", ok_all and bool(rows),
              f"{len(rows)} rows; outputs finite (lower) and >= 1 (upper) everywhere" if ok_all
              else "an error or a non-finite output above")


# ----------------------------------------------------------------------------------------------------------
# 6. Training
# ----------------------------------------------------------------------------------------------------------


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _train(rep: Report, device: torch.device, args, label: str, steps: int, warmstart: int, extra: list) -> None:
    accel = "gpu" if device.type == "cuda" else "cpu"
    out = Path(tempfile.mkdtemp(prefix=f"bandpo_train_{label}_"))
    cmd = [sys.executable, "-m", "bandpo.training", "--preset", "tiny-cpu", "--out", str(out),
           "--max-steps", str(steps), "--accelerator", accel, "--seed", "0", "--warmstart.steps", str(warmstart),
           "--trainer.progress_bar", "false", "--trainer.checkpoint_every", str(steps), *extra]
    name = f"train {label}: {steps} steps, --accelerator {accel} {' '.join(extra)}".rstrip()
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True,
                           timeout=args.train_timeout_s)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = "".join(s.decode() if isinstance(s, bytes) else (s or "") for s in (e.stdout, e.stderr))
    wall = time.monotonic() - t
    rows = []
    metrics = out / "metrics.csv"
    if metrics.is_file():
        with metrics.open(newline="") as f:
            rows = list(csv.DictReader(f))
        shutil.copy(metrics, rep.out / f"train_{label}_metrics.csv")
    keys = ("loss/total", "loss/policy", "reward/mean")

    def finite(row, k):
        try:
            return math.isfinite(float(row[k]))
        except (KeyError, TypeError, ValueError):
            return False

    bad_rows = [i for i, row in enumerate(rows) if not all(finite(row, k) for k in keys)]
    used_gpu = device.type != "cuda" or "used: True" in text  # Lightning: "GPU available: True (cuda), used: True"
    last = rows[-1] if rows else {}
    ok = rc == 0 and len(rows) == steps and not bad_rows and used_gpu
    detail = (f"rc {rc}, {wall:.1f} s, {len(rows)} rows, non-finite rows {bad_rows[:5]}, last reward "
              f"{last.get('reward/mean', '?')}, loss {last.get('loss/total', '?')}, "
              f"{last.get('perf/tokens_per_s', '?')} tokens/s"
              + ("" if used_gpu else ", Lightning did not use the GPU"))
    if not ok:
        detail += " | output tail: " + " / ".join(text.strip().splitlines()[-4:])[:600]
    rep.check(name, ok, detail, wall_s=wall, rc=rc, rows=len(rows), last_row=last, output_tail=text[-4000:],
              cmd=" ".join(cmd))
    shutil.rmtree(out, ignore_errors=True)


def section_train(rep: Report, device: torch.device, args) -> None:
    s = args.train_steps
    _train(rep, device, args, "fp32", s, args.warmstart_steps, [])
    _train(rep, device, args, "bf16-mixed", max(1, s // 2), max(1, args.warmstart_steps // 3),
           ["--precision", "bf16-mixed"])


# ----------------------------------------------------------------------------------------------------------
# 7. pytest
# ----------------------------------------------------------------------------------------------------------


def section_pytest(rep: Report, device: torch.device, args) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_losses.py", "-k", "cuda"]
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=150)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", "".join(s.decode() if isinstance(s, bytes) else (s or "") for s in (e.stdout, e.stderr))
    wall = time.monotonic() - t
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    result = lines[-1] if lines else "(no output)"
    ok = rc == 0 and "failed" not in result and "error" not in result
    if device.type == "cuda":
        ok = ok and "passed" in result and "skipped" not in result
    rep.check("pytest tests/test_losses.py -k cuda", ok, f"rc {rc}, {wall:.1f} s: {result}", rc=rc, wall_s=wall,
              result=result, output_tail=text[-4000:])


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for device_check.json (and metrics CSVs)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU rehearsal")
    ap.add_argument("--sections", type=int, nargs="*", default=list(RUN_ORDER), help="subset of 1-7")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="wall-clock budget: section 5 skips rows that would start after it")
    ap.add_argument("--sizes", type=int, nargs="*", default=None,
                    help="section 5 token counts (default 2^20 2^24 on CUDA, 2^20 on CPU, 2^16 with --quick)")
    ap.add_argument("--compile-divs", nargs="*", default=None,
                    help="divergences compiled in sections 4-5 (default kl tv chi2; kl with --quick)")
    ap.add_argument("--compile-reserve-s", type=float, default=None,
                    help="section 5 starts a compiled row only with this much budget left (default 30, CPU 60)")
    ap.add_argument("--train-steps", type=int, default=None, help="RL steps of the fp32 run (default 20; 2 quick)")
    ap.add_argument("--warmstart-steps", type=int, default=None,
                    help="supervised warm-start steps (on the CPU; preset: 300; default 150, quick 6)")
    ap.add_argument("--train-timeout-s", type=float, default=90.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 on a busy shared CPU, where 2 threads with one "
                         "core taken by another process make every small op wait on its partner thread")
    ap.add_argument("--deltas", type=float, nargs="*", default=list(DELTAS), help="section 2 deltas")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    if args.sizes is None:
        args.sizes = [2**16] if args.quick else ([2**20, 2**24] if cuda else [2**20])
    if args.compile_divs is None:
        args.compile_divs = ["kl"] if args.quick else list(COMPILE_DIVS)
    if args.compile_reserve_s is None:
        args.compile_reserve_s = 30.0 if cuda else 60.0
    if args.train_steps is None:
        args.train_steps = 2 if args.quick else 20
    if args.warmstart_steps is None:
        args.warmstart_steps = 6 if args.quick else 150
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rep = Report(args.out, {"argv": sys.argv, "args": vars(args), "device": str(device), "tol_f64": TOL_F64,
                            "tol_ulps": {"float32": TOL_ULPS[torch.float32], "bfloat16": TOL_ULPS[torch.bfloat16]},
                            "tol_compile_ulps": TOL_COMPILE_ULPS, "deltas": args.deltas, "run_order": RUN_ORDER})
    print(f"bandpo device check on {device} (torch {torch.__version__}), sections {args.sections}, "
          f"budget {args.budget_s:g} s, out {args.out}", flush=True)
    compiled: dict = {}
    sections = {
        1: ("environment", section_env, ()),
        2: (f"accuracy on {device.type} vs CPU float64", section_accuracy, ()),
        3: ("no host-device sync with validate=False", section_sync, ()),
        4: ("torch.compile", section_compile, (compiled,)),
        5: ("speed (float32 LLM-like log-probs, delta 0.05)", section_speed, (compiled,)),
        6: ("tiny LM training (python -m bandpo.training --preset tiny-cpu)", section_train, ()),
        7: ("pytest tests/test_losses.py -k cuda", section_pytest, ()),
    }
    for k in RUN_ORDER:
        if k in args.sections:
            title, fn, extra = sections[k]
            rep.run_section(str(k), title, fn, device, args, *extra)

    rep.current = "summary"
    rep.write()
    c = rep.data["counts"]
    print(f"\n== summary: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped in {rep.elapsed():.0f} s "
          f"on {device}; {args.out / 'device_check.json'} ==")
    for f in rep.failures():
        print(f"FAILED {f['section']}: {f['name']} -- {f['detail'][:300]}")
    return 1 if rep.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
