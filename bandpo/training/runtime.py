"""What a run needs around the training loop: start-up checks with one-line errors, SIGTERM/SIGINT handling, the
eval log, the progress bar, quiet logs, and the ``--dry-run`` report. ``bandpo.training.cli`` wires them.

* **Start-up checks** (:func:`check_out_dir`, :func:`check_checkpoint`, :func:`check_accelerator`) raise
  :class:`UserError`, a ``ValueError`` whose message is one line naming the path or setting and what to do; the
  command line prints it as ``bandpo.training: error: ...`` and exits with status 2, without a traceback.
* **Signals.** :class:`StopRequest` turns the first SIGTERM (what cluster schedulers send before they kill a job)
  or SIGINT (Ctrl-C) into a request: the current RL step finishes (its rollout and all its optimiser steps), then
  every process agrees to stop (one all-reduce per step), ``checkpoints/last.ckpt`` is written and the logs are
  flushed; the command prints where to resume from and exits with 128 + the signal number (143 for SIGTERM, 130
  for SIGINT), never 0. A second signal stops at once (the default action). Running the same command again
  resumes from that checkpoint, bit for bit on the same machine.
* **Run-folder lock** (:class:`RunLock`): one process at a time owns a run folder, through an ``flock`` on
  ``DIR/.lock`` held for the process's life (the kernel drops it when the process ends, even by kill -9, so it
  never goes stale); a second run into the same folder stops at once with one line naming the holder.
* **Checkpoint files** (:func:`commit_checkpoint`, :func:`find_resume_checkpoint`): each checkpoint has its SHA-256
  in a ``<name>.sha256`` file beside it (``sha256sum -c`` reads it), verified before resuming; the checkpoint it
  replaces is kept as ``prev.ckpt``, and a damaged ``last.ckpt`` makes the run resume from ``prev.ckpt`` with a
  one-line warning (the damaged file is kept as ``last.ckpt.damaged``).
* **Eval log** (:class:`EvalLog`): ``eval.csv`` in the run folder, one row per evaluation, ``step`` = the number of
  RL steps done before it (0 = before training); rows written after the checkpoint being resumed are dropped.
* **Progress bar** (:func:`progress_bar_class`): RL steps out of ``max_steps`` with percentage and ETA, also after
  a resume (the rate counts only this process's steps), and reward, accuracy, entropy, clipped fraction, KL and the
  latest eval numbers.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import signal
import socket
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = [
    "EvalLog",
    "RunLock",
    "StopRequest",
    "UserError",
    "check_accelerator",
    "check_checkpoint",
    "check_out_dir",
    "commit_checkpoint",
    "file_sha256",
    "find_resume_checkpoint",
    "verify_checkpoint",
    "warn",
    "dry_run_report",
    "missing_inputs",
    "missing_inputs_message",
    "progress_bar_class",
    "progress_postfix",
    "quiet_logs",
    "stop_callback_class",
]


class UserError(ValueError):
    """A problem with the command, the config or the files, found before training: printed as one line."""


# ----------------------------------------------------------------------------------------------------------
# Start-up checks
# ----------------------------------------------------------------------------------------------------------


def check_out_dir(out: Any) -> Path:
    """``out`` as a Path, after making sure it is a folder this process can write in (created if needed).

    Raises:
        UserError: ``out`` is empty (it would mean the current folder), is a file, lies under a file, or cannot be
            created or written.
    """
    if not str(out).strip():
        raise UserError("--out is empty; give a folder for the run (it is created if needed)")
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder; give a folder for the run (it is created if "
                        "needed)")
    parent = p
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out {str(out)!r} lies under {str(parent)!r}, which is a file; choose a folder path")
    probe = p / ".bandpo-write-check"
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} cannot be written ({e.strerror or e}); choose a folder you can write "
                        "to") from None
    return p


def check_checkpoint(path: Path) -> None:
    """Raise if ``path`` is not a complete checkpoint (torch's zip format: a truncated file has no central
    directory). Reads only the zip directory, not the weights.

    Raises:
        UserError: naming the file and saying to delete it to restart the run from scratch.
    """
    why = None
    try:
        if path.stat().st_size == 0:
            why = "it is empty"
        else:
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    why = "it holds no pickled state (not a torch checkpoint)"
    except zipfile.BadZipFile:
        why = "it is truncated or corrupt (not a complete torch zip archive)"
    except OSError as e:
        why = f"it cannot be read ({e.strerror or e})"
    if why:
        raise UserError(f"cannot resume from {str(path)!r}: {why}; delete it to restart the run from scratch (or "
                        "restore a good copy)")


def check_accelerator(accelerator: str) -> None:
    """Raise if ``trainer.accelerator`` asks for a device this machine does not have.

    Raises:
        UserError: 'gpu'/'cuda' without a visible CUDA device, 'mps' without MPS.
    """
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(f"trainer.accelerator = {accelerator!r} but no GPU is visible (torch {torch.__version__} is "
                        f"{build}); use --accelerator cpu, or --dry-run to check a GPU config on this machine")
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("trainer.accelerator = 'mps' but MPS is not available here; use --accelerator cpu")


def _is_main_process() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def warn(msg: str) -> None:
    """Print a one-line warning (``[bandpo] WARNING: ...``) from the main process."""
    if _is_main_process():
        print(f"[bandpo] WARNING: {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------
# Run-folder lock
# ----------------------------------------------------------------------------------------------------------


class RunLock:
    """Exclusive ownership of a run folder while the ``with`` block runs: an ``flock`` on ``folder/.lock``.

    Why ``flock`` and not a pid file: the kernel releases the lock when the holder's last file descriptor closes,
    so a process killed by kill -9 (or a crashed node's NFS client, once its lease ends) leaves no stale lock, and
    no liveness check has to guess about pid reuse or processes on other hosts. The file itself stays (removing it
    would race with a process opening it); it holds the holder's pid, host and start time, for the message a second
    run prints. The descriptor is not inherited by processes the run launches (Python opens files
    non-inheritable), so only this process holds the lock; under DDP only rank 0 takes it. On a file system without
    locks the run goes on after a one-line warning.

    Raises:
        UserError: on entering, when another process holds the folder (naming it).
    """

    FILE = ".lock"

    def __init__(self, folder: Any) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self._file: Any = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            warn(f"cannot lock {self.path} on this system; a second run into {self.folder} would not be detected")
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = " ".join(f.read().split()) or "a process that is starting"
            f.close()
            raise UserError(f"{self.folder} is in use by another run ({holder}); wait for it to end, or choose "
                            "another --out") from None
        except OSError as e:
            f.close()
            warn(f"cannot lock {self.path} ({e.strerror or e}: the file system has no locks); a second run into "
                 f"{self.folder} would not be detected")
            return self
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            import fcntl

            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files: checksums, the previous checkpoint, the fallback
# ----------------------------------------------------------------------------------------------------------

CHECKSUM_SUFFIX = ".sha256"
"""A checkpoint ``X`` has its SHA-256 in ``X.sha256``, in ``sha256sum`` format (``<hex>  X``)."""


def file_sha256(path: Any) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _recorded_sha256(path: Path) -> Optional[str]:
    side = _checksum_file(path)
    if not side.is_file():
        return None
    words = side.read_text().split()
    return words[0].lower() if words else ""


def commit_checkpoint(tmp: Path, dest: Path, previous: Optional[Path] = None) -> None:
    """Put the checkpoint written to ``tmp`` in place as ``dest``, with its SHA-256 in ``dest.sha256``; with
    ``previous``, the checkpoint ``dest`` held before is kept there (with its own ``.sha256``).

    The order of the steps keeps, at every instant, a checkpoint whose checksum file matches it: ``previous``'s
    checksum file is written before ``dest`` is linked (or, where hard links are not supported, renamed) to
    ``previous``, and ``dest``'s before ``tmp`` replaces ``dest``; a kill between two steps therefore leaves
    ``dest`` or ``previous`` verifiable (:func:`find_resume_checkpoint` falls back to ``previous``).
    """
    _fsync(tmp)
    digest = file_sha256(tmp)
    if previous is not None and dest.is_file():
        old = _recorded_sha256(dest) or file_sha256(dest)
        _write_atomically(_checksum_file(previous), f"{old}  {previous.name}\n")
        link = previous.with_name(previous.name + ".tmp")
        try:
            if link.exists():
                link.unlink()
            os.link(dest, link)
            os.replace(link, previous)
        except OSError:  # no hard links here: a rename (dest is then briefly missing; previous is complete)
            os.replace(dest, previous)
    _write_atomically(_checksum_file(dest), f"{digest}  {dest.name}\n")
    os.replace(tmp, dest)


def verify_checkpoint(path: Path) -> Optional[str]:
    """None if ``path`` matches the SHA-256 recorded beside it, else why not (a phrase)."""
    if not path.is_file():
        return "is missing"
    recorded = _recorded_sha256(path)
    if recorded is None:
        return f"has no checksum file {_checksum_file(path).name}"
    if file_sha256(path) != recorded:
        return (f"does not match the SHA-256 recorded in {_checksum_file(path).name} when it was written (it was "
                "damaged afterwards, or the write was cut short)")
    return None


def find_resume_checkpoint(folder: Path, *, main: bool = True) -> Optional[Path]:
    """The checkpoint to resume from in ``folder`` (``checkpoints/``): ``last.ckpt`` if it verifies, else
    ``prev.ckpt`` (one checkpoint interval earlier) with a one-line warning; None when neither exists.

    On the fallback the main process (``main``) keeps the damaged file as ``last.ckpt.damaged`` (so that the next
    checkpoint does not rotate it into ``prev.ckpt``). A checkpoint written before checksums existed is resumed
    after the zip check alone, with a warning.

    Raises:
        UserError: a checkpoint exists but none verifies (naming each and why), or a pre-checksum one is cut short.
    """
    last, prev = folder / "last.ckpt", folder / "prev.ckpt"
    if not last.exists() and not prev.exists():
        return None
    if last.is_file() and _recorded_sha256(last) is None and not prev.exists():
        check_checkpoint(last)  # raises for a truncated or empty file
        warn(f"{last} has no checksum file (written by an earlier version of bandpo); resuming from it without "
             "verifying its contents")
        return last
    why_last = verify_checkpoint(last)
    if why_last is None:
        return last
    why_prev = verify_checkpoint(prev)
    if why_prev is not None:
        raise UserError(f"cannot resume from {str(folder)!r}: last.ckpt {why_last}, and prev.ckpt {why_prev}; "
                        f"delete {str(folder)!r} to restart the run from scratch (or restore a good copy)")
    kept = ""
    if main and last.exists():
        damaged = last.with_name(last.name + ".damaged")
        os.replace(last, damaged)
        if _checksum_file(last).exists():
            os.replace(_checksum_file(last), _checksum_file(damaged))
        kept = f"; the damaged file is kept as {damaged.name}"
    warn(f"{last} {why_last}; resuming from {prev}, the checkpoint before it (the steps since are recomputed){kept}")
    return prev


# ----------------------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------------------


class StopRequest:
    """Records the first SIGTERM/SIGINT instead of dying; the training loop polls :attr:`signum`.

    Use as a context manager around training (handlers are installed only in the main thread, and the previous
    handlers are restored on exit). A second signal restores the default action and re-delivers it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    @property
    def name(self) -> Optional[str]:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: give up now
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"[bandpo] received {signal.Signals(signum).name}: finishing the current RL step, then writing a "
                  "checkpoint (send it again to stop at once)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}


def stop_callback_class() -> type:
    """A Lightning callback (class defined on first use) that turns a :class:`StopRequest` into a clean stop.

    At the end of every RL step the processes agree (any process signalled = stop), then ``trainer.should_stop``
    is set so that the checkpoint callback placed after it writes ``last.ckpt``.
    """
    import lightning as L

    class GracefulStop(L.Callback):
        def __init__(self, request: StopRequest) -> None:
            self.request = request
            self.stopped_by: Optional[str] = None

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            local = self.request.signum is not None or bool(getattr(trainer, "received_sigterm", False))
            if trainer.strategy.reduce_boolean_decision(local, all=False):
                self.stopped_by = self.request.name or "SIGTERM"
                trainer.should_stop = True

    return GracefulStop


# ----------------------------------------------------------------------------------------------------------
# The eval log
# ----------------------------------------------------------------------------------------------------------


class EvalLog:
    """``eval.csv``: one row per evaluation (``step`` first, then the metric keys in a fixed order)."""

    def __init__(self, path: Any) -> None:
        self.path = Path(path)

    def append(self, step: int, metrics: dict) -> None:
        """Append one row (a new header, with the union of the keys, if the keys changed)."""
        rows = self.read()
        keys = ["step"] + sorted({k for r in rows for k in r if k != "step"} | set(metrics))
        new = {"step": step, **{k: repr(float(v)) for k, v in metrics.items()}}
        if rows and list(rows[0]) == keys:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=keys).writerow(new)
            return
        self._write(keys, rows + [new])

    def read(self) -> list:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def keep_until(self, step: Optional[int]) -> int:
        """Drop rows with ``step > step`` (all rows for None: a fresh start). Returns how many were dropped."""
        rows = self.read()
        keep = [] if step is None else [r for r in rows if int(float(r["step"])) <= step]
        if len(keep) != len(rows):
            if keep:
                self._write(list(rows[0]), keep)
            else:
                self.path.unlink()
        return len(rows) - len(keep)

    def _write(self, keys: Sequence[str], rows: list) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(keys), restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------------------
