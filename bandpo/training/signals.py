"""SIGTERM/SIGINT handling: a signal becomes a request to stop after the current step, with a checkpoint.

:class:`StopRequest` turns the first SIGTERM (what cluster schedulers send before they kill a job) or SIGINT
(Ctrl-C) into a request: the current RL step finishes (its rollout and all its optimiser steps), then every process
agrees to stop (one all-reduce per step, :func:`stop_callback_class`), ``checkpoints/last.ckpt`` is written and the
logs are flushed; the command prints where to resume from and exits with 128 + the signal number (143 for SIGTERM,
130 for SIGINT), never 0. A second signal stops at once (the default action). Running the same command again
resumes from that checkpoint, bit for bit on the same machine. The supervised warm-start polls the same request.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

__all__ = ["StopRequest", "stop_callback_class"]


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
