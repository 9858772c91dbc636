"""Policy-loss surrogates beyond PPO's clip and DPPO's mask: GSPO, CISPO, SAPO, GPG, Clip-Cov, KL-Cov, GMPO, DRO
and VESPO, each a pure function of (B, T) tensors, and the interval a bounds rule gives each of them.

Notation (per token t of sequence b; m the padding mask, n_b = Σ_t m the sequence length): logp = log π_θ,
old_logp = log π_old, log r = clamp(logp - old_logp, ±20), r = e^{log r}, A the advantage, [lower, upper] the
method's interval from its bounds rule (:mod:`bandpo.losses.rules`, capped as in :func:`bandpo.bounds`),
sg = stop-gradient. Each function returns the per-token loss ℓ (B, T); :func:`bandpo.policy_loss` then
aggregates it over the valid tokens with the chosen ``agg``.

=============  ======================================================================  ===========================
surrogate      per-token loss ℓ                                                        interval used
=============  ======================================================================  ===========================
``gspo``       s = exp(Σ_t m log r / n_b); s_t = sg(s)·r_t/sg(r_t), log s_t <= 10;     geometric mean of the
               ℓ = max(-A s_t, -A clip(s_t, lo_b, up_b))  (arXiv 2507.18071)          tokens' [lower, upper]
``cispo``      ℓ = -sg(clip(r, lower, upper))·A·logp  (arXiv 2506.13585)               the IS weight's truncation
``sapo``       ℓ = -A·(4/τ)·σ(τ(r - 1)), τ = τ_pos if A > 0 else τ_neg (2511.20347)     none (soft gate)
``gpg``        ℓ = -A·logp  (GPG, arXiv 2504.02546)                                    none (no ratio)
``clip_cov``   PPO's clip; a random cov_fraction of the unclipped tokens with           PPO's clip
               cov = (A - mean A)(logp - mean logp) in (cov_low, cov_high) get ℓ = 0
               (their gradient detached)  (Clip-Cov, arXiv 2505.22617)
``kl_cov``     ℓ = -A r, plus kl_cov_coef·|log r| on the top cov_fraction of tokens by cov   none (a penalty)
               (KL-Cov, arXiv 2505.22617)
``geo_mean``   per sequence: L_b = -Ā_b·exp(Σ_t m·clipped log r / n_b), clipped log r =   the tokens' [lower, upper]
               sign(A)·min(sign(A) log r, sign(A) clamp(log r, log lower, log upper)),  in log space
               Ā_b = Σ_t m A / n_b; ℓ_t = L_b at every valid token  (GMPO, 2507.20673)
``dro``        ℓ = -A·logp + ½·dro_beta·(log r)²  (verl 0.9.1's ``dro``; no default β)   none (a penalty)
``vespo``      w_b = exp(clamp(Σ_t m log r, log 1e-8, 20)); φ = e^{λ + k log w - λ w},   none (soft weight)
               (k, λ) = (k_pos, λ_pos) if A >= 0 else (k_neg, λ_neg);
               ℓ = -sg(φ)·A·logp  (VESPO, arXiv 2602.10693, as TRL 1.16 ships it)
=============  ======================================================================  ===========================

Aggregation stays the caller's choice: GMPO's ℓ_t = L_b averages back to L_b under ``seq-mean-token-mean`` (the
mean over sequences of GMPO and of verl's ``geo_mean``, which ignores ``loss_agg_mode``); verl's ``sapo`` also
forces ``seq-mean-token-mean``; TRL's LUSPO (arXiv 2602.05261) is ``gspo`` aggregated with ``seq-mean-token-sum``.

The sequence-level interval of ``gspo``. GSPO's ratio is the geometric mean s = (Π_t r_t)^{1/n} of the token
ratios. If every token ratio lies in its own interval [lower_t, upper_t], s lies in
[(Π lower_t)^{1/n}, (Π upper_t)^{1/n}], and every point of that interval is reached (s is continuous and increasing
in each r_t, so the image of the box is the interval between its corners): this is the sequence-level trust
region :func:`geometric_interval` gives, for any bounds rule. For ``Clip(ε_low, ε_high)`` it is GSPO's own
[1 - ε_low, 1 + ε_high]; for a band it is the geometric mean of the tokens' bands (``bandpo_theory.sequence``
derives it, and shows why the band of the whole sequence's probability is vacuous).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "SURROGATE_FORMS",
    "ClipCovSettings",
    "DROSettings",
    "KLCovSettings",
    "SAPOSettings",
    "Surrogate",
    "SurrogateInputs",
    "VESPOSettings",
    "geometric_interval",
    "per_token_loss",
    "surrogate_settings",
]

GSPO_LOG_RATIO_MAX = 10.0
"""GSPO's sequence log-ratio is clamped at 10 before exp (verl 0.9.1's ``gspo`` loss; no gradient beyond it)."""

VESPO_LOG_W_MIN = math.log(1e-8)
"""VESPO's sequence log-weight is clamped to [log 1e-8, 20] (TRL 1.16's ``get_gamma_weights``)."""


class SurrogateInputs(NamedTuple):
    """What a surrogate sees, every tensor (B, T) in the compute dtype, masked tokens already set to 0."""

    logp: Tensor
    """log π_θ of the sampled tokens, differentiable (0 at masked tokens)."""
    log_ratio: Tensor
    """clamp(logp - old_logp, -20, 20), differentiable."""
    ratio: Tensor
    """exp(log_ratio)."""
    adv: Tensor
    """Advantages, no gradient."""
    valid: Tensor
    """bool, True at valid tokens."""
    lower: Tensor
    """The method's lower bound (no gradient)."""
    upper: Tensor
    """The method's upper bound (no gradient, capped at max_ratio and e^20)."""
    step: Optional[int]
    """The training step (Clip-Cov's selection draws from a generator seeded with cov_seed + step)."""


