"""RewardBench accuracy with the benchmark's exact section rules (see constants.py).

Per subset: accuracy of chosen > rejected (ties wrong). Per section: sum(acc_s * n_s) / sum(n_s)
over the subsets present, n_s from EXAMPLE_COUNTS. Average: mean of the four sections, reported
only when all four are present (a partial local file gives sections but no average).

Section keys are SECTION_KEYS (chat, chat_hard, safety, reasoning, average) everywhere; the evaluate
stage writes one items.csv row per RewardBench pair and seed (test "rewardbench", source = the subset),
so music.evaluate.compare can pair MUSIC and baseline item by item within each section.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from music.errors import DataError
from music.evaluate.constants import EXAMPLE_COUNTS, HUB_ID, HUB_SPLIT, REWARDBENCH_TEST, SECTIONS
from music.evaluate.items import Item, items_from_pairs
from music.evaluate.stats import strict_wins
from music.schema import PreferencePair
from music.sources import load_rewardbench

SUBSET_TO_SECTION = {s: sec for sec, subsets in SECTIONS.items() for s in subsets}


def section_scores(subset_accuracy: dict[str, float]) -> dict[str, float | None]:
    """Weighted section scores and their mean, from per-subset accuracies (fractions 0..1).

    >>> section_scores({"hep-cpp": 1.0, "hep-go": 0.5})  # absent subsets skipped; no average without all four
    {'chat': None, 'chat_hard': None, 'safety': None, 'reasoning': 0.75, 'average': None}
    >>> code = {f"hep-{lang}": 0.0 for lang in ("cpp", "go", "java", "js", "python", "rust")}
    >>> section_scores({"math-prm": 1.0, **code})["reasoning"]  # math-prm weighs 984 = the six code subsets
    0.5
    >>> section_scores({"alpacaeval-easy": 1.0, "mt-bench-hard": 0.5, "donotanswer": 0.75, "hep-go": 0.25})
    {'chat': 1.0, 'chat_hard': 0.5, 'safety': 0.75, 'reasoning': 0.25, 'average': 0.625}
    """
    out: dict[str, float | None] = {}
    for section, subsets in SECTIONS.items():
        present = [s for s in subsets if s in subset_accuracy]
        weight = sum(EXAMPLE_COUNTS[s] for s in present)
        out[section] = sum(subset_accuracy[s] * EXAMPLE_COUNTS[s] for s in present) / weight if weight else None
    values = [out[s] for s in SECTIONS]
    out["average"] = sum(values) / len(values) if all(v is not None for v in values) else None
    return out


def subset_accuracy(subsets: Sequence[str], chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for subset, ok in zip(subsets, strict_wins(chosen, rejected)):
        hits[subset].append(ok)
    return {s: sum(v) / len(v) for s, v in sorted(hits.items())}


def pair_subsets(pairs: Sequence[PreferencePair], source: str = "rewardbench") -> list[str]:
    """Each pair's subset, checked against the scoring tables (an unknown one names the record)."""
    subsets = []
    for i, p in enumerate(pairs):
        subset = p.meta.get("subset")
        if subset not in SUBSET_TO_SECTION:
            raise DataError(source, i, "subset", f"unknown RewardBench subset {subset!r}")
        subsets.append(subset)
    return subsets


def rewardbench_result(subsets: Sequence[str], chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """{"subsets": {...}, "subset_n": {...}, sections..., "average", "n"} from each pair's two scores.

    >>> r = rewardbench_result(["hep-go", "hep-go", "hep-cpp"], [2.0, 1.0, 0.5], [1.0, 1.0, 0.0])
    >>> r["subsets"], r["subset_n"], r["reasoning"], r["average"]  # the tie in hep-go is wrong
    ({'hep-cpp': 1.0, 'hep-go': 0.5}, {'hep-cpp': 1, 'hep-go': 2}, 0.75, None)
    """
    acc = subset_accuracy(subsets, chosen, rejected)
    counts = {s: list(subsets).count(s) for s in acc}
    return {**section_scores(acc), "subsets": acc, "subset_n": counts, "n": len(subsets)}


def score_rewardbench(scorer, pairs: Sequence[PreferencePair], *, source: str = "rewardbench") -> dict:
    """Score every pair once and return {"subsets": {...}, "subset_n": {...}, sections..., "average"}."""
    subsets = pair_subsets(pairs, source)
    scores = scorer.score([p.chosen for p in pairs] + [p.rejected for p in pairs])
    n = len(pairs)
    return rewardbench_result(subsets, scores[:n], scores[n:])


def rewardbench_items(pairs: Sequence[PreferencePair], *, source: str = "rewardbench") -> list[Item]:
    """One item per pair (test "rewardbench", id from the hub's `id`, source = the subset): in no group,
    every row kept (a tie, or an identical pair, is wrong, as in RewardBench)."""
    subsets = pair_subsets(pairs, source)
    items = items_from_pairs(REWARDBENCH_TEST, pairs)
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(source, ids.index(dup), "id", f"RewardBench id {dup!r} appears twice (items are paired by id)")
    return [
        Item(it.test, it.item_id, it.distance, it.chosen, it.rejected, subset) for it, subset in zip(items, subsets)
    ]


def load_rewardbench_pairs(path: str | None) -> list[PreferencePair]:
    """A local file of the hub schema (prompt, chosen, rejected, subset), or the hub (split "filtered")
    when path is None. Never subsampled: the section weights assume whole subsets."""
    return load_rewardbench(path) if path else load_rewardbench(f"hub:{HUB_ID}", split=HUB_SPLIT)
