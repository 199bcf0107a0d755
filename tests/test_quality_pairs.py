"""Held-out quality twins: the same strong/weak replies at the last turn and one turn before it."""

from __future__ import annotations

from helpers import FakeChat

from music.chat import ChatReply
from music.pairs.quality_twins import mtbench_twins, sharegpt_twins
from music.schema import first_difference_distance, pair_record
from music.stages.seed import Seed

QUESTIONS = [
    {"question_id": 101, "category": "reasoning", "turns": ["Q1 of 101?", "Q2 of 101?"], "reference": None},
    {"question_id": 102, "category": "reasoning", "turns": ["Q1 of 102?", "Q2 of 102?"], "reference": None},
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."], "reference": None},
]
REFERENCES = {101: ["Reference answer one.", "Reference answer two."], 102: ["R1 " + "x" * 3000, "R2."]}


def test_mtbench_twins_put_the_same_difference_at_two_distances():
    records, counts = mtbench_twins(QUESTIONS, REFERENCES, FakeChat("fake:assistant"), seed=0, max_chars=2000)
    assert counts == {"questions_with_references": 2, "failed": 0, "too_long": 1, "kept_questions": 1}  # 102 too long
    early, last = records
    assert early["pair_id"] == "quality-mtbench-101-early" and last["pair_id"] == "quality-mtbench-101-last"
    assert first_difference_distance(early["chosen"], early["rejected"]) == 2
    assert first_difference_distance(last["chosen"], last["rejected"]) == 1
    assert early["chosen"] == last["chosen"]  # both twins prefer the all-reference conversation
    assert early["chosen"][1]["content"] == "Reference answer one." and early["rejected"][1]["content"].startswith(
        "Answer "
    )
    assert early["rejected"][2:] == early["chosen"][2:]  # after the weak first answer, everything is identical
    assert last["rejected"][:3] == last["chosen"][:3] and last["rejected"][3]["content"].startswith("Answer ")
    assert early["source"] == last["source"] == "mtbench" and early["kind"] == "quality"


def test_a_question_too_long_with_its_references_alone_is_never_generated():
    seen = []

    def record(messages, seed):
        seen.append(messages[-1]["content"])

    mtbench_twins(QUESTIONS, REFERENCES, FakeChat("fake:assistant", script=record), seed=0, max_chars=2000)
    assert seen and not any("102" in text for text in seen)


def test_a_failed_weak_answer_drops_the_question():
    def fail_102(messages, seed):
        return ChatReply(None, "error", error="boom") if "Q1 of 101?" in messages[-1]["content"] else None

    records, counts = mtbench_twins(
        QUESTIONS[:1], REFERENCES, FakeChat("fake:assistant", script=fail_102), seed=0, max_chars=5000
    )
    assert records == [] and counts["failed"] == 1


def test_sharegpt_twins_append_the_real_following_turn():
    ctx = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    nxt = [{"role": "user", "content": "Boil an egg?"}]
    after = [{"role": "user", "content": "And soft?"}, {"role": "assistant", "content": "Six minutes."}]
    d = pair_record(
        chosen=[*ctx, *nxt, {"role": "assistant", "content": "Nine minutes."}],
        rejected=[*ctx, *nxt, {"role": "assistant", "content": "Eggs are nice."}],
        pair_id="d-c1:1",
        kind="d",
        seed_id="c1:1",
        conversation_id="c1",
        original_request="Boil an egg?",
    )
    d2 = {**d, "pair_id": "d-c2:1", "seed_id": "c2:1", "conversation_id": "c2"}
    seeds = [
        Seed("c1:1", "c1", "sharegpt", "eval", ctx, "Boil an egg?", "Nine minutes.", after),
        Seed("c2:1", "c2", "sharegpt", "eval", ctx, "Boil an egg?", "Nine minutes.", []),
    ]
    twins = sharegpt_twins([d, d2], seeds)
    assert [t["pair_id"] for t in twins] == [
        "quality-sharegpt-c1:1-last",
        "quality-sharegpt-c1:1-early",
        "quality-sharegpt-c2:1-last",
    ]  # c2 has no following turn
    last, early = twins[:2]
    assert (
        last["chosen"] == d["chosen"]
        and early["chosen"] == d["chosen"] + after
        and early["rejected"] == d["rejected"] + after
    )
    assert early["turns_after_divergence"] == 1 and last["turns_after_divergence"] == 0
    assert early["conversation_id"] == "c1"  # the disjointness check sees the source conversation
