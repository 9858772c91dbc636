"""Paired-seed experiments on the testbed: named grids of (method, setting) x seeds, run in one process, and the
per-run statistics of ``summary.csv``.

    python -m bandpo.experiments.testbed                                  # grid main, seeds 0..7, preset testbed
    python -m bandpo.experiments.testbed --grid all                       # main, delta, lr, ablation and rare
    python -m bandpo.experiments.testbed --grid field                     # GSPO, CISPO, SAPO, GPG, Clip-Cov, ... vs clip
    python -m bandpo.experiments.testbed --grid main --methods clip band_kl --seeds 0 1   # a smoke subset
    python -m bandpo.experiments.testbed --shard 0/2 & python -m bandpo.experiments.testbed --shard 1/2
    python -m bandpo.experiments.testbed --summary-only                   # rewrite summary.csv from the run folders

The testbed (preset ``testbed``) is a task with a fork: after the warm-start a high-reward "tail" strategy has
probability below 0.05; its rollouts log ``testbed/p_tail``, ``testbed/p_common``, ``testbed/tail_frac`` and
``testbed/tail_sampled`` per RL step. Grids (:data:`GRIDS`):

* ``main``: clip, clip_higher, dcpo, band_kl, band_tv, band_chi2, dppo_kl, dppo_tv, band_kl_relax, each with its own
  settings (``setting`` = ``default``);
* ``delta``: band_kl at δ = 0.01, 0.02, 0.1, 0.2 (δ = 0.05 is band_kl of ``main``);
* ``lr``: clip and band_kl at 0.25 and 4 times the preset's learning rate (x1 is ``main``);
* ``ablation``: band_kl_upper (band upper bound, clip lower 0.8), band_kl_lower (band lower bound, clip upper 1.2);
* ``rare``: clip, clip_higher, band_kl, band_kl_upper with a rarer tail (``task.tail_freq`` 0.005 instead of 0.015:
  a different warm-start, so these runs pair with each other, against ``clip`` of the same grid).

Pairing: a run is the preset with ``trainer.seed = k`` plus its variant's overrides (``loss.method``, and
``loss.delta`` or ``optim.lr`` for a sweep). The warm-start, the prompts and the sampler's generator depend only on
the seed, so within a seed every method starts from the same policy and sees the same first rollouts (step 0 of
every method of a seed is identical): seed k of two methods is a matched pair, and methods differ only in the loss.
The preset is read once per process, so a grid is not mixed by an edit of the preset file while it runs;
``base_config`` in summary.csv identifies the config each run derives from, and the CLI warns when runs of a summary
come from different base configs or the runs of a seed do not share their step 0 (:func:`pairing_problems`).

Every run is trained in this process (``bandpo.training.launch.run``, imported once) in seed-major order, so an
interrupted grid holds complete pairs first; a seed's warm-start is trained by its first run and loaded by the others
(:data:`WARMSTART_CACHE`; ``--shard`` gives whole seeds to a process); a finished run (``summary.json`` with ``completed_steps >=
max_steps``) is skipped, an interrupted one resumes from its checkpoint, and checkpoints are deleted when a run
finishes. Layout::

    <out>/<grid>/<variant>-seed<k>/   metrics.csv, config.yaml, eval.csv, warmstart.json, summary.json
                                      (summary.json gains a "testbed" record: grid, method, setting, seed, wall_s)
    <out>/summary.csv                 one row per finished run, columns SUMMARY_COLUMNS (see run_statistics)

``<variant>`` is the method id, or ``<method>-delta<δ>`` / ``<method>-lrx<factor>`` for the sweeps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..cli import ArgumentParser, int_at_least, one_line
from ..losses import get_method
from ..losses.metrics import BUCKET_NAMES
from ..training.config import load_config, preset_path
from .reproduce import _pin_if_asked, _run_options, check_out_root, is_finished

__all__ = [
    "COLLAPSE_FRACTION", "DEFAULT_OUT", "DISCOVERY_THRESHOLD", "ENTROPY_COLLAPSE_FRACTION", "GRIDS", "SEEDS", "SUMMARY_COLUMNS", "Variant",
    "WINDOW", "config_id", "jobs", "pairing_problems", "read_evals", "read_metrics", "read_summary", "run_dir",
    "run_statistics", "summarize", "testbed",
]

DEFAULT_OUT = Path("paper_figures/data/testbed")
DEFAULT_PRESET = "testbed"
WARMSTART_CACHE = ".warmstart"
"""Folder under ``out`` where a process keeps the warm-starts of the seed it is running (``launch.run``'s
``warmstart_cache``): the methods of a seed train it once. Emptied when the process moves to the next seed."""
SEEDS = tuple(range(8))
WINDOW = 20
"""Steps averaged for the end-of-run statistics (``entropy_last``, ``reward_last``, ...); fewer if the run is shorter."""
DISCOVERY_THRESHOLD = 0.5
"""The tail strategy counts as discovered at the first step where ``testbed/p_tail >= 0.5`` (it is then the mode)."""
COLLAPSE_FRACTION = 0.25
"""A run has **collapsed** (at the decision) when the tail's probability ``testbed/p_tail`` falls, at some step, below
this fraction of its step-0 value: from p_tail ≈ 0.015 (about one draw per rollout of 64) to under ≈ 0.004 (one draw
in four rollouts or fewer). The probability mass has then moved onto the common and wrong strategies and the sampler
has nearly stopped trying the tail: the entropy collapse the paper is about, measured where it matters. Step 0 is
the warm-started policy, identical for every method of a seed, so both runs of a pair face the same threshold.

