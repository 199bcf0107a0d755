"""Multi-turn sensitivity (our addition, not in the paper).

From whole held-out real conversations, corrupt ONE earlier assistant turn (replace it with an
assistant reply taken from another conversation, chosen with a seeded RNG) and keep every other
message. A reward model that reads the history should prefer the intact conversation wherever the
corruption sits; one that reads only the last reply is right at distance 1 and at chance (a tie is
wrong) further back. Distance = how many assistant turns before the end: 1 = the last one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from music.errors import DataError
from music.evaluate.stats import accuracy_summary, strict_wins
from music.io import read_jsonl
from music.schema import validate_conversation


@dataclass
class CorruptedPair:
    conversation_id: str
    distance: int  # 1 = the last assistant turn was replaced
    intact: list[dict]
    corrupted: list[dict]
    donor_id: str  # conversation the replacement reply came from


def load_eval_conversations(path: str | Path, limit: int | None = None) -> list[dict]:
    """{"conversation_id", "messages"} records, cut to end on an assistant turn."""
    out = []
    for lineno, rec in read_jsonl(path):
        where = f"line {lineno}"
        if not isinstance(rec, dict) or "conversation_id" not in rec:
            raise DataError(path, where, "conversation_id", "missing field")
        msgs = validate_conversation(rec.get("messages"), source=str(path), record=where)
        if msgs[-1]["role"] == "user":
            msgs = msgs[:-1]
        if sum(m["role"] == "assistant" for m in msgs) >= 1:
            out.append({"conversation_id": str(rec["conversation_id"]), "messages": msgs})
        if limit and len(out) >= limit:
            break
    return out


def corrupt(conversations: Sequence[dict], *, max_distance: int, seed: int) -> list[CorruptedPair]:
    """One corrupted copy per conversation and distance 1..min(assistant turns, max_distance)."""
    if len(conversations) < 2:
        raise ValueError("corruption needs at least two conversations (the replacement comes from another one)")
    donors = [(c["conversation_id"], m["content"]) for c in conversations for m in c["messages"] if m["role"] == "assistant"]
    out = []
    for conv in conversations:
        msgs = conv["messages"]
        assistant_idx = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        for distance in range(1, min(len(assistant_idx), max_distance) + 1):
            # A per-(conversation, distance) RNG: adding conversations does not reshuffle the others.
            rng = random.Random(f"{seed}:{conv['conversation_id']}:{distance}")
            target = assistant_idx[-distance]
            pool = [d for d in donors if d[0] != conv["conversation_id"] and d[1] != msgs[target]["content"]]
            if not pool:
                continue
            donor_id, reply = rng.choice(pool)
            bad = [dict(m) for m in msgs]
            bad[target] = {"role": "assistant", "content": reply}
            out.append(CorruptedPair(conv["conversation_id"], distance, msgs, bad, donor_id))
    return out


def sensitivity_accuracy(scorer, conversations: Sequence[dict], *, max_distance: int, seed: int) -> dict:
    """{"all": summary, "by_distance": {str(d): summary}}; each intact conversation is scored once."""
    pairs = corrupt(conversations, max_distance=max_distance, seed=seed)
    intact_ids = sorted({p.conversation_id for p in pairs})
    intact_by_id = {c["conversation_id"]: c["messages"] for c in conversations}
    scores = scorer.score([intact_by_id[i] for i in intact_ids] + [p.corrupted for p in pairs])
    intact_score = dict(zip(intact_ids, scores[: len(intact_ids)]))
    ok = strict_wins([intact_score[p.conversation_id] for p in pairs], scores[len(intact_ids):])
    by_distance: dict[int, list[bool]] = defaultdict(list)
    for p, hit in zip(pairs, ok):
        by_distance[p.distance].append(hit)
    return {
        "all": accuracy_summary(ok),
        "by_distance": {str(d): accuracy_summary(v) for d, v in sorted(by_distance.items())},
        "n_conversations": len(intact_ids),
    }
