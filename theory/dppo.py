"""DPPO's mask against BandPO's clip: when they select the same tokens and give the same gradient, and where not.

DPPO (Qi et al., arXiv 2602.04879) keeps a binary trust region around the old policy at the sampled token, with
p = π_old(a|s), q = π_new(a|s) = r·p:

    Binary-TV:  D_TV(p, q) = ½(|q - p| + |(1 - q) - (1 - p)|) = |q - p|
    Binary-KL:  D_KL(p, q) = p log(p/q) + (1 - p) log((1 - p)/(1 - q))          (KL(old ‖ new))

and drops (masks) a token when D > δ on the side its advantage pushes (A > 0 and q > p, or A < 0 and q < p); the
kept tokens train with the truncated importance weight: gradient -A·min(r, C)·∇log π. BandPO (arXiv 2603.04918)
clips r to Band_{f,δ}(p) = {r : g_f(p, r) <= δ} with g_f(p, r) = p f(r) + (1 - p) f((1 - p r)/(1 - p)), caps the
upper bound at M = 10 and adds the dual clip c = 10 for A < 0.

What is derived here (symbolic: :func:`region_identity`, :func:`monotone_sides`, :func:`gradient_identity`;
per-token gradient, as a function: :func:`bandpo_gradient`, :func:`dppo_gradient`; the case table :data:`CASES`):

1. For f = TV (f(u) = |u - 1|/2) and f = KL (f(u) = -log u), g_f(p, r) equals DPPO's binary divergence at q = r p,
   identically. g_f(p, ·) decreases on (0, 1] and increases on [1, 1/p] (for KL, ∂g/∂r = p (r - 1)/(r (1 - p r))),
   so "D > δ with q > p" is exactly r > r̄ and "D > δ with q < p" exactly r < r̲, where [r̲, r̄] is the band at
   the same δ, saturation at 0 and 1/p included (a saturated side has D <= δ for every reachable r).
2. Inside [r̲, r̄] both losses have the gradient of -A·r·∇log π, except that DPPO's weight is min(r, C).
3. Hence, at equal δ and the same anchor π_old, BandPO-f **without** cap and dual clip and DPPO-Binary-f **without**
   truncation (C = ∞) give every token the same gradient. The three knobs are the only differences:
   the cap M (A > 0, M < r <= r̄: BandPO 0, DPPO -A·min(r, C)), the dual clip c (A < 0, r > c: BandPO 0, DPPO
   -A·min(r, C)) and the truncation C (a kept token with r > C: BandPO -A·r, DPPO -A·C). The loss *values* differ
   by terms without gradient.

Anchor: both are written against the ``old_logp`` given to the loss. DPPO's authors recommend anchoring the region
on the rollout (behaviour) policy's log-probabilities; BandPO's scripts, and ``bandpo.training``, recompute π_old
with a forward pass. Fed the same ``old_logp``, the statements above hold token for token.

The numeric cross-check through the loss code itself is ``tests/test_theory_dppo.py`` (autograd of
``bandpo.policy_loss`` for ``band_<f>`` and ``dppo_<f>`` on constructed tokens, one per case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import sympy as sp

from bandpo.cli import ArgumentParser

from .generators import g_of, get_symbolic, m, p, r, t

__all__ = [
    "CASES",
    "Case",
    "bandpo_gradient",
    "binary_divergence",
    "dppo_gradient",
    "gradient_identity",
    "monotone_sides",
    "region_identity",
]

DPPO_DIVERGENCES = ("tv", "kl")
"""The divergences of DPPO's binary approximation (arXiv 2602.04879)."""


def binary_divergence(divergence: str, p_: sp.Expr = p, q_: Optional[sp.Expr] = None) -> sp.Expr:
    """DPPO's binary divergence between Bernoulli(p) (old) and Bernoulli(q) (new), q = r p by default."""
    q_ = r * p_ if q_ is None else q_
    if divergence == "tv":
        return (sp.Abs(q_ - p_) + sp.Abs((1 - q_) - (1 - p_))) / 2
    if divergence == "kl":
        return p_ * sp.log(p_ / q_) + (1 - p_) * sp.log((1 - p_) / (1 - q_))
    raise ValueError(f"DPPO's binary divergences are {', '.join(DPPO_DIVERGENCES)}, got {divergence!r}")


def region_identity(divergence: str) -> "dict[str, sp.Expr]":
    """g_f(p, r) - D_binary(p, r p), simplified on each side of r = 1 (r = 1 + t and r = 1/(1 + t), t > 0) with
    p = 1/(1 + m) (so 0 < p < 1 is visible to sympy). Both values are 0: the regions coincide."""
    gap = g_of(get_symbolic(divergence).f, p, r) - binary_divergence(divergence)
    gap = sp.expand_log(gap.subs(p, 1 / (1 + m)), force=True)
    return {
        "r > 1": sp.simplify(gap.subs(r, 1 + t)),
        "r < 1": sp.simplify(gap.subs(r, 1 / (1 + t))),
    }


def monotone_sides(divergence: str) -> "dict[str, sp.Expr]":
    """∂g_f/∂r divided by its claimed form, on each side of r = 1 (r = 1 + t, r = 1/(1 + t), p = 1/(1 + m)):
    p (r - 1)/(r (1 - p r)) for KL, p·sign(r - 1) for TV. Both quotients simplify to 1, so g_f(p, ·) decreases on
    (0, 1) and increases on (1, 1/p), and each DPPO mask side is one inequality r > r̄ or r < r̲."""
    if divergence not in DPPO_DIVERGENCES:
        raise ValueError(f"DPPO's binary divergences are {', '.join(DPPO_DIVERGENCES)}, got {divergence!r}")
    pm = 1 / (1 + m)
    g = g_of(get_symbolic(divergence).f, p, r).subs(p, pm)
    out = {}
    for side, r_of_t in (("r > 1", 1 + t), ("r < 1", 1 / (1 + t))):
        dg_dr = sp.diff(g.subs(r, r_of_t), t) / sp.diff(r_of_t, t)  # chain rule along the side's parametrisation
        if divergence == "kl":
            claim = pm * (r - 1) / (r * (1 - pm * r))
        else:
            claim = pm * (1 if side == "r > 1" else -1)
        out[side] = sp.simplify(dg_dr / sp.sympify(claim).subs(r, r_of_t))
    return out


