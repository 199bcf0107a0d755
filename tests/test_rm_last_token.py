"""The top layer computed at the last real token only (music.rm.last_token): the rewards of the full forward
within TOL, for every padding, bitwise the same at any thread count, and the full path wherever it does not apply.

TOL: the same function in other float32 operations (a [B, 1] query instead of [B, T], the head on one row). The
largest difference measured under ATEN_CPU_CAPABILITY=default, avx2 and avx512 on the embedded 12-layer RM
(rewards up to 2.5, batches of 1, 4 and 12) is 3.8e-6 (avx2; 1.9e-6 the others), so TOL = 1e-5 holds with a
margin of 2.6x; it is also the repository's float32 bound for padded reuse (tests/test_rm_frozen.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import conv, tiny_cfg

from music.rm import last_token
from music.rm.data import fit_conversation, pad_batch
from music.rm.frozen import FrozenBottom, HiddenStore
from music.rm.model import load_reward_model, reward_scores
from music.rm.score import score_conversations

TOL = 1e-5
CONVS = [conv(i, g, turns=1 + i % 3) for i in range(6) for g in (True, False)]


def _lora_model(tiny_backbone):
    cfg = tiny_cfg(tiny_backbone, lora_last_layers=1)  # 2 layers: the bottom one frozen, LoRA on the top one
    model, tok, _ = load_reward_model(cfg, device="cpu", seed=0)
    with torch.no_grad():  # LoRA B starts at 0 and the head at 0: make both do something
        for n, p in model.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_(0, 0.5)
    return model.eval(), tok


def _ids(tok):
    return [fit_conversation(tok, c, 256, source="t", record=i, field_name="m").ids for i, c in enumerate(CONVS)]


def _both(model, tok, bs):
    ids = _ids(tok)
    fb = FrozenBottom(model, 1, HiddenStore())
    full, fast = [], []
    with torch.inference_mode():
        for s in range(0, len(ids), bs):
            x, m = pad_batch(ids[s : s + bs], tok.pad_token_id)
            full += reward_scores(model, x, m).tolist()
            fast += fb.last_token_scores(ids[s : s + bs], x, m).tolist()
    return torch.tensor(full), torch.tensor(fast)


def test_rewards_match_the_full_forward_with_and_without_padding(tiny_backbone):
    model, tok = _lora_model(tiny_backbone)
    assert last_token.supports_last_token(model, 1)
    assert len(set(map(len, _ids(tok)))) > 1  # batches of 4 and 12 do pad
    for bs in (1, 4, len(CONVS)):
        full, fast = _both(model, tok, bs)
        assert full.abs().max() > 0.1  # the adapter and head make the rewards differ from 0
        assert (full - fast).abs().max().item() <= TOL, bs
    # the order of the rewards is what accuracy reads: the same pairs come out right
    full, fast = _both(model, tok, 4)
    assert [a > b for a, b in zip(full[::2], full[1::2])] == [a > b for a, b in zip(fast[::2], fast[1::2])]


def test_bitwise_the_same_at_any_thread_count(tiny_backbone):
    model, tok = _lora_model(tiny_backbone)
    kept = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _both(model, tok, 4)[1]
        torch.set_num_threads(2)
        two = _both(model, tok, 4)[1]
    finally:
        torch.set_num_threads(kept)
    assert torch.equal(one, two)


def test_unsupported_layers_take_the_full_path_bitwise(tiny_backbone, monkeypatch):
    model, tok = _lora_model(tiny_backbone)
    monkeypatch.setattr(last_token, "SUPPORTED_LAYERS", ())
    assert not last_token.supports_last_token(model, 1)
    ids = _ids(tok)
    x, m = pad_batch(ids[:4], tok.pad_token_id)
    fb = FrozenBottom(model, 1, HiddenStore())
    with torch.inference_mode():
        assert torch.equal(fb.last_token_scores(ids[:4], x, m), fb.scores(ids[:4], x, m))
    assert not last_token.supports_last_token(model, 0)  # nothing frozen: no reuse, no shortcut


def test_a_16_bit_rm_keeps_the_full_path(tiny_backbone):
    """The tolerance is measured in float32; in bfloat16 the two paths differ by ~1e-3, so it is not used there."""
    cfg = tiny_cfg(tiny_backbone, lora_last_layers=1, dtype="bfloat16")
    model, _, _ = load_reward_model(cfg, device="cpu", seed=0)
    assert not last_token.supports_last_token(model, 1)
    assert last_token.supports_last_token(_lora_model(tiny_backbone)[0], 1)


def test_scoring_uses_it_and_keeps_the_full_forwards_verdicts(tiny_backbone):
    model, tok = _lora_model(tiny_backbone)
    plain = score_conversations(model, tok, CONVS, max_length=256, batch_size=4)
    fast = score_conversations(
        model, tok, CONVS, max_length=256, batch_size=4, frozen=FrozenBottom(model, 1, HiddenStore())
    )
    assert max(abs(a - b) for a, b in zip(plain, fast)) <= TOL


@pytest.mark.slow
def test_the_embedded_rm_within_tol_embedded(tmp_path):
    """The default RM's shape (SmolLM2-135M cut to 12 layers, LoRA on the top one), on real conversations."""
    from music.config import TrainConfig

    cfg = TrainConfig(lora_last_layers=1, num_layers=12, max_length=512)
    model, tok, _ = load_reward_model(cfg, device="cpu", seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_(0, 0.05)
    model.eval()
    ids = [fit_conversation(tok, c, 512, source="t", record=i, field_name="m").ids for i, c in enumerate(CONVS)]
    fb = FrozenBottom(model, 11, HiddenStore())
    with torch.inference_mode():
        x, m = pad_batch(ids, tok.pad_token_id)
        full = reward_scores(model, x, m)
        fast = fb.last_token_scores(ids, x, m)
    assert (full - fast).abs().max().item() <= TOL
