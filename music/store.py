"""Dataset storage: the one place stages write and read conversations and preference pairs.

Simulate writes conversations, contrast writes pairs, the RM trainer and the evaluation read them, all
through this module. Datasets are Hugging Face datasets (save_to_disk) written with an explicit schema
and a fingerprint computed from their content, so the same records give byte-identical folders
(datasets.Dataset.from_list would store a random fingerprint in state.json), always through
music.files.atomic_path: a crash never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from music.errors import DataError
from music.files import atomic_path, dumps_canonical
from music.schema import PreferencePair, validate_pairs

# The pair datasets the contrast stage writes (outputs/pairs/<name>).
PAIR_SPLITS = (
    "d_train",
    "music_train",
    "music_eval",
)  # the contrast stage's sets; held-out D and quality twins: music.stages.heldout


def _features():
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    event = {
        "branch": Value("string"),
        "turn": Value("int64"),
        "role": Value("string"),
        "finish_reason": Value("string"),
        "raw": Value("string"),
        "text": Value("string"),
        "trimmed": Value("bool"),
        "error": Value("string"),
        "method": Value("string"),
        "real": Value("bool"),
    }
    prompts = List({"name": Value("string"), "sha256": Value("string")})
    conversation = Features(
        {
            "seed_id": Value("string"),
            "conversation_id": Value("string"),
            "source": Value("string"),
            "split": Value("string"),
            "context_turns": Value("int64"),
            "turns": Value("int64"),
            "messages": msgs,
            "real_user_turns": List(Value("int64")),
            "events": List(event),
            "failure": Value("string"),
            "models": {"user": Value("string"), "assistant": Value("string")},
            "prompts": prompts,
        }
    )
    pair = Features(
        {
            "chosen": msgs,
            "rejected": msgs,
            "pair_id": Value("string"),
            "source": Value("string"),
            "seed_id": Value("string"),
            "conversation_id": Value("string"),
            "kind": Value("string"),
            "divergence_turn": Value("int64"),
            "turns_after_divergence": Value("int64"),
            "original_request": Value("string"),
            "modified_request": Value("string"),
            "contrast_method": Value("string"),
            "models": {"user": Value("string"), "assistant": Value("string"), "contrast": Value("string")},
            "prompts": prompts,
            "relevance": {
                "chosen_margin": Value("float64"),
                "rejected_margin": Value("float64"),
                "echo": Value("float64"),
                "modified_candidates": Value("int64"),
                "original_request_real": Value("bool"),
                "request_similarity": Value("float64"),
            },
        }
    )
    return conversation, pair


def conversation_features():
    return _features()[0]


def pair_features():
    return _features()[1]


def content_fingerprint(records: Sequence[dict], features: Any) -> str:
    blob = dumps_canonical({"records": list(records), "features": features.to_dict()})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def save_records(records: Sequence[dict], path: str | Path, features: Any) -> None:
    """Write records as a Hugging Face dataset (save_to_disk) atomically, byte-identical for equal content."""
    from datasets import Dataset

    feats = features
    for i, rec in enumerate(records):
        missing, extra = sorted(set(feats) - set(rec)), sorted(set(rec) - set(feats))
        if missing or extra:
            raise ValueError(f"{path}: record {i} does not match the schema (missing {missing}, unexpected {extra})")
    if records:
        ds = Dataset.from_list(list(records), features=feats)
    else:  # from_list([]) would drop the schema: an empty set must still have every column
        ds = Dataset.from_dict({name: [] for name in feats}, features=feats)
    ds._fingerprint = content_fingerprint(records, feats)  # not random: same content, same state.json
    with atomic_path(path) as tmp:
        ds.save_to_disk(str(tmp), num_shards=1)  # one shard even when empty (0 shards cannot be loaded)


def load_records(path: str | Path) -> list[dict]:
    """The records of a saved dataset; a missing one stops with a DataError naming the path."""
    from datasets import load_from_disk

    if not Path(path, "state.json").is_file():
        raise DataError(path, "-", None, "no dataset saved here (run the stage that writes it first)")
    ds = load_from_disk(str(path))
    return ds.to_list() if len(ds) else []  # to_list() on an empty saved dataset raises inside datasets


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """A saved pair dataset (outputs/pairs/<name>), every pair validated by music.schema."""
    return validate_pairs(load_records(path), source=str(path))


def seed_dir(models_dir: str | Path, variant: str, seed: int) -> Path:
    """Where the model of one variant and training seed lives: {models}/{variant}/seed{seed}."""
    return Path(models_dir) / variant / f"seed{seed}"
