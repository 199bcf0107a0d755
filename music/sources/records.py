"""Read raw records from local files (JSONL, JSONL.gz, JSON array, Parquet) or the Hugging Face hub."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from music.errors import DataError
from music.files import open_text, read_jsonl

HUB_PREFIX = "hub:"

# The one default limit on malformed records in a lenient load (Skipped): the seed and contrast stages' defaults
# (seed.max_malformed_share, contrast.max_malformed_share), the local evaluation sets and the benchmarks use it.
MAX_MALFORMED_SHARE = 0.01
MAX_MALFORMED_KEY = "music.sources.records.MAX_MALFORMED_SHARE"  # what an error tells you to raise


def check_limit(limit: int | None) -> None:
    """`limit`: None reads every record, N >= 1 the first N, the same for every format and the hub."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1, or None for all records; got {limit!r}")


def iter_records(location: str | Path, split: str = "train", limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (record label, record) from a local file or `hub:<dataset id>`.

    Labels are what error messages call the record: "line N" for JSONL, "row N" otherwise. `limit`: the first
    N records (N >= 1), or None for all, whatever the format.
    """
    check_limit(limit)
    loc = str(location)
    if loc.startswith(HUB_PREFIX):
        rows = load_hub_rows(loc[len(HUB_PREFIX) :], split, limit)
        for i, row in enumerate(rows):
            yield f"row {i}", row
        return
    path = Path(loc)
    if not path.exists():
        raise DataError(path, "-", None, "file does not exist")
    name = path.name.lower()
    count = 0
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        for lineno, obj in read_jsonl(path):
            if limit is not None and count >= limit:
                return
            count += 1
            yield f"line {lineno}", obj
    elif name.endswith((".json", ".json.gz")):
        with open_text(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {exc.lineno}", None, f"malformed JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise DataError(path, "-", None, "expected a JSON array of records")
        if not data:
            raise DataError(path, "-", None, "file is empty (no records)")
        for i, obj in enumerate(data[:limit]):
            yield f"row {i}", obj
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        if not rows:
            raise DataError(path, "-", None, "file is empty (no records)")
        for i, obj in enumerate(rows[:limit]):
            yield f"row {i}", obj
    else:
        raise DataError(path, "-", None, "unknown file type (expected .jsonl, .jsonl.gz, .json or .parquet)")


def load_hub_rows(dataset_id: str, split: str, limit: int | None = None) -> list[dict]:
    """Rows of a Hugging Face dataset (needs the hub, or a local datasets cache)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise RuntimeError("loading from the hub needs the `datasets` package") from exc
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"could not load {dataset_id!r} (split {split!r}) from the Hugging Face hub: {exc}. "
            "Offline, point the stage at a local file of the same format instead."
        ) from exc
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()


class Skipped(list):
    """Malformed records a lenient load skipped (DataErrors), counted per reason with the first few labels.

    Pass one as a loader's `skipped`. `check()` (after the load) raises a DataError when more than
    `max_share` of the records read were malformed, or when none could be used; `summary()` is what a stage
    report records.
    """

    FIRST = 3  # record labels kept per reason

    def __init__(self, source: str, max_share: float = MAX_MALFORMED_SHARE, key: str = MAX_MALFORMED_KEY):
        super().__init__()
        self.source, self.max_share, self.key = str(source), max_share, key
        self.read = 0  # records read (kept + skipped), set by convert_records

    @staticmethod
    def reason(err: DataError) -> str:
        field = re.sub(r"\[\d+\]", "[]", err.field) if err.field else "-"
        return f"{field}: {re.sub(r'[0-9]+', 'N', err.problem)}"

    def summary(self) -> dict:
        by: dict[str, dict] = {}
        for err in self:
            entry = by.setdefault(self.reason(err), {"count": 0, "first_records": []})
            entry["count"] += 1
            if len(entry["first_records"]) < self.FIRST:
                entry["first_records"].append(str(err.record))
        return {
            "source": self.source,
            "records_read": self.read,
            "skipped": len(self),
            "by_reason": dict(sorted(by.items())),
        }

    def check(self) -> dict:
        """The summary; a DataError when more than max_share of the records read were malformed, or when every
        record read was: a set that yields nothing is an error, whatever the share."""
        summary = self.summary()
        if self and (len(self) > self.max_share * max(self.read, 1) or len(self) >= self.read):
            reasons = "; ".join(
                f"{r}: {v['count']} (first: {', '.join(v['first_records'])})" for r, v in summary["by_reason"].items()
            )
            some = len(self) < self.read
            raise DataError(
                self.source,
                self[0].record,
                self[0].field,
                f"{len(self)} of {self.read} records are malformed, "
                + (f"more than {self.key}={self.max_share}" if some else "none could be used")
                + f" (by reason: {reasons}). First: {self[0]}. Check the file's format"
                + (f", or raise {self.key}." if some else " (is it the format its loader expects?)."),
            )
        return summary


def convert_records(
    location: str | Path,
    convert: Callable[..., Any],
    *,
    split: str = "train",
    limit: int | None = None,
    skipped: list[DataError] | None = None,
) -> list:
    """Apply `convert(rec, source=, record=)` to every record; bad ones raise, or go to `skipped`."""
    source = str(location)
    out = []
    read = 0
    for label, rec in iter_records(location, split, limit):
        read += 1
        try:
            out.append(convert(rec, source=source, record=label))
        except DataError as err:
            if skipped is None:
                raise
            skipped.append(err)
    if isinstance(skipped, Skipped):
        skipped.read += read
    return out


def require_fields(rec: Any, fields: tuple[str, ...], *, source: str, record: object) -> dict:
    if not isinstance(rec, dict):
        raise DataError(source, record, None, f"expected an object, got {type(rec).__name__}")
    for f in fields:
        if f not in rec:
            raise DataError(source, record, f, "missing field")
    return rec


def require_text(rec: dict, field: str, *, source: str, record: object) -> str:
    value = rec[field]
    if not isinstance(value, str):
        raise DataError(source, record, field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(source, record, field, "empty content")
    return value
