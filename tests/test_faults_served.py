"""A served (OpenAI-compatible) role fails fast and right: a dead or hung server stops the stage in seconds,
a refused prompt is one counted failure, keys stay secret, and the cache identity follows the server's model.

Loopback servers only (127.0.0.1), or an intercepted opener for the one non-loopback address; small timeouts.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import LoopbackJSONServer, fake_text, write_seed_files
from test_chat_openai import SECRET, ask, config

from music.chat import make_chat
from music.chat import openai_backend as ob
from music.chat.cache import ResponseCache
from music.chat.openai_backend import KeyOverHttp, MissingApiKey, ServerDown, ServerRejected, StageTimeLimit
from music.chat.rollout import make_backends
from music.config import ChatModelConfig, Params, from_dict, load_params
from music.errors import DataError
from music.failures import StageFailed

REPO = Path(__file__).resolve().parents[1]
REPLY = {"choices": [{"message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}]}
AZURE_FILTER = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {"violence": {"filtered": True, "severity": "high"}},
        },
    }
}
OPENAI_POLICY = {
    "error": {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error",
        "code": "content_policy_violation",
    }
}
QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
}


def served(urls, **kw) -> ChatModelConfig:
    """test_chat_openai's config (small timeouts, fast backoff) without a key, with `kw` changed (checked)."""
    return dataclasses.replace(config(urls), api_key_env="", **kw)


class FaultServer:
    """A loopback OpenAI-compatible server. POST: `script[content]` says what the n-th attempt for a message
    gets (the last entry repeats; unknown messages: "ok"). GET /v1/models: `models()` as the data list, or 404
    when `models` is None. Counts attempts per message and GETs; remembers Authorization headers."""

    def __init__(self, script: dict[str, list[str]] | None = None, models=None):
        self.script, self.models = script or {}, models
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.gets = 0
        self.auth: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with state.lock:
                    state.gets += 1
                    state.auth.append(self.headers.get("Authorization", ""))
                if self.path != "/v1/models" or state.models is None:
                    return self._send(404, {"error": "not found"})
                self._send(200, {"object": "list", "data": state.models()})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                with state.lock:
                    n = state.attempts[content] = state.attempts.get(content, 0) + 1
                    state.auth.append(self.headers.get("Authorization", ""))
                steps = state.script.get(content, ["ok"])
                action = steps[min(n, len(steps)) - 1]
                if action == "ok":
                    return self._send(200, REPLY)
                if action == "slow":
                    time.sleep(0.2)
                    return self._send(200, REPLY)
                if action == "azure-filter":
                    return self._send(400, AZURE_FILTER)
                if action == "openai-policy":
                    return self._send(400, OPENAI_POLICY)
                if action == "quota":
                    return self._send(429, QUOTA)
                if action in ("finish-content_filter", "finish-abort"):
                    reason = action.removeprefix("finish-")
                    reply = {"choices": [{"message": {"role": "assistant", "content": "I"}, "finish_reason": reason}]}
                    return self._send(200, reply)
                if action in ("cut-400", "cut-503"):  # the error body stops short of its Content-Length
                    self.send_response(int(action.removeprefix("cut-")))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "over')
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if action == "502":
                    return self._send(502, {"error": "bad gateway"})
                if action == "redirect":
                    return self._send(307, {}, {"Location": "http://10.9.9.9:8000/v1/chat/completions"})
                raise AssertionError(action)

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
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_server():
    made = []

    def start(script=None, models=None) -> FaultServer:
        made.append(FaultServer(script, models))
        return made[-1]

    yield start
    for srv in made:
        srv.close()


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a dead or hung server stops the stage in seconds (item 4) ---------------------------------------------------


def test_a_refused_port_stops_the_call_in_seconds():
    """Before: 200 requests x 6 attempts each, with backoff, against a refused port (the paper profile: ~17 h)."""
    port = free_port()
    chat = make_chat(
        served([f"http://127.0.0.1:{port}/v1"], max_retries=5, backoff_s=0.05, breaker_failures=8),
        None,
        role="simulate.user",
    )
    start = time.monotonic()
    with pytest.raises(ServerDown) as info:
        chat.generate(ask(*[f"question {i}" for i in range(200)]))
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert message.startswith(f"simulate.user: the server at http://127.0.0.1:{port}/v1 (model 'test-model')")
    assert "8 connection errors or timeouts in a row (breaker_failures=8)" in message
    assert f"connection error to 127.0.0.1:{port}" in message  # the last error
    assert sum(chat.requests_by_url.values()) <= 8 + 4  # the breaker's count, plus what was in flight


