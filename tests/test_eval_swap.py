"""Swapped history: like-for-like replacement, determinism, and what three kinds of scorer get."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from music.evaluate.items import Item, item_rows, score_items, summarize_rows
from music.evaluate.swap import LENGTH_TOLERANCE, load_eval_conversations, swap_pairs


def conversation(cid: str, n_turns: int, rng: random.Random) -> dict:
    msgs = []
    for t in range(n_turns):
        msgs.append({"role": "user", "content": f"{cid} question {t}"})
        msgs.append({"role": "assistant", "content": f"{cid} answer {t} " + "x" * rng.randint(20, 60)})
    return {"conversation_id": cid, "messages": msgs}


def convs(n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [conversation(f"c{i:02d}", 2 + i % 3, rng) for i in range(n)]


class HistoryBlindScorer:
    """Like a real RM that ignores the history: the score depends on the last reply, plus noise from the whole
    text (a last-token RM's hidden state always carries some), so the two conversations never tie."""

    def score(self, conversations):
        return [
            len(c[-1]["content"]) + int(hashlib.sha256(json.dumps(c).encode()).hexdigest()[:8], 16) / 16**8
            for c in conversations
        ]


class LengthScorer:
    def score(self, conversations):
        return [float(sum(len(m["content"]) for m in c)) for c in conversations]


class HistoryScorer:
    """+1 per assistant reply that belongs to this conversation (its id starts the first user message)."""

    def score(self, conversations):
        return [
            float(sum(m["content"].split()[0] == c[0]["content"].split()[0] for m in c if m["role"] == "assistant"))
            for c in conversations
        ]


def swap_items(conversations, max_distance=3, seed=0):
    pairs, _ = swap_pairs(conversations, max_distance=max_distance, seed=seed)
    return [Item("swap", f"{p.conversation_id}:{p.distance}", p.distance, p.intact, p.swapped) for p in pairs]


def accuracy_by_distance(scorer, items):
    rows = item_rows(items, score_items(scorer, items))
    return {d: v["accuracy"] for d, v in summarize_rows(rows)["tests"]["swap"]["by_distance"].items()}


def test_a_swap_replaces_one_reply_like_for_like():
    pairs, counts = swap_pairs(convs(), max_distance=3, seed=0)
    assert counts["pairs"] == len(pairs) > 100
    for p in pairs:
        diff = [i for i, (a, b) in enumerate(zip(p.intact, p.swapped)) if a != b]
        assert len(diff) == 1 and len(p.intact) == len(p.swapped)
        i = diff[0]
        assert p.swapped[i]["role"] == "assistant" and sum(m["role"] == "assistant" for m in p.intact[i:]) == p.distance
        assert p.donor_id != p.conversation_id and p.swapped[i]["content"].startswith(p.donor_id)
        old, new = len(p.intact[i]["content"]), len(p.swapped[i]["content"])
        assert abs(new - old) <= LENGTH_TOLERANCE * old
    again, _ = swap_pairs(convs(), max_distance=3, seed=0)
    other, _ = swap_pairs(convs(), max_distance=3, seed=1)
    assert [p.swapped for p in again] == [p.swapped for p in pairs]
    assert [p.swapped for p in other] != [p.swapped for p in pairs]


def test_no_donor_of_matching_length_is_skipped_and_counted():
    rng = random.Random(0)
    a, b = conversation("a", 2, rng), conversation("b", 2, rng)
    b["messages"][-1]["content"] = "b " + "y" * 500  # far longer than any of a's replies
    pairs, counts = swap_pairs([a, b], max_distance=2, seed=0)
    assert all(not (p.conversation_id == "b" and p.distance == 1) for p in pairs)
    assert counts["skipped_no_donor_by_distance"]["1"] >= 1


def test_a_history_blind_scorer_is_at_chance_not_at_zero():
    items = swap_items(convs(120))
    acc = accuracy_by_distance(HistoryBlindScorer(), items)
    early = [it for it in items if it.distance >= 2]
    assert len(early) > 150
    for d in ("2", "3"):
        assert 0.35 <= acc[d] <= 0.65, acc  # chance, within sampling error (n > 70 per distance)


def test_length_carries_no_signal_and_reading_the_history_does():
    items = swap_items(convs(120))
    for d, a in accuracy_by_distance(LengthScorer(), items).items():
        assert 0.35 <= a <= 0.65, (d, a)  # like for like: the swapped reply is as often longer as shorter
    assert set(accuracy_by_distance(HistoryScorer(), items).values()) == {1.0}


def test_needs_two_conversations():
    with pytest.raises(ValueError, match="two conversations"):
        swap_pairs(convs(1), max_distance=2, seed=0)


def test_loader_trims_a_trailing_user_turn(tmp_path):
    rec = conversation("x", 2, random.Random(0))
    rec["messages"].append({"role": "user", "content": "dangling"})
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(conversation("y", 1, random.Random(1))) + "\n")
    loaded = load_eval_conversations(path, limit=1)
    assert len(loaded) == 1 and loaded[0]["messages"][-1]["role"] == "assistant"


