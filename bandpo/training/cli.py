"""Train a language model with BandPO (or a baseline) from the command line or from Python.

    python -m bandpo.training --preset tiny-cpu --method band_kl --delta 0.05 --max-steps 300 \\
        --seed 0 --out runs/tiny-band
    python -m bandpo.training --config bandpo/training/presets/paper-bandpo-kl.yaml --out runs/qwen3b-bandkl
    python -m bandpo.training --config bandpo/training/presets/paper-bandpo-kl.yaml --dry-run --out /tmp/dry   # CPU check

Every config field is also a flag (``--loss.delta 0.1``, ``--rollout.group_size 16``; ``python -m bandpo.training
--help`` lists them with their docstrings); the loss options and a few others have short aliases
(``--method --divergence --delta --delta-schedule --delta-end --delta-steps --eps-low --eps-high --r-max
--dual-clip --max-ratio --agg --kl-coef --lr --max-steps --seed --devices --strategy --accelerator --precision``;
``--method`` takes an id of ``bandpo.list_methods()``, e.g. band_kl, clip, clip_higher, dcpo). ``none`` sets an
optional value to None.

What a run writes in ``--out`` (DIR):

* ``DIR/config.yaml``: the resolved config (every field, after the preset/file/flags);
* ``DIR/metrics.csv``: one row per RL step (Lightning ``CSVLogger``), column ``step`` = RL step index from 0;
* ``DIR/checkpoints/last.ckpt``: written atomically every ``trainer.checkpoint_every`` steps and at the end, with
  its SHA-256 in ``last.ckpt.sha256``; the one before it is kept as ``prev.ckpt`` (``prev.ckpt.sha256``);
* ``DIR/warmstart.json``: the supervised warm-start's final loss/accuracy (when there is one);
* ``DIR/eval.csv``: with ``eval.sets``, one row per held-out evaluation (mean@n, pass@k, maj@k per set);
* ``DIR/eval_samples/step_<step>.jsonl.gz``: with ``eval.sets``, every evaluation's samples (set, problem, id,
  sample, seed, completion, extracted answer, ground truth, verdict, tokens); ``evaluation.metrics_from_samples``
  recomputes ``eval.csv`` from them;
* ``DIR/.lock``: held (``flock``) by the process that owns the run folder; it names the holder;
* ``DIR/summary.json``: written when the run reaches ``max_steps`` (the last row, wall time);
* ``DIR/machine.json``: per process that trained it, the CPU (model, ISA flags), the numerical mode
  (``trainer.numerics``: what torch and MKL actually chose) and the library versions (``bandpo.training.pinning``).

With ``trainer.numerics: pinned`` (the CPU presets) the command restarts itself with the pinned environment before any
work, so that its numbers are the same bits on every x86-64 CPU with AVX2 (docs/reproducibility.md); ``--no-pin``
runs with this CPU's own code paths.

SIGTERM or SIGINT (Ctrl-C): the current RL step (or supervised warm-start step) finishes, ``last.ckpt`` (or
``checkpoints/warmstart.ckpt``) is written, one line says how to resume, and the command exits with 128 + the signal
number (143, 130). Bad flags, paths, configs and checkpoints are reported as one line (``bandpo.training: error:
...``, exit status 2; ``bandpo.cli``); usage is printed only by ``--help``.

Resuming: running the same command again with the same DIR resumes from ``last.ckpt`` after checking its SHA-256
(a damaged one: from ``prev.ckpt``, the checkpoint before it, with a warning). Only ``trainer.max_steps``,
``progress_bar``, ``num_threads``, ``checkpoint_every``, ``nonfinite``, ``eval.every``, ``eval.at_end``, ``eval.batch_size`` and
``eval.save_samples`` may
differ from the config saved in the checkpoint and in config.yaml (``RESUMABLE_CHANGES``). One process at a time
owns DIR (a lock on ``DIR/.lock``): a second run into it stops at once, naming the first. Rows of steps after the
checkpoint (done by a killed process, whose updates were lost) are dropped and recomputed; every earlier row is kept
and new rows are appended. On CPU with a fixed seed the resumed metrics
equal those of an uninterrupted run (timing columns aside).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..cli import ArgumentParser
from .config import SECTIONS, TrainConfig, field_docs, list_presets, load_config, preset_path

__all__ = ["build_policy", "build_tokenizer", "check_inputs", "dry_run_config", "main", "run"]

RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every",
                     "trainer.nonfinite", "eval.every", "eval.at_end", "eval.batch_size",
                     "eval.save_samples"}
"""Config keys that may differ between a run and its resumption: how long it runs, what it logs and how often it
checkpoints, evaluates or saves evaluation samples, threads, and what to do on a non-finite loss (to resume a run stopped by one with
``skip``). Everything else (method, loss settings, seed, lr, model, data, batch sizes, hardware layout) changes
the run and is refused."""

ALIASES = {
    "method": "loss.method", "divergence": "loss.divergence", "delta": "loss.delta",
    "delta-schedule": "loss.delta_schedule", "delta-end": "loss.delta_end", "delta-steps": "loss.delta_steps",
    "eps-low": "loss.eps_low", "eps-high": "loss.eps_high", "r-max": "loss.r_max", "dual-clip": "loss.dual_clip",
    "max-ratio": "loss.max_ratio", "agg": "loss.agg", "kl-coef": "objective.kl_coef", "lr": "optim.lr", "max-steps": "trainer.max_steps", "seed": "trainer.seed",
    "devices": "trainer.devices", "strategy": "trainer.strategy", "accelerator": "trainer.accelerator",
    "precision": "trainer.precision",
}


def _log(msg: str) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"[bandpo] {msg}", flush=True)


def _is_main_process() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


# ----------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ----------------------------------------------------------------------------------------------------------


def build_tokenizer(cfg: TrainConfig) -> Any:
    """The character tokenizer for the tiny model, else ``AutoTokenizer`` from the local path / HF cache."""
    from .tokenizer import build_char_tokenizer

    m = cfg.model
    if m.name_or_path is None:
        return build_char_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code,
                                        local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_policy(cfg: TrainConfig, tokenizer: Any) -> Any:
    """The tiny random model (seeded by ``trainer.seed``) or ``AutoModelForCausalLM`` from a local source."""
    import torch

    m = cfg.model
    dtype = getattr(torch, m.dtype)
    if m.name_or_path is None:
        import transformers

        config_cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[m.arch]
        hf_cfg = config_cls(
            vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
            max_position_embeddings=m.max_positions, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            attn_implementation=m.attn_implementation,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.trainer.seed)
            model = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            m.name_or_path, dtype=dtype, attn_implementation=m.attn_implementation,
            trust_remote_code=m.trust_remote_code, local_files_only=True,
        )
    if m.gradient_checkpointing:  # newer transformers renamed it; the old name warns
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.config.use_cache = False
    # from_pretrained returns a model in eval mode, and transformers' gradient checkpointing only acts in training
    # mode: without this a downloaded model would train with checkpointing silently off (and Lightning warns).
    model.train()
    return model


# ----------------------------------------------------------------------------------------------------------
# Lightning pieces: an appending CSV logger, atomic checkpoints, a progress bar with a total
# ----------------------------------------------------------------------------------------------------------


def _lightning_pieces() -> tuple:
    """Classes that subclass Lightning's, defined on first use so that importing this module stays cheap."""
    import lightning as L
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        """Keeps an existing metrics.csv (Lightning's writer deletes it) and continues its header."""

        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])

        def drop_steps_from(self, step: int) -> int:
            """Remove rows with ``step >= step`` (written after the checkpoint being resumed). Returns how many."""
            if not os.path.isfile(self.metrics_file_path):
                return 0
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                fields, rows = reader.fieldnames or [], list(reader)
            keep = [r for r in rows if int(float(r["step"])) < step]
            if len(keep) != len(rows):
                tmp = self.metrics_file_path + ".tmp"
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(keep)
                os.replace(tmp, self.metrics_file_path)
            return len(rows) - len(keep)

    class AppendingCSVLogger(CSVLogger):
        """``CSVLogger`` writing ``DIR/metrics.csv`` directly and appending to it on resume."""

        @property
        @rank_zero_experiment
        def experiment(self) -> AppendingWriter:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    class RLCheckpoint(L.Callback):
        """Save ``last.ckpt`` every ``every`` RL steps and at the end, atomically (write, then rename)."""

        def __init__(self, dirpath: Path, every: int) -> None:
            self.dirpath, self.every, self._saved_at = Path(dirpath), every, -1

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # Resuming at step k: rows >= k belong to updates that were lost with the killed process.
            if pl_module.rl_step > 0:
                _log(f"resumed at RL step {pl_module.rl_step} of {pl_module.cfg.trainer.max_steps}")
            if trainer.is_global_zero and trainer.logger is not None:
                dropped = trainer.logger.experiment.drop_steps_from(pl_module.rl_step)
                if dropped:
                    _log(f"dropped {dropped} metrics rows after the checkpoint (step >= {pl_module.rl_step})")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if pl_module.rl_step % self.every == 0 or trainer.should_stop:
                self.save(trainer, pl_module)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.save(trainer, pl_module)

        def save(self, trainer: Any, pl_module: Any) -> None:
            if self._saved_at == pl_module.rl_step:
                return
            self.dirpath.mkdir(parents=True, exist_ok=True)
            tmp = self.dirpath / "last.ckpt.tmp"
            trainer.save_checkpoint(tmp)
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                # last.ckpt with its SHA-256; the checkpoint it replaces becomes prev.ckpt
                commit_checkpoint(tmp, self.dirpath / "last.ckpt", previous=self.dirpath / "prev.ckpt")
                for stale in (self.dirpath / "warmstart.ckpt", self.dirpath / "warmstart.ckpt.sha256"):
                    if stale.exists():  # the RL checkpoint holds the warm-started weights from now on
                        stale.unlink()
            trainer.strategy.barrier()
            self._saved_at = pl_module.rl_step

    from .console import progress_bar_class
    from .run_folder import commit_checkpoint

    return AppendingCSVLogger, RLCheckpoint, progress_bar_class()


