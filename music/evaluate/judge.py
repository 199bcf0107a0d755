"""Pairwise judging of two conversations with any chat backend.

The prompt is a file (music/prompts/judge_pairwise.txt) with {conversation_a} and {conversation_b};
the judge answers [[A]], [[B]] or [[C]] (tie). A reply we cannot parse is returned as None and
counted by the caller as a tie (and as unparsed), never dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

PROMPT_FILE = Path(__file__).resolve().parent.parent / "prompts" / "judge_pairwise.txt"
VERDICT_OPTIONS = ("A", "B", "C")  # A better, B better, C tie
VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def load_template(path: str | Path | None = None) -> str:
    text = Path(path or PROMPT_FILE).read_text(encoding="utf-8")
    for slot in ("{conversation_a}", "{conversation_b}"):
        if slot not in text:
            raise ValueError(f"judge prompt {path or PROMPT_FILE} lacks the slot {slot}")
    return text


def render_conversation(conv: list[dict]) -> str:
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in conv)


def judge_request(template: str, conv_a: list[dict], conv_b: list[dict]) -> list[dict]:
    """The judge's input conversation. str.replace, not str.format: replies may contain braces."""
    text = template.replace("{conversation_a}", render_conversation(conv_a))
    text = text.replace("{conversation_b}", render_conversation(conv_b))
    return [{"role": "user", "content": text}]


def parse_verdict(reply: str | None) -> str | None:
    """'A', 'B', 'C' (tie), or None when the reply has no verdict or contradicting ones."""
    if not reply:
        return None
    found = set(VERDICT_RE.findall(reply))
    return found.pop() if len(found) == 1 else None


def combine_orders(first: str | None, second: str | None) -> tuple[str, bool]:
    """Outcome for the MUSIC RM from two verdicts: first with A=baseline/B=music, second swapped.

    As in MT-Bench's pairwise judging, a side wins only when both orders agree; any disagreement
    (including one tie or one unparsed reply) is a tie. Returns (outcome, consistent).
    """
    to_outcome_1 = {"A": "loss", "B": "win", "C": "tie", None: "tie"}
    to_outcome_2 = {"A": "win", "B": "loss", "C": "tie", None: "tie"}
    o1, o2 = to_outcome_1[first], to_outcome_2[second]
    return (o1, True) if o1 == o2 else ("tie", False)
