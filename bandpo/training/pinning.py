"""The pinned numerical mode of CPU runs: the same code paths, so the same bits, on every x86-64 CPU with AVX2.

torch's CPU kernels pick their code at run time from what the processor offers, and so do the libraries under them.
Two x86-64 machines with the same torch wheel therefore run different instructions, sum in different orders, and a
training run drifts apart from its first update on (measured: ``docs/reproducibility.md``). The pinned mode fixes
every such choice that was measured to change a bit of a run, or that the library documents as one:

==========================  ===============  ======================================================================
what                        pinned to        why
==========================  ===============  ======================================================================
``ATEN_CPU_CAPABILITY``     ``avx2``         torch's vectorised kernels (softmax, SiLU, sigmoid, attention,
                                             reductions) exist per ISA level (DEFAULT, AVX2, AVX512) and differ in
                                             the last bits; AVX2 is the highest level every target CPU has
``MKL_CBWR``                ``COMPATIBLE``   MKL's matrix products dispatch on the CPU; its reproducibility branch
                                             ``AVX2`` is ignored on non-Intel CPUs (MKL falls back to ``AUTO``,
                                             measured), ``COMPATIBLE`` (SSE2) is honoured by both vendors
``MKL_DYNAMIC``,            ``FALSE``        MKL and OpenMP may otherwise lower the thread count per call
``OMP_DYNAMIC``                              (MKL's reproducibility conditions)
``ONEDNN_MAX_CPU_ISA``      ``AVX2``         oneDNN (unused by these models' float32 ops, measured with
                                             ``ONEDNN_VERBOSE``) would dispatch up to AVX-512/AMX
intra-op threads            ``trainer.       every parallel reduction splits its work by the thread count; the
                            num_threads``    count must be fixed (>= 1), not ``min(4, cores)``
denormals                   kept             ``torch.set_flush_denormal(False)``
==========================  ===============  ======================================================================

The environment variables are read when torch and MKL load, and ``import bandpo`` already runs torch kernels, so
they must be in the environment before Python starts. The entry points (``python -m bandpo.training`` and the
experiment runners) restart themselves with them when a pinned run is asked for (:func:`reexec_pinned`); from
Python, start the interpreter under ``python -m bandpo.training.pinning python script.py``, or export the
variables that ``python -m bandpo.training.pinning --export`` prints. A run whose config asks for the pinned mode
in a process that is not in it is refused with a one-line error naming what differs (:func:`problems`).

Where the promise holds, and where not: the same torch wheel (2.13.0+cpu, its MKL and oneDNN), the same Python
packages (``machine.json`` of each run folder records them), any x86-64 CPU with AVX2 and FMA, Linux. It cannot hold
across CPUs without AVX2 (torch then runs its DEFAULT kernels, and the check refuses the run), other architectures
(ARM: other kernels, no MKL), other torch builds or versions, or GPUs (CUDA kernels are not pinned by any of this).

This module imports nothing but the standard library at its top, so it can be loaded (by path) before torch.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    "MARKER",
    "MODES",
    "PINNED_ENV",
    "PinningError",
    "apply",
    "machine_record",
    "mkl_branch",
    "pinned_environ",
    "problems",
    "reexec_pinned",
    "write_machine_record",
]

MODES = ("native", "pinned")
"""``trainer.numerics``: ``native`` (every library picks its own code path, the fastest on the machine) or
``pinned`` (this module's fixed paths)."""

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""The environment of the pinned mode (see the module docstring for why each)."""

MARKER = "BANDPO_PINNED"
"""Set to ``1`` by :func:`reexec_pinned` in the restarted process, so that a restart that did not pin (a CPU without
AVX2) raises instead of restarting again."""

_MKL_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
                 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
"""MKL's code-branch numbers (``mkl_cbwr.h``), as ``mkl_cbwr_get(MKL_CBWR_BRANCH)`` returns them."""

_ISA_FLAGS = ("sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""CPU flags recorded in machine.json (those a kernel dispatcher looks at)."""


class PinningError(RuntimeError):
    """The process cannot run in the pinned mode (its message names what differs)."""


def pinned_environ(base: Optional[Mapping[str, str]] = None) -> dict:
    """``base`` (default ``os.environ``) with :data:`PINNED_ENV` applied and :data:`MARKER` set."""
    env = dict(os.environ if base is None else base)
    env.update(PINNED_ENV)
    env[MARKER] = "1"
    return env


def _torch_lib() -> Optional[ctypes.CDLL]:
    try:
        import torch

        return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:
        return None


def mkl_branch() -> Optional[str]:
    """The code branch MKL runs (``AUTO``, ``COMPATIBLE``, ``AVX2``, ...; ``OFF``: no reproducibility mode), read
    from the MKL linked into torch; None when it cannot be read (torch without MKL, not Linux)."""
    lib = _torch_lib()
    fn = getattr(lib, "mkl_serv_cbwr_get", None) if lib is not None else None
    if fn is None:
        return None
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    value = int(fn(1))  # MKL_CBWR_BRANCH
    return _MKL_BRANCHES.get(value, str(value))


def problems() -> list:
    """What keeps this process from the pinned mode, one line each ([] when it is pinned). Loads torch."""
    import torch

    out = []
    if platform.machine().lower() not in ("x86_64", "amd64"):
        out.append(f"the pinned mode is for x86-64 CPUs, this is {platform.machine()}")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        hint = ("the variable is set, so this CPU lacks AVX2/FMA" if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
                else "ATEN_CPU_CAPABILITY=avx2 must be set before torch loads")
        out.append(f"torch's CPU kernels run at {capability}, not AVX2 ({hint})")
    if not torch.backends.mkl.is_available():
        out.append("this torch has no MKL, so its BLAS is not pinned")
    else:
        branch = mkl_branch()
        if branch is None:
            branch = "COMPATIBLE" if os.environ.get("MKL_CBWR") == "COMPATIBLE" else "unknown"
        if branch != "COMPATIBLE":
            out.append(f"MKL runs its {branch} branch, not COMPATIBLE (MKL_CBWR=COMPATIBLE must be set before MKL "
                       "loads)")
    for key, value in PINNED_ENV.items():
        if key not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR") and os.environ.get(key) != value:
            out.append(f"{key} is {os.environ.get(key)!r}, not {value!r}")
    return out


def apply(num_threads: int) -> None:
    """Set what can be set inside the process: ``num_threads`` intra-op threads (>= 1; also MKL's and OpenMP's),
    one inter-op thread where torch still allows it, denormals kept."""
    import torch

    if not (isinstance(num_threads, int) and num_threads >= 1):
        raise ValueError(f"the pinned mode needs a fixed thread count >= 1, got {num_threads!r}")
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started: it runs no numerics of a training step
        pass
    torch.set_flush_denormal(False)


def reexec_pinned() -> None:
    """Restart this process in the pinned environment, with the same interpreter and command line
    (``sys.orig_argv``), unless it is already pinned (then return). Call it only from a program's entry point,
    before any work. Raises :class:`PinningError` when a restarted process is still not pinned."""
    found = problems()
    if not found:
        return
    if os.environ.get(MARKER) == "1" and all(os.environ.get(k) == v for k, v in PINNED_ENV.items()):
        raise PinningError("the pinned mode is not available on this machine: " + "; ".join(found))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])), pinned_environ())


