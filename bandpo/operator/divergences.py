"""f-divergences as small registered objects.

A divergence is named by its generator ``f``: convex on (0, inf) with ``f(1) = 0``, and

    D_f(Q ‖ P) = Σ_a P(a) · f(Q(a) / P(a)),

so the ratio r = π_new / π_old sits inside ``f`` (Csiszár's form). For the sampled token with old
probability ``p`` the Band operator works with the two-point reduction

    g_f(p, r) = p · f(r) + (1 - p) · f((1 - p r) / (1 - p)),     r ∈ [0, 1/p]

(the paper's "scalarised divergence constraint", arXiv 2603.04918; derived in ``theory/REPORT.md``).

Each :class:`Divergence` carries its generator, optionally its derivative ``df`` (used by the Newton
steps; autograd supplies it otherwise), ``f''(1)`` (the curvature that sets the small-delta band: for
every smooth f, g_f(p, r) ≈ f''(1) p (r - 1)² / (2 (1 - p)), so the band is 1 ± sqrt(2 δ (1-p) / (f''(1) p))
to first order), optionally a log-space evaluator ``phi`` of the one-sided root problem, and optionally
a ``log_band`` routine (a closed form). Divergences without ``log_band`` are solved from a
delta-independent start table plus Newton steps (:mod:`bandpo.operator.tables`).

Register your own with :func:`register_divergence`; the generator alone is enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from ..registry import Registry

Generator = Callable[[Tensor], Tensor]
# (logp, log1mp, delta) -> (log_lower, log_upper), all float64 tensors of one shape.
LogBandFn = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True, eq=False)
class Divergence:
    """An f-divergence D_f(Q‖P) = Σ P f(Q/P), described by its generator.

    Instances are immutable; build them with :func:`register_divergence` (which validates).
    """

    name: str
    """Registry key, e.g. ``"kl"``."""
    f: Generator
    """Generator f(u), elementwise on a float64 tensor of u >= 0 (f(0) may be +inf)."""
    df: Optional[Generator] = None
    """Derivative f'(u) on u > 0. ``None``: computed by autograd from ``f``."""
    f2_at_1: float = float("nan")
    """f''(1). The small-delta band is 1 ± sqrt(2·delta·(1-p) / (f''(1)·p)); NaN when f is not smooth at 1 (TV)."""
    f_at_0: float = float("inf")
    """lim_{u→0+} f(u); decides whether the lower bound can saturate at r = 0."""
    slope_at_inf: float = float("inf")
    """lim_{u→∞} f(u)/u (the recession slope); decides whether the upper bound can saturate at r = 1/p."""
    phi: Optional[Callable] = None
    """Optional log-space evaluator φ(s, log_a, log_b, a, b) -> (φ, φ', log v) of the one-sided problem
    (:mod:`bandpo.operator.solvers`); the generic one built from ``f`` and ``df`` otherwise."""
    log_band: Optional[LogBandFn] = None
    """Closed form or dedicated solver (logp, log1mp, delta) -> (log_lower, log_upper); ``None``: the start
    table plus Newton steps (:mod:`bandpo.operator.tables`)."""
    formula: str = ""
    """Human-readable generator, e.g. ``"-log u"``."""
    description: str = ""
    """What D_f is in words, including its direction and normalisation."""
    closed_form: bool = field(default=False)
    """True when ``log_band`` is an exact closed form (not an iterative solver)."""

    def __repr__(self) -> str:
        kind = "closed form" if self.closed_form else ("dedicated solver" if self.log_band else "tabulated start + Newton")
        return f"Divergence({self.name!r}, f(u) = {self.formula or '<callable>'}, {kind})"

    def g(self, p: Tensor, r: Tensor) -> Tensor:
        """The two-point reduction g_f(p, r) = p f(r) + (1-p) f((1-p r)/(1-p)), evaluated directly.

        A plain reference formula for tests and plots (it is not how the solvers evaluate it).
        """
        return p * self.f(r) + (1 - p) * self.f((1 - p * r) / (1 - p))


DIVERGENCES: Registry[Divergence] = Registry("divergence", hint="register your own with bandpo.register_divergence")
"""Every registered divergence by name."""


def list_divergences() -> list[str]:
    """Names of the registered divergences, sorted."""
    return DIVERGENCES.names()


def get_divergence(divergence: "str | Divergence") -> Divergence:
    """Look a divergence up by name (or pass a :class:`Divergence` through).

    Raises:
        ValueError: the name is not registered; the message lists the known names.
    """
    if isinstance(divergence, Divergence):
        return divergence
    return DIVERGENCES.get(divergence)


