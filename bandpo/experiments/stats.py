"""Paired bootstrap statistics over seeds: differences against a baseline method with 95 % percentile intervals.

    python -m bandpo.experiments.stats                                   # paper_figures/data/testbed/summary.csv
    python -m bandpo.experiments.stats some/summary.csv --metrics eval_mean collapsed

The experiments pair runs by seed (same warm start, same sampler seed; ``bandpo.experiments.testbed``), so a
comparison of method A with the baseline B is over the per-seed differences d_k = A_k - B_k of the seeds both
have. :func:`bootstrap_mean` gives their mean and a percentile bootstrap interval: resample the n differences
with replacement, take the mean, repeat, and read the 2.5 % and 97.5 % quantiles. The same applies to rates: for a
0/1 statistic (``collapsed``, ``discovered``) the mean difference is the difference of the two rates.

Everything is a pure function: the resamples come from a NumPy generator seeded by ``seed`` (default 0), so the
same numbers always give the same interval. Resamples are drawn in antithetic pairs: the differences are sorted,
and each resample of indices i_1..i_n is paired with its mirror n-1-i_1..n-1-i_n (itself a uniform resample, so the
bootstrap distribution is unchanged); this halves the Monte-Carlo noise for near-symmetric data and makes the
interval of data symmetric about c exactly symmetric about c.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..cli import ArgumentParser

__all__ = ["Interval", "RESAMPLES", "baseline_of", "bootstrap_mean", "candidates", "compare", "markdown_table", "render_report", "paired_differences", "select_rows", "seed_mean"]

RESAMPLES = 10_000
"""Bootstrap resamples per interval (5 000 antithetic pairs)."""
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap percentile interval."""

    estimate: float
    """Mean of the values (nan without values)."""
    low: float
    """Lower end, the (1 - level)/2 quantile of the bootstrap means (nan with fewer than 2 values)."""
    high: float
    """Upper end, the (1 + level)/2 quantile of the bootstrap means (nan with fewer than 2 values)."""
    n: int
    """Number of values (seeds, for a paired difference)."""

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (strictly)."""
        return bool(self.low > 0 or self.high < 0)


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Mean of ``values`` and its percentile bootstrap interval at ``level`` (``resamples`` resamples of size n).

    NaN values are dropped first. With no value everything is nan; with one value the estimate is that value and the
    interval is nan (one seed says nothing about the spread). Constant values give a zero-width interval.

    Raises ValueError unless ``resamples`` is an even number >= 2 and ``0 < level < 1``.
    """
    if not (isinstance(resamples, (int, np.integer)) and resamples >= 2 and resamples % 2 == 0):
        raise ValueError(f"resamples must be an even integer >= 2 (antithetic pairs), got {resamples!r}")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    x = np.asarray(values, dtype=float).ravel()
    x = np.sort(x[np.isfinite(x)])
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    estimate = float(x.mean())
    if n == 1:
        return Interval(estimate, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples // 2, n))
    means = np.concatenate([x[idx].mean(axis=1), x[n - 1 - idx].mean(axis=1)])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), n)


def select_rows(rows: Sequence[Mapping], spec: Mapping) -> list:
    """The rows whose values match every item of ``spec`` (e.g. ``{"method": "clip", "setting": "default"}``)."""
    return [r for r in rows if all(r.get(k) == v for k, v in spec.items())]


def _by_seed(rows: Sequence[Mapping], spec: Mapping, metric: str) -> dict:
    chosen = select_rows(rows, spec)
    out: dict = {}
    for r in chosen:
        if metric not in r:
            raise ValueError(f"no column {metric!r} in the rows; columns: {sorted(r)}")
        seed = int(r["seed"])
        if seed in out:
            raise ValueError(f"two rows for seed {seed} match {dict(spec)}: add a key (e.g. 'grid' or 'setting')")
        out[seed] = float(r[metric])
    return out


def paired_differences(rows: Sequence[Mapping], metric: str, candidate: Mapping,
                       baseline: Optional[Mapping] = None) -> dict:
    """{seed: candidate - baseline} of ``metric`` over the seeds where both have a finite value.

    ``rows`` are summary.csv rows (with ``seed`` and ``metric``); ``candidate`` and ``baseline`` select rows by
    their values (default baseline: ``{"method": "clip", "setting": "default"}``). Raises ValueError when a
    selection holds two rows of one seed or the metric is not a column.
    """
    baseline = {"method": "clip", "setting": "default"} if baseline is None else baseline
    a, b = _by_seed(rows, candidate, metric), _by_seed(rows, baseline, metric)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])}


def seed_mean(rows: Sequence[Mapping], metric: str, spec: Mapping, **kw) -> Interval:
    """Mean over seeds of ``metric`` for the rows matching ``spec``, with its bootstrap interval (``kw``: those of
    :func:`bootstrap_mean`)."""
    return bootstrap_mean(list(_by_seed(rows, spec, metric).values()), **kw)


