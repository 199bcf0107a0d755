"""Truncation at evaluation: an item whose two sides become token-identical once fitted to the RM's length (the
swapped reply sat in a dropped turn) is dropped from every group and counted, not scored as wrong."""

from __future__ import annotations

from functools import partial

from music.evaluate.items import Item
from music.rm.data import fit_conversation
from music.stages.evaluate import drop_truncated_identical


def chat(first_reply: str, turns: int = 4) -> list[dict]:
    msgs = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Question number {t} about bread, with some words to fill it up?"})
        reply = first_reply if t == 0 else f"Answer {t}: knead the dough, let it rise, bake it hot. " * 3
        msgs.append({"role": "assistant", "content": reply})
    return msgs


def test_a_swap_in_a_dropped_turn_is_dropped_and_counted_and_a_later_one_stays(smol_tok):
    intact = chat("Use strong flour and a long, slow rise for the best crumb.")
    early_swap = chat("The capital of Australia is Canberra, not Sydney.")  # the swapped reply: turn 1 of 4
    late = chat("Use strong flour and a long, slow rise for the best crumb.")
    late[-1] = {"role": "assistant", "content": "Paris is the capital of France."}  # the swapped reply: last turn
    full = len(fit_conversation(smol_tok, intact, 10_000, source="t", record=0, field_name="m").ids)
    fit = partial(fit_conversation, smol_tok, max_length=full - 20, source="t", record=0, field_name="m")
    items = [
        Item("swap", "early", 4, intact, early_swap, cluster="c1"),
        Item("swap", "late", 1, intact, late, cluster="c1"),
    ]
    kept, counts = drop_truncated_identical(items, fit)
    assert [it.item_id for it in kept] == ["late"]
    assert counts == {
        "swap": {"1": {"items": 1, "truncated": 1, "identical": 0}, "4": {"items": 1, "truncated": 1, "identical": 1}}
    }
    # with room for every turn nothing is truncated or dropped
    roomy = partial(fit_conversation, smol_tok, max_length=full + 50, source="t", record=0, field_name="m")
    kept, counts = drop_truncated_identical(items, roomy)
    assert len(kept) == 2 and counts["swap"]["4"] == {"items": 1, "truncated": 0, "identical": 0}


def test_a_scorer_that_does_not_say_how_it_fits_drops_nothing():
    items = [Item("swap", "a", 2, chat("x"), chat("y"))]
    assert drop_truncated_identical(items, None) == (items, None)