def _cpu_info() -> dict:
    info: dict = {"machine": platform.machine(), "processor": platform.processor(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:
            break  # the first processor is enough
    info["model"] = fields.get("model name")
    info["vendor"] = fields.get("vendor_id")
    info["family_model_stepping"] = [fields.get("cpu family"), fields.get("model"), fields.get("stepping")]
    flags = set(fields.get("flags", "").split())
    info["isa_flags"] = [f for f in _ISA_FLAGS if f in flags]
    return info


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "lightning", "transformers", "tokenizers", "bandpo"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_record(numerics: str) -> dict:
    """What a run's numbers depend on besides its config: the CPU (model, vendor, ISA flags), the numerical mode and
    what the libraries actually chose (ATen capability, MKL branch, threads), the library versions and the pinned
    variables as found in the environment. Loads torch."""
    import torch

    parallel = {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads()}
    return {
        "numerics": numerics,
        "pinned_ok": not problems() if numerics == "pinned" else None,
        "cpu": _cpu_info(),
        "os": platform.platform(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_branch": mkl_branch(),
        "mkl_version": _mkl_version(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "threads": parallel,
        "environment": {k: os.environ.get(k) for k in (*PINNED_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "MKL_ENABLE_INSTRUCTIONS", MARKER)},
        "versions": _versions(),
        "torch_build": {"debug": torch.version.debug, "cuda": torch.version.cuda,
                        "blas": "mkl" if torch.backends.mkl.is_available() else "other"},
    }


def _mkl_version() -> Optional[str]:
    lib = _torch_lib()
    fn = getattr(lib, "MKL_Get_Version_String", None) if lib is not None else None
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(256)
    fn(buf, ctypes.c_int(256))
    return buf.value.decode(errors="replace")


def write_machine_record(out: "str | Path", numerics: str, resumed: bool = False) -> dict:
    """Append this process's :func:`machine_record` (with ``resumed``: whether it continues a checkpoint, and the
    UTC time) to ``out/machine.json`` (``{"processes": [...]}``: a resumed run adds one entry per process).
    Returns the record."""
    path = Path(out) / "machine.json"
    record = {"resumed": bool(resumed),
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **machine_record(numerics)}
    data = {"processes": []}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and isinstance(old.get("processes"), list):
                data = old
        except ValueError:
            pass
    data["processes"].append(record)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bandpo.training.pinning [--export | --check | CMD ...]``."""
    import argparse
    import shlex

    p = argparse.ArgumentParser(prog="python -m bandpo.training.pinning",
                                description="Run a command in the pinned numerical mode (docs/reproducibility.md).")
    p.add_argument("--export", action="store_true", help="print `export` lines for the pinned environment")
    p.add_argument("--check", action="store_true", help="say whether this process is pinned (exit 1 if not)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="a command to run in the pinned environment")
    args = p.parse_args(argv)
    if args.export:
        for key, value in PINNED_ENV.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if args.check:
        found = problems()
        print("pinned" if not found else "not pinned: " + "; ".join(found))
        return 0 if not found else 1
    if not args.command:
        p.error("give a command to run, --export or --check")
    cmd = args.command[1:] if args.command[0] == "--" else args.command
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, pinned_environ())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
