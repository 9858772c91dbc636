"""theory: the Band operator's algebra derived by sympy, and its global optimality certified by cvxpy.

* :func:`derive_bounds` (:mod:`bandpo_theory.derive`): closed-form lower/upper bounds derived from the generator;
* :mod:`bandpo_theory.checks`: symbolic identities (root, convexity, mirror, limits, small-delta expansion);
* :mod:`bandpo_theory.asymptotics`: the limits p -> 0, p -> 1 and the unified small-delta expansion;
* :mod:`bandpo_theory.dppo`: DPPO's binary TV/KL mask against BandPO's clip (same region, same gradient but for
  cap, dual clip and truncation);
* :mod:`bandpo_theory.sequence`: the sequence-level band of GSPO's ratio (the geometric mean of the token bands)
  and why the band of a whole sequence's probability is vacuous;
* :func:`certify` (:mod:`bandpo_theory.certify`, needs cvxpy): the full-vocabulary problem solved by a conic solver;
* ``python -m bandpo_theory.report`` writes ``theory/REPORT.md``; ``python -m bandpo_theory.certify`` prints the certification table.

``bandpo`` never imports this package (nor sympy or cvxpy); this package imports ``bandpo`` only to cross-check.
"""

from .derive import BandDerivation, SideDerivation, closed_form_divergences, derive_bounds
from .generators import delta, get_symbolic, list_symbolic, p, r, register_symbolic, u

__all__ = [
    "BandDerivation",
    "SideDerivation",
    "certify",
    "closed_form_divergences",
    "delta",
    "derive_bounds",
    "get_symbolic",
    "list_symbolic",
    "p",
    "r",
    "register_symbolic",
    "u",
]


def __getattr__(name):
    """``bandpo_theory.certify`` and ``bandpo_theory.Certificate`` import cvxpy on first use (a second or two).

    ``bandpo_theory.certify`` is the module ``theory/certify.py`` (``python -m bandpo_theory.certify``); calling it calls the
    function: ``bandpo_theory.certify(p, index, delta, divergence)``.
    """
    if name in ("certify", "Certificate"):
        import importlib

        module = importlib.import_module(".certify", __name__)
        return module if name == "certify" else module.Certificate
    raise AttributeError(f"module 'bandpo_theory' has no attribute {name!r}")
