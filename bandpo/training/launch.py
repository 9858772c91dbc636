"""One training run, top-down: :func:`run` trains (or resumes) the run of a config in a folder.

The steps, in the order :func:`run` takes them (each a function below, in the same order):

1. check the output folder and take its lock (``checks.check_out_dir``, ``run_folder.RunLock``);
2. check the inputs, the accelerator and the point to resume from (:func:`_check_before_work`): a checkpoint whose
   config differs from the requested one beyond :data:`RESUMABLE_CHANGES` is refused;
3. pin the numerics (``trainer.numerics``, ``bandpo.training.pinning``) or set the thread count; on the CPU, keep
   freed memory for reuse (:func:`_keep_freed_memory`);
4. seed, and build the task and the eval sets;
5. build the tokenizer and the policy (:func:`build_tokenizer`, :func:`build_policy`), and record the run
   (``config.yaml``, ``machine.json``);
6. the supervised warm-start, before the first RL checkpoint only (:func:`_warm_start`);
7. the Lightning module and trainer (:func:`build_trainer`: CSV logger, checkpoints, progress bar, strategy);
8. fit (SIGTERM/SIGINT end the step under way with a checkpoint, ``signals.StopRequest``);
9. the summary (``summary.json`` when the run reached ``max_steps``).

Every check before step 4 raises ``checks.UserError`` (one line). The command line (``bandpo.training.cli``)
parses flags into a config and calls :func:`run`; the experiment runners call it directly.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .checks import UserError, check_accelerator, check_inputs, check_out_dir
from .config import TrainConfig
from .console import is_main_process, log, progress_bar_class, quiet_logs, warn
from .run_folder import RunLock, commit_checkpoint, find_resume_checkpoint, verify_checkpoint
from .signals import StopRequest, stop_callback_class

__all__ = ["RESUMABLE_CHANGES", "build_policy", "build_tokenizer", "build_trainer", "run"]

RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every",
                     "trainer.nonfinite", "eval.every", "eval.at_end", "eval.batch_size",
                     "eval.save_samples"}
"""Config keys that may differ between a run and its resumption: how long it runs, what it logs and how often it
checkpoints, evaluates or saves evaluation samples, threads, and what to do on a non-finite loss (to resume a run stopped by one with
``skip``). Everything else (method, loss settings, seed, lr, model, data, batch sizes, hardware layout) changes
the run and is refused."""


def run(cfg: TrainConfig, out: Union[str, Path], *, extra_callbacks: Sequence[Any] = (),
        warmstart_cache: Union[str, Path, None] = None) -> dict:
    """Train (or resume) the run described by ``cfg`` into the folder ``out``; returns ``summary.json``'s dict.

    Checks the output folder and takes its lock (``run_folder.RunLock``; the main process only, other DDP ranks are
    its children), checks paths and the checkpoint to resume before any work, builds tokenizer, policy, task, the
    warm-start (before the first RL checkpoint only), reference policy, module and trainer, then fits. SIGTERM and
    SIGINT end the warm-start or the RL step under way with a checkpoint (``summary["stopped_by"]``).

    ``warmstart_cache``: a folder where finished warm-starts are kept by :func:`warmstart_key`; a run whose key is
    there loads those weights instead of training them again (the same bits: the warm-start is deterministic and
    reads no setting the key leaves out; ``tests/test_testbed_runner.py`` and ``tests/test_pinning.py`` check that a
    run is bit-identical with and without the cache). Grid runners pass one so that the methods of a seed share one warm-start.
    """
    out = check_out_dir(out)
    with RunLock(out) if is_main_process() else contextlib.nullcontext():
        return _run_in_locked_folder(cfg, out, extra_callbacks, warmstart_cache)


def _run_in_locked_folder(cfg: TrainConfig, out: Path, extra_callbacks: Sequence[Any],
                          warmstart_cache: Union[str, Path, None] = None) -> dict:
    """The steps of :func:`run` after the lock is taken, in order; each is defined below, in this order."""
    resume = _check_before_work(cfg, out)
    _pin_numerics(cfg)
    if cfg.trainer.accelerator == "cpu":
        _keep_freed_memory()
    _import_trainer_libraries()
    t_start = time.time()
    task, eval_sets = _build_task_and_eval_sets(cfg)
    with StopRequest() as stop, warnings.catch_warnings():
        tokenizer = build_tokenizer(cfg)
        policy = build_policy(cfg, tokenizer)
        _record_run(cfg, out, resumed=resume.ckpt is not None)
        if resume.ckpt is None and cfg.warmstart.steps > 0:
            done = _warm_start(cfg, out, policy, tokenizer, task, resume.warmstart, stop, warmstart_cache)
            if done < cfg.warmstart.steps:  # stopped by a signal, with a checkpoint
                return _stopped_in_warm_start(cfg, out, stop, done, t_start)
        module = _build_module(cfg, policy, tokenizer, task, eval_sets)
        if resume.ckpt is not None:
            log(f"resuming from {resume.ckpt}")
        trainer = build_trainer(cfg, out, extra_callbacks, stop=stop)
        _fit(trainer, module, resume.ckpt, stop)
    return _summary(cfg, out, module, trainer, stop, t_start)


# ----------------------------------------------------------------------------------------------------------
# Step 2: inputs, accelerator, the point to resume from
# ----------------------------------------------------------------------------------------------------------


def _check_before_work(cfg: TrainConfig, out: Path) -> "_Resume":
    """Step 2: the inputs are on this machine (``checks.check_inputs``), the accelerator exists, and ``out`` holds
    nothing or a run this config may resume (:func:`_check_resume`). Every failure is a ``UserError``."""
    try:
        check_inputs(cfg)
        check_accelerator(cfg.trainer.accelerator)
        return _check_resume(cfg, out)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from None


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
    folder = out / "checkpoints"
    ckpt = find_resume_checkpoint(folder, main=is_main_process())
    warm = None
    if ckpt is None and (folder / "warmstart.ckpt").exists():
        warm = folder / "warmstart.ckpt"
        why = verify_checkpoint(warm)
        if why is not None:
            if is_main_process():
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


def _saved_config(ckpt: Path, key: str) -> dict:
    """The config stored in a checkpoint (``ckpt[key]["config"]``), reading only its pickle (tensors are mapped)."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        return state[key]["config"]
    except Exception as e:  # noqa: BLE001 - a verified file that is not ours: one line naming it
        raise UserError(f"cannot resume from {str(ckpt)!r}: it holds no bandpo run state ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); delete it to restart the run from "
                        "scratch") from None


