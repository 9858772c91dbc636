"""The notebooks in notebooks/ run headless from top to bottom without an error, and are committed clean.

Execution: nbclient, errors fatal (``allow_errors=False``), matplotlib on Agg. To keep ``make test`` fast,
the notebooks share ONE kernel started in notebooks/ (as a user's Jupyter would) and run in file order;
each starts with ``%reset -f`` inserted in front, so no variable survives from one notebook to the next
(imported modules stay cached, which is what saves the seconds of re-importing torch). Each notebook must
end by printing a line that starts with ``PASS``: its own checks (asserts) ran to the end.

The training-analysis notebook reads the committed runs (paper_figures/data/runs); where there are none, it
is pointed (``BANDPO_RUNS``) at synthetic runs in the same layout, written by paper_figures/synthetic.py.

Clean: no stored outputs, no execution counts, no widget state, so diffs show only code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
ENV_VARS = ("BANDPO_RUNS",)
"""Environment variables a notebook reads (03: which runs to analyse)."""


def _real_runs_exist() -> bool:
    runs = ROOT / "paper_figures" / "data" / "runs"
    return any(runs.glob("*-seed*/metrics.csv"))


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    for expected in ("01_band_walkthrough.ipynb", "02_theory.ipynb", "03_training_analysis.ipynb"):
        assert expected in names, f"notebooks/{expected} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name} cell {i} has execution timing metadata"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state"


@pytest.fixture(scope="module")
def kernel():
    """One python3 kernel for all notebooks, started in notebooks/ with the repository importable and Agg."""
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(NB_DIR), env=env)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


def _stream_text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                out.append(o["text"])
    return "".join(out)


def _execute(nb, km, env: "dict[str, str] | None" = None):
    """Run ``nb`` in the shared kernel after ``%reset -f``; ``env`` is set in the kernel's os.environ first
    (and the variables named in ENV_VARS are cleared otherwise, so nothing leaks between notebooks)."""
    setup = "import os as _os\n" + "".join(f"_os.environ.pop({k!r}, None)\n" for k in ENV_VARS)
    setup += "".join(f"_os.environ[{k!r}] = {v!r}\n" for k, v in (env or {}).items()) + "del _os"
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = nbclient.NotebookClient(nb, km=km, timeout=600, allow_errors=False, kernel_name="python3")
    try:
        client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    return nb


def test_a_failing_cell_fails_the_run(kernel):
    """The harness itself: an exception in a cell is fatal, and %reset -f leaves no variable behind."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leftover = 1")])
    _execute(nb, kernel)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("leftover")])
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="NameError"):
        _execute(nb, kernel)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, kernel, tmp_path):
    env = {}
    if path.stem == "03_training_analysis" and not _real_runs_exist():
        # no committed runs (yet): analyse synthetic ones in the runner's layout (paper_figures/synthetic.py)
        sys.path.insert(0, str(ROOT / "paper_figures"))
        from synthetic import write_synthetic_runs

        env["BANDPO_RUNS"] = str(write_synthetic_runs(tmp_path / "runs", seeds=(0, 1, 2), steps=40))
    nb = _execute(nbformat.read(path, as_version=4), kernel, env)
    lines = [ln for ln in _stream_text(nb).splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("PASS"), f"{path.name} did not end with a PASS line: {lines[-3:]}"
