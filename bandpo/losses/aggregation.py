"""Reductions of a (B, T) per-token loss to a scalar, written as numerator / denominator.

Splitting every mode this way makes gradient accumulation exact: pass the whole batch's denominator
(:func:`aggregation_denominator`) to every micro-batch and the micro-batch losses *sum* to the whole-batch loss.

Modes (``m`` the mask, ℓ the per-token loss, B sequences of padded length T):

* ``token-mean``: Σ m·ℓ / Σ m (DAPO, arXiv 2503.14476);
* ``seq-mean-token-mean``: mean over sequences with >= 1 valid token of Σ_t m·ℓ / Σ_t m (GRPO, arXiv 2402.03300;
  the BandPO paper's mode, arXiv 2603.04918);
* ``seq-mean-token-sum``: Σ m·ℓ / #(sequences with >= 1 valid token);
* ``seq-mean-token-sum-norm``: Σ m·ℓ / (B·T) (Dr. GRPO, arXiv 2503.20783).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["AGGREGATIONS", "Aggregation", "aggregate", "aggregation_denominator", "get_aggregation", "list_aggregations"]

Number = Union[int, float]


@dataclass(frozen=True)
class Aggregation:
    """One reduction mode: ``aggregate(ℓ, m) = numerator(ℓ·m, m) / denominator(m)``."""

    name: str
    """Registry key, e.g. ``"token-mean"``."""
    numerator: Callable[[Tensor, Tensor], Tensor]
    """(loss_mat (B, T) with masked entries already 0, mask (B, T) float) -> 0-d tensor."""
    denominator: Callable[[Tensor], Tensor]
    """mask (B, T) float -> 0-d tensor (a count; may be 0 for an all-masked batch)."""
    formula: str
    """The reduction in one line."""


def _seq_mean_numerator(loss_mat: Tensor, mask: Tensor) -> Tensor:
    n = mask.sum(-1)
    return (loss_mat.sum(-1) / n.clamp(min=1)).sum()


def _nonempty_sequences(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype).sum()


AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")
"""The aggregation modes by name."""

for _a in (
    Aggregation("token-mean", lambda loss, m: loss.sum(), lambda m: m.sum(),
                "Σ_bt m·ℓ / Σ_bt m (every valid token weighs the same; DAPO)"),
    Aggregation("seq-mean-token-mean", _seq_mean_numerator, _nonempty_sequences,
                "mean over sequences with >= 1 valid token of (Σ_t m·ℓ / Σ_t m) (GRPO; the BandPO paper's mode)"),
    Aggregation("seq-mean-token-sum", lambda loss, m: loss.sum(), _nonempty_sequences,
                "Σ_bt m·ℓ / #(sequences with >= 1 valid token)"),
    Aggregation("seq-mean-token-sum-norm", lambda loss, m: loss.sum(),
                lambda m: torch.full((), m.numel(), dtype=m.dtype, device=m.device),
                "Σ_bt m·ℓ / (B·T), T the padded length (Dr. GRPO, arXiv 2503.20783)"),
):
    AGGREGATIONS.register(_a.name, _a)


def list_aggregations() -> list[str]:
    """Names of the aggregation modes, sorted."""
    return AGGREGATIONS.names()


def get_aggregation(agg: str) -> Aggregation:
    """The mode called ``agg`` (ValueError listing the known modes otherwise)."""
    return AGGREGATIONS.get(agg)


def _check_loss_mask(loss_mat: Tensor, mask: Tensor) -> None:
    if not isinstance(loss_mat, Tensor) or not isinstance(mask, Tensor):
        raise ValueError("loss_mat and mask must be torch.Tensors")
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(
            f"loss_mat and mask must both be (B, T); got {tuple(loss_mat.shape)} and {tuple(mask.shape)}"
        )


def aggregation_denominator(mask: Tensor, agg: str = "token-mean") -> Tensor:
    """The denominator of ``agg`` for a (whole) batch: valid tokens, non-empty sequences, or B·T.

    Compute it once on the whole batch and pass it as ``denominator`` to :func:`aggregate` or
    :func:`bandpo.policy_loss` for each micro-batch: the micro-batch losses then sum to the whole-batch loss.

    Args:
        mask: (B, T) bool or 0/1 tensor, True/1 for valid tokens.
        agg: an aggregation name (:func:`list_aggregations`).

    Returns:
        0-d float32 tensor on ``mask``'s device (no host sync).
    """
    a = get_aggregation(agg)
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a (B, T) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    return a.denominator((mask != 0).to(torch.float32))


def aggregate(
    loss_mat: Tensor, mask: Tensor, agg: str = "token-mean", *, denominator: "Number | Tensor | None" = None
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the valid tokens (modes: see the module docstring).

    Masked entries are selected away (``torch.where``), so NaN or inf there has no effect on the value or the
    gradient. An all-masked batch gives 0 (the denominator is clamped at 1).

    Micro-batches: split the batch along B and pass ``denominator=aggregation_denominator(whole_mask, agg)``
    to each part; the parts then sum to the whole for every mode. Without it, the plain mean of equal-size
    micro-batch losses equals the whole-batch loss only for ``seq-mean-token-sum-norm`` (same T), and for the
    two ``seq-mean`` modes when every sequence has a valid token; ``token-mean`` needs weights proportional
    to each part's valid-token count.

    Args:
        loss_mat: (B, T) floating tensor.
        mask: (B, T) bool or 0/1 tensor.
        agg: mode name (:func:`list_aggregations`).
        denominator: optional positive number or 0-d tensor replacing the batch's own denominator.

    Returns:
        0-d tensor in ``loss_mat``'s dtype.
    """
    _check_loss_mask(loss_mat, mask)
    valid = mask if mask.dtype == torch.bool else mask != 0
    zeroed = torch.where(valid, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    return aggregate_masked(zeroed, valid.to(loss_mat.dtype), agg, denominator=denominator)


def aggregate_masked(
    loss_mat: Tensor, m: Tensor, agg: str = "token-mean", *, denominator: "Number | Tensor | None" = None
) -> Tensor:
    """:func:`aggregate` of a loss already 0 at the masked entries, with the mask ``m`` as 0/1 in the loss's
    dtype (what :func:`bandpo.policy_loss` has at hand: it saves the selection and the conversion)."""
    a = get_aggregation(agg)
    num = a.numerator(loss_mat, m)
    if denominator is None:
        den = a.denominator(m).clamp(min=1)
    elif isinstance(denominator, Tensor):
        den = denominator.to(loss_mat.dtype)
    else:
        if isinstance(denominator, bool) or not isinstance(denominator, numbers.Real):
            raise ValueError(f"denominator must be a positive number or a tensor, got {denominator!r}")
        if not (math.isfinite(denominator) and denominator > 0):
            raise ValueError(f"denominator must be finite and > 0, got {denominator!r}")
        den = float(denominator)
    return num / den
