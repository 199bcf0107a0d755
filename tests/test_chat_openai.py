"""The OpenAI-compatible backend against scripted local servers (loopback only, bounded, seconds)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from music.chat import make_chat
from music.config import ChatModelConfig

SECRET = "sk-test-SECRET-0123456789abcdef"
TIMEOUT_S = 1.0  # generous for a loaded CI machine; only "slow" exceeds it
MAX_RETRIES = 3

# What the servers do on the n-th attempt for a given user message (last entry repeats).
SCRIPT = {
    "plain": ["ok"],
    "rate-limited": ["429", "ok"],
    "server-errors": ["500", "503", "ok"],
    "slow": ["slow", "ok"],
    "dropped": ["drop", "ok"],
    "always-fails": ["500"],
    "bad-key": ["401"],
    "bad-model": ["400"],
    "forbidden": ["403"],
    "rejected-field": ["422"],
    "not-allowed": ["405"],
    "bad-media": ["415"],
    "busy-long": ["503-long"],  # a long Retry-After: the request sleeps in backoff
    "bad-key-late": ["401-late"],  # rejected once the others are asleep in backoff
    "too-long": ["400-length"],
    "long": ["length"],
}
RETRY_AFTER_S = 0.4


class Scripted:
    """Shared state of the two replica servers: attempts per message, requests per server."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: dict[str, list[float]] = {}
        self.per_server: dict[int, int] = {}
        self.bodies: list[dict] = []
        self.auth: set[str] = set()

    def handler(self, server_id: int):
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                with state.lock:
                    times = state.attempts.setdefault(content, [])
                    times.append(time.monotonic())
                    steps = SCRIPT[content]
                    action = steps[min(len(times) - 1, len(steps) - 1)]
                    state.per_server[server_id] = state.per_server.get(server_id, 0) + 1
                    state.bodies.append(body)
                    state.auth.add(self.headers.get("Authorization", ""))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "wrong path " + self.path})
                if action == "drop":  # close the socket without any response
                    self.close_connection = True
                    return
                if action == "slow":
                    time.sleep(TIMEOUT_S * 2.5)
                    action = "ok"
                if action == "429":
                    return self._send(429, {"error": "slow down"}, {"Retry-After": str(RETRY_AFTER_S)})
                if action in ("500", "503"):
                    return self._send(int(action), {"error": "overloaded"})
                if action == "401":  # servers often echo the key they refused
                    return self._send(401, {"error": f"Incorrect API key provided: {SECRET}"})
                if action == "503-long":
                    return self._send(503, {"error": "busy"}, {"Retry-After": "60"})
                if action == "401-late":
                    time.sleep(0.3)
                    return self._send(401, {"error": "Incorrect API key provided"})
                if action in ("405", "415"):
                    return self._send(
                        int(action), {"error": {"405": "Method Not Allowed", "415": "Unsupported Media Type"}[action]}
                    )
                if action == "400":  # what transformers serve says to a model name it does not serve
                    return self._send(400, {"error": {"message": "Server is pinned to 'x'; requested 'test-model'"}})
                if action == "403":
                    return self._send(403, {"detail": "not allowed"})
                if action == "422":  # FastAPI's validation error, as transformers serve sends it
                    return self._send(
                        422,
                        {"detail": [{"loc": ["body", "repetition_penalty"], "msg": "Extra inputs are not permitted"}]},
                    )
                if action == "400-length":  # vLLM's answer to one conversation over the context
                    return self._send(400, {"error": {"message": "This model's maximum context length is 4096 tokens"}})
                reason = "length" if action == "length" else "stop"
                reply = {
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": f"  reply to {content}\n"},
                            "finish_reason": reason,
                        }
                    ]
                }
                self._send(200, reply)

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler


@pytest.fixture
def servers():
    state = Scripted()
    started = []
    for sid in (0, 1):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), state.handler(sid))
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(srv)
    urls = [f"http://127.0.0.1:{s.server_address[1]}/v1" for s in started]
    yield state, urls
    for srv in started:
        srv.shutdown()
        srv.server_close()


def config(urls) -> ChatModelConfig:
    return ChatModelConfig(
        backend="openai",
        model="test-model",
        base_urls=urls,
        api_key_env="MUSIC_TEST_API_KEY",
        max_concurrency=4,
        timeout_s=TIMEOUT_S,
        max_retries=MAX_RETRIES,
        backoff_s=0.01,
        temperature=0.5,
        top_p=0.8,
        max_new_tokens=17,
    )


def ask(*contents) -> list[list[dict]]:
    return [[{"role": "user", "content": c}] for c in contents]