def _numeric_limit(f: Generator, u: float, scale: float = 1.0) -> float:
    """f(u)*scale at a float64 point, NaN mapped to NaN (callers decide)."""
    with torch.no_grad():
        return float(f(torch.tensor([u], dtype=torch.float64))[0]) * scale


def _check_generator(name: str, f: Generator) -> None:
    """f(1) = 0 and convexity on a log-spaced grid of (1e-6, 1e6), in float64."""
    with torch.no_grad():
        try:
            f1 = f(torch.ones(1, dtype=torch.float64))
        except Exception as exc:  # a user callable that does not take tensors
            raise ValueError(f"generator of {name!r} must map a float64 tensor elementwise: {exc}") from exc
        if not isinstance(f1, Tensor) or f1.shape != (1,):
            raise ValueError(f"generator of {name!r} must return a tensor of the input's shape")
        if not abs(float(f1[0])) <= 1e-12:
            raise ValueError(f"generator of {name!r} must have f(1) = 0 (within 1e-12), got f(1) = {float(f1[0])!r}")
        # Convexity: second differences on a geometric grid are nonnegative up to rounding.
        u = torch.logspace(-6, 6, 2401, dtype=torch.float64)
        fu = f(u)
        if not torch.isfinite(fu).all():
            raise ValueError(f"generator of {name!r} must be finite on (0, inf); got non-finite values on [1e-6, 1e6]")
        h1 = u[1:-1] - u[:-2]
        h2 = u[2:] - u[1:-1]
        # divided second difference; scale-aware tolerance for rounding
        second = 2 * ((fu[2:] - fu[1:-1]) / h2 - (fu[1:-1] - fu[:-2]) / h1) / (h1 + h2)
        tol = 1e-9 * (fu[:-2].abs() + fu[1:-1].abs() + fu[2:].abs() + 1) / (h1 * h2)
        bad = second < -tol
        if bad.any():
            i = int(torch.nonzero(bad)[0, 0]) + 1
            raise ValueError(
                f"generator of {name!r} is not convex: its second difference is negative near u = {float(u[i]):.4g}"
            )


def _f2_at_1(f: Generator, df: Optional[Generator]) -> float:
    """f''(1) by a central difference (of f' when given, else of f), float64."""
    with torch.no_grad():
        if df is not None:
            h = 1e-5
            x = torch.tensor([1 - h, 1 + h], dtype=torch.float64)
            d = df(x)
            return float((d[1] - d[0]) / (2 * h))
        h = 1e-4
        x = torch.tensor([1 - h, 1.0, 1 + h], dtype=torch.float64)
        y = f(x)
        return float((y[0] - 2 * y[1] + y[2]) / h**2)


