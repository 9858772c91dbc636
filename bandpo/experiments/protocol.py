"""The pre-registered analysis of the rare-tail protocol (docs/protocol-rare-tail.md), fixed before any of its runs.

    python -m bandpo.experiments.protocol paper_figures/data/protocol/runs/summary.csv

Reads the summary of the ``confirm`` grid (``python -m bandpo.experiments.testbed --grid confirm``), pairs the arms by
seed, and computes, in this order:

* **primary**: "tail discovered by the last step" (``discovered``), band_kl_upper_rare vs clip: the exact two-sided
  McNemar test (:func:`~bandpo.experiments.stats.mcnemar`), α = :data:`ALPHA`; the paired difference of rates
  with its t interval;
* **secondaries** (one Holm family, :func:`~bandpo.experiments.stats.holm`, α = :data:`ALPHA`), each paired by seed:
  (S1) the same McNemar test for band_kl vs clip; for each of band_kl_upper_rare and band_kl vs clip:
  (S2) restricted mean discovery step at τ = max_steps (:func:`~bandpo.experiments.stats.paired_rmst`: exact
  sign-flip test, t interval), (S3) held-out mean@8 after the last step (``eval_mean``: exact sign-flip test on the
  1/(8 x heldout) grid, t interval), (S4) drift of the tail's log-probability over steps whose rollout did not
  sample it (``drift_log_unsampled``: t interval, and a sign-flip test approximated by 10^6 seeded random sign
  patterns since the values lie on no grid). Seven tests in the family.

Only seeds where every arm has a finished run enter; the numbers of seeds per arm is printed, and the protocol's
n is checked (fewer finished seeds is reported, never filled in later by new seeds).

``--markdown`` prints the same results as Markdown tables (:func:`markdown`); a report holding a block
``<!-- protocol SUMMARY_CSV -->`` ... ``<!-- /protocol -->`` gets it refilled by :func:`render_protocol`
(``python -m bandpo.experiments.protocol --refresh REPORT``, the path relative to the current folder; checked on the
committed data by tests/test_testbed_report.py).
These only format what :func:`analyze` returns; the analysis itself is the registered one.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .stats import holm, mcnemar, paired_rmst, sign_flip, t_interval

__all__ = ["ALPHA", "ARMS", "N_SEEDS", "analyze", "markdown", "render_protocol"]

ALPHA = 0.05
"""Level of the primary test and of the Holm family of secondary tests (two-sided)."""
ARMS = ("clip", "band_kl", "band_kl_upper_rare")
"""The arms; clip is the comparator."""
N_SEEDS = 96
"""Paired seeds per arm (0 .. 95): the rule of amendment 1 applied in amendment 2 (docs/protocol-rare-tail.md)."""
MC_SIGN_PATTERNS = 1_000_000
"""Random sign patterns of the S4 test (seeded), whose values lie on no grid."""


def _by_seed(rows: Sequence[Mapping], method: str) -> dict:
    return {int(r["seed"]): r for r in rows if r.get("grid") == "confirm" and r["method"] == method}


def _mc_sign_flip(d: np.ndarray, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    observed = abs(d.sum())
    hits, done = 0, 0
    while done < MC_SIGN_PATTERNS:
        k = min(100_000, MC_SIGN_PATTERNS - done)
        signs = rng.integers(0, 2, size=(k, d.size)) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - 1e-12 * max(1.0, observed)).sum())
        done += k
    return (hits + 1) / (MC_SIGN_PATTERNS + 1)


def analyze(rows: Sequence[Mapping], heldout: int = 100, n_eval: int = 8) -> dict:
    """The protocol's results from summary rows (``read_summary``): {"seeds": paired seeds, "primary": {...},
    "secondary": [{name, estimate, low, high, p, p_holm, reject}, ...]}."""
    arms = {m: _by_seed(rows, m) for m in ARMS}
    seeds = sorted(set.intersection(*(set(a) for a in arms.values())))
    if not seeds:
        raise ValueError("no seed has a finished run of every arm of the confirm grid")

    def col(method: str, key: str) -> np.ndarray:
        return np.array([float(arms[method][s][key]) for s in seeds])

    tau = float(arms["clip"][seeds[0]]["max_steps"])
    out: dict = {"seeds": len(seeds), "planned": N_SEEDS, "tau": tau}
    new, clip = col("band_kl_upper_rare", "discovered"), col("clip", "discovered")
    test = mcnemar(new, clip)
    iv = t_interval(new - clip)
    out["primary"] = {"name": "discovered: band_kl_upper_rare - clip", "rate_new": float(new.mean()),
                      "rate_clip": float(clip.mean()), "estimate": iv.estimate, "low": iv.low, "high": iv.high,
                      "new_only": test.a_only, "clip_only": test.b_only, "p": test.p_value,
                      "reject": test.p_value <= ALPHA}
    sec = []
    kl = col("band_kl", "discovered")
    t1 = mcnemar(kl, clip)
    iv = t_interval(kl - clip)
    sec.append(("S1 discovered: band_kl - clip", iv, t1.p_value))
    for arm in ("band_kl_upper_rare", "band_kl"):
        ta, tb = col(arm, "discovery_step"), col("clip", "discovery_step")
        ea, eb = col(arm, "discovered"), col("clip", "discovered")
        iv, sf = paired_rmst(ta, ea, tb, eb, tau)
        sec.append((f"S2 restricted mean discovery step (tau {tau:g}): {arm} - clip", iv, sf.p_value))
        d = col(arm, "eval_mean") - col("clip", "eval_mean")
        sec.append((f"S3 held-out mean@{n_eval}: {arm} - clip", t_interval(d),
                    sign_flip(d, resolution=1 / (heldout * n_eval)).p_value))
        d = col(arm, "drift_log_unsampled") - col("clip", "drift_log_unsampled")
        d = d[np.isfinite(d)]
        sec.append((f"S4 log-drift of the tail on unsampled steps: {arm} - clip", t_interval(d), _mc_sign_flip(d)))
    adjusted = holm([p for _, _, p in sec])
    out["secondary"] = [{"name": name, "estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n, "p": p,
                         "p_holm": q, "reject": q <= ALPHA} for (name, iv, p), q in zip(sec, adjusted)]
    return out


def _p(x: float) -> str:
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def markdown(res: dict) -> str:
    """The results of :func:`analyze` as two Markdown tables (primary, then the Holm family) and a line on n."""
    pr = res["primary"]
    verdict = "**rejected**" if pr["reject"] else "**not rejected**"
    lines = [
        f"*Paired seeds: {res['seeds']} (planned {res['planned']}). Primary: exact two-sided McNemar test at "
        f"α = {ALPHA}; difference of rates with a 95 % Student t interval on the paired 0/1 differences.*",
        "",
        "| endpoint | band_kl_upper_rare | clip | difference [95 % t] | discordant pairs (new only / clip only) "
        "| exact McNemar p | H0 |",
        "|---|---|---|---|---|---|---|",
        f"| tail discovered by step {res.get('tau', 150):g} | {pr['rate_new']:.3f} | {pr['rate_clip']:.3f} | "
        f"{pr['estimate']:+.3f} [{pr['low']:+.3f}, {pr['high']:+.3f}] | {pr['new_only']} / {pr['clip_only']} | "
        f"{_p(pr['p'])} | {verdict} |",
        "",
        f"*Secondary endpoints: one family of {len(res['secondary'])} tests, Holm-adjusted at α = {ALPHA}; estimates "
        "are paired differences arm - clip with 95 % Student t intervals (unadjusted).*",
        "",
        "| test | estimate [95 % t] | n | p | Holm p | supported |",
        "|---|---|---|---|---|---|",
    ]
    for t in res["secondary"]:
        lines.append(f"| {t['name']} | {t['estimate']:+.4g} [{t['low']:+.4g}, {t['high']:+.4g}] | {t['n']} | "
                     f"{_p(t['p'])} | {_p(t['p_holm'])} | {'yes' if t['reject'] else 'no'} |")
    return "\n".join(lines)


_BLOCK = re.compile(r"(?P<open><!-- protocol (?P<path>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?protocol).)*?)"
                    r"(?P<close><!-- /protocol -->)", re.S)
"""A protocol block of a report: the summary.csv path (relative to the repository root), a body, the closing marker."""


def render_protocol(text: str, root: "str | Path") -> str:
    """``text`` with every block ``<!-- protocol PATH -->`` ... ``<!-- /protocol -->`` refilled by :func:`markdown`
    of :func:`analyze` on the summary.csv at ``root / PATH``; ValueError names a missing file."""
    from .testbed import read_summary

    def fill(m: "re.Match") -> str:
        path = Path(root) / m.group("path").strip()
        if not path.is_file():
            raise ValueError(f"report block <!-- protocol {m.group('path')} -->: no file {path}")
        return m.group("open") + markdown(analyze(read_summary(path))) + "\n" + m.group("close")

    return _BLOCK.sub(fill, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .testbed import read_summary

    p = argparse.ArgumentParser(prog="python -m bandpo.experiments.protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("summary", nargs="?", default="paper_figures/data/protocol/runs/summary.csv")
    p.add_argument("--markdown", action="store_true", help="print the results as Markdown tables")
    p.add_argument("--refresh", metavar="REPORT", default=None,
                   help="refill the <!-- protocol PATH --> blocks of REPORT (PATH relative to the current folder)")
    args = p.parse_args(argv)
    if args.refresh is not None:
        try:
            report = Path(args.refresh)
            report.write_text(render_protocol(report.read_text(encoding="utf-8"), Path.cwd()), encoding="utf-8")
        except (OSError, ValueError) as e:
            print(f"bandpo.experiments.protocol: error: {e}", file=sys.stderr)
            return 2
        print(f"refreshed the protocol blocks of {report}")
        return 0
    if not Path(args.summary).is_file():
        print(f"bandpo.experiments.protocol: error: no file {args.summary}", file=sys.stderr)
        return 2
    try:
        res = analyze(read_summary(args.summary))
    except ValueError as e:
        print(f"bandpo.experiments.protocol: error: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(res))
        return 0
    pr = res["primary"]
    print(f"paired seeds: {res['seeds']} (planned {res['planned']})")
    print(f"PRIMARY {pr['name']}: {pr['rate_new']:.3f} vs {pr['rate_clip']:.3f}, difference {pr['estimate']:+.3f} "
          f"[{pr['low']:+.3f}, {pr['high']:+.3f}] (t, 95 %); discordant {pr['new_only']} vs {pr['clip_only']}; "
          f"exact McNemar p = {pr['p']:.4g} -> {'reject' if pr['reject'] else 'do not reject'} H0 at {ALPHA}")
    for s in res["secondary"]:
        print(f"{s['name']}: {s['estimate']:+.4g} [{s['low']:+.4g}, {s['high']:+.4g}] n={s['n']}, p = {s['p']:.4g}, "
              f"Holm p = {s['p_holm']:.4g}{' (reject)' if s['reject'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
