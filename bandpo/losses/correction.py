"""Rollout correction: truncated or masked importance weights between the policy that is trained (π_old, the
proximal policy whose log-probabilities the trainer recomputes) and the behaviour policy that generated the tokens
(π_rollout, e.g. a separate vLLM engine), at token or sequence level. It composes with every method:
:func:`bandpo.policy_loss` multiplies each token's loss by the weight (no gradient flows through it).

With w_t = exp(clamp(old_logp - rollout_logp, ±20)) at token level, or one w_b = exp(clamp(Σ_t m·(old_logp -
rollout_logp), ±20)) per sequence at sequence level (the product of the token weights), and [lower, upper] the
correction's interval:

* ``mode="truncate"`` (TIS): weight = clamp(w, lower, upper);
* ``mode="mask"`` (MIS, IcePop): weight = w where lower <= w <= upper, else 0 (the token or sequence is dropped).

This is verl 0.9.1's ``compute_rollout_correction_weights`` (``rollout_is`` = token/sequence; a single threshold:
TIS, clamp from above; ``"lower_upper"``: IcePop, zero outside) and TRL 1.16's ``vllm_importance_sampling_mode``
(token/sequence x truncate/mask, ``vllm_importance_sampling_clip_min``/``_max``). The presets (:data:`CORRECTIONS`):

==============  ========================================  ====================================================
id              correction                                 source
==============  ========================================  ====================================================
``tis``         truncate, token, upper 2                   verl ``RolloutCorrectionConfig.decoupled_token_is``
``seq_tis``     truncate, sequence, upper 2                verl ``decoupled_seq_is``
``mis``         mask, token, upper 3                       TRL ``token_mask`` with its default C_max = 3
``seq_mis``     mask, sequence, upper 3                    TRL's default mode ``sequence_mask``, C_max = 3
``icepop``      mask, token, [0.5, 5]                      verl ``decoupled_token_icepop`` (IcePop)
==============  ========================================  ====================================================

The trust region as the correction's interval: ``bounds=`` takes any bounds rule (:mod:`bandpo.losses.rules`),
evaluated at the behaviour policy's log-probability, in place of fixed thresholds: e.g.
``RolloutCorrection("mask", "token", bounds=Band("kl", 0.05))`` keeps a token only if π_old stays inside the KL
band around π_rollout at that token. Token level only: a bounds rule gives one interval per token, and the band of a
whole sequence's probability is vacuous (``bandpo_theory.sequence``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ..registry import Registry
from .rules import BoundsRule

__all__ = ["CORRECTIONS", "LEVELS", "MODES", "RolloutCorrection", "check_correction", "get_correction", "rollout_weights"]

MODES = ("truncate", "mask")
"""How a weight outside [lower, upper] is treated: clamped to it (TIS) or set to 0 (MIS, IcePop)."""

LEVELS = ("token", "sequence")
"""One weight per token, or one per sequence (the product of its token weights)."""

_SAFETY = 20.0  # |log w| is clamped at 20 before exp, as verl does


def _check_threshold(name: str, x) -> None:
    if x is not None and not (isinstance(x, numbers.Real) and not isinstance(x, bool) and x >= 0 and not math.isnan(x)):
        raise ValueError(f"{name} must be None or a number >= 0, got {x!r}")


@dataclass(frozen=True)
class RolloutCorrection:
    """A rollout correction: how the weight π_old/π_rollout is computed (level) and kept in [lower, upper] (mode)."""

    mode: str = "truncate"
    """``"truncate"`` (clamp the weight into [lower, upper]: TIS) or ``"mask"`` (weight 0 outside: MIS, IcePop)."""
    level: str = "token"
    """``"token"`` (one weight per token) or ``"sequence"`` (one per sequence, the product of the token weights)."""
    lower: Optional[float] = None
    """Lower threshold >= 0; None: 0 (no lower threshold)."""
    upper: Optional[float] = None
    """Upper threshold >= lower; None: none (inf)."""
    bounds: Optional[BoundsRule] = None
    """A bounds rule evaluated at the rollout log-probability, giving each token its own [lower, upper]
    (e.g. ``Band("kl", 0.05)``); replaces ``lower``/``upper`` (leave them None); token level only."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"correction mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.level not in LEVELS:
            raise ValueError(f"correction level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        _check_threshold("lower", self.lower)
        _check_threshold("upper", self.upper)
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"correction lower must be <= upper, got {self.lower!r} > {self.upper!r}")
        if self.bounds is not None:
            if not callable(self.bounds):
                raise ValueError(f"correction bounds must be a bounds rule (old_logp, step=None) -> (lower, upper), got {self.bounds!r}")
            if self.lower is not None or self.upper is not None:
                raise ValueError("correction: give either bounds (a per-token rule) or lower/upper thresholds, not both")
            if self.level != "token":
                raise ValueError(
                    "correction: a bounds rule gives one interval per token, level 'sequence' needs one per sequence "
                    "(the band of a whole sequence's probability is vacuous): use level='token' or lower/upper"
                )

    def interval(self, rollout_logp: Tensor, step: Optional[int] = None) -> "tuple[Tensor, Tensor]":
        """[lower, upper] for each token (B, T), in ``rollout_logp``'s dtype (no gradient)."""
        with torch.no_grad():
            if self.bounds is not None:
                lo, up = self.bounds(rollout_logp, step=step)
                return lo.to(rollout_logp.dtype), up.to(rollout_logp.dtype)
            lo = 0.0 if self.lower is None else float(self.lower)
            up = math.inf if self.upper is None else float(self.upper)
            return torch.full_like(rollout_logp, lo), torch.full_like(rollout_logp, up)