def test_swap_source_sharegpt_keeps_multi_turn_chats_one_chunk_each(tmp_path):
    from music.config import HeldoutConfig
    from music.errors import DataError
    from music.evaluate.swap import load_swap_conversations

    def chat(cid, turns, opening="How do I sort a list?"):
        msgs = []
        for t in range(turns):
            msgs += [
                {"from": "human", "value": opening if t == 0 else f"and then {t}?"},
                {"from": "gpt", "value": f"reply {t}"},
            ]
        return {"id": cid, "conversations": msgs}

    recs = [
        chat("a_0", 1),
        chat("b_0", 3),
        chat("b_1", 2),
        chat("c_0", 2, opening="Sure, I can help with that."),
        chat("d_0", 2, opening="How do I sort a dict?"),
        chat("e_0", 2, opening="  how do I SORT a dict? "),  # d_0's request again (case, spaces): one chat per request
    ]
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    convs, read = load_swap_conversations(f"sharegpt:{path}", tmp_path / "unused.jsonl", limit=10)
    assert read == path and [c["conversation_id"] for c in convs] == [
        "b_0",
        "d_0",
    ]  # one turn, second chunk, roles swapped, the same first request: out
    assert load_swap_conversations(f"sharegpt:{path}", "", limit=1)[0][0]["conversation_id"] == "b_0"
    with pytest.raises(FileNotFoundError, match="swap_source"):
        load_swap_conversations(f"file:{tmp_path / 'absent.jsonl'}", "", limit=1)
    for bad in ("hub:x", "sharegpt:", "nonsense"):
        with pytest.raises(DataError, match="swap_source"):
            HeldoutConfig(swap_source=bad)


class TurnScorer:
    """+1 per assistant reply that answers the user message before it (the reply names the question's turn)."""

    def score(self, conversations):
        return [
            float(
                sum(
                    c[i]["content"].split()[2] == c[i - 1]["content"].split()[2]
                    for i in range(1, len(c))
                    if c[i]["role"] == "assistant"
                )
            )
            for c in conversations
        ]


def test_same_conversation_donor_holds_the_topic_and_needs_the_turn():
    plain, plain_counts = swap_pairs(convs(), max_distance=3, seed=0)
    both, counts = swap_pairs(convs(), max_distance=3, seed=0, same_conversation=True)
    other = [p for p in both if p.donor_kind == "other"]
    same = [p for p in both if p.donor_kind == "same"]
    # the other-conversation swaps are unchanged by the switch
    assert [(p.conversation_id, p.distance, p.swapped) for p in other] == [
        (p.conversation_id, p.distance, p.swapped) for p in plain
    ]
    assert counts["same_conversation_pairs"] == len(same) > 20 and all(p.test == "swap_same" for p in same)
    assert "same_conversation_pairs" not in plain_counts
    for p in same:
        i = next(i for i, (a, b) in enumerate(zip(p.intact, p.swapped)) if a != b)
        new = p.swapped[i]["content"]
        assert p.donor_id == p.conversation_id and new.startswith(p.conversation_id)  # the same chat: the topic held
        assert new != p.intact[i]["content"] and new in [m["content"] for m in p.intact if m["role"] == "assistant"]
        assert abs(len(new) - len(p.intact[i]["content"])) <= LENGTH_TOLERANCE * len(p.intact[i]["content"])
    items = [Item(p.test, p.item_id, p.distance, p.intact, p.swapped) for p in same]
    topic = item_rows(items, score_items(HistoryScorer(), items))  # reads the topic only: ties, never right
    assert sum(r["correct"] for r in topic) == 0
    turn = item_rows(items, score_items(TurnScorer(), items))  # reads which request each reply answers
    assert all(r["correct"] for r in turn)
    # a conversation whose replies differ too much in length gets no same-conversation swap (counted)
    rng = random.Random(0)
    a, b = conversation("a", 2, rng), conversation("b", 2, rng)
    a["messages"][1]["content"] = "a answer 0 " + "y" * 300
    pairs, counts = swap_pairs([a, b], max_distance=2, seed=0, same_conversation=True)
    assert not any(p.conversation_id == "a" and p.donor_kind == "same" for p in pairs)
    assert counts["same_conversation_skipped_by_distance"]["1"] >= 1
