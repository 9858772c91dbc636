"""What the testbed figures (fig7, fig8, fig9 and ``fig4_training.py --testbed``) share: where the data is, how
to read it, the metric labels and the clean skip when the data is missing.

Data: ``data/testbed/summary.csv`` (one row per run) and ``data/testbed/<grid>/<variant>-seed<k>/metrics.csv``,
written by ``python -m bandpo.experiments.testbed`` (definitions of every column in its ``run_statistics``).
"""

from __future__ import annotations

from pathlib import Path

from style import DATA

TESTBED = DATA / "testbed"
"""Root of the testbed runs (``--data`` of every testbed figure)."""
RUNNER = "python -m bandpo.experiments.testbed --grid all"

METRICS = {
    "eval_mean": "held-out mean@n",
    "eval_pass": "held-out pass@k",
    "entropy_last": "final entropy (nats)",
    "discovery_step": "steps to discover the tail",
    "discovered": "tail discovered (rate)",
    "collapsed": "tail collapse (rate)",
    "p_tail_last": "final p(tail)",
    "reward_last": "final reward",
}
"""Label of each summary.csv column a figure may draw."""


def metric_label(metric: str, rows=()) -> str:
    """The label of a summary.csv column, with the n of mean@n and the k of pass@k filled in from ``rows``."""
    label = METRICS.get(metric, metric)
    for col, letter in (("eval_n", "n"), ("eval_k", "k")):
        values = sorted({int(r[col]) for r in rows if r.get(col) == r.get(col) and col in r})  # nan != nan
        if len(values) == 1:
            label = label.replace(f"@{letter}", f"@{values[0]}")
    return label


def load_summary(data: Path = TESTBED):
    """The rows of ``<data>/summary.csv`` (``bandpo.experiments.testbed.read_summary``), or None when it is
    missing or empty."""
    from bandpo.experiments.testbed import read_summary

    path = Path(data) / "summary.csv"
    if not path.is_file():
        return None
    rows = read_summary(path)
    return rows or None


def skip(name: str, why: str) -> list:
    """Say that figure ``name`` is not drawn and why (the data is missing), and return no file."""
    print(f"{name}: skipped: {why} (produce it with `{RUNNER}` or `make reproduce`)", flush=True)
    return []
