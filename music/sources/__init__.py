"""One loader per real format, each returning the schema of music.schema.

Locations are local files (.jsonl, .jsonl.gz, .json, .parquet) or `hub:<dataset id>` for Hugging Face.
"""

from __future__ import annotations

from pathlib import Path

from music.schema import PreferencePair
from music.sources.hh import load_hh, parse_hh_transcript
from music.sources.mtbench import load_mtbench_questions, load_mtbench_references
from music.sources.preference import load_preference_pairs, load_rewardbench, load_skywork, load_ultrafeedback
from music.sources.sharegpt import RealConversation, load_sharegpt

PAIR_LOADERS = {
    "hh": load_hh,
    "ultrafeedback": load_ultrafeedback,
    "skywork": load_skywork,
    "rewardbench": load_rewardbench,
}


def load_pairs(
    kind: str, location: str | Path, *, split: str = "train", limit: int | None = None, skipped: list | None = None
) -> list[PreferencePair]:
    """Preference pairs of a known format: kind in PAIR_LOADERS."""
    if kind not in PAIR_LOADERS:
        raise ValueError(f"unknown pair format {kind!r}; known: {', '.join(PAIR_LOADERS)}")
    return PAIR_LOADERS[kind](location, split=split, limit=limit, skipped=skipped)


def load_conversations(
    kind: str, location: str | Path, *, split: str = "train", limit: int | None = None, skipped: list | None = None
) -> list[RealConversation]:
    """Real conversations to seed from: ShareGPT format, or the chosen side of a pair format.

    Strict unless `skipped` is a list (music.sources.records.Skipped counts and limits what it skips)."""
    if kind == "sharegpt":
        return load_sharegpt(location, split=split, limit=limit, skipped=skipped)
    pairs = load_pairs(kind, location, split=split, limit=limit, skipped=skipped)
    return [RealConversation(str(p.meta.get("pair_id", i)), kind, p.chosen) for i, p in enumerate(pairs)]


__all__ = [
    "PAIR_LOADERS",
    "RealConversation",
    "load_conversations",
    "load_hh",
    "load_mtbench_questions",
    "load_mtbench_references",
    "load_pairs",
    "load_preference_pairs",
    "load_rewardbench",
    "load_sharegpt",
    "load_skywork",
    "load_ultrafeedback",
    "parse_hh_transcript",
]