The token entropy (``entropy``, averaged over all completion tokens) is not used for this: on the testbed it falls
as much when the policy converges on the tail (the best strategy) as when it abandons it."""

ENTROPY_COLLAPSE_FRACTION = 0.1
"""``entropy_collapsed``: the token entropy over the last WINDOW steps is below this fraction of step 0's."""


@dataclass(frozen=True)
class Variant:
    """One row of a grid: a method id and what differs from the preset besides the seed."""

    grid: str
    """Name of the grid (``main``, ``delta``, ``lr``, ``ablation``)."""
    method: str
    """Method id of ``bandpo.losses.METHODS``."""
    delta: Optional[float] = None
    """Band radius override (``loss.delta``); None: the method's own."""
    lr_factor: Optional[float] = None
    """Multiplier of the preset's ``optim.lr``; None: the preset's."""
    tail_freq: Optional[float] = None
    """The task's tail frequency in the warm-start (``task.tail_freq``; the preset: 0.015); None: the preset's.
    This changes the starting policy, so such runs pair only with runs of the same ``tail_freq``."""
    middle_freq: Optional[float] = None
    """The task's middle-probability competitor (``task.middle_freq``; the preset: 0, none); None: the preset's.
    This changes the starting policy, so such runs pair only with runs of the same ``middle_freq``."""
    optimizer: Optional[str] = None
    """``sgd``: ``optim.optimizer`` sgd at :data:`SGD_LR` (the warm-start stays AdamW, so the starting policy is the
    same as AdamW's); None: the preset's AdamW."""

    @property
    def setting(self) -> str:
        """``default``, ``delta=<δ>``, ``lr=x<factor>``, ``tail=<freq>`` or ``middle=<freq>[,sgd]`` (the summary's
        ``setting`` column)."""
        if self.middle_freq is not None:
            return f"middle={self.middle_freq:g}" + (f",{self.optimizer}" if self.optimizer else "")
        if self.tail_freq is not None:
            return f"tail={self.tail_freq:g}"
        if self.delta is not None:
            return f"delta={self.delta:g}"
        if self.lr_factor is not None:
            return f"lr=x{self.lr_factor:g}"
        return "default"

    @property
    def name(self) -> str:
        """Folder name stem: the method id, ``<method>-delta<δ>`` or ``<method>-lrx<factor>``."""
        if self.setting == "default":
            return self.method
        return f"{self.method}-{self.setting.replace('=', '').replace(',', '-')}"

    def overrides(self, base_lr: float) -> dict:
        """Config overrides of this variant (``base_lr``: the preset's ``optim.lr``)."""
        out = {"loss.method": self.method}
        if self.delta is not None:
            out["loss.delta"] = self.delta
        if self.lr_factor is not None:
            out["optim.lr"] = base_lr * self.lr_factor
        if self.tail_freq is not None:
            out["task.tail_freq"] = self.tail_freq
        if self.middle_freq is not None:
            out["task.middle_freq"] = self.middle_freq
        if self.optimizer == "sgd":
            out.update({"optim.optimizer": "sgd", "optim.lr": SGD_LR})
        return out


MAIN_METHODS = ("clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "dppo_kl", "dppo_tv",
                "band_kl_relax", "no_clip")
