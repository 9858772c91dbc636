"""The pieces of a GRPO-style RL step as functions of tensors and models: sampling, log-probs, entropy, rewards,
advantages, the k3 reference KL, and the supervised warm-start. ``bandpo.training.module.BandPOModule`` only wires them.

Shapes: ``N`` sequences in a rollout (``N = prompts · G``, a prompt's G completions contiguous), ``P`` prompt
tokens (left-padded), ``T`` completion tokens (right-padded), ``V`` vocabulary size. ``mask`` is 1 on real
completion tokens (up to and including EOS) and 0 on padding.

Design decisions (those that follow the paper's training recipe are listed in ``docs/paper-notes.md``,
"Training recipe"):

1. Old log-probs are recomputed with a separate forward pass over prompt + completion after sampling, never taken
   from the sampler: ``generate``'s processed scores are changed by logits processors, and the KV-cache sampler's
   logits differ from a full forward in the last bits. The same function computes the new log-probs in the update,
   so ``ratio = 1`` exactly for an unchanged policy.
2. Log-probs and entropy use the temperature-scaled logits ``z / τ`` (the distribution that is sampled), over the
   whole vocabulary: top-p truncation only affects which token is drawn.
3. Token entropy is that of the full next-token distribution, ``H = logsumexp(z) − Σ softmax(z)·z``.
4. GRPO advantages: ``A_i = (R_i − mean_G R) / (std_G R + 1e-6)`` with the unbiased std, or ``R_i − mean_G R``
   without std scaling, broadcast to every completion token by the caller.
5. Reference KL: the low-variance k3 estimator ``exp(ref − logp) − (ref − logp) − 1`` per token, clamped to
   [−10, 10] (≥ 0 up to the clamp), aggregated like the policy loss and added with coefficient β.
6. Sampling draws from an explicit ``torch.Generator`` (the ``loop`` sampler), so a run's random stream is part of
   its checkpoint and a resumed run samples exactly what an uninterrupted one would.

``transformers`` is not imported here: any Hugging Face causal LM (``model(input_ids, attention_mask,
position_ids, ...) -> .logits``) works.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from ..registry import Registry
from .lean_forward import lean_logits, lean_unsupported

__all__ = [
    "Rollout",
    "SAMPLERS",
    "completion_logp",
    "group_advantages",
    "k3_kl",
    "masked_mean",
    "position_ids",
    "register_sampler",
    "rollout",
    "sample_hf_generate",
    "sample_loop",
    "sample_loop_groups",
    "selective_logp",
    "sft_loss",
    "token_entropy",
    "top_p_filter",
    "warm_start",
]

KL_CLAMP = 10.0
"""k3 values are clamped to [-KL_CLAMP, KL_CLAMP] (as in the paper's training code)."""
ADV_EPS = 1e-6
"""Added to the group std in the GRPO advantage."""
LOGP_CHUNK_ELEMENTS = 2**29
"""Most logits (rows x (T + 1) x vocabulary) one old/reference log-prob forward of :func:`rollout` holds: a sampling
chunk of ``micro_batch_size`` sequences is split further when its logits would exceed this (the float32 copies of
the entropy need ~14 bytes per logit, ~7.5 GB here), so sampling can use large batches with a 150k vocabulary."""

Sampler = Callable[..., tuple]
"""``(model, prompt_ids, prompt_mask, *, max_new_tokens, eos_id, pad_id, temperature, top_p, generator)
-> (completion_ids, completion_mask)``."""


# ----------------------------------------------------------------------------------------------------------
# Small tensor helpers
# ----------------------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over ``dim``, or everything). Empty -> 0."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def position_ids(mask: Tensor) -> Tensor:
    """Position ids for a left- or right-padded ``(B, L)`` attention mask: 0, 1, ... over the real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def selective_logp(logits: Tensor, ids: Tensor, lse: Optional[Tensor] = None) -> Tensor:
    """``log softmax(logits)[ids]`` in float32 without materialising the log-softmax.

    Args:
        logits: (B, T, V). ids: (B, T) token ids.
        lse: ``logsumexp(logits.float(), -1)`` when the caller has it already (:func:`completion_logp` shares it with
            :func:`token_entropy`); None: computed here.
    Returns:
        (B, T) float32 log-probabilities ``z[id] − logsumexp(z)``.
    """
    z = logits.float()
    if lse is None:
        lse = torch.logsumexp(z, dim=-1)
    return z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - lse


def token_entropy(logits: Tensor, lse: Optional[Tensor] = None) -> Tensor:
    """Entropy of the full next-token distribution, ``H = logsumexp(z) − Σ_v softmax(z)_v z_v``.

    Args:
        logits: (..., V). lse: ``logsumexp(logits.float(), -1)`` if already computed (None: computed here).
    Returns: (...) float32, in nats; in ``[0, log V]``.
    """
    z = logits.float()
    if lse is None:
        lse = torch.logsumexp(z, dim=-1)
    return lse - (torch.softmax(z, dim=-1) * z).sum(-1)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Set to −inf every logit outside the smallest set of most likely tokens with total probability >= top_p.

    The most likely token is always kept. Args: logits (B, V). Returns: (B, V), a new tensor.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _pad_right(tensors: Sequence[Tensor], value: int) -> Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def _chunks(n: int, size: int) -> list:
    size = size if size > 0 else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@functools.lru_cache(maxsize=None)
def _forward_params(model_cls: type) -> frozenset:
    return frozenset(inspect.signature(model_cls.forward).parameters)


def _lm_logits(model: Any, ids: Tensor, mask: Tensor, logits_to_keep: int, lean: bool) -> Tensor:
    """``model(ids, mask, position ids).logits`` for (B, L) ``ids`` and ``mask``: the last ``logits_to_keep``
    positions where the model can skip the others (0: all), through :func:`bandpo.training.lean_forward.lean_logits`
    when ``lean`` and it is the same computation."""
    pos = position_ids(mask)
    if lean and lean_unsupported(model) is None:
        return lean_logits(model, ids, mask, pos, logits_to_keep)
    kwargs = {"logits_to_keep": logits_to_keep} if logits_to_keep and "logits_to_keep" in _forward_params(
        type(model)) else {}
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kwargs).logits


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


def _stack_and_mask_after_eos(tokens: list, eos_id: int, pad_id: int) -> tuple:
    """Stack sampled columns into ``(ids, mask)``, both (B, T): mask is 1 up to and including the first EOS, and
    ids after it are replaced by ``pad_id``."""
    ids = torch.stack(tokens, dim=1)
    is_eos = ids == eos_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    return ids.masked_fill(after_eos, pad_id), mask


def _prefill_inputs(model: Any, prompt_mask: Tensor) -> tuple:
    """What the first (prompt) forward pass of a sampler needs: ``(cache_kw, cache, mask, pos, first)``, the name of
    the model's cache argument, an empty ``DynamicCache``, the (B, P) mask as integers, its position ids, and
    ``logits_to_keep=1`` where the model takes it (only the last position's logits are sampled from)."""
    from transformers import DynamicCache

    params = _forward_params(type(model))
    cache_kw = "cache" if "cache" in params else "past_key_values"
    mask = prompt_mask.long()
    first = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_kw, DynamicCache(config=model.config), mask, position_ids(mask), first


@torch.no_grad()
def sample_loop(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
    share_prompts: bool = False,
) -> tuple:
    """Sample completions token by token with a KV cache, drawing from ``generator``.

    Next token ~ softmax(top_p_filter(z / temperature)). Rows stop after EOS (later tokens are ``pad_id``); the loop
    ends when every row has stopped or after ``max_new_tokens``.

    With ``share_prompts`` (the sampler ``loop_shared``), a prompt that occurs in several rows (a group's G
    completions, the n samples of an evaluated problem) goes through the model once: the prompt forward runs on the
    distinct rows, 1/G of its FLOPs, and their KV cache and last logits are copied to the repeats. Rows of a batch
    never interact, so this is the same computation; its rounding is the same where the matrix library's is
    independent of the number of rows (measured here: MKL's native mode for >= 2 rows; its COMPATIBLE mode, the
    pinned one, rounds rows past the last multiple of 8 differently), so the sampled tokens are the same except
    when a draw falls within those last bits of a boundary (``tests/test_train_speed.py``). Off by default, so the
    committed runs keep their bits.

    Args:
        prompt_ids, prompt_mask: (B, P), left-padded.
        share_prompts: run each distinct prompt row once (False: every row).
    Returns:
        ``(completion_ids, completion_mask)``, both (B, T) with T <= max_new_tokens.
    """
    cache_kw, cache, mask, pos, first = _prefill_inputs(model, prompt_mask)
    first_ids, first_mask, first_pos, repeat = prompt_ids, mask, pos, None
    if share_prompts and prompt_ids.shape[0] > 1:
        P = prompt_ids.shape[1]
        distinct, inverse = torch.unique(torch.cat([prompt_ids, mask], dim=1), dim=0, return_inverse=True)
        # One distinct row of one token would be a matrix-vector product, whose rounding differs: keep every row.
        if distinct.shape[0] < prompt_ids.shape[0] and distinct.shape[0] * P >= 2:
            first_ids, first_mask, repeat = distinct[:, :P], distinct[:, P:], inverse
            first_pos = position_ids(first_mask)
    out = model(input_ids=first_ids, attention_mask=first_mask, position_ids=first_pos, use_cache=True,
                **{cache_kw: cache}, **first)
    logits = out.logits[:, -1]
    if repeat is not None:
        cache.reorder_cache(repeat)
        logits = logits[repeat]
    last_pos = pos[:, -1:]
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens = []
    for t in range(max_new_tokens):
        logits = top_p_filter(logits.float() / temperature, top_p)
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, pad_id)
        tokens.append(nxt)
        done = done | (nxt == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos, use_cache=True,
                    **{cache_kw: cache})
        logits = out.logits[:, -1]
    return _stack_and_mask_after_eos(tokens, eos_id, pad_id)


@torch.no_grad()
def sample_loop_groups(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    generators: Sequence[torch.Generator],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    all_ranks: Optional[Callable[[bool], bool]] = None,
) -> tuple:
    """:func:`sample_loop` for ``S = len(generators)`` independent streams sampled in one batch.

    The B rows are S contiguous groups of ``B // S`` rows; group s draws its tokens from ``generators[s]`` exactly as
    :func:`sample_loop` draws for those rows alone (one ``torch.multinomial`` call per group and token, made only
    while one of the group's rows is still running, so the generator ends where it would alone). A group's
    completions therefore depend on its prompt, its generator and the model, not on the other groups, up to the
    model's batch invariance: padding and batch shape may change logits in their last bits, which changes a draw
    only when its uniform falls that close to a boundary between two tokens' cumulative probabilities.

    Args:
        prompt_ids, prompt_mask: (B, P), left-padded; B divisible by S.
        all_ranks: for a sharded model (FSDP), whose every forward pass is a collective over the processes:
            ``all_ranks(flag)`` is True iff ``flag`` is True on every process. Decoding then goes on until every
            process's rows are done, so all processes make the same number of forward passes.
    Returns:
        ``(completion_ids, completion_mask)``, both (B, T) with T <= max_new_tokens.
    """
    B, S = prompt_ids.shape[0], len(generators)
    if S < 1 or B % S:
        raise ValueError(f"sample_loop_groups needs the {B} rows to split into len(generators) = {S} equal groups")
    size = B // S
    cache_kw, cache, mask, pos, first = _prefill_inputs(model, prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache},
                **first)
    last_pos = pos[:, -1:]
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    running = [True] * S
    tokens = []
    for t in range(max_new_tokens):
        probs = torch.softmax(top_p_filter(out.logits[:, -1].float() / temperature, top_p), dim=-1)
        nxt = torch.full((B,), pad_id, dtype=torch.long, device=prompt_ids.device)
        for s in (s for s in range(S) if running[s]):
            rows = slice(s * size, (s + 1) * size)
            nxt[rows] = torch.multinomial(probs[rows], 1, generator=generators[s]).squeeze(1)
        nxt = nxt.masked_fill(done, pad_id)
        tokens.append(nxt)
        done = done | (nxt == eos_id)
        running = (~done.view(S, size).all(1)).tolist()
        finished = not any(running)
        if all_ranks is not None:
            finished = all_ranks(finished)
        if t == max_new_tokens - 1 or finished:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos, use_cache=True,
                    **{cache_kw: cache})
    return _stack_and_mask_after_eos(tokens, eos_id, pad_id)


