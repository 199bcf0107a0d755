"""Preference pairs on disk, and the last-turn pairs D.

D stands in for the paper's original preference data (Skywork-style): pairs that share every turn but
the last. Offline we build them from the seeds: context + the real next user message, chosen = the
real next assistant reply, rejected = our assistant model's reply to the same context. With
`contrast.d_source = "KIND:LOCATION"` D comes from a labelled set instead (music.sources.load_pairs).

Datasets are written with an explicit schema and a fingerprint computed from their content, so the
same records give byte-identical files (datasets.Dataset.from_list would store a random fingerprint
in state.json), always through music.io.atomic_path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from music.config import ContrastConfig
from music.errors import DataError
from music.io import atomic_path, dumps_canonical
from music.schema import PreferencePair

PAIR_SPLITS = ("d_train", "music_train", "d_eval", "music_eval")


def _features():
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    event = {"branch": Value("string"), "turn": Value("int64"), "role": Value("string"),
             "finish_reason": Value("string"), "raw": Value("string"), "text": Value("string"),
             "trimmed": Value("bool"), "error": Value("string"), "method": Value("string")}
    prompts = List({"name": Value("string"), "sha256": Value("string")})
    conversation = Features({
        "seed_id": Value("string"), "conversation_id": Value("string"), "source": Value("string"),
        "split": Value("string"), "context_turns": Value("int64"), "turns": Value("int64"), "messages": msgs,
        "events": List(event), "failure": Value("string"),
        "models": {"user": Value("string"), "assistant": Value("string")}, "prompts": prompts,
    })
    pair = Features({
        "chosen": msgs, "rejected": msgs, "pair_id": Value("string"), "seed_id": Value("string"),
        "conversation_id": Value("string"), "kind": Value("string"), "divergence_turn": Value("int64"),
        "turns_after_divergence": Value("int64"), "original_request": Value("string"),
        "modified_request": Value("string"), "contrast_method": Value("string"),
        "models": {"user": Value("string"), "assistant": Value("string"), "contrast": Value("string")},
        "prompts": prompts,
    })
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
    missing = [sorted(set(feats) - set(r)) for r in records]
    extra = [sorted(set(r) - set(feats)) for r in records]
    for i, (m, e) in enumerate(zip(missing, extra)):
        if m or e:
            raise ValueError(f"{path}: record {i} does not match the schema (missing {m}, unexpected {e})")
    if records:
        ds = Dataset.from_list(list(records), features=feats)
    else:  # from_list([]) would drop the schema: an empty set must still have every column
        ds = Dataset.from_dict({name: [] for name in feats}, features=feats)
    ds._fingerprint = content_fingerprint(records, feats)  # not random: same content, same state.json
    with atomic_path(path) as tmp:
        ds.save_to_disk(str(tmp), num_shards=1)  # one shard even when empty (0 shards cannot be loaded)


def load_records(path: str | Path) -> list[dict]:
    from datasets import load_from_disk

    if not Path(path, "state.json").is_file():
        raise DataError(path, "-", None, "no dataset saved here (run the stage that writes it first)")
    ds = load_from_disk(str(path))
    return ds.to_list() if len(ds) else []  # to_list() on an empty saved dataset raises inside datasets


# --- pair records ----------------------------------------------------------------------------------------

def pair_record(*, chosen: list[dict], rejected: list[dict], pair_id: str, kind: str, seed_id: str | None = None,
                conversation_id: str | None = None, divergence_turn: int | None = None,
                turns_after_divergence: int = 0, original_request: str | None = None,
                modified_request: str | None = None, contrast_method: str | None = None,
                models: dict | None = None, prompts: list[dict] | None = None) -> dict:
    """One pair in TRL's conversational preference format plus metadata, validated by music.schema."""
    models = {"user": None, "assistant": None, "contrast": None, **(models or {})}
    rec = {"chosen": chosen, "rejected": rejected, "pair_id": pair_id, "seed_id": seed_id,
           "conversation_id": conversation_id, "kind": kind, "divergence_turn": divergence_turn,
           "turns_after_divergence": turns_after_divergence, "original_request": original_request,
           "modified_request": modified_request, "contrast_method": contrast_method, "models": models,
           "prompts": list(prompts or [])}
    PreferencePair.from_record(rec, source="pairs", record=pair_id)
    return rec