def compare(rows: Sequence[Mapping], metrics: Sequence[str], candidates: Sequence[Mapping],
            baseline: Optional[Mapping] = None, **kw) -> list:
    """One dict per (candidate, metric): the candidate's selection, ``metric``, ``n`` (paired seeds), ``diff`` (mean
    paired difference candidate - baseline), ``low``/``high`` (its bootstrap interval), and the two means over the
    paired seeds (``candidate_mean``, ``baseline_mean``). ``kw``: those of :func:`bootstrap_mean`."""
    baseline = {"method": "clip", "setting": "default"} if baseline is None else baseline
    out = []
    for cand in candidates:
        for metric in metrics:
            d = paired_differences(rows, metric, cand, baseline)
            a, b = _by_seed(rows, cand, metric), _by_seed(rows, baseline, metric)
            iv = bootstrap_mean(list(d.values()), **kw)
            out.append({**cand, "metric": metric, "n": iv.n, "diff": iv.estimate, "low": iv.low, "high": iv.high,
                        "candidate_mean": float(np.mean([a[s] for s in d])) if d else math.nan,
                        "baseline_mean": float(np.mean([b[s] for s in d])) if d else math.nan})
    return out


def baseline_of(candidate: Mapping, method: str = "clip", same_setting: bool = False) -> dict:
    """The baseline a testbed candidate pairs with: ``method`` at the same starting policy. Runs whose setting
    changes the task (``tail=<freq>``, the ``rare`` grid) start from their own warm-start and pair with the baseline
    of that setting; every other setting (δ, lr, the default) pairs with the baseline's ``default`` runs, or, with
    ``same_setting``, with the baseline's runs of the same setting (e.g. both at 0.25 x the learning rate)."""
    setting = str(candidate.get("setting", "default"))
    keep = same_setting or setting.startswith("tail=")
    return {"method": method, "setting": setting if keep else "default"}


def _fmt(metric: str, x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}" if metric.endswith("_step") else f"{x:+.3f}"


def candidates(rows: Sequence[Mapping], baseline: str = "clip", same_setting: bool = False) -> list:
    """Every (method, setting) of ``rows``, in order of appearance, as selections ``{"method", "setting"}``, except
    the baseline's own runs (those :func:`baseline_of` would pair a candidate with)."""
    pairs = dict.fromkeys((r["method"], r["setting"]) for r in rows)
    out = [{"method": m, "setting": st} for m, st in pairs]
    return [c for c in out if not (c["method"] == baseline and baseline_of(c, baseline, same_setting) == c)]


def markdown_table(rows: Sequence[Mapping], metrics: Sequence[str], grids: Optional[Sequence[str]] = None,
                   baseline: str = "clip", methods: Optional[Sequence[str]] = None, same_setting: bool = False,
                   **kw) -> str:
    """A Markdown table of paired differences against ``baseline`` (:func:`baseline_of` picks its runs) for every
    (method, setting) of ``grids`` (all if None; only ``methods`` if given) but the baseline's own
    (``same_setting``: against the baseline at the same setting, see :func:`baseline_of`): one row each, one column per metric,
    ``diff [low, high]``; a first row gives the baseline's means. The report in ``docs/testbed-report.md`` embeds
    these tables and a test checks that they match the committed data. ``kw``: those of :func:`bootstrap_mean`."""
    chosen = [r for r in rows if (grids is None or r.get("grid") in grids) and (methods is None or r["method"] in methods)]
    cands = candidates(chosen, baseline, same_setting)
    head = "| method | setting | n | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    bases = list(dict.fromkeys(tuple(sorted(baseline_of(c, baseline, same_setting).items())) for c in cands))
    for b in bases:
        spec = dict(b)
        means = [seed_mean(rows, m, spec, **kw) for m in metrics]
        lines.append(f"| {baseline} (mean) | {spec['setting']} | {means[0].n} | "
                     + " | ".join(_fmt(m, iv.estimate).lstrip("+") for m, iv in zip(metrics, means)) + " |")
    for c in cands:
        table = compare(rows, metrics, [c], baseline_of(c, baseline, same_setting), **kw)
        cells = [f"{_fmt(t['metric'], t['diff'])} [{_fmt(t['metric'], t['low'])}, {_fmt(t['metric'], t['high'])}]"
                 for t in table]
        lines.append(f"| {c['method']} | {c['setting']} | {table[0]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BLOCK = re.compile(r"(?P<open><!-- stats (?P<args>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?stats[ >]).)*?)"
                    r"(?P<close><!-- /stats -->)", re.S)
"""A table block of a report: the opening marker with its options, a body that holds no other marker (possibly
empty), the closing marker."""


