"""pyproject.toml is the source of truth; environment.yml (conda) must list the same packages.

conda is not available on CI, so the environment cannot be solved here: this test parses both files and
compares package names, and checks the torch pin that keeps installs on the CPU wheel.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            have |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif not dep.startswith(("python", "pip")):
            have.add(_name(dep))
    assert wanted - have == set(), f"in pyproject but not environment.yml: {sorted(wanted - have)}"
    assert have - wanted == set(), f"in environment.yml but not pyproject: {sorted(have - wanted)}"


def test_torch_is_pinned_where_installs_happen():
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_import_bandpo_stays_light():
    """bandpo never imports sympy or cvxpy at run time (theory/ does), nor Lightning/transformers until the
    trainer is used; checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, bandpo, torch; bandpo.band(torch.zeros(3), 0.05); "
        "print(','.join(m for m in ('sympy', 'cvxpy', 'mpmath', 'lightning', 'transformers', 'torch._dynamo') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""



@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """The wheel built as docs/integrations.md says (``pip wheel . --no-deps``), here without build isolation (no
    network), from a copy of the sources (setuptools writes build/ and *.egg-info next to them)."""
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bandpo", "theory"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        cwd=src, check=True, capture_output=True, text=True,
    )
    (wheel,) = dist.glob("bandpo-*.whl")
    return wheel


def test_wheel_of_docs_integrations_declares_extras_entry_point_and_data(built_wheel):
    """bandpo is not on the package index: docs/integrations.md installs a built wheel with extras, keeping torch on
    the same line. The wheel's metadata declares every extra with its pins, the verl entry point, and it carries
    the package data (presets, the verl recipe)."""
    import email
    import zipfile

    from packaging.requirements import Requirement

    doc = (ROOT / "docs" / "integrations.md").read_text()
    assert "pip wheel . --no-deps -w dist" in doc and '"dist/bandpo-0.1.0-py3-none-any.whl[trl]"' in doc
    assert "torch==2.13.0" in doc and "download.pytorch.org/whl/cpu" in doc
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert built_wheel.name == f"bandpo-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(built_wheel) as zf:
        names = set(zf.namelist())
        info = f"bandpo-{project['version']}.dist-info"
        meta = email.message_from_string(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert set(meta.get_all("Provides-Extra")) == set(project["optional-dependencies"])
    declared = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    for extra, reqs in project["optional-dependencies"].items():
        for req in map(Requirement, reqs):
            assert any(
                d.name == req.name and d.specifier == req.specifier and d.extras == req.extras
                and d.marker is not None and d.marker.evaluate({"extra": extra})
                for d in declared
            ), (extra, str(req))
    assert "[verl.plugins]" in entry_points and "bandpo = bandpo.integrations.verl" in entry_points
    assert {"bandpo/integrations/verl_bandpo_kl.sh", "bandpo/training/presets/paper-bandpo-kl.yaml",
            "bandpo/integrations/trl.py", "bandpo_theory/__init__.py"} <= names


@pytest.mark.slow
def test_wheel_installs_and_imports_from_the_install(built_wheel, tmp_path):
    """``pip install --no-index --no-deps`` of the wheel, then bandpo imports from there (not the checkout) and the
    documented command finds the shipped verl recipe."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", "--target", str(site), str(built_wheel)],
        check=True, capture_output=True, text=True,
    )
    code = (
        "import bandpo, bandpo.integrations as m, pathlib; "
        "print(bandpo.__file__); print(pathlib.Path(m.__file__).with_name('verl_bandpo_kl.sh').is_file())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)})
    where, recipe = out.stdout.split()
    assert where.startswith(str(site)) and recipe == "True"