def d_candidates(seeds: Sequence[Any], assistant: Any, *, split: str, seed: int, trim: bool = True) -> list[dict]:
    """Last-turn candidates from seeds: real next reply (chosen) vs the assistant model's (rejected).

    One batched call. Seeds without a real next turn are skipped (they cannot make a D pair).
    Returns filter candidates: {"record": pair fields, "events": [...], "failure": str|None}.
    """
    from music.chat.base import derive_seed
    from music.simulate import SimPrompts, assistant_view, make_event
    from music.schema import user_turns

    prompts = SimPrompts.load()
    usable = [s for s in seeds if s.next_user and s.next_assistant]
    histories = [[*s.context, {"role": "user", "content": s.next_user}] for s in usable]
    replies = assistant.generate([assistant_view(h, prompts) for h in histories],
                                 seed=derive_seed(seed, "d_pairs", split), desc=f"d pairs {split}")
    out = []
    for s, h, rep in zip(usable, histories, replies):
        event, failure = make_event(rep, branch="d", turn=user_turns(h), role="assistant", trim=trim)
        out.append({
            "fields": dict(chosen=[*h, {"role": "assistant", "content": s.next_assistant}],
                           rejected=[*h, {"role": "assistant", "content": event.text}] if failure is None else None,
                           pair_id=f"d-{s.seed_id}", kind="d", seed_id=s.seed_id, conversation_id=s.conversation_id,
                           original_request=s.next_user, models={"assistant": assistant.name},
                           prompts=[prompts.assistant.meta()]),
            "events": [event.to_record()], "failure": failure,
        })
    return out


def parse_d_source(d_source: str) -> tuple[str, str] | None:
    """None for "seeds", else (kind, location) from "KIND:LOCATION" (e.g. "skywork:hub:Skywork/...")."""
    if d_source == "seeds":
        return None
    kind, sep, location = d_source.partition(":")
    if not sep or not location:
        raise ValueError(f"contrast.d_source must be 'seeds' or 'KIND:LOCATION', got {d_source!r}")
    return kind, location


def d_records_from_source(cfg: ContrastConfig, split: str, held_out_ids: set[str] = frozenset()) -> list[dict]:
    """D from a labelled preference set (the paper profile): records ready to save, no generation.

    Each pair's conversation_id is its pair_id, the id the seed stage gives the same source's
    conversations, so the split follows the seed stage: a pair whose conversation is held out for eval
    (`held_out_ids`) is never a training pair. With `d_eval_split` other than "train", eval pairs come
    from that split instead.
    """
    from music.sources import load_pairs  # only this branch needs the source loaders

    kind, location = parse_d_source(cfg.d_source)  # type: ignore[misc]
    separate_eval = cfg.d_eval_split != "train"
    hub_split = cfg.d_eval_split if split == "eval" and separate_eval else "train"
    pairs = load_pairs(kind, location, split=hub_split, limit=cfg.d_limit)
    out = []
    for i, p in enumerate(pairs):
        cid = str(p.meta.get("pair_id", f"{kind}-{hub_split}-{i}"))
        if not separate_eval and (cid in held_out_ids) != (split == "eval"):
            continue
        out.append(pair_record(chosen=p.chosen, rejected=p.rejected, pair_id=f"d-{cid}", kind="d", conversation_id=cid,
                               original_request=next((m["content"] for m in reversed(p.chosen) if m["role"] == "user"), None),
                               models={}, prompts=[]))
    return out
