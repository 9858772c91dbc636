"""The layering of docs/architecture.md, enforced: every import inside ``bandpo`` points down.

    registry, cli (0) <- operator (1) <- losses (2) <- training (3) | integrations (3) <- experiments (4)

A module may import modules of its own subpackage and of lower layers, never of a higher layer, and training and
integrations (both layer 3) never import each other. Imports are read with ``ast`` (module level and inside
functions, absolute ``bandpo.x`` and relative ``from ..x import y``), so an import hidden in a function to dodge a
cycle is still caught. ``bandpo/__init__.py`` is the facade: it may import anything, and importing it (``import
bandpo``) from inside the package counts as importing the top of the training layer, so only experiments may.
``bandpo_theory`` (the folder ``theory/``) sits beside the package: it may use the facade, the registry and the
operator (and the command-line helper ``bandpo.cli``), and ``bandpo`` never imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bandpo"
THEORY = ROOT / "theory"

# Subpackage (or top-level module) of bandpo -> layer. training and integrations share layer 3 but are separate.
LAYERS = {"registry": 0, "cli": 0, "operator": 1, "losses": 2, "training": 3, "integrations": 3, "experiments": 4}
FACADE = "bandpo"
FACADE_LAYER = 3  # bandpo/__init__.py imports bandpo.training.config; only experiments may import the facade
THEORY_ALLOWED = ("registry", "cli", "operator")  # besides the facade itself


class Import(NamedTuple):
    file: Path
    line: int
    target: str  # absolute dotted name, e.g. "bandpo.losses.core"
    text: str  # the source line, for the message

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text.strip()}"


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(path: Path, root: Path, package: str) -> Iterator[Import]:
    """Every import in ``path`` (at any depth), relative ones resolved to absolute dotted names."""
    source = path.read_text()
    lines = source.splitlines()
    module = _module_name(path, root, package)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, lines[node.lineno - 1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 > len(pkg) - 1:
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if node.module is None:  # "from . import x": x is a submodule (or a name of the package)
                for alias in node.names:
                    yield Import(path, node.lineno, f"{base}.{alias.name}", lines[node.lineno - 1])
            else:
                yield Import(path, node.lineno, base, lines[node.lineno - 1])


def _part(dotted: str) -> Optional[str]:
    """The bandpo subpackage a dotted name belongs to ("losses" for bandpo.losses.core), FACADE for the bare
    ``bandpo`` or a name of the facade (``from bandpo import band``), None outside bandpo."""
    parts = dotted.split(".")
    if parts[0] != "bandpo":
        return None
    if len(parts) == 1 or parts[1] not in LAYERS:
        return FACADE
    return parts[1]


def _layer(part: str) -> int:
    return FACADE_LAYER if part == FACADE else LAYERS[part]


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _violation(imp: Import, own: str) -> Optional[str]:
    part = _part(imp.target)
    if imp.target.split(".")[0] in ("bandpo_theory", "theory"):
        return "bandpo never imports bandpo_theory"
    if part is None or part == own:
        return None
    if part == FACADE and own != "experiments":
        return "imports the facade `bandpo` (which loads bandpo.training); import the module that defines the name"
    if _layer(part) > _layer(own):
        return f"{own} (layer {_layer(own)}) imports {part} (layer {_layer(part)}): imports must point down"
    if _layer(part) == _layer(own) and part != FACADE:
        return f"{own} imports {part}: they are side by side (layer {_layer(own)}) and must not import each other"
    return None


def test_every_module_has_a_layer():
    unassigned = [str(p.relative_to(ROOT)) for p in _package_files()
                  if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in LAYERS]
    assert not unassigned, f"modules outside every layer (add them to docs/architecture.md and LAYERS): {unassigned}"


def test_imports_point_down():
    problems = []
    for path in _package_files():
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imp in _imports(path, PACKAGE, "bandpo"):
            why = _violation(imp, own)
            if why:
                problems.append(f"{imp.where()}  ->  {why}")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def _module_graph(package_dir: Path, package: str) -> dict:
    """Module -> the package's modules it imports (module level and inside functions). ``from x import name``
    counts as importing ``x``; ``from . import y`` as importing the submodule ``y``. Package ``__init__`` files are
    left out: they only re-export, and ``import bandpo.x.y`` runs ``bandpo/x/__init__.py`` first whatever y imports."""
    modules = {_module_name(p, package_dir, package): p for p in package_dir.rglob("*.py") if p.name != "__init__.py"}
    graph: dict = {}
    for name, path in modules.items():
        targets = set()
        for imp in _imports(path, package_dir, package):
            target = imp.target
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # from x.y import name -> x.y; a name of a module -> the module
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict) -> list:
    """Every strongly connected component of more than one module (each holds a cycle), sorted."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    out: list = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles():
    """No two modules of the package import each other, directly or through others, not even inside functions
    (an import moved into a function to dodge a cycle at load time is still a knot for a reader)."""
    cycles = _cycles(_module_graph(PACKAGE, "bandpo"))
    assert not cycles, "import cycles (each line a set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_catches_a_cycle(tmp_path):
    pkg = tmp_path / "bandpo" / "training"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("from .a import x\n")
    graph = _module_graph(tmp_path / "bandpo", "bandpo")
    assert graph["bandpo.training.d"] == {"bandpo.training.a"}
    assert _cycles(graph) == [["bandpo.training.a", "bandpo.training.b", "bandpo.training.c"]]