@torch.no_grad()
def sample_hf_generate(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """Sample with ``model.generate`` (``do_sample=True, top_k=0``). ``generate`` has no generator argument, so
    the global RNG is forked and seeded from ``generator`` (one draw per call), which keeps runs reproducible.
    Same contract as :func:`sample_loop`."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature, top_p=top_p,
            top_k=0, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    new = out[:, prompt_ids.shape[1]:]
    return _stack_and_mask_after_eos(list(new.unbind(1)), eos_id, pad_id)


SAMPLERS: Registry[Sampler] = Registry(
    "sampler", hint="register your own with bandpo.training.rollout.register_sampler"
)
"""Sampler name -> sampling function with the contract of :func:`sample_loop` (``rollout.sampler`` in the config)."""


def register_sampler(name: str, *, overwrite: bool = False) -> Callable[[Sampler], Sampler]:
    """Decorator: register a sampler ``fn(model, prompt_ids, prompt_mask, *, max_new_tokens, eos_id, pad_id,
    temperature, top_p, generator) -> (completion_ids, completion_mask)`` (the contract of :func:`sample_loop`).

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    return SAMPLERS.decorator(name, overwrite=overwrite)


register_sampler("loop")(sample_loop)
register_sampler("loop_shared")(functools.partial(sample_loop, share_prompts=True))
register_sampler("hf_generate")(sample_hf_generate)


# ----------------------------------------------------------------------------------------------------------
# Log-probs
# ----------------------------------------------------------------------------------------------------------


def completion_logp(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    lean: bool = True,
) -> tuple:
    """Log-probabilities (and entropies) of the completion tokens under ``model``, from one forward pass.

    ``logp[b, t] = log softmax(z_{P+t−1} / τ)[completion_ids[b, t]]``, the prediction of completion token t from
    the prompt and completion tokens before it.

    Args:
        prompt_ids, prompt_mask: (B, P) left-padded. completion_ids, completion_mask: (B, T) right-padded.
        lean: the forward of ``bandpo.training.lean_forward`` where it is the same computation (same floats).
    Returns:
        ``(logp, entropy)``: (B, T) float32 each (entropy is None unless ``with_entropy``). Values at masked
        positions are defined but meaningless.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    T = completion_ids.shape[1]
    logits = _lm_logits(model, ids, mask, T + 1, lean)  # only the positions that predict completion tokens (+ last)
    logits = logits[:, -(T + 1):-1]
    if temperature != 1.0:
        logits = logits.float() / temperature
    lse = torch.logsumexp(logits.float(), dim=-1)  # shared by the log-probs and the entropy
    logp = selective_logp(logits, completion_ids, lse)
    entropy = token_entropy(logits, lse) if with_entropy else None
    return logp, entropy


# ----------------------------------------------------------------------------------------------------------
# Advantages and KL
# ----------------------------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = ADV_EPS) -> Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std (+eps) if ``scale_by_std``.

    ``A_i = (R_i − mean_G R) / (std_G R + eps)``, std unbiased (Bessel-corrected, as in the paper's code);
    a group whose rewards are all equal gets A = 0.

    Args:
        rewards: (N,) with N divisible by ``group_size``, groups contiguous.
    Returns:
        (N,) float32.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0 or group_size < 2:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size >= 2; got shape "
                         f"{tuple(rewards.shape)} and group_size {group_size}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(π ‖ π_ref) for tokens sampled from π: ``exp(d) − d − 1``, ``d = ref − logp``.

    Unbiased for the KL and >= 0 (Schulman, "Approximating KL divergence"), clamped to [−10, 10].
    Args: logp, ref_logp: (B, T). Returns: (B, T).
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)  # exp stays finite; the clamp below bounds the value
    return (torch.exp(d) - d - 1).clamp(-KL_CLAMP, KL_CLAMP)


# ----------------------------------------------------------------------------------------------------------
# Rollout
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout batch (N = prompts · G sequences, groups contiguous). Tensors are on the model's device."""

    prompt_ids: Tensor
    """(N, P) left-padded prompt tokens."""
    prompt_mask: Tensor
    """(N, P)."""
    completion_ids: Tensor
    """(N, T) sampled tokens, right-padded."""
    mask: Tensor
    """(N, T) 1 on completion tokens up to and including EOS."""
    old_logp: Tensor
    """(N, T) log π_old of the sampled tokens (recomputed by a forward pass)."""
    entropy: Tensor
    """(N, T) entropy of π_old's next-token distribution."""
    rewards: Tensor
    """(N,) summed weighted rewards."""
    adv: Tensor
    """(N,) group advantages."""
    correct: Tensor
    """(N,) 1.0 where the task counts the completion as correct."""
    ref_logp: Optional[Tensor] = None
    """(N, T) log π_ref, when a reference model is used."""
    completions: list = field(default_factory=list)
    """Decoded completions (N strings)."""
    reward_parts: dict = field(default_factory=dict)
    """Reward function name -> (N,) scores."""


def _tokenize_prompts(tokenizer: Any, rows: Sequence[dict], chat_template: bool) -> list:
    """The prompt texts (the tokenizer's chat template applied where asked: ``bandpo.training.data.render_prompt``)."""
    from .data import render_prompts

    return render_prompts(tokenizer, [row["prompt"] for row in rows], chat_template=chat_template)


@torch.no_grad()
def rollout(
    policy: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    *,
    group_size: int,
    max_new_tokens: int,
    reward_funcs: Sequence[str],
    correct_fn: Callable,
    generator: Optional[torch.Generator] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampler: str = "loop",
    reward_weights: Optional[Sequence[float]] = None,
    ref_model: Any = None,
    scale_adv_by_std: bool = True,
    micro_batch_size: int = 0,
    chat_template: bool = False,
    lean: bool = True,
) -> Rollout:
    """Sample ``group_size`` completions per prompt row, score them, and compute advantages and old log-probs.

    Args:
        rows: prompt rows (``"prompt"`` plus columns such as ``"answer"``, passed to the reward functions).
        reward_funcs: names in ``bandpo.training.tasks.REWARD_FUNCS``; correct_fn: ``(completions, answers) -> bools``.
        micro_batch_size: sequences per sampling / forward chunk (0: all at once); the log-prob forwards use
            smaller chunks where the logits would exceed :data:`LOGP_CHUNK_ELEMENTS`.
        lean: the log-prob forwards through ``bandpo.training.lean_forward`` where it is the same computation.
    """
    from .tasks import weighted_rewards

    device = next(policy.parameters()).device
    texts = _tokenize_prompts(tokenizer, rows, chat_template)
    texts_rep = [t for t in texts for _ in range(group_size)]
    # Each prompt is tokenized once and its row repeated for the group (the same tensors as tokenizing texts_rep).
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(group_size, dim=0).to(device)
    prompt_mask = enc["attention_mask"].repeat_interleave(group_size, dim=0).to(device)
    sample = SAMPLERS.get(sampler)
    was_training = policy.training
    policy.eval()
    parts = []
    for sl in _chunks(len(texts_rep), micro_batch_size):
        parts.append(sample(policy, prompt_ids[sl], prompt_mask[sl], max_new_tokens=max_new_tokens,
                            eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, temperature=temperature,
                            top_p=top_p, generator=generator))
    completion_ids = _pad_right([p[0] for p in parts], tokenizer.pad_token_id)
    mask = _pad_right([p[1] for p in parts], 0)

    vocab = int(getattr(getattr(policy, "config", None), "vocab_size", 0) or 1)
    per_row = (completion_ids.shape[1] + 1) * vocab
    logp_rows = max(1, LOGP_CHUNK_ELEMENTS // per_row)
    logp_size = min(micro_batch_size or len(texts_rep), logp_rows)

    def logp_of(model: Any, with_entropy: bool) -> tuple:
        outs = [completion_logp(model, prompt_ids[sl], prompt_mask[sl], completion_ids[sl], mask[sl],
                                temperature=temperature, with_entropy=with_entropy, lean=lean)
                for sl in _chunks(len(texts_rep), logp_size)]
        logp = torch.cat([o[0] for o in outs])
        return logp, (torch.cat([o[1] for o in outs]) if with_entropy else None)

    old_logp, entropy = logp_of(policy, True)
    ref_logp = logp_of(ref_model, False)[0] if ref_model is not None else None
    policy.train(was_training)

    completions = tokenizer.batch_decode(completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id),
                                         skip_special_tokens=True)
    columns = {k: [row[k] for row in rows for _ in range(group_size)] for k in rows[0] if k != "prompt"}
    total, per_func = weighted_rewards(reward_funcs, reward_weights, texts_rep, completions, columns)
    rewards = torch.tensor(total, dtype=torch.float32, device=device)
    correct = torch.tensor(correct_fn(completions, columns.get("answer", [""] * len(completions))),
                           dtype=torch.float32, device=device)
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, mask=mask,
        old_logp=old_logp, entropy=entropy, rewards=rewards,
        adv=group_advantages(rewards, group_size, scale_by_std=scale_adv_by_std), correct=correct,
        ref_logp=ref_logp, completions=completions,
        reward_parts={k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in per_func.items()},
    )


