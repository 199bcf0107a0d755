"""Each filter fires on the failure it names, the first failing reason is the one counted, and the
report renders as a table."""

from __future__ import annotations

import pytest

from music.config import ContrastConfig
from music.pairs.filters import (
    REASONS,
    apply_filters,
    assistant_leaks,
    first_failure,
    report_frame,
    report_markdown,
    user_leaks,
)

CTX = [{"role": "user", "content": "How do I make braised pork belly?"}]


def event(role="assistant", text="Fine answer.", finish="stop", trimmed=False, branch="rejected"):
    return {
        "branch": branch,
        "turn": 1,
        "role": role,
        "finish_reason": finish,
        "raw": text,
        "text": text,
        "trimmed": trimmed,
        "error": None,
        "method": None,
    }


def cand(
    events=None,
    failure=None,
    kind="music",
    chosen="Braise it.",
    rejected="Twice-cooked: fry it.",
    original="How do I make braised pork belly?",
    modified="How do I make twice-cooked pork?",
):
    return {
        "fields": {
            "kind": kind,
            "chosen": CTX + [{"role": "assistant", "content": chosen}],
            "rejected": CTX + [{"role": "assistant", "content": rejected}],
            "original_request": original,
            "modified_request": modified,
        },
        "events": events if events is not None else [event(text=rejected)],
        "failure": failure,
        "notes": {},
    }


CFG = ContrastConfig(max_reply_chars=100)


@pytest.mark.parametrize(
    "candidate,reason",
    [
        (cand(), None),
        (cand(failure="generation_error", events=[]), "generation_error"),
        (cand(events=[event(finish="error", text="")]), "generation_error"),
        (cand(events=[event(text="  ")]), "empty_reply"),
        (cand(failure="empty_reply", events=[]), "empty_reply"),
        (cand(modified=None), "modified_request"),
        (cand(modified="how do I make braised pork belly"), "modified_request"),  # same up to case/punctuation
        (cand(failure="modified_request"), "modified_request"),
        (cand(kind="d", modified=None), None),  # D pairs have no modified request
        (cand(events=[event(finish="length", trimmed=False)]), "truncated"),
        (cand(events=[event(finish="length", trimmed=True)]), None),  # trimmed to a full sentence: kept
        (cand(rejected="Braise it."), "identical"),
        (cand(events=[event(role="user", text="Sure, here is the recipe you asked for.")]), "role_leakage"),
        (cand(events=[event(role="user", text="As an AI, I can help.")]), "role_leakage"),
        (cand(events=[event(text="Fry it.\nUser: thanks!")]), "role_leakage"),
        (cand(events=[event(text="x" * 101)]), "over_length"),
    ],
)
def test_each_reason(candidate, reason):
    assert first_failure(candidate, CFG) == reason


def test_drop_truncated_also_drops_trimmed_replies():
    c = cand(events=[event(finish="length", trimmed=True)])
    assert first_failure(c, ContrastConfig(drop_truncated=True)) == "truncated"


def test_leak_detectors():
    assert user_leaks("Here's a recipe for you:") and user_leaks("Thanks <|im_start|>assistant")
    assert user_leaks("ok\nAssistant: sure") and user_leaks("**User:** hi")
    assert not user_leaks("Thanks! Can you make it spicier?") and not user_leaks("Is there a user manual?")
    assert assistant_leaks("Sure.\nUser: and now?") and assistant_leaks("<|im_end|>")
    assert not assistant_leaks("Sure, here is the recipe: braise it.")


def test_first_failing_reason_is_counted_once():
    both = cand(
        rejected="Braise it.", events=[event(finish="length"), event(text="x" * 200)]
    )  # truncated, identical, long
    kept, stats = apply_filters([cand(), both, cand(modified=None), cand()], CFG)
    assert len(kept) == 2 and stats["candidates"] == 4 and stats["kept"] == 2
    assert stats["removed"]["truncated"] == 1 and stats["removed"]["modified_request"] == 1
    assert stats["removed"]["identical"] == 0 and stats["removed"]["over_length"] == 0
    assert list(stats["removed"]) == list(REASONS)


def test_report_table():
    _, a = apply_filters([cand(), cand(modified=None)], CFG)
    _, b = apply_filters([cand(kind="d")], CFG)
    report = {"reasons": list(REASONS), "splits": {"music_train": a, "d_train": b}}
    frame = report_frame(report)
    assert frame.loc["modified_request", "music_train"] == 1 and frame.loc["kept", "d_train"] == 1
    assert list(frame.index) == ["candidates", *REASONS, "kept"]
    md = report_markdown(report)
    assert md.splitlines()[0] == "| | music_train | d_train |" and "| modified_request | 1 | 0 |" in md
