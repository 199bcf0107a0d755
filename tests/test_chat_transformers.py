"""The in-process transformers backend on the embedded SmolLM2 (slow: loads the model)."""

from __future__ import annotations

import pytest

from music.chat import make_chat
from music.config import EMBEDDED_MODEL, ChatModelConfig

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about rain."]
STORY = [{"role": "user", "content": "Tell me a short story about a dragon."}]


def ask(*questions) -> list[list[dict]]:
    return [[{"role": "user", "content": q}] for q in questions]


def chat(**kw):
    kw.setdefault("max_new_tokens", 12)
    return make_chat(ChatModelConfig(model=EMBEDDED_MODEL, **kw), None)


def test_prompt_rendering_pad_and_stop_tokens():
    c = chat()
    ids = c.render([{"role": "user", "content": "hi"}])
    assert c.tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    start = c.tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids[1] != start  # exactly one BOS/<|im_start|> at the start
    assert c.stop_ids == [2] and c.tok.convert_ids_to_tokens(2) == "<|im_end|>"
    assert c.pad_id == 0 and c.pad_id not in c.stop_ids


def test_greedy_batch_is_nonempty_deterministic_and_equals_unbatched():
    batched = chat(temperature=0.0, batch_size=8).generate(ask(*QUESTIONS))
    assert all(r.text and r.finish_reason in ("stop", "length") for r in batched)
    assert "Paris" in batched[0].text
    assert chat(temperature=0.0, batch_size=8).generate(ask(*QUESTIONS)) == batched
    # Left padding and the attention mask make a padded row behave as if alone (holds for these
    # prompts in fp32 on CPU; a wrong padding side or mask breaks it).
    single = chat(temperature=0.0, batch_size=1).generate(ask(*QUESTIONS))
    assert [r.text for r in single] == [r.text for r in batched]


def test_seeded_sampling_and_distinct_duplicates():
    import torch

    c = chat(temperature=1.0, top_p=1.0, batch_size=8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = c.generate([STORY] * 3, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG is untouched
    assert c.generate([STORY] * 3, seed=0) == a
    assert c.generate([STORY] * 3, seed=1) != a
    assert len({r.text for r in a}) == 3  # identical inputs in one call are distinct samples


def test_length_finish_reason():
    (r,) = chat(temperature=0.0).generate([STORY], max_new_tokens=2)
    assert r.finish_reason == "length" and r.text
    assert len(chat().tok(r.text, add_special_tokens=False)["input_ids"]) <= 2
    (r,) = chat(temperature=0.0).generate(ask("What is the capital of France?"), max_new_tokens=40)
    assert r.finish_reason == "stop"


def test_roles_share_one_loaded_model():
    assert chat(temperature=0.0).lm is chat(temperature=0.9).lm


def test_crash_mid_run_then_rerun_matches_uninterrupted(tmp_path, monkeypatch):
    """Tiny random Llama with the embedded tokenizer; the model raises in batch 3 of 4."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from music.models import load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
        )
    )
    tiny.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = ChatModelConfig(model=str(tmp_path / "tiny"), temperature=1.0, max_new_tokens=6, batch_size=2)
    conversations = ask(*[f"question number {i} " * (i % 3 + 1) for i in range(8)])

    reference = make_chat(cfg, tmp_path / "ref").generate(conversations, seed=5)

    backend = make_chat(cfg, tmp_path / "run")
    real_generate, calls = backend.lm.generate, []

    def crashing_generate(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kw)

    monkeypatch.setattr(backend.lm, "generate", crashing_generate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        backend.generate(conversations, seed=5)
    calls.clear()
    rerun = make_chat(cfg, tmp_path / "run")
    assert rerun.generate(conversations, seed=5) == reference
    assert len(calls) == 2  # batches 1 and 2 came from the cache; 3 and 4 were generated


def test_choose_constrains_the_reply_to_an_option():
    c = chat(batch_size=2)
    convs = ask(
        "Which is a fruit? A) apple B) car. Answer with the letter.",
        "Which is a colour? A) dog B) red. Answer with the letter.",
        "Is 2 bigger than 1? A) yes B) no",
    )
    out = c.choose(convs, ["A", "B", "C"], prefix="[[", suffix="]]")
    assert all(r.text in ("[[A]]", "[[B]]", "[[C]]") and r.finish_reason == "stop" for r in out)
    assert c.choose(convs, ["A", "B", "C"], prefix="[[", suffix="]]") == out  # no sampling: deterministic
    # one row alone gives the same pick as inside a padded batch
    assert c.choose(convs[1:2], ["A", "B", "C"], prefix="[[", suffix="]]")[0] == out[1]
    with pytest.raises(ValueError, match="first token"):
        c.choose(convs, ["A", "A"], prefix="[[")