# ----------------------------------------------------------------------------------------------------------
# Supervised warm-start
# ----------------------------------------------------------------------------------------------------------


def sft_loss(model: Any, tokenizer: Any, pairs: Sequence[tuple], encoded: Optional[dict] = None, *,
             lean: bool = True) -> tuple:
    """Cross-entropy of ``target + EOS`` given ``prompt`` (prompt tokens are not scored).

    Args:
        pairs: ``(prompt, target)`` strings.
        encoded: text -> token ids, kept by the caller across calls (:func:`warm_start` keeps one for its steps):
            a text found there is not tokenized again, new texts are added. Each text's ids are what the tokenizer
            gives it alone, so the result is the same with or without it.
        lean: the forward of ``bandpo.training.lean_forward`` where it is the same computation (same floats).
    Returns:
        ``(loss, token_accuracy, sequence_accuracy)``: mean token NLL (0-d, differentiable) and the greedy
        (argmax) accuracies per token and per whole target (detached floats).
    """
    device = next(model.parameters()).device
    texts = [p for p, _ in pairs] + [t for _, t in pairs]
    if encoded is None:
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        new = [t for t in dict.fromkeys(texts) if t not in encoded]
        if new:
            encoded.update(zip(new, tokenizer(new, add_special_tokens=False)["input_ids"]))
        enc = [encoded[t] for t in texts]
    p_enc, t_enc = enc[:len(pairs)], enc[len(pairs):]
    seqs = [p + t + [tokenizer.eos_token_id] for p, t in zip(p_enc, t_enc)]
    width = max(len(s) for s in seqs)
    # Rows built as lists and converted once (one tensor per field, not three slice writes per row).
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    target_mask = torch.tensor([[0] * len(p) + [1] * (len(s) - len(p)) + [0] * (width - len(s))
                                for s, p in zip(seqs, p_enc)], dtype=torch.long)
    ids, attn, target_mask = ids.to(device), attn.to(device), target_mask.to(device)
    logits = _lm_logits(model, ids, attn, 0, lean)
    logits, labels, m = logits[:, :-1], ids[:, 1:], target_mask[:, 1:]
    nll = -selective_logp(logits, labels)
    loss = masked_mean(nll, m)
    with torch.no_grad():
        hit = (logits.argmax(-1) == labels) | (m == 0)
        tok_acc = float(masked_mean(hit.float(), m))
        seq_acc = float(hit.all(dim=1).float().mean())
    return loss, tok_acc, seq_acc


