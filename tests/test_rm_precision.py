"""Paper-scale settings of the reward model: 16-bit weights with a float32 head, gradient checkpointing,
the dtype rules (one place, shared with the planner) and a dtype for scoring."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.models.shapes import resolve_dtype, use_gradient_checkpointing
from music.rm.model import load_reward_model, score_head
from music.rm.score import RewardScorer, score_conversations
from music.rm.train import run_training, save_reward_model


def test_dtype_rule():
    assert resolve_dtype("auto", "float32", cuda=False) == "float32"  # CPU: always float32
    assert resolve_dtype("auto", "float32", cuda=True) == "bfloat16"  # a float32 checkpoint trains in bf16 on a GPU
    assert resolve_dtype("auto", "bfloat16", cuda=True) == "bfloat16"  # Gemma-2-9B-it's own dtype
    assert resolve_dtype("auto", "float16", cuda=True) == "float16"
    assert resolve_dtype("auto", "bfloat16", cuda=True, bf16_supported=False) == "float16"  # older GPUs
    assert resolve_dtype("float32", "bfloat16", cuda=True) == "float32"  # an explicit setting wins
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8", None, cuda=True)


def test_gradient_checkpointing_rule():
    assert use_gradient_checkpointing(None, 9_241_709_568) is True  # on by default for large backbones
    assert use_gradient_checkpointing(None, 134_515_584) is False
    assert use_gradient_checkpointing(False, 9_241_709_568) is False
    assert use_gradient_checkpointing(True, 1_000) is True


@pytest.mark.slow
def test_bf16_training_keeps_lora_and_head_in_float32_and_learns(tiny_backbone, tmp_path):
    cfg = tiny_cfg(tiny_backbone, dtype="bfloat16", max_steps=8, learning_rate=2e-2)
    out = run_training(cfg, {"d": toy_pairs(16)}, progress=False)
    info = out.metrics["backend"]
    assert info["dtype"] == "bfloat16" and info["head_dtype"] == "float32"
    trainable = {n: p.dtype for n, p in out.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}  # adapters and the head are float32
    assert any(p.dtype == torch.bfloat16 for p in out.model.parameters())  # the frozen backbone is 16-bit
    first, last = out.curve[0]["loss"], out.curve[-1]["loss"]
    assert math_finite(first) and math_finite(last) and out.metrics["final_loss"] < first
    merged = save_reward_model(out, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["dtype"] == "bfloat16"
    scorer = RewardScorer(tmp_path / "rm", dtype="auto", device="cpu")
    assert scorer.dtype == "float32"  # auto on CPU
    bf16 = RewardScorer(tmp_path / "rm", dtype="bfloat16", device="cpu")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    convs = [conv(i, g) for i in range(3) for g in (True, False)]
    a, b = scorer.score(convs), bf16.score(convs)
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.1 * (1 + max(abs(x) for x in a))
    assert merged is not None


def math_finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


@pytest.mark.slow
def test_gradient_checkpointing_changes_memory_not_results(tiny_backbone):
    model, _, info = load_reward_model(tiny_cfg(tiny_backbone, gradient_checkpointing=True))
    assert info["gradient_checkpointing"] is True and info["dtype"] == "float32"
    assert score_head(model).weight.requires_grad
    plain = run_training(tiny_cfg(tiny_backbone, max_steps=3), {"d": toy_pairs(12)}, progress=False)
    ckpt = run_training(
        tiny_cfg(tiny_backbone, max_steps=3, gradient_checkpointing=True), {"d": toy_pairs(12)}, progress=False
    )
    assert ckpt.metrics["backend"]["gradient_checkpointing"] and not plain.metrics["backend"]["gradient_checkpointing"]
    for a, b in zip(plain.curve, ckpt.curve):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)


# ---- a saved RM is the function that was trained (no merge into 16-bit weights) ----------------

EVAL = [conv(i, g, turns=2) for i in range(20, 24) for g in (True, False)]
RELOAD_TOL = 1e-6  # same dtype, same ops (LoRA unmerged, float32 head): on CPU the scores are identical


def _share_lost_by_bf16_merge(model) -> float:
    """Of the LoRA-adapted weights, the share that a merge into bfloat16 (W + BA*s, rounded) leaves as W."""
    lost = total = 0
    for m in model.modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            w = m.base_layer.weight
            delta = (m.lora_B["default"].weight @ m.lora_A["default"].weight) * m.scaling["default"]
            lost += int(((w.float() + delta).to(torch.bfloat16) == w).sum())
            total += w.numel()
    return lost / total


@pytest.mark.slow
def test_bf16_lora_update_survives_save_and_reload(tiny_backbone, tmp_path):
    # bfloat16 weights, a small learning rate: the LoRA update is below half a bf16 step of most of the
    # weights it would be added to (a merge into bf16 drops it), yet it moves the rewards.
    cfg = tiny_cfg(tiny_backbone, dtype="bfloat16", num_layers=1, max_steps=3, learning_rate=1e-5, save_every=0)
    out = run_training(cfg, {"d": toy_pairs(12)}, progress=False)
    assert _share_lost_by_bf16_merge(out.model) > 0.5
    before = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    with out.model.disable_adapter():
        without_lora = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    effect = max(abs(a - b) for a, b in zip(before, without_lora))
    assert effect > 100 * RELOAD_TOL  # the update is there to lose

    save_reward_model(out, tmp_path / "rm")
    scorer = RewardScorer(tmp_path / "rm", dtype="bfloat16", device="cpu")  # as the evaluate stage builds it
    assert score_head(scorer.model).weight.dtype == torch.float32
    assert next(p for n, p in scorer.model.named_parameters() if "lora_B" in n).dtype == torch.float32
    assert scorer.model.config.num_hidden_layers == 1  # the cut backbone reloads cut
    after = scorer.score(EVAL)
    assert max(abs(a - b) for a, b in zip(before, after)) <= RELOAD_TOL


@pytest.mark.slow
def test_float32_head_after_every_load(tiny_backbone, tmp_path):
    # full fine-tuning in bf16 keeps the head float32 in the file; LoRA keeps it in the adapter
    for lora in (False, True):
        cfg = tiny_cfg(tiny_backbone, dtype="bfloat16", lora=lora, max_steps=2, learning_rate=1e-3, save_every=0)
        out = run_training(cfg, {"d": toy_pairs(8)}, progress=False)
        before = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
        save_reward_model(out, tmp_path / f"rm{lora}")
        scorer = RewardScorer(tmp_path / f"rm{lora}", dtype="bfloat16", device="cpu")
        assert score_head(scorer.model).weight.dtype == torch.float32
        assert scorer.score(EVAL) == pytest.approx(before, abs=RELOAD_TOL)


# ---- one attention function for training and scoring (Gemma-2's soft-capped attention) -----------------


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory, smol_tok):
    """A random 2-layer Gemma-2 from the committed gemma-2-9b-it config, narrowed; the soft-cap is lowered
    to 1.0 and the init widened so that capping changes the rewards (at 50 it would not touch tiny logits)."""
    from music.models.random_backbone import write_random_backbone

    return write_random_backbone(
        "google/gemma-2-9b-it",
        tmp_path_factory.mktemp("gemma2"),
        smol_tok,
        num_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        attn_logit_softcapping=1.0,
        initializer_range=0.3,
        max_position_embeddings=1024,
    )


def test_attention_choice_applies_softcap():
    from types import SimpleNamespace

    from music.rm.model import attention_implementation

    assert attention_implementation(SimpleNamespace(attn_logit_softcapping=50.0)) == "eager"  # no GPU here
    assert attention_implementation(SimpleNamespace(attn_logit_softcapping=None)) is None
    assert (
        attention_implementation(SimpleNamespace(text_config=SimpleNamespace(attn_logit_softcapping=30.0))) == "eager"
    )


@pytest.mark.slow
def test_gemma2_scorer_uses_the_training_attention(tiny_gemma2, tmp_path):
    cfg = tiny_cfg(tiny_gemma2, max_steps=2, learning_rate=1e-3, save_every=0)
    out = run_training(cfg, {"d": toy_pairs(8)}, progress=False)
    assert out.metrics["backend"]["attn_implementation"] == "eager"
    trained = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    base = out.model.get_base_model()
    base.set_attn_implementation("sdpa")  # what transformers 5.17 picks by default: it ignores the soft-cap
    sdpa = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    base.set_attn_implementation("eager")  # applies it
    eager = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    assert max(abs(a - b) for a, b in zip(sdpa, eager)) > 1e-3  # the cap matters for this model
    assert trained == pytest.approx(eager, abs=1e-6)  # training applied the cap

    save_reward_model(out, tmp_path / "rm")
    scorer = RewardScorer(tmp_path / "rm", device="cpu")
    assert scorer.score(EVAL) == pytest.approx(trained, abs=1e-5)
