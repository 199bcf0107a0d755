"""Prompts for Best-of-N: user turns to start (or script) a conversation, from one named source.

A source is a string (`evaluate.bon_source`):
- "mtbench" or "mtbench:PATH": MT-Bench questions (two user turns each; PATH: a question.jsonl);
- "hh:LOCATION": Anthropic HH-RLHF, the first human turn of each transcript (split "test"; LOCATION
  is `hub:Anthropic/hh-rlhf` or a local file of the same format);
- "ultrainteract:LOCATION": UltraInteract_pair, the first user turn of each `trajectory`, one per
  instruction (`parent_id`) (split "train", its only one; LOCATION `hub:openbmb/UltraInteract_pair` or a file);
- "file:PATH": a local .jsonl/.json/.parquet of {"turns": [str, ...]} or {"prompt": str}, with an
  optional id in "question_id", "prompt_id" or "id".
Each prompt is {"prompt_id": str, "turns": [user messages]}; where a conversation needs more turns
than a prompt has, the user simulator writes them (music.stages.best_of_n).

`KNOWN_HUB_ROWS` holds row counts from the hub's dataset cards, so the planner can check a profile
offline; they are upper bounds for prompts (duplicates are dropped on loading).
"""

from __future__ import annotations

from pathlib import Path

from music.errors import DataError
from music.sources.hh import parse_hh_transcript
from music.sources.mtbench import load_mtbench_questions
from music.sources.records import HUB_PREFIX, check_limit, iter_records

SOURCE_KINDS = ("mtbench", "hh", "ultrainteract", "file")
DEFAULT_SPLITS = {"hh": "test", "ultrainteract": "train", "file": "train", "mtbench": "train"}
SOURCE_TURNS = {"mtbench": 2, "hh": 1, "ultrainteract": 1}  # user turns per prompt ("file": read from it)

# (dataset id, split) -> rows, from the hub's dataset cards (checked offline by music.pipeline.plan).
KNOWN_HUB_ROWS = {
    ("Anthropic/hh-rlhf", "train"): 160_800,
    ("Anthropic/hh-rlhf", "test"): 8_552,
    ("openbmb/UltraInteract_pair", "train"): 219_522,
    ("Skywork/Skywork-Reward-Preference-80K-v0.2", "train"): 77_016,  # the collection page rounds it: "77k"
    ("trl-lib/ultrafeedback_binarized", "train"): 62_135,
    ("allenai/reward-bench", "filtered"): 2_985,
}


def parse_source(spec: str) -> tuple[str, str | None]:
    """(kind, location or None) from "KIND[:LOCATION]"; a bad spec names evaluate.bon_source."""
    kind, sep, location = str(spec).partition(":")
    if kind not in SOURCE_KINDS:
        raise DataError(
            "evaluate.bon_source",
            "-",
            None,
            f"unknown prompt source {spec!r}; expected one of {', '.join(SOURCE_KINDS)} (KIND[:LOCATION])",
        )
    if kind != "mtbench" and not location:
        raise DataError(
            "evaluate.bon_source", "-", None, f"{kind} needs a location: '{kind}:hub:<dataset id>' or '{kind}:<file>'"
        )
    return kind, (location or None)


def _first_user(messages: list[dict]) -> str | None:
    for m in messages:
        if m.get("role") == "user":
            return m.get("content")
    return None


def load_prompts(spec: str, *, limit: int | None = None) -> list[dict]:
    """Distinct prompts of a source, in the source's order (dedup by text); see the module docstring.

    `limit`: the first N prompts (N >= 1), or None for all. A source that yields no prompt is a DataError naming
    it (a file of another format: HH records without transcripts read as "hh")."""
    check_limit(limit)
    prompts = _load_prompts(spec, limit)
    if not prompts:
        raise DataError(spec, "-", None, "the prompt source yields no prompts (is it the format its kind expects?)")
    return prompts


def _load_prompts(spec: str, limit: int | None) -> list[dict]:
    kind, location = parse_source(spec)
    split = DEFAULT_SPLITS[kind]
    out: list[dict] = []
    seen: set[str] = set()

    def add(pid, turns):
        key = "\x00".join(turns)
        if turns and all(isinstance(t, str) and t.strip() for t in turns) and key not in seen:
            seen.add(key)
            out.append({"prompt_id": str(pid), "turns": [t.strip() for t in turns]})

    if kind == "mtbench":
        for q in load_mtbench_questions(location):
            add(q["question_id"], q["turns"])
        return out[:limit]
    if kind == "hh":
        for label, rec in iter_records(location, split=split):
            text = rec.get("chosen") if isinstance(rec, dict) else None
            try:
                conv = parse_hh_transcript(text, source=str(location), record=label, field="chosen")
            except DataError:
                continue  # HH holds a few malformed transcripts; they cannot give a prompt
            add(f"hh:{label}", [_first_user(conv)] if _first_user(conv) else [])
            if limit and len(out) >= limit:
                break
        return out
    if kind == "ultrainteract":
        parents: set[str] = set()
        for label, rec in iter_records(location, split=split):
            if not isinstance(rec, dict) or not isinstance(rec.get("trajectory"), list):
                raise DataError(
                    location, label, "trajectory", "expected UltraInteract_pair rows with a trajectory list"
                )
            parent = str(rec.get("parent_id") or rec.get("id") or label)
            if parent in parents:
                continue
            parents.add(parent)
            first = next(
                (t.get("value") for t in rec["trajectory"] if isinstance(t, dict) and t.get("from") == "user"), None
            )
            add(f"ultrainteract:{parent}", [first] if first else [])
            if limit and len(out) >= limit:
                break
        return out
    for label, rec in iter_records(location, split=split):  # "file"
        if not isinstance(rec, dict):
            raise DataError(location, label, None, "expected an object with 'turns' or 'prompt'")
        turns = rec.get("turns", [rec["prompt"]] if "prompt" in rec else None)
        if not isinstance(turns, list) or not turns:
            raise DataError(
                location, label, "turns", "expected 'turns' (a list of user messages) or 'prompt' (a string)"
            )
        pid = next((rec[k] for k in ("question_id", "prompt_id", "id") if k in rec), label)
        add(pid, turns)
        if limit and len(out) >= limit:
            break
    return out


def count_available(spec: str) -> tuple[int | None, int | None, str]:
    """(prompts available or an upper bound, user turns per prompt, how it was found), without the hub.

    Local files are read (cheap); hub sets come from KNOWN_HUB_ROWS; (None, None, why) when unknown.
    """
    kind, location = parse_source(spec)
    split = DEFAULT_SPLITS[kind]
    if location and location.startswith(HUB_PREFIX):
        rows = KNOWN_HUB_ROWS.get((location[len(HUB_PREFIX) :], split))
        if rows is None:
            return (
                None,
                SOURCE_TURNS.get(kind),
                f"{location} (split {split}) is not in music.sources.prompts.KNOWN_HUB_ROWS",
            )
        return rows, SOURCE_TURNS.get(kind), f"{rows:,} rows in {location} split {split} (dataset card; an upper bound)"
    if kind != "mtbench" and not Path(location).exists():
        return None, None, f"{location} does not exist"
    try:
        prompts = load_prompts(spec)
    except (DataError, FileNotFoundError) as exc:
        return None, None, f"cannot read {spec}: {exc}"
    turns = min((len(p["turns"]) for p in prompts), default=0)
    return len(prompts), turns, f"{len(prompts)} distinct prompts read from {location or 'MT-Bench'}"
