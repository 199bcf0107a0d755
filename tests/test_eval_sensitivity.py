"""Corrupting one earlier assistant turn: structure, determinism, and what two kinds of RM score."""

from __future__ import annotations

import json

import pytest

from music.evaluate.sensitivity import corrupt, load_eval_conversations, sensitivity_accuracy


def conversation(cid, n_turns):
    msgs = []
    for t in range(n_turns):
        msgs += [{"role": "user", "content": f"{cid} question {t}"}, {"role": "assistant", "content": f"{cid} answer {t}"}]
    return {"conversation_id": cid, "messages": msgs}


CONVS = [conversation("alpha", 4), conversation("beta", 2), conversation("gamma", 3)]


class LastReplyScorer:
    def score(self, conversations):
        return [float(len(c[-1]["content"])) for c in conversations]


class HistoryScorer:
    """+1 per assistant reply that belongs to this conversation (its id is the first user word)."""

    def score(self, conversations):
        return [float(sum(m["content"].startswith(c[0]["content"].split()[0]) for m in c if m["role"] == "assistant"))
                for c in conversations]


def test_corruption_replaces_exactly_one_assistant_turn():
    pairs = corrupt(CONVS, max_distance=3, seed=0)
    assert [(p.conversation_id, p.distance) for p in pairs] == [
        ("alpha", 1), ("alpha", 2), ("alpha", 3), ("beta", 1), ("beta", 2), ("gamma", 1), ("gamma", 2), ("gamma", 3)]
    for p in pairs:
        diff = [i for i, (a, b) in enumerate(zip(p.intact, p.corrupted)) if a != b]
        assert len(diff) == 1 and len(p.intact) == len(p.corrupted)
        i = diff[0]
        assert p.corrupted[i]["role"] == "assistant"
        assert sum(m["role"] == "assistant" for m in p.intact[i:]) == p.distance
        assert p.donor_id != p.conversation_id and p.corrupted[i]["content"].startswith(p.donor_id)
    assert [p.corrupted for p in corrupt(CONVS, max_distance=3, seed=0)] == [p.corrupted for p in pairs]
    assert [p.corrupted for p in corrupt(CONVS, max_distance=3, seed=1)] != [p.corrupted for p in pairs]


def test_last_reply_rm_is_blind_to_history_and_history_rm_is_not():
    blind = sensitivity_accuracy(LastReplyScorer(), CONVS, max_distance=3, seed=0)
    assert blind["by_distance"]["2"]["accuracy"] == 0.0  # intact == corrupted at the end: tie = wrong
    assert blind["by_distance"]["3"]["accuracy"] == 0.0
    seeing = sensitivity_accuracy(HistoryScorer(), CONVS, max_distance=3, seed=0)
    assert all(v["accuracy"] == 1.0 for v in seeing["by_distance"].values())
    assert seeing["all"]["n"] == 8 and seeing["n_conversations"] == 3


def test_needs_two_conversations():
    with pytest.raises(ValueError, match="two conversations"):
        corrupt(CONVS[:1], max_distance=2, seed=0)


def test_loader_trims_a_trailing_user_turn(tmp_path):
    rec = conversation("x", 2)
    rec["messages"].append({"role": "user", "content": "dangling"})
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(conversation("y", 1)) + "\n")
    convs = load_eval_conversations(path, limit=1)
    assert len(convs) == 1 and convs[0]["messages"][-1]["role"] == "assistant"
