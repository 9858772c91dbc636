"""A leaner forward pass for transformers' Qwen2 and Llama causal LMs on the CPU, with the same floats.

The trainer's models on a CPU are small (the testbed's has 0.11M weights), so a forward pass costs less in
arithmetic than in Python: transformers' modules, decorators, mask builders and output classes. :func:`lean_logits`
computes the logits with the same ATen operations, in the same order, on the same tensors as transformers' own
``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` forward (transformers 5.10, a public project, Apache-2.0), but as one
function over the weights. The logits, and the gradients autograd takes through them, are therefore bit-identical
to transformers' forward; ``tests/test_lean_forward.py`` checks this bit for bit (logits and every gradient; left
and right padding, none, one-token inputs, float32 and bfloat16, grouped-query attention, both architectures), and
a whole training run with it on and off. On the testbed's mini-batches a forward and backward take 0.84x the time,
0.89x with the checks of :func:`lean_unsupported` that precede every forward (about 70 us)
(``benchmarks/trainer_speed.py`` measures the trainer as a whole).

It is used only where it is known to be the same computation (:func:`lean_unsupported` says why not otherwise):
the model is exactly one of the two classes, with the attention backend ``sdpa``, default rotary embeddings, every
layer full attention, SiLU MLPs, no attention dropout, no gradient checkpointing, weights on the CPU, no module
replaced (LoRA, quantised layers) and no hooks (FSDP's all-gathers are hooks), and the installed transformers is
a series this file was checked against (:data:`CHECKED_TRANSFORMERS`). Otherwise the callers
(``bandpo.training.rollout.completion_logp`` and ``sft_loss``) call the model. ``model.lean_forward: false`` turns it
off.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CHECKED_TRANSFORMERS", "lean_unsupported", "lean_logits"]

CHECKED_TRANSFORMERS = ("5.10",)
"""transformers release series whose Qwen2/Llama forward :func:`lean_logits` reproduces (checked by the tests)."""

_CLASSES = {  # model class -> (attention, MLP, RMSNorm, decoder layer, inner model) class names
    "Qwen2ForCausalLM": ("Qwen2Attention", "Qwen2MLP", "Qwen2RMSNorm", "Qwen2DecoderLayer", "Qwen2Model"),
    "LlamaForCausalLM": ("LlamaAttention", "LlamaMLP", "LlamaRMSNorm", "LlamaDecoderLayer", "LlamaModel"),
}


@functools.lru_cache(maxsize=None)
def _transformers_series() -> str:
    """The installed transformers' ``major.minor`` (read once: the imported library cannot change in a process)."""
    import transformers

    return ".".join(transformers.__version__.split(".")[:2])


def _walk(model: torch.nn.Module) -> Optional[str]:
    """Gradient checkpointing or a forward/backward (pre-)hook on ``model`` or a module under it, in one walk by hand
    (``modules()``'s nested generators, and transformers' ``is_gradient_checkpointing`` walking them again, cost
    several times more, and this runs before every forward). None: neither."""
    stack = [model]
    while stack:
        m = stack.pop()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return "hooks on a module (FSDP, profilers)"
        # transformers' flag: an instance or class attribute (a property on a class reads as on: the safe side)
        if m.__dict__.get("gradient_checkpointing", getattr(type(m), "gradient_checkpointing", False)):
            return "gradient checkpointing"
        stack.extend(c for c in m._modules.values() if c is not None)
    return None


def _global_hooks() -> bool:
    m = torch.nn.modules.module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def _replaced(module: Any, name: str) -> Optional[str]:
    got = type(module).__name__
    return None if got == name else f"a replaced module: {got} where transformers has {name}"


def lean_unsupported(model: Any) -> Optional[str]:
    """Why :func:`lean_logits` is not the same computation as ``model(...)`` for ``model``; None when it is.

    Asked before every forward (a hook or an adapter may be added at any time), so it checks in order and builds a
    message only for the first condition that fails."""
    names = _CLASSES.get(type(model).__name__)
    if names is None or type(model).__module__.split(".")[:2] != ["transformers", "models"]:
        return f"{type(model).__name__} is not transformers' Qwen2ForCausalLM or LlamaForCausalLM"
    series = _transformers_series()
    if series not in CHECKED_TRANSFORMERS:
        return f"transformers {series} is not a checked series {CHECKED_TRANSFORMERS}"
    c = model.config
    if c._attn_implementation != "sdpa":
        return f"attention backend {c._attn_implementation!r}, not 'sdpa'"
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        return f"rotary embeddings {rope!r}, not 'default'"
    if any(t != "full_attention" for t in getattr(c, "layer_types", None) or ()):
        return "a layer that is not full attention"
    if c.hidden_act != "silu":
        return f"activation {c.hidden_act!r}, not 'silu'"
    if getattr(c, "attention_dropout", 0.0):
        return "attention dropout"
    if _global_hooks():
        return "hooks on a module (FSDP, profilers)"
    why = _walk(model)
    if why:
        return why
    if model.lm_head.weight.device.type != "cpu":
        return "weights not on the CPU"
    attn, mlp, norm, layer, inner = names
    for mod, name in ((model.model, inner), (model.model.norm, norm), (model.model.embed_tokens, "Embedding"),
                      (model.lm_head, "Linear")):
        why = _replaced(mod, name)
        if why:
            return why
    for lay in model.model.layers:
        a, m = lay.self_attn, lay.mlp
        for mod, name in ((lay, layer), (a, attn), (m, mlp), (lay.input_layernorm, norm),
                          (lay.post_attention_layernorm, norm), (a.q_proj, "Linear"), (a.k_proj, "Linear"),
                          (a.v_proj, "Linear"), (a.o_proj, "Linear"), (m.gate_proj, "Linear"),
                          (m.up_proj, "Linear"), (m.down_proj, "Linear")):
            why = _replaced(mod, name)
            if why:
                return why
    if len(model.model.layers) != c.num_hidden_layers:
        return "a model whose layer list is not num_hidden_layers long"
    return None


