"""Conversation mechanics shared by the simulate and contrast stages and Best-of-N: what each model sees (the
user model with roles swapped), cleaning one generated message, and batched roll-outs of many conversations.

The user model sees the conversation with ROLES SWAPPED: the real assistant's messages become the "user"
messages it replies to, and its own reply is the human's next message. A small instruct model's strongest
habit is "reply to the last message"; swapped roles turn that habit into the behaviour we want, while a
transcript ("write the USER's next line") asks it to reason about a conversation, which is exactly how tiny
models drift (they comment on the dialogue).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from music.chat import make_chat
from music.chat.base import derive_seed
from music.config import Params
from music.prompts import Prompt, load_prompt
from music.schema import user_turns


class Chat(Protocol):  # what we need of music.chat.ChatBackend (fakes in tests implement just this)
    name: str

    def generate(
        self,
        conversations: list[list[dict]],
        *,
        seed: int = 0,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        desc: str | None = None,
    ) -> list[Any]: ...


@dataclass(frozen=True)
class SimPrompts:
    user: Prompt
    opener: Prompt
    assistant: Prompt

    @classmethod
    def load(cls) -> "SimPrompts":
        return cls(load_prompt("user_simulator"), load_prompt("user_opener"), load_prompt("assistant_system"))

    def meta(self) -> list[dict]:
        return [self.user.meta(), self.opener.meta(), self.assistant.meta()]


# --- rendering what each model sees -------------------------------------------------------------------


def with_system(messages: list[dict], text: str) -> list[dict]:
    """Our instruction as the system message; a conversation's own system message is kept before it."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def user_view(messages: list[dict], prompts: SimPrompts) -> list[dict]:
    """The conversation as the user model sees it: roles swapped, after a greeting from the 'assistant'."""
    swap = {"user": "assistant", "assistant": "user"}
    body = [{"role": swap[m["role"]], "content": m["content"]} for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": prompts.user.text}, {"role": "user", "content": prompts.opener.text}, *body]


def assistant_view(messages: list[dict], prompts: SimPrompts) -> list[dict]:
    return with_system(messages, prompts.assistant.text)


# --- cleaning one generated message ---------------------------------------------------------------------

_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*)?\s*(?:user|human|me|question|the user)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)
_QUOTES = ('""', "''", "\u201c\u201d", "``")
_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]*]*)(?=\s|$)|\n")


def clean_user_text(text: str) -> str:
    """Strip what tiny models wrap a user message in: a 'User:' prefix and surrounding quotes."""
    text = text.strip()
    for _ in range(2):  # "User: \"...\"" needs both passes
        text = _ROLE_PREFIX.sub("", text, count=1).strip()
        for q in _QUOTES:
            if len(text) >= 2 and text[0] == q[0] and text[-1] == q[-1]:
                text = text[1:-1].strip()
    return text