"""The main comparison. ``no_clip`` (bounds [0, 1e6]) is a reference: does any bound matter on the testbed?"""
MAIN_DELTAS = {"dppo_tv": 0.05}
"""Main-grid radius overrides: ``dppo_tv`` runs at ``band_tv``'s delta (its own default is 0.15), so that the two
have the same trust region and differ only in the loss form (mask vs clip; ``docs/paper-notes.md``, "Peers (DPPO)").
``dppo_kl``'s default (0.05) already equals ``band_kl``'s."""
RARE_TAIL = 0.005
"""``task.tail_freq`` of the ``rare`` grid: a third of the preset's, so a rollout of 64 draws the tail about 0.3 times."""
RARE_METHODS = ("clip", "clip_higher", "band_kl", "band_kl_upper")
"""Methods of the ``rare`` grid (its baseline is ``clip`` at the same tail frequency)."""
FIELD_METHODS = ("clip", "gspo", "cispo", "cispo_band_kl", "sapo", "gpg", "clip_cov", "kl_cov", "gmpo", "gmpo_band_kl",
                 "vespo")
"""Methods of the ``field`` grid: the policy losses of ``bandpo.losses.surrogates`` with their own defaults, the
band as CISPO's and GMPO's interval, and GRPO clip as the baseline (``dro`` has no default and is left out)."""
CONFIRM_METHODS = ("clip", "band_kl", "band_kl_upper_rare")
"""Arms of the pre-registered ``confirm`` grid (docs/protocol-rare-tail.md), at the rare grid's tail frequency."""
MIDDLE_FREQ = 0.35
"""``task.middle_freq`` of the ``mechanism`` grid: a competitor 'M' (reward 0.4) at about 0.35 beside 'C' (0.5) at about
0.6, the tail as in the preset."""
MECHANISM_METHODS = ("clip", "band_kl_upper", "band_kl_lower")
"""Methods of the ``mechanism`` grid: which side of the band moves the tail, under which optimiser."""
SGD_LR = 0.03
"""SGD's learning rate in the ``mechanism`` grid (no momentum), chosen by a pilot before the grid was run
(``paper_figures/data/sgd_pilot/``: clip, seeds 2000-2001): of 0.01, 0.03, 0.1 and 0.3, the rate whose runs end as
far from the warm-start (kl_ref over the last 20 steps) as AdamW's at 3e-4: 0.70 and 1.44 against AdamW's 1.16 and
1.23. At 0.1 and 0.3 the reward falls to 0; at 0.03 it does not rise either (0.33 -> 0.18 and 0.32 -> 0.35 over the
run, AdamW 0.39 -> 0.68 and 0.32 -> 0.61): on this task plain SGD at a matched step size does not learn in 150
steps, which the grid's reading has to keep in mind."""
GRIDS: dict = {
    "main": tuple(Variant("main", m, delta=MAIN_DELTAS.get(m)) for m in MAIN_METHODS),
    "delta": tuple(Variant("delta", "band_kl", delta=d) for d in (0.01, 0.02, 0.1, 0.2)),
    "lr": tuple(Variant("lr", m, lr_factor=f) for m in ("clip", "band_kl") for f in (0.25, 4.0)),
    "ablation": (Variant("ablation", "band_kl_upper"), Variant("ablation", "band_kl_lower")),
    "rare": tuple(Variant("rare", m, tail_freq=RARE_TAIL) for m in RARE_METHODS),
    "field": tuple(Variant("field", m) for m in FIELD_METHODS),
    "mechanism": tuple(Variant("mechanism", m, middle_freq=MIDDLE_FREQ, optimizer=opt)
                       for opt in (None, "sgd") for m in MECHANISM_METHODS),
    "confirm": tuple(Variant("confirm", m, tail_freq=RARE_TAIL) for m in CONFIRM_METHODS),
}
"""The named grids. ``--grid all`` runs :data:`ALL_GRIDS`: every grid but ``field`` (the other policy losses),
the exploratory ``mechanism`` and the pre-registered ``confirm``, which are run by name.

``mechanism`` (EXPLORATORY, not part of any pre-registered test): {AdamW, SGD} x {clip, band_kl_upper,
band_kl_lower} on the task with a middle competitor (:data:`MIDDLE_FREQ`); each run pairs with ``clip`` of the same
setting (``stats --same-setting``); its measure is the drift of the tail's log-probability on steps whose rollout did
not sample it (``drift_log_unsampled``). ``confirm`` is the pre-registered experiment of
docs/protocol-rare-tail.md, with its own seeds and output folder."""
BY_NAME_ONLY = ("field", "mechanism", "confirm")
"""Grids that ``--grid all`` leaves out: run them by name."""
ALL_GRIDS = tuple(g for g in GRIDS if g not in BY_NAME_ONLY)
"""What ``--grid all`` runs: the comparisons of ``docs/testbed-report.md``."""

