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
Only clip methods: DPPO's mask methods (``dppo_kl``, ``dppo_tv``) are refused with a one-line error (OpenRLHF's
surrogate can clip but not mask). bandpo's diagnostics of the last call (``bandpo.losses.METRIC_KEYS``, docs/metrics.md) are kept in
``loss_fn.last_metrics``, since the return tuple is fixed.

Installing it in OpenRLHF's actors (they run in Ray worker processes): :func:`patch_openrlhf` replaces the
``PolicyLoss`` that ``ppo_actor`` builds; :func:`setup_hook` does that from the environment variable
``BANDPO_OPENRLHF`` (JSON of keyword arguments, e.g. ``{"method": "band_kl", "delta": 0.05}``) and is meant for
Ray's ``runtime_env={"worker_process_setup_hook": "bandpo.integrations.openrlhf.setup_hook", "env_vars": {...}}``
(docs/integrations.md).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from torch import Tensor

try:
    from openrlhf.models.loss import PolicyLoss
except ImportError as exc:  # pragma: no cover - exercised only without OpenRLHF
    raise ImportError("bandpo.integrations.openrlhf needs OpenRLHF (openrlhf.models.loss.PolicyLoss)") from exc

from . import _common

__all__ = ["BandPOPolicyLoss", "ENV_VAR", "bandpo_policy_loss_class", "patch_openrlhf", "setup_hook"]

ENV_VAR = "BANDPO_OPENRLHF"
"""Environment variable read by :func:`setup_hook`: JSON object of :class:`BandPOPolicyLoss` keyword arguments."""


class BandPOPolicyLoss(PolicyLoss):
    """OpenRLHF's ``PolicyLoss`` clipping to BandPO's per-token bounds (see the module docstring).

    Args:
        method: bounds method id (``bandpo.list_methods()``); default ``band_kl``.
        divergence, delta, eps_low, eps_high, r_max: the method's settings (``None``: its defaults).
        max_ratio: cap >= 1 on the upper bound (the paper: 10).
        dual_clip: c > 1 for A < 0 (the paper: 10), or ``None``; OpenRLHF's own dual clip applies it.
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
        max_ratio: Optional[float] = 10.0,
        dual_clip: Optional[float] = 10.0,
        token_level_loss: bool = False,
        policy_loss_type: str = "ppo",
        **kwargs: Any,
    ) -> None:
        if policy_loss_type != "ppo":
            raise ValueError(
                f"BandPO bounds are per token: policy_loss_type={policy_loss_type!r} is not supported; use 'ppo'"
            )
        _common.require_clip_surrogate(method, "OpenRLHF")  # DPPO's mask methods need their own loss
        _common.check_cap_and_dual_clip(max_ratio, dual_clip)
        settings = _common.method_settings(
            method, divergence=divergence, delta=delta, eps_low=eps_low, eps_high=eps_high, r_max=r_max,
            max_ratio=max_ratio,
        )
        _common.check_settings(method, settings)  # delta / eps / r_max ranges: bandpo's
        kwargs.pop("clip_eps_low", None)
        kwargs.pop("clip_eps_high", None)
        super().__init__(
            dual_clip=dual_clip, token_level_loss=token_level_loss, policy_loss_type=policy_loss_type, **kwargs
        )
        self.method = method
        self.settings = settings
        self.last_metrics: dict[str, Tensor] = {}

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
        lower, upper = _common.bounds(old, self.method, **self.settings)
        lower, upper = lower.to(log_probs.dtype), upper.to(log_probs.dtype)
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
        return out


def bandpo_policy_loss_class(**bandpo_kwargs: Any) -> type:
    """A ``PolicyLoss`` drop-in class that builds :class:`BandPOPolicyLoss` with ``bandpo_kwargs``.

    OpenRLHF builds its loss as ``PolicyLoss(clip_eps_low=..., clip_eps_high=..., dual_clip=...,
    token_level_loss=..., policy_loss_type=..., is_correction_...=...)`` from its command line; the returned class
    keeps those arguments (OpenRLHF's ``--dual_clip`` and loss aggregation included) unless ``bandpo_kwargs`` sets
    them, and adds the BandPO method and settings. Checked once here, so a bad setting fails at patch time.
    """
    BandPOPolicyLoss(**bandpo_kwargs)  # validate now

    class ConfiguredBandPOPolicyLoss(BandPOPolicyLoss):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if args:
                raise ValueError("OpenRLHF's PolicyLoss is built with keyword arguments; got positional ones")
            super().__init__(**{**kwargs, **bandpo_kwargs})

    ConfiguredBandPOPolicyLoss.__name__ = ConfiguredBandPOPolicyLoss.__qualname__ = "ConfiguredBandPOPolicyLoss"
    return ConfiguredBandPOPolicyLoss


def patch_openrlhf(**bandpo_kwargs: Any) -> type:
    """Make OpenRLHF's PPO actor (``openrlhf.trainer.ray.ppo_actor``) build BandPO's loss; returns the class.

    Acts in the calling process only: OpenRLHF's actors live in Ray workers, where :func:`setup_hook` calls this.
    """
    import openrlhf.trainer.ray.ppo_actor as ppo_actor

    cls = bandpo_policy_loss_class(**bandpo_kwargs)
    ppo_actor.PolicyLoss = cls
    return cls


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
