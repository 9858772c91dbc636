"""A rare-arm bandit: does a probability-aware bound let a softmax policy find a good arm it rarely samples?

Setting (one state, K arms, pure torch, CPU seconds):

* policy π = softmax(θ), θ ∈ R^K; initially uniform over the K - 1 "common" arms and ``rare_prob`` on the
  rare arm;
* Bernoulli (0/1, verifier-like) rewards: the rare arm succeeds with ``rare_success``, the common arms with
  probabilities evenly spaced in ``common_success``, so the best arm is the one the policy rarely samples;
* GRPO-style training: each step samples ``n_groups`` groups of ``group_size`` arms from π_old, takes the
  group-normalised advantage A = (R - mean_group R) / (std_group R + 1e-6) (unbiased std), and makes
  ``minibatches`` Adam steps on disjoint mini-batches of that rollout (the paper's 4 optimiser steps per
  rollout batch): from the second mini-batch on, π ≠ π_old, so the ratio clip binds;
* each method's loss is :func:`bandpo.policy_loss` with ``method=<id>`` (ids of the method table
  ``bandpo.losses.METHODS``, with their own settings), all with dual-clip c = 10.

"Discovery" is the first step after which π(rare) >= ``discover_at``. Seeds run side by side (the seed
axis is the loss's B axis, with ``seq-mean-token-mean`` times S, so each seed's gradient is its own). Every
seed draws its uniforms from its own generator once: all methods see the same random numbers (common random
numbers), and a seed's run does not depend on which other seeds run with it.

``python -m bandpo.experiments.bandit`` prints the summary table; :func:`run_bandit` returns per-step histories for
figures. Every method id runs here, the surrogates of ``bandpo.losses.surrogates`` too (GSPO, CISPO, SAPO, GPG,
Clip-Cov, KL-Cov, GMPO, VESPO; DRO needs ``--dro-beta``); for the sequence-level ones (GSPO, GMPO, VESPO) a
"sequence" is one seed's mini-batch, as the seed axis is the loss's B axis: GMPO, whose advantage is the sequence's
mean, then sees the mini-batch mean of group-normalised advantages, 0, and does not learn here (it runs, nothing
more; compare GMPO on the testbed). ``--baseline ID`` adds the paired
per-seed differences of every other method against that one, with 95 % bootstrap intervals
(:func:`seed_rows`, ``bandpo.experiments.stats``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor

from ..cli import ArgumentParser, float_in, int_at_least
from ..losses import BUCKET_NAMES, get_method, list_methods, policy_loss, reduce_metrics
from .stats import compare

__all__ = [
    "BanditConfig", "BanditHistory", "METHODS", "grpo_advantages", "run_bandit", "run_all", "summarize", "format_table",
    "seed_rows", "paired_table", "main",
]

SEED_METRICS = ("discovered", "discovery_step", "p_rare_end", "entropy_end", "reward_end")
"""Per-seed statistics of :func:`seed_rows` (``discovery_step``: nan when never, so a paired difference uses only
the seeds both methods discovered)."""

METHODS: tuple = ("clip", "clip_higher", "dcpo", "band_kl", "band_tv", "band_chi2", "no_clip")
"""The methods compared by default: ids of the method table ``bandpo.losses.METHODS``, each with its own
settings (the paper's: GRPO 0.2/0.2, Clip-Higher 0.2/0.28, DCPO 0.16/0.2 with r_max 10, BandPO δ = 0.05 with
cap 10). ``no_clip`` (bounds [0, 1e6]) is a reference, not a method: the off-policy importance-weighted policy
gradient with dual-clip only."""


@dataclass(frozen=True)
class BanditConfig:
    """The bandit and its training loop."""

    n_arms: int = 10
    """K: the rare arm plus K - 1 common arms."""
    rare_prob: float = 0.015
    """Initial π(rare arm); the common arms share the rest equally."""
    rare_success: float = 0.9
    """Success probability of the rare arm (the best arm)."""
    common_success: "tuple[float, float]" = (0.1, 0.6)
    """Success probabilities of the common arms, evenly spaced over this range (best common arm: the max)."""
    group_size: int = 16
    """G: samples per group (the paper's 16 rollouts per prompt)."""
    n_groups: int = 4
    """Groups per rollout batch."""
    minibatches: int = 4
    """Disjoint mini-batches (of whole groups) per rollout batch; one Adam step each."""
    epochs: int = 4
    """Passes over the rollout's mini-batches: minibatches x epochs Adam steps per rollout batch."""
    optimizer: str = "adam"
    """``"adam"`` (torch.optim.Adam, default betas) or ``"sgd"`` (plain gradient descent) on the logits θ.
    Adam normalises each logit's step, so even the rare arm's tiny coupling gradient moves it by ~lr per step;
    SGD moves it in proportion to its gradient (closer to a token logit that shares parameters)."""
    lr: float = 0.1
    """Learning rate of the optimiser."""
    steps: int = 100
    """Rollout batches (training steps)."""
    seeds: "tuple[int, ...]" = tuple(range(32))
    """One independent run per seed (its own generator)."""
    dual_clip: Optional[float] = 10.0
    """Dual-clip constant for every method (the paper's 10)."""
    discover_at: float = 0.5
    """π(rare) threshold that counts as having discovered the rare arm."""

    def __post_init__(self) -> None:
        if self.n_arms < 2:
            raise ValueError(f"n_arms must be >= 2, got {self.n_arms}")
        if not 0 < self.rare_prob < 1:
            raise ValueError(f"rare_prob must be in (0, 1), got {self.rare_prob}")
        lo, hi = self.common_success
        if not (0 <= lo <= hi <= 1 and 0 <= self.rare_success <= 1):
            raise ValueError("success probabilities must lie in [0, 1] with common_success = (low, high), low <= high")
        for name, low in (("group_size", 2), ("n_groups", 1), ("minibatches", 1), ("epochs", 1), ("steps", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.n_groups % self.minibatches:
            raise ValueError(f"n_groups ({self.n_groups}) must be a multiple of minibatches ({self.minibatches})")
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 < self.discover_at < 1:
            raise ValueError(f"discover_at must be in (0, 1), got {self.discover_at}")

    @property
    def success(self) -> Tensor:
        """(K,) success probability per arm; arm 0 is the rare arm."""
        lo, hi = self.common_success
        common = torch.linspace(lo, hi, self.n_arms - 1, dtype=torch.float64)
        return torch.cat([torch.tensor([self.rare_success], dtype=torch.float64), common])

    def initial_logits(self) -> Tensor:
        """(K,) θ_0 with π_0(rare) = rare_prob and the common arms equal."""
        theta = torch.zeros(self.n_arms, dtype=torch.float64)
        theta[0] = math.log(self.rare_prob * (self.n_arms - 1) / (1 - self.rare_prob))
        return theta


@dataclass
class BanditHistory:
    """Per-step records of one method over all seeds (S seeds, N steps)."""

    method: str
    p_rare: Tensor
    """(N + 1, S) π(rare) before step 1 and after every step."""
    entropy: Tensor
    """(N + 1, S) entropy of π in nats."""
    reward: Tensor
    """(N, S) mean reward of each step's rollout."""
    metrics: "dict[str, Tensor]" = field(default_factory=dict)
    """policy_loss metric key -> (N,) per step: token-weighted over the step's mini-batches, pooled over seeds
    (``num_tokens`` and ``bucket/<b>/tokens`` are summed)."""
    seconds: float = 0.0
    """Wall time of the run."""

    def steps_to_discover(self, threshold: float) -> Tensor:
        """(S,) first step after which π(rare) >= threshold; ``inf`` where never (within the run)."""
        hit = self.p_rare[1:] >= threshold
        first = torch.argmax(hit.to(torch.int64), dim=0).to(torch.float64) + 1
        return torch.where(hit.any(0), first, torch.full_like(first, math.inf))


def _uniforms(cfg: BanditConfig) -> "tuple[Tensor, Tensor]":
    """(S, steps, N) uniforms for sampling arms and for rewards, one generator per seed."""
    n = cfg.n_groups * cfg.group_size
    arms, rewards = [], []
    for seed in cfg.seeds:
        g = torch.Generator().manual_seed(int(seed))
        arms.append(torch.rand(cfg.steps, n, generator=g, dtype=torch.float64))
        rewards.append(torch.rand(cfg.steps, n, generator=g, dtype=torch.float64))
    return torch.stack(arms), torch.stack(rewards)


def grpo_advantages(reward: Tensor, group_size: int) -> Tensor:
    """GRPO's group-normalised advantage A = (R - mean_g R) / (std_g R + 1e-6), unbiased std over each group.

    Args:
        reward: (S, n) rewards, n a multiple of ``group_size``; consecutive blocks of ``group_size`` form a group.

    Returns:
        (S, n) advantages; 0 for a group whose rewards are all equal.
    """
    S, n = reward.shape
    grouped = reward.view(S, n // group_size, group_size)
    adv = (grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-6)
    return adv.view(S, n)


def _entropy(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def run_bandit(method: str, cfg: BanditConfig = BanditConfig(), loss_kwargs: Optional[dict] = None) -> BanditHistory:
    """Train one method on every seed of ``cfg``; returns the per-step history.

    Args:
        method: a method id (``bandpo.list_methods()``), or any label when ``loss_kwargs`` is given.
        cfg: the bandit and training settings.
        loss_kwargs: :func:`bandpo.policy_loss` keyword arguments replacing ``method=<method>``.
    """
    if loss_kwargs is None:
        get_method(method)  # ValueError listing the known ids
    kwargs = dict(dict(method=method) if loss_kwargs is None else loss_kwargs)
    kwargs.setdefault("dual_clip", cfg.dual_clip)
    # The tensors are tiny (S x K): intra-op threads only add overhead (milliseconds per op on a busy
    # machine), so the run uses one thread and restores the caller's setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(method, cfg, kwargs)
    finally:
        torch.set_num_threads(threads)


def _run(method: str, cfg: BanditConfig, kwargs: dict) -> BanditHistory:
    start = time.perf_counter()
    S, K, G = len(cfg.seeds), cfg.n_arms, cfg.group_size
    n = cfg.n_groups * G
    per_mb = n // cfg.minibatches
    u_arm, u_reward = _uniforms(cfg)
    success = cfg.success
    theta = cfg.initial_logits().repeat(S, 1).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr) if cfg.optimizer == "adam" else torch.optim.SGD([theta], lr=cfg.lr)

    p_rare = torch.empty(cfg.steps + 1, S, dtype=torch.float64)
    entropy = torch.empty(cfg.steps + 1, S, dtype=torch.float64)
    reward_hist = torch.empty(cfg.steps, S, dtype=torch.float64)
    history: dict[str, Tensor] = {}
    with torch.no_grad():
        p_rare[0] = torch.softmax(theta, -1)[:, 0]
        entropy[0] = _entropy(theta)
    for step in range(cfg.steps):
        with torch.no_grad():
            old_logp_all = torch.log_softmax(theta, -1)  # (S, K)
            cdf = torch.cumsum(old_logp_all.exp(), -1)
            arms = torch.searchsorted(cdf, u_arm[:, step].contiguous()).clamp(max=K - 1)  # (S, n)
            reward = (u_reward[:, step] < success[arms]).to(torch.float64)
            adv = grpo_advantages(reward, G)
            old_logp = torch.gather(old_logp_all, 1, arms)
            reward_hist[step] = reward.mean(-1)
        parts: list = []
        for mb in [m for _ in range(cfg.epochs) for m in range(cfg.minibatches)]:
            sl = slice(mb * per_mb, (mb + 1) * per_mb)
            logp = torch.gather(torch.log_softmax(theta, -1), 1, arms[:, sl])
            loss, metrics = policy_loss(
                logp, old_logp[:, sl], adv[:, sl], torch.ones_like(logp, dtype=torch.bool),
                agg="seq-mean-token-mean", validate=False, **kwargs,
            )
            opt.zero_grad(set_to_none=True)
            (loss * S).backward()  # Σ over seeds of each seed's own token mean
            opt.step()
            parts.append(metrics)
        for key, value in reduce_metrics(parts, distributed=False).items():
            history.setdefault(key, torch.empty(cfg.steps, dtype=torch.float64))[step] = value
        with torch.no_grad():
            p_rare[step + 1] = torch.softmax(theta, -1)[:, 0]
            entropy[step + 1] = _entropy(theta)
    return BanditHistory(method, p_rare, entropy, reward_hist, history, time.perf_counter() - start)


def run_all(cfg: BanditConfig = BanditConfig(), methods: "Optional[list[str]]" = None) -> "dict[str, BanditHistory]":
    """:func:`run_bandit` for each method (all of :data:`METHODS` by default)."""
    return {m: run_bandit(m, cfg) for m in (methods or list(METHODS))}


def _pooled_bucket(h: BanditHistory, bucket: str, stat: str) -> float:
    """A bucket metric over the whole run, weighted by the bucket's token count per step."""
    w = h.metrics[f"bucket/{bucket}/tokens"]
    return float((h.metrics[f"bucket/{bucket}/{stat}"] * w).sum() / w.sum().clamp(min=1))


def summarize(h: BanditHistory, cfg: BanditConfig) -> "dict[str, float]":
    """One row of the summary table: discovery, entropy and clip fractions (percent) by bucket."""
    t = h.steps_to_discover(cfg.discover_at)
    found = torch.isfinite(t)
    sorted_t = torch.sort(t).values  # inf (not found) last: the median is finite iff > half were found
    median = float(sorted_t[(len(t) - 1) // 2]) if len(t) % 2 else float((sorted_t[len(t) // 2 - 1] + sorted_t[len(t) // 2]) / 2)
    n_tok = h.metrics["num_tokens"]
    low = float((h.metrics["clip_ratio/low_mean"] * n_tok).sum() / n_tok.sum())
    row = {
        "found": float(found.to(torch.float64).mean()),
        "median_steps": median,
        "p_rare_end": float(h.p_rare[-1].mean()),
        "entropy_0": float(h.entropy[0].mean()),
        "entropy_quarter": float(h.entropy[len(h.entropy) // 4].mean()),
        "entropy_end": float(h.entropy[-1].mean()),
        "reward_end": float(h.reward[-max(1, len(h.reward) // 10):].mean()),
        "clip_low_all": 100 * low,
        "seconds": h.seconds,
    }
    for b in BUCKET_NAMES:
        row[f"clip_high_{b}"] = 100 * _pooled_bucket(h, b, "clip_high_mean")
        row[f"tokens_{b}"] = float(h.metrics[f"bucket/{b}/tokens"].sum())
    return row


def seed_rows(h: BanditHistory, cfg: BanditConfig, setting: str = "default") -> "list[dict]":
    """One row per seed (keys ``method``, ``setting``, ``seed`` and :data:`SEED_METRICS`), for the paired
    statistics of ``bandpo.experiments.stats`` (seeds share their random numbers across methods: a matched pair)."""
    t = h.steps_to_discover(cfg.discover_at)
    tail = max(1, len(h.reward) // 10)
    return [
        {"method": h.method, "setting": setting, "seed": int(seed), "discovered": float(math.isfinite(float(t[i]))),
         "discovery_step": float(t[i]) if math.isfinite(float(t[i])) else math.nan,
         "p_rare_end": float(h.p_rare[-1, i]), "entropy_end": float(h.entropy[-1, i]),
         "reward_end": float(h.reward[-tail:, i].mean())}
        for i, seed in enumerate(cfg.seeds)
    ]


def paired_table(rows: "list[dict]", baseline: str, metrics: "tuple[str, ...]" = SEED_METRICS) -> str:
    """A Markdown table of the per-seed paired differences (method - ``baseline``) with 95 % bootstrap intervals."""
    others = list(dict.fromkeys(r["method"] for r in rows if r["method"] != baseline))
    out = compare(rows, metrics, [{"method": m, "setting": "default"} for m in others], {"method": baseline, "setting": "default"})
    lines = [f"| method - {baseline} | metric | n | mean difference | 95 % interval | method mean | {baseline} mean |",
             "|---|---|---|---|---|---|---|"]
    for c in out:
        lines.append(f"| {c['method']} | {c['metric']} | {c['n']} | {c['diff']:+.4g} | [{c['low']:+.4g}, {c['high']:+.4g}] "
                     f"| {c['candidate_mean']:.4g} | {c['baseline_mean']:.4g} |")
    return "\n".join(lines)


def format_table(rows: "dict[str, dict[str, float]]", cfg: BanditConfig) -> str:
    """A Markdown table of :func:`summarize` rows."""
    buckets = " | ".join(f"high-clip % {b}" for b in BUCKET_NAMES)
    head = (
        f"| method | found (of {len(cfg.seeds)}) | median steps to π(rare) >= {cfg.discover_at} | mean π(rare) at end "
        f"| entropy at step {cfg.steps // 4} | entropy at end | reward (last 10%) | {buckets} | low-clip % all |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        med = "never" if math.isinf(r["median_steps"]) else f"{r['median_steps']:.0f}"
        highs = " | ".join(f"{r[f'clip_high_{b}']:.2f}" for b in BUCKET_NAMES)
        lines.append(
            f"| {name} | {round(r['found'] * len(cfg.seeds))} | {med} | {r['p_rare_end']:.3f} | {r['entropy_quarter']:.3f} "
            f"| {r['entropy_end']:.3f} | {r['reward_end']:.3f} | {highs} | {r['clip_low_all']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: "Optional[list[str]]" = None) -> str:
    """``python -m bandpo.experiments.bandit [--steps N] [--seeds S] [--lr LR] [--optimizer adam|sgd] [--epochs E] ...``."""
    parser = ArgumentParser(prog="python -m bandpo.experiments.bandit", description=__doc__.split("\n")[0])
    d = BanditConfig()
    parser.add_argument("--steps", type=int_at_least(1), default=d.steps, help="rollout batches per run")
    parser.add_argument("--seeds", type=int_at_least(1), default=len(d.seeds), help="number of seeds (0..S-1)")
    parser.add_argument("--lr", type=float_in(0, low_open=True), default=d.lr, help="Adam learning rate")
    parser.add_argument("--rare-prob", type=float_in(0, 1, low_open=True, high_open=True), default=d.rare_prob,
                        help="initial π(rare arm)")
    parser.add_argument("--minibatches", type=int_at_least(1), default=d.minibatches,
                        help=f"mini-batches per rollout (divides the {d.n_groups} groups)")
    parser.add_argument("--epochs", type=int_at_least(1), default=d.epochs,
                        help="passes over the mini-batches per rollout")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer, help="optimiser on the logits")
    parser.add_argument("--methods", type=str, default=",".join(METHODS), help="comma-separated method ids")
    parser.add_argument("--baseline", type=str, default=None, help="a method id of --methods: add the paired differences against it")
    parser.add_argument("--dro-beta", type=float, default=None, help="dro_beta of the 'dro' method (it has no default)")
    args = parser.parse_args(argv)
    try:
        cfg = replace(
            d, steps=args.steps, seeds=tuple(range(args.seeds)), lr=args.lr, rare_prob=args.rare_prob,
            minibatches=args.minibatches, epochs=args.epochs, optimizer=args.optimizer,
        )
    except ValueError as e:
        parser.error(e)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in list_methods()]
    if unknown or not methods:
        parser.error(f"--methods: unknown methods {unknown}; known: {', '.join(list_methods())}" if unknown else
                     f"--methods names no method; give comma-separated ids of {', '.join(list_methods())}")
    if args.baseline is not None and args.baseline not in methods:
        parser.error(f"--baseline {args.baseline!r} must be one of --methods {methods}")
    if "dro" in methods and args.dro_beta is None:
        parser.error("method 'dro' needs --dro-beta (verl, where it comes from, has no default)")
    histories = {m: run_bandit(m, cfg, dict(method=m, dro_beta=args.dro_beta) if m == "dro" else None) for m in methods}
    rows = {m: summarize(h, cfg) for m, h in histories.items()}
    lo, hi = cfg.common_success
    text = (
        f"Rare-arm bandit: K = {cfg.n_arms} arms, π0(rare) = {cfg.rare_prob}, success rare {cfg.rare_success} vs common "
        f"{lo}..{hi}; {cfg.n_groups} groups x {cfg.group_size} samples per rollout, {cfg.minibatches} mini-batches x "
        f"{cfg.epochs} epochs = {cfg.minibatches * cfg.epochs} {cfg.optimizer} steps (lr {cfg.lr}) per rollout, "
        f"{cfg.steps} steps, {len(cfg.seeds)} seeds, dual-clip {cfg.dual_clip}.\n\n" + format_table(rows, cfg)
        + f"\n\n(total {sum(r['seconds'] for r in rows.values()):.1f} s)"
    )
    if args.baseline is not None:
        per_seed = [r for h in histories.values() for r in seed_rows(h, cfg)]
        text += "\n\nPaired per-seed differences (common random numbers per seed):\n\n" + paired_table(per_seed, args.baseline)
    print(text)
    return text


if __name__ == "__main__":
    main()