SUMMARY_COLUMNS = (
    "grid", "run", "method", "setting", "seed", "steps", "max_steps",
    "eval_set", "eval_n", "eval_k", "eval_mean_start", "eval_mean", "eval_pass_start", "eval_pass",
    "reward_last", "entropy_start", "entropy_last", "entropy_collapsed", "collapsed", "p_tail_start", "p_tail_min",
    "discovery_step", "discovered", "p_tail_last", "tail_frac_last",
    "drift_unsampled", "drift_sampled", "n_unsampled", "n_sampled", "drift_log_unsampled", "drift_log_sampled",
    *(f"clip_region_{b}" for b in BUCKET_NAMES), *(f"clip_high_{b}" for b in BUCKET_NAMES),
    "wall_s", "base_config",
)
"""summary.csv columns; the statistics are defined in :func:`run_statistics`, ``wall_s`` is the run's wall-clock
time in the runner (warm-start, RL steps and evaluations; the finishing process only if it was resumed),
``base_config`` identifies the preset-plus-``--set`` config the run was derived from (:func:`config_id`)."""


def run_dir(out: Path, variant: Variant, seed: int) -> Path:
    """``<out>/<grid>/<variant>-seed<k>``."""
    return Path(out) / variant.grid / f"{variant.name}-seed{seed}"


def select(grids: Sequence[str], methods: Optional[Sequence[str]] = None) -> list:
    """The variants of ``grids`` (``all``: every grid of :data:`ALL_GRIDS`), restricted to ``methods`` when given."""
    names = list(dict.fromkeys((list(ALL_GRIDS) if "all" in grids else []) + [g for g in grids if g != "all"]))
    unknown = [g for g in names if g not in GRIDS]
    if unknown:
        raise ValueError(f"unknown grid {unknown[0]!r}; grids: {', '.join(GRIDS)}, all")
    variants = [v for g in dict.fromkeys(names) for v in GRIDS[g] if methods is None or v.method in methods]
    if methods is not None:
        missing = sorted(set(methods) - {v.method for g in names for v in GRIDS[g]})
        if missing:
            raise ValueError(f"method {missing[0]!r} is in none of the grids {names}; their methods: "
                             f"{sorted({v.method for g in names for v in GRIDS[g]})}")
    return variants


def jobs(variants: Sequence[Variant], seeds: Sequence[int], shard: tuple = (0, 1)) -> list:
    """(seed, variant) pairs in seed-major order, of every ``shard[1]``-th seed from the ``shard[0]``-th: all runs
    of a seed go to one process, which trains the seed's warm-start once for them (``WARMSTART_CACHE``)."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    return [(seed, v) for k, seed in enumerate(seeds) if k % n == i for v in variants]


# ----------------------------------------------------------------------------------------------------------------
# Reading a run and its statistics (pure functions of the files)
# ----------------------------------------------------------------------------------------------------------------


def _read_csv_by_step(path: Path) -> dict:
    """A CSV with a ``step`` column -> {column: float array per step}, steps sorted, rows of one step merged
    (the last non-empty value of each column wins; a missing value is nan)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'step' column (columns: {reader.fieldnames})")
        merged: dict = {}
        for row in reader:
            if not row.get("step"):
                continue
            slot = merged.setdefault(int(float(row["step"])), {})
            for key, value in row.items():
                if key is not None and value not in ("", None):
                    try:
                        slot[key] = float(value)
                    except ValueError:
                        pass
    steps = sorted(merged)
    keys = sorted({k for slot in merged.values() for k in slot} - {"step"})
    cols = {"step": np.array(steps, dtype=float)}
    for k in keys:
        cols[k] = np.array([merged[s].get(k, math.nan) for s in steps], dtype=float)
    return cols


def read_metrics(path: "str | Path") -> dict:
    """``metrics.csv`` of a run (the file or its folder) as {column: array per RL step}."""
    p = Path(path)
    return _read_csv_by_step(p / "metrics.csv" if p.is_dir() else p)


def read_evals(path: "str | Path") -> dict:
    """``eval.csv`` of a run (the file or its folder) as {column: array per evaluation}; {} when there is none."""
    p = Path(path)
    p = p / "eval.csv" if p.is_dir() else p
    return _read_csv_by_step(p) if p.is_file() else {}


_EVAL_KEY = re.compile(r"^eval/(?P<set>[^/]+)/(?P<metric>mean|pass)@(?P<k>\d+)$")