def _rms_norm(x: Tensor, norm: Any) -> Tensor:
    """``w * (x / sqrt(mean(x^2) + eps))``, computed in float32 and cast back (transformers' RMSNorm)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the last dimension's halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, H_kv, L, D) -> (B, H_kv * n_rep, L, D), each key/value head repeated for its query heads."""
    if n_rep == 1:
        return x
    B, H, L, D = x.shape
    return x[:, :, None, :, :].expand(B, H, n_rep, L, D).reshape(B, H * n_rep, L, D)


def lean_logits(model: Any, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                logits_to_keep: int = 0) -> Tensor:
    """The logits of a supported model (:func:`lean_unsupported` is None), as ``model(...).logits`` gives them.

    Decoder layer l: ``h = h + o_proj(attn(rope(q), rope(k), v))`` on ``rms_norm(h)``, then
    ``h = h + down(silu(gate(x)) * up(x))`` on ``x = rms_norm(h)``; logits ``= lm_head(rms_norm(h))``.

    Args:
        input_ids: (B, L) token ids. attention_mask: (B, L), 1 for real tokens (either side may be padded).
        position_ids: (B, L) positions of the tokens (0, 1, ... over the real ones).
        logits_to_keep: the last ``logits_to_keep`` positions' logits (0: all), as transformers' argument.
    Returns:
        (B, L or logits_to_keep, V) in the model's dtype.
    """
    c, inner = model.config, model.model
    B, L = input_ids.shape
    h = F.embedding(input_ids, inner.embed_tokens.weight, inner.embed_tokens.padding_idx)
    padding = attention_mask.bool()
    if bool(padding.all()):  # transformers then leaves the mask to SDPA's is_causal (needs more than one query)
        mask, causal, gqa = None, L > 1, {"enable_gqa": True}
    else:  # key j visible from query i: j <= i and j is a real token
        pos = torch.arange(L, device=input_ids.device)
        mask = (pos[None, :] <= pos[:, None])[None, None, :, :] & padding[:, None, None, :]
        causal, gqa = False, {}
    with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):  # rotary angles: float32, no grad
        rot = inner.rotary_emb
        inv_freq = rot.inv_freq[None, :, None].float().expand(B, -1, 1)
        freqs = (inv_freq.float() @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * rot.attention_scaling).to(h.dtype).unsqueeze(1)
        sin = (emb.sin() * rot.attention_scaling).to(h.dtype).unsqueeze(1)
    for layer in inner.layers:
        a, mlp = layer.self_attn, layer.mlp
        x = _rms_norm(h, layer.input_layernorm)
        shape = (B, L, -1, a.head_dim)
        q = F.linear(x, a.q_proj.weight, a.q_proj.bias).view(shape).transpose(1, 2)
        k = F.linear(x, a.k_proj.weight, a.k_proj.bias).view(shape).transpose(1, 2)
        v = F.linear(x, a.v_proj.weight, a.v_proj.bias).view(shape).transpose(1, 2)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        if mask is not None:
            k, v = _repeat_kv(k, a.num_key_value_groups), _repeat_kv(v, a.num_key_value_groups)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=a.scaling,
                                           is_causal=causal, **gqa)
        o = o.transpose(1, 2).contiguous().reshape(B, L, -1).contiguous()
        h = h + F.linear(o, a.o_proj.weight, a.o_proj.bias)
        x = _rms_norm(h, layer.post_attention_layernorm)
        x = F.silu(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)) * F.linear(x, mlp.up_proj.weight,
                                                                                     mlp.up_proj.bias)
        h = h + F.linear(x, mlp.down_proj.weight, mlp.down_proj.bias)
    h = _rms_norm(h, inner.norm)
    return F.linear(h[:, -logits_to_keep:, :], model.lm_head.weight, model.lm_head.bias)