def warm_start(
    model: Any,
    tokenizer: Any,
    sft_rows: Callable[[int, int], list],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    log: Optional[Callable[[str], None]] = None,
    state: Optional[dict] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    lean: bool = True,
) -> dict:
    """Train ``model`` in place for ``steps`` AdamW steps on ``sft_rows(step, batch_size)`` (constant ``lr``).

    Deterministic for a deterministic ``sft_rows`` (no sampling). Returns the last step's
    ``{"loss", "token_accuracy", "sequence_accuracy"}`` (and ``"steps"``).

    It can be interrupted and continued: ``should_stop()`` is asked before every step; when it answers True the
    loop ends there and the returned dict also holds ``"state"`` (``{"step", "optimizer", "stats"}``: the steps
    done, the AdamW state and the last stats). Calling again with ``state=`` that dict and the model's weights at
    that point continues bit for bit as if never stopped. ``lean``: as :func:`sft_loss`.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=True)  # = the per-tensor loop
    stats = {"loss": float("nan"), "token_accuracy": 0.0, "sequence_accuracy": 0.0, "steps": steps}
    first = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        stats.update(state["stats"])
        first = int(state["step"])
    encoded: dict = {}  # text -> token ids: the tasks' warm-start texts repeat (testbed: ~51,000 texts in 400 steps)
    for step in range(first, steps):
        if should_stop is not None and should_stop():
            saved = {k: stats[k] for k in ("loss", "token_accuracy", "sequence_accuracy")}
            opt.zero_grad(set_to_none=True)
            return {**stats, "state": {"step": step, "optimizer": opt.state_dict(), "stats": saved}}
        loss, tok_acc, seq_acc = sft_loss(model, tokenizer, sft_rows(step, batch_size), encoded, lean=lean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        stats.update(loss=loss.item(), token_accuracy=tok_acc, sequence_accuracy=seq_acc)
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log(f"warm-start {step + 1}/{steps}: loss {stats['loss']:.4f}, token acc {tok_acc:.3f}, "
                f"sequence acc {seq_acc:.3f}")
    opt.zero_grad(set_to_none=True)
    return stats