def _strategy(cfg: TrainConfig) -> Any:
    t = cfg.trainer
    if t.strategy == "fsdp":
        import transformers
        from lightning.pytorch.strategies import FSDPStrategy

        layers = set()
        for name in t.fsdp_wrap:
            cls = getattr(transformers, name, None)
            if cls is None:
                for mod in list(sys.modules.values()):
                    if getattr(mod, "__name__", "").startswith("transformers.models.") and hasattr(mod, name):
                        cls = getattr(mod, name)
                        break
            if cls is None:
                raise ValueError(f"trainer.fsdp_wrap: no transformers class named {name!r} (load the model first)")
            layers.add(cls)
        return FSDPStrategy(auto_wrap_policy=layers or None, activation_checkpointing_policy=None,
                            state_dict_type="full", use_orig_params=True)
    if t.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    return t.strategy


def build_trainer(cfg: TrainConfig, out: Path, extra_callbacks: Sequence[Any] = (), stop: Any = None) -> Any:
    """The Lightning ``Trainer`` of a run writing into ``out``; ``stop`` (a ``signals.StopRequest``) makes
    SIGTERM/SIGINT end the run cleanly after the current RL step, with a checkpoint."""
    import lightning as L

    from .console import quiet_logs
    from .signals import stop_callback_class

    quiet_logs()
    AppendingCSVLogger, RLCheckpoint, StepsProgressBar = _lightning_pieces()
    t = cfg.trainer
    callbacks = [stop_callback_class()(stop)] if stop is not None else []
    callbacks += [RLCheckpoint(out / "checkpoints", t.checkpoint_every), *extra_callbacks]
    if t.progress_bar:
        callbacks.append(StepsProgressBar(leave=True))
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=_strategy(cfg),
        precision=t.precision, max_epochs=-1, max_steps=-1, logger=AppendingCSVLogger(str(out), name="", version=""),
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=t.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
        deterministic=t.deterministic, default_root_dir=str(out), log_every_n_steps=1,
    )
    if stop is not None and hasattr(trainer, "_signal_connector"):
        # The StopRequest handles SIGTERM. Lightning's own notifier would end the run on the signalled process only
        # (after the step, with exit status 0) and broadcast from inside the signal handler; it is switched off.
        trainer._signal_connector._sigterm_notifier_fn = lambda signum, frame: None
    return trainer


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------