def _differing_keys(old: Any, cfg: TrainConfig) -> list:
    """Keys of a saved config that differ from ``cfg``'s, besides ``RESUMABLE_CHANGES``."""
    try:  # a config saved by an earlier version: its missing keys take their defaults
        old = TrainConfig.from_dict(old).to_dict()
    except (ValueError, TypeError):
        pass
    return [k for k in _diff(old if isinstance(old, dict) else {}, cfg.to_dict()) if k not in RESUMABLE_CHANGES]


def _diff(a: dict, b: dict, prefix: str = "") -> list:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


# ----------------------------------------------------------------------------------------------------------
# Steps 3 and 4: numerics, task and eval sets
# ----------------------------------------------------------------------------------------------------------


def _pin_numerics(cfg: TrainConfig) -> None:
    """Step 3: with ``trainer.numerics: pinned``, check that this process runs pinned (else a ``UserError``) and
    apply the pinned mode (``pinning.apply``); otherwise set torch's thread count (``trainer.num_threads``, default
    min(4, CPUs))."""
    import torch

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


KEEP_FREED_BYTES = 1 << 30
"""glibc's trim and mmap thresholds in a CPU run (:func:`_keep_freed_memory`)."""


def _keep_freed_memory() -> bool:
    """Step 3, CPU runs: let glibc's allocator keep freed memory for reuse (``mallopt``: no trimming of the heap below
    :data:`KEEP_FREED_BYTES`, no fresh ``mmap`` for buffers below it). By default glibc hands large freed buffers
    back to the kernel and every RL step faults the same activations in again (14,000-21,000 page faults per RL
    step of ``benchmarks/trainer_speed.py``, 8% of its CPU time, measured); kept, the process's resident memory stays
    at its high-water mark, which a CPU run reaches at every step anyway. Tensors are 64-byte aligned whatever the
    allocator does, so no number changes. Process-wide and not undone (glibc cannot go back to its adaptive
    thresholds). Returns whether it was applied (False off glibc)."""
    import ctypes
    import ctypes.util

    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's parameter numbers (malloc.h)
    return bool(mallopt(m_trim_threshold, KEEP_FREED_BYTES)) and bool(mallopt(m_mmap_threshold, KEEP_FREED_BYTES))


def _import_trainer_libraries() -> None:
    """Import Lightning and the module before the run's clock starts (``wall_s_this_process`` counts the run, not
    the imports)."""
    import lightning  # noqa: F401
    from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: F401

    from .evaluation import build_eval_sets  # noqa: F401
    from .module import BandPOModule  # noqa: F401
    from .tasks import build_task  # noqa: F401


def _build_task_and_eval_sets(cfg: TrainConfig) -> tuple:
    """Step 4: seed every generator with ``trainer.seed``, then build the task and the eval sets (a bad data file
    is a ``UserError``). Returns ``(task, eval_sets)``."""
    import lightning as L

    from .evaluation import build_eval_sets
    from .tasks import build_task

    L.seed_everything(cfg.trainer.seed, workers=False, verbose=False)
    try:
        task = build_task(cfg.task, cfg.trainer.seed)
        eval_sets = build_eval_sets(cfg.eval.sets, task, cfg.task)
    except ValueError as e:
        raise UserError(str(e)) from None
    return task, eval_sets