def gradient_identity() -> "dict[str, sp.Expr]":
    """With ℓ_PPO = -A·r, r = exp(l - l_old) and ℓ_DPPO = -A·w·l (w = sg(min(r, C)) a constant), ∂ℓ/∂l is -A·r and
    -A·w; the differences from those claims simplify to 0. (l = log π of the sampled token.)"""
    A, l, l_old, w, s = sp.symbols("A l l_old w s", real=True)
    ratio = sp.exp(l - l_old)
    return {
        "ppo": sp.simplify(sp.diff(-A * ratio, l) - (-A * ratio)),
        "dppo": sp.simplify(sp.diff(-A * w * l, l) - (-A * w)),
        # the form bandpo.policy_loss uses for mask methods: -A·r·s with s = sg(min(r, C)/r) held constant
        "dppo_as_ratio": sp.simplify(sp.diff(-A * s * ratio, l).subs(s, w / ratio) - (-A * w)),
    }


# ----------------------------------------------------------------------------------------------------------
# Per-token gradients, as the derivation states them
# ----------------------------------------------------------------------------------------------------------


def bandpo_gradient(adv: float, ratio: float, lower: float, upper: float, dual_clip: Optional[float]) -> float:
    """∂ℓ/∂log π of PPO's clipped surrogate on [lower, upper] (upper already capped), dual clip c for A < 0:
    -A·r where the unclipped term is active and the dual clip does not hold the loss, else 0."""
    if adv > 0:
        return -adv * ratio if ratio <= upper else 0.0
    if adv < 0:
        if ratio < lower or (dual_clip is not None and ratio > dual_clip):
            return 0.0
        return -adv * ratio
    return 0.0


def dppo_gradient(adv: float, ratio: float, lower: float, upper: float, tis_cap: float = math.inf) -> float:
    """∂ℓ/∂log π of DPPO's loss with trust region [lower, upper]: 0 for a token outside it on its advantage's side,
    else -A·min(r, C)."""
    if (adv > 0 and ratio > upper) or (adv < 0 and ratio < lower):
        return 0.0
    return -adv * min(ratio, tis_cap)


@dataclass(frozen=True)
class Case:
    """One cell of the comparison: BandPO-f (band [r̲, r̄] at δ, cap M, dual clip c) against DPPO-Binary-f (the
    same region, uncapped, truncation C), at the same δ and π_old."""

    name: str
    adv_sign: int
    """+1 or -1 (A = 0: both 0)."""
    where: str
    """Where r lies."""
    bandpo: str
    """BandPO's ∂ℓ/∂log π there."""
    dppo: str
    """DPPO's ∂ℓ/∂log π there."""
    same: bool
    """Whether the two gradients are equal there."""
    why: str = ""


CASES: "tuple[Case, ...]" = (
    Case("inside, A > 0", +1, "r̲ <= r <= min(r̄, M), r <= C", "-A·r", "-A·r", True),
    Case("pushed out above, A > 0", +1, "r > r̄ (uncapped region's edge)", "0 (clipped)", "0 (masked)", True),
    Case("safe side, A > 0", +1, "r < r̲", "-A·r (unclipped term active)", "-A·r (kept: q < p)", True),
    Case("cap binds, A > 0", +1, "M < r <= r̄ (only where r̄ > M, i.e. small p)", "0 (clipped at the cap)",
         "-A·min(r, C) (inside DPPO's region)", False, "BandPO's cap M = 10"),
    Case("pushed out below, A < 0", -1, "r < r̲", "0 (clipped)", "0 (masked)", True),
    Case("inside or safe side, A < 0", -1, "r̲ <= r <= min(c, C)", "-A·r", "-A·r (kept)", True),
    Case("dual clip, A < 0", -1, "r > c", "0 (dual clip holds the loss at -A·c)", "-A·min(r, C) (kept)", False,
         "BandPO's dual clip c = 10"),
    Case("truncation", +1, "a token both keep with r > C (needs r̄ > C: no cap, or M > C)", "-A·r", "-A·C", False,
         "DPPO's truncation C = 20"),
    Case("saturated side", +1, "r̄ = 1/p (g_f(p, 1/p) <= δ) or r̲ = 0", "never clipped on that side",
         "never masked on that side (D <= δ for every reachable r)", True,
         "saturation moves both intervals alike (r <= 1/p always)"),
)
"""The cases, by sign of A and where r lies (M = 10 BandPO's cap, c = 10 its dual clip, C = 20 DPPO's cap)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bandpo_theory.dppo``: print the identities and the case table (no options)."""
    ArgumentParser(prog="python -m bandpo_theory.dppo", description=__doc__.splitlines()[0]).parse_args(argv)
    for d in DPPO_DIVERGENCES:
        print(d, "region identity:", region_identity(d), "monotone factor:", monotone_sides(d))
    print("gradients:", gradient_identity())
    for c in CASES:
        print(f"{'same ' if c.same else 'DIFF '} {c.name:28s} {c.where:48s} BandPO {c.bandpo:40s} DPPO {c.dppo}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