def _diff(a: dict, b: dict, prefix: str = "") -> list:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _differing_keys(old: Any, cfg: TrainConfig) -> list:
    """Keys of a saved config that differ from ``cfg``'s, besides ``RESUMABLE_CHANGES``."""
    try:  # a config saved by an earlier version: its missing keys take their defaults
        old = TrainConfig.from_dict(old).to_dict()
    except (ValueError, TypeError):
        pass
    return [k for k in _diff(old if isinstance(old, dict) else {}, cfg.to_dict()) if k not in RESUMABLE_CHANGES]


def _saved_config(ckpt: Path, key: str) -> dict:
    """The config stored in a checkpoint (``ckpt[key]["config"]``), reading only its pickle (tensors are mapped)."""
    import torch

    from .checks import UserError

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        return state[key]["config"]
    except Exception as e:  # noqa: BLE001 - a verified file that is not ours: one line naming it
        raise UserError(f"cannot resume from {str(ckpt)!r}: it holds no bandpo run state ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); delete it to restart the run from "
                        "scratch") from None


class _Resume(typing.NamedTuple):
    """Where a run continues: an RL checkpoint, or (before the first one) an interrupted warm-start."""

    ckpt: Optional[Path]
    warmstart: Optional[Path]


def _check_resume(cfg: TrainConfig, out: Path) -> _Resume:
    """The checkpoint to resume from (none for a fresh run); raises if ``out`` holds a different run.

    The RL checkpoint is ``last.ckpt`` if its SHA-256 matches, else ``prev.ckpt`` with a warning
    (``run_folder.find_resume_checkpoint``); without one, an interrupted warm-start's ``warmstart.ckpt`` (a damaged
    one is set aside with a warning: the warm-start reruns from its start, to the same weights). The config saved
    in the checkpoint and ``config.yaml`` (each when there) must equal ``cfg`` up to ``RESUMABLE_CHANGES``.
    """
    from .checks import UserError
    from .console import warn
    from .run_folder import find_resume_checkpoint, verify_checkpoint

    folder = out / "checkpoints"
    ckpt = find_resume_checkpoint(folder, main=_is_main_process())
    warm = None
    if ckpt is None and (folder / "warmstart.ckpt").exists():
        warm = folder / "warmstart.ckpt"
        why = verify_checkpoint(warm)
        if why is not None:
            if _is_main_process():
                os.replace(warm, folder / "warmstart.ckpt.damaged")
            warn(f"{warm} {why}; the warm-start starts again from step 0 (it is deterministic: same result)")
            warm = None
    differ: list = []
    if ckpt is not None or warm is not None:
        differ += _differing_keys(_saved_config(ckpt or warm, "bandpo" if ckpt else "bandpo_warmstart"), cfg)
    saved = out / "config.yaml"
    if saved.is_file():
        import yaml

        try:
            old = yaml.safe_load(saved.read_text())
        except yaml.YAMLError:
            raise UserError(f"{saved} is not valid YAML; delete it (and {out / 'checkpoints'}) to restart the run "
                            "or choose another --out") from None
        differ += [k for k in _differing_keys(old or {}, cfg) if k not in differ]
    if differ:
        raise UserError(f"{out} holds a run with a different config (keys {sorted(differ)}); resume it with the same "
                        f"settings or choose another --out")
    return _Resume(ckpt, warm)


