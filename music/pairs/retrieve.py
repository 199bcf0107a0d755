"""Contrast method `retrieve`: the modified request is a real person's request from another conversation.

A near miss needs a request close to the person's that asks for something else. The embedded user model
rarely writes one (its rewrites are mostly unrelated: docs/decisions.md); people asked many such requests in
the source file. So the modified request is the opening request of another conversation of the *training
side* (never a held-out or development conversation, by id or by content), the nearest to the original
inside contrast.request_similarity; the assistant model answers it as it answers everything (style gives
nothing away), and the rejected branch goes on from there as with `resample`.

Only opening requests enter the pool: they stand on their own (a later message such as "Are both elected
presidents?" only makes sense in its own conversation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from music.content_keys import normalise, opening_key
from music.pairs.relevance import Encoder
from music.sources import RealConversation
from music.stages.seed import Seed, base_conversation_id

SOURCE_PREFIX = "retrieved:"  # a pair's models.contrast: the conversation its modified request was taken from


@dataclass(frozen=True)
class PoolRequest:
    text: str
    conversation_id: str


def held_out_conversations(
    eval_seeds: Iterable[Seed], whole: Iterable[RealConversation]
) -> list[tuple[str, list[dict]]]:
    """(conversation id, messages) of every conversation no training pair may draw on: the held-out seeds (context
    and real next turns) and whole conversations (held-out ones and the development split)."""
    out = []
    for s in eval_seeds:
        msgs = [*s.context, *([{"role": "user", "content": s.next_user}] if s.next_user else []), *s.following]
        out.append((s.conversation_id, msgs))
    out += [(c.conversation_id, c.messages) for c in whole]
    return out


def request_pool(
    conversations: Iterable[RealConversation],
    held_out: Sequence[tuple[str, Sequence[dict]]],
    *,
    max_chars: int,
) -> list[PoolRequest]:
    """The opening request of every conversation that is not held out, once per text (normalised).

    Held out means the same base conversation id, the same opening exchange (a copy under another id), or an
    opening request that is, as text, a user message of a held-out conversation."""
    bases = {base_conversation_id(cid) for cid, _ in held_out}
    openings = {opening_key(msgs) for _, msgs in held_out}
    held_texts = {normalise(m["content"]) for _, msgs in held_out for m in msgs if m.get("role") == "user"}
    seen: set[str] = set()
    pool = []
    for c in conversations:
        if base_conversation_id(c.conversation_id) in bases or opening_key(c.messages) in openings:
            continue
        first = next((m for m in c.messages if m.get("role") == "user"), None)
        text = (first or {}).get("content", "").strip()
        key = normalise(text)
        if not text or len(text) > max_chars or key in held_texts or key in seen:
            continue
        seen.add(key)
        pool.append(PoolRequest(text, c.conversation_id))
    return pool


def similarity_matrix(encoder: Encoder, queries: Sequence[str], pool: Sequence[str]) -> list[list[float]]:
    """Cosine similarity of every query to every pool text (rounded as music.pairs.relevance rounds): one
    encoding of each text with a real encoder (`encode`), pairwise `similarity` calls otherwise (test fakes)."""
    if not queries or not pool:
        return [[] for _ in queries]
    encode = getattr(encoder, "encode", None)
    if encode is None:
        flat = encoder.similarity([q for q in queries for _ in pool], [p for _ in queries for p in pool])
        return [[round(x, 6) for x in flat[i * len(pool) : (i + 1) * len(pool)]] for i in range(len(queries))]
    sims = encode(list(queries)) @ encode(list(pool)).T
    return [[round(float(x), 6) for x in row] for row in sims]


def nearest_in_band(
    encoder: Encoder,
    originals: Sequence[str],
    own_conversations: Sequence[str],
    pool: Sequence[PoolRequest],
    band: Sequence[float],
    k: int,
) -> list[list[tuple[PoolRequest, float]]]:
    """Per original request, up to `k` pool requests whose similarity to it lies in [lo, hi], nearest first (pool
    order breaks ties); a request of the original's own conversation (same base id) is never taken."""
    lo, hi = band
    sims = similarity_matrix(encoder, list(originals), [p.text for p in pool])
    out = []
    for own, row in zip(own_conversations, sims):
        own_base = base_conversation_id(own)
        inside = [
            i for i, s in enumerate(row) if lo <= s <= hi and base_conversation_id(pool[i].conversation_id) != own_base
        ]
        inside.sort(key=lambda i: (-row[i], i))
        out.append([(pool[i], row[i]) for i in inside[:k]])
    return out
