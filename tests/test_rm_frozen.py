"""Reuse of the frozen bottom layers (train.reuse_frozen_layers, music.rm.frozen): the same rewards and the
same training as a run without reuse, each bottom state computed once per conversation.

Tolerance: with batches of one (nothing padded) the reuse path runs exactly the operations of a run without
reuse, and the tests compare bitwise. With padded batches a run without reuse computes the bottom layers on
[B, T] padded input, which moves float32 results in the last bits; the tests check |difference| <= TOL (1e-5
absolute on rewards and loss; the largest difference measured under ATEN_CPU_CAPABILITY=default, avx2 and
avx512 is 1e-6) and that it is of the size padding itself causes in a run without reuse.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.rm.data import fit_conversation, pad_batch
from music.rm.frozen import FrozenBottom, HiddenStore, frozen_layer_count, saved_frozen_layers
from music.rm.model import load_reward_model, reward_scores
from music.rm.score import RewardScorer, score_conversations
from music.rm.train import run_training, save_reward_model

TOL = 1e-5
CONVS = [conv(i, g, turns=1 + i % 3) for i in range(6) for g in (True, False)]


def test_which_layers_are_frozen():
    assert frozen_layer_count(True, 6, 12) == 6  # the default RM: LoRA on the top 6 of 12
    assert frozen_layer_count(True, None, 12) == 0  # LoRA on every layer
    assert frozen_layer_count(True, 12, 12) == 0
    assert frozen_layer_count(False, 6, 12) == 0  # full fine-tuning trains every layer


def test_training_reuse_only_on_the_transformers_backend_and_when_switched_on():
    from music.config import TrainConfig
    from music.rm.frozen import frozen_bottom_for_training

    cfg = TrainConfig()
    assert cfg.reuse_frozen_layers  # on by default
    # Unsloth (GPU) patches the layers and runs its own kernels: no reuse there
    assert frozen_bottom_for_training(cfg, None, {"backend": "unsloth", "num_layers": 12}) is None
    off = TrainConfig(reuse_frozen_layers=False)
    assert frozen_bottom_for_training(off, None, {"backend": "transformers", "num_layers": 12}) is None


def _lora_model(tiny_backbone, **kw):
    cfg = tiny_cfg(tiny_backbone, lora_last_layers=1, **kw)  # 2 layers: the bottom one frozen
    model, tok, info = load_reward_model(cfg, device="cpu", seed=0)
    with torch.no_grad():  # LoRA B starts at 0: make the adapter do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model.eval(), tok


def _ids(tok):
    return [fit_conversation(tok, c, 256, source="t", record=i, field_name="m").ids for i, c in enumerate(CONVS)]


def test_same_rewards_bitwise_with_batches_of_one_and_within_tol_when_padded(tiny_backbone):
    model, tok = _lora_model(tiny_backbone)
    ids = _ids(tok)
    fb = FrozenBottom(model, 1, HiddenStore())
    with torch.no_grad():
        full = {}
        reuse = {}
        for bs in (1, 4, len(ids)):
            a, b = [], []
            for s in range(0, len(ids), bs):
                x, m = pad_batch(ids[s : s + bs], tok.pad_token_id)
                a += reward_scores(model, x, m).tolist()
                b += fb.scores(ids[s : s + bs], x, m).tolist()
            full[bs], reuse[bs] = torch.tensor(a), torch.tensor(b)
    assert torch.equal(full[1], reuse[1])  # the same float32 ops on the same tokens
    assert len(set(map(len, ids))) > 1  # the larger batches do pad
    for bs in (4, len(ids)):
        diff = (full[bs] - reuse[bs]).abs().max().item()
        pad_effect = (full[bs] - full[1]).abs().max().item()  # what padding alone does without reuse
        assert diff <= TOL and (reuse[bs] - full[1]).abs().max().item() <= TOL, (bs, diff, pad_effect)
    assert fb.store.misses == len(set(map(tuple, ids))) and fb.store.hits > 0  # computed once per conversation


def test_a_warm_store_gives_bitwise_the_same_scores(tiny_backbone):
    model, tok = _lora_model(tiny_backbone)
    cold = score_conversations(
        model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, HiddenStore())
    )
    warm_store = HiddenStore()
    score_conversations(
        model, tok, CONVS[::-1], max_length=256, batch_size=3, frozen=FrozenBottom(model, 1, warm_store)
    )
    warm = score_conversations(
        model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, warm_store)
    )
    assert warm == cold  # other batches filled the store: a state never depends on its batch
    plain = score_conversations(model, tok, CONVS, max_length=256, batch_size=4)
    assert max(abs(a - b) for a, b in zip(plain, warm)) <= TOL


def test_the_key_follows_the_bottom_weights(tiny_backbone):
    model, _ = _lora_model(tiny_backbone)
    key = FrozenBottom(model, 1, HiddenStore()).key
    inner = model.get_base_model().model
    with torch.no_grad():
        inner.layers[1].mlp.up_proj.base_layer.weight.add_(1.0)  # above the frozen layer: same key
        assert FrozenBottom(model, 1, HiddenStore()).key == key
        inner.layers[0].mlp.up_proj.weight.add_(1.0)  # a frozen layer changed: another key
        assert FrozenBottom(model, 1, HiddenStore()).key != key
    key = FrozenBottom(model, 1, HiddenStore()).key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # other kernels' splits may round differently: not shared
        assert FrozenBottom(model, 1, HiddenStore()).key != key
    finally:
        torch.set_num_threads(threads)


def _train_three_ways(tiny_backbone, pairs, batch_size):
    """Without reuse, with reuse, with reuse and gradient checkpointing: 3 epochs at learning rate 1e-2."""
    runs = {}
    for reuse, ckpt in ((False, False), (True, False), (True, True)):
        cfg = tiny_cfg(
            tiny_backbone,
            lora_last_layers=1,
            max_steps=None,
            epochs=3,
            batch_size=batch_size,
            learning_rate=1e-2,
            reuse_frozen_layers=reuse,
            gradient_checkpointing=ckpt,
        )
        runs[reuse, ckpt] = run_training(cfg, {"d": pairs}, progress=False)
    return runs[False, False], runs[True, False], runs[True, True]


@pytest.mark.slow
def test_training_with_reuse_is_bitwise_training_without_when_nothing_is_padded(tiny_backbone, smol_tok):
    """Batches of one pair whose sides have the same length: the reuse path runs exactly the operations of a
    run without reuse, so 24 steps give bitwise the same losses, weights and scores (checked under
    ATEN_CPU_CAPABILITY=default, avx2 and avx512: any rounding difference would show here)."""
    pairs = toy_pairs(8, turns=2)
    lengths = [
        tuple(
            len(fit_conversation(smol_tok, c, 256, source="t", record=i, field_name="m").ids)
            for c in (p.chosen, p.rejected)
        )
        for i, p in enumerate(pairs)
    ]
    assert all(a == b for a, b in lengths)  # the premise: no pair is padded
    assert len(set(lengths)) > 1  # yet the pairs differ in length
    off, on, on_ckpt = _train_three_ways(tiny_backbone, pairs, batch_size=1)
    assert off.timing["frozen_layers_reused"] is None
    assert on.timing["frozen_layers_reused"]["frozen_layers"] == 1
    assert len(on.curve) == len(off.curve) == len(on_ckpt.curve) == 24
    assert [(r["loss"], r["accuracy"]) for r in on.curve] == [(r["loss"], r["accuracy"]) for r in off.curve]
    assert [r["loss"] for r in on_ckpt.curve] == [r["loss"] for r in off.curve]
    assert off.curve[-1]["loss"] < off.curve[0]["loss"]  # it did learn: LoRA on the top layer and the head train
    p_off = dict(off.model.named_parameters())
    moved = 0
    for run in (on, on_ckpt):
        for n, p in run.model.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, p_off[n]), n
                moved += "lora_B" in n and bool(p.abs().sum() > 0)
    assert moved  # LoRA (zero at init) trained
    eval_convs = [conv(i, g, turns=2) for i in range(20, 24) for g in (True, False)]
    s_off = score_conversations(off.model, off.tokenizer, eval_convs, max_length=256)
    assert score_conversations(on.model, on.tokenizer, eval_convs, max_length=256) == s_off


@pytest.mark.slow
def test_training_with_reuse_on_padded_batches_keeps_the_losses_within_tol(tiny_backbone):
    """Padded batches (two pairs of different lengths): a run without reuse computes the bottom layers on the
    padded batch, which moves float32 results in the last bits. Measured over 12 steps at learning rate 1e-2
    on an AMD EPYC (AVX-512) under ATEN_CPU_CAPABILITY=default / avx2 / avx512: the largest loss difference
    was 1.0e-7 / 1.2e-7 / 9.9e-7 (TOL is 10x the largest), and the trained weights differed by up to
    3.0e-6 / 2.6e-5 / 2.6e-5 (the steps amplify the last bits, so weights are not compared here: the
    unpadded test above compares them bitwise)."""
    off, on, on_ckpt = _train_three_ways(tiny_backbone, toy_pairs(8, turns=2), batch_size=2)
    assert on.timing["frozen_layers_reused"]["frozen_layers"] == 1
    assert len(on.curve) == len(off.curve) == 12
    for run in (on, on_ckpt):
        for a, b in zip(off.curve, run.curve):
            assert abs(a["loss"] - b["loss"]) <= TOL and a["accuracy"] == b["accuracy"], (a, b)
    assert off.curve[-1]["loss"] < off.curve[0]["loss"]


@pytest.mark.slow
def test_a_saved_rm_says_its_frozen_layers_and_scores_reuse_across_rms(tiny_backbone, tmp_path):
    pairs = {"d": toy_pairs(6)}
    dirs = []
    for seed in (0, 1):
        cfg = tiny_cfg(tiny_backbone, lora_last_layers=1, max_steps=2, seeds=[seed])
        out = run_training(cfg, pairs, progress=False, seed=seed)
        save_reward_model(out, tmp_path / f"seed{seed}")
        dirs.append(tmp_path / f"seed{seed}")
    assert saved_frozen_layers(dirs[0]) == 1
    first = RewardScorer(dirs[0], batch_size=4)
    assert first.frozen is not None and first.frozen.n_frozen == 1
    first.frozen.store = HiddenStore()
    with_reuse = first.score(CONVS)
    second = RewardScorer(dirs[1], batch_size=4)
    second.frozen.store = first.frozen.store
    assert second.frozen.key == first.frozen.key  # the same backbone below the LoRA layers
    misses = first.frozen.store.misses
    second.score(CONVS)
    assert first.frozen.store.misses == misses  # the second RM computed no bottom layer
    plain = RewardScorer(dirs[0], batch_size=4, reuse_frozen=False)
    assert plain.frozen is None
    assert max(abs(a - b) for a, b in zip(plain.score(CONVS), with_reuse)) <= TOL
    # a model trained with the switch off is scored without reuse
    metrics = json.loads((dirs[0] / "train_metrics.json").read_text())
    metrics["config"]["reuse_frozen_layers"] = False
    (dirs[0] / "train_metrics.json").write_text(json.dumps(metrics))
    assert RewardScorer(dirs[0], batch_size=4).frozen is None


@pytest.mark.slow
def test_no_reuse_for_full_fine_tuning_or_lora_on_every_layer(tiny_backbone, tmp_path):
    for kw in ({"lora": False}, {"lora_last_layers": None}):
        cfg = tiny_cfg(tiny_backbone, max_steps=1, **kw)
        out = run_training(cfg, {"d": toy_pairs(4)}, progress=False)
        assert out.timing["frozen_layers_reused"] is None, kw
        save_reward_model(out, tmp_path / str(len(kw)) / ("full" if "lora" in kw else "all"))
        assert saved_frozen_layers(tmp_path / str(len(kw)) / ("full" if "lora" in kw else "all")) == 0


def test_files_share_the_states_between_processes_bitwise_and_bounded(tiny_backbone, tmp_path):
    model, tok = _lora_model(tiny_backbone)
    first = HiddenStore()
    first.use_folder(tmp_path / "hidden")
    cold = score_conversations(model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, first))
    files = sorted((tmp_path / "hidden").rglob("*.pt"))
    assert len(files) == len(set(map(tuple, _ids(tok))))
    later = HiddenStore()  # another process: nothing in memory, the same folder
    later.use_folder(tmp_path / "hidden")
    fb = FrozenBottom(model, 1, later)
    assert score_conversations(model, tok, CONVS, max_length=256, batch_size=4, frozen=fb) == cold  # bitwise
    assert fb.compute_seconds == 0.0 and later.disk_hits == len(files)
    files[0].write_bytes(b"not a tensor file")  # a broken file is computed again, not trusted
    again = HiddenStore()
    again.use_folder(tmp_path / "hidden")
    assert (
        score_conversations(model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, again))
        == cold
    )
    assert again.disk_hits == len(files) - 1
    small = HiddenStore()
    small.use_folder(tmp_path / "small", max_disk_bytes=1)  # the bound: nothing fits, nothing is written
    score_conversations(model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, small))
    assert not list((tmp_path / "small").rglob("*.pt"))
