"""The top decoder layer of a reward model computed at the last real token only (scoring, not training).

A sequence-classification RM reads its score at the last real token. With LoRA on the top layer only and the
layers below reused (music.rm.frozen), scoring still ran that top layer, its final norm and head over every
token, once per model: half of `evaluate`'s time on 2 cores (12 models, the bottom computed once). Only the
top layer's keys and values depend on every token; its query, attention output, MLP, the final norm and the
head matter at the last one. So those run for one token per conversation: the top layer then costs its k/v
projections per token (about 6% of the layer for SmolLM2) instead of the whole layer.

The same function in other float32 operations: rewards agree with the full forward within 1e-5 absolute
(measured under ATEN_CPU_CAPABILITY=default, avx2 and avx512: at most 4e-6 on the embedded 12-layer RM with
rewards up to 2.5; tests/test_rm_last_token.py), not bitwise; they are bitwise the same at any thread count.
Supported: Llama-type decoder layers (SmolLM2, Llama, and their kind) without logit soft-capping or a sliding
window; anything else takes the full path.
"""

from __future__ import annotations

import sys

from music.rm.frozen import _decoder, _inner

# model_type -> decoder layer class whose attention is plain rotary GQA (the code below); the planner reads it too
SUPPORTED = {"llama": "LlamaDecoderLayer"}
SUPPORTED_LAYERS = tuple(SUPPORTED.values())


def supports_last_token(model, n_frozen: int) -> bool:
    """True when exactly one decoder layer sits above `n_frozen` reused ones, it is of a supported kind, and the
    model runs in float32 (the tolerance is measured there; in 16 bits the two paths round differently by about
    1e-3, so a 16-bit RM keeps the full path and scores as it did when trained)."""
    import torch

    inner, dec = _inner(model), _decoder(model)
    conf = dec.config
    layer = dec.layers[-1]
    return (
        n_frozen >= 1
        and n_frozen == len(dec.layers) - 1
        and type(layer).__name__ in SUPPORTED_LAYERS
        and layer.input_layernorm.weight.dtype == torch.float32
        and hasattr(dec, "rotary_emb")
        and hasattr(inner, "score")
        and not getattr(conf, "attn_logit_softcapping", None)
        and not getattr(conf, "sliding_window", None)
    )


def last_token_index(input_ids, pad_token_id: int | None):
    """Per row the position the head reads: the last token that is not padding (transformers' rule for
    sequence classification with right padding: a pad id distinct from every real token, music.rm.model)."""
    import torch

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    if pad_token_id is None:
        return positions[-1].expand(input_ids.shape[0])
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def last_token_rewards(model, hidden, input_ids, attention_mask):
    """float32 reward per row from the reused states `hidden` [B, T, width] (right padded, pad rows zero)."""
    import torch

    inner, dec = _inner(model), _decoder(model)
    layer = dec.layers[-1]
    attn = layer.self_attn
    rope = sys.modules[type(layer).__module__].apply_rotary_pos_emb
    b, t, _ = hidden.shape
    head_dim = attn.head_dim
    rows = torch.arange(b, device=hidden.device)
    last = last_token_index(input_ids, inner.config.pad_token_id)
    positions = torch.arange(t, device=hidden.device).unsqueeze(0).expand(b, t)
    cos, sin = dec.rotary_emb(hidden, positions)

    x = layer.input_layernorm(hidden)
    keys = attn.k_proj(x).view(b, t, -1, head_dim).transpose(1, 2)
    values = attn.v_proj(x).view(b, t, -1, head_dim).transpose(1, 2)
    query = attn.q_proj(x[rows, last].unsqueeze(1)).view(b, 1, -1, head_dim).transpose(1, 2)
    query, _ = rope(query, query, cos[rows, last].unsqueeze(1), sin[rows, last].unsqueeze(1))
    _, keys = rope(keys, keys, cos, sin)
    groups = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)
    values = values.repeat_interleave(groups, dim=1)
    # the last real token sees every real token (right padding: the real ones come first)
    visible = (attention_mask.bool() & (positions <= last.unsqueeze(1)))[:, None, None, :]
    # written out, not F.scaled_dot_product_attention: its CPU kernel for one query splits the keys by thread,
    # so its bits would follow the thread count (music.threads needs forward passes that do not)
    logits = (query @ keys.transpose(-1, -2)) * attn.scaling
    out = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1) @ values
    h = hidden[rows, last].unsqueeze(1) + attn.o_proj(out.transpose(1, 2).reshape(b, 1, -1))
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return inner.score(dec.norm(h))[:, 0, 0].float()