def register_divergence(
    name: str,
    f: Generator,
    *,
    df: Optional[Generator] = None,
    f2_at_1: Optional[float] = None,
    slope_at_inf: Optional[float] = None,
    log_band: Optional[LogBandFn] = None,
    phi: Optional[Callable] = None,
    closed_form: bool = False,
    formula: str = "",
    description: str = "",
    overwrite: bool = False,
) -> Divergence:
    """Register a divergence from its generator and return it.

    Args:
        name: registry key (used as ``divergence=name`` everywhere).
        f: convex generator with f(1) = 0, elementwise on float64 tensors of u >= 0. Use ``torch.xlogy``
            for u·log u terms so that f(0) is not NaN.
        df: optional f'(u); autograd differentiates ``f`` otherwise.
        f2_at_1: optional f''(1); estimated by finite differences otherwise.
        slope_at_inf: optional lim f(u)/u as u -> inf (only used at p = 1 exactly); estimated otherwise.
        log_band: optional closed form / dedicated solver; the start table plus Newton steps otherwise.
        phi: optional log-space evaluator of the one-sided problem (see :mod:`bandpo.operator.solvers`).
        closed_form: mark ``log_band`` as exact closed form (documentation and benchmarks only).
        formula, description: for ``repr`` and reports.
        overwrite: allow replacing an existing entry.

    Raises:
        ValueError: duplicate name, f(1) != 0, f not convex or not finite on (0, inf).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("divergence name must be a non-empty string")
    if name in DIVERGENCES and not overwrite:
        raise ValueError(f"divergence {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(f):
        raise ValueError(f"generator of {name!r} must be callable")
    _check_generator(name, f)
    f0 = _numeric_limit(f, 0.0)
    if math.isnan(f0):
        f0 = _numeric_limit(f, 1e-300)
    if slope_at_inf is None:
        # f(u)/u at u = 1e100, 1e200, 1e300: still growing (like log u) means an infinite slope
        s1, s2, s3 = (_numeric_limit(f, 10.0**k, 10.0**-k) for k in (100, 200, 300))
        grows = not (abs(s3 - s2) <= 1e-6 * max(1.0, abs(s3)) and abs(s2 - s1) <= 1e-6 * max(1.0, abs(s2)))
        slope_at_inf = float("inf") if (math.isnan(s3) or grows) else s3
    f2 = float(f2_at_1) if f2_at_1 is not None else _f2_at_1(f, df)
    div = Divergence(
        name=name,
        f=f,
        df=df,
        f2_at_1=f2,
        f_at_0=f0,
        slope_at_inf=float(slope_at_inf),
        log_band=log_band,
        phi=phi,
        formula=formula,
        description=description,
        closed_form=closed_form,
    )
    return DIVERGENCES.register(name, div, overwrite=overwrite)


def unregister_divergence(name: str) -> None:
    """Remove a registered divergence (for tests and notebooks)."""
    DIVERGENCES.unregister(name)


# ----------------------------------------------------------------------------------------------------------
# Built-in divergences (generators in the convention D_f(Q‖P) = Σ P f(Q/P), Q new, P old)
# ----------------------------------------------------------------------------------------------------------


def _register_builtins() -> None:
    from .solvers import chi2_log_band, hellinger_log_band, js_phi, kl_phi, neyman_chi2_phi, reverse_kl_phi, tv_log_band

    register_divergence(
        "kl",
        lambda u: -torch.log(u),
        df=lambda u: -1 / u,
        f2_at_1=1.0,
        slope_at_inf=0.0,
        phi=kl_phi,  # no log_band: the start table + Newton (kl_log_band in solvers is the table-free reference)
        formula="-log u",
        description="KL(π_old ‖ π_new), the forward/TRPO direction used by the paper (no closed form)",
    )
    register_divergence(
        "reverse_kl",
        lambda u: torch.xlogy(u, u),
        df=lambda u: torch.log(u) + 1,
        f2_at_1=1.0,
        phi=reverse_kl_phi,
        slope_at_inf=float("inf"),
        formula="u log u",
        description="KL(π_new ‖ π_old)",
    )
    register_divergence(
        "tv",
        lambda u: 0.5 * (u - 1).abs(),
        df=lambda u: 0.5 * torch.sign(u - 1),
        f2_at_1=float("nan"),
        slope_at_inf=0.5,
        log_band=tv_log_band,
        closed_form=True,
        formula="|u - 1| / 2",
        description="total variation ½Σ|q - p| ∈ [0, 1]; band 1 ± δ/p",
    )
    register_divergence(
        "chi2",
        lambda u: (u - 1) ** 2,
        df=lambda u: 2 * (u - 1),
        f2_at_1=2.0,
        slope_at_inf=float("inf"),
        log_band=chi2_log_band,
        closed_form=True,
        formula="(u - 1)^2",
        description="Pearson χ²(π_new ‖ π_old) = Σ (q - p)²/p; band 1 ± sqrt(δ(1-p)/p)",
    )
    register_divergence(
        "neyman_chi2",
        # (u-1)^2/u near 1 (no cancellation), u - 2 + 1/u for large u (no overflow of (u-1)^2)
        lambda u: torch.where(u < 1e100, (u - 1) ** 2 / u, u - 2 + 1 / u),
        df=lambda u: 1 - 1 / u**2,
        f2_at_1=2.0,
        phi=neyman_chi2_phi,
        slope_at_inf=1.0,
        formula="(u - 1)^2 / u",
        description="Neyman χ² = Σ (q - p)²/q",
    )
    register_divergence(
        "hellinger",
        lambda u: (torch.sqrt(u) - 1) ** 2,
        df=lambda u: 1 - 1 / torch.sqrt(u),
        f2_at_1=0.5,
        slope_at_inf=1.0,
        log_band=hellinger_log_band,
        closed_form=True,
        formula="(sqrt(u) - 1)^2",
        description="squared Hellinger Σ(√q - √p)² ∈ [0, 2] (no ½)",
    )
    register_divergence(
        "js",
        # u log u - (u+1) log((u+1)/2) rearranged so that it does not overflow for large u
        lambda u: 0.5 * (torch.xlogy(u, 2 * u / (u + 1)) - torch.log(0.5 * (u + 1))),
        df=lambda u: 0.5 * (torch.log(u) - torch.log(0.5 * (u + 1))),
        f2_at_1=0.25,
        slope_at_inf=0.5 * math.log(2.0),
        phi=js_phi,
        formula="(u log u - (u+1) log((u+1)/2)) / 2",
        description="Jensen-Shannon ½KL(P‖M) + ½KL(Q‖M), M = (P+Q)/2, ∈ [0, log 2]",
    )


_register_builtins()
