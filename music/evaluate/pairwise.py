"""Accuracy on held-out labelled pairs, plus the guards every evaluation runs first.

Held-out pairs (outputs/pairs/{d_eval,music_eval}) are scored by kind; MUSIC pairs also by the
distance of their divergence from the end of the conversation (1 = the last user turn diverged,
i.e. the ordinary last-turn setting; larger = the error sits further back in the history).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from music import sources
from music.evaluate.stats import accuracy_summary, strict_wins
from music.rm.score import score_pairs
from music.schema import PreferencePair, user_turns


# ---------------------------------------------------------------- guards
def require_model(model_dir: str | Path, variant: str) -> Path:
    """Stop with a message naming the path when a trained RM or its metrics file is missing."""
    model_dir = Path(model_dir)
    for needed in (model_dir / "config.json", model_dir / "train_metrics.json"):
        if not needed.exists():
            raise FileNotFoundError(
                f"reward model '{variant}' is incomplete: {needed} does not exist "
                f"(train it first: python -m music.notebook train --variant {variant}, or dvc repro train@{variant})"
            )
    return model_dir


# ---------------------------------------------------------------- scoring
def divergence_distance(pair: PreferencePair) -> int:
    """1 + user turns after the divergence turn (1 = diverged at the last user turn)."""
    turn = pair.meta.get("divergence_turn")
    if turn is None:
        raise ValueError("pair has no divergence_turn")
    return user_turns(pair.chosen) - int(turn) + 1


def pairwise_accuracy(scorer, pairs: Sequence[PreferencePair]) -> dict:
    """{"by_kind": {kind: summary}, "all": summary, "music_by_distance": {str(d): summary}}."""
    chosen, rejected = score_pairs(scorer, pairs)
    ok = strict_wins(chosen, rejected)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_distance: dict[int, list[bool]] = defaultdict(list)
    for pair, hit in zip(pairs, ok):
        kind = str(pair.meta.get("kind", "unknown"))
        by_kind[kind].append(hit)
        if kind == "music" and pair.meta.get("divergence_turn") is not None:
            by_distance[divergence_distance(pair)].append(hit)
    return {
        "all": accuracy_summary(ok),
        "by_kind": {k: accuracy_summary(v) for k, v in sorted(by_kind.items())},
        "music_by_distance": {str(d): accuracy_summary(v) for d, v in sorted(by_distance.items())},
    }


# ---------------------------------------------------------------- local labelled sets
def _local_loader(name: str) -> Callable[..., list[PreferencePair]]:
    """The loader for a local set, by the start of its name (hh*, ultrafeedback*)."""
    loaders = {"hh": sources.load_hh, "ultrafeedback": sources.load_ultrafeedback}
    for key, fn in loaders.items():
        if name.lower().startswith(key):
            return fn
    raise ValueError(f"local set {name!r}: no loader (name must start with one of {sorted(loaders)})")


def local_set_accuracy(scorer, sets: dict[str, str], *, limit: int | None, loader=_local_loader) -> dict:
    """Accuracy on each local labelled set; an absent path is skipped with the reason recorded."""
    out: dict[str, dict] = {}
    for name, path in sorted(sets.items()):
        if not Path(path).exists():
            out[name] = {"skipped": f"{path} does not exist"}
            continue
        # Local files have no split; the loaders take the first `limit` records (deterministic).
        # Real sets hold a few malformed records (HH: empty turns): skip and count them, don't stop.
        skipped: list = []
        pairs = loader(name)(path, limit=limit, skipped=skipped)
        out[name] = {**accuracy_summary(strict_wins(*score_pairs(scorer, pairs))), "n_skipped": len(skipped), "path": str(path)}
    return out