def _eval_stats(evals: Mapping) -> dict:
    """Held-out numbers at the first and the last evaluation: mean@n and pass@k at the largest k of one eval set
    (``heldout`` if present, else the first in name order)."""
    out = {"eval_set": "", "eval_n": math.nan, "eval_k": math.nan, "eval_mean_start": math.nan,
           "eval_mean": math.nan, "eval_pass_start": math.nan, "eval_pass": math.nan}
    found: dict = {}
    for key in evals:
        m = _EVAL_KEY.match(key)
        if m:
            found.setdefault(m["set"], {}).setdefault(m["metric"], []).append(int(m["k"]))
    if not found or len(evals.get("step", ())) == 0:
        return out
    name = "heldout" if "heldout" in found else sorted(found)[0]
    have = found[name]
    out["eval_set"] = name
    if "mean" in have:
        n = max(have["mean"])
        col = np.asarray(evals[f"eval/{name}/mean@{n}"], dtype=float)
        out.update(eval_n=n, eval_mean_start=float(col[0]), eval_mean=float(col[-1]))
    if "pass" in have:
        k = max(have["pass"])
        col = np.asarray(evals[f"eval/{name}/pass@{k}"], dtype=float)
        out.update(eval_k=k, eval_pass_start=float(col[0]), eval_pass=float(col[-1]))
    return out


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _col(metrics: Mapping, key: str, n: int) -> np.ndarray:
    return np.asarray(metrics[key], dtype=float) if key in metrics else np.full(n, math.nan)


def discovery_step(p_tail: Sequence[float], steps: Sequence[float], max_steps: int,
                   threshold: float = DISCOVERY_THRESHOLD) -> tuple:
    """(step, discovered): the first ``step`` with ``p_tail >= threshold`` and 1, or ``(max_steps, 0)`` when the
    run never gets there (right-censored at the run's length); ``(nan, nan)`` without any finite ``p_tail``.

    Censoring: an undiscovered run counts as discovering at ``max_steps``, a lower bound of its true time. A paired
    difference "method minus clip" with a censored clip run is then an underestimate of the method's gain (biased
    towards 0, never in the method's favour); the ``discovered`` rate is reported beside it.
    """
    p = np.asarray(p_tail, dtype=float)
    if not np.isfinite(p).any():
        return math.nan, math.nan
    hit = np.flatnonzero(np.isfinite(p) & (p >= threshold))
    if hit.size:
        return float(np.asarray(steps, dtype=float)[hit[0]]), 1.0
    return float(max_steps), 0.0


def drift(p_tail: Sequence[float], sampled: Sequence[float], steps: Sequence[float]) -> dict:
    """Mean one-step change of the tail's probability, split by whether the tail was sampled at the step.

    Over consecutive steps (t, t + 1) with finite values, Δ_t = p_tail[t + 1] - p_tail[t] (the effect of update t,
    made from step t's rollouts): ``drift_unsampled`` = mean of Δ_t over steps with ``tail_sampled[t] == 0`` (no
    tail rollout, so the loss never pushes the tail up directly: what moves it is the optimiser and the shared
    parameters), ``drift_sampled`` = mean over steps with ``tail_sampled[t] > 0`` (the loss's push), and the number
    of steps of each kind (``n_unsampled``, ``n_sampled``). ``drift_log_unsampled`` / ``drift_log_sampled``: the
    same means of log p_tail[t + 1] - log p_tail[t] (steps with p_tail > 0 at both ends), the relative change, which
    does not vanish merely because p_tail is small. A mean over no step is nan.
    """
    p, s, t = (np.asarray(x, dtype=float) for x in (p_tail, sampled, steps))
    ok = (t[1:] - t[:-1] == 1) & np.isfinite(p[1:]) & np.isfinite(p[:-1]) & np.isfinite(s[:-1])
    d, flag = (p[1:] - p[:-1])[ok], s[:-1][ok]
    pos = (p[1:] > 0)[ok] & (p[:-1] > 0)[ok]
    with np.errstate(divide="ignore", invalid="ignore"):
        dlog = (np.log(p[1:]) - np.log(p[:-1]))[ok]
    out = {}
    for name, mask in (("unsampled", flag == 0), ("sampled", flag > 0)):
        out[f"drift_{name}"] = float(d[mask].mean()) if mask.any() else math.nan
        out[f"n_{name}"] = int(mask.sum())
        out[f"drift_log_{name}"] = float(dlog[mask & pos].mean()) if (mask & pos).any() else math.nan
    return out


