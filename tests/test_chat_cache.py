"""The response cache and the generation driver: hits, crash-and-rerun, duplicates, determinism."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from music.chat import ChatReply, ResponseCache
from music.chat.base import ChatBackend
from music.config import ChatModelConfig


class Crash(RuntimeError):
    pass


class FakeChat(ChatBackend):
    """Batches of `batch_size` in input order; the 'reply' is a hash of (unit seed, row, message)."""

    kind = "fake"

    def __init__(self, cfg: ChatModelConfig, cache=None, crash_on_unit: int | None = None):
        super().__init__(cfg, cache)
        self.name = "fake:model"
        self.crash_on_unit = crash_on_unit
        self.units_started = 0

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.cfg.model}

    def plan(self, requests):
        bs = self.cfg.batch_size
        return [list(range(i, min(i + bs, len(requests)))) for i in range(0, len(requests), bs)]

    def run(self, units, params):
        for unit in units:
            self.units_started += 1
            if self.crash_on_unit is not None and self.units_started == self.crash_on_unit:
                raise Crash(f"simulated crash in unit {self.units_started}")
            out = []
            for row, r in enumerate(unit.requests):
                h = hashlib.sha256(f"{unit.seed}|{row}|{r.messages[-1]['content']}".encode()).hexdigest()[:10]
                reason = "error" if "fail" in r.messages[-1]["content"] else "stop"
                out.append(ChatReply(None, "error", "boom") if reason == "error" else ChatReply(h, "stop"))
            yield unit, out


def convs(n: int, prefix: str = "q") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{prefix}{i}"}] for i in range(n)]


CFG = ChatModelConfig(model="m", batch_size=3)


def test_second_call_is_served_from_cache(tmp_path):
    cache = ResponseCache.in_dir(tmp_path)
    first = FakeChat(CFG, cache)
    a = first.generate(convs(7), seed=3)
    assert first.units_generated == 3
    second = FakeChat(CFG, ResponseCache.in_dir(tmp_path))  # a new process would open the file anew
    b = second.generate(convs(7), seed=3)
    assert b == a
    assert second.units_started == 0
    # Another seed or another sampling parameter is another request.
    c = second.generate(convs(7), seed=4)
    assert second.units_generated == 3 and c != a
    second.generate(convs(7), seed=3, max_new_tokens=5)
    assert second.units_generated == 6


def test_crash_then_rerun_equals_uninterrupted_run(tmp_path):
    reference = FakeChat(CFG, ResponseCache(tmp_path / "ref.sqlite")).generate(convs(10), seed=1)

    cache_path = tmp_path / "run.sqlite"
    crashing = FakeChat(CFG, ResponseCache(cache_path), crash_on_unit=3)
    with pytest.raises(Crash):
        crashing.generate(convs(10), seed=1)
    assert crashing.units_generated == 2  # units 1 and 2 finished and were committed

    rerun = FakeChat(CFG, ResponseCache(cache_path))
    assert rerun.generate(convs(10), seed=1) == reference
    assert rerun.units_started == 2  # 4 units in all; the 2 finished ones were not generated again


def test_reply_does_not_depend_on_what_the_cache_held(tmp_path):
    cache = ResponseCache.in_dir(tmp_path)
    # Every item of the second call is in the cache already, but generated in other batches
    # ({q0,q1,q2}, {q3,q4,q5}): serving those would make the reply depend on the cache's history.
    FakeChat(CFG, cache).generate(convs(6), seed=0)
    warm_chat = FakeChat(CFG, cache)
    warm = warm_chat.generate(convs(6)[1:4], seed=0)
    cold = FakeChat(CFG, None).generate(convs(6)[1:4], seed=0)
    assert warm == cold
    assert warm_chat.units_generated == 1


def test_duplicates_are_distinct_samples_and_distinct_keys(tmp_path):
    same = [[{"role": "user", "content": "hello"}]] * 3
    chat = FakeChat(ChatModelConfig(model="m", batch_size=1), ResponseCache.in_dir(tmp_path))
    replies = chat.generate(same, seed=0)
    assert len({r.text for r in replies}) == 3
    assert len(chat.cache) == 3
    assert chat.generate(same, seed=0) == replies


def test_errors_are_returned_not_cached_and_retried_on_rerun(tmp_path):
    batch = convs(2) + [[{"role": "user", "content": "please fail"}]]
    cache = ResponseCache.in_dir(tmp_path)
    chat = FakeChat(ChatModelConfig(model="m", batch_size=1), cache)
    replies = chat.generate(batch)
    assert [r.finish_reason for r in replies] == ["stop", "stop", "error"]
    assert replies[2].text is None and replies[2].error == "boom"
    assert len(cache) == 2
    chat.generate(batch)
    assert chat.units_generated == 4  # only the failed one was tried again
    with pytest.raises(ValueError):
        cache.put_many([("k", ChatReply(None, "error", "x"))])


def test_cache_rows_are_committed_and_readable_by_another_connection(tmp_path):
    cache = ResponseCache.in_dir(tmp_path)
    cache.put_many([("a", ChatReply("text a", "length"))])
    with sqlite3.connect(tmp_path / "responses.sqlite") as raw:
        assert raw.execute("SELECT text, finish_reason FROM responses WHERE key='a'").fetchone() == ("text a", "length")
    assert ResponseCache.in_dir(tmp_path).get_many(["a", "b"]) == {"a": ChatReply("text a", "length")}


def test_bad_conversation_names_the_record():
    from music.errors import DataError

    with pytest.raises(DataError, match=r"record 1.*conversations\[1\]\[0\]\.role"):
        FakeChat(CFG).generate([convs(1)[0], [{"role": "assistant", "content": "hi"}]])
    assert FakeChat(CFG).generate([]) == []


def test_default_choose_generates_greedily():
    """Backends without constrained decoding (HTTP servers) answer `choose` by plain greedy generation."""
    from music.chat.base import ChatBackend, ChatReply

    class Echo(ChatBackend):
        kind = "echo"
        name = "echo"

        def identity(self):
            return {"kind": "echo"}

        def run(self, units, params):
            for u in units:
                yield u, [ChatReply(f"[[B]] t={params.temperature}", "stop") for _ in u.requests]

    from music.config import ChatModelConfig

    out = Echo(ChatModelConfig(temperature=0.9)).choose([[{"role": "user", "content": "q"}]], ["A", "B"], prefix="[[")
    assert out[0].text == "[[B]] t=0.0"


def test_sampling_seeds_leave_the_backend_identity_out(tmp_path, monkeypatch):
    """A model folder whose digest differs on another machine (or a new CACHE_VERSION) misses the cache but draws
    the same samples: the unit seeds come from the sampling settings and messages alone."""
    import music.chat.base as base

    a = FakeChat(CFG, ResponseCache(tmp_path / "a.sqlite"))
    first = [r.text for r in a.generate(convs(5), seed=7)]
    b = FakeChat(CFG, ResponseCache(tmp_path / "a.sqlite"))
    b.identity = lambda: {"kind": "fake", "model": "m", "digest": "another machine's conversion"}
    monkeypatch.setattr(base, "CACHE_VERSION", base.CACHE_VERSION + 1)
    assert [r.text for r in b.generate(convs(5), seed=7)] == first and b.units_started == 2  # regenerated, same
    assert [r.text for r in b.generate(convs(5), seed=8)] != first  # the seed still matters
