"""Stages fail loudly at the cause: too many failed conversations, pairs or games; setup errors of a server.

Fakes and loopback servers only (seconds). The same scenarios against `transformers serve` are in
tests/test_real_server.py (slow).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from helpers import (
    CONTRAST_PROMPT,
    USER_PROMPT,
    FakeChat,
    LoopbackJSONServer,
    WordOverlapEncoder,
    fake_text,
    write_seed_files,
)

from music.chat import ChatReply
from music.chat.openai_backend import ServerRejected
from music.chat.rollout import make_backends
from music.failures import StageFailed, check_failed_share, failure_summary
from music.stages.contrast import run as run_contrast
from music.stages.simulate import FAILURE_REPORT
from music.stages.simulate import run as run_simulate


def test_failure_summary_counts_per_reason_with_the_first_error():
    s = failure_summary(10, [("a", "first a"), ("b", "first b"), ("a", "second a")])
    assert s == {
        "units": 10,
        "failed": 3,
        "share": 0.3,
        "by_reason": {"a": {"count": 2, "first_error": "first a"}, "b": {"count": 1, "first_error": "first b"}},
    }
    check_failed_share(s, 0.3, what="x", key="k", advice="")  # at the limit: passes
    with pytest.raises(StageFailed, match=r"(?s)x: 3 of 10 failed \(30.0%\).*a: 2 \(first: first a\).*k=0.2. do this"):
        check_failed_share(s, 0.2, what="x", key="k", advice="do this")


# --- simulate ---------------------------------------------------------------------------------------------


def _assistant_down_for(question: str):
    def script(messages, seed):
        if messages[0]["content"] != USER_PROMPT and question in messages[1]["content"]:
            return ChatReply(None, "error", "HTTP 503 from host:8000: overloaded")
        return None

    return script


def test_simulate_fails_when_too_many_conversations_failed(tmp_path):
    P = write_seed_files(tmp_path, n_train=3, n_eval=1)
    with pytest.raises(StageFailed) as info:  # 1 of 3 train conversations > 10%
        run_simulate(P, backends=(FakeChat(), FakeChat(script=_assistant_down_for("Question 0 about cooking (train)"))))
    message = str(info.value)
    assert "simulate (train): conversations: 1 of 3 failed (33.3%)" in message
    assert "generation_error: 1 (first: train-s0: HTTP 503 from host:8000: overloaded)" in message
    assert "simulate.max_failed_share=0.1" in message
    assert not Path(P.paths.conversations, "train").exists()  # nothing written for the next stage


def test_below_the_limit_the_counts_go_to_the_report(tmp_path):
    P = write_seed_files(tmp_path, n_train=3, n_eval=1)
    P.simulate.max_failed_share = 0.5
    summary = run_simulate(
        P, backends=(FakeChat(), FakeChat(script=_assistant_down_for("Question 0 about cooking (train)")))
    )
    report = json.loads(Path(P.paths.conversations, FAILURE_REPORT).read_text())
    assert report["train"] == summary["train"]["request_failures"]
    assert report["train"]["failed"] == 1 and report["train"]["units"] == 3
    assert report["train"]["by_reason"]["generation_error"]["first_error"].startswith("train-s0: HTTP 503")
    assert report["eval"] == {"units": 1, "failed": 0, "share": 0.0, "by_reason": {}}


# --- contrast -----------------------------------------------------------------------------------------------


def _simulated(tmp_path, **contrast):
    P = write_seed_files(tmp_path, n_train=4, n_eval=2)
    P.simulate.turns = 2
    for k, v in contrast.items():
        setattr(P.contrast, k, v)
    run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    return P


def _contrast(P, contrast_script=None):
    return run_contrast(
        P,
        backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), FakeChat("fake:contrast", script=contrast_script)),
        encoder=WordOverlapEncoder(),
    )


def _unparseable(messages, seed):
    return (
        ChatReply("I would rather answer the question.", "stop") if CONTRAST_PROMPT in messages[0]["content"] else None
    )


def test_contrast_fails_when_no_instruct_reply_parses(tmp_path):
    P = _simulated(tmp_path, method="instruct")
    with pytest.raises(StageFailed) as info:
        _contrast(P, _unparseable)
    message = str(info.value)
    assert "contrast (train): MUSIC candidates: 4 of 4 failed (100.0%)" in message
    assert "instruct_unparsed: 4 (first: music-train-s0: the reply is not" in message
    assert "I would rather answer the question." in message
    assert "contrast.method: auto" in message and "stronger contrast model" in message
    assert not Path(P.paths.pairs, "music_train").exists()


def test_auto_falls_back_and_counts_no_failure(tmp_path):
    report = _contrast(_simulated(tmp_path, method="auto"), _unparseable)
    assert report["failures"]["music_train"] == {"units": 4, "failed": 0, "share": 0.0, "by_reason": {}}
    assert report["methods"]["music_train"]["instruct_unparsed"] == 4


def test_contrast_fails_when_it_keeps_no_music_training_pair(tmp_path):
    P = _simulated(tmp_path, min_contrast_margin=10.0)  # no reply can be that much closer: all weak_contrast
    with pytest.raises(StageFailed) as info:
        _contrast(P)
    message = str(info.value)
    assert "contrast (train): 0 of 4 MUSIC candidates kept, fewer than contrast.min_music_train_pairs=1" in message
    assert "'weak_contrast': 4" in message and "contrast.min_contrast_margin" in message


def test_filter_drops_are_not_failures_and_the_counts_reach_the_report(tmp_path):
    P = _simulated(tmp_path, method="instruct")

    def one_error(messages, seed):  # one of the 4 training conversations loses its contrast request
        if CONTRAST_PROMPT in messages[0]["content"] and "Question 0 about cooking (train)" in messages[1]["content"]:
            return ChatReply(None, "error", "failed after 6 attempts: HTTP 502")
        return None

    P.contrast.max_failed_share = 0.25
    report = _contrast(P, one_error)
    written = json.loads(Path(P.paths.pairs, "filter_report.json").read_text())
    assert written["failures"] == report["failures"]
    f = report["failures"]["music_train"]
    assert (f["units"], f["failed"]) == (4, 1)
    assert f["by_reason"]["generation_error"]["first_error"] == "music-train-s0: failed after 6 attempts: HTTP 502"
    assert report["failures"]["music_eval"]["failed"] == 0 and report["failures"]["d_train"]["failed"] == 0


def test_a_failed_simulation_is_counted_by_simulate_not_again_by_contrast(tmp_path):
    P = write_seed_files(tmp_path, n_train=4, n_eval=1)
    P.simulate.turns, P.simulate.max_failed_share = 2, 0.5
    run_simulate(
        P,
        backends=(
            FakeChat("fake:user"),
            FakeChat("fake:assistant", script=_assistant_down_for("Question 1 about cooking (train)")),
        ),
    )
    report = _contrast(P)
    assert report["failures"]["music_train"]["units"] == 3 and report["failures"]["music_train"]["failed"] == 0


# --- a served role: setup errors and a flaky server ------------------------------------------------------------


class FakeServer(LoopbackJSONServer):
    """A loopback OpenAI-compatible server: fake_text replies; `status` answers every request with that error;
    `fail_every` answers every n-th request with HTTP 500."""

    def __init__(self, *, status: int | None = None, message: str = "", fail_every: int | None = None):
        self.status, self.message, self.fail_every = status, message, fail_every
        self.lock, self.requests, self.failed = threading.Lock(), 0, 0
        super().__init__(self._respond)

    def _respond(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests += 1
            n = self.requests
        if self.status:
            return self.status, {"error": {"message": self.message}}
        if self.fail_every and n % self.fail_every == 0:
            with self.lock:
                self.failed += 1
            return 500, {"error": "internal error"}
        text = fake_text(body["messages"], body["seed"])
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def _served(P, url):
    for cfg in (P.simulate.user, P.simulate.assistant):
        cfg.backend, cfg.model, cfg.base_urls, cfg.api_key_env = "openai", "served-model", [url], ""
        cfg.max_retries, cfg.backoff_s, cfg.timeout_s, cfg.max_concurrency = 3, 0.01, 5.0, 4
    P.paths.cache = None  # every request reaches the server
    return P


def test_a_wrong_model_name_fails_simulate_with_the_servers_message(tmp_path):
    server = FakeServer(status=400, message="Server is pinned to 'served-model'; requested 'gemini-1.5-pro'")
    try:
        P = _served(write_seed_files(tmp_path, n_train=6, n_eval=2), server.url)
        P.simulate.user.model = "gemini-1.5-pro"
        with pytest.raises(ServerRejected) as info:
            run_simulate(P, backends=make_backends(P, cache=False))
    finally:
        server.close()
    message = str(info.value)
    assert message.startswith(f"simulate.user: the server at {server.url} (model 'gemini-1.5-pro') answered HTTP 400")
    assert "Server is pinned to 'served-model'; requested 'gemini-1.5-pro'" in message and "model name" in message
    assert server.requests <= P.simulate.user.max_concurrency  # it stopped at once, no retries
    assert not Path(P.paths.conversations, "train").exists()


def test_a_server_failing_one_request_in_twenty_still_completes(tmp_path):
    server = FakeServer(fail_every=20)
    try:
        P = _served(write_seed_files(tmp_path, n_train=12, n_eval=4), server.url)
        summary = run_simulate(P, backends=make_backends(P, cache=False))
    finally:
        server.close()
    assert server.failed >= 3, server.requests  # the 500s happened, and were retried
    assert all(s["failed"] == 0 for s in summary.values()), summary
    assert summary["train"]["conversations"] == 12


# --- Best-of-N games ------------------------------------------------------------------------------------------


def test_best_of_n_counts_games_without_a_conversation():
    from music.stages.best_of_n import Game, game_failures

    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    games = [Game(i, 2, {"baseline": conv, "music": conv}, outcome="tie") for i in range(8)]
    games += [
        Game(8, 2, {"baseline": conv, "music": None}, failure="no_conversation", error="no conversation for music"),
        Game(9, 4, {"baseline": None, "music": None}, failure="no_conversation", rm_seed=1),
    ]
    f = game_failures(games)
    assert (f["units"], f["failed"]) == (10, 2)
    assert f["by_reason"]["no_conversation"] == {
        "count": 2,
        "first_error": "question 8 N=2 seed None: no conversation for music",
    }
    with pytest.raises(StageFailed, match=r"best_of_n: games: 2 of 10 failed"):
        check_failed_share(f, 0.1, what="best_of_n: games", key="evaluate.max_failed_share", advice="")
