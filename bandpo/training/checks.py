"""Start-up checks: what a run verifies before any work, each failure one line (:class:`UserError`).

* :class:`UserError`, a ``ValueError`` whose message is one line naming the path or setting and what to do; the
  command line prints it as ``bandpo.training: error: ...`` and exits with status 2, without a traceback.
* The output folder (:func:`check_out_dir`), a checkpoint's zip structure (:func:`check_checkpoint`) and the
  accelerator (:func:`check_accelerator`).
* The local inputs (model, tokenizer, data, eval sets; nothing is downloaded at run time): :func:`check_inputs`
  refuses a config whose inputs are not on this machine, naming all that are missing (:func:`missing_inputs`).
* ``--dry-run``: its report (:func:`dry_run_report`) says what was found on this machine and what the dry run
  replaces, and :func:`dry_run_config` is the CPU-sized config it runs instead (the tiny model, stand-in data).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "UserError",
    "check_accelerator",
    "check_checkpoint",
    "check_inputs",
    "check_out_dir",
    "dry_run_config",
    "dry_run_report",
    "missing_inputs",
    "missing_inputs_message",
]


class UserError(ValueError):
    """A problem with the command, the config or the files, found before training: printed as one line."""


# ----------------------------------------------------------------------------------------------------------
# Start-up checks
# ----------------------------------------------------------------------------------------------------------


def check_out_dir(out: Any, flag: str = "--out", what: str = "the run") -> Path:
    """``out`` as a Path, after making sure it is a folder this process can write in (created if needed).

    ``flag`` and ``what`` name the option and its use in the messages (``--warmstart-cache``: the cache).

    Raises:
        UserError: ``out`` is empty (it would mean the current folder), is a file, lies under a file, or cannot be
            created or written.
    """
    if not str(out).strip():
        raise UserError(f"{flag} is empty; give a folder for {what} (it is created if needed)")
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a file, not a folder; give a folder for {what} (it is created if "
                        "needed)")
    parent = p
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {str(out)!r} lies under {str(parent)!r}, which is a file; choose a folder path")
    probe = p / ".bandpo-write-check"
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{flag} {str(out)!r} cannot be written ({e.strerror or e}); choose a folder you can write "
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


# ----------------------------------------------------------------------------------------------------------
# Local inputs and the --dry-run
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


def check_inputs(cfg: Any) -> None:
    """Raise a one-line ``ValueError`` when the model, tokenizer or data of ``cfg`` are not on this machine: all
    of them named at once when several are missing (:func:`missing_inputs`), else ``cfg.check_paths()``'s
    message."""
    gone = missing_inputs(cfg)
    if len(gone) > 1:
        raise ValueError(missing_inputs_message(gone))
    cfg.check_paths()


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


def dry_run_config(cfg: Any, workdir: Union[str, Path], max_steps: int = 2) -> Any:
    """``cfg`` with the tiny model substituted: same loss and task logic, CPU-sized everything else.

    The model becomes the tiny random one (character tokenizer, no chat template). A ``math_file`` task whose
    data file is on this machine reads it as is (column mapping and template included); a missing one is replaced
    by a small generated JSONL written to ``workdir``. Eval sets likewise: a file that is here is read (its first 4
    problems), a missing one replaced by 4 generated problems. Batch sizes shrink (keeping G >= 2 and the number
    of optimiser steps per rollout), and the run uses one CPU process in float32 for ``max_steps`` steps.
    """
    from .config import TrainConfig

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
