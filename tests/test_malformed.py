"""Hub-scale loaders count malformed records instead of crashing on one, up to a stated share; RewardBench
never drops a row (its section weights assume whole subsets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from music.config import ContrastConfig, Params, Paths, SeedConfig
from music.errors import DataError
from music.evaluate.rewardbench import load_rewardbench_pairs
from music.files import write_jsonl
from music.pairs.last_turn import d_records_from_source
from music.sources import load_conversations, load_rewardbench
from music.sources.records import Skipped
from music.stages.seed import run as run_seed

FIXTURE = Path(__file__).parent / "fixtures" / "sharegpt_tiny.jsonl"


def skywork_rows(n: int) -> list[dict]:
    return [
        {
            "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"bad {i}"}],
            "source": "toy",
        }
        for i in range(n)
    ]


def with_bad_rows(rows: list[dict], bad: dict[int, dict]) -> list[dict]:
    return [bad.get(i, r) for i, r in enumerate(rows)]


EMPTY_REPLY = {
    "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
    "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
}
NO_REJECTED = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def test_malformed_records_are_skipped_and_counted_per_reason(tmp_path):
    path = tmp_path / "skywork.jsonl"
    write_jsonl(path, with_bad_rows(skywork_rows(300), {10: EMPTY_REPLY, 20: NO_REJECTED, 30: EMPTY_REPLY}))
    skipped = Skipped(path, 0.01, "seed.max_malformed_share")
    convs = load_conversations("skywork", path, skipped=skipped)
    assert len(convs) == 297
    summary = skipped.check()  # 3 of 300 = 1%: at the limit
    assert summary["records_read"] == 300 and summary["skipped"] == 3
    reasons = summary["by_reason"]
    assert reasons["rejected: missing field"] == {"count": 1, "first_records": ["line 21"]}
    (empty,) = [v for r, v in reasons.items() if r.startswith("chosen")]
    assert empty == {"count": 2, "first_records": ["line 11", "line 31"]}


def test_more_malformed_records_than_the_limit_fail_with_counts_and_records(tmp_path):
    path = tmp_path / "skywork.jsonl"
    write_jsonl(path, with_bad_rows(skywork_rows(100), {i: NO_REJECTED for i in range(0, 100, 20)}))
    skipped = Skipped(path, 0.01, "seed.max_malformed_share")
    load_conversations("skywork", path, skipped=skipped)
    with pytest.raises(DataError) as info:
        skipped.check()
    message = str(info.value)
    assert message.startswith(f"{path}, record line 1, field 'rejected': 5 of 100 records are malformed")
    assert "seed.max_malformed_share=0.01" in message
    assert "rejected: missing field: 5 (first: line 1, line 21, line 41)" in message


def test_the_seed_stage_records_what_it_skipped(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    src = tmp_path / "sharegpt.jsonl"
    bad = json.dumps({"id": "broken", "conversations": [{"from": "robot", "value": "hi"}]})
    src.write_text("\n".join([*lines, bad]) + "\n")
    cfg = SeedConfig(
        path=str(src),
        n_train=4,
        n_eval=2,
        n_eval_conversations=3,
        max_message_chars=600,
        max_context_chars=1500,
        max_malformed_share=0.1,
    )
    seeds = run_seed(Params(seed=cfg, paths=Paths(seeds=str(tmp_path / "seeds"))))
    stats = json.loads((tmp_path / "seeds" / "stats.json").read_text())
    assert stats["malformed_records"] == seeds.stats["malformed_records"]
    assert stats["malformed_records"]["skipped"] == 1 and stats["malformed_records"]["records_read"] == len(lines) + 1
    assert stats["malformed_records"]["by_reason"] == {
        "conversations[].from: unknown role 'robot'": {"count": 1, "first_records": [f"line {len(lines) + 1}"]}
    }
    cfg.max_malformed_share = 0.01  # 1 of 13 is over 1%
    with pytest.raises(DataError, match=r"1 of 13 records are malformed, more than seed.max_malformed_share=0.01"):
        run_seed(Params(seed=cfg, paths=Paths(seeds=str(tmp_path / "seeds2"))))


def test_a_labelled_d_source_counts_its_malformed_records(tmp_path):
    path = tmp_path / "skywork.jsonl"
    write_jsonl(path, with_bad_rows(skywork_rows(100), {7: EMPTY_REPLY}))
    cfg = ContrastConfig(d_source=f"skywork:{path}")
    malformed: dict = {}
    records = d_records_from_source(cfg, "train", set(), malformed)
    assert len(records) == 99 and malformed["skipped"] == 1 and malformed["records_read"] == 100
    with pytest.raises(DataError, match="contrast.max_malformed_share=0.001"):
        d_records_from_source(ContrastConfig(d_source=f"skywork:{path}", max_malformed_share=0.001), "train")


def test_a_malformed_rewardbench_row_is_an_error_naming_its_record(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "subset": "alpacaeval-easy", "id": i} for i in range(5)]
    rows[3] = {**rows[3], "rejected": ""}
    path = tmp_path / "rewardbench.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"rewardbench.jsonl, record line 4, field 'rejected': empty content"):
        load_rewardbench_pairs(str(path))
    with pytest.raises(DataError, match=r"record line 4"):  # even where a caller would skip rows
        load_rewardbench(path, skipped=Skipped(path, 1.0, "any"))
