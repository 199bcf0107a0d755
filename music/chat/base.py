"""The chat-backend interface and the generation driver shared by every backend.

A call to `generate` is planned as *units* (a batch for the in-process model, one request for an
HTTP server). Units are formed deterministically from the whole input list, each unit gets a seed
derived from (seed, digest of its requests' content: sampling settings and messages, not the backend's
identity), and each item is cached under a key that includes its unit's digest and the backend's identity. So
the reply for an item depends only on (inputs of this call, seed, config, the model), never on what the cache
already held: a killed-and-rerun call gives identical results, and a unit whose items are all cached is never
generated again. The sampling seed leaves the identity out, so a new cache version, or a model folder whose
digest differs on another machine, misses the cache without drawing other samples.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from tqdm.auto import tqdm

from music.chat.system_role import fold_system, template_accepts_system  # noqa: F401  (re-exported)
from music.config import ChatModelConfig
from music.files import dumps_canonical
from music.schema import validate_conversation

# Bump when a change in generation code changes what a cached key would produce.
# 2: in-process identities name the model by content (hub commit or folder digest), revision and tokenizer.
CACHE_VERSION = 2


@dataclass
class ChatReply:
    text: str | None  # None when the request failed beyond the retry budget
    finish_reason: str  # "stop" | "length" | "error"
    error: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    repetition_penalty: float = 1.0


@dataclass
class Request:
    """One conversation of a call; `dup` counts earlier identical conversations in the same call."""

    index: int
    messages: list[dict]
    dup: int
    key: str  # digest of the item alone (backend identity, sampling, messages, dup): the cache's
    payload: Any = None  # backend-specific preparation (e.g. token ids)
    content: str = ""  # digest of sampling, messages and dup alone: what the unit's sampling seed derives from


@dataclass
class Unit:
    """Requests generated together; `seed` and `digest` depend only on the requests in it."""

    requests: list[Request]
    digest: str
    seed: int
    cache_keys: list[str] = field(default_factory=list)


@dataclass
class TokenCounts:
    """Token counters of an in-process backend (prompt = asked for; encoded = went through the model)."""

    prompt: int = 0  # prompt tokens of the requests generated (not served from the response cache)
    encoded: int = 0  # prompt tokens actually encoded (fewer than `prompt` when key/value states are reused)
    generated: int = 0  # generated tokens, up to and including each reply's stop token

    def __sub__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.prompt - other.prompt, self.encoded - other.encoded, self.generated - other.generated)

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.prompt + other.prompt, self.encoded + other.encoded, self.generated + other.generated)

    def as_dict(self) -> dict:
        per = (lambda n: round(n / self.generated, 2)) if self.generated else (lambda n: None)
        return {
            "prompt_tokens": self.prompt,
            "prompt_tokens_encoded": self.encoded,
            "generated_tokens": self.generated,
            "prompt_per_generated": per(self.prompt),
            "encoded_per_generated": per(self.encoded),
        }


class TokenMeter:
    """Token counts of some backends since this meter was made: `TokenMeter(user=u, assistant=a).report()`.

    Backends without counters (HTTP, fakes) are left out; the total counts a backend given twice once.
    """

    def __init__(self, **backends: Any):
        self.backends = {k: b for k, b in backends.items() if isinstance(getattr(b, "tokens", None), TokenCounts)}
        self.start = {k: replace(b.tokens) for k, b in self.backends.items()}

    def counts(self) -> dict[str, TokenCounts]:
        return {k: b.tokens - self.start[k] for k, b in self.backends.items()}

    def report(self) -> dict:
        counts = self.counts()
        if not counts:
            return {}
        total, seen = TokenCounts(), set()
        for k, b in self.backends.items():
            if id(b) not in seen:
                seen.add(id(b))
                total = total + counts[k]
        return {**{k: c.as_dict() for k, c in counts.items()}, "total": total.as_dict()}


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(dumps_canonical(obj).encode("utf-8")).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (stable across processes, unlike hash())."""
    return int(sha256_json(list(parts))[:16], 16) & ((1 << 63) - 1)


