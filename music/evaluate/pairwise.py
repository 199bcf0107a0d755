"""The guard every evaluation runs first, and the committed last-turn sets (HH-RLHF, UltraFeedback)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from music import sources
from music.errors import DataError
from music.schema import PreferencePair
from music.sources.records import MAX_MALFORMED_KEY, MAX_MALFORMED_SHARE, Skipped


def require_model(model_dir: str | Path, name: str) -> Path:
    """Stop with a message naming the path when a trained RM or its metrics file is missing."""
    model_dir = Path(model_dir)
    for needed in (model_dir / "config.json", model_dir / "train_metrics.json"):
        if not needed.exists():
            raise FileNotFoundError(
                f"reward model {name} is incomplete: {needed} does not exist "
                "(train it first: dvc repro train@<variant>, "
                "or python -m music.pipeline.notebooks train --variant <variant>)"
            )
    return model_dir


def _local_loader(name: str) -> Callable[..., list[PreferencePair]]:
    """The loader for a local set, by the start of its name (hh*, ultrafeedback*)."""
    loaders = {"hh": sources.load_hh, "ultrafeedback": sources.load_ultrafeedback}
    for key, fn in loaders.items():
        if name.lower().startswith(key):
            return fn
    raise ValueError(f"local set {name!r}: no loader (name must start with one of {sorted(loaders)})")


def local_pairs(
    name: str, path: str | Path, *, limit: int | None, max_malformed_share: float = MAX_MALFORMED_SHARE
) -> tuple[list[PreferencePair] | None, str | int]:
    """(pairs, malformed records skipped) of a local labelled set; (None, reason) when its file is absent.

    Local files have no split: the loaders take the first `limit` records (deterministic). Real sets hold
    a few malformed records (HH: empty turns): they are skipped and counted, up to `max_malformed_share` of
    the records read (the seed stage's limit, music.sources.records.Skipped); more, or a set that yields no
    pair (a file of another format: UltraFeedback rows named hh*), is a DataError naming the file.
    """
    if not Path(path).exists():
        return None, f"{path} does not exist"
    loader = _local_loader(name)
    skipped = Skipped(path, max_malformed_share, MAX_MALFORMED_KEY)
    try:
        pairs = loader(path, limit=limit, skipped=skipped)
        skipped.check()
        if not pairs:
            raise DataError(path, "-", None, "no pairs")
    except DataError as exc:
        raise DataError(
            exc.source, exc.record, exc.field, f"local set {name!r} (read as {loader.__name__}): {exc.problem}"
        ) from None
    return pairs, len(skipped)
