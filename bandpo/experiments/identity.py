"""Where two runs of one seed stop being identical, and which loss events came first.

BandPO and DPPO at the same trust region (``band_kl`` and ``dppo_kl``: ``Band("kl", 0.05)``; ``band_tv`` and
``dppo_tv`` at δ = 0.05 in the testbed's ``main`` grid) differ only in the loss form. Per token, with r the ratio,
A the advantage, [lower, upper] the band (the same bounds rule for both, saturation at 0 and 1/p included), the
gradient with respect to log π is (:mod:`bandpo.losses.policy`)

    clip form (``band_*``, cap = max_ratio = 10, dual clip c = 10):
        -A·r  where A > 0 and r <= min(upper, cap), or A < 0 and lower <= r <= c;  0 elsewhere
    mask form (``dppo_*``, truncation cap C = tis_cap = 20):
        -A·min(r, C)  where A > 0 and r <= upper, or A < 0 and r >= lower;  0 elsewhere

and both compute -A·r with the same float operations, so the two gradients are equal bit for bit on every token
but three events (``tests/test_identity.py`` checks both claims, in float64 and float32):

* **dual clip**: A < 0 and r > c. The clip form holds the token at the floor -A·c (no gradient); the mask form
  keeps it. Logged by the clip run as ``dual_clip_fraction``.
* **cap**: A > 0 and cap < r <= upper, possible only where the band's upper bound exceeds the cap (old probability
  below about 0.0071 for KL at δ = 0.05, 0.05/9 = 0.0056 for TV). The clip form clips, the mask form keeps. No
  metric records it; it needs a rare token (p < ``RARE_P`` = 0.05) with A > 0 and r > cap, so it cannot fire
  before the first step whose ``ratio/rare_pos_max`` exceeds the cap (a lower bound, :attr:`Identity.cap_not_before`).
  While the two runs agree, a cap event would also change ``clip_ratio/high_mean`` (the clip form counts the token
  as clipped, the mask form does not): training columns that agree before the first logged event rule out a cap
  event before it, though not one in the same step.
* **truncation**: a kept token with r > C, whose mask-form weight is C/r. Logged by the mask run as
  ``truncated_fraction`` (the clip form logs 0). With C > c and C > cap it is always also a dual-clip or cap event.

The *loss value* differs wherever any token is clipped (the clip form's -A·clip(r) against the mask's 0), and the
bound metrics differ wherever the cap binds on the bound itself (the mask form reports the uncapped band), with no
effect on the gradient; those columns (:data:`LOSS_FORM_COLUMNS`) are compared separately from the others, which
describe the policy and its training (rewards, probabilities, ratios, ``grad_norm``, ...).

    <!-- identity --grid main --pair band_kl dppo_kl -->
    (a table per seed, filled by render_identity)
    <!-- /identity -->

:func:`compare_pair` is a pure function of two run folders; :func:`render_identity` fills the blocks of a report
(called by ``python -m bandpo.experiments.stats --refresh``).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..cli import ArgumentParser
from .recheck import _rows_by_step, _same, _timing

__all__ = ["Identity", "LOSS_FORM_COLUMNS", "compare_pair", "identity_table", "render_identity"]

LOSS_FORM_COLUMNS = ("loss/", "bounds/", "band_width/", "dual_clip_fraction", "truncated_fraction", "cap_fraction")
"""Column prefixes (and the per-bucket ``.../band_width_mean``) that report the loss form rather than the policy:
the loss value, the bounds (capped or not), the band widths and the per-form event fractions."""

RARE_P = 0.05
"""Old probability below which ``ratio/rare_pos_max`` counts a token (``bandpo.training.module.RARE_P``)."""


def _loss_form(column: str) -> bool:
    return column.startswith(LOSS_FORM_COLUMNS) or column.endswith("/band_width_mean")


@dataclass(frozen=True)
class Identity:
    """What two runs of one seed (``a`` a clip-form run, ``b`` its mask-form twin) show, step by step. Steps are the
    RL steps of ``metrics.csv``; None: never (over the steps both runs have)."""

    seed: int
    """The runs' ``trainer.seed``."""
    steps: int
    """Number of RL steps both runs have (compared)."""
    first_difference: Optional[int]
    """First step where any non-timing column differs."""
    first_training_difference: Optional[int]
    """First step where a column outside :data:`LOSS_FORM_COLUMNS` differs."""
    training_columns: tuple
    """The columns outside :data:`LOSS_FORM_COLUMNS` that differ at that step."""
    first_dual_clip: Optional[int]
    """First step with ``dual_clip_fraction > 0`` in either run (the clip run logs it)."""
    first_truncation: Optional[int]
    """First step with ``truncated_fraction > 0`` in either run (the mask run logs it)."""
    first_cap: Optional[int]
    """First step with ``cap_fraction > 0`` in either run, when a run logs such a column; None otherwise."""
    cap_logged: bool
    """Whether a run logs ``cap_fraction`` (no run of this version of bandpo does)."""
    cap_not_before: Optional[int]
    """When the cap is not logged: the first step whose ``ratio/rare_pos_max`` (clip run) exceeds the cap; no cap
    event can come earlier. None when that never happens, or when the bound does not hold (no cap, or a band
    whose upper bound at p = RARE_P is above the cap)."""

    @property
    def first_event(self) -> Optional[int]:
        """The first logged event: dual clip, truncation or (if logged) cap."""
        found = [s for s in (self.first_dual_clip, self.first_truncation, self.first_cap) if s is not None]
        return min(found) if found else None

    @property
    def identical_before_first_event(self) -> bool:
        """True when the training columns agree at every step before the first logged event (and at every step
        when there is none)."""
        d, e = self.first_training_difference, self.first_event
        return d is None or (e is not None and d >= e)


