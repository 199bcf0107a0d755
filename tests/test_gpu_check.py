"""benchmarks/gpu_check_unsloth.py on CPU: its CPU-side pieces (long pairs, the separate-process scorer,
the planner's estimate, the comparison) and its refusal without Unsloth. Nothing here runs the GPU cases."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from helpers import REPO, conv, tiny_cfg, toy_pairs  # noqa: F401

_spec = importlib.util.spec_from_file_location("gpu_check_unsloth", REPO / "benchmarks" / "gpu_check_unsloth.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_without_unsloth_it_says_so(capsys):
    assert "unsloth" not in sys.modules
    assert gpu_check.main([]) == 2
    assert "unsloth is not installed" in capsys.readouterr().out


def test_long_pairs_fill_the_paper_length(smol_tok):
    from music.rm.data import encode_pairs

    pairs = gpu_check.toy_pairs(6, repeat=2, turns=60)  # as the gemma2 case builds them
    encoded, trunc = encode_pairs(smol_tok, pairs, gpu_check.PAPER_MAX_LENGTH, source="gpu check")
    lengths = [len(e.chosen) for e in encoded] + [len(e.rejected) for e in encoded]
    assert all(0.9 * gpu_check.PAPER_MAX_LENGTH < n <= gpu_check.PAPER_MAX_LENGTH for n in lengths), lengths


def test_compare_states_its_tolerance():
    assert gpu_check.compare([1.0, -2.0], [1.01, -2.0])["ok"]
    bad = gpu_check.compare([1.0, -2.0], [1.5, -2.0])
    assert not bad["ok"] and bad["tolerance"] == pytest.approx(gpu_check.REL_TOL * 3)


@pytest.mark.slow
def test_separate_process_scores_the_saved_folder_without_unsloth(tiny_backbone, tmp_path):
    from music.rm.score import score_conversations
    from music.rm.train import run_training, save_reward_model

    out = run_training(tiny_cfg(tiny_backbone, max_steps=2, save_every=0), {"d": toy_pairs(8)}, progress=False)
    convs = [conv(i, g) for i in range(3) for g in (True, False)]
    mem = score_conversations(out.model, out.tokenizer, convs, max_length=256)
    assert 0.0 <= gpu_check.share_lost_by_bf16_merge(out.model) <= 1.0
    save_reward_model(out, tmp_path / "rm")
    child = gpu_check.score_in_child(tmp_path / "rm", convs, "float32", 256, device="cpu")
    assert child["unsloth_imported"] is False and child["head_dtype"] == "float32"
    assert child["model_class"] == "PeftModelForSequenceClassification"
    assert child["scores"] == pytest.approx(mem, abs=1e-6)
    assert len(child["scores_without_adapter"]) == len(convs)


@pytest.mark.slow
def test_planner_estimate_for_a_two_layer_gemma2(smol_tok, tmp_path):
    from music.config import TrainConfig
    from music.models.random_backbone import write_random_backbone

    folder = write_random_backbone(
        gpu_check.GEMMA,
        tmp_path / "g",
        smol_tok,
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    cfg = TrainConfig(
        backbone=folder,
        num_layers=None,
        lora=True,
        lora_last_layers=None,
        batch_size=8,
        max_length=2048,
        dtype="auto",
        gradient_checkpointing=True,
    )
    est = gpu_check.planner_estimate(folder, cfg)
    assert est["attention"] == "eager" and est["total_gb"] > est["gb"]["overhead"] > 0
    assert est["flops_per_token"] > 0 and est["assumed_tflops"] == 400
