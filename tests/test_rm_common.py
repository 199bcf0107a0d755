"""Shared fixtures for the reward-model tests: a tiny random Llama with the embedded SmolLM2 tokenizer.

Imported by the other test_rm_* files (pytest puts tests/ on sys.path); holds no tests itself.
"""

from __future__ import annotations

import pytest

from music.config import EMBEDDED_MODEL, TrainConfig
from music.schema import PreferencePair


@pytest.fixture(scope="session")
def smol_tok():
    from music.models import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL, padding_side="right")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, smol_tok):
    """A folder with a 2-layer, hidden-32 Llama causal LM and the SmolLM2 tokenizer (pad distinct)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(smol_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=smol_tok.pad_token_id, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    smol_tok.save_pretrained(out)
    return str(out)


def conv(i: int, good: bool, turns: int = 1, system: str | None = None) -> list[dict]:
    """A toy conversation whose assistant replies are all good or all bad (a learnable contrast)."""
    msgs = [{"role": "system", "content": system}] if system else []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"question {i}.{t} " + "please " * ((i + t) % 4)})
        reply = "good helpful answer " if good else "bad unrelated reply "
        msgs.append({"role": "assistant", "content": reply * (1 + (i + t) % 3)})
    return msgs


def toy_pairs(n: int, kind: str = "d", turns: int = 1) -> list[PreferencePair]:
    return [
        PreferencePair(conv(i, True, turns), conv(i, False, turns), {"pair_id": f"{kind}{i}", "kind": kind})
        for i in range(n)
    ]


def tiny_cfg(backbone: str, **kw) -> TrainConfig:
    base = dict(backbone=backbone, num_layers=None, backend="transformers", max_steps=6, batch_size=4,
                learning_rate=5e-3, save_every=2, max_length=256, seed=0)
    base.update(kw)
    return TrainConfig(**base)