def test_a_server_that_accepts_and_never_answers_stops_after_about_one_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel accepts connections; nothing ever reads or answers them
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        cfg = served([url], timeout_s=0.3, max_retries=5, backoff_s=0.01, breaker_failures=4, max_concurrency=4)
        chat = make_chat(cfg, None, role="contrast.contrast")
        start = time.monotonic()
        with pytest.raises(ServerDown, match=r"contrast.contrast: .* looks down or hung: 4 .*timeout after 0.3s"):
            chat.generate(ask(*[f"question {i}" for i in range(100)]))
        # /models (one timeout), then the first wave of 4 requests (one timeout): not 100 x 6 timeouts
        assert time.monotonic() - start < 5.0
    finally:
        silent.close()


def test_a_server_that_mostly_fails_trips_the_window():
    """502 on every attempt: not a connection error, so the failure share over the last attempts stops it."""
    with_server = FaultServer({f"question {i}": ["502"] for i in range(50)})
    try:
        cfg = served([with_server.url], max_retries=5, backoff_s=0.01, breaker_window=10, breaker_failed_share=0.8)
        with pytest.raises(ServerDown, match=r"10 of the last 10 attempts failed \(breaker_window=10"):
            make_chat(cfg, None, role="simulate.assistant").generate(ask(*[f"question {i}" for i in range(50)]))
        assert sum(with_server.attempts.values()) <= 10 + cfg.max_concurrency
    finally:
        with_server.close()


def test_a_down_server_stops_the_simulate_stage(tmp_path):
    from music.stages.simulate import run as run_simulate

    P = write_seed_files(tmp_path, n_train=6, n_eval=2)
    url = f"http://127.0.0.1:{free_port()}/v1"
    for cfg in (P.simulate.user, P.simulate.assistant):
        cfg.backend, cfg.model, cfg.base_urls, cfg.api_key_env = "openai", "served-model", [url], ""
        cfg.max_retries, cfg.backoff_s, cfg.timeout_s, cfg.breaker_failures = 5, 0.05, 1.0, 4
    start = time.monotonic()
    with pytest.raises(ServerDown, match=r"simulate\.(user|assistant): the server at .* looks down"):
        run_simulate(P, backends=make_backends(P, cache=False))
    assert time.monotonic() - start < 10.0
    assert not Path(P.paths.conversations, "train").exists()


def test_the_stage_time_limit_stops_the_call_and_keeps_what_finished(tmp_path, fault_server):
    srv = fault_server({f"question {i}": ["slow"] for i in range(40)})
    cfg = served([srv.url], max_concurrency=2, stage_time_limit_s=0.5)
    chat = make_chat(cfg, tmp_path, role="evaluate.judge")
    start = time.monotonic()
    with pytest.raises(StageTimeLimit, match=r"evaluate.judge: stage_time_limit_s=0.5 passed") as info:
        chat.generate(ask(*[f"question {i}" for i in range(40)]))
    assert time.monotonic() - start < 3.0 and info.value.elapsed_s >= 0.5
    cached = len(ResponseCache.in_dir(tmp_path))
    assert 1 <= cached < 40  # the replies that finished are kept for the rerun
    # the clock is the backend's: a later call of the same backend stops before sending anything
    sent = sum(srv.attempts.values())
    with pytest.raises(StageTimeLimit):
        chat.generate(ask("question 39", "another question"))
    assert sum(srv.attempts.values()) == sent


def test_insufficient_quota_stops_at_once(fault_server):
    srv = fault_server({f"question {i}": ["quota"] for i in range(20)})
    start = time.monotonic()
    with pytest.raises(ServerRejected) as info:
        make_chat(served([srv.url]), None, role="simulate.user").generate(ask(*[f"question {i}" for i in range(20)]))
    assert time.monotonic() - start < 3.0
    err = info.value
    assert err.status == 429 and "insufficient_quota" in str(err) and "exceeded your current quota" in str(err)
    assert sum(srv.attempts.values()) <= config([srv.url]).max_concurrency  # no retries, nothing more sent


