"""The method table, ``bandpo.bounds``, bounds rules with their own settings, δ schedules, ``LossConfig``,
``bandpo.losses.surrogate`` and ``reduce_metrics``.

``bounds()`` is checked against what ``policy_loss`` actually clips to, read back through the loss itself: a token
with r far above every bound and A = +1 has loss -upper, one with r far below every bound and A = -1 has loss
max(r, lower) (= lower wherever lower > r).
"""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch
import yaml

import bandpo
from bandpo.losses import (
    DCPO,
    METRIC_KEYS,
    Band,
    Clip,
    Constant,
    Cosine,
    Linear,
    LossConfig,
    get_method,
    list_methods,
    policy_loss,
    reduce_metrics,
    surrogate,
)

P = [1e-9, 1e-5, 0.003, 0.01, 0.04, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0]
PROBE = 19.9  # |log r| of the probes: beyond every upper bound (<= e^20) and below every lower bound > 2e-9


def _clipped_to(old: torch.Tensor, **kw) -> "tuple[torch.Tensor, torch.Tensor]":
    """(lower, upper) read back from policy_loss, one token at a time."""
    lows, ups = [], []
    one = torch.ones(1, 1, dtype=torch.bool)
    for o in old.reshape(-1):
        o = o.reshape(1, 1)
        up, _ = policy_loss(o + PROBE, o, torch.ones_like(o), one, dual_clip=None, validate=False, **kw)
        lo, _ = policy_loss(o - PROBE, o, -torch.ones_like(o), one, dual_clip=None, validate=False, **kw)
        ups.append(-up)
        lows.append(lo)
    return torch.stack(lows).reshape(old.shape), torch.stack(ups).reshape(old.shape)


CLIP_METHODS = [m for m in list_methods() if get_method(m).surrogate == "clip"]
MASK_METHODS = [m for m in list_methods() if get_method(m).surrogate == "mask"]


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_bounds_is_what_policy_loss_clips_to(method):
    old = torch.log(torch.tensor([P], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, method)
    assert lower.dtype == upper.dtype == torch.float64 and lower.shape == old.shape
    got_lower, got_upper = _clipped_to(old, method=method)
    assert torch.equal(got_upper, upper)
    tiny = lower <= math.exp(-PROBE)  # there the probe's own ratio is the larger term
    assert torch.equal(got_lower[~tiny], lower[~tiny])
    assert (got_lower[tiny] <= 2 * math.exp(-PROBE)).all()
    cap = get_method(method).max_ratio
    assert (upper <= (cap if cap is not None else math.exp(20))).all()


@pytest.mark.parametrize("method", MASK_METHODS)
def test_bounds_is_what_mask_methods_mask_to(method):
    """A mask method keeps a token with its ratio a hair (1e-9, relative) inside a bound and drops one a hair beyond
    it, on the side its advantage pushes: the interval ``bounds()`` returns is the loss's trust region."""
    assert MASK_METHODS == ["dppo_kl", "dppo_tv"]
    old = torch.log(torch.tensor([P], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, method)
    one = torch.ones(1, 1, dtype=torch.bool)
    checked = 0
    for o, lo, up in zip(old.reshape(-1), lower.reshape(-1), upper.reshape(-1)):
        o = o.reshape(1, 1)
        for bound, sign in ((up, 1.0), (lo, -1.0)):
            if not (math.exp(-20) < bound < math.exp(20)) or (sign < 0 and bound == 0):
                continue  # the clamped ratio cannot leave the region on that side
            for factor, kept in ((1 + 1e-9, sign < 0), (1 - 1e-9, sign > 0)):
                logp = o + torch.log(bound * factor)
                if logp > 0:
                    continue
                logp = logp.clone().requires_grad_()
                loss, m = policy_loss(logp, o, torch.full_like(o, sign), one, method=method, validate=False)
                loss.backward()
                assert (logp.grad.abs().item() > 0) == kept, (method, float(o), sign, factor)
                assert m["clip_ratio/region_mean"].item() == (0.0 if kept else 1.0)
                checked += 1
    assert checked >= 25


@pytest.mark.parametrize("method, settings", [
    ("band_tv", dict(delta=0.1)), ("band_kl", dict(divergence="hellinger", max_ratio=3.0)),
    ("clip", dict(eps_high=0.28)), ("dcpo", dict(r_max=5.0, eps_low=0.2)), ("band_kl", dict(max_ratio=1e4)),
])
def test_bounds_with_settings_and_low_precision(method, settings):
    old = torch.log(torch.tensor([P], dtype=torch.float64))
    lower, upper = bandpo.bounds(old, method, **settings)
    got = _clipped_to(old, method=method, **settings)
    assert torch.equal(got[1], upper)
    # bf16 inputs: computed in float32, as the loss does
    old16 = old.to(torch.bfloat16)
    lo16, up16 = bandpo.bounds(old16, method, **settings)
    assert lo16.dtype == torch.float32
    assert torch.equal(up16, _clipped_to(old16.float(), method=method, **settings)[1])
    # a Method or a bare rule instance works as well
    m = get_method(method).with_settings(**settings)
    assert torch.equal(bandpo.bounds(old, m)[1], upper)


def test_the_table_holds_the_papers_settings():
    assert get_method("band_kl").bounds == Band("kl", 0.05) and get_method("band_kl").max_ratio == 10.0
    for d in ("tv", "chi2", "hellinger", "js", "reverse_kl", "neyman_chi2"):
        assert get_method(f"band_{d}").bounds == Band(d, 0.05) and get_method(f"band_{d}").max_ratio == 10.0
    assert get_method("clip").bounds == Clip(0.2, 0.2) and get_method("clip_higher").bounds == Clip(0.2, 0.28)
    assert get_method("dcpo").bounds == DCPO(0.16, 0.2, 10.0) and get_method("dcpo").max_ratio is None
    old = torch.log(torch.tensor([0.5, 1e-3], dtype=torch.float64))
    lo, up = bandpo.bounds(old, "no_clip")
    assert lo.tolist() == [0.0, 0.0] and up.tolist() == [1e6 + 1] * 2
    assert all(get_method(m).label and get_method(m).description for m in list_methods())
    # the defaults of policy_loss are LossConfig's
    logp, old, adv, mask = _batch(1)
    assert torch.equal(policy_loss(logp, old, adv, mask)[0], policy_loss(logp, old, adv, mask, config=LossConfig())[0])
    d = LossConfig()
    assert (d.method, d.dual_clip, d.agg) == ("band_kl", 10.0, "seq-mean-token-mean")


def test_rule_instance_as_method():
    old = torch.log(torch.tensor([[0.01, 0.2, 0.9]], dtype=torch.float64))
    lo, up = bandpo.bounds(old, Band("tv", 0.1))
    want = bandpo.band(old, 0.1, "tv")
    assert torch.equal(lo, want[0]) and torch.equal(up, want[1].clamp(max=math.exp(20)))
    assert torch.equal(bandpo.bounds(old, Band("tv", 0.1), max_ratio=2.0)[1], want[1].clamp(max=2.0))


@pytest.mark.parametrize("call, message", [
    (lambda old: bandpo.bounds(old, "clip", delta=0.1),
     r"^method 'clip' has no setting 'delta'; its settings: eps_low, eps_high, max_ratio$"),
    (lambda old: bandpo.bounds(old, "band_kl", eps_high=0.3),
     r"^method 'band_kl' has no setting 'eps_high'; its settings: divergence, delta, max_ratio$"),
    (lambda old: bandpo.bounds(old, "dcpo", delta=0.1), "its settings: eps_low, eps_high, r_max, max_ratio"),
    (lambda old: policy_loss(old, old, old, old < 1, method="clip", r_max=3), "method 'clip' has no setting 'r_max'"),
    (lambda old: bandpo.bounds(old, "ppo"), "unknown method 'ppo'; known methods: band_chi2"),
    (lambda old: bandpo.bounds(old, "dcpo", r_max=0.5), r"r_max must be a finite number >= 1"),
    (lambda old: bandpo.bounds(old, "band_kl", delta=-1.0), "delta must be a finite number > 0"),
    (lambda old: bandpo.bounds(old, "band_kl", max_ratio=0.5), "max_ratio must be None, a number >= 1"),
    (lambda old: bandpo.bounds(old, "band_kl", divergence="kl2"), "unknown divergence 'kl2'"),
    (lambda old: Clip(eps_low=1.5), r"eps_low must be a number in \[0, 1\]"),
    (lambda old: Band(delta="big"), "delta must be a finite number > 0, a Schedule or a callable"),
    (lambda old: LossConfig(method="clip", delta=0.1), "method 'clip' has no setting 'delta'"),
    (lambda old: LossConfig(delta_end=0.1), "delta_end and delta_steps need delta_schedule 'linear' or 'cosine'"),
    (lambda old: LossConfig(delta_schedule="linear", delta_end=0.1), "needs an end value and a number of steps"),
    (lambda old: LossConfig(method="clip", delta_schedule="linear", delta_end=0.1, delta_steps=5),
     "method 'clip' has no setting 'delta'"),
    (lambda old: LossConfig(dual_clip=1.0), "dual_clip must be None or a finite number > 1"),
    (lambda old: policy_loss(old, old, old, old < 1, config=LossConfig(), delta=0.1), "not both"),
])
def test_settings_errors_are_one_line(call, message):
    old = torch.log(torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match=message) as info:
        call(old)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------------


def test_schedule_values():
    lin = Linear(0.05, 0.15, 10)
    assert [lin(s) for s in (0, 5, 10, 11, 1000)] == pytest.approx([0.05, 0.10, 0.15, 0.15, 0.15], rel=1e-15)
    cos = Cosine(0.2, 0.0, 4)
    assert [cos(s) for s in (0, 2, 4, 9)] == pytest.approx([0.2, 0.1, 0.0, 0.0], abs=1e-15)
    assert cos(1) == pytest.approx(0.1 + 0.1 * math.cos(math.pi / 4), rel=1e-15)
    assert Constant(0.3)(0) == Constant(0.3)(99) == 0.3
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        lin(-1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        Linear(0.1, 0.2, 0)


def test_schedules_drive_the_band():
    old = torch.log(torch.tensor([[0.003, 0.1, 0.6]], dtype=torch.float64))
    sched = Linear(0.05, 0.15, 10)
    a = bandpo.bounds(old, "band_kl", delta=sched, step=5)
    b = bandpo.bounds(old, "band_kl", delta=sched(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = bandpo.bounds(old, "band_kl", delta=lambda step: 0.05 * (1 + step), step=1)  # any callable of the step
    assert torch.equal(c[1], bandpo.bounds(old, "band_kl", delta=0.1)[1])
    for call in (lambda: bandpo.bounds(old, "band_kl", delta=sched),
                 lambda: Band("kl", Cosine(0.1, 0.05, 3))(old),
                 lambda: policy_loss(*_batch(0), delta=Constant(0.05))):
        with pytest.raises(ValueError, match=r"^delta is a schedule .*: pass step= \(the training step\) to evaluate it$"):
            call()
    with pytest.raises(ValueError, match="delta must be a finite number > 0"):
        bandpo.bounds(old, "band_kl", delta=lambda step: -1.0, step=0)
    cfg = LossConfig(delta_schedule="cosine", delta=0.1, delta_end=0.05, delta_steps=4)
    assert cfg.method_spec().bounds.delta == Cosine(0.1, 0.05, 4)
    logp, old, adv, mask = _batch(3)
    got = policy_loss(logp, old, adv, mask, config=cfg, step=4)
    want = policy_loss(logp, old, adv, mask, method="band_kl", delta=0.05)
    assert torch.equal(got[0], want[0])


# ------------------------------------------------------------------------------------------------------
# LossConfig
# ------------------------------------------------------------------------------------------------------


def test_loss_config_round_trips_through_yaml():
    for cfg in (LossConfig(), LossConfig(method="dcpo", r_max=5.0, dual_clip=None, agg="token-mean"),
                LossConfig(method="band_tv", delta=0.1, delta_schedule="linear", delta_end=0.2, delta_steps=50)):
        again = LossConfig(**yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg))))
        assert again == cfg and again.method_spec() == cfg.method_spec()
    cfg = LossConfig(method="clip_higher", eps_low=0.1)
    assert cfg.method_spec().bounds == Clip(0.1, 0.28)  # None settings keep the method's own values
    assert cfg.policy_loss_kwargs()["method"] == cfg.method_spec()


# ------------------------------------------------------------------------------------------------------
# surrogate and reduce_metrics
# ------------------------------------------------------------------------------------------------------


def _batch(seed: int, B: int = 8, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 6
    logp = (old + 0.8 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = False
    return logp, old, adv, mask


@pytest.mark.parametrize("method", ["band_kl", "clip", "dcpo"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_surrogate_is_the_losss_per_token_term(method, dual_clip):
    logp, old, adv, _ = _batch(4)
    mask = torch.ones_like(logp, dtype=torch.bool)
    x = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(x, old, adv, mask, method=method, dual_clip=dual_clip, agg="seq-mean-token-sum-norm")
    y = logp.clone().requires_grad_(True)
    per_token = surrogate(torch.exp(y - old), adv, *bandpo.bounds(old, method), dual_clip=dual_clip)
    assert per_token.shape == logp.shape
    torch.testing.assert_close(per_token.sum() / logp.numel(), loss, rtol=1e-14, atol=1e-15)
    (gx,) = torch.autograd.grad(loss, x)
    (gy,) = torch.autograd.grad(per_token.sum() / logp.numel(), y)
    torch.testing.assert_close(gx, gy, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("method", ["band_kl", "clip_higher"])
def test_reduce_metrics_over_uneven_micro_batches_is_the_whole_batch(method):
    logp, old, adv, mask = _batch(5, B=9)
    kw = dict(method=method, dual_clip=3.0)
    _, whole = policy_loss(logp, old, adv, mask, **kw)
    cuts = [(0, 1), (1, 3), (3, 4), (4, 9)]  # rows 2..3 hold an empty sequence; (1, 3) is uneven
    parts = [policy_loss(logp[a:b], old[a:b], adv[a:b], mask[a:b], **kw)[1] for a, b in cuts]
    empty = policy_loss(logp[2:3], old[2:3], adv[2:3], mask[2:3], **kw)[1]
    assert empty["num_tokens"] == 0 and empty["ratio/min"] == 1
    for reduced in (reduce_metrics(parts + [empty]),  # flat
                    reduce_metrics([reduce_metrics(parts[:2]), reduce_metrics(parts[2:] + [empty])])):  # nested
        assert list(reduced) == list(METRIC_KEYS)
        for k in METRIC_KEYS:
            torch.testing.assert_close(reduced[k], whole[k].double(), rtol=1e-12, atol=1e-14, msg=k)
    # extra keys: a plain mean unless told otherwise; missing keys just skip the part
    out = reduce_metrics([{"x": 1.0, "y": 2.0}, {"x": 3.0}, {"x": 5.0, "y": 6.0}], {"y": "sum"})
    assert out["x"].item() == 3.0 and out["y"].item() == 8.0
    assert reduce_metrics([{"a": 4.0, "w": 1.0}, {"a": 1.0, "w": 3.0}], {"a": ("mean", "w")})["a"].item() == 7 / 4
    nothing = reduce_metrics([empty, empty])
    assert nothing["ratio/min"] == 1 and nothing["ratio/max"] == 1 and nothing["ratio/mean"] == 0


def _reduce_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        logp, old, adv, mask = _batch(5, B=9)
        rows = [slice(0, 2), slice(2, 5)] if rank == 0 else [slice(5, 9)]  # unequal shares, uneven parts
        parts = [policy_loss(logp[r], old[r], adv[r], mask[r], dual_clip=3.0)[1] for r in rows]
        reduced = reduce_metrics(parts)
        if rank == 0:
            torch.save(reduced, out)
    finally:
        dist.destroy_process_group()


def test_reduce_metrics_over_ranks_is_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "reduced.pt"
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    reduced = torch.load(out)
    logp, old, adv, mask = _batch(5, B=9)
    _, whole = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    for k in METRIC_KEYS:
        torch.testing.assert_close(reduced[k], whole[k].double(), rtol=1e-12, atol=1e-14, msg=k)


# ------------------------------------------------------------------------------------------------------
# The trainer passes the RL step: a linear δ schedule in a 2-step tiny run
# ------------------------------------------------------------------------------------------------------

TINY = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
    "rollout.prompts_per_step": 4, "rollout.group_size": 4, "optim.prompts_per_minibatch": 2,
    "warmstart.steps": 2, "warmstart.batch_size": 8, "trainer.max_steps": 2, "trainer.num_threads": 1,
    "trainer.progress_bar": False, "objective.kl_coef": 0.0,
}


def test_trainer_passes_the_rl_step_to_a_delta_schedule(tmp_path, monkeypatch):
    from bandpo.training import module
    from bandpo.training.launch import run
    from bandpo.training.config import load_config, preset_path

    seen = []
    original = module.policy_loss

    def spy(*args, **kwargs):
        seen.append((kwargs["step"], kwargs["config"].method_spec().bounds.delta_at(kwargs["step"])))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "policy_loss", spy)
    rows = {}
    for name, extra in (("const", {}), ("linear", {"loss.delta_schedule": "linear", "loss.delta": 0.05,
                                                   "loss.delta_end": 0.5, "loss.delta_steps": 1})):
        seen.clear()
        cfg = load_config(preset_path("tiny-cpu"), {**TINY, **extra})
        run(cfg, tmp_path / name)
        with open(tmp_path / name / "metrics.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
        steps = sorted({s for s, _ in seen})
        assert steps == [0, 1] and all(isinstance(s, int) for s, _ in seen)
        if name == "linear":
            assert {d for s, d in seen if s == 0} == {0.05} and {d for s, d in seen if s == 1} == {0.5}
    const, lin = rows["const"], rows["linear"]
    # same seed: step 0 is identical (δ = 0.05 in both), step 1 trains with the wider band
    assert const[0]["band_width/mean"] == lin[0]["band_width/mean"]
    assert float(lin[1]["bounds/upper_mean"]) > float(const[1]["bounds/upper_mean"])


def test_max_ratio_inf_removes_the_cap():
    """``max_ratio=inf`` is the way to train a band method without its cap of 10 (None keeps the method's own)."""
    old_logp = torch.log(torch.tensor([1e-4, 0.08, 0.9], dtype=torch.float64))
    _, capped = bandpo.bounds(old_logp, "band_kl")
    _, uncapped = bandpo.bounds(old_logp, "band_kl", max_ratio=math.inf)
    _, raw = bandpo.band(old_logp, 0.05, "kl")
    assert float(capped[0]) == 10.0 and float(uncapped[0]) == float(raw[0]) > 10.0
    assert torch.equal(uncapped[1:], raw[1:])
    assert bandpo.LossConfig(max_ratio=math.inf).max_ratio == math.inf
    with pytest.raises(ValueError, match="max_ratio must be None, a number >= 1"):
        bandpo.bounds(old_logp, "band_kl", max_ratio=0.5)
