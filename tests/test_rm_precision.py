"""Paper-scale settings of the reward model: 16-bit weights with a float32 head, gradient checkpointing,
the dtype rules (one place, shared with the planner) and a dtype for scoring."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.models.shapes import resolve_dtype, use_gradient_checkpointing
from music.rm.model import load_reward_model, score_head
from music.rm.score import RewardScorer
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
    ckpt = run_training(tiny_cfg(tiny_backbone, max_steps=3, gradient_checkpointing=True), {"d": toy_pairs(12)}, progress=False)
    assert ckpt.metrics["backend"]["gradient_checkpointing"] and not plain.metrics["backend"]["gradient_checkpointing"]
    for a, b in zip(plain.curve, ckpt.curve):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