def run_statistics(metrics: Mapping, evals: Optional[Mapping] = None, *, max_steps: Optional[int] = None,
                   window: int = WINDOW, collapse_fraction: float = COLLAPSE_FRACTION,
                   entropy_collapse_fraction: float = ENTROPY_COLLAPSE_FRACTION) -> dict:
    """The per-run statistics of summary.csv from a run's metrics ({column: per-step values}, with ``step``) and
    evaluations (the same for ``eval.csv``; None or {}: no evaluation).

    * ``eval_mean`` / ``eval_pass``: held-out mean@n and pass@k (largest k) at the last evaluation (``_start``: the
      first, before training); ``eval_set``, ``eval_n``, ``eval_k`` name them;
    * ``reward_last``, ``entropy_last``, ``p_tail_last``, ``tail_frac_last``: means over the last ``window`` steps
      of ``reward/mean``, ``entropy``, ``testbed/p_tail``, ``testbed/tail_frac``; ``entropy_start``: step 0's;
    * ``collapsed``: 1 if ``p_tail_min < collapse_fraction * p_tail_start`` else 0 (see COLLAPSE_FRACTION), with
      ``p_tail_start`` step 0's ``testbed/p_tail`` and ``p_tail_min`` its minimum over the run;
      ``entropy_collapsed``: 1 if ``entropy_last < entropy_collapse_fraction * entropy_start`` else 0;
    * ``discovery_step``, ``discovered``: :func:`discovery_step`, censored at ``max_steps`` (default: the number
      of steps in ``metrics``);
    * ``drift_unsampled``, ``drift_sampled``, ``n_unsampled``, ``n_sampled``: :func:`drift`;
    * ``clip_region_<bucket>``, ``clip_high_<bucket>``: mean over steps of ``bucket/<bucket>/clip_region_mean`` and
      ``clip_high_mean``, over the steps where the bucket had tokens (``bucket/<bucket>/tokens > 0``).

    Missing columns give nan. Raises ValueError for ``window < 1`` or a frame without steps.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 steps, got {window}")
    steps = np.asarray(metrics.get("step", ()), dtype=float)
    n = steps.size
    if n == 0:
        raise ValueError("run_statistics needs a metrics frame with at least one step (column 'step')")
    w = min(window, n)
    max_steps = n if max_steps is None else int(max_steps)
    out: dict = {"steps": n, "max_steps": max_steps}
    out.update(_eval_stats(evals or {}))
    for key, name in (("reward/mean", "reward_last"), ("entropy", "entropy_last"),
                      ("testbed/p_tail", "p_tail_last"), ("testbed/tail_frac", "tail_frac_last")):
        out[name] = _nanmean(_col(metrics, key, n)[-w:])
    out["entropy_start"] = float(_col(metrics, "entropy", n)[0])
    h0, h1 = out["entropy_start"], out["entropy_last"]
    out["entropy_collapsed"] = (float(h1 < entropy_collapse_fraction * h0) if math.isfinite(h0) and math.isfinite(h1)
                                else math.nan)
    p_tail = _col(metrics, "testbed/p_tail", n)
    out["p_tail_start"] = float(p_tail[0])
    out["p_tail_min"] = float(np.nanmin(p_tail)) if np.isfinite(p_tail).any() else math.nan
    p0, pmin = out["p_tail_start"], out["p_tail_min"]
    out["collapsed"] = float(pmin < collapse_fraction * p0) if math.isfinite(p0) and math.isfinite(pmin) else math.nan
    out["discovery_step"], out["discovered"] = discovery_step(p_tail, steps, max_steps)
    out.update(drift(p_tail, _col(metrics, "testbed/tail_sampled", n), steps))
    for b in BUCKET_NAMES:
        tokens = _col(metrics, f"bucket/{b}/tokens", n)
        has = ~(tokens == 0)  # nan (column missing) counts as "has tokens": the fraction itself decides
        for stat in ("clip_region", "clip_high"):
            out[f"{stat}_{b}"] = _nanmean(_col(metrics, f"bucket/{b}/{stat}_mean", n)[has])
    return out


def _finished_runs(out: Path) -> list:
    """(folder, testbed record) of every finished run under ``out`` that the runner wrote."""
    found = []
    for summary in sorted(Path(out).glob("*/*/summary.json")):
        try:
            data = json.loads(summary.read_text())
        except ValueError:
            continue
        rec = data.get("testbed")
        if rec and int(data.get("completed_steps", -1)) >= int(data.get("max_steps", math.inf)):
            found.append((summary.parent, rec, int(data["max_steps"])))
    return found


def _grid_order(rec: dict) -> tuple:
    grids = list(GRIDS)
    g = grids.index(rec["grid"]) if rec["grid"] in grids else len(grids)
    names = [v.name for v in GRIDS.get(rec["grid"], ())]
    return g, rec["seed"], names.index(rec["run"]) if rec["run"] in names else len(names), rec["run"]


def summarize(out: Path = DEFAULT_OUT, *, window: int = WINDOW) -> list:
    """Write ``<out>/summary.csv`` (SUMMARY_COLUMNS) from every finished run folder under ``out``; returns its rows
    (dicts), ordered by grid, seed and the grid's order of variants. Nothing is written when there is no run."""
    out = Path(out)
    table = []
    for folder, rec, max_steps in _finished_runs(out):
        row = {k: rec[k] for k in ("grid", "method", "setting", "seed")}
        row["run"] = folder.name.rsplit("-seed", 1)[0]
        row.update(run_statistics(read_metrics(folder), read_evals(folder), max_steps=max_steps, window=window))
        row["wall_s"] = float(rec.get("wall_s", math.nan))
        row["base_config"] = rec.get("base_config", "")
        table.append(row)
    table.sort(key=_grid_order)
    if table:
        with open(out / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)
    return table


