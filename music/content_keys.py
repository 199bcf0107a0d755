"""Content keys: which records are the same conversation by what they say, not by their ids.

Ids do not catch copies: the bundled ShareGPT file holds byte-identical chats under different ids, and sources whose
ids are row numbers (HH, Skywork) repeat prompts across rows. Every seed and every held-out conversation starts at
its source conversation's first exchange, so two conversations that open with the same exchange can yield the same
item (a one-turn seed is exactly that exchange): the split treats them as one conversation (`opening_key`). Swap
items take their donor replies from other held-out conversations, so those are kept one per first request
(`request_key`). Text is compared case-folded with whitespace collapsed.

>>> a = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
>>> b = [{"role": "user", "content": " hi   THERE "}, {"role": "assistant", "content": "hello!"}]
>>> opening_key(a) == opening_key(b + [{"role": "user", "content": "more"}])
True
>>> request_key(a) == request_key([a[0], {"role": "assistant", "content": "Hey."}])
True
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", str(text)).strip().casefold()


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def _without_system(messages: Sequence[dict]) -> list[dict]:
    return [m for m in messages if m.get("role") != "system"]


def opening_key(messages: Sequence[dict]) -> str:
    """The first user message and the reply to it (what every seed and held-out conversation begins with)."""
    msgs = _without_system(messages)[:2]
    return _digest([f"{m.get('role')}:{normalise(m.get('content', ''))}" for m in msgs])


def request_key(messages: Sequence[dict]) -> str:
    """The first user message alone (one held-out conversation per request: swap donors)."""
    first = next((m for m in messages if m.get("role") == "user"), {"content": ""})
    return _digest([normalise(first.get("content", ""))])