def _real(name: str, x, *, low: float = 0.0, strict: bool = True, high: float = math.inf) -> None:
    ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x <= high
    ok = ok and (x > low if strict else x >= low)
    if not ok:
        rng = f"> {low:g}" if strict else f">= {low:g}"
        if math.isfinite(high):
            rng += f" and <= {high:g}"
        raise ValueError(f"{name} must be a finite number {rng}, got {x!r}")


@dataclass(frozen=True)
class SAPOSettings:
    """SAPO's temperatures (arXiv 2511.20347; verl 0.9.1 ``tau_pos``/``tau_neg``, TRL 1.16
    ``sapo_temperature_pos``/``_neg``: both default 1.0 and 1.05)."""

    tau_pos: float = 1.0
    """τ > 0 of tokens with A > 0."""
    tau_neg: float = 1.05
    """τ > 0 of tokens with A <= 0 (larger: negative updates fade faster)."""

    def __post_init__(self) -> None:
        _real("tau_pos", self.tau_pos)
        _real("tau_neg", self.tau_neg)


@dataclass(frozen=True)
class ClipCovSettings:
    """Clip-Cov's selection (arXiv 2505.22617; verl 0.9.1 ``clip_cov_ratio``, ``clip_cov_lb``, ``clip_cov_ub``)."""

    cov_fraction: float = 2e-4
    """Fraction of the valid tokens whose gradient is detached (at least one); verl's ``clip_cov_ratio``."""
    cov_low: float = 1.0
    """Covariance window's lower end (exclusive); verl's ``clip_cov_lb``."""
    cov_high: float = 5.0
    """Covariance window's upper end (exclusive); verl's ``clip_cov_ub``."""
    cov_seed: int = 0
    """Seed of the random pick among the candidates (the generator is seeded with cov_seed + step, step 0 when
    not given): the same inputs and step give the same tokens."""

    def __post_init__(self) -> None:
        _real("cov_fraction", self.cov_fraction, high=1.0)
        _real("cov_low", self.cov_low, low=-math.inf)
        _real("cov_high", self.cov_high, low=-math.inf)
        if not self.cov_low < self.cov_high:
            raise ValueError(f"cov_low must be < cov_high, got {self.cov_low!r} and {self.cov_high!r}")
        if not (isinstance(self.cov_seed, int) and not isinstance(self.cov_seed, bool) and self.cov_seed >= 0):
            raise ValueError(f"cov_seed must be an integer >= 0, got {self.cov_seed!r}")


