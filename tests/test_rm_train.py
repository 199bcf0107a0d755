"""The trainer: Bradley-Terry loss, schedule, learning, determinism, resume after an interruption,
and a saved checkpoint (base + unmerged LoRA adapter) that reloads with the same scores (the LoRA head saved)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.config import EMBEDDED_MODEL
from music.rm.model import score_head
from music.rm.score import RewardScorer, score_conversations
from music.rm.train import bt_loss, lr_lambda, run_training, save_reward_model, train_reward_model

EVAL = [conv(i, g, turns=2) for i in range(20, 24) for g in (True, False)]


def test_bt_loss_values_margin_centering_and_ties():
    c, r = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    loss, acc = bt_loss(c, r)
    want = -torch.nn.functional.logsigmoid(c - r).mean()
    assert loss.item() == pytest.approx(want.item())
    assert acc.item() == pytest.approx(1 / 3)  # the tie counts as wrong
    lm, _ = bt_loss(c, r, margin=1.0)
    assert lm.item() == pytest.approx(-torch.nn.functional.logsigmoid(c - r - 1.0).mean().item())
    lc, _ = bt_loss(c, r, center_coef=0.1)
    assert lc.item() == pytest.approx(want.item() + 0.1 * ((c + r) ** 2).mean().item())


def test_linear_warmup_then_decay_to_zero():
    f = lr_lambda(10, 0.2)
    vals = [f(s) for s in range(10)]
    assert vals[0] < vals[1] < vals[2] == 1.0
    assert all(a > b for a, b in zip(vals[2:], vals[3:])) and vals[-1] == pytest.approx(1 / 8)  # 0 at step 10


@pytest.mark.slow
def test_training_learns_and_trains_the_head(tiny_backbone):
    cfg = tiny_cfg(tiny_backbone, max_steps=None, epochs=4, batch_size=4)
    pairs = {"d": toy_pairs(16)}
    out = run_training(cfg, pairs, progress=False)
    curve = out.curve
    assert len(curve) == 16 and curve[-1]["step"] == 16
    assert out.metrics["final_loss"] < 0.5 < curve[0]["loss"]
    scores = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    assert all(scores[k] > scores[k + 1] for k in range(0, len(scores), 2))  # unseen pairs
    from music.rm.model import load_reward_model

    init, _, _ = load_reward_model(cfg)
    assert not torch.allclose(score_head(init).weight, score_head(out.model).weight)


@pytest.mark.slow
def test_same_seed_same_scores_other_seed_differs(tiny_backbone):
    pairs = {"d": toy_pairs(12)}
    s = [
        score_conversations(
            run_training(tiny_cfg(tiny_backbone), pairs, progress=False, seed=k).model,
            *_tok(tiny_backbone),
            EVAL,
            max_length=256,
        )
        for k in (0, 0, 1)
    ]
    assert s[0] == s[1]
    assert s[0] != s[2]


def _tok(backbone):
    from music.models import load_tokenizer

    return (load_tokenizer(backbone, padding_side="right"),)


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_backbone, tmp_path):
    cfg = tiny_cfg(tiny_backbone, max_steps=7, save_every=2, lora_dropout=0.1, grad_accum=2, batch_size=2)
    pairs = {"d": toy_pairs(10), "music": toy_pairs(8, "music", turns=2)}
    ref = train_reward_model(cfg, pairs, tmp_path / "ref", variant="music", progress=False)

    def stop_at_5(step, row):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_reward_model(
            cfg,
            pairs,
            tmp_path / "out",
            resume_dir=tmp_path / "resume",
            variant="music",
            callback=stop_at_5,
            progress=False,
        )
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert len(list((tmp_path / "resume").glob("music-*/checkpoint.pt"))) == 1
    steps_run = []
    got = train_reward_model(
        cfg,
        pairs,
        tmp_path / "out",
        resume_dir=tmp_path / "resume",
        variant="music",
        callback=lambda s, r: steps_run.append(s),
        progress=False,
    )
    assert got["timing"]["resumed_from_step"] == 4 and steps_run == [5, 6, 7]
    assert ref["timing"]["resumed_from_step"] is None
    assert got["fingerprint"] == ref["fingerprint"] and got["steps"] == ref["steps"]
    for key in ("final_loss", "final_accuracy", "last_step_loss"):
        assert got[key] == pytest.approx(ref[key], abs=1e-5), key
    assert list((tmp_path / "resume").iterdir()) == []  # cleaned after success
    a = RewardScorer(tmp_path / "ref").score(EVAL)
    b = RewardScorer(tmp_path / "out").score(EVAL)
    assert a == pytest.approx(b, abs=1e-5)
    ref_curve = list(csv.DictReader(open(tmp_path / "ref" / "curve.csv")))
    got_curve = list(csv.DictReader(open(tmp_path / "out" / "curve.csv")))
    assert [float(r["loss"]) for r in ref_curve] == pytest.approx([float(r["loss"]) for r in got_curve], abs=1e-5)


@pytest.mark.slow
def test_saved_model_reloads_with_same_scores(tiny_backbone, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = tiny_cfg(tiny_backbone, max_steps=4)
    pairs = {"d": toy_pairs(8), "music": toy_pairs(8, "music")}
    out = run_training(cfg, pairs, variant="music", progress=False)
    before_merge = score_conversations(out.model, out.tokenizer, EVAL, max_length=256)
    merged = save_reward_model(out, tmp_path / "rm")
    in_memory = score_conversations(merged, out.tokenizer, EVAL, max_length=256)
    reloaded = RewardScorer(tmp_path / "rm").score(EVAL)
    assert in_memory == pytest.approx(reloaded, abs=1e-5)
    assert before_merge == pytest.approx(reloaded, abs=1e-4)
    # the plain transformers path (peft installed) loads the base, the LoRA adapter beside it and the trained head
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert type(plain).__name__ == "LlamaForSequenceClassification" and plain.config.num_labels == 1
    assert plain.config.pad_token_id == tok.pad_token_id == 0 and tok.chat_template
    assert any("lora_B" in k for k in plain.state_dict())  # unmerged
    assert score_conversations(plain, tok, EVAL, max_length=256) == pytest.approx(reloaded, abs=1e-6)
    metrics = json.loads((tmp_path / "rm" / "train_metrics.json").read_text())
    assert metrics["pairs_per_kind"] == {"d": 8, "music": 8} and metrics["backend"]["backend"] == "transformers"
    assert math.isfinite(metrics["final_loss"]) and out.timing["tokens_per_s"] > 0
    # wall-clock numbers never reach the saved folder: a rerun writes the same bytes
    assert not {"train_seconds", "seconds_per_step", "tokens_per_s", "resumed_from_step", "timing"} & set(metrics)
    rows = list(csv.DictReader(open(tmp_path / "rm" / "curve.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and set(rows[0]) == {"step", "loss", "accuracy"}


@pytest.mark.slow
def test_full_finetuning_saves_and_reloads(tiny_backbone, tmp_path):
    cfg = tiny_cfg(tiny_backbone, lora=False, max_steps=2, learning_rate=1e-3)
    train_reward_model(cfg, {"d": toy_pairs(8)}, tmp_path / "rm", progress=False)
    assert len(RewardScorer(tmp_path / "rm").score(EVAL)) == len(EVAL)


@pytest.mark.slow
def test_embedded_smollm_cut_to_two_layers_end_to_end(tmp_path):
    cfg = tiny_cfg(EMBEDDED_MODEL, num_layers=2, max_steps=2, batch_size=2, learning_rate=1e-3)
    out = run_training(cfg, {"d": toy_pairs(4)}, progress=False)
    assert out.metrics["backend"]["num_layers"] == 2 and out.metrics["backend"]["pad_token"] == "<|endoftext|>"
    merged = save_reward_model(out, tmp_path / "rm")
    mem = score_conversations(merged, out.tokenizer, EVAL[:4], max_length=256)
    assert RewardScorer(tmp_path / "rm").score(EVAL[:4]) == pytest.approx(mem, abs=1e-5)
