"""Policy losses: the clipped surrogate with per-token bounds, the method table, bounds rules, schedules,
aggregation and metrics.

* :mod:`~bandpo.losses.rules`: bounds rules carrying their settings (:class:`Clip`, :class:`DCPO`, :class:`Band`,
  :class:`LogClip`, :class:`Unbounded`, and the composites :class:`Union`, :class:`Split`, :class:`ByProbability`);
* :mod:`~bandpo.losses.surrogates`: the loss forms beyond PPO's clip and DPPO's mask (GSPO, CISPO, SAPO, GPG,
  Clip-Cov, KL-Cov, GMPO, VESPO), :data:`SURROGATE_FORMS`;
* :mod:`~bandpo.losses.correction`: rollout correction (TIS, MIS, IcePop; token or sequence level),
  :class:`RolloutCorrection`, :func:`rollout_weights`, :data:`CORRECTIONS`;
* :mod:`~bandpo.losses.methods`: the method table :data:`METHODS` (ids ``clip``, ``clip_higher``, ``dcpo``,
  ``band_<divergence>``, ``band_kl_relax``, ``band_kl_upper``, ``band_kl_lower``,
  ``band_kl_upper_rare``, ``dppo_kl``, ``dppo_tv``,
  ``no_clip``, ``gspo``, ``cispo``, ``sapo``, ``gpg``, ``clip_cov``, ``kl_cov``, ``gmpo``, ``vespo``,
  ``cispo_band_kl``, ``gmpo_band_kl``);
* :mod:`~bandpo.losses.schedules`: :class:`Constant`, :class:`Linear`, :class:`Cosine` (e.g. for δ);
* :mod:`~bandpo.losses.aggregation`: :func:`aggregate`, :func:`aggregation_denominator`;
* :mod:`~bandpo.losses.metrics`: :data:`METRIC_KEYS`, :func:`loss_metrics`, :func:`reduce_metrics`;
* :mod:`~bandpo.losses.policy`: :func:`policy_loss`, :func:`bounds`, :func:`surrogate`;
* :mod:`~bandpo.losses.config`: :class:`LossConfig`.

Builds on :mod:`bandpo.operator`; imports nothing from training or experiments. No function shares its name
with a module of this package, so ``import bandpo.losses.rules as rules`` is always the module.
"""

from .aggregation import AGGREGATIONS, Aggregation, aggregate, aggregation_denominator, get_aggregation, list_aggregations
from .rules import DCPO, Band, BoundsRule, ByProbability, Clip, LogClip, Split, Unbounded, Union, replace_settings, rule_settings
from .surrogates import SURROGATE_FORMS, ClipCovSettings, KLCovSettings, SAPOSettings, VESPOSettings, geometric_interval
from .correction import CORRECTIONS, RolloutCorrection, get_correction, rollout_weights
from .config import LossConfig
from .methods import (
    METHODS,
    SURROGATES,
    Method,
    get_method,
    list_methods,
    method_settings,
    register_method,
    resolve_method,
    unregister_method,
)
from .metrics import BUCKET_EDGES, BUCKET_NAMES, METRIC_KEYS, Reduction, loss_metrics, metric_reduction, reduce_metrics
from .schedules import SCHEDULES, Constant, Cosine, Linear, Schedule, make_schedule
from .policy import LOG_RATIO_CLAMP, bounds, policy_loss, surrogate

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "BUCKET_EDGES",
    "BUCKET_NAMES",
    "Band",
    "ByProbability",
    "CORRECTIONS",
    "ClipCovSettings",
    "KLCovSettings",
    "LogClip",
    "RolloutCorrection",
    "SAPOSettings",
    "SURROGATE_FORMS",
    "Unbounded",
    "VESPOSettings",
    "geometric_interval",
    "get_correction",
    "rollout_weights",
    "BoundsRule",
    "Clip",
    "Constant",
    "Cosine",
    "DCPO",
    "LOG_RATIO_CLAMP",
    "Linear",
    "LossConfig",
    "METHODS",
    "METRIC_KEYS",
    "Method",
    "Reduction",
    "SCHEDULES",
    "SURROGATES",
    "Schedule",
    "Split",
    "Union",
    "aggregate",
    "aggregation_denominator",
    "bounds",
    "get_aggregation",
    "get_method",
    "list_aggregations",
    "list_methods",
    "loss_metrics",
    "make_schedule",
    "method_settings",
    "metric_reduction",
    "policy_loss",
    "reduce_metrics",
    "replace_settings",
    "register_method",
    "resolve_method",
    "rule_settings",
    "surrogate",
    "unregister_method",
]