# --- a refused prompt stays one failure (item 5) -------------------------------------------------------------------


def test_a_content_filtered_prompt_is_one_failure_and_the_others_succeed(fault_server):
    srv = fault_server({"violent": ["azure-filter"], "unsafe": ["openai-policy"]})
    names = ["a", "violent", "b", "unsafe", "c"]
    replies = make_chat(served([srv.url]), None, role="simulate.user").generate(ask(*names))
    by = dict(zip(names, replies))
    for ok in ("a", "b", "c"):
        assert (by[ok].text, by[ok].finish_reason) == ("fine", "stop")
    for refused in ("violent", "unsafe"):
        assert by[refused].finish_reason == "error" and by[refused].text is None
        assert "content filter" in by[refused].error and "HTTP 400" in by[refused].error
        assert srv.attempts[refused] == 1  # the same prompt meets the same filter: not retried


def test_a_content_filtered_conversation_counts_against_max_failed_share(tmp_path):
    """In the simulate stage: one conversation failed (generation_error), the stage goes on (share 0.5)."""
    from music.stages.simulate import run as run_simulate

    def respond(body):
        if any("Question 1 about cooking (train)" in m["content"] for m in body["messages"]):
            return 400, AZURE_FILTER
        text = fake_text(body["messages"], body["seed"])
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    server = LoopbackJSONServer(respond)
    try:
        P = write_seed_files(tmp_path, n_train=4, n_eval=1)
        P.simulate.turns, P.simulate.max_failed_share = 2, 0.5
        for cfg in (P.simulate.user, P.simulate.assistant):
            cfg.backend, cfg.model, cfg.base_urls, cfg.api_key_env = "openai", "served-model", [server.url], ""
            cfg.max_retries, cfg.backoff_s, cfg.timeout_s = 2, 0.01, 5.0
        summary = run_simulate(P, backends=make_backends(P, cache=False))
        failures = summary["train"]["request_failures"]
        assert summary["train"]["failed"] == 1 and failures["by_reason"]["generation_error"]["count"] == 1
        assert "content filter" in failures["by_reason"]["generation_error"]["first_error"]
        P.simulate.max_failed_share = 0.1  # one of four is more than that: the stage fails, as for any failure
        with pytest.raises(StageFailed, match="content filter"):
            run_simulate(P, backends=make_backends(P, cache=False))
    finally:
        server.close()


def test_a_reply_stopped_by_the_content_filter_is_not_cached_and_an_aborted_one_is_retried(tmp_path, fault_server):
    srv = fault_server({"filtered": ["finish-content_filter"], "aborted": ["finish-abort", "ok"]})
    replies = make_chat(served([srv.url]), tmp_path).generate(ask("plain", "filtered", "aborted"))
    plain, filtered, aborted = replies
    assert plain.text == "fine" and aborted.text == "fine" and srv.attempts["aborted"] == 2
    assert filtered.finish_reason == "error" and "finish_reason='content_filter'" in filtered.error
    assert srv.attempts["filtered"] == 1
    assert len(ResponseCache.in_dir(tmp_path)) == 2  # plain and aborted; not the filtered partial reply
    again = make_chat(served([srv.url]), tmp_path).generate(ask("plain", "filtered", "aborted"))
    assert srv.attempts == {"plain": 1, "filtered": 2, "aborted": 2}  # only the filtered one is asked again
    assert again[2].text == "fine" and again[1].finish_reason == "error"


@pytest.mark.parametrize("cut", ["cut-400", "cut-503"])
def test_an_error_body_cut_short_is_retried(fault_server, cut):
    """Before: http.client.IncompleteRead escaped the retry loop and stopped the stage."""
    srv = fault_server({"flaky": [cut, "ok"]})
    (reply,) = make_chat(served([srv.url]), None).generate(ask("flaky"))
    assert (reply.text, reply.finish_reason) == ("fine", "stop") and srv.attempts["flaky"] == 2


# --- secrets stay secret (item 8) -----------------------------------------------------------------------------


LOOKS_LIKE_KEYS = [
    SECRET,  # sk-... : not a variable name at all
    "0123456789abcdef0123456789abcdef",  # a hex token: a name by the letters, but one long word
    "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "AIzaSyA1234567890abcdefghijklmnop",
]