def read_summary(path: "str | Path") -> list:
    """``summary.csv`` (the file or its folder) as a list of dicts; numbers as floats (seed and steps as ints).

    Raises:
        ValueError: naming the file, when it is missing or unreadable, not UTF-8 CSV, lacks the columns grid,
            method, setting and seed, or holds a value that is not a number where one is expected.
    """
    p = Path(path)
    p = p / "summary.csv" if p.is_dir() else p
    rows = []
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            lacking = [c for c in ("grid", "method", "setting", "seed") if c not in (reader.fieldnames or [])]
            if lacking:
                raise ValueError(f"{str(p)!r} is not a testbed summary.csv: it lacks the columns {lacking} (write one "
                                 "with python -m bandpo.experiments.testbed)")
            for line, r in enumerate(reader, start=2):
                row = {}
                for k, v in r.items():
                    try:
                        if k in ("grid", "run", "method", "setting", "eval_set", "base_config"):
                            row[k] = v
                        elif k in ("seed", "steps", "max_steps", "n_unsampled", "n_sampled"):
                            row[k] = int(float(v))
                        else:
                            row[k] = float(v) if v != "" else math.nan
                    except (TypeError, ValueError):
                        raise ValueError(f"{str(p)!r} line {line}: column {k!r} holds {v!r}, not a number") from None
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{str(p)!r} cannot be read as a UTF-8 CSV file ({one_line(e)})") from None
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------


def config_id(cfg) -> str:
    """12 hex digits identifying a config (sha256 of its sorted JSON): the ``base_config`` of summary.csv."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _record(path: Path, variant: Variant, seed: int, wall_s: float, overrides: dict, base_id: str) -> None:
    """Add the "testbed" record to the run's summary.json."""
    summary = path / "summary.json"
    data = json.loads(summary.read_text())
    data["testbed"] = {"grid": variant.grid, "run": variant.name, "method": variant.method,
                       "setting": variant.setting, "seed": seed, "overrides": overrides, "wall_s": wall_s,
                       "base_config": base_id}
    summary.write_text(json.dumps(data, indent=1) + "\n")


def testbed(
    out: Path = DEFAULT_OUT,
    grids: Sequence[str] = ("main",),
    seeds: Sequence[int] = SEEDS,
    *,
    methods: Optional[Sequence[str]] = None,
    preset: str = DEFAULT_PRESET,
    overrides: Optional[dict] = None,
    shard: tuple = (0, 1),
    runner: Optional[Callable] = None,
    log: Callable = print,
) -> list:
    """Train every (variant, seed) of ``grids`` not yet finished, in this process; returns the summary rows.

    ``overrides`` apply to every run (before the variant's own and the seed); ``runner(cfg, path, warmstart_cache=folder)`` trains
    one run (default ``bandpo.training.launch.run``). Stops early, keeping the checkpoint, when a run was interrupted by a
    signal. Raises ValueError for an unknown grid, method id or preset.
    """
    variants = select(grids, methods)
    for v in dict.fromkeys(v.method for v in variants):
        get_method(v)  # ValueError listing the known ids
    # The preset is read once: every run of this process derives from the same base, even if the file changes.
    base = load_config(preset_path(preset), dict(overrides or {}))
    base_id = config_id(base)
    todo = jobs(variants, seeds, shard)
    from ..training.launch import warmstart_cache_file

    if runner is None:
        from ..training.launch import run as runner
    out = Path(out)
    cache = out / WARMSTART_CACHE
    used: set = set()  # the cache files of the seed under way
    for k, (seed, variant) in enumerate(todo):
        extra = {**variant.overrides(base.optim.lr), "trainer.seed": seed, "trainer.progress_bar": False}
        cfg = base.replace(extra)
        path = run_dir(out, variant, seed)
        if is_finished(path, cfg.trainer.max_steps):
            if "testbed" not in json.loads((path / "summary.json").read_text()):  # trained, record not yet written
                done = json.loads((path / "summary.json").read_text())
                _record(path, variant, seed, float(done.get("wall_s_this_process", math.nan)), extra, base_id)
            log(f"[testbed] skip {path} (finished)")
            continue
        log(f"[testbed] run {path} ({k + 1}/{len(todo)}: {variant.method}, {variant.setting}, seed {seed})")
        t0 = time.perf_counter()
        result = runner(cfg, path, warmstart_cache=cache)
        wall = time.perf_counter() - t0
        if isinstance(result, dict) and result.get("stopped_by"):
            log(f"[testbed] stopped by {result['stopped_by']}: {path} resumes from its checkpoint next time")
            break
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        _record(path, variant, seed, wall, extra, base_id)
        used.add(warmstart_cache_file(cfg, cache))
        if k + 1 == len(todo) or todo[k + 1][0] != seed:  # the seed's last run here: its warm-starts are done with
            for f in used:  # only this seed's (another shard's process may be writing its own seed's)
                for g in f.parent.glob(f.name + "*"):
                    g.unlink(missing_ok=True)
            used.clear()
    if shard[1] == 1 and cache.is_dir() and not any(cache.iterdir()):  # alone on this folder
        cache.rmdir()
    return summarize(out)


