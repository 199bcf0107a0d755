"""The README's results say what the committed run's summary says (no drift between prose and numbers)."""

from __future__ import annotations

import json

from helpers import REPO

from music.reporting import report

SUMMARY = REPO / "outputs" / "metrics" / "summary.json"
LEAD = "**In one sentence:** "


def _readme_line(prefix: str) -> str:
    lines = [line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"README.md should hold one line starting with {prefix!r}, found {len(lines)}"
    return lines[0][len(prefix) :]


def test_the_readme_states_the_committed_result_in_one_sentence():
    summary = json.loads(SUMMARY.read_text(encoding="utf-8"))
    assert _readme_line(LEAD) == report.result_sentence(summary)


def test_the_readme_prints_the_headline_half_widths():
    summary = json.loads(SUMMARY.read_text(encoding="utf-8"))
    line = _readme_line("**Half-widths of the headline intervals** (points): ")
    assert line == "; ".join(f"{k} {v:.1f}" for k, v in report.half_widths(summary).items())