def trim_to_sentence(text: str) -> str | None:
    """The text up to its last full sentence (or line), or None when no sentence ends in it."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    out = text[: ends[-1]].rstrip()
    return out or None


def trim_to_word(text: str) -> str | None:
    """The text without its last, possibly cut, word (None when fewer than four words would remain)."""
    words = text.rstrip().split(" ")
    out = " ".join(words[:-1]).rstrip(" ,;:-")
    return out if len(out.split()) >= 4 else None


@dataclass
class Event:
    """One generated message: what came back and what we made of it (filters read these)."""

    branch: str  # "chosen" | "rejected" | "d"
    turn: int  # 1-based user-turn index in the whole conversation
    role: str  # "user" | "assistant" | "modified_request"
    finish_reason: str  # "stop" | "length" | "error"
    raw: str
    text: str  # the message as used ("" when it failed)
    trimmed: bool = False  # cut by the token budget, and ends at a full sentence (trimmed to one, or already)
    error: str | None = None
    method: str | None = None  # how a rejected reply was made ("instruct" | "resample")
    real: bool = False  # a person's message (the seed's real next user message), not generated

    def to_record(self) -> dict:
        return {
            "branch": self.branch,
            "turn": self.turn,
            "role": self.role,
            "finish_reason": self.finish_reason,
            "raw": self.raw,
            "text": self.text,
            "trimmed": self.trimmed,
            "error": self.error,
            "method": self.method,
            "real": self.real,
        }


def real_user_event(text: str, *, branch: str, turn: int) -> Event:
    """The event of a real user message taken verbatim from the seed (nothing was generated)."""
    return Event(branch, turn, "user", "stop", text, text, real=True)


def make_event(
    reply: Any,
    *,
    branch: str,
    turn: int,
    role: str,
    trim: bool,
    user_voice: bool = False,
    text: str | None = None,
    method: str | None = None,
) -> tuple[Event, str | None]:
    """(event, failure reason or None). `text` overrides the reply's text (e.g. the parsed answer)."""
    raw = reply.text or ""
    if reply.finish_reason == "error" or reply.text is None:
        return Event(
            branch, turn, role, "error", raw, "", error=reply.error or "no text", method=method
        ), "generation_error"
    body = raw if text is None else text
    body = clean_user_text(body) if user_voice else body.strip()
    trimmed = False
    if reply.finish_reason == "length" and trim:
        cut = trim_to_sentence(body)
        if cut is None and user_voice:  # users write fragments: a run-on message ends at its last whole word
            cut = trim_to_word(body)
        if cut is not None:  # ends at a full sentence now (a reply cut right after one needs no change)
            body, trimmed = cut, True
    event = Event(branch, turn, role, reply.finish_reason, raw, body, trimmed=trimmed, method=method)
    return event, (None if body else "empty_reply")


# --- roll-outs ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One conversation being extended; stops at its first failure."""

    key: str
    branch: str
    messages: list[dict]
    events: list[Event] = field(default_factory=list)
    failure: str | None = None

    @property
    def turns(self) -> int:
        return user_turns(self.messages)

    def add(self, event: Event, failure: str | None) -> None:
        self.events.append(event)
        if failure is not None:
            self.failure = failure
        else:
            self.messages.append({"role": "assistant" if event.role == "assistant" else "user", "content": event.text})


def roll_out(
    rollouts: Sequence[Rollout],
    targets: Sequence[int],
    user: Chat,
    assistant: Chat,
    *,
    prompts: SimPrompts,
    seed: int,
    tag: str,
    trim: bool = True,
) -> None:
    """Extend every rollout to `targets[i]` user turns (each ending with the assistant), in batched steps.

    Step s asks the user model for the next message of every live conversation in one call, then the
    assistant model for every reply in one call. A rollout that already ends with a user message (a real one
    from the seed) gets no user call at that step, only the assistant's reply. Rollouts shorter than their
    target after a failure stay so.
    """
    step = 0
    while True:
        live = [
            r
            for r, t in zip(rollouts, targets)
            if r.failure is None and (r.turns < t or (r.messages and r.messages[-1]["role"] == "user"))
        ]
        if not live:
            return
        step += 1
        ask = [r for r in live if not (r.messages and r.messages[-1]["role"] == "user")]
        replies = (
            user.generate(
                [user_view(r.messages, prompts) for r in ask],
                seed=derive_seed(seed, tag, "user", step),
                desc=f"{tag} user step {step}",
            )
            if ask
            else []
        )
        for r, rep in zip(ask, replies):
            r.add(*make_event(rep, branch=r.branch, turn=r.turns + 1, role="user", trim=trim, user_voice=True))
        live = [r for r in live if r.failure is None]
        if not live:
            continue
        replies = assistant.generate(
            [assistant_view(r.messages, prompts) for r in live],
            seed=derive_seed(seed, tag, "assistant", step),
            desc=f"{tag} assistant step {step}",
        )
        for r, rep in zip(live, replies):
            r.add(*make_event(rep, branch=r.branch, turn=r.turns, role="assistant", trim=trim))


def make_backends(params: Params, *, cache: bool = True) -> tuple[Chat, Chat]:
    cache_dir = params.paths.cache if cache else None
    return (
        make_chat(params.simulate.user, cache_dir, role="simulate.user"),
        make_chat(params.simulate.assistant, cache_dir, role="simulate.assistant"),
    )
