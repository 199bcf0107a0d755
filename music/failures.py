"""Failed units of a stage, counted per reason, and the check that fails a stage when too many failed.

A *failure* is a unit the stage could not produce because a request or its parsing failed: a
conversation whose user or assistant request failed (simulate), a MUSIC candidate whose contrast
request failed or whose `instruct` reply did not parse (contrast), a Best-of-N game with no
conversation (best_of_n). What the quality filters remove on purpose (weak_contrast, echo, an empty
or cut reply...) is not a failure: it is counted in the filter report. A stage whose share of failed
units exceeds its `max_failed_share` (params) raises StageFailed with the counts per reason, the first
error of each reason and what to change; below it, the counts go into the stage's report file.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

FIRST_ERROR_CHARS = 400


class StageFailed(RuntimeError):
    """Too many units of a stage failed (or a stage produced none of what the next one needs)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def failure_summary(units: int, failures: Iterable[tuple[str, str]]) -> dict:
    """{"units", "failed", "share", "by_reason": {reason: {"count", "first_error"}}} from (reason, error) per
    failed unit, in the units' order (so "first" is the first failed unit of that reason)."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for reason, error in failures:
        counts[reason] += 1
        first.setdefault(reason, str(error)[:FIRST_ERROR_CHARS])
    failed = sum(counts.values())
    return {
        "units": units,
        "failed": failed,
        "share": round(failed / units, 4) if units else None,
        "by_reason": {r: {"count": counts[r], "first_error": first[r]} for r in sorted(counts)},
    }


def describe(summary: dict) -> str:
    """'3 of 10 failed (30.0%): generation_error 3 (first: ...)' on several lines."""
    if not summary["failed"]:
        return f"0 of {summary['units']} failed"
    lines = [f"{summary['failed']} of {summary['units']} failed ({100 * summary['share']:.1f}%):"]
    lines += [f"  {r}: {v['count']} (first: {v['first_error']})" for r, v in summary["by_reason"].items()]
    return "\n".join(lines)


def check_failed_share(summary: dict, max_share: float, *, what: str, key: str, advice: str) -> None:
    """Raise StageFailed when more than `max_share` of the units failed.

    what: "simulate (train): conversations"; key: the params key that sets the limit; advice: what to change."""
    if summary["units"] and summary["failed"] > max_share * summary["units"]:
        raise StageFailed(f"{what}: {describe(summary)}\nThat is more than {key}={max_share}. {advice}", summary)