CORRECTIONS: Registry[RolloutCorrection] = Registry("rollout correction", hint="or pass a bandpo.losses.RolloutCorrection")
"""The preset corrections by id (module docstring)."""

for _name, _c in (
    ("tis", RolloutCorrection("truncate", "token", upper=2.0)),
    ("seq_tis", RolloutCorrection("truncate", "sequence", upper=2.0)),
    ("mis", RolloutCorrection("mask", "token", upper=3.0)),
    ("seq_mis", RolloutCorrection("mask", "sequence", upper=3.0)),
    ("icepop", RolloutCorrection("mask", "token", lower=0.5, upper=5.0)),
):
    CORRECTIONS.register(_name, _c)


def get_correction(correction: "Union[str, RolloutCorrection]", **settings: Any) -> RolloutCorrection:
    """A :class:`RolloutCorrection` from a preset id or an instance, with fields replaced by ``settings``
    (``upper=4.0``, ``bounds=Band("kl", 0.05)``, ...)."""
    if isinstance(correction, str):
        c = CORRECTIONS.get(correction)
    elif isinstance(correction, RolloutCorrection):
        c = correction
    else:
        raise ValueError(f"correction must be a preset id ({', '.join(CORRECTIONS.names())}) or a RolloutCorrection, got {correction!r}")
    if settings:
        names = [f.name for f in dataclasses.fields(RolloutCorrection)]
        unknown = [k for k in settings if k not in names]
        if unknown:
            raise ValueError(f"RolloutCorrection has no setting {', '.join(map(repr, unknown))}; its settings: {', '.join(names)}")
        if "bounds" in settings:  # a rule replaces the fixed thresholds
            settings = {"lower": None, "upper": None, **settings}
        c = dataclasses.replace(c, **settings)
    return c


def check_correction(
    correction: "Union[str, RolloutCorrection, None]", rollout_logp: Optional[Tensor], logp: Tensor, valid: Tensor,
    *, validate: bool = True,
) -> RolloutCorrection:
    """The resolved correction; a one-line ValueError when it and ``rollout_logp`` do not come together, when
    ``rollout_logp`` is not a floating tensor of ``logp``'s shape and device, or (``validate``) when it is NaN,
    infinite or > 0 at a valid token (one host sync)."""
    if correction is None:
        raise ValueError(f"rollout_logp was given without a correction: pass correction= one of {', '.join(CORRECTIONS.names())} or a RolloutCorrection")
    c = get_correction(correction)
    if rollout_logp is None:
        raise ValueError("correction needs rollout_logp, the (B, T) log-probabilities of the behaviour policy that sampled the tokens")
    if not isinstance(rollout_logp, Tensor) or not rollout_logp.is_floating_point():
        raise ValueError(f"rollout_logp must be a floating torch.Tensor, got {getattr(rollout_logp, 'dtype', type(rollout_logp).__name__)}")
    if tuple(rollout_logp.shape) != tuple(logp.shape) or rollout_logp.device != logp.device:
        raise ValueError(f"rollout_logp must have logp's shape {tuple(logp.shape)} and device {logp.device}, got {tuple(rollout_logp.shape)} on {rollout_logp.device}")
    if validate:
        r = rollout_logp.detach()
        bad = (~torch.isfinite(r) | (r > 4 * torch.finfo(torch.float32).eps)) & valid
        if bool(bad.any()):
            raise ValueError(f"rollout_logp is NaN, infinite or > 0 at {int(bad.sum())} valid tokens (a log-probability is finite and <= 0)")
    return c


def rollout_weights(
    old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, correction: "Union[str, RolloutCorrection]" = "tis",
    *, step: Optional[int] = None,
) -> Tensor:
    """The (B, T) rollout-correction weights (module docstring), detached, in ``old_logp``'s dtype (at least
    float32); 1 at masked tokens.

    Args:
        old_logp: (B, T) log π_old (the policy the loss's ratio starts from).
        rollout_logp: (B, T) log π_rollout of the same tokens (the behaviour policy).
        mask: (B, T) bool or 0/1.
        correction: a preset id (:data:`CORRECTIONS`) or a :class:`RolloutCorrection`.
        step: the training step (for a bounds rule with a schedule).
    """
    c = get_correction(correction)
    valid = mask if mask.dtype == torch.bool else mask != 0
    dtype = torch.promote_types(torch.promote_types(old_logp.dtype, rollout_logp.dtype), torch.float32)
    zero = torch.zeros((), dtype=dtype, device=old_logp.device)
    with torch.no_grad():
        old = torch.where(valid, old_logp.detach().to(dtype), zero)
        behaviour = torch.where(valid, rollout_logp.detach().to(dtype), zero).clamp(max=0)
        log_w = old - behaviour
        if c.level == "sequence":
            log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
        w = torch.exp(torch.clamp(log_w, -_SAFETY, _SAFETY))
        lower, upper = c.interval(behaviour, step)
        if c.mode == "truncate":
            w = torch.minimum(torch.maximum(w, lower), upper)
        else:
            w = torch.where((w >= lower) & (w <= upper), w, zero)
        return torch.where(valid, w, torch.ones((), dtype=dtype, device=w.device))
