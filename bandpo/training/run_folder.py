"""The run folder's files that guard a run: its lock and its checkpoints' checksums.

* **Run-folder lock** (:class:`RunLock`): one process at a time owns a run folder, through an ``flock`` on
  ``DIR/.lock`` held for the process's life (the kernel drops it when the process ends, even by kill -9, so it
  never goes stale); a second run into the same folder stops at once with one line naming the holder.
* **Checkpoint files** (:func:`commit_checkpoint`, :func:`verify_checkpoint`, :func:`find_resume_checkpoint`): each
  checkpoint has its SHA-256 in a ``<name>.sha256`` file beside it (``sha256sum -c`` reads it), verified before
  resuming; the checkpoint it replaces is kept as ``prev.ckpt``, and a damaged ``last.ckpt`` makes the run resume
  from ``prev.ckpt`` with a one-line warning (the damaged file is kept as ``last.ckpt.damaged``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from .checks import UserError, check_checkpoint
from .console import warn

__all__ = [
    "CHECKSUM_SUFFIX",
    "RunLock",
    "commit_checkpoint",
    "file_sha256",
    "find_resume_checkpoint",
    "verify_checkpoint",
]


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