def test_theory_uses_only_the_facade_registry_and_operator():
    problems = []
    for path in sorted(THEORY.glob("*.py")):
        for imp in _imports(path, THEORY, "bandpo_theory"):
            part = _part(imp.target)
            if part is not None and part != FACADE and part not in THEORY_ALLOWED:
                problems.append(f"{imp.where()}  ->  bandpo_theory may use bandpo, bandpo.registry, bandpo.operator")
            if imp.target.split(".")[0] == "theory":
                problems.append(f"{imp.where()}  ->  the package is installed as bandpo_theory, not theory")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_violations(tmp_path):
    """The rules above reject what they should: an upward relative import inside a function, a sideways absolute
    one, the facade, and bandpo_theory; and accept imports within a subpackage and downward."""
    pkg = tmp_path / "bandpo"
    (pkg / "operator").mkdir(parents=True)
    (pkg / "training").mkdir()
    (pkg / "operator" / "bad.py").write_text(
        "from ..registry import Registry\nfrom . import numerics\n\ndef f():\n    from ..losses.core import policy_loss\n"
    )
    (pkg / "training" / "side.py").write_text(
        "import bandpo.integrations.trl\nimport bandpo\nfrom bandpo_theory import derive\nfrom .tasks import TASKS\n"
    )
    found = {}
    for path in sorted(pkg.rglob("*.py")):
        own = path.relative_to(pkg).parts[0]
        for imp in _imports(path, pkg, "bandpo"):
            found[(path.name, imp.line, imp.target)] = _violation(imp, own)
    assert found[("bad.py", 1, "bandpo.registry")] is None
    assert found[("bad.py", 2, "bandpo.operator.numerics")] is None
    assert "must point down" in found[("bad.py", 5, "bandpo.losses.core")]
    assert "side by side" in found[("side.py", 1, "bandpo.integrations.trl")]
    assert "facade" in found[("side.py", 2, "bandpo")]
    assert "bandpo_theory" in found[("side.py", 3, "bandpo_theory")]
    assert found[("side.py", 4, "bandpo.training.tasks")] is None


def _fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_theory_installs_as_bandpo_theory(tmp_path):
    """Outside the checkout (so that the folder theory/ is not on sys.path) ``import theory`` fails and
    ``import bandpo_theory`` works without loading cvxpy (the certificates load it on first use)."""
    out = _fresh("import theory", tmp_path)
    assert out.returncode != 0 and "No module named 'theory'" in out.stderr, out.stderr
    out = _fresh("import sys, bandpo_theory; print(bandpo_theory.__name__, 'cvxpy' in sys.modules)", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bandpo_theory", "False"]


@pytest.mark.parametrize("module", ["bandpo.training.tasks", "bandpo.training.rollout", "bandpo.losses",
                                    "bandpo.training.cli", "bandpo.training.launch"])
def test_layers_below_the_trainer_stay_light(module, tmp_path):
    """Like ``import bandpo`` (tests/test_packaging.py), the tasks, the rollout pieces, the losses and the
    training command line (with the start-up path it runs) import neither Lightning nor transformers nor the
    theory's sympy/cvxpy until they are used (``--help`` and a bad flag answer at once)."""
    heavy = ("sympy", "cvxpy", "lightning", "transformers", "torch._dynamo")
    out = _fresh(f"import sys, {module}; print(','.join(m for m in {heavy!r} if m in sys.modules))", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_band_calls_stay_light(tmp_path):
    """Calling the operator, not only importing it, loads none of the heavy modules: every path (closed form,
    per-delta tables, a per-token tensor delta with its shape check, float64) on a first call in a fresh process.
    (torch.broadcast_shapes, which the tensor-delta shape check used, imports sympy: 0.3 s of a first call.)"""
    heavy = ("sympy", "cvxpy", "lightning", "transformers", "torch._dynamo")
    code = (
        "import sys, torch, bandpo\n"
        "x = -torch.rand(4, 3)\n"
        "for name in ('kl', 'tv', 'js'):\n"
        "    bandpo.band(x, 0.05, name); bandpo.band(x, torch.full((3,), 0.05), name)\n"
        "    bandpo.log_band(x.double(), torch.full((4, 1), 0.05, dtype=torch.float64), name)\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = _fresh(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"band calls loaded {out.stdout.strip()}"


def _launch_steps_out_of_order(source: str) -> list:
    """The functions of ``bandpo/training/launch.py`` that ``_run_in_locked_folder`` calls, where one is defined
    above it or above a step it calls earlier: ``(name, line)`` pairs, empty when the file reads top-down."""
    tree = ast.parse(source)
    defined = {n.name: n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_run_in_locked_folder")
    calls = sorted((c.lineno, c.col_offset, c.func.id) for c in ast.walk(body)
                   if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in defined)
    steps = list(dict.fromkeys(name for _, _, name in calls))
    last, wrong = body.lineno, []
    for name in steps:
        if defined[name] < last:
            wrong.append((name, defined[name]))
        last = max(last, defined[name])
    return wrong


def test_the_start_up_path_reads_top_down():
    """``launch.run`` calls ``_run_in_locked_folder``, the run's steps in order; each step is defined below it, in
    the order it is called, so the file reads as the run goes."""
    source = (PACKAGE / "training" / "launch.py").read_text()
    assert _launch_steps_out_of_order(source) == []
    # and the check sees a step moved above the sequence
    moved = source.replace("def _pin_numerics(", "def _pin_numerics_moved(", 1)
    moved = moved.replace("def _run_in_locked_folder(", "def _pin_numerics(cfg):\n    pass\n\n\ndef _run_in_locked_folder(", 1)
    assert [name for name, _ in _launch_steps_out_of_order(moved)] == ["_pin_numerics"]
