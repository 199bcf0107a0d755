"""Cheap relevance checks on generated turns, with a small sentence encoder (music.models.encoder).

Three uses in the contrast stage, all from cosine similarities of short texts:
- pick the modified request: of several requests the user model wrote again from the same history,
  keep the one most unlike the original request while still on the conversation's topic
  (similar to the assistant message it follows); optionally only among those whose similarity to the
  original lies in a window (`in_band`: close, but not a paraphrase);
- contrast margins: the rejected reply should be closer to the modified request than to the original
  (it answers something other than what was asked), and the chosen reply closer to the original than
  to the modified request (it answers what was asked); a pair whose margins are small is not a contrast;
- echo: a simulated message that repeats the message it replies to (a small model's habit), or
  repeats an earlier message of its own role, makes a conversation degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class Encoder(Protocol):  # music.models.encoder.SentenceEncoder; fakes in tests
    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]: ...


def pick_modified_request(
    encoder: Encoder, original: str, anchor: str, candidates: Sequence[str]
) -> tuple[int, list[float]]:
    """(index of the kept candidate, score per candidate): score = sim(candidate, anchor) - sim(candidate, original).

    `anchor` is the assistant message the request follows: a good modified request stays on its topic
    but asks something else than `original`. Ties keep the earlier candidate (deterministic).
    """
    if not candidates:
        raise ValueError("no candidate modified requests")
    n = len(candidates)
    sims = encoder.similarity([*candidates, *candidates], [anchor] * n + [original] * n)
    scores = [round(sims[i] - sims[n + i], 6) for i in range(n)]
    return max(range(n), key=lambda i: (scores[i], -i)), scores


def in_band(
    encoder: Encoder, original: str, candidates: Sequence[str], band: Sequence[float]
) -> tuple[list[int], list[float]]:
    """(indices of the candidates whose cosine similarity to `original` lies in [lo, hi], similarity per candidate).

    The window of contrast.request_similarity: above `hi` a rewrite is a paraphrase of the original (the two
    replies would answer the same request); below `lo` it asks about something else (not a near miss).
    """
    lo, hi = band
    sims = (
        [round(x, 6) for x in encoder.similarity(list(candidates), [original] * len(candidates))] if candidates else []
    )
    return [i for i, x in enumerate(sims) if lo <= x <= hi], sims


@dataclass(frozen=True)
class Contrast:
    original: str  # the user's request at the divergence turn
    modified: str  # the request the rejected reply answers
    chosen_reply: str
    rejected_reply: str


def contrast_margins(encoder: Encoder, items: Sequence[Contrast]) -> list[tuple[float, float]]:
    """(chosen margin, rejected margin) per item, one encoder call for all of them.

    chosen margin = sim(chosen reply, original) - sim(chosen reply, modified);
    rejected margin = sim(rejected reply, modified) - sim(rejected reply, original).
    """
    a, b = [], []
    for it in items:
        a += [it.chosen_reply, it.chosen_reply, it.rejected_reply, it.rejected_reply]
        b += [it.original, it.modified, it.modified, it.original]
    s = encoder.similarity(a, b) if items else []
    return [(round(s[4 * i] - s[4 * i + 1], 6), round(s[4 * i + 2] - s[4 * i + 3], 6)) for i in range(len(items))]


def echo_scores(encoder: Encoder, conversations: Sequence[list[dict]], starts: Sequence[int]) -> list[float]:
    """Per conversation, the highest similarity of a generated message (index >= start) to the message
    before it; 1.0 when a generated message repeats an earlier message of its own role word for word."""
    a, b, owner = [], [], []
    out = [0.0] * len(conversations)
    for k, (conv, start) in enumerate(zip(conversations, starts)):
        for i in range(max(start, 1), len(conv)):
            text = conv[i]["content"]
            earlier = {m["content"].strip().casefold() for m in conv[:i] if m["role"] == conv[i]["role"]}
            if text.strip().casefold() in earlier:
                out[k] = 1.0
            a.append(text)
            b.append(conv[i - 1]["content"])
            owner.append(k)
    for k, s in zip(owner, encoder.similarity(a, b) if a else []):
        out[k] = max(out[k], s)
    return [round(x, 6) for x in out]