# Progress bar and logs
# ----------------------------------------------------------------------------------------------------------


def progress_postfix(row: Optional[dict], evals: Optional[dict]) -> dict:
    """The bar's numbers: reward, accuracy, entropy, clipped fraction (all tokens), KL to the reference (k3) and
    the old policy (``ppo_kl``), and mean@n / the largest pass@k of each eval set."""
    out: dict = {}
    row = row or {}
    for key, name, fmt in (("reward/mean", "reward", "{:.3f}"), ("accuracy", "acc", "{:.3f}"),
                           ("entropy", "H", "{:.3f}"), ("clip_ratio/region_mean", "clip", "{:.2%}"),
                           ("kl_ref", "kl_ref", "{:.2g}"), ("ppo_kl", "ppo_kl", "{:.2g}")):
        if key in row:
            out[name] = fmt.format(row[key])
    best: dict = {}
    for key, value in (evals or {}).items():
        parts = key.split("/")
        if len(parts) != 3 or "@" not in parts[2]:
            continue
        metric, k = parts[2].split("@")
        if metric == "mean" or (metric == "pass" and int(k) >= best.get((parts[1], "pass"), (0, 0))[0]):
            best[(parts[1], metric)] = (int(k), value)
    for (set_name, metric), (k, value) in sorted(best.items()):
        out[f"{set_name} {metric}@{k}"] = f"{value:.3f}"
    return out