def pairing_problems(table: Sequence[Mapping]) -> list:
    """What breaks the pairing in summary rows, one message per problem ([] when none).

    Every run must come from the same base config (``base_config``), and every run of a seed must start from the same
    policy: step 0 comes before any update and the warm-start depends only on the seed (the δ and lr sweeps
    change neither), so ``entropy_start`` must be identical across all runs of a seed.
    """
    problems = []
    bases = sorted({r.get("base_config", "") for r in table})
    if len(bases) > 1:
        problems.append(f"runs from {len(bases)} different base configs ({', '.join(b or '?' for b in bases)}): "
                        f"the preset or --set changed between runs")
    by_seed: dict = {}
    for r in table:
        if not math.isfinite(r["entropy_start"]):
            continue
        setting = str(r.get("setting", ""))
        start = setting.split(",")[0] if setting.startswith(("tail=", "middle=")) else ""  # own warm-start
        by_seed.setdefault((r["seed"], start) if start else r["seed"], {}).setdefault(r["entropy_start"], []).append(f"{r['grid']}/{r['run']}")
    for seed, groups in sorted(by_seed.items(), key=str):
        if len(groups) > 1:
            parts = "; ".join(f"{h!r}: {', '.join(runs)}" for h, runs in groups.items())
            problems.append(f"seed {seed}: step-0 entropy differs between runs ({parts})")
    return problems


def format_table(table: list) -> str:
    """Per (grid, method, setting): runs, mean held-out mean@n, discovery rate, collapse rate, total wall time."""
    groups: dict = {}
    for r in table:
        groups.setdefault((r["grid"], r["method"], r["setting"]), []).append(r)
    lines = [f"{'grid':<9} {'method':<14} {'setting':<11} {'n':>2} {'eval_mean':>9} {'discovered':>10} "
             f"{'collapsed':>9} {'wall_s':>8}"]
    for (g, m, s), rows in groups.items():
        lines.append(f"{g:<9} {m:<14} {s:<11} {len(rows):>2} {_nanmean([r['eval_mean'] for r in rows]):9.3f} "
                     f"{_nanmean([r['discovered'] for r in rows]):10.2f} {_nanmean([r['collapsed'] for r in rows]):9.2f} "
                     f"{sum(r['wall_s'] for r in rows):8.0f}")
    total = sum(r["wall_s"] for r in table if math.isfinite(r["wall_s"]))
    lines.append(f"total compute: {total:.0f} s ({total / 3600:.2f} h) over {len(table)} runs")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python -m bandpo.experiments.testbed", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output root (default {DEFAULT_OUT})")
    p.add_argument("--grid", nargs="+", default=["main"], help=f"grids: {', '.join(GRIDS)} or all (default main)")
    p.add_argument("--methods", nargs="+", default=None, help="only these method ids of the grids")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="seeds (default 0..7)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"training preset (default {DEFAULT_PRESET})")
    p.add_argument("--max-steps", type=int_at_least(1), help="RL steps per run (default: the preset's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for every run")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    p.add_argument("--summary-only", action="store_true", help="only rewrite summary.csv and print the table")
    p.add_argument("--no-pin", action="store_true",
                   help="this CPU's native numerics instead of the preset's pinned mode (docs/reproducibility.md)")
    args = p.parse_args(argv)
    try:
        overrides, (i, n) = _run_options(args)
        out = check_out_root(args.out, args.summary_only)
        if args.summary_only:
            table = summarize(out)
        else:
            if argv is None:  # the process's own command line: restart it pinned if the runs are
                _pin_if_asked(args.preset, overrides)
            table = testbed(out, args.grid, args.seeds, methods=args.methods, preset=args.preset,
                            overrides=overrides, shard=(i, n))
    except ValueError as e:
        return p.report(e)
    print(format_table(table), flush=True)
    for problem in pairing_problems(table):
        print(f"warning: pairing: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