@pytest.mark.parametrize("value", LOOKS_LIKE_KEYS)
def test_an_api_key_env_that_looks_like_a_key_fails_without_echoing_it(value, monkeypatch):
    with pytest.raises(DataError, match="api_key_env") as info:
        ChatModelConfig(backend="openai", api_key_env=value)
    assert value not in str(info.value) and "not repeated" in str(info.value)
    with pytest.raises(DataError, match=r"params.yaml.simulate.user.*api_key_env") as info:
        from_dict(Params, {"simulate": {"user": {"backend": "openai", "api_key_env": value}}}, "params.yaml")
    assert value not in str(info.value)
    cfg = served(["http://127.0.0.1:9/v1"])
    cfg.api_key_env = value  # changed after the check: the backend checks again
    monkeypatch.setenv("MUSIC_TEST_API_KEY", value)
    with pytest.raises(ValueError, match="api_key_env") as info:
        make_chat(cfg, None, role="simulate.user")
    assert value not in str(info.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "MY_SERVER_KEY2", "_KEY", "", None])
def test_variable_names_pass(name):
    assert ChatModelConfig(api_key_env=name).api_key_env == name


class Intercepted:
    """Stands in for the opener: records each request; answers /models with an empty list, chats with REPLY."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict]] = []

    def __call__(self, req, timeout):
        self.seen.append((req.get_method(), req.full_url, dict(req.header_items())))
        body = {"object": "list", "data": []} if req.full_url.endswith("/models") else REPLY

        class Response:
            headers: dict = {}

            def read(self):
                return json.dumps(body).encode()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Response()


def test_no_key_over_plain_http_to_another_host_without_the_opt_in(monkeypatch):
    opener = Intercepted()
    monkeypatch.setattr(ob, "_open", opener)
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    lan = "http://10.1.2.3:8000/v1"
    with pytest.raises(KeyOverHttp, match=r"simulate.user .*plain http:// to 10.1.2.3:8000") as info:
        make_chat(config([lan]), None, role="simulate.user")
    assert SECRET not in str(info.value) and opener.seen == []  # stopped before any request

    def auth_sent(cfg) -> set[str]:
        opener.seen.clear()
        make_chat(cfg, None).generate(ask("plain"))
        assert {m for m, _, _ in opener.seen} == {"GET", "POST"}
        return {h.get("Authorization", "") for _, _, h in opener.seen}

    assert auth_sent(dataclasses.replace(config([lan]), allow_key_over_http=True)) == {f"Bearer {SECRET}"}
    assert auth_sent(config(["https://10.1.2.3:8000/v1"])) == {f"Bearer {SECRET}"}
    assert auth_sent(config(["http://localhost:8000/v1"])) == {f"Bearer {SECRET}"}  # this machine
    assert auth_sent(config(["http://[::1]:8000/v1"])) == {f"Bearer {SECRET}"}
    assert auth_sent(dataclasses.replace(config([lan]), api_key_env="")) == {""}  # no key: nothing to protect
    assert ob.is_local("http://127.5.0.1/v1") and not ob.is_local("http://127.example.com/v1")


def test_a_redirect_is_not_followed(fault_server, monkeypatch):
    """urllib would resend the Authorization header to whatever host the redirect names."""
    srv = fault_server({"plain": ["redirect"]})
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    with pytest.raises(ServerRejected, match=r"HTTP 307: 'redirect to http://10.9.9.9:8000/v1/chat/completions'"):
        make_chat(config([srv.url]), None).generate(ask("plain"))
    assert srv.attempts == {"plain": 1}


def test_self_served_profiles_need_no_key(fault_server, monkeypatch):
    """The default api_key_env (OPENAI_API_KEY) unset, a server on this machine: no key, no error (before:
    MissingApiKey). Any other unset name, or a server elsewhere, is still an error before any request."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    roles = []
    params = load_params(REPO / "profiles" / "paper.yaml")
    for section in dataclasses.fields(params):
        block = getattr(params, section.name)
        for f in dataclasses.fields(block) if dataclasses.is_dataclass(block) else []:
            cfg = getattr(block, f.name)
            if isinstance(cfg, ChatModelConfig) and cfg.backend == "openai":
                roles.append(f"{section.name}.{f.name}")
                assert all(ob.is_local(u) for u in cfg.base_urls)
                make_chat(cfg, None, role=roles[-1])  # no MissingApiKey
    assert {"simulate.user", "simulate.assistant", "contrast.contrast", "evaluate.judge"} <= set(roles)

    srv = fault_server()
    cfg = dataclasses.replace(config([srv.url]), api_key_env="OPENAI_API_KEY")
    (reply,) = make_chat(cfg, None).generate(ask("plain"))
    assert reply.text == "fine" and set(srv.auth) == {""}  # no Authorization header at all

    monkeypatch.setattr(ob, "_open", Intercepted())
    with pytest.raises(MissingApiKey, match="'OPENAI_API_KEY', which is not set"):
        make_chat(dataclasses.replace(cfg, base_urls=["https://api.example.com/v1"]), None)


