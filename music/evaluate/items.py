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
pairs), and the committed last-turn sets `hh`, `ultrafeedback`. Groups: `early` = the real-data tests
at distance >= 2, `last` = the real-data tests at distance 1 (held-out MUSIC pairs are reported on
their own: they come from the same generator as the training pairs).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from music.evaluate.stats import accuracy_summary
from music.io import dumps_canonical
from music.schema import PreferencePair, first_difference_distance

REAL_TESTS = ("quality", "swap", "hh", "ultrafeedback")  # built from real data
TESTS = (*REAL_TESTS, "music")
GROUPS = ("early", "last")


@dataclass(frozen=True)
class Item:
    test: str
    item_id: str  # unique within its test; the same id in every RM's results
    distance: int  # assistant turns from the end where chosen and rejected first differ
    chosen: list[dict]
    rejected: list[dict]
    source: str = ""  # where the pair comes from (e.g. "sharegpt", "mtbench")

    @property
    def group(self) -> str | None:
        if self.test not in REAL_TESTS or self.distance < 1:  # distance 0: identical sides, nothing to judge
            return None
        return "last" if self.distance == 1 else "early"


def items_from_pairs(test: str, pairs: Sequence[PreferencePair], *, source: str = "") -> list[Item]:
    """Items from validated preference pairs; ids from pair_id (else the position)."""
    out = []
    for i, p in enumerate(pairs):
        pid = str(p.meta.get("pair_id") or i)
        out.append(Item(test, pid, first_difference_distance(p.chosen, p.rejected), p.chosen, p.rejected,
                        source or str(p.meta.get("source") or "")))
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


def item_rows(items: Sequence[Item], scores: Sequence[tuple[float, float]], **extra) -> list[dict]:
    """One row per item (for outputs/metrics/items): ids, distance, both scores, and whether it was right."""
    return [{**extra, "test": it.test, "item_id": it.item_id, "source": it.source, "distance": it.distance,
             "group": it.group or "", "chosen_score": round(c, 6), "rejected_score": round(r, 6), "correct": int(c > r)}
            for it, (c, r) in zip(items, scores)]


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
        "tests": {t: {**accuracy_summary(v), "by_distance": {str(d): accuracy_summary(h) for d, h in
                                                           sorted(by_distance[t].items())}}
                  for t, v in sorted(by_test.items())},
        "groups": {g: accuracy_summary(by_group[g]) for g in GROUPS if g in by_group},
    }