def _first(rows: dict, steps: Sequence[int], column: str, test) -> Optional[int]:
    for s in steps:
        v = rows[s].get(column)
        if v not in (None, "") and test(float(v)):
            return s
    return None


def _run_settings(folder: Path) -> "tuple[int, Optional[float], bool]":
    """(seed, cap, whether ratio/rare_pos_max bounds the cap's first event) of a run folder's config.yaml."""
    import torch

    from ..losses.rules import Band
    from ..operator.divergences import get_divergence
    from ..training.config import load_config

    cfg = load_config(folder / "config.yaml")
    method = cfg.loss.method_spec()
    cap, rule = method.max_ratio, method.bounds
    if cap is None or not math.isfinite(cap) or method.surrogate != "clip":
        return cfg.trainer.seed, None, False
    if not isinstance(rule, Band) or not isinstance(rule.delta, (int, float)):
        return cfg.trainer.seed, float(cap), False
    # A cap event needs the band's upper bound above the cap. ratio/rare_pos_max sees every such token when the
    # upper bound is <= cap for every p >= RARE_P: where 1/p <= cap trivially, elsewhere iff g_f(p, cap) >= delta
    # (g_f(p, .) is convex with its minimum 0 at r = 1, so the upper root is <= cap iff g_f(p, cap) >= delta).
    if RARE_P >= 1 / cap:
        return cfg.trainer.seed, float(cap), True
    p = torch.linspace(RARE_P, 1 / cap, 201, dtype=torch.float64)
    g = get_divergence(rule.divergence).g(p, torch.full_like(p, float(cap)))
    return cfg.trainer.seed, float(cap), bool((g >= rule.delta).all())


def compare_pair(a: "str | Path", b: "str | Path") -> Identity:
    """Compare run folder ``a`` (a clip-form method, e.g. ``band_kl``) with ``b`` (its mask-form twin, e.g.
    ``dppo_kl``) of the same seed, from their ``metrics.csv`` and ``config.yaml``; timing columns (``time/``,
    ``perf/``) are never compared. ValueError (one line) for a folder that is not a run or two different seeds."""
    a, b = Path(a), Path(b)
    for f in (a, b):
        if not (f / "metrics.csv").is_file() or not (f / "config.yaml").is_file():
            raise ValueError(f"{f} is not a run folder (it needs metrics.csv and config.yaml)")
    seed_a, cap, cap_bound = _run_settings(a)
    seed_b = _run_settings(b)[0]
    if seed_a != seed_b:
        raise ValueError(f"{a} and {b} are runs of different seeds ({seed_a} and {seed_b}); compare runs of one seed")
    cols_a, rows_a = _rows_by_step(a / "metrics.csv")
    cols_b, rows_b = _rows_by_step(b / "metrics.csv")
    steps = sorted(set(rows_a) & set(rows_b))
    columns = [c for c in dict.fromkeys(cols_a + cols_b) if not _timing(c)]
    first_any = first_training = None
    differing: tuple = ()
    for s in steps:
        diff = [c for c in columns if not _same(rows_a[s].get(c, ""), rows_b[s].get(c, ""))]
        if diff and first_any is None:
            first_any = s
        training = tuple(c for c in diff if not _loss_form(c))
        if training:
            first_training, differing = s, training
            break

    def either(column: str) -> Optional[int]:
        found = [x for x in (_first(rows_a, steps, column, lambda v: v > 0), _first(rows_b, steps, column, lambda v: v > 0))
                 if x is not None]
        return min(found) if found else None

    cap_logged = "cap_fraction" in cols_a or "cap_fraction" in cols_b
    not_before = None
    if not cap_logged and cap_bound:
        not_before = _first(rows_a, steps, "ratio/rare_pos_max", lambda v: v > cap)
    return Identity(
        seed=seed_a, steps=len(steps), first_difference=first_any, first_training_difference=first_training,
        training_columns=differing, first_dual_clip=either("dual_clip_fraction"),
        first_truncation=either("truncated_fraction"), first_cap=either("cap_fraction") if cap_logged else None,
        cap_logged=cap_logged, cap_not_before=not_before,
    )