def test_retries_spreading_errors_and_secrecy(servers, tmp_path, monkeypatch):
    state, urls = servers
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    chat = make_chat(config(urls), tmp_path)
    hosts = ",".join(u.removeprefix("http://").removesuffix("/v1") for u in urls)
    assert chat.name == f"openai:test-model@{hosts}"
    names = ["plain", "rate-limited", "server-errors", "slow", "dropped", "always-fails", "too-long", "long"]
    start = time.monotonic()
    replies = chat.generate(ask(*names), seed=7)
    assert time.monotonic() - start < 10

    by = dict(zip(names, replies))
    for ok in ("plain", "rate-limited", "server-errors", "slow", "dropped"):
        assert by[ok].text == f"reply to {ok}" and by[ok].finish_reason == "stop", (ok, by[ok])
    assert {k: len(state.attempts[k]) for k in ("rate-limited", "server-errors", "slow", "dropped")} == {
        "rate-limited": 2,
        "server-errors": 3,
        "slow": 2,
        "dropped": 2,
    }
    assert by["long"].finish_reason == "length"
    assert by["always-fails"].text is None and by["always-fails"].finish_reason == "error"
    assert len(state.attempts["always-fails"]) == MAX_RETRIES + 1
    assert "HTTP 500" in by["always-fails"].error
    # a 400 about one conversation's length fails that conversation only, without retries
    assert by["too-long"].finish_reason == "error" and "HTTP 400" in by["too-long"].error
    assert len(state.attempts["too-long"]) == 1
    assert all(SECRET not in (r.error or "") and SECRET not in (r.text or "") for r in replies)

    # Retry-After was honoured; both replicas were used; the request was well formed.
    t429 = state.attempts["rate-limited"]
    assert t429[1] - t429[0] >= RETRY_AFTER_S * 0.9
    assert state.per_server.get(0, 0) > 0 and state.per_server.get(1, 0) > 0
    assert state.auth == {f"Bearer {SECRET}"}
    body = state.bodies[0]
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == ("test-model", 17, 0.5, 0.8)
    assert isinstance(body["seed"], int)

    # A rerun serves the successes from the cache and retries only the failures (never cached).
    before = {k: len(v) for k, v in state.attempts.items()}
    again = make_chat(config(urls), tmp_path).generate(ask(*names), seed=7)
    new = {k: len(v) - before[k] for k, v in state.attempts.items()}
    assert new == {k: (MAX_RETRIES + 1 if k == "always-fails" else 1 if k == "too-long" else 0) for k in names}
    assert [r.text for r in again] == [r.text for r in replies]
    raw = (tmp_path / "responses.sqlite").read_bytes()
    assert SECRET.encode() not in raw


@pytest.mark.parametrize(
    "name, status, says, hint",
    [
        ("bad-key", 401, "Incorrect API key provided: ***", "api_key_env"),
        ("bad-model", 400, "Server is pinned to 'x'; requested 'test-model'", "model name"),
        ("forbidden", 403, "not allowed", "permissions"),
        ("rejected-field", 422, "Extra inputs are not permitted", "repetition_penalty"),
        ("not-allowed", 405, "Method Not Allowed", "does not take a POST"),
        ("bad-media", 415, "Unsupported Media Type", "JSON request body"),
    ],
)
def test_a_setup_error_stops_the_call_at_once(servers, monkeypatch, name, status, says, hint):
    from music.chat.openai_backend import ServerRejected

    state, urls = servers
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    chat = make_chat(config(urls), None, role="simulate.user")
    with pytest.raises(ServerRejected) as info:
        chat.generate(ask(*[name] * 40), seed=1)  # 40 distinct requests (duplicates get distinct seeds)
    err = info.value
    assert (err.status, err.role, err.model) == (status, "simulate.user", "test-model") and err.base_url in urls
    message = str(err)
    assert f"HTTP {status}" in message and says in message and hint in message and "simulate.user" in message
    assert SECRET not in message
    # no retries, and the queued requests were dropped: at most the ones already in flight were sent
    assert len(state.attempts[name]) <= config(urls).max_concurrency


def test_a_setup_error_wakes_the_requests_sleeping_in_backoff(servers, monkeypatch):
    """Three requests back off for 60 s (Retry-After); a fourth is then rejected (401): the call stops in
    seconds, not after the backoff, and the sleeping requests make no second attempt."""
    from music.chat.openai_backend import ServerRejected

    state, urls = servers
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    chat = make_chat(config(urls), None, role="simulate.user")
    start = time.monotonic()
    with pytest.raises(ServerRejected) as info:
        chat.generate(ask("busy-long", "busy-long", "busy-long", "bad-key-late"), seed=1)
    assert time.monotonic() - start < 5.0
    assert info.value.status == 401
    assert len(state.attempts["busy-long"]) == 3  # one attempt each: none retried after the rejection


def test_a_wrong_url_path_stops_the_call_with_its_path(servers, monkeypatch):
    from music.chat.openai_backend import ServerRejected

    _, urls = servers
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    with pytest.raises(ServerRejected, match=r"HTTP 404: 'wrong path /v2/chat/completions'.*URL path") as info:
        make_chat(config([u.replace("/v1", "/v2") for u in urls]), None, role="contrast.contrast").generate(
            ask("plain")
        )
    assert info.value.role == "contrast.contrast"


def test_a_missing_key_variable_is_an_error_before_any_request(servers, monkeypatch):
    from music.chat.openai_backend import MissingApiKey

    state, urls = servers
    monkeypatch.delenv("MUSIC_TEST_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match=r"simulate.assistant .*'MUSIC_TEST_API_KEY', which is not set"):
        make_chat(config(urls), None, role="simulate.assistant")
    assert state.attempts == {}


def test_duplicates_get_distinct_seeds_and_max_new_tokens_override(servers, monkeypatch):
    state, urls = servers
    monkeypatch.delenv("MUSIC_TEST_API_KEY", raising=False)
    cfg = config(urls)
    cfg.api_key_env = ""  # a server that needs no key
    chat = make_chat(cfg, None)
    chat.generate(ask("plain", "plain", "plain"), seed=0, max_new_tokens=5, temperature=0.0)
    assert len({b["seed"] for b in state.bodies}) == 3
    assert {(b["max_tokens"], b["temperature"]) for b in state.bodies} == {(5, 0.0)}
    assert state.auth == {""}  # no key in the environment: no Authorization header


def test_unreachable_server_is_an_error_reply(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config([f"http://127.0.0.1:{port}/v1"])
    cfg.max_retries = 1
    cfg.api_key_env = ""
    (reply,) = make_chat(cfg, None).generate(ask("plain"))
    assert reply.finish_reason == "error" and "connection error" in reply.error
