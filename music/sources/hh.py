"""Anthropic HH-RLHF: {"chosen": transcript, "rejected": transcript}, transcripts in
"\\n\\nHuman: ...\\n\\nAssistant: ..." form, sharing all turns but the last."""

from __future__ import annotations

import re
from pathlib import Path

from music.errors import DataError
from music.schema import PreferencePair, validate_conversation
from music.sources.records import convert_records, require_fields, require_text

_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, *, source: str, record: object, field: str) -> list[dict]:
    if not isinstance(text, str):
        raise DataError(source, record, field, f"expected a transcript string, got {type(text).__name__}")
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _MARKER.split(text)
    # parts = [before, role, content, role, content, ...]
    if len(parts) < 3:
        raise DataError(source, record, field, "transcript has no '\\n\\nHuman:' / '\\n\\nAssistant:' markers")
    if parts[0].strip():
        raise DataError(source, record, field, "text before the first Human/Assistant marker")
    messages = [{"role": _ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    return validate_conversation(messages, source=source, record=record, field_name=field, must_end_with="assistant")


def _hh_pair(rec, *, source: str, record: object) -> PreferencePair:
    require_fields(rec, ("chosen", "rejected"), source=source, record=record)
    chosen = parse_hh_transcript(
        require_text(rec, "chosen", source=source, record=record), source=source, record=record, field="chosen"
    )
    rejected = parse_hh_transcript(
        require_text(rec, "rejected", source=source, record=record), source=source, record=record, field="rejected"
    )
    return PreferencePair(chosen, rejected, {"pair_id": f"hh:{record}", "source": "hh-rlhf", "kind": "d"})


def load_hh(
    location: str | Path, *, split: str = "test", limit: int | None = None, skipped: list[DataError] | None = None
) -> list[PreferencePair]:
    """Strict by default; pass a list as `skipped` to collect bad records instead of raising."""
    return convert_records(location, _hh_pair, split=split, limit=limit, skipped=skipped)
