"""Best-of-N prompt sources read from local files of each hub format, and counted offline for the planner."""

from __future__ import annotations

import json

import pytest

from music.errors import DataError
from music.sources.prompts import count_available, load_prompts, parse_source


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_prompts_are_first_human_turns(tmp_path):
    rows = [
        {
            "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Boil it."
            "\n\nHuman: How long?\n\nAssistant: 9 min.",
            "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: No.",
        },
        {
            "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Boil.",
            "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: x",
        },
        {"chosen": "no markers at all", "rejected": "x"},
        {
            "chosen": "\n\nHuman: Name a colour.\n\nAssistant: Red.",
            "rejected": "\n\nHuman: Name a colour.\n\nAssistant: 7",
        },
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    prompts = load_prompts(f"hh:{path}")
    assert [p["turns"] for p in prompts] == [
        ["How do I boil an egg?"],
        ["Name a colour."],
    ]  # deduplicated, bad row skipped
    assert count_available(f"hh:{path}")[:2] == (2, 1)


def test_ultrainteract_prompts_one_per_instruction(tmp_path):
    traj = lambda q: [{"from": "user", "value": q}, {"from": "assistant", "value": "Step 1"}]  # noqa: E731
    rows = [
        {
            "task": "Math",
            "dataset": "x",
            "trajectory": traj("Solve 2+2."),
            "chosen": "a",
            "rejected": "b",
            "id": "1",
            "parent_id": "p1",
        },
        {
            "task": "Math",
            "dataset": "x",
            "trajectory": traj("Solve 2+2."),
            "chosen": "c",
            "rejected": "d",
            "id": "2",
            "parent_id": "p1",
        },
        {
            "task": "Coding",
            "dataset": "y",
            "trajectory": traj("Write fizzbuzz."),
            "chosen": "e",
            "rejected": "f",
            "id": "3",
            "parent_id": "p2",
        },
    ]
    prompts = load_prompts(f"ultrainteract:{write_jsonl(tmp_path / 'ui.jsonl', rows)}")
    assert [(p["prompt_id"], p["turns"]) for p in prompts] == [
        ("ultrainteract:p1", ["Solve 2+2."]),
        ("ultrainteract:p2", ["Write fizzbuzz."]),
    ]


def test_local_file_and_mtbench(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl", [{"id": "a", "prompt": "Hi"}, {"turns": ["Q1", "Q2"], "question_id": 7}]
    )
    assert load_prompts(f"file:{path}") == [
        {"prompt_id": "a", "turns": ["Hi"]},
        {"prompt_id": "7", "turns": ["Q1", "Q2"]},
    ]
    n, turns, _ = count_available("mtbench")
    assert n == 80 and turns == 2


def test_hub_sources_are_counted_from_known_sizes_without_the_network():
    assert count_available("hh:hub:Anthropic/hh-rlhf")[:2] == (8552, 1)
    assert count_available("ultrainteract:hub:openbmb/UltraInteract_pair")[0] == 219522
    assert count_available("hh:hub:someone/unknown")[0] is None


@pytest.mark.parametrize("spec", ["nonsense", "hh", "file:"])
def test_bad_source_names_the_key(spec):
    with pytest.raises(DataError, match="evaluate.bon_source"):
        parse_source(spec)
