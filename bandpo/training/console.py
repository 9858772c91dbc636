"""What a run prints: one-line warnings, the progress bar, and quiet library logs.

* :func:`log` prints ``[bandpo] ...`` lines and :func:`warn` ``[bandpo] WARNING: ...`` ones, from the main
  process only (:func:`is_main_process`).
* **Progress bar** (:func:`progress_bar_class`): RL steps out of ``max_steps`` with percentage and ETA, also after
  a resume (the rate counts only this process's steps), and reward, accuracy, entropy, clipped fraction, KL and the
  latest eval numbers (:func:`progress_postfix`).
* :func:`quiet_logs` silences library messages a user cannot act on.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional

__all__ = ["is_main_process", "log", "progress_bar_class", "progress_postfix", "quiet_logs", "warn"]


def is_main_process() -> bool:
    """True in the main process (rank 0 of every launcher variable; also when none is set)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def log(msg: str) -> None:
    """Print ``[bandpo] msg`` from the process whose ``LOCAL_RANK`` and ``NODE_RANK`` are 0 (or unset)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"[bandpo] {msg}", flush=True)


def warn(msg: str) -> None:
    """Print a one-line warning (``[bandpo] WARNING: ...``) from the main process."""
    if is_main_process():
        print(f"[bandpo] WARNING: {msg}", flush=True)


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
