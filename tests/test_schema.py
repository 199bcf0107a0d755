import pytest

from music.errors import DataError
from music.schema import PreferencePair, validate_conversation

GOOD = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
]


def check(conv, field, problem):
    with pytest.raises(DataError) as exc:
        validate_conversation(conv, source="file.jsonl", record="line 7", field_name="chosen")
    assert exc.value.source == "file.jsonl" and exc.value.record == "line 7"
    assert exc.value.field == field
    assert problem in str(exc.value) and "file.jsonl" in str(exc.value) and "line 7" in str(exc.value)


def test_valid_conversation_passes_and_is_copied():
    out = validate_conversation(GOOD, source="s", record=0)
    assert out == GOOD and out[0] is not GOOD[0]


def test_unknown_role():
    check([{"role": "bot", "content": "x"}], "chosen[0].role", "unknown role")


def test_empty_content():
    check([{"role": "user", "content": "  "}], "chosen[0].content", "empty content")


def test_two_user_turns_in_a_row():
    check(
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        "chosen[1].role",
        "two user turns in a row",
    )


def test_missing_and_unknown_fields():
    check([{"role": "user"}], "chosen[0].content", "missing field")
    check([{"role": "user", "content": "a", "name": "bob"}], "chosen[0].name", "unknown field")


def test_must_start_with_user_and_system_only_first():
    check([{"role": "assistant", "content": "a"}], "chosen[0].role", "first non-system message")
    check(
        [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
        "chosen[1].role",
        "system message may only come first",
    )


def test_empty_conversation():
    check([], "chosen", "empty")


def test_pair_from_record_requires_both_sides_ending_with_assistant():
    pair = PreferencePair.from_record({"chosen": GOOD, "rejected": GOOD, "pair_id": "p"}, source="s", record=1)
    assert pair.meta == {"pair_id": "p"} and pair.to_record()["pair_id"] == "p"
    with pytest.raises(DataError, match="field 'rejected'.*missing"):
        PreferencePair.from_record({"chosen": GOOD}, source="s", record=1)
    with pytest.raises(DataError, match="must end with a assistant"):
        PreferencePair.from_record({"chosen": GOOD[:2], "rejected": GOOD}, source="s", record=1)