@dataclass(frozen=True)
class KLCovSettings:
    """KL-Cov's selection and penalty (arXiv 2505.22617; verl 0.9.1 ``kl_cov_ratio``, ``ppo_kl_coef``, whose
    configured defaults are 2e-4 and 0.1)."""

    cov_fraction: float = 2e-4
    """Fraction of the valid tokens (at least one), those with the largest covariance, that get the penalty."""
    kl_cov_coef: float = 0.1
    """Coefficient of |log r| on the selected tokens; verl's ``ppo_kl_coef``."""

    def __post_init__(self) -> None:
        _real("cov_fraction", self.cov_fraction, high=1.0)
        _real("kl_cov_coef", self.kl_cov_coef, strict=False)


@dataclass(frozen=True)
class DROSettings:
    """The quadratic log-ratio penalty of verl 0.9.1's ``dro`` loss (``policy_loss.dro_beta``, no default there)."""

    dro_beta: Optional[float] = None
    """β > 0 of the penalty ½·β·(log r)²; None (verl has no default) makes the loss refuse to run until it is set."""

    def __post_init__(self) -> None:
        if self.dro_beta is not None:
            _real("dro_beta", self.dro_beta)


@dataclass(frozen=True)
class VESPOSettings:
    """VESPO's Gamma weight φ(w) = e^{λ} w^k e^{-λ w} (arXiv 2602.10693; TRL 1.16's defaults)."""

    k_pos: float = 2.0
    """k of sequences with A >= 0."""
    lambda_pos: float = 3.0
    """λ of sequences with A >= 0."""
    k_neg: float = 3.0
    """k of sequences with A < 0."""
    lambda_neg: float = 2.0
    """λ of sequences with A < 0."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _real(f.name, getattr(self, f.name), strict=False)


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(valid, x, zero).sum() / valid.sum().clamp(min=1).to(x.dtype)


def geometric_interval(lower: Tensor, upper: Tensor, valid: Tensor) -> "tuple[Tensor, Tensor]":
    """The sequence-level interval of GSPO's ratio s = exp(mean_t log r_t) implied by per-token intervals:
    ([Π_t lower_t]^{1/n_b}, [Π_t upper_t]^{1/n_b}) over the valid tokens, each (B, 1); [1, 1] for an empty row.

    A lower bound of 0 at any valid token gives a sequence lower bound of 0 (log 0 = -inf)."""
    zero = torch.zeros((), dtype=lower.dtype, device=lower.device)
    n = valid.sum(-1, keepdim=True).clamp(min=1).to(lower.dtype)
    log_lo = torch.where(valid, torch.log(lower), zero).sum(-1, keepdim=True) / n
    log_up = torch.where(valid, torch.log(upper), zero).sum(-1, keepdim=True) / n
    return torch.exp(log_lo), torch.exp(log_up)


def _gspo(x: SurrogateInputs, settings: None) -> Tensor:
    m = x.valid.to(x.logp.dtype)
    n = m.sum(-1, keepdim=True).clamp(min=1)
    log_s = (x.log_ratio * m).sum(-1, keepdim=True) / n
    log_s_t = torch.clamp(x.logp - x.logp.detach() + log_s.detach(), max=GSPO_LOG_RATIO_MAX)
    s_t = torch.exp(log_s_t)
    lo, up = geometric_interval(x.lower, x.upper, x.valid)
    return torch.maximum(-x.adv * s_t, -x.adv * torch.clamp(s_t, lo, up))


def _cispo(x: SurrogateInputs, settings: None) -> Tensor:
    weight = torch.clamp(x.ratio, x.lower, x.upper).detach()
    return -weight * x.adv * x.logp


def _sapo(x: SurrogateInputs, s: SAPOSettings) -> Tensor:
    tau = torch.where(x.adv > 0, torch.full_like(x.adv, s.tau_pos), torch.full_like(x.adv, s.tau_neg))
    gate = torch.sigmoid(tau * (x.ratio - 1.0)) * (4.0 / tau)
    return -gate * x.adv


def _gpg(x: SurrogateInputs, settings: None) -> Tensor:
    return -x.logp * x.adv


def _cov(x: SurrogateInputs) -> Tensor:
    """(A - mean A)·(logp - mean logp) over the valid tokens (no gradient)."""
    logp = x.logp.detach()
    return (x.adv - _masked_mean(x.adv, x.valid)) * (logp - _masked_mean(logp, x.valid))


def _n_selected(fraction: float, valid: Tensor) -> int:
    return max(int(fraction * int(valid.sum())), 1)


def _clip_cov(x: SurrogateInputs, s: ClipCovSettings) -> Tensor:
    pg1 = -x.adv * x.ratio
    pg2 = -x.adv * torch.clamp(x.ratio, x.lower, x.upper)
    with torch.no_grad():
        cov = _cov(x)
        candidates = x.valid & ~(pg2 > pg1) & (cov > s.cov_low) & (cov < s.cov_high)
        idx = torch.nonzero(candidates)  # row-major, as verl's
        keep = torch.ones_like(x.valid)
        if len(idx) > 0:
            g = torch.Generator(device="cpu").manual_seed(s.cov_seed + (x.step or 0))
            perm = torch.randperm(len(idx), generator=g)[: _n_selected(s.cov_fraction, x.valid)].to(idx.device)
            picked = idx[perm]
            keep[picked[:, 0], picked[:, 1]] = False
    per_token = torch.maximum(pg1, pg2)
    return torch.where(keep, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))


def _kl_cov(x: SurrogateInputs, s: KLCovSettings) -> Tensor:
    per_token = -x.adv * x.ratio
    if not bool(x.valid.any()):
        return per_token
    with torch.no_grad():
        cov = torch.where(x.valid, _cov(x), torch.full_like(x.adv, -math.inf))
        top = torch.topk(cov.reshape(-1), _n_selected(s.cov_fraction, x.valid)).indices
        picked = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
        picked[top] = True
        picked = picked.reshape(cov.shape)
    return torch.where(picked, per_token + s.kl_cov_coef * x.log_ratio.abs(), per_token)


def _geo_mean(x: SurrogateInputs, settings: None) -> Tensor:
    m = x.valid.to(x.logp.dtype)
    n = m.sum(-1, keepdim=True).clamp(min=1)
    sign = torch.sign(x.adv)
    clamped = torch.clamp(x.log_ratio, torch.log(x.lower), torch.log(x.upper))
    log_r = sign * torch.minimum(sign * x.log_ratio, sign * clamped)
    seq_ratio = torch.exp((log_r * m).sum(-1, keepdim=True) / n)
    seq_adv = (x.adv * m).sum(-1, keepdim=True) / n
    return (-seq_adv * seq_ratio).expand_as(x.logp)


def _dro(x: SurrogateInputs, s: DROSettings) -> Tensor:
    if s.dro_beta is None:
        raise ValueError("method 'dro' needs dro_beta > 0, the weight of its (log r)^2 penalty (verl 0.9.1 has no default), e.g. dro_beta=0.1")
    return -(x.logp * x.adv - 0.5 * s.dro_beta * x.log_ratio.square())


def _vespo(x: SurrogateInputs, s: VESPOSettings) -> Tensor:
    with torch.no_grad():
        m = x.valid.to(x.logp.dtype)
        log_w = torch.clamp((x.log_ratio * m).sum(-1, keepdim=True), VESPO_LOG_W_MIN, 20.0)
        nonneg = x.adv >= 0
        k = torch.where(nonneg, torch.full_like(x.adv, s.k_pos), torch.full_like(x.adv, s.k_neg))
        lam = torch.where(nonneg, torch.full_like(x.adv, s.lambda_pos), torch.full_like(x.adv, s.lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    return -phi * x.adv * x.logp


@dataclass(frozen=True)
class Surrogate:
    """One loss form of the method table: its per-token loss, its settings class and whether it uses an interval."""

    name: str
    """The form's id (a method's ``surrogate`` field)."""
    loss: Callable[[SurrogateInputs, Any], Tensor]
    """(inputs, settings or None) -> per-token loss (B, T)."""
    settings: Optional[type]
    """Frozen dataclass of the form's settings (None: it has none)."""
    uses_bounds: bool
    """False: the form clips nothing, its method's bounds rule must be :class:`~bandpo.losses.rules.Unbounded`."""
    description: str
    """One line: the formula and its source."""


SURROGATE_FORMS: Registry[Surrogate] = Registry("surrogate")
"""The surrogates of this module by id (PPO's ``clip`` and DPPO's ``mask`` live in :mod:`bandpo.losses.policy`)."""

for _s in (
    Surrogate("gspo", _gspo, None, True, "GSPO's clipped sequence ratio (arXiv 2507.18071)"),
    Surrogate("cispo", _cispo, None, True, "CISPO's clipped stop-gradient IS weight times log pi (arXiv 2506.13585)"),
    Surrogate("sapo", _sapo, SAPOSettings, False, "SAPO's soft sigmoid gate (arXiv 2511.20347)"),
    Surrogate("gpg", _gpg, None, False, "GPG's plain policy gradient -A log pi (arXiv 2504.02546)"),
    Surrogate("clip_cov", _clip_cov, ClipCovSettings, True, "Clip-Cov: PPO's clip, high-covariance tokens detached (arXiv 2505.22617)"),
    Surrogate("kl_cov", _kl_cov, KLCovSettings, False, "KL-Cov: |log r| penalty on high-covariance tokens (arXiv 2505.22617)"),
    Surrogate("geo_mean", _geo_mean, None, True, "GMPO's geometric-mean ratio, clipped in log space (arXiv 2507.20673)"),
    Surrogate("dro", _dro, DROSettings, False, "verl's DRO: -A log pi + (beta/2)(log r)^2 (verl 0.9.1 core_algos)"),
    Surrogate("vespo", _vespo, VESPOSettings, False, "VESPO's Gamma-weighted sequence IS weight (arXiv 2602.10693)"),
):
    SURROGATE_FORMS.register(_s.name, _s)


