"""BandPO in TRL: ``BandPOConfig`` / ``BandPOTrainer``, subclasses of TRL's ``GRPOConfig`` / ``GRPOTrainer``.

    from bandpo.integrations.trl import BandPOConfig, BandPOTrainer
    args = BandPOConfig(output_dir="out", bandpo_method="band_kl", bandpo_delta=0.05, num_iterations=2, ...)
    BandPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...).train()

How it plugs in (written against TRL 1.16, docs/integrations.md). TRL's ``GRPOTrainer._compute_loss`` clips the
token ratio r = π_θ/π_old to ``[1 - trainer.epsilon_low, 1 + trainer.epsilon_high]``, reading both attributes
inside elementwise expressions only. For the duration of each ``_compute_loss`` call this trainer sets them to
proxies whose ``1 - ·`` and ``1 + ·`` are the per-token tensors ``lower`` and ``upper`` of
``bandpo.bounds(old_logp, method, ...)`` (cap ``max_ratio`` included), exactly, with no ``1 - (1 - lower)``
rounding. The paper's dual clip (c = 10 for A < 0, arXiv 2603.04918) goes through TRL's own ``delta`` (an upper
clamp of the unclipped ratio): with ``upper <= c`` that gives per token

    ℓ = max(-A·r, -A·clip(r, lower, upper)),  and ℓ = min(ℓ, -A·c) where A < 0,

which is ``bandpo.policy_loss(..., dual_clip=c)``. TRL then applies its own masks, importance correction, KL term
and aggregation (``loss_type``: ``grpo`` = seq-mean-token-mean as in the paper, ``bnpo`` = token-mean, ...).
The rest of TRL's code runs unchanged, so the plug-in follows TRL releases that keep these two attribute names.

Old log-probs: when generation is aligned with optimiser steps (``num_iterations == 1``, ``gradient_accumulation_steps``
a multiple of ``steps_per_generation``, no vLLM importance correction) TRL keeps no π_old: the ratio is exactly 1 and
no bound can bite. The bounds are then computed from the current log-probs (detached), which is what π_old is
there, so the metrics stay meaningful.

Methods: every method of ``bandpo.list_methods()`` whose surrogate is PPO's clip (``clip``, ``clip_higher``,
``dcpo``, ``band_*``, and any clip method registered later); a method with another surrogate (DPPO's mask, ...) is
refused with a one-line error, since TRL's surrogate can clip but not mask or reweight.

δ schedules (``bandpo_delta_schedule``) are evaluated at TRL's optimiser step ``state.global_step`` (from 0).

KL: ``use_bias_correction_kl`` defaults to ``False`` here (TRL 1.16: ``True``), so ``beta`` weighs the plain k3
estimator, the paper's KL term.

Metrics: TRL's own ``clip_ratio/*`` now count tokens outside BandPO's interval, by bandpo's definition (the ratio
before TRL's clamp at ``delta``: A < 0 and r < lower, or A > 0 and r > upper); bandpo's diagnostics
(``bandpo.losses.METRIC_KEYS``, docs/metrics.md: band width, per-probability-bucket clip fractions, dual-clip
fraction, ...) are logged beside them under ``bandpo/<key>``; across processes counts are summed, means weighted
by token counts, min/max reduced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # pragma: no cover - exercised only without TRL
    raise ImportError("bandpo.integrations.trl needs TRL: pip install 'bandpo[trl]'") from exc

import bandpo.losses as _losses

from . import _common

__all__ = ["BandPOConfig", "BandPOTrainer", "SUPPORTED_LOSS_TYPES"]

SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
"""TRL loss types whose surrogate clips the ratio to [1 - epsilon_low, 1 + epsilon_high] (the ones BandPO can drive)."""


@dataclass
class BandPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus BandPO's bounds (every ``GRPOConfig`` option keeps its meaning).

    Defaults follow the paper's BandPO-KL run (arXiv 2603.04918, docs/paper-notes.md "Training recipe"): band of
    the KL divergence, δ = 0.05, upper bound capped at 10, dual clip 10, ``loss_type="grpo"``
    (seq-mean-token-mean). TRL's ``epsilon``, ``epsilon_high`` and ``delta`` are replaced by the ``bandpo_*``
    fields and must stay at their defaults; options BandPO cannot honour are refused on construction.
    """

    bandpo_method: str = field(
        default="band_kl",
        metadata={"help": "BandPO bounds method id (bandpo.list_methods()): clip, clip_higher, dcpo, band_kl, band_tv, ..."},
    )
    """Bounds method id (``bandpo.list_methods()``): ``clip``, ``clip_higher``, ``dcpo``, ``band_kl``, ``band_tv``, ..."""
    bandpo_divergence: Optional[str] = field(
        default=None,
        metadata={"help": "f-divergence of a band method; None: the one its id names (band_kl -> kl)."},
    )
    """f-divergence of a band method; ``None`` takes the one its id names (``band_kl`` -> ``kl``)."""
    bandpo_delta: Optional[float] = field(
        default=None,
        metadata={"help": "BandPO's trust-region radius delta > 0 (band methods; None: bandpo's default 0.05). "
                  "Not TRL's `delta`, which is an upper clamp of the ratio."},
    )
    """Band radius δ > 0 (band methods; ``None``: bandpo's default, 0.05). Not TRL's ``delta`` (a ratio clamp)."""
    bandpo_delta_schedule: Optional[str] = field(
        default=None,
        metadata={"help": "How delta moves with TRL's optimiser step (state.global_step): None/constant, linear, cosine "
                  "(from bandpo_delta to bandpo_delta_end over bandpo_delta_steps steps)."},
    )
    """δ schedule over TRL's optimiser step (``state.global_step``, from 0): ``None``/``constant``, ``linear``,
    ``cosine``, from ``bandpo_delta`` (or the method's δ) to ``bandpo_delta_end`` over ``bandpo_delta_steps``."""
    bandpo_delta_end: Optional[float] = field(
        default=None, metadata={"help": "delta after bandpo_delta_steps optimiser steps (linear/cosine schedules)."}
    )
    """δ reached after ``bandpo_delta_steps`` optimiser steps (linear/cosine schedules only)."""
    bandpo_delta_steps: Optional[int] = field(
        default=None, metadata={"help": "Length of the delta schedule in optimiser steps (linear/cosine schedules)."}
    )
    """Length of the δ schedule in TRL optimiser steps (linear/cosine schedules only)."""
    bandpo_eps_low: Optional[float] = field(
        default=None, metadata={"help": "eps_low of clip/clip_higher/dcpo (None: the method's default)."}
    )
    """ε_low of ``clip``/``clip_higher``/``dcpo``; ``None`` takes the method's default."""
    bandpo_eps_high: Optional[float] = field(
        default=None, metadata={"help": "eps_high of clip/clip_higher/dcpo (None: the method's default)."}
    )
    """ε_high of ``clip``/``clip_higher``/``dcpo``; ``None`` takes the method's default."""
    bandpo_r_max: Optional[float] = field(
        default=None, metadata={"help": "DCPO's own cap on its upper bound (dcpo only; None: 10)."}
    )
    """DCPO's own cap on its upper bound (``dcpo`` only; ``None``: 10)."""
    bandpo_extra_settings: Optional[Union[dict, str]] = field(
        default=None,
        metadata={"help": "Other settings of the method by name, as a dict or a JSON object (settings of method "
                  "table rows that have no bandpo_* field)."},
    )
    """Other settings of the method by name (a dict, or a JSON object on the command line), for rows of bandpo's
    method table whose settings have no ``bandpo_*`` field; a setting that has one is refused here."""
    bandpo_max_ratio: Optional[float] = field(
        default=10.0, metadata={"help": "Cap >= 1 on every method's upper bound (the paper: 10); None: no cap."}
    )
    """Cap >= 1 on the upper bound of every method (the paper: 10); ``None``: no cap."""
    bandpo_dual_clip: Optional[float] = field(
        default=10.0,
        metadata={"help": "Dual-clip constant c > 1 for A < 0 (the paper: 10); None: off. Needs "
                  "bandpo_max_ratio <= bandpo_dual_clip."},
    )
    """Dual-clip constant c > 1 for tokens with A < 0 (the paper: 10); ``None`` turns it off. Applied through TRL's
    ratio clamp, which acts on every token, hence the requirement ``bandpo_max_ratio <= bandpo_dual_clip``."""
    bandpo_log_metrics: bool = field(
        default=True, metadata={"help": "Log bandpo's band and per-bucket metrics as bandpo/<key>."}
    )
    """Log bandpo's diagnostics (``bandpo/<key>``, keys ``bandpo.losses.METRIC_KEYS``) beside TRL's."""
    loss_type: str = field(
        default="grpo",
        metadata={"help": "TRL loss type; BandPO supports grpo (seq-mean-token-mean, the paper's), bnpo, dr_grpo, "
                  "dapo, luspo."},
    )
    """TRL's aggregation (``grpo`` = seq-mean-token-mean, the paper's; also ``bnpo``, ``dr_grpo``, ``dapo``,
    ``luspo``). Here it defaults to ``grpo``, not TRL's ``dapo``."""

    use_bias_correction_kl: bool = field(
        default=False,
        metadata={"help": "TRL's IS factor on the KL term; False (here the default) is the paper's plain k3 KL."},
    )
    """Multiply TRL's per-token KL by the ratio (TRL 1.16's default ``True``). ``False`` here: the paper's KL term
    is the plain k3 estimator (verl's ``low_var_kl``, arXiv 2603.04918), which is what ``beta`` then weighs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bandpo_validate()

    def bandpo_settings(self) -> dict[str, Any]:
        """The method's settings as ``bandpo.bounds`` takes them (``None`` fields left out; δ a schedule when
        ``bandpo_delta_schedule`` is ``linear`` or ``cosine``)."""
        extra = self.bandpo_extra_settings
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as exc:
                raise ValueError(f"bandpo_extra_settings must be a JSON object, got {extra!r}") from exc
        named = dict(
            divergence=self.bandpo_divergence,
            delta=self.bandpo_delta,
            eps_low=self.bandpo_eps_low,
            eps_high=self.bandpo_eps_high,
            r_max=self.bandpo_r_max,
            max_ratio=self.bandpo_max_ratio,
        )
        settings = _common.method_settings(
            self.bandpo_method, **_common.merge_settings(named, extra, "bandpo_extra_settings", "bandpo_")
        )
        return _common.schedule_settings(
            self.bandpo_method, settings, self.bandpo_delta_schedule, self.bandpo_delta_end, self.bandpo_delta_steps
        )

    def bandpo_validate(self) -> None:
        """One-line ValueErrors for BandPO settings out of range and TRL options BandPO cannot honour."""
        _common.require_clip_surrogate(self.bandpo_method, "TRL")  # DPPO's mask methods need their own loss
        if self.loss_type not in SUPPORTED_LOSS_TYPES:
            raise ValueError(
                f"BandPO cannot drive loss_type={self.loss_type!r} (its surrogate has no ratio clip); "
                f"use one of {', '.join(SUPPORTED_LOSS_TYPES)}"
            )
        if self.importance_sampling_level != "token":
            raise ValueError(
                f"BandPO bounds are per token: importance_sampling_level={self.importance_sampling_level!r} is not "
                "supported; use 'token'"
            )
        if self.delta is not None:
            raise ValueError(
                f"TRL's delta (={self.delta!r}, an upper clamp of the ratio) is set by BandPO from bandpo_dual_clip; "
                "leave delta=None and set bandpo_dual_clip (BandPO's own radius is bandpo_delta)"
            )
        if self.epsilon != 0.2 or self.epsilon_high is not None:
            raise ValueError(
                f"epsilon={self.epsilon!r}/epsilon_high={self.epsilon_high!r} would be ignored: BandPO's bounds "
                "replace them; set bandpo_method='clip' with bandpo_eps_low/bandpo_eps_high instead"
            )
        _common.check_cap_and_dual_clip(self.bandpo_max_ratio, self.bandpo_dual_clip, prefix="bandpo_")
        if self.bandpo_dual_clip is not None and (
            self.bandpo_max_ratio is None or self.bandpo_max_ratio > self.bandpo_dual_clip
        ):
            raise ValueError(
                f"bandpo_dual_clip={self.bandpo_dual_clip} needs bandpo_max_ratio <= bandpo_dual_clip (got "
                f"{self.bandpo_max_ratio}): TRL's ratio clamp acts on every token, so the cap must keep upper <= c"
            )
        if not isinstance(self.bandpo_log_metrics, bool):
            raise ValueError(f"bandpo_log_metrics must be True or False, got {self.bandpo_log_metrics!r}")
        _common.check_settings(self.bandpo_method, self.bandpo_settings())  # delta / eps / r_max ranges: bandpo's


class BandPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` clipping with BandPO's per-token bounds (see the module docstring for how).

    Takes a :class:`BandPOConfig` as ``args`` (a plain ``GRPOConfig`` is refused: its epsilon would silently win).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cfg = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(cfg, BandPOConfig):
            raise ValueError(f"BandPOTrainer needs args=BandPOConfig(...), got {type(cfg).__name__}")
        super().__init__(*args, **kwargs)
        self._bandpo_settings = cfg.bandpo_settings()

    def _compute_loss(self, model, inputs):
        cfg: BandPOConfig = self.args
        settings = self._bandpo_settings
        step = int(self.state.global_step)
        captured: dict[str, Tensor] = {}
        forward = self._get_per_token_logps_and_entropies  # may be an instance attribute (tests, other plug-ins)

        def capture(*a, **kw):
            out = forward(*a, **kw)
            captured.setdefault("logps", out[0])
            return out

        cache: list[tuple[Tensor, Tensor]] = []

        def old_logps() -> Tensor:
            old = inputs.get("old_per_token_logps")
            return captured["logps"].detach() if old is None else old

        def get_bounds() -> tuple[Tensor, Tensor]:
            if not cache:
                old = old_logps()
                # Padding may hold anything: bounds there are taken at p = 1 (TRL masks those tokens out anyway).
                valid = _loss_mask(inputs).bool()
                old_valid = torch.where(valid, old.detach(), torch.zeros((), dtype=old.dtype, device=old.device))
                lower, upper = _common.bounds(old_valid.clamp(max=0), cfg.bandpo_method, step=step, **settings)
                cache.append((lower.to(old.dtype), upper.to(old.dtype)))
            return cache[0]

        saved = (self.epsilon_low, self.epsilon_high, cfg.delta)
        had_instance_forward = "_get_per_token_logps_and_entropies" in self.__dict__
        self._get_per_token_logps_and_entropies = capture
        self.epsilon_low, self.epsilon_high = _common.OneMinus(get_bounds), _common.OnePlus(get_bounds)
        cfg.delta = cfg.bandpo_dual_clip
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high, cfg.delta = saved
            if had_instance_forward:
                self._get_per_token_logps_and_entropies = forward
            else:
                del self._get_per_token_logps_and_entropies

        if "logps" in captured:
            lower, upper = get_bounds()
            self._bandpo_log(inputs, captured["logps"], old_logps(), lower, upper)
        return loss

    def _bandpo_log(self, inputs: dict, logps: Tensor, old: Tensor, lower: Tensor, upper: Tensor) -> None:
        """bandpo's metrics of this micro-batch, reduced over processes (``bandpo.losses.reduce_metrics``).

        TRL's own ``clip_ratio/*`` entries of this call are replaced by the same counts under bandpo's definition:
        TRL tests its ratio after clamping it at ``delta`` (the dual clip, = the cap), so a token with r above a
        capped upper bound was not counted as clipped high.
        """
        mask = _loss_mask(inputs)
        adv = inputs["advantages"]
        adv = (adv.unsqueeze(1) if adv.dim() == 1 else adv).expand_as(logps)
        metrics = _common.band_metrics(logps, old, adv, mask, lower, upper, dual_clip=self.args.bandpo_dual_clip)
        reduced = _losses.reduce_metrics([metrics])  # every process calls this loss, so the collective is safe
        mode = "train" if self.model.training else "eval"
        logged = self._metrics[mode]
        for key in ("low_mean", "high_mean", "region_mean"):
            if logged.get(f"clip_ratio/{key}"):
                logged[f"clip_ratio/{key}"][-1] = float(reduced[f"clip_ratio/{key}"])
        low, high = _common.clipped_tokens(logps, old, adv, lower, upper)
        m = mask.to(torch.float32)
        for key, flags, pick in (("low_min", low, torch.min), ("high_max", high, torch.max)):
            if logged.get(f"clip_ratio/{key}"):
                per_seq = self.accelerator.gather((flags.float() * m).sum(-1) / m.sum(-1))
                per_seq = per_seq[~torch.isnan(per_seq)]
                logged[f"clip_ratio/{key}"][-1] = float(pick(per_seq)) if per_seq.numel() else float("nan")
        if self.args.bandpo_log_metrics:
            for k, v in reduced.items():
                logged[f"bandpo/{k}"].append(float(v))


def _loss_mask(inputs: dict) -> Tensor:
    """The tokens TRL's loss counts: the completion mask, times the tool mask when there is one."""
    mask = inputs["completion_mask"]
    return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask
