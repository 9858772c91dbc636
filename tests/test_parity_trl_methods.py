"""The losses TRL 1.16 ships that verl does not (VESPO, LUSPO), and TRL's own CISPO and SAPO, against bandpo's:
TRL's ``GRPOTrainer._compute_loss`` runs on a stand-in trainer whose model returns fixed float64 log-probabilities
(no model, no tokenizer: only the loss code runs), and :func:`bandpo.policy_loss` on the same tensors; loss and
gradient must agree to rounding.

TRL's CISPO truncates the weight at ``epsilon_high`` itself (no lower bound): bandpo's ``cispo`` with
``eps_low=1, eps_high=ε_high - 1``. TRL's LUSPO is GSPO's sequence ratio summed over each sequence's tokens and
averaged over sequences: bandpo's ``gspo`` with ``agg="seq-mean-token-sum"``."""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import GRPOTrainer  # noqa: E402

import bandpo  # noqa: E402


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(loss_type, logp, old, adv, mask, *, level="token", epsilon=0.2, epsilon_high=0.28, **args):
    """TRL's own ``_compute_loss`` on a stand-in trainer; returns (loss, d loss / d logp)."""
    leaf = logp.clone().requires_grad_(True)
    B, T = logp.shape
    trainer = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=0.0,
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list)}, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
        args=SimpleNamespace(delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=args.pop("sapo_temperature_neg_", 1.05),
                             vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
                             steps_per_generation=1, use_bias_correction_kl=False, **args),
        _get_per_token_logps_and_entropies=lambda model, *a, **k: (leaf, torch.zeros_like(leaf), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


def _tensors(B=8, T=10, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    old = torch.empty(B, T, dtype=torch.float64).uniform_(torch.log(torch.tensor(1e-4)).item(), -0.01, generator=g)
    logp = (old + torch.empty(B, T, dtype=torch.float64).uniform_(-spread, spread, generator=g)).clamp(max=0.0)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[0], adv[1] = adv[0].abs() + 0.3, -adv[1].abs() - 0.3
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    return old, logp, adv, mask


def _ours(method, old, logp, adv, mask, agg, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, _ = bandpo.policy_loss(leaf, old, adv[:, None].expand_as(logp).contiguous(), mask, method=method, agg=agg, **kw)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-10, atol=1e-13)
    assert (theirs[1] != 0).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spread", [0.05, 0.6])
def test_vespo_equals_trls(seed, spread):
    old, logp, adv, mask = _tensors(seed=seed, spread=spread)
    _assert_same(_ours("vespo", old, logp, adv, mask, "token-mean"), _trl_loss("vespo", logp, old, adv, mask))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.05, 0.08)])
def test_luspo_is_gspo_summed_over_tokens(seed, eps):
    old, logp, adv, mask = _tensors(seed=seed, spread=0.3)
    theirs = _trl_loss("luspo", logp, old, adv, mask, level="sequence", epsilon=eps[0], epsilon_high=eps[1])
    _assert_same(_ours("gspo", old, logp, adv, mask, "seq-mean-token-sum", eps_low=eps[0], eps_high=eps[1]), theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_trl_gspo_is_gspo(seed):
    """TRL's GRPO loss with ``importance_sampling_level="sequence"`` (GSPO) equals bandpo's ``gspo``."""
    old, logp, adv, mask = _tensors(seed=seed, spread=0.3)
    theirs = _trl_loss("grpo", logp, old, adv, mask, level="sequence", epsilon=0.05, epsilon_high=0.08)
    _assert_same(_ours("gspo", old, logp, adv, mask, "seq-mean-token-mean", eps_low=0.05, eps_high=0.08), theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_trl_cispo_and_sapo_equal_bandpos(seed):
    old, logp, adv, mask = _tensors(seed=seed)
    theirs = _trl_loss("cispo", logp, old, adv, mask, epsilon_high=5.0)
    _assert_same(_ours("cispo", old, logp, adv, mask, "token-mean"), theirs)  # [0, 5]: TRL's recommended 5
    theirs = _trl_loss("cispo", logp, old, adv, mask, epsilon_high=1.5)
    _assert_same(_ours("cispo", old, logp, adv, mask, "token-mean", eps_high=0.5), theirs)
    # TRL builds SAPO's temperatures with torch.where on Python floats, i.e. in float32: temperatures that float32
    # holds exactly (1.0 and 1.25 here, not the default 1.05) keep the comparison to float64 rounding
    theirs = _trl_loss("sapo", logp, old, adv, mask, sapo_temperature_neg_=1.25)
    _assert_same(_ours("sapo", old, logp, adv, mask, "seq-mean-token-mean", tau_neg=1.25), theirs)
