"""The last-turn pairs D that MUSIC pairs are added to.

D stands in for the paper's original preference data (Skywork-style): pairs that share every turn but
the last. Offline we build them from the seeds: context + the real next user message, chosen = the
real next assistant reply, rejected = our assistant model's reply to the same context. With
`contrast.d_source = "KIND:LOCATION"` D comes from a labelled set instead (music.sources.load_pairs).
"""

from __future__ import annotations

from typing import Any, Sequence

from music.chat.base import derive_seed
from music.chat.rollout import SimPrompts, assistant_view, make_event
from music.config import ContrastConfig
from music.schema import pair_record, user_turns
from music.sources import load_pairs
from music.sources.records import Skipped


def d_candidates(seeds: Sequence[Any], assistant: Any, *, split: str, seed: int, trim: bool = True) -> list[dict]:
    """Last-turn candidates from seeds: real next reply (chosen) vs the assistant model's (rejected).

    One batched call. Seeds without a real next turn are skipped (they cannot make a D pair).
    Returns filter candidates: {"fields": pair fields, "events": [...], "failure": str|None}.
    """
    prompts = SimPrompts.load()
    usable = [s for s in seeds if s.next_user and s.next_assistant]
    histories = [[*s.context, {"role": "user", "content": s.next_user}] for s in usable]
    replies = assistant.generate(
        [assistant_view(h, prompts) for h in histories],
        seed=derive_seed(seed, "d_pairs", split),
        desc=f"d pairs {split}",
    )
    out = []
    for s, h, rep in zip(usable, histories, replies):
        event, failure = make_event(rep, branch="d", turn=user_turns(h), role="assistant", trim=trim)
        out.append(
            {
                "fields": dict(
                    chosen=[*h, {"role": "assistant", "content": s.next_assistant}],
                    rejected=[*h, {"role": "assistant", "content": event.text}] if failure is None else None,
                    pair_id=f"d-{s.seed_id}",
                    kind="d",
                    seed_id=s.seed_id,
                    conversation_id=s.conversation_id,
                    original_request=s.next_user,
                    models={"assistant": assistant.name},
                    prompts=[prompts.assistant.meta()],
                ),
                "events": [event.to_record()],
                "failure": failure,
            }
        )
    return out


def parse_d_source(d_source: str) -> tuple[str, str] | None:
    """None for "seeds", else (kind, location) from "KIND:LOCATION" (e.g. "skywork:hub:Skywork/...")."""
    if d_source == "seeds":
        return None
    kind, sep, location = d_source.partition(":")
    if not sep or not location:
        raise ValueError(f"contrast.d_source must be 'seeds' or 'KIND:LOCATION', got {d_source!r}")
    return kind, location


def d_records_from_source(
    cfg: ContrastConfig,
    split: str,
    held_out_ids: set[str] = frozenset(),
    malformed: dict | None = None,
    *,
    eval_split: str = "train",
) -> list[dict]:
    """D from a labelled preference set (the paper profile): records ready to save, no generation.

    Each pair's conversation_id is its pair_id, the id the seed stage gives the same source's
    conversations, so the split follows the seed stage: a pair whose conversation is held out for eval
    (`held_out_ids`) is never a training pair. With `eval_split` (heldout.d_eval_split) other than "train", eval
    pairs come from that split instead. Malformed source records are skipped and counted (their summary goes into
    `malformed` when given); more than contrast.max_malformed_share of them is a DataError.
    """
    kind, location = parse_d_source(cfg.d_source)  # type: ignore[misc]
    separate_eval = eval_split != "train"
    hub_split = eval_split if split == "eval" and separate_eval else "train"
    skipped = Skipped(location, cfg.max_malformed_share, "contrast.max_malformed_share")
    pairs = load_pairs(kind, location, split=hub_split, limit=cfg.d_limit, skipped=skipped)
    summary = skipped.check()
    if malformed is not None:
        malformed.update(summary)
    out = []
    for i, p in enumerate(pairs):
        cid = str(p.meta.get("pair_id", f"{kind}-{hub_split}-{i}"))
        if not separate_eval and (cid in held_out_ids) != (split == "eval"):
            continue
        out.append(
            pair_record(
                chosen=p.chosen,
                rejected=p.rejected,
                pair_id=f"d-{cid}",
                kind="d",
                conversation_id=cid,
                original_request=next((m["content"] for m in reversed(p.chosen) if m["role"] == "user"), None),
                models={},
                prompts=[],
            )
        )
    return out