def test_the_key_never_reaches_the_cache_identity_or_errors(fault_server, monkeypatch):
    srv = fault_server({"bad": ["quota"]}, models=lambda: [{"id": "test-model", "owned_by": SECRET}])
    monkeypatch.setenv("MUSIC_TEST_API_KEY", SECRET)
    chat = make_chat(config([srv.url]), None)
    assert SECRET not in json.dumps(chat.identity()).replace(f'"owned_by": "{SECRET}"', "")
    with pytest.raises(ServerRejected) as info:
        chat.generate(ask("bad"))
    assert SECRET not in str(info.value)


# --- stale replies: the cache identity of a served model (item 1) ----------------------------------------------


def vllm_entry(root: str, **extra) -> dict:
    """What vLLM lists: `created` is the time of the request, permission ids are new each time."""
    now = int(time.time())
    return {
        "id": "test-model",
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": 4096,
        "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now}],
        **extra,
    }


def test_the_cache_identity_follows_the_servers_model_entry_and_revision(tmp_path, fault_server):
    served_root = {"root": "/weights/a"}
    srv = fault_server(models=lambda: [vllm_entry(served_root["root"]), vllm_entry("/other", id="other-model")])
    cfg = served([srv.url])

    first = make_chat(cfg, tmp_path)
    ident = first.identity()
    assert ident["served"] == {
        srv.url: {"id": "test-model", "object": "model", "owned_by": "vllm", "root": "/weights/a", "parent": None,
                  "max_model_len": 4096}
    }  # fmt: skip
    first.generate(ask("plain"))
    first.generate(ask("plain", "second"))
    assert srv.gets == 1  # fetched once per backend
    assert make_chat(cfg, tmp_path).identity() == ident  # deterministic: request time and ids left out

    again = make_chat(cfg, tmp_path)
    again.generate(ask("plain"))
    assert srv.attempts["plain"] == 1  # same server model: from the cache

    served_root["root"] = "/weights/b"  # new weights behind the same name at the same URL
    changed = make_chat(cfg, tmp_path)
    assert changed.identity() != ident
    changed.generate(ask("plain"))
    assert srv.attempts["plain"] == 2  # not the old reply

    revised = make_chat(dataclasses.replace(cfg, revision="r2"), tmp_path)
    assert revised.identity()["served"] == changed.identity()["served"] and revised.identity() != changed.identity()


def test_a_model_creation_time_is_kept(fault_server):
    """OpenAI and Ollama list when the model was made: a new `created` is a new model."""
    created = {"t": 1_700_000_000}
    srv = fault_server(models=lambda: [{"id": "test-model", "created": created["t"], "owned_by": "library"}])
    before = make_chat(served([srv.url]), None).identity()
    assert before["served"][srv.url]["created"] == 1_700_000_000
    created["t"] += 3600
    assert make_chat(served([srv.url]), None).identity() != before


def test_a_server_without_models_is_recorded_as_unavailable(fault_server):
    srv = fault_server()  # GET /v1/models: 404
    chat = make_chat(served([srv.url]), None)
    assert chat.identity()["served"] == {srv.url: {"unavailable": "HTTP 404"}}
    assert chat.generate(ask("plain"))[0].text == "fine"
    listed_elsewhere = fault_server(models=lambda: [vllm_entry("/x", id="some-other-model")])
    assert make_chat(served([listed_elsewhere.url]), None).identity()["served"] == {
        listed_elsewhere.url: {"unavailable": "model not listed"}
    }
