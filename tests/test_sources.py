"""Every loader on files of the real formats, and every bad input named precisely."""

import gzip
import json

import pytest
from helpers import REPO

from music.errors import DataError
from music.sources import (
    load_conversations,
    load_hh,
    load_mtbench_questions,
    load_pairs,
    load_rewardbench,
    load_sharegpt,
    load_skywork,
    load_ultrafeedback,
    parse_hh_transcript,
)
from music.sources.sharegpt import iter_package_records, iter_truncated_json_array

MSGS = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how are you"},
    {"role": "assistant", "content": "fine"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- real files from ../shared/data -------------------------------------------------------------


def test_hh_real_file(shared_data):
    skipped = []
    pairs = load_hh(shared_data / "hh-rlhf" / "harmless-base-test-first2000.jsonl.gz", skipped=skipped)
    assert len(pairs) + len(skipped) == 2000 and len(pairs) > 1900
    multi = [p for p in pairs if len(p.chosen) > 2]
    assert multi, "HH harmless-base has multi-turn transcripts"
    p = multi[0]
    assert p.chosen[:-1] == p.rejected[:-1] and p.chosen[-1] != p.rejected[-1]
    assert all("Human:" not in m["content"] for m in p.chosen)
    assert all(err.field for err in skipped)  # each skipped record says which field was bad


def test_ultrafeedback_real_flat_file(shared_data):
    pairs = load_ultrafeedback(shared_data / "ultrafeedback-binarized-subset" / "eval_clean.jsonl")
    assert len(pairs) == 200
    assert pairs[0].chosen[0]["role"] == "user" and pairs[0].chosen[0] == pairs[0].rejected[0]
    assert pairs[0].meta["score_chosen"] >= pairs[0].meta["score_rejected"]


def test_sharegpt_real_subset(shared_data):
    convs = load_sharegpt(shared_data / "sharegpt-subset" / "sharegpt_v3_multiturn_sample3000.jsonl.gz")
    assert len(convs) == 3000 and all(len(c.messages) >= 4 for c in convs)


def test_mtbench_real_file_matches_package(shared_data):
    local = load_mtbench_questions(shared_data / "mt-bench" / "question.jsonl")
    assert len(local) == 80 and all(len(q["turns"]) == 2 for q in local)
    assert local == load_mtbench_questions()  # the PyPI package (or data/) holds the same questions


# ---- packages of the offline default --------------------------------------------------------------


def test_sharegpt_package_truncated_json_parses_complete_records():
    first = next(iter_package_records())
    assert {"id", "conversations"} <= set(first)


def test_truncated_json_array_stops_at_the_cut():
    text = '[{"a": 1}, {"b": [1, 2]},\n {"c": "unfinis'
    assert list(iter_truncated_json_array(text)) == [{"a": 1}, {"b": [1, 2]}]
    assert list(iter_truncated_json_array('[{"a": 1}]')) == [{"a": 1}]


def test_mtbench_from_package():
    qs = load_mtbench_questions()
    assert len(qs) == 80 and qs[0]["question_id"] == 81


# ---- formats written by the test ---------------------------------------------------------------


def test_message_list_pairs_skywork_and_trl_ultrafeedback(tmp_path):
    rows = [{"chosen": MSGS, "rejected": MSGS[:3] + [{"role": "assistant", "content": "bad"}], "source": "x"}]
    for loader in (load_skywork, load_ultrafeedback):
        pairs = loader(write_jsonl(tmp_path / "p.jsonl", rows))
        assert pairs[0].chosen == MSGS and pairs[0].rejected[-1]["content"] == "bad"


def test_hub_loader_on_a_local_dataset_folder(tmp_path):
    """The real hub path (datasets.load_dataset) on a local folder laid out like a hub repo."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "repo" / "data").mkdir(parents=True)
    rows = [{"chosen": MSGS, "rejected": MSGS[:3] + [{"role": "assistant", "content": "meh"}], "source": "s"}] * 3
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    pairs = load_pairs("skywork", f"hub:{tmp_path / 'repo'}", split="train")
    assert len(pairs) == 3 and pairs[0].chosen == MSGS
    convs = load_conversations("skywork", f"hub:{tmp_path / 'repo'}", split="train")
    assert convs[0].messages == MSGS


def test_hub_loader_error_says_what_to_do():
    with pytest.raises(RuntimeError, match="local file of the same format"):
        load_pairs("skywork", "hub:/nonexistent/dataset-folder-xyz")


def test_rewardbench_rows_carry_subset(tmp_path):
    rows = [
        {
            "prompt": "q",
            "chosen": "good",
            "rejected": "bad",
            "subset": "alpacaeval-easy",
            "id": 5,
            "chosen_model": "a",
            "rejected_model": "b",
        }
    ]
    pairs = load_rewardbench(write_jsonl(tmp_path / "rb.jsonl", rows))
    assert pairs[0].meta["subset"] == "alpacaeval-easy" and pairs[0].chosen[-1]["content"] == "good"
    with pytest.raises(DataError, match="field 'subset'"):
        load_rewardbench(write_jsonl(tmp_path / "rb2.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}]))


def test_hh_transcript_parsing():
    msgs = parse_hh_transcript(
        "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao", source="s", record=0, field="chosen"
    )
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"] and msgs[0]["content"] == "hi there"


def test_parquet_and_json_array_files(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps([{"id": "c1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}])
    )
    assert load_sharegpt(tmp_path / "a.json")[0].conversation_id == "c1"


# ---- bad input: each error names file, record and field ---------------------------------------------


def expect(exc_info, path, record, field):
    err = exc_info.value
    assert str(path) in str(err) and err.record == record and err.field == field, str(err)


def test_malformed_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "conversations": []}\n{"id": oops}\n')
    with pytest.raises(DataError) as e:
        load_sharegpt(p)
    # line 1 is valid JSON with an empty conversation: that error comes first
    expect(e, p, "line 1", "conversations")
    p.write_text('{"id": oops}\n')
    with pytest.raises(DataError, match="malformed JSON") as e:
        load_sharegpt(p)
    expect(e, p, "line 1", None)


def test_missing_and_unknown_fields_and_roles(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": "a"}])
    with pytest.raises(DataError, match="missing field") as e:
        load_sharegpt(p)
    expect(e, p, "line 1", "conversations")
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(DataError, match="unknown role") as e:
        load_sharegpt(p)
    expect(e, p, "line 1", "conversations[0].from")
    p = write_jsonl(
        tmp_path / "p.jsonl", [{"chosen": [{"role": "user", "content": "a", "extra": 1}], "rejected": MSGS}]
    )
    with pytest.raises(DataError, match="unknown field") as e:
        load_skywork(p)
    expect(e, p, "line 1", "chosen[0].extra")


def test_empty_content_and_two_user_turns(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "conversations": [{"from": "human", "value": ""}]}])
    with pytest.raises(DataError, match="empty content") as e:
        load_sharegpt(p)
    expect(e, p, "line 1", "conversations[0].content")
    p = write_jsonl(
        tmp_path / "s.jsonl",
        [{"id": "a", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}],
    )
    with pytest.raises(DataError, match="two user turns in a row") as e:
        load_sharegpt(p)
    expect(e, p, "line 1", "conversations[1].role")


def test_transcript_without_markers(tmp_path):
    p = tmp_path / "hh.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(json.dumps({"chosen": "just some text", "rejected": "\n\nHuman: a\n\nAssistant: b"}) + "\n")
    with pytest.raises(DataError, match="no '.*Human:'") as e:
        load_hh(p)
    expect(e, p, "line 1", "chosen")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(DataError, match="empty") as e:
        load_hh(p)
    expect(e, p, "-", None)


def test_skipped_collects_instead_of_raising(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"chosen": MSGS, "rejected": MSGS}, {"chosen": [], "rejected": MSGS}])
    skipped = []
    pairs = load_skywork(p, skipped=skipped)
    assert len(pairs) == 1 and len(skipped) == 1 and skipped[0].record == "line 2"


def test_committed_evaluation_subsets_are_what_their_readme_says():
    """evalsets/ ships with the repository (a fresh clone has no ../shared): checked bytes, and they load."""
    import hashlib

    folder = REPO / "evalsets"
    readme = (folder / "README.md").read_text()
    for name, loader in (
        ("hh-rlhf-harmless-base-test-first60.jsonl", load_hh),
        ("ultrafeedback-binarized-eval-first60.jsonl", load_ultrafeedback),
    ):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert digest in readme and name in readme
        pairs = loader(folder / name)
        assert len(pairs) == 60 and all(p.chosen[:-1] == p.rejected[:-1] for p in pairs)  # last-turn pairs
