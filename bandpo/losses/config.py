"""``LossConfig``: the settings of :func:`bandpo.policy_loss`, validated once; also the trainer's ``loss:``
section (flat keys, so ``loss.delta=0.1`` overrides work).

The defaults are BandPO as trained in arXiv 2603.04918: the ``band_kl`` method (KL band, δ = 0.05, upper bound
capped at 10), dual-clip 10, ``seq-mean-token-mean`` aggregation (docs/paper-notes.md, "Training recipe").
A rule setting left at ``None`` takes the method's own value (:data:`bandpo.losses.METHODS`); a setting the
method does not have is an error naming the settings it has.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

from .aggregation import get_aggregation
from .methods import Method, get_method, resolve_method
from .schedules import SCHEDULES, make_schedule

__all__ = ["LossConfig"]

_RULE_SETTINGS = ("divergence", "delta", "eps_low", "eps_high", "r_max", "tis_cap", "rare_p")
_SURROGATE_SETTINGS = ("tau_pos", "tau_neg", "cov_fraction", "cov_low", "cov_high", "cov_seed", "kl_cov_coef", "dro_beta",
                       "k_pos", "lambda_pos", "k_neg", "lambda_neg")


def _check_dual_clip(x) -> None:
    if x is not None and not (
        isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x > 1
    ):
        raise ValueError(f"dual_clip must be None or a finite number > 1 (e.g. 3 or 10), got {x!r}")


@dataclass(frozen=True)
class LossConfig:
    """Settings of :func:`bandpo.policy_loss` (and the trainer's ``loss:`` section), validated on construction."""

    method: str = "band_kl"
    """Method id from :func:`bandpo.list_methods`: clip, clip_higher, dcpo, band_kl, band_tv, band_chi2,
    band_hellinger, band_js, band_reverse_kl, band_neyman_chi2, band_kl_relax, band_kl_upper, band_kl_lower,
    dppo_kl, dppo_tv, no_clip, gspo, cispo, sapo, gpg, clip_cov, kl_cov, gmpo, dro, vespo, cispo_band_kl, gmpo_band_kl."""
    divergence: Optional[str] = None
    """f-divergence of a band method (:func:`bandpo.list_divergences`); None: the method's own (band_kl: 'kl')."""
    delta: Optional[float] = None
    """Band radius δ > 0 (at step 0 when scheduled); None: the method's own (0.05, the paper's; dppo_tv 0.15)."""
    delta_schedule: Optional[str] = None
    """How δ moves with the RL step: None or 'constant' (fixed), 'linear' or 'cosine' from ``delta`` to
    ``delta_end`` over ``delta_steps`` steps, then ``delta_end``."""
    delta_end: Optional[float] = None
    """δ reached after ``delta_steps`` steps (linear/cosine schedules only)."""
    delta_steps: Optional[int] = None
    """Length in RL steps of the δ schedule (linear/cosine schedules only)."""
    eps_low: Optional[float] = None
    """ε_low of clip/dcpo methods (lower = 1 - ε_low for clip); None: the method's own (clip 0.2, dcpo 0.16)."""
    eps_high: Optional[float] = None
    """ε_high of clip/dcpo methods; None: the method's own (clip 0.2, clip_higher 0.28, dcpo 0.2)."""
    r_max: Optional[float] = None
    """DCPO's own cap on the upper bound; None: the method's own (10)."""
    tis_cap: Optional[float] = None
    """DPPO's truncation cap C >= 1 on the importance weight (mask methods dppo_kl/dppo_tv only; inf: none);
    None: the method's own (20)."""
    rare_p: Optional[float] = None
    """Old-probability threshold in (0, 1] below which ``band_kl_upper_rare`` takes the band's upper bound (GRPO's
    clip above it); None: the method's own (0.05). Other methods have no such setting."""
    tau_pos: Optional[float] = None
    """SAPO's temperature of tokens with A > 0 (method sapo); None: its own (1.0)."""
    tau_neg: Optional[float] = None
    """SAPO's temperature of tokens with A <= 0; None: its own (1.05)."""
    cov_fraction: Optional[float] = None
    """Clip-Cov/KL-Cov: fraction of the valid tokens selected by covariance; None: their own (2e-4)."""
    cov_low: Optional[float] = None
    """Clip-Cov: lower end of the covariance window; None: its own (1)."""
    cov_high: Optional[float] = None
    """Clip-Cov: upper end of the covariance window; None: its own (5)."""
    cov_seed: Optional[int] = None
    """Clip-Cov: seed of its random pick (with the step added); None: its own (0)."""
    kl_cov_coef: Optional[float] = None
    """KL-Cov: coefficient of |log r| on the selected tokens; None: its own (0.1)."""
    dro_beta: Optional[float] = None
    """DRO: weight of its (log r)^2 penalty; required by method dro (no default)."""
    k_pos: Optional[float] = None
    """VESPO: k of sequences with A >= 0; None: its own (2)."""
    lambda_pos: Optional[float] = None
    """VESPO: lambda of sequences with A >= 0; None: its own (3)."""
    k_neg: Optional[float] = None
    """VESPO: k of sequences with A < 0; None: its own (3)."""
    lambda_neg: Optional[float] = None
    """VESPO: lambda of sequences with A < 0; None: its own (2)."""
    max_ratio: Optional[float] = None
    """Cap >= 1 on the upper ratio bound; None: the method's own (band_*: 10, dcpo/clip: none); inf (YAML ``.inf``):
    no cap, e.g. to train a band method uncapped."""
    dual_clip: Optional[float] = 10.0
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens at -A·c (the paper: 10); None: off.
    Ignored by mask methods (dppo_kl, dppo_tv): DPPO has no dual clip."""
    agg: str = "seq-mean-token-mean"
    """Loss aggregation (:func:`bandpo.list_aggregations`): 'token-mean', 'seq-mean-token-mean' (the paper's),
    'seq-mean-token-sum', 'seq-mean-token-sum-norm'."""

    def __post_init__(self) -> None:
        get_method(self.method)  # ValueError listing the known ids
        get_aggregation(self.agg)
        _check_dual_clip(self.dual_clip)
        if self.delta_schedule is not None:
            SCHEDULES.get(self.delta_schedule)  # ValueError listing the schedule kinds
        scheduled = self.delta_schedule not in (None, "constant")
        if not scheduled and (self.delta_end is not None or self.delta_steps is not None):
            raise ValueError("delta_end and delta_steps need delta_schedule 'linear' or 'cosine'")
        # The resolved method is cached as a plain attribute (not a field: asdict/YAML see only the settings).
        object.__setattr__(self, "_spec", self._build())

    def settings(self) -> "dict[str, Any]":
        """The rule settings and ``max_ratio`` that differ from the method's own (the non-None fields), with a
        δ schedule built from ``delta``/``delta_schedule``/``delta_end``/``delta_steps``."""
        out = {k: getattr(self, k) for k in _RULE_SETTINGS + _SURROGATE_SETTINGS if getattr(self, k) is not None}
        if self.delta_schedule not in (None, "constant"):
            start = self.delta
            if start is None:
                own = get_method(self.method).settings()
                if "delta" not in own:
                    raise ValueError(f"method {self.method!r} has no setting 'delta'; its settings: {', '.join(own)}")
                start = own["delta"]
            out["delta"] = make_schedule(self.delta_schedule, start, self.delta_end, self.delta_steps)
        if self.max_ratio is not None:
            out["max_ratio"] = self.max_ratio
        return out

    def _build(self) -> Method:
        return resolve_method(self.method, **self.settings())

    def method_spec(self) -> Method:
        """The resolved :class:`~bandpo.losses.Method`: the method with this config's settings applied."""
        return self._spec

    def policy_loss_kwargs(self) -> "dict[str, Any]":
        """Keyword arguments for :func:`bandpo.policy_loss` equivalent to ``config=self``."""
        return dict(method=self._spec, dual_clip=self.dual_clip, agg=self.agg)
