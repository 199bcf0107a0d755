"""RewardScorer: input order, length-sorted batches, training's truncation rules, pad checks."""

from __future__ import annotations

import json

import pytest
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.errors import DataError
from music.rm.data import fit_conversation, pad_batch
from music.rm.model import reward_scores
from music.rm.score import RewardScorer, score_pairs


@pytest.fixture(scope="module")
def saved_rm(tiny_backbone, tmp_path_factory):
    from music.rm.train import train_reward_model

    out = tmp_path_factory.mktemp("rm") / "baseline"
    train_reward_model(tiny_cfg(tiny_backbone, max_steps=2, max_length=128), {"d": toy_pairs(8)}, out, progress=False)
    return out


CONVS = [conv(i, i % 2 == 0, turns=1 + i % 3) for i in range(9)]


@pytest.mark.slow
def test_scores_come_back_in_input_order(saved_rm):
    s = RewardScorer(saved_rm, batch_size=4)
    batched = s.score(CONVS)
    one_by_one = [s.score([c])[0] for c in CONVS]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert s.score(CONVS[::-1]) == pytest.approx(batched[::-1], abs=1e-5)
    assert len(set(round(x, 6) for x in batched)) > 1


@pytest.mark.slow
def test_uses_the_training_max_length_and_truncation(saved_rm):
    s = RewardScorer(saved_rm)
    assert s.max_length == 128  # read from train_metrics.json
    long = conv(0, True, turns=12)
    fit = fit_conversation(s.tokenizer, long, 128, source="t", record=0, field_name="messages")
    assert fit.turns_dropped > 0
    ids, mask = pad_batch([fit.ids], s.tokenizer.pad_token_id)
    import torch

    with torch.inference_mode():
        want = reward_scores(s.model, ids, mask).item()
    assert s.score([long])[0] == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_score_pairs_and_bad_input(saved_rm):
    s = RewardScorer(saved_rm)
    chosen, rejected = score_pairs(s, toy_pairs(3))
    assert len(chosen) == len(rejected) == 3
    with pytest.raises(DataError, match="record 1, field 'messages'"):
        s.score([CONVS[0], []])


@pytest.mark.slow
def test_a_config_pad_that_differs_from_the_tokenizer_is_refused(saved_rm, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved_rm, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["pad_token_id"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="pad_token_id"):
        RewardScorer(bad)
    with pytest.raises(FileNotFoundError):
        RewardScorer(tmp_path / "missing")
