"""What every command line of the package shares: one-line errors, exit statuses, range-checked flag types.

Every command (``python -m bandpo.training``, ``python -m bandpo.training.data``, ``python -m bandpo.experiments.
{bandit,reproduce,testbed,stats,plot}``, ``python -m bandpo_theory.{certify,report,dppo}``, the scripts of
``paper_figures/``) parses its flags with :class:`ArgumentParser` and follows one convention:

* exit status **2**: the command was given something it cannot use, found before any work is done (an unknown or
  malformed flag, a value outside its range, a file or folder that is missing, unreadable, of the wrong kind or
  malformed). stderr gets exactly one line, ``<name>: error: <what was wrong>; <what is allowed>``, with the path
  in every file error; no usage text (``--help`` prints that) and no traceback;
* exit status **1**: the work started and did not finish (a training run that stopped before ``max_steps``,
  figures that could not be drawn for lack of data); errors *during* training keep their traceback;
* **128 + N**: stopped by signal N after writing a checkpoint (training: 143 for SIGTERM, 130 for SIGINT).

This module is layer 0 (it imports only the standard library), so every layer and ``bandpo_theory`` may use it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

__all__ = ["ArgumentParser", "UsageError", "check_out_path", "float_in", "int_at_least", "one_line"]


class UsageError(ValueError):
    """Bad input to a command (a flag, a value, a file): its message is one line naming what was wrong and what is
    allowed. Raised by :meth:`ArgumentParser.error` instead of exiting when the parser has ``exit_on_error=False``."""


def one_line(message: Any) -> str:
    """``message`` (a string or an exception) on one line: its lines joined with "; ", an exception that has no
    message named by its type, an ``OSError`` as "<reason>: '<path>'"."""
    if isinstance(message, OSError) and message.strerror:
        names = [n for n in (message.filename, message.filename2) if n is not None]
        text = message.strerror + (": " + " -> ".join(repr(str(n)) for n in names) if names else "")
    elif isinstance(message, BaseException):
        text = str(message) or type(message).__name__
    else:
        text = str(message)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line and whose flags must be written in full.

    * :meth:`error` prints ``<name>: error: <message>`` (one line, no usage) and exits with status 2; with
      ``exit_on_error=False`` it raises :class:`UsageError` instead (for parsers used as a library, e.g. the option
      blocks of a report). ``name`` is the command without ``python -m`` (``bandpo.experiments.plot``,
      ``paper_figures/reproduce.py``).
    * An unrecognized flag is named with the closest flags this parser has ("did you mean ...?").
    * :meth:`report` prints the same one line for an error found after parsing and returns 2, for a ``main`` that
      returns its exit status.
    * Prefixes of flags are not accepted (``allow_abbrev=False``): ``--max-step`` is not ``--max-steps``.
    Subparsers (``add_subparsers``) are of the same class.
    """

    def __init__(self, *args: Any, name: Optional[str] = None, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)
        words = [w for w in self.prog.split() if w not in ("python", "python3", "-m")] or [self.prog]
        self.name = name or words[0]

    def _flags(self) -> list:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> tuple:
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as e:  # raised as is when exit_on_error is False
            self.error(str(e))

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = self._flags()
            hints = []
            for item in extras:
                if item.startswith("--"):
                    close = difflib.get_close_matches(item.split("=", 1)[0], flags, n=2, cutoff=0.75)
                    hints += [c for c in close if c not in hints]
            hint = f" (did you mean {' or '.join(hints)}?)" if hints else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}; `{self.prog} --help` lists the options")
        return ns

    def error(self, message: Any) -> NoReturn:
        text = one_line(message)
        if not self.exit_on_error:
            raise UsageError(text)
        self.exit(2, f"{self.name}: error: {text}\n")

    def report(self, message: Any, file: Any = None) -> int:
        """Print ``<name>: error: <message>`` as one line on stderr (or ``file``); returns 2, the exit status."""
        print(f"{self.name}: error: {one_line(message)}", file=file or sys.stderr, flush=True)
        return 2


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` ("argument --steps: -1 is below 1; give an integer >= 1")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; give an integer >= {low}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def float_in(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in [low, high] (an end is excluded with ``low_open``/``high_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if high == math.inf:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {interval}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {allowed}") from None
        inside = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {allowed}")
        return value

    parse.__name__ = "float"
    return parse


def check_out_path(path: Any, *, flag: str = "--out", folder: bool = False, suffixes: Sequence[str] = ()) -> Path:
    """``path`` as a Path, once it is sure that a file (``folder=False``) or a folder can be written there: checked
    before any work, so that a long computation does not end in a traceback. Nothing is created.

    Raises:
        UsageError: an empty path; a folder where a file is wanted, or a file where a folder is; a file suffix not
            in ``suffixes`` (when given); a path under a file; a first existing folder that is not writable.
    """
    kind = "folder" if folder else "file"
    allowed = f" ({', '.join(suffixes)})" if suffixes and not folder else ""
    if str(path).strip() == "":
        raise UsageError(f"{flag} is empty; give a {kind} path{allowed}")
    p = Path(path).expanduser()
    if p.exists() and p.is_dir() != folder:
        raise UsageError(f"{flag} {str(path)!r} is a {'file' if folder else 'folder'}; give a {kind} path{allowed}")
    if suffixes and not folder and p.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {str(path)!r}: unsupported file type {p.suffix or '(none)'!r}; use "
                         f"{', '.join(suffixes)}")
    parent = p if folder else p.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {str(path)!r} lies under {str(parent)!r}, which is a file; choose a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r} cannot be written (no write permission in {str(parent)!r}); choose "
                         "a folder you can write to")
    return p
