"""Evaluation items: every test is a list of (chosen, rejected) conversation pairs with an id and a distance.

An item is right when the RM scores chosen strictly higher (a tie is wrong, as in RewardBench). Items
carry ids so two RMs (and several training seeds of each) are compared *paired*, item by item.
Distance = how many assistant turns before the end the two conversations first differ: 1 = the last
reply (an ordinary last-turn judgement), >= 2 = an earlier reply, everything after it identical or
continued on each side. Distance 0 = identical conversations (e.g. an UltraFeedback record whose chosen
and rejected replies are the same): nothing to judge, so such an item belongs to no group, and the evaluate
stage drops it before scoring (counted in info.json); RewardBench keeps every row (its own rules).

Tests (TESTS): `quality` (a strong vs a weak reply at one turn: real ChatGPT vs the embedded model on
held-out ShareGPT chats, GPT-4's MT-Bench reference vs the embedded model; the same pairs at distance
1 and, with one more identical real turn after them, at distance 2), `swap` (one reply swapped for a
like-for-like reply from another held-out conversation: music.evaluate.swap), `music` (held-out MUSIC
pairs), and the committed last-turn sets `hh`, `ultrafeedback`.

Groups, the endpoints fixed in advance (the headline of music.evaluate.compare): `early` =
swapped replies at distance >= 2 and held-out MUSIC pairs, both length-matched (HEADLINE_EARLY_TESTS; a
MUSIC pair whose two sides' assistant text differs by more than LENGTH_TOLERANCE is in no group), `last`
= the distance-1 items of HEADLINE_LAST_TESTS. Quality twins are in no group: a strong vs a weak reply can
be told apart anywhere in a conversation without reading which turn it is in, so they are reported
apart, beside the history-blind references. Everything outside the two groups is secondary.

Every item also carries a `cluster` (items sharing a conversation or question resample together:
swap@1/2/3 share a conversation, the two quality twins share a question) and two history-blind
references: the same RM fed only the last exchange (`last_exchange`: the final user message and reply)
and length alone (`length_score`: the side with more assistant characters wins). A reference that
cannot tell the sides apart (equal scores) counts 1/2, i.e. chance (`reference_correct`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from music.evaluate.stats import accuracy_summary
from music.files import dumps_canonical
from music.schema import PreferencePair, first_difference_distance

REAL_TESTS = ("quality", "swap", "swap_same", "hh", "ultrafeedback")  # built from real data
TESTS = (*REAL_TESTS, "music")
GROUPS = ("early", "last")
# swap_same (a reply from another turn of the same chat) is secondary: in the first run with it every RM preferred
# the conversation holding a copy of one of its own replies (about 21% right, far below chance), a repetition
# effect that would swamp the endpoints; it is reported apart, beside them.
HEADLINE_EARLY_TESTS = ("swap", "music")  # at distance >= 2, length-matched
HEADLINE_LAST_TESTS = ("swap", "music", "hh", "ultrafeedback")  # at distance 1 (quality twins: apart)
LENGTH_TOLERANCE = 0.2  # length-matched: the two sides' assistant characters within +-20% (swap's donor rule)


def length_score(conv: Sequence[dict]) -> int:
    """The length-alone reference's score: characters of the conversation's assistant messages."""
    return sum(len(m["content"]) for m in conv if m["role"] == "assistant")


def is_length_matched(chosen: Sequence[dict], rejected: Sequence[dict], tolerance: float = LENGTH_TOLERANCE) -> bool:
    a, b = length_score(chosen), length_score(rejected)
    return abs(a - b) <= tolerance * max(a, b)


def last_exchange(conv: Sequence[dict]) -> list[dict]:
    """What the history-blind reference sees: the final user message and the reply to it (no system prompt,
    nothing earlier)."""
    users = [i for i, m in enumerate(conv) if m["role"] == "user"]
    if not users or conv[-1]["role"] != "assistant":
        raise ValueError("a conversation to score must hold a user message and end with an assistant reply")
    return [dict(conv[users[-1]]), dict(conv[-1])]


def reference_correct(chosen_score: float, rejected_score: float) -> float:
    """A reference's verdict: 1 chosen higher, 0 lower, 1/2 a tie (it cannot tell the sides apart: chance)."""
    return 1.0 if chosen_score > rejected_score else 0.0 if chosen_score < rejected_score else 0.5


