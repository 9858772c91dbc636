"""``BandPOModule``: a LightningModule (manual optimisation) that runs the GRPO-style loop of the paper.

One ``training_step`` is one RL step:

1. **rollout** (``bandpo.training.rollout.rollout``): this process's share of the step's prompts, G completions each, rewards,
   group advantages, old log-probs and entropy from a forward pass, reference log-probs if ``objective.kl_coef > 0``;
2. **update**: ``ppo_epochs`` passes over the rollout in mini-batches of ``prompts_per_minibatch`` prompt groups,
   one optimiser step each (so the later steps are off-policy and the ratio bounds matter), with gradient
   accumulation over micro-batches; loss = ``bandpo.policy_loss(config=cfg.loss, step=RL step)`` (so a δ schedule
   follows the RL step) + β·k3 KL, both aggregated with the exact
   whole-mini-batch denominator (``bandpo.losses.aggregation_denominator``), with several processes the
   mean of the ranks' denominators, so that the gradient average is the aggregate over all ranks' tokens;
3. **log** one row of metrics to the run's CSV logger, reduced over micro-batches, optimiser steps and processes
   by ``bandpo.losses.reduce_metrics`` (the same function the bandit uses);
4. **evaluate** (with ``eval.sets``): before the first step, every ``eval.every`` steps and after the last,
   ``bandpo.training.evaluation.evaluate`` samples ``eval.n`` completions per held-out problem (each rank its
   share, reduced exactly; in lock-step under FSDP) and appends mean@n / pass@k / maj@k per set to ``eval.csv``
   (``step`` = RL steps done), after writing every sample to ``eval_samples/step_<step>.jsonl.gz``.
   Evaluation draws from its own generators, so it does not change what training samples.

The module only wires pure functions (``bandpo.training.rollout``, ``bandpo.policy_loss``); its own state is the RL step
counter and, when the reference policy cannot be rebuilt from the model path, the reference weights (both in
the checkpoint). Sampling randomness is re-seeded at every step from (seed, rank, step), so a resumed run
draws exactly what an uninterrupted one would. The data loader is only a clock: the prompts of step ``s`` are
``task.rows(s, prompts_per_step)``.

Non-finite loss or gradient norm: reported with the RL step, the optimiser step and statistics of the inputs,
then the optimiser step is skipped (``trainer.nonfinite = "skip"``, counted in ``nonfinite/skipped``) or the run
stops with ``FloatingPointError`` (``"stop"``). The decision is reduced over processes so every rank agrees. The loss
is called with ``validate=False``: a NaN in the inputs gives NaN bounds and a NaN loss, which this policy sees.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from .config import TrainConfig
from ..losses import Reduction, aggregate, aggregation_denominator, policy_loss, reduce_metrics
from .rollout import Rollout, completion_logp, k3_kl, rollout
from .tasks import Task

__all__ = ["BandPOModule", "NonFiniteError", "RARE_P"]

RARE_P = 0.05
"""Old probability below which a sampled token counts as rare in ``ratio/rare_pos_max`` / ``ratio/rare_neg_min``."""
_LOG_RARE_P = math.log(RARE_P)
# An optimiser step (or micro-batch) without such tokens has no extreme: skipped by its token count, not read as 0.
_RARE_REDUCTIONS = {"ratio/rare_pos_max": Reduction("max", "rare/pos_tokens", 0.0),
                    "ratio/rare_neg_min": Reduction("min", "rare/neg_tokens", math.inf),
                    "rare/pos_tokens": "sum", "rare/neg_tokens": "sum"}


@torch.no_grad()
def _rare_ratio_metrics(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor) -> dict:
    """Ratio extremes of rare sampled tokens (old probability < :data:`RARE_P`) at the moment their gradient is
    taken: ``ratio/rare_pos_max`` = max r over those with A > 0 (0 if none), ``ratio/rare_neg_min`` = min r over
    those with A < 0 (inf if none), and their counts. r = exp(clamp(logp - old_logp, -20, 20)) as in the loss.
    All (B, T) inputs; 0-d outputs, no host sync."""
    rare = mask.bool() & (old_logp < _LOG_RARE_P)
    pos, neg = rare & (adv > 0), rare & (adv < 0)
    r = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    return {"ratio/rare_pos_max": torch.where(pos, r, torch.zeros_like(r)).amax(),
            "ratio/rare_neg_min": torch.where(neg, r, torch.full_like(r, math.inf)).amin(),
            "rare/pos_tokens": pos.sum().to(r.dtype), "rare/neg_tokens": neg.sum().to(r.dtype)}


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm with ``trainer.nonfinite = "stop"``."""


