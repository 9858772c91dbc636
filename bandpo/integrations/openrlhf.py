"""BandPO in OpenRLHF: ``BandPOPolicyLoss``, a subclass of OpenRLHF's ``PolicyLoss`` (written against 0.11.2).

OpenRLHF has no policy-loss registry: its Ray actor (``openrlhf/trainer/ray/ppo_actor.py``, ``ActorPPOTrainer``)
builds ``PolicyLoss(clip_eps_low=..., clip_eps_high=..., dual_clip=..., token_level_loss=..., ...)`` and calls
it as ``loss_fn(log_probs, old_log_probs, advantages, action_mask=..., rollout_log_probs=..., dp_size=...,
batch_num_tokens=..., global_batch_size=...)`` returning ``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``.
:class:`BandPOPolicyLoss` takes the same arguments plus BandPO's and returns the same tuple.

How it plugs in: OpenRLHF's forward clips the ratio to ``[1 - self.clip_eps_low, 1 + self.clip_eps_high]``.
For each call this class sets both attributes to proxies whose ``1 - ·`` / ``1 + ·`` are the per-token tensors
``lower`` / ``upper`` of ``bandpo.bounds(old_log_probs, method, ...)`` (cap included), then runs OpenRLHF's own
forward: its dual clip (``dual_clip=c`` for A < 0), train/rollout importance correction and aggregation
(``token_level_loss``: token-mean or seq-mean-token-mean) are unchanged. Per token this is
``bandpo.policy_loss``'s ``max(-A·r, -A·clip(r, lower, upper))``, ``min(·, -A·c)`` where A < 0 (arXiv 2603.04918).
Methods: every id of ``bandpo.list_methods()``. A clip method runs OpenRLHF's own forward as above. Any other
(DPPO's mask, GSPO, CISPO, SAPO, GPG, Clip-Cov, KL-Cov, GMPO, DRO, VESPO, ``cispo_band_kl``, ...) cannot be steered
through OpenRLHF's clamp, so its loss is bandpo's own per-token loss (``bandpo.losses.surrogate`` for the mask,
``bandpo.losses.surrogates.per_token_loss`` for the rest: what ``bandpo.policy_loss`` aggregates), aggregated by
OpenRLHF's ``aggregate_loss`` (``token_level_loss``, data-parallel counts as OpenRLHF passes them); OpenRLHF hands
the loss one row per sample, so the sequence-level forms see whole sequences. The dual clip does not apply to these
forms (as in bandpo). OpenRLHF's rollout correction is then applied as bandpo's: ``is_correction_level="token"``
with ``is_correction_gating="ratio"`` is ``RolloutCorrection("truncate" if is_correction_mode == "clip" else
"mask", "token", low, high)`` (equal to OpenRLHF's own on the clip method, tested); its sequence gate (the geometric
mean of the token weights) and its divergence gates have no bandpo equivalent and are refused with a non-clip
method. Metrics for these forms: ``clip_ratio`` is bandpo's ``clip_ratio/region_mean``. bandpo's diagnostics of the last call
(``bandpo.losses.METRIC_KEYS``, docs/metrics.md) are kept in ``loss_fn.last_metrics``, since the return tuple is fixed.

Installing it in OpenRLHF's actors (they run in Ray worker processes): :func:`patch_openrlhf` replaces the
``PolicyLoss`` that ``ppo_actor`` builds and wraps ``ActorPPOTrainer.training_step``; :func:`setup_hook` does that
from the environment variable ``BANDPO_OPENRLHF`` (JSON of keyword arguments, e.g. ``{"method": "band_kl",
"delta": 0.05}``) and is meant for Ray's ``runtime_env={"worker_process_setup_hook":
"bandpo.integrations.openrlhf.setup_hook", "env_vars": {...}}`` (docs/integrations.md). The wrapped training step

* gives the loss OpenRLHF's optimiser step, ``actor_scheduler.last_epoch`` (the LR scheduler steps once per
  optimiser step and is restored with a checkpoint), for δ schedules (``delta_schedule``/``delta_end``/``delta_steps``);
* puts bandpo's token-weighted metrics into ``experience.info`` as ``bandpo/<key>``, from where OpenRLHF's own
  ``training_step`` merges them (weighted by action tokens, as its other per-token metrics) into the status it logs
  to wandb/TensorBoard. Counts, min/max and per-bucket means, whose reduction is not a token-weighted mean, stay in
  ``last_metrics``.

The paper's dual clip (10) and seq-mean-token-mean are the defaults of the configured loss: the settings in
``BANDPO_OPENRLHF`` (``dual_clip``, ``token_level_loss``) win over OpenRLHF's ``--actor.dual_clip`` /
``--actor.loss_agg_mode`` (whose defaults are no dual clip and token-mean), and a disagreement is reported in one
warning line.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Any, Optional

import torch
from torch import Tensor

try:
    from openrlhf.models.loss import PolicyLoss, aggregate_loss
except ImportError as exc:  # pragma: no cover - exercised only without OpenRLHF
    raise ImportError("bandpo.integrations.openrlhf needs OpenRLHF (openrlhf.models.loss.PolicyLoss)") from exc

import bandpo.losses as _losses

from ..losses.surrogates import per_token_loss
from . import _common

__all__ = ["BandPOPolicyLoss", "ENV_VAR", "LOGGED_KEYS", "bandpo_policy_loss_class", "patch_openrlhf", "setup_hook"]

ENV_VAR = "BANDPO_OPENRLHF"
"""Environment variable read by :func:`setup_hook`: JSON object of :class:`BandPOPolicyLoss` keyword arguments."""


LOGGED_KEYS = tuple(
    k for k in _losses.METRIC_KEYS if _losses.metric_reduction(k) == _losses.Reduction("mean", "num_tokens")
)
"""bandpo's metrics that OpenRLHF's token-weighted reduction of ``experience.info`` reduces as bandpo would."""

_DEFAULT_MAX_RATIO = 10.0
"""The cap of every clip method's upper bound by default (the paper's); left out for methods without a cap."""

_PAPER_LOSS = {"dual_clip": 10.0, "token_level_loss": False}
"""The paper's dual clip and aggregation (seq-mean-token-mean), the configured loss's defaults (arXiv 2603.04918)."""


class BandPOPolicyLoss(PolicyLoss):
    """OpenRLHF's ``PolicyLoss`` clipping to BandPO's per-token bounds (see the module docstring).

    Args:
        method: bounds method id (``bandpo.list_methods()``); default ``band_kl``.
        divergence, delta, eps_low, eps_high, r_max: the method's settings (``None``: its defaults).
        settings: other settings of the method by name (rows of bandpo's method table with settings that have no
            argument here).
        delta_schedule, delta_end, delta_steps: a δ schedule (``linear``/``cosine``, from ``delta`` to ``delta_end``
            over ``delta_steps`` optimiser steps); the step is ``self.step``, set by the patched training step.
        max_ratio: cap >= 1 on the upper bound (the paper: 10); left out by default for methods without a cap and
            for DPPO's mask methods (an explicit value is passed on).
        tis_cap: DPPO's truncation cap C (mask methods only; ``None``: 20).
        dual_clip: c > 1 for A < 0 (the paper: 10), or ``None``; OpenRLHF's own dual clip applies it (clip methods
            only: the other surrogates have none).
        token_level_loss: ``True``: token-mean; ``False``: seq-mean-token-mean (the paper's).
        **kwargs: the rest of ``PolicyLoss``'s arguments (importance-correction settings). ``clip_eps_low`` /
            ``clip_eps_high`` are accepted for signature compatibility and ignored (the method's bounds replace
            them); ``policy_loss_type`` must be ``"ppo"`` (GSPO's sequence ratio has no per-token bound).
    """

    def __init__(
        self,
        method: str = "band_kl",
        *,
        divergence: Optional[str] = None,
        delta: Optional[float] = None,
        eps_low: Optional[float] = None,
        eps_high: Optional[float] = None,
        r_max: Optional[float] = None,
        delta_schedule: Optional[str] = None,
        delta_end: Optional[float] = None,
        delta_steps: Optional[int] = None,
        settings: Optional[dict] = None,
        max_ratio: Optional[float] = _DEFAULT_MAX_RATIO,
        tis_cap: Optional[float] = None,
        dual_clip: Optional[float] = 10.0,
        token_level_loss: bool = False,
        policy_loss_type: str = "ppo",
        **kwargs: Any,
    ) -> None:
        if policy_loss_type != "ppo":
            raise ValueError(
                f"BandPO bounds are per token: policy_loss_type={policy_loss_type!r} is not supported; use 'ppo' "
                "(GSPO's sequence ratio with BandPO's bounds is method 'gspo')"
            )
        form = _common.method_spec(_common.check_method(method)).surrogate
        _common.check_cap_and_dual_clip(max_ratio, dual_clip)
        if form == "mask" and max_ratio == _DEFAULT_MAX_RATIO:
            max_ratio = None  # DPPO's region is uncapped, as DPPO defines it (as in the verl plug-in)
        named = dict(
            divergence=divergence, delta=delta, eps_low=eps_low, eps_high=eps_high, r_max=r_max, tis_cap=tis_cap,
            max_ratio=_common.default_cap(method, max_ratio, _DEFAULT_MAX_RATIO),
        )
        settings = _common.method_settings(method, **_common.merge_settings(named, settings, "settings"))
        settings = _common.schedule_settings(method, settings, delta_schedule, delta_end, delta_steps)
        _common.check_settings(method, settings)  # delta / eps / r_max ranges: bandpo's
        kwargs.pop("clip_eps_low", None)
        kwargs.pop("clip_eps_high", None)
        super().__init__(
            dual_clip=dual_clip, token_level_loss=token_level_loss, policy_loss_type=policy_loss_type, **kwargs
        )
        self.method = method
        self.settings = settings
        self.form = form
        """The method's surrogate: ``clip`` runs OpenRLHF's own forward; any other is bandpo's per-token loss."""
        self.correction = None if form == "clip" else _correction_of(self)
        """bandpo's :class:`~bandpo.losses.RolloutCorrection` equal to OpenRLHF's ``is_correction_*`` (non-clip forms)."""
        self.last_metrics: dict[str, Tensor] = {}
        self.step: Optional[int] = None
        """OpenRLHF's optimiser step, for a δ schedule (set by the patched ``training_step``)."""
        self.info_sink: Optional[dict] = None
        """Where the next call puts ``bandpo/<key>`` metrics (the experience's ``info``; set by the patched step)."""

    def forward(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        action_mask: Optional[Tensor] = None,
        rollout_log_probs: Optional[Tensor] = None,
        dp_size: int = 1,
        batch_num_tokens: Optional[float] = None,
        global_batch_size: Optional[float] = None,
    ):
        """OpenRLHF's forward with BandPO's bounds; returns ``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``."""
        mask = torch.ones_like(log_probs, dtype=torch.bool) if action_mask is None else action_mask.bool()
        # Padding may hold anything: the bounds are computed from p = 1 there (masked out of the loss anyway).
        old = torch.where(mask, old_log_probs.detach(), torch.zeros((), dtype=old_log_probs.dtype)).clamp(max=0)
        if self.step is None and any(callable(v) for v in self.settings.values()):
            raise ValueError(
                "a BandPO delta schedule needs OpenRLHF's optimiser step: install the loss with patch_openrlhf or "
                "setup_hook (which set loss_fn.step), or set loss_fn.step yourself"
            )
        lower, upper = _common.bounds(old, self.method, step=self.step, **self.settings)
        lower, upper = lower.to(log_probs.dtype), upper.to(log_probs.dtype)
        if self.form != "clip":
            return self._forward_form(
                log_probs, old_log_probs, old, advantages, mask, lower, upper, rollout_log_probs,
                dp_size=dp_size, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size,
            )
        saved = (self.clip_eps_low, self.clip_eps_high)
        self.clip_eps_low = _common.OneMinus(lambda: (lower, upper))
        self.clip_eps_high = _common.OnePlus(lambda: (lower, upper))
        try:
            out = super().forward(
                log_probs, old_log_probs, advantages, action_mask=action_mask, rollout_log_probs=rollout_log_probs,
                dp_size=dp_size, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size,
            )
        finally:
            self.clip_eps_low, self.clip_eps_high = saved
        adv = advantages.expand_as(log_probs) if advantages.shape != log_probs.shape else advantages
        self.last_metrics = _common.band_metrics(log_probs, old, adv, mask, lower, upper, dual_clip=self.dual_clip)
        if self.info_sink is not None:
            self.info_sink.update({f"bandpo/{k}": self.last_metrics[k].detach() for k in LOGGED_KEYS})
        return out


    def _forward_form(
        self, log_probs: Tensor, old_log_probs: Tensor, old: Tensor, advantages: Tensor, mask: Tensor, lower: Tensor,
        upper: Tensor, rollout_log_probs: Optional[Tensor], **batch_info: Any,
    ):
        """A method whose surrogate is not PPO's clip: bandpo's per-token loss (``bandpo.policy_loss``'s), times
        the rollout correction's weights, aggregated by OpenRLHF's ``aggregate_loss`` (no dual clip)."""
        adv = advantages.expand_as(log_probs) if advantages.shape != log_probs.shape else advantages
        zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
        spec = _common.method_spec(self.method, **self.settings)
        if self.form == "mask":
            logp = torch.where(mask, log_probs, zero)
            a = torch.where(mask, adv.detach().to(log_probs.dtype), zero)
            ratio = torch.exp(torch.clamp(logp - old, -_losses.LOG_RATIO_CLAMP, _losses.LOG_RATIO_CLAMP))
            per_token = _common.surrogate(ratio, a, lower, upper, form="mask", tis_cap=spec.tis_cap)
        else:
            per_token = per_token_loss(
                self.form, log_probs, old, adv, mask, lower, upper, settings=spec.surrogate_settings, step=self.step
            )
        vllm_kl = is_filter_ratio = None
        if self.correction is not None:
            if rollout_log_probs is None:
                raise ValueError(
                    f"is_correction_level={self.is_correction_level!r} needs rollout_log_probs (OpenRLHF passes them "
                    "when its vLLM engine returns log-probabilities)"
                )
            per_token = per_token * _losses.rollout_weights(old, rollout_log_probs, mask, self.correction, step=self.step)
            m = mask.to(log_probs.dtype)
            w = torch.exp((old_log_probs - rollout_log_probs).detach())
            low, high = self.correction.interval(w)
            is_filter_ratio = (((w < low) | (w > high)).to(m.dtype) * m).sum() / m.sum().clamp(min=1)
            vllm_kl = ((rollout_log_probs - old_log_probs) * m).sum() / m.sum().clamp(min=1)
        loss = aggregate_loss(per_token, mask.to(per_token.dtype), token_level_loss=self.token_level_loss, **batch_info)
        metric_form = "mask" if self.form == "mask" else "clip"
        self.last_metrics = _common.band_metrics(
            log_probs, old, adv, mask, lower, upper, form=metric_form, tis_cap=spec.tis_cap
        )
        if self.info_sink is not None:
            self.info_sink.update({f"bandpo/{k}": self.last_metrics[k].detach() for k in LOGGED_KEYS})
        m = mask.to(log_probs.dtype)
        ppo_kl = (-(log_probs - old_log_probs).detach() * m).sum() / m.sum().clamp(min=1)
        return loss, self.last_metrics["clip_ratio/region_mean"], ppo_kl, vllm_kl, is_filter_ratio


def _correction_of(loss: PolicyLoss) -> Optional[_losses.RolloutCorrection]:
    """OpenRLHF's ``is_correction_*`` settings as bandpo's rollout correction (for the non-clip forms, whose loss
    is bandpo's): token level with the ratio gate is ``truncate`` (``clip``) or ``mask`` on [low, high]; OpenRLHF's
    sequence gate (the geometric mean of the token weights) and its divergence gates have no bandpo equivalent and
    are refused in one line."""
    if loss.is_correction_level == "off":
        return None
    if loss.is_correction_level != "token" or loss.is_correction_gating != "ratio":
        raise ValueError(
            f"with a non-clip BandPO method, OpenRLHF's correction must be is_correction_level='token' with "
            f"is_correction_gating='ratio' (bandpo's token-level TIS/MIS), got level={loss.is_correction_level!r}, "
            f"gating={loss.is_correction_gating!r}"
        )
    low, high = (float(x) for x in loss.is_correction_threshold)
    mode = "truncate" if loss.is_correction_mode == "clip" else "mask"
    return _losses.RolloutCorrection(mode, "token", lower=low, upper=high)


def bandpo_policy_loss_class(**bandpo_kwargs: Any) -> type:
    """A ``PolicyLoss`` drop-in class that builds :class:`BandPOPolicyLoss` with ``bandpo_kwargs``.

    OpenRLHF builds its loss as ``PolicyLoss(clip_eps_low=..., clip_eps_high=..., dual_clip=...,
    token_level_loss=..., policy_loss_type=..., is_correction_...=...)`` from its command line; the returned class
    keeps those arguments (importance correction, ...) and adds the BandPO method and settings. ``dual_clip`` and
    ``token_level_loss`` are BandPO's: ``bandpo_kwargs``'s, else the paper's (10, seq-mean-token-mean); where
    OpenRLHF's flags (``--actor.dual_clip``, ``--actor.loss_agg_mode``) give other values, one warning line says
    which value trains. Checked once here, so a bad setting fails at patch time.
    """
    fixed = {**_PAPER_LOSS, **{k: v for k, v in bandpo_kwargs.items() if k in _PAPER_LOSS}}
    BandPOPolicyLoss(**{**bandpo_kwargs, **fixed})  # validate now

    class ConfiguredBandPOPolicyLoss(BandPOPolicyLoss):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if args:
                raise ValueError("OpenRLHF's PolicyLoss is built with keyword arguments; got positional ones")
            clash = [f"{k}={kwargs[k]!r}" for k in fixed if k in kwargs and kwargs[k] != fixed[k]]
            if clash:
                warnings.warn(
                    f"BandPO trains with dual_clip={fixed['dual_clip']!r}, token_level_loss={fixed['token_level_loss']!r}"
                    f" (set them in {ENV_VAR}); OpenRLHF's flags gave {', '.join(clash)}", stacklevel=2,
                )
            super().__init__(**{**kwargs, **bandpo_kwargs, **fixed})

    ConfiguredBandPOPolicyLoss.__name__ = ConfiguredBandPOPolicyLoss.__qualname__ = "ConfiguredBandPOPolicyLoss"
    return ConfiguredBandPOPolicyLoss


def patch_openrlhf(**bandpo_kwargs: Any) -> type:
    """Make OpenRLHF's PPO actor (``openrlhf.trainer.ray.ppo_actor``) build BandPO's loss; returns the class.

    Acts in the calling process only: OpenRLHF's actors live in Ray workers, where :func:`setup_hook` calls this.
    """
    import openrlhf.trainer.ray.ppo_actor as ppo_actor

    cls = bandpo_policy_loss_class(**bandpo_kwargs)
    ppo_actor.PolicyLoss = cls
    trainer = ppo_actor.ActorPPOTrainer
    trainer.training_step = _with_step_and_metrics(trainer.training_step)
    return cls


def _with_step_and_metrics(training_step: Any) -> Any:
    """OpenRLHF's ``ActorPPOTrainer.training_step`` with the optimiser step and a metrics sink on a BandPO loss."""
    if getattr(training_step, "_bandpo", False):
        return training_step

    @functools.wraps(training_step)
    def wrapped(self, experience, *args, **kwargs):
        loss_fn = getattr(self, "actor_loss_fn", None)
        if not isinstance(loss_fn, BandPOPolicyLoss):
            return training_step(self, experience, *args, **kwargs)
        scheduler = getattr(self, "actor_scheduler", None)
        loss_fn.step = int(scheduler.last_epoch) if scheduler is not None else None
        loss_fn.info_sink = experience.info
        try:
            return training_step(self, experience, *args, **kwargs)
        finally:
            loss_fn.info_sink = None

    wrapped._bandpo = True
    return wrapped


def setup_hook() -> None:
    """Ray ``worker_process_setup_hook``: :func:`patch_openrlhf` with the JSON keyword arguments in ``BANDPO_OPENRLHF``."""
    raw = os.environ.get(ENV_VAR, "{}")
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_VAR} must be a JSON object of BandPOPolicyLoss arguments, got {raw!r}") from exc
    if not isinstance(kwargs, dict):
        raise ValueError(f"{ENV_VAR} must be a JSON object of BandPOPolicyLoss arguments, got {raw!r}")
    patch_openrlhf(**kwargs)