@dataclass(frozen=True)
class Item:
    test: str
    item_id: str  # unique within its test; the same id in every RM's results
    distance: int  # assistant turns from the end where chosen and rejected first differ
    chosen: list[dict]
    rejected: list[dict]
    source: str = ""  # where the pair comes from (e.g. "sharegpt", "mtbench")
    cluster: str = ""  # items sharing a conversation or question (the bootstrap resamples them together); "" = alone

    @property
    def cluster_id(self) -> str:
        return self.cluster or f"{self.test}:{self.item_id}"

    @property
    def group(self) -> str | None:
        """The headline endpoint the item belongs to (module docstring), None = secondary."""
        if self.distance == 1 and self.test in HEADLINE_LAST_TESTS:
            return "last"
        if self.distance >= 2 and self.test in HEADLINE_EARLY_TESTS and is_length_matched(self.chosen, self.rejected):
            return "early"
        return None  # distance 0 (identical sides, nothing to judge), quality twins, unmatched lengths

    def blind(self) -> "Item":
        """The same item as the history-blind reference sees it: each side's last exchange only."""
        return Item(
            self.test,
            self.item_id,
            self.distance,
            last_exchange(self.chosen),
            last_exchange(self.rejected),
            self.source,
            self.cluster,
        )


def items_from_pairs(test: str, pairs: Sequence[PreferencePair], *, source: str = "") -> list[Item]:
    """Items from validated preference pairs; ids from pair_id (else the position)."""
    out = []
    for i, p in enumerate(pairs):
        pid = str(p.meta.get("pair_id") or i)
        cluster = p.meta.get("conversation_id") or ""
        out.append(
            Item(
                test,
                pid,
                first_difference_distance(p.chosen, p.rejected),
                p.chosen,
                p.rejected,
                source or str(p.meta.get("source") or ""),
                str(cluster),
            )
        )
    return out


def score_items(scorer, items: Sequence[Item]) -> list[tuple[float, float]]:
    """(chosen score, rejected score) per item, each distinct conversation scored once (one scorer call)."""
    keys: dict[str, int] = {}
    convs: list[list[dict]] = []
    refs = []
    for item in items:
        pair = []
        for conv in (item.chosen, item.rejected):
            key = dumps_canonical(conv)
            if key not in keys:
                keys[key] = len(convs)
                convs.append(conv)
            pair.append(keys[key])
        refs.append(pair)
    scores = list(scorer.score(convs)) if convs else []
    return [(float(scores[c]), float(scores[r])) for c, r in refs]


def score_groups(scorer, groups: dict[str, Sequence[Item]]) -> dict[str, list[tuple[float, float]]]:
    """score_items over every named group of items in one scorer call (a conversation shared by groups is scored
    once), split back by name: {name: [(chosen score, rejected score) per item]}."""
    scores = score_items(scorer, [item for group in groups.values() for item in group])
    out, start = {}, 0
    for name, group in groups.items():
        out[name], start = scores[start : start + len(group)], start + len(group)
    return out


def item_rows(
    items: Sequence[Item],
    scores: Sequence[tuple[float, float]],
    blind: Sequence[tuple[float, float]] | None = None,
    **extra,
) -> list[dict]:
    """One row per item (for outputs/metrics/items): ids, cluster, distance, both scores, and whether it was
    right; with `blind` (the last-exchange scores) the history-blind and length-alone verdicts too."""
    out = []
    for i, (it, (c, r)) in enumerate(zip(items, scores)):
        row = {
            **extra,
            "test": it.test,
            "item_id": it.item_id,
            "source": it.source,
            "distance": it.distance,
            "group": it.group or "",
            "chosen_score": round(c, 6),
            "rejected_score": round(r, 6),
            "correct": int(c > r),
            "cluster": it.cluster_id,
        }
        if blind is not None:
            bc, br = blind[i]
            row.update(
                blind_chosen_score=round(bc, 6),
                blind_rejected_score=round(br, 6),
                blind_correct=reference_correct(bc, br),
                length_correct=reference_correct(length_score(it.chosen), length_score(it.rejected)),
            )
        out.append(row)
    return out


def summarize_rows(rows: Iterable[dict]) -> dict:
    """Accuracy (Wilson 95% interval) per test, per test and distance, and per group."""
    by_test: dict[str, list[bool]] = defaultdict(list)
    by_distance: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    by_group: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        hit = bool(r["correct"])
        by_test[r["test"]].append(hit)
        by_distance[r["test"]][int(r["distance"])].append(hit)
        if r["group"]:
            by_group[r["group"]].append(hit)
    return {
        "tests": {
            t: {
                **accuracy_summary(v),
                "by_distance": {str(d): accuracy_summary(h) for d, h in sorted(by_distance[t].items())},
            }
            for t, v in sorted(by_test.items())
        },
        "groups": {g: accuracy_summary(by_group[g]) for g in GROUPS if g in by_group},
    }