def check_inputs(cfg: TrainConfig) -> None:
    """Raise a one-line ``ValueError`` when the model, tokenizer or data of ``cfg`` are not on this machine: all
    of them named at once when several are missing (``checks.missing_inputs``), else ``cfg.check_paths()``'s
    message."""
    from .checks import missing_inputs, missing_inputs_message

    gone = missing_inputs(cfg)
    if len(gone) > 1:
        raise ValueError(missing_inputs_message(gone))
    cfg.check_paths()


def run(cfg: TrainConfig, out: Union[str, Path], *, extra_callbacks: Sequence[Any] = ()) -> dict:
    """Train (or resume) the run described by ``cfg`` into the folder ``out``; returns ``summary.json``'s dict.

    Checks the output folder and takes its lock (``run_folder.RunLock``; the main process only, other DDP ranks are
    its children), checks paths and the checkpoint to resume before any work, builds tokenizer, policy, task, the
    warm-start (before the first RL checkpoint only), reference policy, module and trainer, then fits. SIGTERM and
    SIGINT end the warm-start or the RL step under way with a checkpoint (``summary["stopped_by"]``).
    """
    import contextlib

    from .checks import check_out_dir
    from .run_folder import RunLock

    out = check_out_dir(out)
    with RunLock(out) if _is_main_process() else contextlib.nullcontext():
        return _run_in_locked_folder(cfg, out, extra_callbacks)