class ChatBackend(ABC):
    """Many conversations in, one ChatReply each out, in order; optionally backed by a ResponseCache."""

    name: str
    kind: str
    unit_label: str = "batch"

    def __init__(self, cfg: ChatModelConfig, cache=None):
        self.cfg = cfg
        self.cache = cache  # music.chat.cache.ResponseCache | None
        self.units_generated = 0  # units actually run (not served from the cache), for tests and logs
        self.fold_system = cfg.system_role == "fold"  # backends may decide more (see TransformersChat)
        self.tokens: TokenCounts | None = None  # set by backends that count tokens (in-process ones)

    # --- what a backend implements -------------------------------------------------------------
    @abstractmethod
    def identity(self) -> dict:
        """What, besides sampling and messages, determines a reply (kind, model, dtype...). No secrets."""

    def prepare(self, requests: list[Request], params: SamplingParams) -> None:
        """Fill request.payload (e.g. tokenise); default: nothing."""

    def plan(self, requests: list[Request]) -> list[list[int]]:
        """Group requests (by position in `requests`) into units, deterministically; default: one each."""
        return [[i] for i in range(len(requests))]

    @abstractmethod
    def run(self, units: list[Unit], params: SamplingParams) -> Iterator[tuple[Unit, list[ChatReply]]]:
        """Generate each unit; yield (unit, replies in the unit's order) as each one finishes."""

    def prepare_messages(self, messages: list[dict]) -> list[dict]:
        """What is sent for a conversation: the system message folded in where the model has no system role."""
        return fold_system(messages) if self.fold_system else messages

    # --- the driver ------------------------------------------------------------------------------
    def sampling(self, seed: int, max_new_tokens: int | None, temperature: float | None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=int(self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens),
            temperature=float(self.cfg.temperature if temperature is None else temperature),
            top_p=float(self.cfg.top_p),
            seed=int(seed),
            repetition_penalty=float(self.cfg.repetition_penalty),
        )

    def generate(
        self,
        conversations: list[list[dict]],
        *,
        seed: int = 0,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        desc: str | None = None,
    ) -> list[ChatReply]:
        params = self.sampling(seed, max_new_tokens, temperature)
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        requests = self._requests(conversations, params)
        if not requests:
            return []
        self.prepare(requests, params)
        units = []
        for group in self.plan(requests):
            members = [requests[i] for i in group]
            digest = sha256_json([r.key for r in members])
            unit = Unit(members, digest, derive_seed(params.seed, sha256_json([r.content for r in members])))
            unit.cache_keys = [sha256_json({"item": r.key, "unit": digest}) for r in members]
            units.append(unit)

        replies: list[ChatReply | None] = [None] * len(requests)
        todo = []
        for unit in units:
            hits = self.cache.get_many(unit.cache_keys) if self.cache is not None else {}
            if len(hits) == len(unit.cache_keys):
                for r, k in zip(unit.requests, unit.cache_keys):
                    replies[r.index] = hits[k]
            else:  # regenerate the whole unit: its items are only valid together
                todo.append(unit)

        with tqdm(
            total=len(units), initial=len(units) - len(todo), desc=desc or self.name, unit=self.unit_label
        ) as bar:
            for unit, out in self.run(todo, params):
                if len(out) != len(unit.requests):
                    raise RuntimeError(
                        f"{self.name}: a unit of {len(unit.requests)} requests returned {len(out)} replies"
                    )
                self.units_generated += 1
                for r, reply in zip(unit.requests, out):
                    replies[r.index] = reply
                if self.cache is not None:  # errors are never cached: a rerun retries them
                    self.cache.put_many(
                        [(k, rep) for k, rep in zip(unit.cache_keys, out) if rep.finish_reason != "error"]
                    )
                bar.update(1)
        missing = [i for i, r in enumerate(replies) if r is None]
        if missing:
            raise RuntimeError(f"{self.name}: no reply for conversations {missing[:5]}")
        return replies  # type: ignore[return-value]

    def choose(
        self,
        conversations: list[list[dict]],
        options: list[str],
        *,
        prefix: str = "",
        suffix: str = "",
        seed: int = 0,
        max_new_tokens: int | None = None,
        desc: str | None = None,
    ) -> list[ChatReply]:
        """Answer each conversation with one of `options`, written as prefix + option + suffix.

        Default: generate greedily and let the caller parse the reply (it may match no option).
        In-process backends override this to pick the most likely option (constrained decoding).
        """
        return self.generate(conversations, seed=seed, max_new_tokens=max_new_tokens, temperature=0.0, desc=desc)

    def _requests(self, conversations: list[list[dict]], params: SamplingParams) -> list[Request]:
        if not isinstance(conversations, list):
            raise TypeError(f"conversations must be a list of conversations, got {type(conversations).__name__}")
        seen: Counter[str] = Counter()
        ident = {"v": CACHE_VERSION, **self.identity(), "sampling": asdict(params)}
        out = []
        for i, conv in enumerate(conversations):
            msgs = validate_conversation(
                conv, source=f"{self.name} request", record=i, field_name=f"conversations[{i}]"
            )
            msgs = self.prepare_messages(msgs)  # before hashing: the cache key is what is sent
            text = dumps_canonical(msgs)
            dup = seen[text]
            seen[text] += 1
            content = sha256_json({"sampling": asdict(params), "messages": msgs, "dup": dup})
            out.append(Request(i, msgs, dup, sha256_json({**ident, "messages": msgs, "dup": dup}), content=content))
        return out
