"""Contrast method `retrieve`: a person's request from the training side, the nearest inside the window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FakeChat, WordOverlapEncoder, retrieval_project, write_seed_files

from music.config import ContrastConfig
from music.pairs.retrieve import (
    SOURCE_PREFIX,
    PoolRequest,
    held_out_conversations,
    nearest_in_band,
    request_pool,
)
from music.sources import RealConversation
from music.stages.contrast import run as run_contrast
from music.stages.seed import read_conversations, read_seeds
from music.stages.simulate import run as run_simulate
from music.store import load_records


def _conv(cid: str, *requests: str) -> RealConversation:
    msgs = []
    for i, r in enumerate(requests):
        msgs += [{"role": "user", "content": r}, {"role": "assistant", "content": f"reply {i} of {cid}"}]
    return RealConversation(cid, "sharegpt", msgs)


def test_the_pool_holds_no_held_out_request_by_id_or_by_content():
    held = _conv("held_0", "How do I bake bread at home?", "And what flour is best?")
    dev = _conv("dev_0", "Plan a trip to Rome")
    held_out = [(held.conversation_id, held.messages), (dev.conversation_id, dev.messages)]
    conversations = [
        _conv("a_0", "How do I bake a cake at home?"),
        held,
        _conv("held_2", "Another chunk of the held-out chat"),  # same base conversation (ShareGPT chunks)
        RealConversation("copy_0", "sharegpt", [dict(m) for m in held.messages]),  # a copy under another id
        _conv("b_0", "and what flour is best?"),  # a held-out person's request, as text (case and spaces aside)
        dev,
        _conv("c_0", "How do I bake a cake  at home?"),  # the same text as a_0 once normalised: kept once
        _conv("d_0", "x" * 41),  # longer than max_chars
        _conv("e_0", "Write a poem about bread", "Make it shorter"),  # its opening only: later turns lean on it
    ]
    pool = request_pool(conversations, held_out, max_chars=40)
    assert pool == [PoolRequest("How do I bake a cake at home?", "a_0"), PoolRequest("Write a poem about bread", "e_0")]


def test_held_out_conversations_cover_eval_seeds_whole_eval_and_dev_conversations(tmp_path):
    P = write_seed_files(tmp_path, n_train=2, n_eval=2)
    dev = {"conversation_id": "dev-1", "source": "fake", "messages": _conv("dev-1", "Dev request?").messages}
    Path(P.paths.seeds, "dev_conversations.jsonl").write_text(json.dumps(dev) + "\n")
    seeds = Path(P.paths.seeds)
    held = held_out_conversations(
        read_seeds(seeds / "eval.jsonl"),
        [
            *read_conversations(seeds / "eval_conversations.jsonl"),
            *read_conversations(seeds / "dev_conversations.jsonl"),
        ],
    )
    ids = [cid for cid, _ in held]
    assert ids == ["eval-conv0", "eval-conv1", "whole-eval-conv0", "whole-eval-conv1", "dev-1"]
    seed_msgs = dict(held)["eval-conv1"]
    assert seed_msgs[-1] == {"role": "user", "content": "Real next user 1?"}  # the real next request is held out too


def test_nearest_in_band_is_the_nearest_inside_the_window_and_never_the_own_conversation():
    pool = [
        PoolRequest("bake bread at home now", "p_0"),  # 4 of 5 words shared with the original: 0.8
        PoolRequest("bake bread at home", "own_3"),  # a chunk of the original's own conversation
        PoolRequest("bake bread today", "p_1"),  # 2 shared: 0.516
        PoolRequest("bake cakes", "p_2"),  # 1 shared: 0.316
        PoolRequest("paint walls", "p_3"),  # 0
        PoolRequest("bake bread fast", "p_4"),  # the same similarity as p_1: pool order breaks the tie
    ]
    original = "bake bread at home please"
    found = nearest_in_band(WordOverlapEncoder(), [original], ["own_0"], pool, [0.25, 0.79], k=3)
    assert [(r.conversation_id, s) for r, s in found[0]] == [("p_1", 0.516398), ("p_4", 0.516398), ("p_2", 0.316228)]
    wide = nearest_in_band(WordOverlapEncoder(), [original], ["other_0"], pool, [0.0, 1.0], k=2)
    assert [r.conversation_id for r, _ in wide[0]] == ["own_3", "p_0"]  # another conversation may use it
    assert nearest_in_band(WordOverlapEncoder(), [original], ["own_0"], pool, [0.9, 1.0], k=3) == [[]]


def test_retrieve_needs_a_window():
    with pytest.raises(ValueError, match="request_similarity"):
        ContrastConfig(method="retrieve", request_similarity=None).validate()
    ContrastConfig(method="retrieve", request_similarity=[0.25, 0.8]).validate()


def test_the_stage_answers_a_persons_request_from_the_training_side(tmp_path):
    P = retrieval_project(tmp_path)
    P.contrast.method, P.contrast.request_similarity = "retrieve", [0.3, 0.9]
    run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    report = run_contrast(
        P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), None), encoder=WordOverlapEncoder()
    )
    assert report["retrieval_pool"] == 3  # pool_0, pool_1, far_0
    for split in ("train", "eval"):
        pairs = load_records(Path(P.paths.pairs) / f"music_{split}")
        assert pairs, split
        for r in pairs:
            assert r["contrast_method"] == "retrieve"
            assert r["modified_request"] in {"Real next user story about dogs?", "Next user question on cats?"}
            source = r["models"]["contrast"]
            assert source.startswith(SOURCE_PREFIX) and source[len(SOURCE_PREFIX) :] in {"pool_0", "pool_1"}
            at = [i for i, m in enumerate(r["rejected"]) if m["role"] == "user"][r["divergence_turn"] - 1]
            assert r["rejected"][at]["content"] == r["chosen"][at]["content"]  # the person's request, both sides
            topic = r["modified_request"].rstrip("?").split()[-1]
            assert r["rejected"][at + 1]["content"].endswith(f"on {topic}.")  # the assistant answered the near miss
            assert len(r["rejected"]) == len(r["chosen"])  # the rejected branch went on
        assert report["methods"][f"music_{split}"]["kept_retrieve"] == len(pairs)
