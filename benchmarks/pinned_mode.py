"""What changes the bits of a CPU run, and what the pinned mode costs: the measurements of docs/reproducibility.md.

    python benchmarks/pinned_mode.py bits --preset testbed --steps 4     # which settings change a bit (~15 runs)
    python benchmarks/pinned_mode.py speed --preset testbed --steps 30 --repeats 3

``bits``: trains the same run (``--preset``, band_kl, seed 0, ``--steps`` RL steps, the preset's full warm-start)
once per condition below, each in its own process, and compares every run with the first of its group value by
value (``bandpo.experiments.recheck.compare_runs``: warmstart.json, then metrics.csv step by step, then eval.csv;
timings excluded). Native conditions (``--no-pin``) vary one thing the process would otherwise pick: the ATen
capability (``ATEN_CPU_CAPABILITY``), MKL's code branch (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``), the
thread count, the hash seed. Pinned conditions start the same command from those environments (the command then
restarts itself pinned) and must all agree with each other.

``speed``: the pinned and the native run alternately (``--repeats`` each, interleaved so that a busy machine slows
both alike), both started with their environment already set (no restart), and reports the child processes' CPU
seconds (user + system) and the training wall time of each, and the ratio pinned / native of the fastest of each.

Writes ``benchmarks/results/pinned_mode_<mode>_<preset>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bandpo.experiments.recheck import compare_runs  # noqa: E402
from bandpo.training.pinning import PINNED_ENV, pinned_environ  # noqa: E402

CLEAN = {k: v for k, v in os.environ.items()
         if k not in PINNED_ENV and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
                                               "BANDPO_PINNED")}
"""This process's environment without any variable the pinned mode sets: what a user's shell would have."""

NATIVE = [  # (name, extra environment, extra flags)
    ("native", {}, []),
    ("native, again", {}, []),
    ("native, ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, []),
    ("native, ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, []),
    ("native, MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}, []),
    ("native, MKL_CBWR=AVX2 (AUTO on AMD)", {"MKL_CBWR": "AVX2"}, []),
    ("native, MKL_ENABLE_INSTRUCTIONS=AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, []),
    ("native, 2 threads", {}, ["--trainer.num_threads", "2"]),
    ("native, PYTHONHASHSEED=1", {"PYTHONHASHSEED": "1"}, []),
    ("native, ATEN avx2 + MKL COMPATIBLE", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}, []),
]
PINNED = [
    ("pinned", {}, []),
    ("pinned, from ATEN_CPU_CAPABILITY=default, OMP/MKL_NUM_THREADS=2",
     {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, []),
    ("pinned, from ATEN_CPU_CAPABILITY=avx512, MKL_CBWR=AUTO",
     {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}, []),
    ("pinned, from PYTHONHASHSEED=7, OMP_DYNAMIC=TRUE", {"PYTHONHASHSEED": "7", "OMP_DYNAMIC": "TRUE"}, []),
]
PINNED_2T = [("pinned, trainer.num_threads 2", {}, ["--trainer.num_threads", "2"])]


def train(preset: str, steps: int, out: Path, env: dict, flags: list) -> dict:
    """One run in a child process; returns its CPU seconds (user + system of the child) and wall seconds."""
    cmd = [sys.executable, "-m", "bandpo.training", "--preset", preset, "--method", "band_kl", "--seed", "0",
           "--max-steps", str(steps), "--trainer.progress_bar", "false", "--out", str(out), *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "wall_s": wall,
            "train_wall_s": summary["wall_s_this_process"]}


def bits(preset: str, steps: int, tmp: Path) -> list:
    """Every condition's run against its reference: the first native run for the native conditions and for the
    first pinned run, the first pinned run for the other pinned ones."""
    rows, refs = [], {}
    for group, key in ((NATIVE, "native"), (PINNED, "pinned"), (PINNED_2T, "pinned")):
        for name, extra, flags in group:
            out = tmp / f"run{len(rows)}"
            native = name.startswith("native")
            train(preset, steps, out, {**CLEAN, **extra}, (["--no-pin"] if native else []) + flags)
            machine = json.loads((out / "machine.json").read_text())["processes"][0]
            ref_name = key if key in refs else "native" if "native" in refs else None
            result = compare_runs(refs[ref_name], out) if ref_name else {"differences": [], "compared": 0}
            refs.setdefault(key, out)
            d = result["differences"]
            rows.append({"condition": name, "against": ref_name, "aten": machine["aten_cpu_capability"],
                         "mkl": machine["mkl_branch"], "threads": machine["threads"]["intra_op_threads"],
                         "differing": len(d), "compared": result["compared"], "first": str(d[0]) if d else ""})
            print(f"{name:<66} ATen {rows[-1]['aten']:<7} MKL {rows[-1]['mkl']:<10} vs {ref_name}: "
                  f"{'identical' if not d else f'{len(d)} differ, first ' + str(d[0])[:100]}", flush=True)
    return rows


def speed(preset: str, steps: int, repeats: int, tmp: Path) -> dict:
    times: dict = {"pinned": [], "native": []}
    for r in range(repeats):
        for mode in ("pinned", "native") if r % 2 == 0 else ("native", "pinned"):
            env = pinned_environ(CLEAN) if mode == "pinned" else dict(CLEAN)
            out = tmp / f"{mode}{r}"
            times[mode].append(train(preset, steps, out, env, [] if mode == "pinned" else ["--no-pin"]))
            print(f"{mode:<7} repeat {r}: {times[mode][-1]}", flush=True)
    best = {m: {k: min(t[k] for t in ts) for k in ("cpu_s", "wall_s", "train_wall_s")} for m, ts in times.items()}
    ratio = {k: best["pinned"][k] / best["native"][k] for k in ("cpu_s", "wall_s", "train_wall_s")}
    return {"runs": times, "best": best, "ratio_pinned_over_native": ratio}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("bits", "speed"))
    p.add_argument("--preset", default="testbed")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bandpo-pin-") as tmp:
        if args.mode == "bits":
            result = {"rows": bits(args.preset, args.steps, Path(tmp))}
        else:
            result = speed(args.preset, args.steps, args.repeats, Path(tmp))
            print(json.dumps(result["ratio_pinned_over_native"]))
    result.update(preset=args.preset, steps=args.steps, cpu=open("/proc/cpuinfo").read().split("model name")[1]
                  .split("\n")[0].strip(": ") if os.path.exists("/proc/cpuinfo") else None)
    path = ROOT / "benchmarks" / "results" / f"pinned_mode_{args.mode}_{args.preset}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