# ----------------------------------------------------------------------------------------------------------
# Step 5: tokenizer, policy, the run's record
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


def _record_run(cfg: TrainConfig, out: Path, resumed: bool) -> None:
    """Step 5 (end): the main process writes ``config.yaml`` and adds this process to ``machine.json``."""
    from . import pinning

    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        cfg.to_yaml(out / "config.yaml")
        pinning.write_machine_record(out, cfg.trainer.numerics, resumed=resumed)


# ----------------------------------------------------------------------------------------------------------
# Step 6: the supervised warm-start
# ----------------------------------------------------------------------------------------------------------


WARMSTART_IGNORES = {"loss": None, "objective": None, "optim": None,
                     "trainer": ("max_steps", "checkpoint_every", "progress_bar", "nonfinite")}
"""The settings the warm-start never reads (whole sections: None), left out of :func:`warmstart_key`."""


def warmstart_key(cfg: TrainConfig) -> str:
    """24 hex digits naming a run's warm-start: the SHA-256 of the config without :data:`WARMSTART_IGNORES` (the
    method, its loss settings, the RL optimiser, the run length), the library versions, the SHA-256 of this
    package's training code (``bandpo/training/*.py``: an edited checkout is another key) and, outside the pinned
    mode, the numerics the machine picks (the CPU and its vector ISA, or the accelerator). Runs with equal keys
    start RL from the same weights, so a cache kept across commands or machines never hands over weights another
    computation made."""
    import hashlib

    from .pinning import _cpu_info, _versions

    d = cfg.to_dict()
    for section, fields in WARMSTART_IGNORES.items():
        if fields is None:
            d.pop(section, None)
        else:
            d[section] = {k: v for k, v in d[section].items() if k not in fields}
    d["versions"] = _versions()  # python, torch, numpy, lightning, transformers, tokenizers, bandpo
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes())
    d["training_code"] = code.hexdigest()
    if cfg.trainer.numerics != "pinned":
        import torch

        d["machine"] = {"cpu": _cpu_info(), "aten": torch.backends.cpu.get_cpu_capability(),
                        "cuda": torch.cuda.get_device_name() if cfg.trainer.accelerator in ("gpu", "cuda")
                        and torch.cuda.is_available() else None}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:24]


def warmstart_cache_file(cfg: TrainConfig, cache: Union[str, Path]) -> Path:
    """Where a finished warm-start of ``cfg`` is kept in the folder ``cache`` (its SHA-256 file beside it)."""
    return Path(cache) / f"warmstart-{warmstart_key(cfg)}.pt"


def _cached_warm_start(cfg: TrainConfig, out: Path, policy: Any, cache: Path) -> bool:
    """Load the warm-start of ``cfg`` from ``cache`` into ``policy`` and write ``warmstart.json``; False when the
    cache has no verified copy (a damaged one is ignored with a warning and trained again)."""
    import torch

    path = warmstart_cache_file(cfg, cache)
    if not path.is_file():
        return False
    why = verify_checkpoint(path)
    if why is not None:
        warn(f"{path} {why}; training the warm-start again")
        return False
    saved = torch.load(path, map_location="cpu", weights_only=False)["bandpo_warmstart_cache"]
    policy.load_state_dict(saved["model"])
    log(f"supervised warm-start: {cfg.warmstart.steps} steps, reused from {path}")
    if is_main_process():
        stats = {**saved["stats"], "reused_from": str(path)}
        (out / "warmstart.json").write_text(json.dumps(stats, indent=1) + "\n")
    return True


def _store_warm_start(cfg: TrainConfig, policy: Any, stats: dict, cache: Path) -> None:
    """Keep a finished warm-start in ``cache`` (written whole, then renamed, with its SHA-256 beside it)."""
    import torch

    if not is_main_process():
        return
    cache.mkdir(parents=True, exist_ok=True)
    path = warmstart_cache_file(cfg, cache)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"bandpo_warmstart_cache": {"model": policy.state_dict(), "stats": stats}}, tmp)
    commit_checkpoint(tmp, path)


