"""The reward model: backend choice, pad token, one score per conversation, last-real-token pooling,
and a score head that trains (pooling, LoRA)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.rm import model as rm_model
from music.rm.data import pad_batch, render_ids
from music.rm.model import (
    assert_reward_head,
    choose_backend,
    ensure_distinct_pad,
    load_reward_model,
    reward_scores,
    score_head,
)

# ---------------------------------------------------------------- backend choice


def test_auto_on_cpu_picks_transformers_and_never_imports_unsloth(monkeypatch):
    monkeypatch.setattr(rm_model, "_cuda_available", lambda: False)
    choice = choose_backend("auto")
    assert choice.name == "transformers" and "no CUDA" in choice.reason
    assert "unsloth" not in sys.modules


def test_forced_unsloth_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(rm_model, "_cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*no sequence-classification path"):
        choose_backend("unsloth")


def test_auto_with_cuda_but_no_unsloth_falls_back(monkeypatch):
    monkeypatch.setattr(rm_model, "_cuda_available", lambda: True)
    monkeypatch.setattr(rm_model.importlib.util, "find_spec", lambda name: None)
    choice = choose_backend("auto")
    assert choice.name == "transformers" and "not installed" in choice.reason


def test_forced_transformers_and_bad_names():
    assert choose_backend("transformers").name == "transformers"
    with pytest.raises(ValueError, match="auto, unsloth or transformers"):
        choose_backend("vllm")


# ---------------------------------------------------------------- pad token


def test_pad_differs_from_end_of_turn_in_tokenizer_and_config(tiny_backbone):
    model, tok, info = load_reward_model(tiny_cfg(tiny_backbone))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0 != im_end
    assert model.config.pad_token_id == tok.pad_token_id
    assert info["backend"] == "transformers" and "forced" in info["reason"]


def test_ensure_distinct_pad_replaces_an_end_of_turn_pad(smol_tok):
    tok = copy.deepcopy(smol_tok)
    tok.pad_token = "<|im_end|>"
    assert ensure_distinct_pad(tok) is False
    assert tok.pad_token == "<|endoftext|>"


# ---------------------------------------------------------------- one score per conversation, last real token


def _manual_scores(model, ids, mask):
    """Pool by hand: the hidden state at the last position whose attention mask is 1."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = torch.tensor([int(torch.nonzero(row).max()) for row in mask])
    return (hidden[torch.arange(len(ids)), last] @ score_head(model).weight.T)[:, 0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooled_index_is_the_last_real_token(tiny_backbone, smol_tok, side):
    model, tok, _ = load_reward_model(tiny_cfg(tiny_backbone, lora=False))
    model.eval()
    convs = [conv(0, True, turns=3), conv(1, False, turns=1), conv(2, True, turns=2)]
    seqs = [render_ids(tok, c) for c in convs]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert seqs[0].count(im_end) == 7  # system + 6 messages, each ends with <|im_end|>
    ids, mask = pad_batch(seqs, tok.pad_token_id, padding_side=side)
    assert (mask == 0).any()
    with torch.no_grad():
        got = reward_scores(model, ids, mask)
        want = _manual_scores(model, ids, mask)
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if (
        side == "right"
    ):  # where pooling landed when pad == eos == end of every turn (https://github.com/huggingface/transformers/issues/35352)
        first_end = torch.tensor([s.index(im_end) for s in seqs])
        early = (torch.arange(ids.shape[1])[None, :] <= first_end[:, None]).long()
        with torch.no_grad():
            wrong = _manual_scores(model, ids, early)
        assert not torch.allclose(got, wrong, atol=1e-4)


def test_right_padding_does_not_change_a_score(tiny_backbone):
    model, tok, _ = load_reward_model(tiny_cfg(tiny_backbone, lora=False))
    model.eval()
    seqs = [render_ids(tok, conv(0, True, turns=3)), render_ids(tok, conv(1, True))]
    with torch.no_grad():
        batch = reward_scores(model, *pad_batch(seqs, tok.pad_token_id))
        alone = torch.cat([reward_scores(model, *pad_batch([s], tok.pad_token_id)) for s in seqs])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_a_causal_lm_is_rejected(tiny_backbone):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]])
    with pytest.raises(RuntimeError, match="one score per conversation"):
        reward_scores(lm, ids, torch.ones_like(ids))
    with pytest.raises(RuntimeError, match="no `score` head"):
        assert_reward_head(lm)


# ---------------------------------------------------------------- LoRA keeps the head trainable; depth cut


def test_lora_trains_and_saves_the_score_head(tiny_backbone):
    model, _, info = load_reward_model(tiny_cfg(tiny_backbone, lora=True))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n and "modules_to_save" in n for n in names)
    assert any("lora_A" in n for n in names)
    assert "score" in model.peft_config["default"].modules_to_save
    assert info["model_class"] == "PeftModelForSequenceClassification"


def test_lora_last_layers_and_num_layers(tiny_backbone):
    model, _, info = load_reward_model(tiny_cfg(tiny_backbone, lora=True, lora_last_layers=1))
    lora_layers = {n.split("layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora_layers == {"1"}
    cut, _, info = load_reward_model(tiny_cfg(tiny_backbone, lora=False, num_layers=1))
    assert len(cut.model.layers) == 1 and info["num_layers"] == 1 and cut.config.num_hidden_layers == 1


def test_head_init_zero_starts_every_reward_at_zero_and_the_first_step_moves_only_the_head(tiny_backbone):
    from music.errors import DataError
    from music.rm.train import bt_loss

    scores = {}
    for init in ("zero", "normal"):
        for seed in (0, 1):
            model, tok, _ = load_reward_model(tiny_cfg(tiny_backbone, lora=True, head_init=init), seed=seed)
            ids = [render_ids(tok, c) for c in (conv(1, True), conv(2, False))]
            x, mask = pad_batch(ids, tok.pad_token_id)
            scores[init, seed] = reward_scores(model, x, mask)
            if init == "zero":
                assert torch.count_nonzero(score_head(model).weight) == 0
                r = scores[init, seed]
                bt_loss(r[:1], r[1:])[0].backward()
                moved = {n for n, p in model.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad)}
                assert moved and all("score" in n for n in moved), moved  # LoRA B = 0 and head = 0: head first
    assert torch.equal(scores["zero", 0], torch.zeros(2)) and torch.equal(scores["zero", 1], torch.zeros(2))
    assert not torch.allclose(scores["normal", 0], scores["normal", 1])  # the random head: a seed-made feature
    with pytest.raises(DataError, match="head_init"):
        tiny_cfg(tiny_backbone, head_init="xavier").validate()


def test_full_finetuning_trains_everything(tiny_backbone):
    model, _, info = load_reward_model(tiny_cfg(tiny_backbone, lora=False))
    assert info["trainable_params"] == info["total_params"]
    assert type(model).__name__ == "LlamaForSequenceClassification"