def _run_in_locked_folder(cfg: TrainConfig, out: Path, extra_callbacks: Sequence[Any]) -> dict:
    import torch

    from .checks import UserError, check_accelerator
    from .signals import StopRequest

    try:
        check_inputs(cfg)
        check_accelerator(cfg.trainer.accelerator)
        resume = _check_resume(cfg, out)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = resume.ckpt
    from . import pinning

    if cfg.trainer.numerics == "pinned":
        found = pinning.problems()
        if found:
            raise UserError("trainer.numerics is 'pinned' but this process is not: " + "; ".join(found) + ". "
                            "python -m bandpo.training and the experiment runners restart themselves pinned; from "
                            "Python, start under `python -m bandpo.training.pinning python ...`, or set "
                            "trainer.numerics 'native' (--no-pin)")
        pinning.apply(cfg.trainer.num_threads)
    else:
        torch.set_num_threads(cfg.trainer.num_threads or min(4, os.cpu_count() or 1))

    import warnings

    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .evaluation import build_eval_sets
    from .module import BandPOModule
    from .tasks import build_task

    t_start = time.time()
    L.seed_everything(cfg.trainer.seed, workers=False, verbose=False)
    try:
        task = build_task(cfg.task, cfg.trainer.seed)
        eval_sets = build_eval_sets(cfg.eval.sets, task, cfg.task)
    except ValueError as e:
        raise UserError(str(e)) from None
    with StopRequest() as stop, warnings.catch_warnings():
        tokenizer = build_tokenizer(cfg)
        policy = build_policy(cfg, tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        if _is_main_process():
            cfg.to_yaml(out / "config.yaml")
            pinning.write_machine_record(out, cfg.trainer.numerics, resumed=ckpt is not None)
        if ckpt is None and cfg.warmstart.steps > 0:
            done = _warm_start(cfg, out, policy, tokenizer, task, resume.warmstart, stop)
            if done < cfg.warmstart.steps:  # stopped by a signal, with a checkpoint
                return {"completed_steps": 0, "max_steps": cfg.trainer.max_steps,
                        "wall_s_this_process": time.time() - t_start, "stopped_by": stop.name,
                        "signal": int(stop.signum), "checkpoint": str(out / "checkpoints" / "warmstart.ckpt"),
                        "stopped_after": f"warm-start step {done} of {cfg.warmstart.steps}"}
        ref = copy.deepcopy(policy) if cfg.objective.kl_coef > 0 else None
        module = BandPOModule(policy, tokenizer, cfg, task, ref_policy=ref, store_ref=cfg.warmstart.steps > 0,
                              eval_sets=eval_sets)
        if ckpt is not None:
            _log(f"resuming from {ckpt}")
        trainer = build_trainer(cfg, out, extra_callbacks, stop=stop)
        try:
            trainer.fit(module, ckpt_path=str(ckpt) if ckpt is not None else None)
        except SIGTERMException:  # Lightning's own SIGTERM exit, raised after our checkpoint was written
            if stop.signum is None:
                import signal

                stop.signum = int(signal.SIGTERM)
    summary = {"completed_steps": module.rl_step, "max_steps": cfg.trainer.max_steps,
               "wall_s_this_process": time.time() - t_start}
    if stop.signum is not None and module.rl_step < cfg.trainer.max_steps:
        summary["stopped_by"] = stop.name
        summary["signal"] = int(stop.signum)
        summary["checkpoint"] = str(out / "checkpoints" / "last.ckpt")
        summary["stopped_after"] = f"RL step {module.rl_step} of {cfg.trainer.max_steps}"
    if trainer.is_global_zero and module.rl_step >= cfg.trainer.max_steps:
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        summary["last_row"] = {k: float(v) for k, v in rows[-1].items() if v != ""} if rows else {}
        summary["rows"] = len(rows)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _warm_start(cfg: TrainConfig, out: Path, policy: Any, tokenizer: Any, task: Any, resume: Optional[Path],
                stop: Any) -> int:
    """The supervised warm-start (``rollout.warm_start``), continued from the checkpoint ``resume`` when given.

    A SIGTERM/SIGINT (``stop``) ends it after the step under way: the weights, the optimiser state and the step go
    to ``checkpoints/warmstart.ckpt`` (with its SHA-256), from which a rerun continues bit for bit. At the end,
    ``warmstart.json`` is written. Returns the number of warm-start steps done.
    """
    import torch

    from .rollout import warm_start
    from .run_folder import commit_checkpoint

    w = cfg.warmstart
    state, wall_before = None, 0.0
    if resume is not None:
        saved = torch.load(resume, map_location="cpu", weights_only=False)["bandpo_warmstart"]
        policy.load_state_dict(saved["model"])
        state, wall_before = saved["state"], float(saved["wall_s"])
        _log(f"resuming the supervised warm-start at step {state['step']} of {w.steps} from {resume}")
    else:
        _log(f"supervised warm-start: {w.steps} steps of {w.batch_size} examples, lr {w.lr}")
    t0 = time.time()
    stats = warm_start(policy, tokenizer, task.sft_rows, steps=w.steps, lr=w.lr, batch_size=w.batch_size,
                       log=_log, state=state, should_stop=lambda: stop.signum is not None)
    wall = wall_before + time.time() - t0
    if "state" in stats:
        if _is_main_process():
            folder = out / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "warmstart.ckpt.tmp"
            torch.save({"bandpo_warmstart": {"state": stats["state"], "model": policy.state_dict(),
                                             "config": cfg.to_dict(), "wall_s": wall}}, tmp)
            commit_checkpoint(tmp, folder / "warmstart.ckpt")
        return int(stats["state"]["step"])
    stats["wall_s"] = wall
    if _is_main_process():
        (out / "warmstart.json").write_text(json.dumps(stats, indent=1) + "\n")
    return w.steps


def dry_run_config(cfg: TrainConfig, workdir: Union[str, Path], max_steps: int = 2) -> TrainConfig:
    """``cfg`` with the tiny model substituted: same loss and task logic, CPU-sized everything else.

    The model becomes the tiny random one (character tokenizer, no chat template). A ``math_file`` task whose
    data file is on this machine reads it as is (column mapping and template included); a missing one is replaced
    by a small generated JSONL written to ``workdir``. Eval sets likewise: a file that is here is read (its first 4
    problems), a missing one replaced by 4 generated problems. Batch sizes shrink (keeping G >= 2 and the number
    of optimiser steps per rollout), and the run uses one CPU process in float32 for ``max_steps`` steps.
    """

    d = cfg.to_dict()
    d["model"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_positions": 512,
                  "gradient_checkpointing": cfg.model.gradient_checkpointing}
    if cfg.task.name == "math_file" and (cfg.task.path is None or not Path(cfg.task.path).expanduser().exists()):
        path = Path(workdir) / "dry_run_math.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for i in range(16):
                f.write(json.dumps({"prompt": f"What is {i} + {2 * i}?", "answer": str(3 * i)}) + "\n")
        d["task"].update(path=str(path), prompt_column="prompt", answer_column="answer", chat_template=False)
    d["task"]["chat_template"] = False  # the character tokenizer has no chat template
    from .evaluation import parse_eval_set

    sets = []
    for entry in cfg.eval.sets:
        spec = parse_eval_set(entry)
        if spec.path is None:
            sets.append(entry)
            continue
        if Path(spec.path).expanduser().exists():
            sets.append({**dataclasses.asdict(spec), "limit": min(spec.limit or 4, 4)})
            continue
        path = Path(workdir) / f"dry_run_eval_{spec.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for i in range(4):
                f.write(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n")
        sets.append({"name": spec.name, "path": str(path), "verifier": spec.verifier, "template": spec.template})
    n_eval = min(cfg.eval.n, 4)
    d["eval"].update(sets=sets, n=n_eval, k=[k for k in cfg.eval.k if k <= n_eval] or [1],
                     max_new_tokens=min(cfg.eval.max_new_tokens or 8, 8), micro_batch_size=0)
    n_mb = cfg.rollout.prompts_per_step // cfg.optim.prompts_per_minibatch
    G = min(cfg.rollout.group_size, 4)
    d["rollout"].update(prompts_per_step=n_mb, group_size=G, max_new_tokens=min(cfg.rollout.max_new_tokens, 8),
                        micro_batch_size=0)
    d["optim"].update(prompts_per_minibatch=1, micro_batch_size=G // 2 if cfg.optim.micro_batch_size else 0)
    d["warmstart"].update(steps=min(cfg.warmstart.steps, 2), batch_size=4)
    d["trainer"].update(max_steps=max_steps, accelerator="cpu", devices=1, num_nodes=1, strategy="auto",
                        precision="32-true", fsdp_wrap=[], progress_bar=False, checkpoint_every=max_steps)
    return TrainConfig.from_dict(d)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    """A readable value name for ``--help``: INT, FLOAT, STR, true|false, X,Y,... for lists, |none if optional."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(names + (["none"] if type(None) in args else []))
    if origin in (list, tuple):
        inner = _type_name(args[0]) if args and args[0] is not Any else "V"
        return f"{inner},..."
    return {int: "INT", float: "FLOAT", str: "STR", bool: "true|false"}.get(tp, "V")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value) if all(not isinstance(v, dict) for v in value) else repr(value)
    return str(value)


def build_parser(defaults: Optional[TrainConfig] = None, source: str = "default") -> argparse.ArgumentParser:
    """The CLI: ``--preset``/``--config``, ``--out``, ``--dry-run``, aliases, and ``--<section>.<field>``.

    ``--help`` shows each field's value in ``defaults`` (the config named by ``--preset``/``--config`` when it
    is given before ``--help``), else the built-in default; prefixes of flags are not accepted."""
    p = ArgumentParser(
        prog="python -m bandpo.training", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets: {', '.join(list_presets())}. The values in [brackets] are those of {source}; "
               "`--preset NAME --help` shows a preset's.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a config shipped in bandpo/training/presets (e.g. tiny-cpu)")
    src.add_argument("--config", help="a YAML config file")
    p.add_argument("--out", required=True, help="output folder (metrics.csv, checkpoints/, config.yaml)")
    p.add_argument("--dry-run", action="store_true",
                   help="substitute the tiny model and CPU-sized batches and run 2 steps (checks a GPU config)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    g = p.add_argument_group("shortcuts")
    g.add_argument("--no-pin", dest="trainer.numerics", action="store_const", const="native",
                   help="= --trainer.numerics native: this CPU's fastest code paths instead of the pinned mode of the "
                        "CPU presets (docs/reproducibility.md)")
    for flag, key in ALIASES.items():
        section, _, name = key.partition(".")
        tp = typing.get_type_hints(SECTIONS[section]).get(name, str)
        g.add_argument(f"--{flag}", dest=key, metavar=_type_name(tp), help=f"= --{key}")
    for section, cls in SECTIONS.items():
        grp = p.add_argument_group(f"{section} ({cls.__doc__.splitlines()[0]})")
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if defaults is not None:
                default = getattr(getattr(defaults, section), f.name)
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            grp.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}", metavar=_type_name(hints[f.name]),
                             help=f"{docs.get(f.name, '')} [{_show(default)}]".replace("%", "%%"))
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple:
    """(config, args): the preset/file with flag overrides applied and validated."""
    pre = ArgumentParser(prog="python -m bandpo.training", add_help=False)
    pre.add_argument("--preset")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    defaults, source = None, "the built-in defaults (no --preset or --config)"
    try:
        if known.preset:
            defaults, source = load_config(preset_path(known.preset)), f"the preset {known.preset}"
        elif known.config:
            defaults, source = load_config(known.config), f"the config {known.config}"
    except ValueError:
        pass  # reported below, when the config is loaded for the run
    args = build_parser(defaults, source).parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    path = preset_path(args.preset) if args.preset else args.config
    return load_config(path, overrides), args


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .checks import UserError, check_out_dir, dry_run_report

    entry_point = argv is None  # the process's own command line: it may restart itself in the pinned mode
    argv = list(sys.argv[1:] if argv is None else argv)
    missing: list = []
    try:
        cfg, args = parse_args(argv)
        if entry_point and cfg.trainer.numerics == "pinned" and not args.print_config:
            from .pinning import PinningError, reexec_pinned

            try:
                reexec_pinned()
            except PinningError as e:
                raise ValueError(f"{e} (run with --no-pin for this machine's native numerics)") from None
        if args.dry_run:
            lines, missing = dry_run_report(cfg)
            if _is_main_process():
                _log(f"dry run of {args.config or 'preset ' + str(args.preset or '(defaults)')}: what was checked "
                     "on this machine and what is replaced:")
                for line in lines:
                    print(f"  {line}", flush=True)
            check_out_dir(args.out)
            cfg = dry_run_config(cfg, Path(args.out) / "dry-run-data")
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        check_inputs(cfg)
    except ValueError as e:
        print(f"bandpo.training: error: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg, args.out)
    except UserError as e:  # found before training started (errors during training keep their traceback)
        print(f"bandpo.training: error: {e}", file=sys.stderr)
        return 2
    if summary.get("stopped_by"):
        if _is_main_process():
            import shlex

            _log(f"stopped by {summary['stopped_by']} after {summary['stopped_after']}; checkpoint "
                 f"{summary['checkpoint']}; resume with: python -m bandpo.training {shlex.join(argv)}")
        return 128 + summary["signal"]
    if summary["completed_steps"] < summary["max_steps"]:
        _log(f"stopped at step {summary['completed_steps']} of {summary['max_steps']}; run the same command again "
             "to resume from the last checkpoint")
        return 1
    if _is_main_process():
        last = summary.get("last_row", {})
        _log(f"done: {summary['completed_steps']}/{summary['max_steps']} steps; last reward "
             f"{last.get('reward/mean', float('nan')):.4f}, accuracy {last.get('accuracy', float('nan')):.4f}, "
             f"entropy {last.get('entropy', float('nan')):.4f}; metrics in {Path(args.out) / 'metrics.csv'}")
        if args.dry_run and missing:
            _log(f"dry run passed with stand-ins, but the real run would FAIL at start-up on this machine: missing "
                 f"{', '.join(missing)}")
        elif args.dry_run:
            _log("dry run passed; every model, tokenizer and data file of the config was found on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