def _warm_start(cfg: TrainConfig, out: Path, policy: Any, tokenizer: Any, task: Any, resume: Optional[Path],
                stop: Any, cache: Union[str, Path, None] = None) -> int:
    """The supervised warm-start (``rollout.warm_start``), continued from the checkpoint ``resume`` when given,
    or loaded from the folder ``cache`` when it holds this config's (:func:`warmstart_key`).

    A SIGTERM/SIGINT (``stop``) ends it after the step under way: the weights, the optimiser state and the step go
    to ``checkpoints/warmstart.ckpt`` (with its SHA-256), from which a rerun continues bit for bit. At the end,
    ``warmstart.json`` is written. Returns the number of warm-start steps done.
    """
    import torch

    from .rollout import warm_start

    w = cfg.warmstart
    cache = Path(cache) if cache is not None else None
    if cache is not None and resume is None and _cached_warm_start(cfg, out, policy, cache):
        return w.steps
    state, wall_before = None, 0.0
    if resume is not None:
        saved = torch.load(resume, map_location="cpu", weights_only=False)["bandpo_warmstart"]
        policy.load_state_dict(saved["model"])
        state, wall_before = saved["state"], float(saved["wall_s"])
        log(f"resuming the supervised warm-start at step {state['step']} of {w.steps} from {resume}")
    else:
        log(f"supervised warm-start: {w.steps} steps of {w.batch_size} examples, lr {w.lr}")
    t0 = time.time()
    stats = warm_start(policy, tokenizer, task.sft_rows, steps=w.steps, lr=w.lr, batch_size=w.batch_size,
                       log=log, state=state, should_stop=lambda: stop.signum is not None, lean=cfg.model.lean_forward)
    wall = wall_before + time.time() - t0
    if "state" in stats:
        if is_main_process():
            folder = out / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "warmstart.ckpt.tmp"
            torch.save({"bandpo_warmstart": {"state": stats["state"], "model": policy.state_dict(),
                                             "config": cfg.to_dict(), "wall_s": wall}}, tmp)
            commit_checkpoint(tmp, folder / "warmstart.ckpt")
        return int(stats["state"]["step"])
    stats["wall_s"] = wall
    if is_main_process():
        (out / "warmstart.json").write_text(json.dumps(stats, indent=1) + "\n")
    if cache is not None:
        _store_warm_start(cfg, policy, stats, cache)
    return w.steps


def _stopped_in_warm_start(cfg: TrainConfig, out: Path, stop: StopRequest, done: int, t_start: float) -> dict:
    """The summary of a run stopped by a signal during the warm-start (its checkpoint is ``warmstart.ckpt``)."""
    return {"completed_steps": 0, "max_steps": cfg.trainer.max_steps,
            "wall_s_this_process": time.time() - t_start, "stopped_by": stop.name,
            "signal": int(stop.signum), "checkpoint": str(out / "checkpoints" / "warmstart.ckpt"),
            "stopped_after": f"warm-start step {done} of {cfg.warmstart.steps}"}


def _build_module(cfg: TrainConfig, policy: Any, tokenizer: Any, task: Any, eval_sets: list) -> Any:
    """Step 7: the Lightning module, with a frozen copy of the (warm-started) policy as the KL reference when
    ``objective.kl_coef`` > 0."""
    from .module import BandPOModule

    ref = copy.deepcopy(policy) if cfg.objective.kl_coef > 0 else None
    return BandPOModule(policy, tokenizer, cfg, task, ref_policy=ref, store_ref=cfg.warmstart.steps > 0,
                        eval_sets=eval_sets)


# ----------------------------------------------------------------------------------------------------------
# Step 7: the Lightning trainer (an appending CSV logger, atomic checkpoints, a progress bar)
# ----------------------------------------------------------------------------------------------------------


def build_trainer(cfg: TrainConfig, out: Path, extra_callbacks: Sequence[Any] = (), stop: Any = None) -> Any:
    """The Lightning ``Trainer`` of a run writing into ``out``; ``stop`` (a ``signals.StopRequest``) makes
    SIGTERM/SIGINT end the run cleanly after the current RL step, with a checkpoint."""
    import lightning as L

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
                log(f"resumed at RL step {pl_module.rl_step} of {pl_module.cfg.trainer.max_steps}")
            if trainer.is_global_zero and trainer.logger is not None:
                dropped = trainer.logger.experiment.drop_steps_from(pl_module.rl_step)
                if dropped:
                    log(f"dropped {dropped} metrics rows after the checkpoint (step >= {pl_module.rl_step})")

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


# ----------------------------------------------------------------------------------------------------------
# Steps 8 and 9: fit, summary
# ----------------------------------------------------------------------------------------------------------


def _fit(trainer: Any, module: Any, ckpt: Optional[Path], stop: StopRequest) -> None:
    """Step 8: train from the start or from ``ckpt`` until ``max_steps`` or a signal (recorded in ``stop``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt is not None else None)
    except SIGTERMException:  # Lightning's own SIGTERM exit, raised after our checkpoint was written
        if stop.signum is None:
            import signal

            stop.signum = int(signal.SIGTERM)


def _summary(cfg: TrainConfig, out: Path, module: Any, trainer: Any, stop: StopRequest, t_start: float) -> dict:
    """Step 9: what :func:`run` returns; written to ``summary.json`` (with the last metrics row) when the run
    reached ``max_steps``."""
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
