"""Filters for generated pairs, each with a name; the first failing reason of a candidate is counted.

A candidate is {"fields": pair fields (for music.schema.pair_record), "events": [generated messages],
"failure": reason the generation already stopped with, or None}. Filters read the events (every
message a model wrote for this pair, with its finish reason) and the two conversations.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from music.config import ContrastConfig

# Order matters: the first failing reason is the one counted.
REASONS = (
    "generation_error",  # the backend gave up (after its retries)
    "empty_reply",  # nothing left after clean-up
    "modified_request",  # missing, unparseable, or equal to the original request
    "request_band",  # no rewritten request within contrast.request_similarity of the original (not a failure)
    "truncated",  # cut by max_new_tokens and not trimmable to a full sentence (or drop_truncated)
    "identical",  # chosen == rejected
    "role_leakage",  # user model speaking as the assistant, or the assistant writing the user's turn
    "echo",  # a simulated message repeats the one it answers, or an earlier one of its role (MUSIC pairs)
    "weak_contrast",  # the replies at the divergence turn do not answer different requests (MUSIC pairs)
    "over_length",  # a generated message longer than max_reply_chars
)

_MARKERS = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|?(?:user|assistant|system)\|?>|(?:^|\n)\s*\**\s*(?:user|assistant|human|ai|system)\s*\**\s*:",
    re.I,
)
_ASSISTANT_OPENERS = re.compile(
    r"^\s*(?:sure[,!.]?\s+here|certainly[,!.]|of course[,!.]\s+here|here is|here's|here are"
    r"|as an ai|i'm an ai|i am an ai"
    r"|as a language model|i'm sorry, but i|i am sorry, but i|i can't assist|i cannot assist|great question)",
    re.I,
)


def user_leaks(text: str) -> bool:
    """The user model answered as the assistant ('Sure, here is', 'As an AI') or wrote role markers."""
    return bool(_ASSISTANT_OPENERS.search(text) or _MARKERS.search(text))


def assistant_leaks(text: str) -> bool:
    """The assistant wrote a turn of the conversation itself ('User: ...', chat-template markers)."""
    return bool(_MARKERS.search(text))


def normalized(text: str | None) -> str:
    """Case-folded words only: two requests that differ in case or punctuation are the same request."""
    return re.sub(r"[\W_]+", " ", (text or "").casefold()).strip()


def _events(c: dict) -> list[dict]:
    return c.get("events", [])


def _generation_error(c: dict, cfg: ContrastConfig) -> bool:
    return c.get("failure") == "generation_error" or any(e["finish_reason"] == "error" for e in _events(c))


def _empty(c: dict, cfg: ContrastConfig) -> bool:
    return c.get("failure") == "empty_reply" or any(not e["text"].strip() for e in _events(c))


def _modified_request(c: dict, cfg: ContrastConfig) -> bool:
    f = c["fields"]
    if f.get("kind") != "music":
        return False
    if c.get("failure") == "modified_request":
        return True
    mod = f.get("modified_request")
    return not normalized(mod) or normalized(mod) == normalized(f.get("original_request"))


def _request_band(c: dict, cfg: ContrastConfig) -> bool:
    return c.get("failure") == "request_band"


def _truncated(c: dict, cfg: ContrastConfig) -> bool:
    return any(e["finish_reason"] == "length" and (cfg.drop_truncated or not e["trimmed"]) for e in _events(c))


def _identical(c: dict, cfg: ContrastConfig) -> bool:
    return c["fields"].get("chosen") == c["fields"].get("rejected")


def _leakage(c: dict, cfg: ContrastConfig) -> bool:
    for e in _events(c):
        if e.get("real"):  # a person's message (the seed's next user message): not the user model's leak
            continue
        if e["role"] in ("user", "modified_request") and user_leaks(e["text"]):
            return True
        if e["role"] == "assistant" and assistant_leaks(e["text"]):
            return True
    return False


def _echo(c: dict, cfg: ContrastConfig) -> bool:
    echo = c.get("notes", {}).get("echo")
    return cfg.max_echo_similarity is not None and echo is not None and echo > cfg.max_echo_similarity


def _weak_contrast(c: dict, cfg: ContrastConfig) -> bool:
    notes = c.get("notes", {})
    if cfg.min_contrast_margin is None or "rejected_margin" not in notes:
        return False
    return min(notes["chosen_margin"], notes["rejected_margin"]) < cfg.min_contrast_margin


def _over_length(c: dict, cfg: ContrastConfig) -> bool:
    return any(len(e["text"]) > cfg.max_reply_chars for e in _events(c) if not e.get("real"))


CHECKS: dict[str, Callable[[dict, ContrastConfig], bool]] = {
    "generation_error": _generation_error,
    "empty_reply": _empty,
    "modified_request": _modified_request,
    "request_band": _request_band,
    "truncated": _truncated,
    "identical": _identical,
    "role_leakage": _leakage,
    "echo": _echo,
    "weak_contrast": _weak_contrast,
    "over_length": _over_length,
}
assert tuple(CHECKS) == REASONS


def first_failure(candidate: dict, cfg: ContrastConfig) -> str | None:
    for reason, check in CHECKS.items():
        if check(candidate, cfg):
            return reason
    if candidate.get("failure"):  # a reason no check knows must still not pass silently
        return str(candidate["failure"])
    return None


def generation_error(candidate: dict, cfg: ContrastConfig) -> str | None:
    """The request error of a candidate whose first failure is `generation_error` (for failure reports), else None."""
    if first_failure(candidate, cfg) != "generation_error":
        return None
    return (
        next(
            (e["error"] for e in candidate["events"] if e["finish_reason"] == "error"),
            candidate.get("notes", {}).get("instruct_error"),
        )
        or "no text"
    )


def apply_filters(candidates: Sequence[dict], cfg: ContrastConfig) -> tuple[list[dict], dict]:
    """(kept candidates, {"candidates", "kept", "removed": {reason: count}}) in input order."""
    removed = {r: 0 for r in REASONS}
    kept = []
    for c in candidates:
        reason = first_failure(c, cfg)
        if reason is None:
            kept.append(c)
        else:
            removed[reason] = removed.get(reason, 0) + 1
    return kept, {"candidates": len(candidates), "kept": len(kept), "removed": removed}


def report_frame(report: dict):
    """The filter report as a pandas DataFrame: one row per reason (+ candidates, kept), one column per split."""
    import pandas as pd

    splits = list(report["splits"])
    index = ["candidates", *report["reasons"], "kept"]
    data = {
        s: [
            report["splits"][s]["candidates"],
            *(report["splits"][s]["removed"].get(r, 0) for r in report["reasons"]),
            report["splits"][s]["kept"],
        ]
        for s in splits
    }
    return pd.DataFrame(data, index=index)


def report_markdown(report: dict) -> str:
    """The same table as markdown (no extra dependency)."""
    frame = report_frame(report)
    rows = ["| | " + " | ".join(frame.columns) + " |", "|---" * (len(frame.columns) + 1) + "|"]
    rows += [f"| {idx} | " + " | ".join(str(v) for v in row) + " |" for idx, row in zip(frame.index, frame.values)]
    return "\n".join(rows)