class _Clock(IterableDataset):
    """An endless stream of ticks: the module builds each step's batch itself from its step counter."""

    def __iter__(self):
        while True:
            yield 0


def _all_gather_lists(items: list) -> list:
    """Every process's ``items``, concatenated in rank order (``torch.distributed.all_gather_object``)."""
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def _step_seed(seed: int, rank: int, step: int) -> int:
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % (2**63 - 1)


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)``, cheaper where the run is on the CPU: there only the CPU generator can be drawn
    from, so it alone is seeded (``torch.manual_seed`` also queues a lazy CUDA seeding with a formatted stack trace
    when CUDA is not initialised, ~3 ms per call inside Lightning's stack)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class BandPOModule(L.LightningModule):
    """GRPO-style RL with ``bandpo.policy_loss`` for any ``transformers`` causal LM.

    Args:
        policy: the causal LM to train (``model(input_ids, attention_mask, position_ids) -> .logits``).
        tokenizer: its tokenizer (pad and eos tokens set).
        config: the run's :class:`bandpo.training.config.TrainConfig`.
        task: prompts and scoring (:func:`bandpo.training.tasks.build_task`).
        ref_policy: frozen reference for the k3 KL term (required iff ``config.objective.kl_coef > 0``). It is not a
            registered submodule: not trained, not wrapped by DDP, and saved in checkpoints only when
            ``store_ref`` is set (it cannot be rebuilt from the model path, e.g. after a warm-start).
        store_ref: save the reference weights in checkpoints.
        eval_sets: held-out sets (:func:`bandpo.training.evaluation.build_eval_sets`) evaluated as ``config.eval``
            says; None or empty: no evaluation.
    """

    def __init__(
        self,
        policy: Any,
        tokenizer: Any,
        config: TrainConfig,
        task: Task,
        ref_policy: Any = None,
        store_ref: bool = False,
        eval_sets: Optional[list] = None,
    ) -> None:
        super().__init__()
        if (config.objective.kl_coef > 0) != (ref_policy is not None):
            raise ValueError("a reference policy is needed exactly when objective.kl_coef > 0")
        self.automatic_optimization = False
        self.policy = policy
        self.tokenizer = tokenizer
        self.cfg = config
        self.task = task
        self._ref = [ref_policy]  # a list hides it from nn.Module registration
        if ref_policy is not None:
            ref_policy.eval().requires_grad_(False)
        self.store_ref = store_ref
        self.rl_step = 0
        self.generator: Optional[torch.Generator] = None
        self.eval_sets = list(eval_sets or [])
        self.last_row: Optional[dict] = None
        """The last RL step's metrics row (the progress bar shows some)."""
        self.last_eval: Optional[dict] = None
        """The last evaluation's metrics."""

    @property
    def ref_policy(self) -> Any:
        return self._ref[0]

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.ref_policy is not None:
            self.ref_policy.to(self.device)

    def on_fit_start(self) -> None:
        if self.ref_policy is not None:
            self.ref_policy.to(self.device)
        self.generator = torch.Generator(device=self.device)

    def on_train_start(self) -> None:
        if self.rl_step >= self.cfg.trainer.max_steps:  # resumed a finished run: nothing to do
            self.trainer.should_stop = True
        if self.trainer.is_global_zero:
            from .evaluation import SampleLog
            from .evaluation import EvalLog

            # Evaluations after the checkpoint being resumed belong to lost work (a fresh run: all of them).
            EvalLog(self._eval_path()).keep_until(self.rl_step if self.rl_step > 0 else None)
            SampleLog(self._samples_path()).keep_until(self.rl_step if self.rl_step > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Clock(), batch_size=None)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        if o.optimizer == "sgd":
            opt = torch.optim.SGD(self.policy.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:  # foreach: one multi-tensor kernel per update instead of one per parameter (the same arithmetic:
            # bitwise the same weights as the per-parameter loop, tests/test_train_speed.py); CUDA uses it by default.
            opt = torch.optim.AdamW(self.policy.parameters(), lr=o.lr, betas=tuple(o.betas),
                                    weight_decay=o.weight_decay, foreach=True)
        warmup = o.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bandpo"] = {
            "rl_step": self.rl_step,
            "config": self.cfg.to_dict(),
            "ref_state": self.ref_policy.state_dict() if (self.store_ref and self.ref_policy is not None) else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["bandpo"]
        self.rl_step = int(state["rl_step"])
        if state.get("ref_state") is not None:
            if self.ref_policy is None:
                raise ValueError("the checkpoint holds reference weights but this run has no reference policy")
            self.ref_policy.load_state_dict(state["ref_state"])

    # ------------------------------------------------------------------------------------------------------
    # The RL step
    # ------------------------------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        cfg, step = self.cfg, self.rl_step
        world, rank = self.trainer.world_size, self.global_rank
        if step == 0 and self.eval_sets and cfg.eval.before_training:
            self.evaluate_now(0)
        seed = _step_seed(cfg.trainer.seed, rank, step)
        self.generator.manual_seed(seed)
        _seed_global_rng(seed, self.device)  # only dropout, if the model has any, draws from the global RNG

        probes = self.task.probes(self.policy, self.tokenizer) if self.task.probes is not None else {}
        t0 = time.perf_counter()
        rows = self._rows(step, rank, world)
        ro = self._rollout(rows)
        t1 = time.perf_counter()
        stats = self._update(ro, step)
        t2 = time.perf_counter()

        row = self._reduce_metrics(ro, stats, rows)
        row.update({k: float(v) for k, v in probes.items()})
        n_tokens = row.pop("_completion_tokens")
        row.update({
            "optim_steps": float(self.trainer.global_step),
            "lr": float(self.lr_schedulers().get_last_lr()[0]),
            "time/rollout_s": t1 - t0,
            "time/update_s": t2 - t1,
            "time/step_s": t2 - t0,
            "perf/tokens_per_s": n_tokens / max(t2 - t0, 1e-9),
        })
        if self.logger is not None:
            self.logger.log_metrics(row, step=step)
            self.logger.save()
        self.last_row = row  # what the progress bar shows (bandpo.training.console), not Lightning's logged metrics
        self.rl_step += 1
        e = cfg.eval
        if self.eval_sets and ((e.every and self.rl_step % e.every == 0)
                               or (e.at_end and self.rl_step == cfg.trainer.max_steps)):
            self.evaluate_now(self.rl_step)
        if self.rl_step >= cfg.trainer.max_steps:
            self.trainer.should_stop = True

    def _eval_path(self) -> Path:
        return Path(self.trainer.default_root_dir) / "eval.csv"

    def _samples_path(self) -> Path:
        return Path(self.trainer.default_root_dir) / "eval_samples"

    def evaluate_now(self, step: int) -> dict:
        """Evaluate the current policy on ``eval_sets`` (every rank its share; the numbers are reduced exactly),
        write the per-sample file ``eval_samples/step_<step>.jsonl.gz`` (with ``eval.save_samples``) and then append a
        row ``step`` to ``eval.csv`` (rank 0), and return the metrics (``eval/<set>/<metric>``).

        Under FSDP every forward pass is a collective, so the ranks sample in lock-step (the same sampler calls and
        decoding steps; ``bandpo.training.evaluation.sample_problems``). Evaluation runs inside ``training_step``,
        where Lightning's FSDP root unit is gathered."""
        from .evaluation import SampleLog, evaluate

        e, world = self.cfg.eval, self.trainer.world_size
        strategy = self.trainer.strategy
        lockstep = None
        if world > 1 and self.cfg.trainer.strategy == "fsdp":
            lockstep = lambda flag: bool(strategy.reduce_boolean_decision(flag, all=True))  # noqa: E731
        t0 = time.perf_counter()
        result = evaluate(
            self.policy, self.tokenizer, self.eval_sets, n=e.n, ks=e.k, seed=e.seed, temperature=e.temperature,
            top_p=e.top_p, max_new_tokens=e.max_new_tokens or self.cfg.rollout.max_new_tokens,
            sampler=self.cfg.rollout.sampler, micro_batch_size=e.micro_batch_size, batch_size=e.batch_size,
            rank=self.global_rank, world=world,
            all_reduce_sum=(lambda t: strategy.reduce(t, reduce_op="sum")) if world > 1 else None,
            lockstep=lockstep, all_gather=_all_gather_lists if world > 1 else None, return_samples=e.save_samples,
        )
        out, samples = result if e.save_samples else (result, None)
        out["eval/time_s"] = time.perf_counter() - t0
        self.last_eval = out
        if self.trainer.is_global_zero:
            from .evaluation import EvalLog

            if samples is not None:  # first: an eval.csv row always has its samples file
                SampleLog(self._samples_path()).write(step, samples)
            EvalLog(self._eval_path()).append(step, out)
        return out

    def _rows(self, step: int, rank: int, world: int) -> list:
        """This process's share of the prompt rows of RL step ``step``."""
        rows = self.task.rows(step, self.cfg.rollout.prompts_per_step)
        per_rank = len(rows) // world
        return rows[rank * per_rank:(rank + 1) * per_rank]

    def _rollout(self, rows: list) -> Rollout:
        cfg = self.cfg
        r = cfg.rollout
        return rollout(
            self.policy, self.tokenizer, rows, group_size=r.group_size, max_new_tokens=r.max_new_tokens,
            reward_funcs=cfg.task.reward_funcs or self.task.reward_funcs, reward_weights=cfg.task.reward_weights,
            correct_fn=self.task.correct, generator=self.generator, temperature=r.temperature, top_p=r.top_p,
            sampler=r.sampler, ref_model=self.ref_policy, scale_adv_by_std=cfg.objective.scale_adv_by_std,
            micro_batch_size=r.micro_batch_size, chat_template=cfg.task.chat_template, lean=cfg.model.lean_forward,
        )

    def _update(self, ro: Rollout, step: int) -> list:
        """``ppo_epochs`` passes of mini-batch optimiser steps over the rollout; returns per-step metrics."""
        cfg = self.cfg
        G = cfg.rollout.group_size
        n_groups = ro.adv.shape[0] // G
        groups_per_mb = cfg.optim.prompts_per_minibatch // self.trainer.world_size
        stats = []
        for _ in range(cfg.optim.ppo_epochs):
            if cfg.optim.shuffle:
                order = torch.randperm(n_groups, generator=self.generator, device=self.generator.device).cpu()
            else:
                order = torch.arange(n_groups)
            for k in range(0, n_groups, groups_per_mb):
                groups = order[k:k + groups_per_mb]
                idx = (groups[:, None] * G + torch.arange(G)).reshape(-1).to(ro.adv.device)
                stats.append(self._optimizer_step(ro, idx, step, len(stats)))
        return stats

    def _optimizer_step(self, ro: Rollout, idx: Tensor, step: int, k: int) -> dict:
        """One mini-batch: accumulate micro-batch gradients, check finiteness, clip, step."""
        cfg = self.cfg
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        den = aggregation_denominator(ro.mask[idx], cfg.loss.agg)
        world = self.trainer.world_size
        if world > 1:
            # DDP/FSDP average the ranks' gradients. Ranks hold different numbers of valid tokens, so each
            # divides by the mean denominator over ranks: the average is then the aggregate of the whole
            # mini-batch over all ranks (not a mean of per-rank means).
            den = self.trainer.strategy.reduce(den, reduce_op="sum") / world
        micro = cfg.optim.micro_batch_size or len(idx)
        total = torch.zeros((), device=ro.adv.device)
        parts: list = []
        for j in idx.split(micro):
            logp, _ = completion_logp(self.policy, ro.prompt_ids[j], ro.prompt_mask[j], ro.completion_ids[j],
                                      ro.mask[j], temperature=cfg.rollout.temperature, lean=cfg.model.lean_forward)
            mask = ro.mask[j]
            adv = ro.adv[j].reshape(-1, 1).expand_as(logp)
            loss, m = policy_loss(logp, ro.old_logp[j], adv, mask, config=cfg.loss, step=step, denominator=den,
                                  validate=False)
            m["loss/policy"] = loss.detach()
            m.update(_rare_ratio_metrics(logp.detach(), ro.old_logp[j], adv, mask))
            if ro.ref_logp is not None:
                kl = aggregate(k3_kl(logp, ro.ref_logp[j]), mask, cfg.loss.agg, denominator=den)
                loss = loss + cfg.objective.kl_coef * kl
                m["kl_ref"] = kl.detach()
            self.manual_backward(loss)
            total = total + loss.detach()
            parts.append((m, logp.detach(), j))
        grad_norm = self._grad_norm()
        finite = bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))
        bad = self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if bad:
            self._report_nonfinite(ro, parts, total, grad_norm, step, k)
            opt.zero_grad()
        else:
            opt.step()
            sched.step()
        # Micro-batch parts of the policy loss and KL add up to the mini-batch value (whole-batch denominator).
        metrics = reduce_metrics([m for m, _, _ in parts], {"loss/policy": "sum", "kl_ref": "sum", **_RARE_REDUCTIONS},
                                 distributed=False)
        metrics["loss/total"] = total
        metrics["grad_norm"] = grad_norm.detach()
        return {"parts": parts, "metrics": metrics, "skipped": float(bad)}

    def _grad_norm(self) -> Tensor:
        clip = self.cfg.optim.grad_clip or math.inf
        model = self.trainer.strategy.model
        if hasattr(model, "clip_grad_norm_"):  # FSDP: the norm over all shards
            return model.clip_grad_norm_(clip)
        params = [p for p in self.policy.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, clip)

    def _report_nonfinite(self, ro: Rollout, parts: list, total: Tensor, grad_norm: Tensor, step: int,
                          k: int) -> None:
        idx = torch.cat([j for _, _, j in parts])
        logp = torch.cat([lp for _, lp, _ in parts])
        mask = ro.mask[idx].bool()
        old = ro.old_logp[idx]
        bad_grads = [n for n, p in self.policy.named_parameters() if p.grad is not None
                     and not bool(torch.isfinite(p.grad).all())]

        def rng(x: Tensor) -> str:
            x = x[mask]
            n_bad = int((~torch.isfinite(x)).sum())
            x = x[torch.isfinite(x)]
            return (f"[{float(x.min()):.4g}, {float(x.max()):.4g}]" if x.numel() else "[]") + f" ({n_bad} non-finite)"

        msg = (f"non-finite {'loss' if not torch.isfinite(total) else 'gradient norm'} at RL step {step}, "
               f"optimiser step {k} of the step (global optimiser step {self.trainer.global_step}) on rank "
               f"{self.global_rank}: loss = {float(total)}, grad_norm = {float(grad_norm)}; valid tokens "
               f"{int(mask.sum())}; logp range {rng(logp)}; old_logp range {rng(old)}; log-ratio range "
               f"{rng(logp - old)}; adv range {rng(ro.adv[idx].reshape(-1, 1).expand_as(logp))}; "
               f"parameters with non-finite gradients: {len(bad_grads)} {bad_grads[:5]}")
        if self.cfg.trainer.nonfinite == "stop":
            raise NonFiniteError(msg + ". Stopping (trainer.nonfinite = 'stop').")
        print(f"[bandpo] WARNING: {msg}. Skipping this optimiser step (trainer.nonfinite = 'skip').", flush=True)

    # ------------------------------------------------------------------------------------------------------
    # Metrics
    # ------------------------------------------------------------------------------------------------------

    def _rollout_metrics(self, ro: Rollout, skipped: float, rows: list) -> "tuple[dict, dict]":
        """This process's rollout statistics as one metrics part, and how each key reduces over processes
        (with the task's ``rollout_stats`` of the decoded completions, when it has them)."""
        G = self.cfg.rollout.group_size
        n = float(ro.rewards.numel())
        length = ro.mask.sum(1).float()
        hit_max = (ro.mask[:, -1] == 1) & (ro.completion_ids[:, -1] != self.tokenizer.eos_token_id)
        hit_max = hit_max & (ro.mask.shape[1] == self.cfg.rollout.max_new_tokens)
        zero_std = (ro.rewards.view(-1, G).std(1) == 0).float()
        tokens = ro.mask.sum().float()
        part = {
            "reward/mean": ro.rewards.float().mean(),
            "_reward_sq": (ro.rewards.float() ** 2).mean(),
            "accuracy": ro.correct.float().mean(),
            "completion_length/mean": length.mean(),
            "completion_length/truncated_frac": hit_max.float().mean(),
            "entropy": (ro.entropy * ro.mask).sum() / tokens.clamp(min=1),
            "frac_reward_zero_std": zero_std.mean(),
            "nonfinite/skipped": skipped,
            "_completion_tokens": tokens,
            "_n": n,
            "_tokens": tokens,
            "_groups": float(zero_std.numel()),
        }
        for name, scores in ro.reward_parts.items():
            part[f"reward/{name}"] = scores.float().mean()
        per_sample = [k for k in part if k.startswith("reward/")] + [
            "_reward_sq", "accuracy", "completion_length/mean", "completion_length/truncated_frac"]
        reductions = {k: ("mean", "_n") for k in per_sample}
        if self.task.rollout_stats is not None:
            columns = {k: [row[k] for row in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
            task_stats = self.task.rollout_stats(ro.completions, columns)
            part.update({k: float(v) for k, v in task_stats.items()})
            reductions.update({k: self.task.rollout_stat_reductions.get(k, ("mean", "_n")) for k in task_stats})
        reductions.update({"entropy": ("mean", "_tokens"), "frac_reward_zero_std": ("mean", "_groups"),
                           "_completion_tokens": "sum", "_n": "sum", "_tokens": "sum", "_groups": "sum"})
        return part, reductions

    def _reduce_metrics(self, ro: Rollout, stats: list, rows: list) -> dict:
        """One row of floats: rollout statistics and the optimiser steps' loss metrics, reduced over processes.

        ``bandpo.losses.reduce_metrics`` does the weighting (one all-reduce): loss metrics are token-weighted
        over micro-batches, optimiser steps and processes (bucket metrics by the bucket's token count);
        ``loss/*``, ``kl_ref`` and ``grad_norm`` are means over optimiser steps; ``num_tokens`` and the bucket
        token counts are totals over the RL step; ``ratio/min``/``ratio/max`` are the extremes.
        """
        rollout_part, reductions = self._rollout_metrics(ro, float(sum(s["skipped"] for s in stats)), rows)
        reductions.update(_RARE_REDUCTIONS)
        reduced = reduce_metrics([rollout_part] + [s["metrics"] for s in stats], reductions)
        keys = list(reduced)
        values = torch.stack([reduced[k] for k in keys]).tolist()  # the one host sync of the row
        row = dict(zip(keys, values))
        for k in ("ratio/rare_pos_max", "ratio/rare_neg_min"):  # no such token in the step: NaN
            if k in row and (not math.isfinite(row[k]) or row[k] == 0.0):
                row[k] = math.nan
        mean_sq = row.pop("_reward_sq")
        for k in ("_n", "_tokens", "_groups"):
            row.pop(k)
        row["reward/std"] = math.sqrt(max(mean_sq - row["reward/mean"] ** 2, 0.0))
        return row
