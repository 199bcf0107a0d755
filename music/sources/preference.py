"""Preference-pair formats other than HH transcripts.

- message lists (Skywork-Reward-Preference-80K, trl-lib/ultrafeedback_binarized):
  {"chosen": [messages], "rejected": [messages], ...extra columns kept as metadata}
- flat strings (the UltraFeedback subset in ../shared/data, RewardBench):
  {"prompt": str, "chosen": str, "rejected": str, ...}: a one-turn conversation per side.
"""

from __future__ import annotations

import functools
from pathlib import Path

from music.errors import DataError
from music.schema import PreferencePair, validate_conversation
from music.sources.records import convert_records, require_fields, require_text

_PASSTHROUGH = ("score_chosen", "score_rejected", "source", "subset", "id", "chosen_model", "rejected_model")


def _flat_side(rec: dict, side: str, *, source: str, record: object) -> list[dict]:
    prompt = require_text(rec, "prompt", source=source, record=record)
    reply = require_text(rec, side, source=source, record=record)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def pair_from_row(rec, *, source: str, record: object, name: str) -> PreferencePair:
    """Either format -> PreferencePair; strings need a `prompt`, message lists are validated."""
    require_fields(rec, ("chosen", "rejected"), source=source, record=record)
    if isinstance(rec["chosen"], str) or isinstance(rec["rejected"], str):
        require_fields(rec, ("prompt",), source=source, record=record)
        chosen = _flat_side(rec, "chosen", source=source, record=record)
        rejected = _flat_side(rec, "rejected", source=source, record=record)
    else:
        chosen = validate_conversation(
            rec["chosen"], source=source, record=record, field_name="chosen", must_end_with="assistant"
        )
        rejected = validate_conversation(
            rec["rejected"], source=source, record=record, field_name="rejected", must_end_with="assistant"
        )
    meta = {"pair_id": f"{name}:{rec.get('id', record)}", "source": name, "kind": "d"}
    meta.update({k: rec[k] for k in _PASSTHROUGH if k in rec and k not in ("source", "id")})
    if isinstance(rec.get("metadata"), dict):  # the shared UltraFeedback subset nests its scores
        meta.update({k: v for k, v in rec["metadata"].items() if k in _PASSTHROUGH})
    return PreferencePair(chosen, rejected, meta)


def load_preference_pairs(
    location: str | Path,
    *,
    name: str,
    split: str = "train",
    limit: int | None = None,
    skipped: list[DataError] | None = None,
) -> list[PreferencePair]:
    """Strict by default; pass a list as `skipped` to collect bad records instead of raising."""
    return convert_records(
        location, functools.partial(pair_from_row, name=name), split=split, limit=limit, skipped=skipped
    )


def load_ultrafeedback(
    location: str | Path = "hub:trl-lib/ultrafeedback_binarized",
    *,
    split: str = "train",
    limit: int | None = None,
    skipped: list[DataError] | None = None,
) -> list[PreferencePair]:
    return load_preference_pairs(location, name="ultrafeedback", split=split, limit=limit, skipped=skipped)


def load_skywork(
    location: str | Path = "hub:Skywork/Skywork-Reward-Preference-80K-v0.2",
    *,
    split: str = "train",
    limit: int | None = None,
    skipped: list[DataError] | None = None,
) -> list[PreferencePair]:
    return load_preference_pairs(location, name="skywork", split=split, limit=limit, skipped=skipped)


def _rewardbench_pair(rec, *, source: str, record: object) -> PreferencePair:
    require_fields(rec, ("prompt", "chosen", "rejected", "subset"), source=source, record=record)
    if not isinstance(rec["subset"], str) or not rec["subset"]:
        raise DataError(source, record, "subset", "expected a subset name")
    return pair_from_row(rec, source=source, record=record, name="rewardbench")


def load_rewardbench(
    location: str | Path = "hub:allenai/reward-bench",
    *,
    split: str = "filtered",
    limit: int | None = None,
    skipped: list[DataError] | None = None,
) -> list[PreferencePair]:
    """RewardBench rows (prompt, chosen, rejected, subset); each pair's meta carries its subset.

    Always strict, whatever `skipped` is: the section weights assume whole subsets, so a malformed row is
    a DataError naming its record, never a dropped row."""
    return convert_records(location, _rewardbench_pair, split=split, limit=limit, skipped=None)