def per_token_loss(
    form: str, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, lower: Tensor, upper: Tensor, *,
    settings: Any = None, step: Optional[int] = None, log_ratio_clamp: float = 20.0,
) -> Tensor:
    """The (B, T) per-token loss of surrogate ``form`` before aggregation, 0 at masked tokens: for frameworks that
    aggregate themselves (verl's ``agg_loss``). Exactly what :func:`bandpo.policy_loss` aggregates for a method
    with this surrogate, given its interval (``bandpo.bounds(old_logp, method)``) and settings
    (``method.surrogate_settings``).

    Args:
        form: a surrogate id (:data:`SURROGATE_FORMS`).
        logp: (B, T) log π_θ, differentiable. old_logp, adv: (B, T), no gradient. mask: (B, T) bool or 0/1.
        lower, upper: (B, T) the interval.
        settings: the form's settings object (None: its defaults).
        step: the training step (Clip-Cov's pick).
        log_ratio_clamp: |log r| is clamped there before exp (the loss's 20).
    """
    spec = SURROGATE_FORMS.get(form)
    settings = surrogate_settings(form, settings)
    valid = mask if mask.dtype == torch.bool else mask != 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp_c = torch.where(valid, logp, zero)
    old_c = torch.where(valid, old_logp.detach().to(logp.dtype), zero).clamp(max=0)
    adv_c = torch.where(valid, adv.detach().to(logp.dtype), zero)
    log_ratio = torch.clamp(logp_c - old_c, -log_ratio_clamp, log_ratio_clamp)
    x = SurrogateInputs(logp_c, log_ratio, torch.exp(log_ratio), adv_c, valid, lower.to(logp.dtype), upper.to(logp.dtype), step)
    return torch.where(valid, spec.loss(x, settings), zero)


def surrogate_settings(form: str, settings: Any) -> Any:
    """The validated settings object of surrogate ``form``: None when it has none; its defaults when ``settings``
    is None; else ``settings`` itself, which must be an instance of the form's settings class."""
    spec = SURROGATE_FORMS.get(form)
    if spec.settings is None:
        if settings is not None:
            raise ValueError(f"surrogate {form!r} has no settings, got {settings!r}")
        return None
    if settings is None:
        return spec.settings()
    if not isinstance(settings, spec.settings):
        raise ValueError(f"surrogate {form!r} takes settings of type {spec.settings.__name__}, got {type(settings).__name__}")
    return settings