def progress_bar_class() -> type:
    """Lightning's TQDM bar counting RL steps out of ``max_steps`` (class defined on first use)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class RLProgressBar(TQDMProgressBar):
        """Total = ``max_steps``; starts at the resumed step, so percentage and ETA are right after a resume
        (tqdm's rate counts the steps since ``initial``, i.e. this process's)."""

        @property
        def total_train_batches(self) -> int:
            return self.trainer.lightning_module.cfg.trainer.max_steps

        def init_train_tqdm(self) -> Any:
            import sys

            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            module = self.trainer.lightning_module
            return Tqdm(desc="RL step", total=module.cfg.trainer.max_steps, initial=module.rl_step,
                        position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
                        file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

        def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
            pass  # one endless epoch: the bar made at the start (total max_steps, from the resumed step) is kept

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            bar = self.train_progress_bar
            bar.n = pl_module.rl_step
            bar.set_postfix(progress_postfix(getattr(pl_module, "last_row", None),
                                             getattr(pl_module, "last_eval", None)), refresh=False)
            bar.refresh()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.train_progress_bar.refresh()

    return RLProgressBar


def quiet_logs() -> None:
    """Silence messages a user cannot act on: Lightning's informational lines (accelerator summary, tips,
    checkpoint restore notes, the ``weights_only`` notice) and a deprecation warning from its pytree helper.
    Warnings and errors still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)`? is deprecated.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`max_epochs` was not set.*")


# ----------------------------------------------------------------------------------------------------------
# --dry-run report
# ----------------------------------------------------------------------------------------------------------


def missing_inputs(cfg: Any) -> list:
    """Every local input of ``cfg`` that is not on this machine, as ``"<setting> '<path>'"`` strings, in the
    order model, tokenizer, task data, eval sets (empty when everything is there; nothing is downloaded)."""
    from .config import _check_model_source
    from .evaluation import parse_eval_set

    out = []
    for value, key, need in ((cfg.model.name_or_path, "model.name_or_path", "config.json"),
                             (cfg.model.tokenizer, "model.tokenizer", "tokenizer_config.json")):
        if value is not None:
            try:
                _check_model_source(value, key, need=need)
            except ValueError:
                out.append(f"{key} {value!r}")
    if cfg.task.path is not None and not Path(cfg.task.path).expanduser().exists():
        out.append(f"task.path {cfg.task.path!r}")
    for entry in getattr(getattr(cfg, "eval", None), "sets", []) or []:
        spec = parse_eval_set(entry)
        if spec.path is not None and not Path(spec.path).expanduser().exists():
            out.append(f"eval set {spec.name} {spec.path!r}")
    return out


def missing_inputs_message(missing: list) -> str:
    """The one-line start-up error for several missing local inputs (see :func:`missing_inputs`)."""
    return (f"{len(missing)} local inputs are missing (nothing is downloaded at run time): {', '.join(missing)}; "
            "fetch the model and data once (docs/training.md) or check the config with --dry-run")


def dry_run_report(cfg: Any) -> tuple:
    """What a ``--dry-run`` of ``cfg`` checks on this machine and what it replaces.

    Returns:
        ``(lines, missing)``: human-readable lines, and the list of settings whose files or model are missing here
        (the real run would stop at start-up on each of them).
    """
    from .config import _check_model_source
    from .evaluation import parse_eval_set

    lines, missing = [], []

    def source(value: Optional[str], key: str, need: str = "config.json") -> str:
        if value is None:
            return ": the built-in tiny model" if key == "model.name_or_path" else ": the model's own"
        try:
            _check_model_source(value, key, need=need)
            return f" {value!r}: found"
        except ValueError as e:
            missing.append(key)
            return f" {value!r}: MISSING ({str(e).split(' is invalid: ', 1)[-1]})"

    m = cfg.model
    lines.append(f"model{source(m.name_or_path, 'model.name_or_path')} -> replaced by the tiny random model "
                 "(1 layer, hidden 32)")
    lines.append(f"tokenizer{source(m.tokenizer, 'model.tokenizer', 'tokenizer_config.json')} -> replaced by the "
                 "character tokenizer" + (" (no chat template: task.chat_template is turned off)"
                                          if cfg.task.chat_template else ""))
    if cfg.task.path is not None:
        ok = Path(cfg.task.path).expanduser().exists()
        if not ok:
            missing.append("task.path")
        lines.append(f"task.path {cfg.task.path!r}: " + ("found -> used as is (through the same loader)" if ok else
                     "MISSING -> replaced by 16 generated problems in the same format"))
    else:
        lines.append(f"task {cfg.task.name!r}: built in, used as is")
    for entry in getattr(getattr(cfg, "eval", None), "sets", []) or []:
        spec = parse_eval_set(entry)
        if spec.path is None:
            lines.append(f"eval set {spec.name!r}: the task's held-out split, used as is")
            continue
        ok = Path(spec.path).expanduser().exists()
        if not ok:
            missing.append(f"eval set {spec.name} ({spec.path})")
        lines.append(f"eval set {spec.name!r} {spec.path!r}: " + ("found -> its first 4 problems are used" if ok else
                     "MISSING -> replaced by 4 generated problems"))
    t = cfg.trainer
    lines.append(f"hardware {t.accelerator} x {t.devices} x {t.num_nodes} node(s), strategy {t.strategy}, "
                 f"{t.precision} -> 1 CPU process, float32; batch sizes shrunk (the loss settings are kept)")
    return lines, missing