def render_report(text: str, rows: Sequence[Mapping]) -> str:
    """``text`` with every block ``<!-- stats ARGS -->`` ... ``<!-- /stats -->`` refilled by :func:`markdown_table`
    with the options ARGS (those of the CLI: ``--grid``, ``--methods``, ``--metrics``, ``--baseline``,
    ``--same-setting``) on ``rows``. A report whose tables are current renders to itself (tested on the committed
    data), so its numbers cannot drift from the data. ValueError names a block whose options are wrong."""
    def fill(m: "re.Match") -> str:
        p = _parser(exit_on_error=False)
        try:
            a = p.parse_args(shlex.split(m.group("args")))
        except ValueError as e:
            raise ValueError(f"bad options in report block <!-- stats {m.group('args')} -->: {e}") from None
        table = markdown_table(rows, a.metrics, a.grid, a.baseline, a.methods, a.same_setting)
        return m.group("open") + table + "\n" + m.group("close")

    return _BLOCK.sub(fill, text)


DEFAULT_METRICS = ("eval_mean", "eval_pass", "entropy_last", "discovery_step", "discovered", "collapsed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .testbed import DEFAULT_OUT, read_summary

    p = _parser()
    p.add_argument("summary", nargs="?", default=str(DEFAULT_OUT / "summary.csv"), help="summary.csv of the testbed")
    p.add_argument("--refresh", metavar="REPORT", default=None,
                   help="refill the <!-- stats ... --> tables of a Markdown report in place (render_report)")
    args = p.parse_args(argv)
    summary = Path(args.summary)
    if summary.is_dir() and (summary / "summary.csv").is_file():
        summary = summary / "summary.csv"
    if not summary.is_file():
        why = "is a folder without summary.csv" if summary.is_dir() else "does not exist"
        return p.report(f"{args.summary!r} {why}; give the summary.csv written by python -m bandpo.experiments.testbed")
    try:
        rows = read_summary(summary)
        _check_selection(rows, args)
        if args.refresh:
            path = Path(args.refresh)
            path.write_text(render_report(path.read_text(encoding="utf-8"), rows), encoding="utf-8")
            print(f"refreshed the tables of {path}")
            return 0
    except (OSError, ValueError) as e:
        return p.report(e)
    return _print(args, rows)


def _check_selection(rows: Sequence[Mapping], args: argparse.Namespace) -> None:
    """Raise a one-line ValueError when ``rows`` are empty or ``--grid``, ``--baseline`` or ``--methods`` name
    nothing in them (the tables would be empty or all n/a)."""
    if not rows:
        raise ValueError("the summary has no rows; run python -m bandpo.experiments.testbed first")
    for flag, column, wanted in (("--grid", "grid", args.grid), ("--baseline", "method", [args.baseline]),
                                 ("--methods", "method", args.methods)):
        have = sorted({str(r.get(column)) for r in rows})
        unknown = [w for w in wanted or () if w not in have]
        if unknown:
            raise ValueError(f"{flag} {' '.join(unknown)}: not in the summary; its {column}s: {', '.join(have)}")


def _parser(exit_on_error: bool = True) -> ArgumentParser:
    """The table options, shared by the CLI and the report blocks (:func:`render_report`, which gets a
    ValueError for bad options instead of an exit)."""
    p = ArgumentParser(prog="python -m bandpo.experiments.stats", description=__doc__.split("\n\n")[0],
                       exit_on_error=exit_on_error)
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--grid", nargs="+", default=None, help="only these grids (default: all)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (markdown_table)")
    p.add_argument("--methods", nargs="+", default=None, help="with --markdown: only these methods")
    p.add_argument("--same-setting", action="store_true",
                   help="with --markdown: pair each run with the baseline's run of the same setting")
    p.add_argument("--baseline", default="clip",
                   help="baseline method id (its 'default' runs; for a 'tail=' setting, its runs of that setting)")
    return p


def _print(args: argparse.Namespace, rows: list) -> int:
    if args.markdown:
        try:
            print(markdown_table(rows, args.metrics, args.grid, args.baseline, args.methods, args.same_setting))
        except ValueError as e:
            return _parser().report(e)
        return 0
    rows = [r for r in rows if args.grid is None or r.get("grid") in args.grid]
    cands = candidates(rows, args.baseline)
    try:
        table = [t for c in cands for t in compare(rows, args.metrics, [c], baseline_of(c, args.baseline))]
    except ValueError as e:
        return _parser().report(e)
    print(f"paired difference vs {args.baseline} (mean over seeds, 95% bootstrap interval, {RESAMPLES} resamples)")
    print(f"{'method':<14} {'setting':<11} {'metric':<15} {'n':>2} {'diff':>9} {'low':>9} {'high':>9}")
    for r in table:
        print(f"{r['method']:<14} {r['setting']:<11} {r['metric']:<15} {r['n']:>2} {r['diff']:9.4f} "
              f"{r['low']:9.4f} {r['high']:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
