"""The one data model of the package: messages, conversations and preference pairs.

A conversation is a list of {"role", "content"} dicts (TRL's conversational format), with at most
one leading system message, then user and assistant messages strictly alternating, starting with
the user. A preference pair holds two such conversations plus free-form metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from music.errors import DataError

ROLES = ("system", "user", "assistant")
Message = dict  # {"role": str, "content": str}
Conversation = list  # list[Message]


def validate_conversation(
    conv: Any,
    *,
    source: str,
    record: object,
    field_name: str = "messages",
    must_end_with: str | None = None,
) -> list[dict]:
    """Check one conversation and return it as a clean list of {"role", "content"} dicts.

    Raises DataError naming source, record and the exact field (e.g. "chosen[3].role").
    """
    if not isinstance(conv, list):
        raise DataError(source, record, field_name, f"expected a list of messages, got {type(conv).__name__}")
    if not conv:
        raise DataError(source, record, field_name, "conversation is empty")
    out: list[dict] = []
    prev_role = None
    for i, msg in enumerate(conv):
        where = f"{field_name}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(source, record, where, f"expected a message object, got {type(msg).__name__}")
        missing = {"role", "content"} - set(msg)
        if missing:
            raise DataError(source, record, f"{where}.{sorted(missing)[0]}", "missing field")
        unknown = set(msg) - {"role", "content"}
        if unknown:
            raise DataError(source, record, f"{where}.{sorted(unknown)[0]}", "unknown field")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise DataError(source, record, f"{where}.role", f"unknown role {role!r} (expected one of {ROLES})")
        if not isinstance(content, str):
            raise DataError(source, record, f"{where}.content", f"expected a string, got {type(content).__name__}")
        if not content.strip():
            raise DataError(source, record, f"{where}.content", "empty content")
        if role == "system":
            if i != 0:
                raise DataError(source, record, f"{where}.role", "a system message may only come first")
        elif prev_role in (None, "system"):
            if role != "user":
                raise DataError(source, record, f"{where}.role", "the first non-system message must be from the user")
        elif role == prev_role:
            raise DataError(source, record, f"{where}.role", f"two {role} turns in a row")
        out.append({"role": role, "content": content})
        prev_role = role
    if prev_role == "system":
        raise DataError(source, record, field_name, "conversation has only a system message")
    if must_end_with and prev_role != must_end_with:
        raise DataError(
            source, record, field_name, f"conversation must end with a {must_end_with} message, ends with {prev_role}"
        )
    return out


@dataclass
class PreferencePair:
    """Two conversations over the same task, the chosen one preferred; metadata is free-form JSON."""

    chosen: list[dict]
    rejected: list[dict]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """TRL's conversational preference format plus our metadata columns."""
        return {"chosen": self.chosen, "rejected": self.rejected, **self.meta}

    @classmethod
    def from_record(cls, rec: Any, *, source: str, record: object) -> "PreferencePair":
        if not isinstance(rec, dict):
            raise DataError(source, record, None, f"expected an object, got {type(rec).__name__}")
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise DataError(source, record, key, "missing field")
        chosen = validate_conversation(
            rec["chosen"], source=source, record=record, field_name="chosen", must_end_with="assistant"
        )
        rejected = validate_conversation(
            rec["rejected"], source=source, record=record, field_name="rejected", must_end_with="assistant"
        )
        meta = {k: v for k, v in rec.items() if k not in ("chosen", "rejected")}
        return cls(chosen=chosen, rejected=rejected, meta=meta)


def validate_pairs(records: Iterable[Any], *, source: str) -> list[PreferencePair]:
    return [PreferencePair.from_record(r, source=source, record=i) for i, r in enumerate(records)]


def pair_record(
    *,
    chosen: list[dict],
    rejected: list[dict],
    pair_id: str,
    kind: str,
    source: str | None = None,
    seed_id: str | None = None,
    conversation_id: str | None = None,
    divergence_turn: int | None = None,
    turns_after_divergence: int = 0,
    original_request: str | None = None,
    modified_request: str | None = None,
    contrast_method: str | None = None,
    models: dict | None = None,
    prompts: list[dict] | None = None,
    relevance: dict | None = None,
) -> dict:
    """One pair as stored: TRL's conversational preference format plus the metadata columns, validated.

    `relevance` (MUSIC pairs): the contrast margins and echo score of music.pairs.relevance."""
    models = {"user": None, "assistant": None, "contrast": None, **(models or {})}
    rec = {
        "chosen": chosen,
        "rejected": rejected,
        "pair_id": pair_id,
        "source": source,
        "seed_id": seed_id,
        "conversation_id": conversation_id,
        "kind": kind,
        "divergence_turn": divergence_turn,
        "turns_after_divergence": turns_after_divergence,
        "original_request": original_request,
        "modified_request": modified_request,
        "contrast_method": contrast_method,
        "models": models,
        "prompts": list(prompts or []),
        "relevance": relevance,
    }
    PreferencePair.from_record(rec, source="pairs", record=pair_id)
    return rec


def first_difference_distance(chosen: list[dict], rejected: list[dict]) -> int:
    """Assistant turns from the end of `chosen`, counted from the first message where the two differ
    (1 = they differ only in the last reply; 0 = identical)."""
    first = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    return sum(m["role"] == "assistant" for m in chosen[first:])


def user_turns(conv: list[dict]) -> int:
    return sum(1 for m in conv if m["role"] == "user")
