"""Pytest fixtures shared by the test modules, and the environment defaults (deterministic threads).

Plain constants and helpers (REPO, SHARED_DATA, fakes, tiny data) live in helpers.py; every test module imports
them as `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_DATA

from music.config import EMBEDDED_MODEL

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real HH-RLHF, UltraFeedback, ShareGPT, MT-Bench); skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real-data folder {SHARED_DATA} is absent (it sits beside the repository on the project's machines)"
        )
    return SHARED_DATA


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
        vocab_size=len(smol_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=smol_tok.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    smol_tok.save_pretrained(out)
    return str(out)
