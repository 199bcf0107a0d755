"""Swapped history: does the RM notice that one earlier reply answers another conversation?

From whole held-out real conversations, replace ONE assistant reply with a real assistant reply taken
from another held-out conversation, like for like: the same kind of author (both are the source's
assistant replies) and a length within +-`length_tolerance` of the reply it replaces, so length and
style carry no signal; only whether the reply answers *this* conversation does. Every other message is
kept. The intact conversation should score higher. Distance = how many assistant turns from the end
the swap sits: 1 = the last reply (an ordinary last-turn judgement), >= 2 = an earlier turn, the final
reply identical in both.

Two donor kinds (two tests): `swap` takes the reply from ANOTHER held-out conversation (a different chat, so
usually a different topic); `swap_same` takes it from ANOTHER TURN OF THE SAME conversation (the same
like-length rule), which holds the topic fixed: the RM must tell which request a reply answers, not
whether it is on topic. Both kinds of a conversation form one cluster (they share its turns). `swap_same` is
secondary (music.evaluate.items): the swapped side holds a copy of one of the conversation's own replies, and
every RM of the first run preferred that copy (about 21% right).

How to read it: a decoder RM scored on the last token sees the whole history, so its scores for the
two conversations essentially never tie. An RM that ignores the history therefore sits at chance
(about 50%) at distance >= 2, not at 0; one that reads the history climbs above 50%.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from music.errors import DataError
from music.evaluate.stats import accuracy_summary, strict_wins
from music.files import read_jsonl
from music.schema import validate_conversation

LENGTH_TOLERANCE = 0.2  # a donor reply's length is within +-20% of the replaced one
SWAP_TESTS = {"other": "swap", "same": "swap_same"}  # donor kind -> test name (music.evaluate.items)


@dataclass
class SwappedPair:
    conversation_id: str
    distance: int  # 1 = the last assistant reply was replaced
    intact: list[dict]
    swapped: list[dict]
    donor_id: str  # the conversation the replacement reply came from
    donor_kind: str = "other"  # "other": another conversation's reply; "same": another turn of this conversation

    @property
    def test(self) -> str:
        return SWAP_TESTS[self.donor_kind]

    @property
    def item_id(self) -> str:
        return f"{self.conversation_id}:{self.distance}"


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


MIN_SWAP_TURNS = 2  # a "sharegpt:PATH" source keeps conversations with this many assistant turns (early swaps need 2)


def load_swap_conversations(source: str, seeds_file: str | Path, limit: int | None = None) -> tuple[list[dict], Path]:
    """(conversations, the file read) for heldout.swap_source: "seeds" = `seeds_file` (the seed stage's whole
    eval conversations, already multi-turn), "file:PATH" = the same jsonl schema, "sharegpt:PATH" = a ShareGPT
    file, first `limit` conversations (file order) with >= MIN_SWAP_TURNS assistant turns, one chunk per chat and
    one chat per first request, role-swapped records dropped (music.stages.seed's rule), cut to end on an assistant
    turn. Ids keep their source's form, so the training-seed disjointness check still applies."""
    kind, _, location = source.partition(":")
    if kind == "seeds":
        return load_eval_conversations(seeds_file, limit=limit), Path(seeds_file)
    if not location or not Path(location).exists():
        raise FileNotFoundError(f"heldout.swap_source {source!r}: {location or '(no path)'} does not exist")
    if kind == "file":
        return load_eval_conversations(location, limit=limit), Path(location)
    if kind != "sharegpt":
        raise ValueError(f"heldout.swap_source must be 'seeds', 'sharegpt:PATH' or 'file:PATH', got {source!r}")
    from music.content_keys import request_key
    from music.sources import load_sharegpt
    from music.stages.seed import base_conversation_id, roles_swapped

    out, bases, requests = [], set(), set()
    for conv in load_sharegpt(location, skipped=[]):
        msgs = conv.messages[:-1] if conv.messages and conv.messages[-1]["role"] == "user" else conv.messages
        base = base_conversation_id(conv.conversation_id)  # one chunk per chat: a donor is another chat
        request = request_key(msgs)  # and one chat per first request: a copy under another id is no other chat
        if (
            sum(m["role"] == "assistant" for m in msgs) >= MIN_SWAP_TURNS
            and base not in bases
            and request not in requests
            and not roles_swapped(msgs)
        ):
            bases.add(base)
            requests.add(request)
            out.append({"conversation_id": conv.conversation_id, "messages": [dict(m) for m in msgs]})
        if limit and len(out) >= limit:
            break
    return out, Path(location)


def swap_pairs(
    conversations: Sequence[dict],
    *,
    max_distance: int,
    seed: int,
    length_tolerance: float = LENGTH_TOLERANCE,
    same_conversation: bool = False,
) -> tuple[list[SwappedPair], dict]:
    """(pairs, counts): one swapped copy per conversation and distance 1..min(assistant turns, max_distance)
    with a reply from another conversation; with `same_conversation`, also one with a reply from another
    turn of the same conversation (donor_kind "same").

    A (conversation, distance, kind) with no donor reply of matching length is skipped and counted.
    """
    if len(conversations) < 2:
        raise ValueError("swapping needs at least two conversations (the replacement comes from another one)")
    donors = [
        (c["conversation_id"], m["content"]) for c in conversations for m in c["messages"] if m["role"] == "assistant"
    ]
    kinds = ("other", "same") if same_conversation else ("other",)
    out, skipped = [], {k: Counter() for k in kinds}
    for conv in conversations:
        msgs = conv["messages"]
        cid = conv["conversation_id"]
        assistant_idx = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        own = [(cid, msgs[i]["content"]) for i in assistant_idx]
        for distance in range(1, min(len(assistant_idx), max_distance) + 1):
            target = assistant_idx[-distance]
            text = msgs[target]["content"]
            n = len(text)
            for kind in kinds:
                candidates = donors if kind == "other" else own
                pool = [
                    d
                    for d in candidates
                    if (d[0] != cid) == (kind == "other")
                    and d[1] != text
                    and abs(len(d[1]) - n) <= length_tolerance * n
                ]
                if not pool:
                    skipped[kind][distance] += 1
                    continue
                # A per-(conversation, distance) RNG: adding conversations does not reshuffle the others.
                tag = "" if kind == "other" else ":same"
                donor_id, reply = random.Random(f"{seed}:{cid}:{distance}{tag}").choice(pool)
                bad = [dict(m) for m in msgs]
                bad[target] = {"role": "assistant", "content": reply}
                out.append(SwappedPair(cid, distance, msgs, bad, donor_id, kind))
    counts = {"pairs": len(out), "skipped_no_donor_by_distance": _by_distance(skipped["other"])}
    if same_conversation:
        counts.update(
            same_conversation_pairs=sum(p.donor_kind == "same" for p in out),
            same_conversation_skipped_by_distance=_by_distance(skipped["same"]),
        )
    return out, counts


def _by_distance(skipped: Counter) -> dict[str, int]:
    return {str(d): n for d, n in sorted(skipped.items())}


def swap_accuracy(scorer, conversations: Sequence[dict], *, max_distance: int, seed: int) -> dict:
    """{"all", "by_distance": {str(d): summary}, "n_conversations", "skipped_no_donor_by_distance"}."""
    pairs, counts = swap_pairs(conversations, max_distance=max_distance, seed=seed)
    intact_ids = sorted({p.conversation_id for p in pairs})
    intact_by_id = {c["conversation_id"]: c["messages"] for c in conversations}
    scores = scorer.score([intact_by_id[i] for i in intact_ids] + [p.swapped for p in pairs])
    intact_score = dict(zip(intact_ids, scores[: len(intact_ids)]))
    ok = strict_wins([intact_score[p.conversation_id] for p in pairs], scores[len(intact_ids) :])
    by_distance: dict[int, list[bool]] = defaultdict(list)
    for p, hit in zip(pairs, ok):
        by_distance[p.distance].append(hit)
    return {
        "all": accuracy_summary(ok),
        "by_distance": {str(d): accuracy_summary(v) for d, v in sorted(by_distance.items())},
        "n_conversations": len(intact_ids),
        "skipped_no_donor_by_distance": counts["skipped_no_donor_by_distance"],
    }
