"""Decoding work per generated token does not grow with the conversation (the long-context
anomaly): no per-step copy of the whole key/value cache (neither repeat_kv for grouped heads nor torch.cat
to append), and the replies are exactly those of transformers' own path."""

from __future__ import annotations

import pytest
import torch

from music.chat.transformers_backend import GQA_ATTENTION, growing_cache, use_gqa_attention
from music.config import ChatModelConfig

CONVS = [[{"role": "user", "content": "Tell me about bread " + "and butter " * (5 * i)}] for i in range(4)]


def _chat(model: str, reuse: bool, **kw):
    from music.chat import make_chat

    return make_chat(
        ChatModelConfig(
            model=model,
            max_new_tokens=8,
            temperature=0.7,
            top_p=0.9,
            repetition_penalty=1.1,
            batch_size=4,
            reuse_kv=reuse,
            **kw,
        ),
        None,
    )


def test_growing_layer_appends_in_place_and_equals_concatenation():
    from transformers import DynamicCache, LlamaConfig

    cfg = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1, vocab_size=10)
    cache = growing_cache(None, cfg, reserve=4)
    layer = cache.layers[0]
    torch.manual_seed(0)
    k0, v0 = torch.randn(2, 1, 7, 8), torch.randn(2, 1, 7, 8)
    keys, values = [k0], [v0]
    layer.update(k0, v0)
    ptr = layer.keys.data_ptr()
    for _ in range(4):  # the reserve: every step writes in place, nothing is copied
        k, v = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8)
        keys.append(k)
        values.append(v)
        out_k, out_v = layer.update(k, v)
        assert layer.keys.data_ptr() == ptr
    k, v = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8)  # beyond the reserve: one reallocation, still right
    keys.append(k)
    values.append(v)
    out_k, out_v = layer.update(k, v)
    assert torch.equal(out_k, torch.cat(keys, dim=-2)) and torch.equal(out_v, torch.cat(values, dim=-2))
    assert cache.get_seq_length() == 12
    # A filled DynamicCache (the reuse path's) keeps its states.
    filled = DynamicCache([(k0, v0)], config=cfg)
    g = growing_cache(filled, cfg, reserve=2)
    assert torch.equal(g.layers[0].update(k, v)[0], torch.cat([k0, k], dim=-2))


@pytest.mark.parametrize("reuse", [False, True])
def test_no_repeat_kv_while_decoding_and_the_same_replies(tiny_backbone, reuse, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    chat = _chat(tiny_backbone, reuse)
    assert chat.lm.config.num_key_value_heads < chat.lm.config.num_attention_heads  # grouped heads
    assert chat.lm.config._attn_implementation == GQA_ATTENTION
    calls = []
    real = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda h, n: calls.append(h.shape[-2]) or real(h, n))
    new = chat.generate(CONVS, seed=3)
    assert calls == []  # the grouped key/value heads go to the kernel as they are
    try:  # transformers' own path: repeat_kv at every layer and step, a cache grown by torch.cat
        use_gqa_attention(chat.lm, False)
        chat.grow_in_place = False
        if chat.kv is not None:
            chat.kv.clear()
        old = chat.generate(CONVS, seed=3)
    finally:
        use_gqa_attention(chat.lm, True)
    assert calls and max(calls) > 8  # it did copy the cache (whole prompts, then every step's cache)
    assert [r.text for r in new] == [r.text for r in old]
    assert [r.finish_reason for r in new] == [r.finish_reason for r in old]
