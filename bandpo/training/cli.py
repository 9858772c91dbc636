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
differ from the config saved in the checkpoint and in config.yaml (``launch.RESUMABLE_CHANGES``). One process at a time
owns DIR (a lock on ``DIR/.lock``): a second run into it stops at once, naming the first. Rows of steps after the
checkpoint (done by a killed process, whose updates were lost) are dropped and recomputed; every earlier row is kept
and new rows are appended. On CPU with a fixed seed the resumed metrics
equal those of an uninterrupted run (timing columns aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..cli import ArgumentParser
from .checks import UserError, check_inputs, check_out_dir, dry_run_config, dry_run_report
from .config import SECTIONS, TrainConfig, field_docs, list_presets, load_config, preset_path
from .console import is_main_process, log
from .launch import run

__all__ = ["ALIASES", "build_parser", "main", "parse_args"]

ALIASES = {
    "method": "loss.method", "divergence": "loss.divergence", "delta": "loss.delta",
    "delta-schedule": "loss.delta_schedule", "delta-end": "loss.delta_end", "delta-steps": "loss.delta_steps",
    "eps-low": "loss.eps_low", "eps-high": "loss.eps_high", "r-max": "loss.r_max", "dual-clip": "loss.dual_clip",
    "max-ratio": "loss.max_ratio", "agg": "loss.agg", "kl-coef": "objective.kl_coef", "lr": "optim.lr", "max-steps": "trainer.max_steps", "seed": "trainer.seed",
    "devices": "trainer.devices", "strategy": "trainer.strategy", "accelerator": "trainer.accelerator",
    "precision": "trainer.precision",
}


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
    p.add_argument("--warmstart-cache", metavar="DIR",
                   help="keep finished supervised warm-starts in DIR, named by every setting they read (and the code "
                        "and versions): a run whose warm-start is there loads it, the same weights, instead of "
                        "training it again (e.g. the methods of a sweep at one seed, run as separate commands)")
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


def resume_command(argv: Sequence[str]) -> str:
    """The command that resumes this run: this process's interpreter (relative to the working folder when it lies
    inside it, e.g. ``.venv/bin/python``) with ``-m bandpo.training`` and the same arguments."""
    import shlex

    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{shlex.quote(str(exe))} -m bandpo.training {shlex.join(argv)}"


def done_past_max_steps(completed: int, max_steps: int, out: Any) -> str:
    """The line for a resumed run whose checkpoint is already past ``trainer.max_steps`` (nothing was trained)."""
    return (f"nothing to train: the run in {out} is already at RL step {completed}, past max_steps {max_steps}; "
            f"give --max-steps above {completed} to continue it")


def main(argv: Optional[Sequence[str]] = None) -> int:
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
            if is_main_process():
                log(f"dry run of {args.config or 'preset ' + str(args.preset or '(defaults)')}: what was checked "
                     "on this machine and what is replaced:")
                for line in lines:
                    print(f"  {line}", flush=True)
            check_out_dir(args.out)
            cfg = dry_run_config(cfg, Path(args.out) / "dry-run-data")
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        check_inputs(cfg)
        if args.warmstart_cache is not None:
            check_out_dir(args.warmstart_cache, "--warmstart-cache", "the warm-start cache")
    except ValueError as e:
        print(f"bandpo.training: error: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg, args.out, warmstart_cache=args.warmstart_cache)
    except UserError as e:  # found before training started (errors during training keep their traceback)
        print(f"bandpo.training: error: {e}", file=sys.stderr)
        return 2
    if summary.get("stopped_by"):
        if is_main_process():
            log(f"stopped by {summary['stopped_by']} after {summary['stopped_after']}; checkpoint "
                f"{summary['checkpoint']}; resume with: {resume_command(argv)}")
        return 128 + summary["signal"]
    if summary["completed_steps"] < summary["max_steps"]:
        log(f"stopped at step {summary['completed_steps']} of {summary['max_steps']}; run the same command again "
             "to resume from the last checkpoint")
        return 1
    if is_main_process():
        last = summary.get("last_row", {})
        if summary["completed_steps"] > summary["max_steps"]:
            log(done_past_max_steps(summary["completed_steps"], summary["max_steps"], args.out))
            return 0
        log(f"done: {summary['completed_steps']}/{summary['max_steps']} steps; last reward "
             f"{last.get('reward/mean', float('nan')):.4f}, accuracy {last.get('accuracy', float('nan')):.4f}, "
             f"entropy {last.get('entropy', float('nan')):.4f}; metrics in {Path(args.out) / 'metrics.csv'}")
        if args.dry_run and missing:
            log(f"dry run passed with stand-ins, but the real run would FAIL at start-up on this machine: missing "
                 f"{', '.join(missing)}")
        elif args.dry_run:
            log("dry run passed; every model, tokenizer and data file of the config was found on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
