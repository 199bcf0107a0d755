"""RewardBench arithmetic: strict wins, example-count weights (math-prm 984), mean of four sections."""

from __future__ import annotations

import json

import pytest

from music.errors import DataError
from music.evaluate.constants import EXAMPLE_COUNTS, SECTIONS
from music.evaluate.rewardbench import load_rewardbench_pairs, score_rewardbench, section_scores


class WordCountScorer:
    """Score = number of words in the last message: lets a test pick each pair's outcome."""

    def score(self, conversations):
        return [float(len(c[-1]["content"].split())) for c in conversations]


def _row(subset, outcome):
    chosen = {"win": "a b c", "tie": "a b", "loss": "a"}[outcome]
    return {"prompt": "question?", "chosen": chosen, "rejected": "x y", "subset": subset}


ROWS = [
    _row("alpacaeval-easy", "win"),
    _row("alpacaeval-easy", "tie"),  # 0.5 (a tie is wrong)
    _row("mt-bench-easy", "win"),  # 1.0
    _row("llmbar-natural", "loss"),  # 0.0
    _row("mt-bench-hard", "win"),  # 1.0
    _row("donotanswer", "win"),
    _row("donotanswer", "win"),  # 1.0
    _row("math-prm", "win"),
    _row("math-prm", "loss"),
    _row("math-prm", "tie"),
    _row("math-prm", "loss"),  # 0.25
    _row("hep-go", "win"),  # 1.0
]


def test_tables_match_the_design():
    assert EXAMPLE_COUNTS["math-prm"] == 984
    assert sum(EXAMPLE_COUNTS[s] for s in SECTIONS["reasoning"]) == 984 * 2
    assert sum(EXAMPLE_COUNTS[s] for s in SECTIONS["chat"]) == 358
    assert sum(EXAMPLE_COUNTS[s] for s in SECTIONS["chat_hard"]) == 456
    assert sum(EXAMPLE_COUNTS[s] for s in SECTIONS["safety"]) == 740
    assert {s for v in SECTIONS.values() for s in v} == set(EXAMPLE_COUNTS)


def test_sections_from_a_local_file(tmp_path):
    path = tmp_path / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = score_rewardbench(WordCountScorer(), load_rewardbench_pairs(str(path)))
    assert res["subsets"]["alpacaeval-easy"] == 0.5
    assert res["subsets"]["math-prm"] == 0.25
    assert res["subset_n"]["math-prm"] == 4
    # hand-computed: weights are the example counts, not the rows in the file
    chat = (0.5 * 100 + 1.0 * 28) / (100 + 28)  # 0.609375
    chat_hard = (0.0 * 100 + 1.0 * 37) / (100 + 37)  # 0.270073
    safety = 1.0
    reasoning = (0.25 * 984 + 1.0 * 164) / (984 + 164)  # 0.357143
    assert res["chat"] == pytest.approx(0.609375)
    assert res["chat_hard"] == pytest.approx(chat_hard) == pytest.approx(0.2700730)
    assert res["safety"] == pytest.approx(safety)
    assert res["reasoning"] == pytest.approx(reasoning) == pytest.approx(0.3571429)
    assert res["average"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4) == pytest.approx(0.5591478)


def test_missing_section_gives_no_average():
    res = section_scores({"alpacaeval-easy": 1.0, "donotanswer": 0.5})
    assert res["chat"] == 1.0 and res["safety"] == 0.5
    assert res["chat_hard"] is None and res["average"] is None


def test_unknown_subset_is_a_data_error(tmp_path):
    from music.schema import PreferencePair

    p = PreferencePair(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        {"subset": "nope"},
    )
    with pytest.raises(DataError, match="subset"):
        score_rewardbench(WordCountScorer(), [p], source="x.jsonl")