def _step(s: Optional[int]) -> str:
    return "never" if s is None else str(s)


def identity_table(results: Sequence[Identity], pair: "tuple[str, str]" = ("a", "b")) -> str:
    """A Markdown table, one row per seed, of :func:`compare_pair` results: the first step at which the training
    columns differ, the first at which any column differs, the first logged events, and whether the training columns
    agree at every step before the first event E (and from which step they differ: E or E + 1). ``pair``: the two
    runs' names, for the first column's header."""
    lines = [f"| seed ({pair[0]} vs {pair[1]}) | training columns differ from | any column differs from | first dual clip | first cap "
             "| first truncation | identical before the first event E |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.cap_logged:
            cap = _step(r.first_cap)
        elif r.cap_not_before is not None:
            cap = f"not logged; >= {r.cap_not_before}"
        else:
            cap = "not logged"
        d = r.first_training_difference
        if not r.identical_before_first_event:
            verdict = "no"
        elif d is None:
            verdict = "yes; never differ" + ("" if r.first_event is None else f" ({r.steps} steps)")
        else:
            offset = d - r.first_event
            verdict = f"yes; differ from E{'' if offset == 0 else f' + {offset}'}"
        lines.append(f"| {r.seed} | {_step(d)} | {_step(r.first_difference)} | {_step(r.first_dual_clip)} | {cap} | "
                     f"{_step(r.first_truncation)} | {verdict} |")
    return "\n".join(lines)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="identity block", exit_on_error=False)
    p.add_argument("--grid", required=True, help="the grid folder holding both runs (main, ...)")
    p.add_argument("--pair", nargs=2, required=True, metavar=("A", "B"),
                   help="the two run names (folder stems): a clip-form method and its mask-form twin")
    return p


_BLOCK = re.compile(r"(?P<open><!-- identity (?P<args>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?identity[ >]).)*?)"
                    r"(?P<close><!-- /identity -->)", re.S)
"""An identity block of a report: the opening marker with its options, a body without other markers, the close."""


def render_identity(text: str, runs: "str | Path | None") -> str:
    """``text`` with every block ``<!-- identity --grid G --pair A B -->`` ... ``<!-- /identity -->`` refilled by
    :func:`identity_table` over the seeds k with both ``<runs>/G/A-seed<k>`` and ``<runs>/G/B-seed<k>``.
    ValueError names a block whose options are wrong or whose runs are missing (or ``runs`` None with a block)."""
    def fill(m: "re.Match") -> str:
        if runs is None:
            raise ValueError(f"report block <!-- identity {m.group('args')} --> needs the run folders: pass runs= "
                             "(the folder of summary.csv)")
        try:
            o = _parser().parse_args(shlex.split(m.group("args")))
        except ValueError as e:
            raise ValueError(f"bad options in report block <!-- identity {m.group('args')} -->: {e}") from None
        grid = Path(runs) / o.grid
        a, b = o.pair
        seeds = sorted(int(p.name.rsplit("-seed", 1)[1]) for p in grid.glob(f"{a}-seed*")
                       if p.name.rsplit("-seed", 1)[1].isdigit() and (grid / f"{b}-seed{p.name.rsplit('-seed', 1)[1]}").is_dir())
        if not seeds:
            raise ValueError(f"report block <!-- identity {m.group('args')} -->: no seed has both {grid / a}-seed<k> "
                             f"and {grid / b}-seed<k>")
        table = identity_table([compare_pair(grid / f"{a}-seed{k}", grid / f"{b}-seed{k}") for k in seeds], (a, b))
        return m.group("open") + table + "\n" + m.group("close")

    return _BLOCK.sub(fill, text)
