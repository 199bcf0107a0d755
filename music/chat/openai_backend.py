"""Any OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama, llama.cpp server, hosted APIs).

Standard library only. Requests go out concurrently from a bounded thread pool, round-robin over
several base URLs (replicas). 429, 5xx, timeouts, dropped connections, error bodies that arrive cut and
replies the server aborted (finish_reason "abort") are retried with exponential backoff and seeded jitter
(Retry-After wins when the server sends it); anything that still fails comes back as an error reply for that
conversation only (the stage counts those, and fails past its `max_failed_share`). So does a conversation the
server's content filter refuses (a 400 that says so, or finish_reason "content_filter"): it is not retried (the
same request meets the same filter) and never cached.

What stops the whole call at once (requests not yet sent are dropped, requests sleeping in backoff give up,
and the call does not wait for requests still in flight):
- ServerRejected: a status that retrying cannot fix and that says the setup is wrong (400, 401, 403, 404, 405,
  415, 422, a redirect, a 429 that says insufficient_quota), naming the role, the server, the status, the
  server's own message and what to check. A 400 about one conversation's length is that conversation's error.
- ServerDown: the breaker shared by all requests of one backend: `breaker_failures` consecutive connection
  errors or timeouts, or more than `breaker_failed_share` of the last `breaker_window` attempts failed (429s
  aside). A dead server stops the stage in seconds, a hung one after about one `timeout_s`.
- StageTimeLimit: `stage_time_limit_s` passed since this backend's first request.

Keys: the API key is read from the environment variable named by `api_key_env`, scrubbed from every error
string, never part of the cache identity, and never sent over plain http:// to a host other than this machine
unless `allow_key_over_http` (KeyOverHttp, before any request). Redirects are not followed (the key would go
along). An unset variable is an error before any request (MissingApiKey), except the default OPENAI_API_KEY
for servers on this machine: they get no Authorization header.

The response-cache identity holds what the server's GET {base}/models lists for the model (fetched once per
backend; request timestamps and per-request ids left out), so new weights behind the same name and URL do not
return old replies.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Iterator
from urllib.parse import urlsplit

from music.chat.base import ChatBackend, ChatReply, SamplingParams, Unit, derive_seed
from music.config import ChatModelConfig

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 120.0
ERROR_BODY_CHARS = 300
DEFAULT_KEY_ENV = next(f.default for f in dataclasses.fields(ChatModelConfig) if f.name == "api_key_env")
_REDIRECT_HINT = (
    "`base_urls`: the server redirects to another URL (redirects are not followed, so the key never goes "
    "along): put the URL it names in base_urls"
)
# Statuses that mean the setup is wrong: every request would fail the same way, so the call stops at once.
SETUP_STATUS_HINTS = {
    301: _REDIRECT_HINT,
    302: _REDIRECT_HINT,
    303: _REDIRECT_HINT,
    307: _REDIRECT_HINT,
    308: _REDIRECT_HINT,
    400: "the model name (`model`) against the name the server serves, and request fields it may not accept",
    401: "the API key: the environment variable named by `api_key_env` (a key this server accepts)",
    403: "the API key's permissions for this model (`api_key_env`) and the model name (`model`)",
    404: "the URL path: `base_urls` should be the API root (e.g. http://host:8000/v1; requests go to "
    "{base}/chat/completions), and the model name (`model`)",
    405: "the URL path: `base_urls` should be the API root of an OpenAI-compatible server (requests are POSTs "
    "to {base}/chat/completions; this path does not take a POST)",
    415: "that `base_urls` points at an OpenAI-compatible API: the server does not accept a JSON request body",
    422: "request fields the server does not accept: `repetition_penalty` (outside OpenAI's API; vLLM and SGLang "
    "take it, `transformers serve` answers 422: set it to 1.0), `top_p`, `seed`",
}
QUOTA_HINT = (
    "the account behind the API key (`api_key_env`): the server says its quota or credit is used up "
    "(insufficient_quota); retrying does not help until it is raised"
)
# A 400 about one conversation's length (vLLM, OpenAI) is that conversation's failure, not a wrong setup.
_CONTEXT_LENGTH = re.compile(
    r"context length|context_length|maximum context|max_model_len|too long|too many tokens", re.I
)
# A 400 from a content filter or moderation (Azure's code content_filter / ResponsibleAIPolicyViolation,
# OpenAI's content_policy_violation or "safety system"): that conversation's failure, not a wrong setup.
_REFUSED_PROMPT = re.compile(
    r"content[_ ]?filter|content[_ ]?policy|content management policy|ResponsibleAIPolicyViolation|"
    r"safety system|moderation[_ ]blocked|flagged by (?:the |our )?moderation|blocked by (?:the |our )?moderation|"
    r"moderation (?:system|policy)",
    re.I,
)
_QUOTA = re.compile(r"insufficient_quota", re.I)
# finish_reason of a reply the server's filter stopped (OpenAI, Azure, Gemini's OpenAI endpoint): one failure
REFUSED_FINISH = {"content_filter", "safety", "recitation", "blocklist", "prohibited_content", "spii"}
# finish_reason of a reply the server gave up on (vLLM, SGLang: aborted, e.g. while shutting down): retried
ABORTED_FINISH = {"abort", "aborted", "cancelled"}
# /models entries: keys that change per request (vLLM's permission ids) and how near "now" a `created` must be
# to be the request's own timestamp (vLLM, SGLang, llama.cpp) rather than the model's (OpenAI, Ollama)
_VOLATILE_MODEL_KEYS = ("permission", "permissions")
REQUEST_TIME_S = 600.0


class RetryableError(Exception):
    """kind: "transport" (refused, reset, timed out, dropped, cut), "server" (5xx, malformed, aborted) or
    "throttle" (429): what the breaker counts."""

    def __init__(self, message: str, retry_after: float | None = None, *, kind: str = "server", url: str = ""):
        super().__init__(message)
        self.retry_after, self.kind, self.url = retry_after, kind, url


class FatalError(Exception):
    """A failure of one request that retrying cannot fix (413, a 400 about length or from a content filter...)."""


class ServerRejected(RuntimeError):
    """The server refused a request in a way every request would share (SETUP_STATUS_HINTS): stop the stage.

    The message names the role, the server (base URL, model), the status, the server's own message and what
    to check; the same fields are attributes.
    """

    def __init__(self, *, role: str, base_url: str, model: str, status: int, server_message: str, hint: str):
        self.role, self.base_url, self.model, self.status = role, base_url, model, status
        self.server_message, self.hint = server_message, hint
        super().__init__(
            f"{role}: the server at {base_url} (model {model!r}) answered HTTP {status}: "
            f"{server_message!r}. Check {hint}."
        )


class ServerDown(RuntimeError):
    """The breaker: requests keep failing the way a dead, unreachable or hung server fails. Stop the stage."""

    def __init__(self, *, role: str, base_url: str, model: str, reason: str, last_error: str, timeout_s: float):
        self.role, self.base_url, self.model, self.reason, self.last_error = role, base_url, model, reason, last_error
        super().__init__(
            f"{role}: the server at {base_url} (model {model!r}) looks down or hung: {reason}. Last error: "
            f"{last_error}. Check that it runs and is reachable at `base_urls` and answers within timeout_s="
            f"{timeout_s:g}; replies already finished are in the response cache, so a rerun goes on from there."
        )


class StageTimeLimit(RuntimeError):
    """`stage_time_limit_s` passed since the backend's first request: stop the stage."""

    def __init__(self, *, role: str, base_url: str, model: str, limit_s: float, elapsed_s: float):
        self.role, self.base_url, self.model, self.limit_s, self.elapsed_s = role, base_url, model, limit_s, elapsed_s
        super().__init__(
            f"{role}: stage_time_limit_s={limit_s:g} passed ({elapsed_s:.1f} s since this role's first request "
            f"to {base_url}, model {model!r}). Replies already finished are in the response cache: rerun to go on, "
            f"or raise stage_time_limit_s (null: no limit)."
        )


class MissingApiKey(RuntimeError):
    """`api_key_env` names an environment variable that is not set (raised before any request)."""


class KeyOverHttp(RuntimeError):
    """A key would go over plain http:// to a host other than this machine (raised before any request)."""


class _SetupStatus(Exception):
    def __init__(self, url: str, status: int, detail: str, hint: str):
        super().__init__(detail)
        self.url, self.status, self.detail, self.hint = url, status, detail, hint


_HALTS = (ServerRejected, ServerDown, StageTimeLimit)


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host  # never the userinfo part of a URL


def _safe_url(url: str) -> str:
    """`url` without the userinfo part (user:password@)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def is_local(url: str) -> bool:
    """Whether `url`'s host is this machine: localhost, 127.0.0.0/8, ::1 (or 0.0.0.0 / ::). Names are not
    resolved: only `localhost` itself counts."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (number or HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def server_message(body: str) -> str:
    """The server's own words from an error body: OpenAI-style {"error": {"message": ...}}, {"detail": ...},
    {"error": "..."} or {"message": ...}; else the body itself."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip()
    for key in ("error", "detail", "message"):
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return value["message"]
        if isinstance(value, str):
            return value
        if value is not None:  # e.g. FastAPI's 422: a list of {loc, msg, type}
            return json.dumps(value, ensure_ascii=False)
    return body.strip()


def stable_model_entry(entry: dict, now: list[float]) -> dict:
    """A /models entry without what changes per request: permission lists (vLLM's ids are random per request)
    and a `created` within REQUEST_TIME_S of one of `now` (the request's own time, as vLLM, SGLang and
    llama.cpp report it; OpenAI and Ollama report when the model was made, which is kept)."""
    out = {k: v for k, v in entry.items() if k not in _VOLATILE_MODEL_KEYS}
    created = out.get("created")
    if isinstance(created, (int, float)) and any(abs(created - t) <= REQUEST_TIME_S for t in now):
        del out["created"]
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as their HTTPError: urllib would resend the Authorization header to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _open(req: urllib.request.Request, timeout: float):
    """Every request of this module goes through here (tests intercept it)."""
    return _OPENER.open(req, timeout=timeout)


class _Breaker:
    """Attempts of one backend, all workers together: trips on `failures` consecutive connection errors or
    timeouts, or on more than `share` of the last `window` attempts failed (429s count neither way)."""

    def __init__(self, failures: int, window: int, share: float):
        self.failures, self.window, self.share = failures, window, share
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.streak = 0
        self.recent: deque[bool] = deque(maxlen=max(self.window, 1))
        self.tripped = False

    def record(self, outcome: str) -> str | None:
        """outcome: "ok" (the server answered), "transport", "server" or "throttle". Returns why it trips."""
        if outcome == "throttle":
            return None
        with self.lock:
            if outcome == "transport":
                self.streak += 1
            elif outcome == "ok":
                self.streak = 0
            if self.window:
                self.recent.append(outcome != "ok")
            if self.failures and self.streak >= self.failures:
                self.tripped = True
                return f"{self.streak} connection errors or timeouts in a row (breaker_failures={self.failures})"
            if self.window and len(self.recent) == self.window and sum(self.recent) > self.share * self.window:
                self.tripped = True
                return (
                    f"{sum(self.recent)} of the last {self.window} attempts failed (breaker_window={self.window}, "
                    f"breaker_failed_share={self.share:g})"
                )
        return None


class OpenAIChat(ChatBackend):
    kind = "openai"
    unit_label = "req"

    def __init__(self, cfg: ChatModelConfig, cache=None, role: str | None = None):
        super().__init__(cfg, cache)
        self.role = role or "an openai chat role"  # e.g. "simulate.user": what errors call this backend
        if not cfg.base_urls:
            raise ValueError("an OpenAI-compatible backend needs at least one base URL (base_urls)")
        if cfg.max_concurrency < 1 or cfg.max_retries < 0 or cfg.timeout_s <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        self.base_urls = [u.rstrip("/") for u in cfg.base_urls]
        where = f"{self.role} (model {cfg.model!r} at {', '.join(_safe_url(u) for u in self.base_urls)})"
        problem = ChatModelConfig.api_key_env_problem(cfg.api_key_env) if cfg.api_key_env else None
        if problem:  # a config changed after it was checked; the message never repeats the value
            raise ValueError(f"{where}: api_key_env {problem}")
        self._key_env = cfg.api_key_env or None
        if self._key_env and not os.environ.get(self._key_env):
            if self._key_env == DEFAULT_KEY_ENV and all(is_local(u) for u in self.base_urls):
                log.info("%s: $%s is not set: no key is sent to a server on this machine", where, self._key_env)
            else:
                raise MissingApiKey(
                    f"{where}: api_key_env names the environment variable {self._key_env!r}, which is not set. Export "
                    f"it with the server's key, or set api_key_env: '' (or null) in this role's block for a server "
                    f"that needs no key."
                )
        plain = [u for u in self.base_urls if not self._key_may_go_to(u)]
        if self._api_key() and plain:
            raise KeyOverHttp(
                f"{where}: the API key (${self._key_env}) would go unencrypted over plain http:// to "
                f"{', '.join(_host(u) for u in plain)}, which is not this machine. Use https://, set api_key_env: '' "
                f"for a server without a key, or allow_key_over_http: true for a network you trust."
            )
        self.name = f"openai:{cfg.model}@{','.join(_host(u) for u in self.base_urls)}"
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self.requests_by_url: dict[str, int] = {u: 0 for u in self.base_urls}  # attempts, for logs/tests
        self._breaker = _Breaker(cfg.breaker_failures, cfg.breaker_window, cfg.breaker_failed_share)
        self._started: float | None = None  # the first request's monotonic time (stage_time_limit_s)
        self._models: dict[str, dict] | None = None  # what GET {base}/models lists for the model, per URL
        self._models_lock = threading.Lock()

    def identity(self) -> dict:
        # The server is part of what determines a reply: a reused served-model-name on another server, new
        # weights behind the same name (what /models lists changes) or a new `revision` must not return old
        # replies. The order of the replicas does not matter.
        return {
            "kind": self.kind,
            "model": self.cfg.model,
            "base_urls": sorted(self.base_urls),
            "revision": self.cfg.revision,
            "served": self.served_models(),
        }

    # --- the key ----------------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        return (os.environ.get(self._key_env) or None) if self._key_env else None

    def _key_may_go_to(self, url: str) -> bool:
        return urlsplit(url).scheme == "https" or is_local(url) or bool(self.cfg.allow_key_over_http)

    def _headers(self, url: str, json_body: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if json_body:
            headers["Content-Type"] = "application/json"
        key = self._api_key()
        if key and self._key_may_go_to(url):
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        key = self._api_key()
        if key:
            text = text.replace(key, "***")
        return text

    # --- what the server says about the model -------------------------------------------------------------
    def served_models(self) -> dict[str, dict]:
        """{base URL: the /models entry of this model (stable fields) or {"unavailable": why}}; fetched once."""
        with self._models_lock:
            if self._models is None:
                self._start_clock()
                with ThreadPoolExecutor(max_workers=len(self.base_urls)) as pool:
                    found = list(pool.map(self._model_entry, self.base_urls))
                self._models = dict(zip(self.base_urls, found))
            return self._models

    def _model_entry(self, url: str) -> dict:
        req = urllib.request.Request(f"{url}/models", headers=self._headers(url), method="GET")
        for attempt in range(2):
            try:
                with _open(req, self.cfg.timeout_s) as resp:
                    raw, date = resp.read(), resp.headers.get("Date")
                break
            except urllib.error.HTTPError as exc:  # no such endpoint (404, 405, 501), or a refused key
                exc.close()
                return {"unavailable": f"HTTP {exc.code}"}
            except (TimeoutError, socket.timeout):
                return {"unavailable": "no answer"}
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if (
                    attempt == 0
                    and self.cfg.max_retries > 0
                    and not isinstance(getattr(exc, "reason", None), (TimeoutError, socket.timeout))
                ):
                    time.sleep(min(self.cfg.backoff_s, MAX_BACKOFF_S))  # refused or reset: one more look
                    continue
                return {"unavailable": "no answer"}
        try:
            listed = json.loads(raw)["data"]
            entries = [e for e in listed if isinstance(e, dict) and e.get("id") == self.cfg.model]
        except (ValueError, KeyError, TypeError):
            return {"unavailable": "not a model list"}
        if not entries:
            return {"unavailable": "model not listed"}
        now = [time.time()]
        try:
            now.append(email.utils.parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            pass
        return stable_model_entry(entries[0], now)

    # --- time limit and breaker ---------------------------------------------------------------------------
    def _start_clock(self) -> None:
        if self._started is None:
            self._started = time.monotonic()

    def _time_left(self) -> float | None:
        limit = self.cfg.stage_time_limit_s
        if limit is None or self._started is None:
            return None
        return limit - (time.monotonic() - self._started)

    def _rejected(self, exc: _SetupStatus) -> ServerRejected:
        """The setup error a refused request means, with the server's message redacted (no key in it)."""
        return ServerRejected(
            role=self.role,
            base_url=_safe_url(exc.url),
            model=self.cfg.model,
            status=exc.status,
            server_message=self._redact(exc.detail),
            hint=exc.hint,
        )

    def _check_time(self) -> None:
        left = self._time_left()
        if left is not None and left <= 0:
            raise StageTimeLimit(
                role=self.role,
                base_url=", ".join(_safe_url(u) for u in self.base_urls),
                model=self.cfg.model,
                limit_s=self.cfg.stage_time_limit_s,
                elapsed_s=time.monotonic() - self._started,
            )

    def _note(self, outcome: str, url: str = "", last: str = "") -> None:
        why = self._breaker.record(outcome)
        if why:
            raise ServerDown(
                role=self.role,
                base_url=_safe_url(url),
                model=self.cfg.model,
                reason=why,
                last_error=last,
                timeout_s=self.cfg.timeout_s,
            )

    def _next_url(self) -> str:
        with self._rr_lock:
            url = self.base_urls[next(self._rr) % len(self.base_urls)]
            self.requests_by_url[url] += 1
        return url

    # --- requests ----------------------------------------------------------------------------------------
    def run(self, units: list[Unit], params: SamplingParams) -> Iterator[tuple[Unit, list[ChatReply]]]:
        if not units:
            return
        self._start_clock()
        self._check_time()
        if self._breaker.tripped:  # a new call after a stop: a fresh look at the server
            self._breaker.reset()
        halted: list[Exception] = []  # the first stop (rejection, breaker, time limit) ends the call
        halt_lock = threading.Lock()
        stop = threading.Event()  # set with it: requests sleeping in backoff give up at once

        def halt(exc: Exception) -> None:
            with halt_lock:
                if not halted:
                    halted.append(exc)
            stop.set()

        def task(unit: Unit) -> ChatReply | None:
            if stop.is_set():
                return None
            try:
                return self._complete(unit, params, stop)
            except _HALTS as exc:
                halt(exc)
                return None

        pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(units)))
        try:
            futures = {pool.submit(task, unit): unit for unit in units}
            pending = set(futures)
            while pending and not stop.is_set():
                left = self._time_left()
                done, pending = wait(
                    pending, timeout=None if left is None else max(left, 0.0), return_when=FIRST_COMPLETED
                )
                for fut in done:
                    reply = fut.result()
                    # after a stop, only real replies still count (they are cached); "stopped" ones do not
                    if reply is not None and not (stop.is_set() and reply.finish_reason == "error"):
                        yield futures[fut], [reply]
                if not stop.is_set():
                    try:
                        self._check_time()
                    except StageTimeLimit as exc:
                        halt(exc)
        finally:  # on an interrupt, drop the queued requests instead of sending them all first
            # after a stop, do not wait for requests in flight either: they end by their own timeout
            pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
        if halted:
            raise halted[0]

    def _complete(self, unit: Unit, params: SamplingParams, stop: threading.Event | None = None) -> ChatReply:
        (request,) = unit.requests
        body = {
            "model": self.cfg.model,
            "messages": request.messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # Per-item seed: duplicates of one conversation are distinct samples.
            "seed": unit.seed & 0x7FFFFFFF,
        }
        if params.repetition_penalty != 1.0:  # not in OpenAI's API; vLLM and SGLang accept it
            body["repetition_penalty"] = params.repetition_penalty
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        rng = random.Random(derive_seed("backoff", unit.seed))
        last = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            if stop is not None and stop.is_set():  # another request stopped the call: no more attempts
                return ChatReply(None, "error", f"stopped: another request stopped the call; last: {last}")
            self._check_time()
            try:
                reply = self._post(data)
            except _SetupStatus as exc:
                raise self._rejected(exc) from None
            except FatalError as exc:
                self._note("ok")  # the server answered: it is up
                return ChatReply(None, "error", self._redact(str(exc)))
            except RetryableError as exc:
                last = self._redact(str(exc))
                self._note(exc.kind, exc.url, last)  # raises ServerDown when the breaker trips
                if attempt == self.cfg.max_retries:
                    break
                delay = self.cfg.backoff_s * (2**attempt) * (0.5 + rng.random())  # jitter in [0.5, 1.5)
                if exc.retry_after is not None:
                    delay = exc.retry_after
                delay = min(delay, MAX_BACKOFF_S)
                left = self._time_left()
                if left is not None:
                    delay = min(delay, max(left, 0.0))
                if stop is not None:
                    stop.wait(delay)  # wakes at once when another request stops the call
                else:
                    time.sleep(delay)
            else:
                self._note("ok")
                return reply
        return ChatReply(None, "error", f"failed after {self.cfg.max_retries + 1} attempts: {last}")

    def _post(self, data: bytes) -> ChatReply:
        url = self._next_url()
        req = urllib.request.Request(
            f"{url}/chat/completions", data=data, headers=self._headers(url, json_body=True), method="POST"
        )
        where = _host(url)
        try:
            with _open(req, self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            self._http_error(exc, url, where)
        except (TimeoutError, socket.timeout):
            raise RetryableError(
                f"timeout after {self.cfg.timeout_s}s from {where}", kind="transport", url=url
            ) from None
        except urllib.error.URLError as exc:  # refused / reset / timed out while connecting
            raise RetryableError(f"connection error to {where}: {exc.reason}", kind="transport", url=url) from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:  # dropped mid-response
            raise RetryableError(
                f"connection dropped by {where}: {type(exc).__name__}: {exc}", kind="transport", url=url
            ) from None
        return self._parse(raw, where, url)

    def _http_error(self, exc: urllib.error.HTTPError, url: str, where: str) -> None:
        """Raise what an error status means: _SetupStatus, FatalError (this conversation) or RetryableError."""
        code = exc.code
        try:
            body = self._redact(exc.read().decode("utf-8", "replace"))
        except (http.client.HTTPException, OSError, ValueError) as read_exc:  # e.g. IncompleteRead: cut short
            raise RetryableError(
                f"HTTP {code} from {where}, its error body cut short ({type(read_exc).__name__})",
                kind="transport",
                url=url,
            ) from None
        finally:
            exc.close()
        detail = body[:ERROR_BODY_CHARS]
        message = f"HTTP {code} from {where}: {detail}"
        said = server_message(body)[: 2 * ERROR_BODY_CHARS]
        if code in (301, 302, 303, 307, 308):
            location = _safe_url(exc.headers.get("Location") or "") or "(no Location)"
            raise _SetupStatus(url, code, f"redirect to {location}", SETUP_STATUS_HINTS[code])
        if code == 429 and _QUOTA.search(body):
            raise _SetupStatus(url, code, said, QUOTA_HINT)
        if code == 400 and _REFUSED_PROMPT.search(body):
            raise FatalError(f"refused by the server's content filter (this conversation only): {message}")
        if code in SETUP_STATUS_HINTS and not (code == 400 and _CONTEXT_LENGTH.search(body)):
            hint = SETUP_STATUS_HINTS[code]
            if code == 401 and "Authorization" not in self._headers(url):
                hint += f" (no key was sent: ${self._key_env or '(api_key_env is empty)'} is not set)"
            raise _SetupStatus(url, code, said, hint)
        if code in RETRY_STATUS:
            kind = "throttle" if code == 429 else "server"
            raise RetryableError(message, parse_retry_after(exc.headers.get("Retry-After")), kind=kind, url=url)
        raise FatalError(message)

    def _parse(self, raw: bytes, where: str, url: str = "") -> ChatReply:
        try:
            choice = json.loads(raw)["choices"][0]
            finish = choice.get("finish_reason")
            message = choice.get("message")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            # A truncated body from a proxy is worth another try; the server may answer properly.
            detail = self._redact(raw.decode("utf-8", "replace"))[:ERROR_BODY_CHARS]  # redact, then cut
            raise RetryableError(f"malformed response from {where}: {detail}", url=url) from None
        reason = finish.lower() if isinstance(finish, str) else None
        if reason in REFUSED_FINISH:  # the same request meets the same filter: one failure, never cached
            raise FatalError(f"the server's content filter stopped the reply from {where} (finish_reason={finish!r})")
        if reason in ABORTED_FINISH:
            raise RetryableError(f"the server at {where} aborted the reply (finish_reason={finish!r})", url=url)
        if not isinstance(message, dict) or "content" not in message:
            detail = self._redact(raw.decode("utf-8", "replace"))[:ERROR_BODY_CHARS]
            raise RetryableError(f"malformed response from {where}: {detail}", url=url)
        text = message["content"]
        if not isinstance(text, str):
            raise FatalError(f"response from {where} has no text content (finish_reason={finish!r})")
        return ChatReply(text=text.strip(), finish_reason="length" if reason == "length" else "stop")

    # --- served judges: the verdict's log-probabilities (music.evaluate.judge.label_logprobs) ---------------------
    def option_logprobs(
        self,
        conversations: list[list[dict]],
        options: list[str],
        *,
        prefix: str = "[[",
        max_new_tokens: int | None = None,
        desc: str | None = None,
    ) -> list[dict[str, float] | None]:
        """Per conversation {option: log-probability of the option as the token after `prefix`} in a greedy reply,
        from the OpenAI-compatible `logprobs`/`top_logprobs` fields (an option not among the top 20 gets the lowest
        listed log-probability: an upper bound). None where the request failed or the reply has no log-probabilities
        at a verdict. Not cached; retried as generate's requests are (max_retries, backoff_s)."""
        from music.schema import validate_conversation

        def ask(i_conv: tuple[int, list[dict]]) -> dict[str, float] | None:
            i, conv = i_conv
            msgs = self.prepare_messages(
                validate_conversation(conv, source=f"{self.name} request", record=i, field_name=f"conversations[{i}]")
            )
            body = {
                "model": self.cfg.model,
                "messages": msgs,
                "max_tokens": int(max_new_tokens or self.cfg.max_new_tokens),
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": 20,
            }
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            for attempt in range(self.cfg.max_retries + 1):
                url = self._next_url()
                req = urllib.request.Request(
                    f"{url}/chat/completions", data=data, headers=self._headers(url, json_body=True), method="POST"
                )
                try:
                    try:
                        with _open(req, self.cfg.timeout_s) as resp:
                            raw = resp.read()
                    except urllib.error.HTTPError as exc:
                        self._http_error(exc, url, _host(url))  # raises what the status means
                    except (OSError, http.client.HTTPException) as exc:
                        raise RetryableError(f"{type(exc).__name__}: {exc}", url=url) from None
                    choice = json.loads(raw)["choices"][0]
                    return self.verdict_logprobs(choice, options, prefix)
                except _SetupStatus as exc:
                    raise self._rejected(exc) from None
                except FatalError:
                    return None
                except (RetryableError, ValueError, KeyError, IndexError, TypeError):
                    if attempt < self.cfg.max_retries:
                        time.sleep(min(self.cfg.backoff_s * (2**attempt), MAX_BACKOFF_S))
            return None

        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            return list(pool.map(ask, enumerate(conversations)))

    @staticmethod
    def verdict_logprobs(choice: dict, options: list[str], prefix: str = "[[") -> dict[str, float] | None:
        """{option: log-probability} at the first generated token that follows `prefix` (or starts with it, as
        "[[A" in one token), from one chat completion choice's logprobs.content; None when there is none."""
        content = ((choice or {}).get("logprobs") or {}).get("content") or []
        before = ""
        for entry in content:
            token = entry.get("token") or ""
            joined = before.rstrip().endswith(prefix)  # the verdict token follows "[["
            fused = token.strip().startswith(prefix) and token.strip() != prefix  # "[[A" as one token
            if joined or fused:
                alts = entry.get("top_logprobs") or [{"token": token, "logprob": entry.get("logprob")}]
                found: dict[str, float] = {}
                for alt in alts:
                    text = (alt.get("token") or "").strip()
                    text = text if joined else text.removeprefix(prefix)
                    if text in options and isinstance(alt.get("logprob"), (int, float)):
                        found[text] = max(found.get(text, float("-inf")), float(alt["logprob"]))
                if found:
                    floor = min(float(a["logprob"]) for a in alts if isinstance(a.get("logprob"), (int, float)))
                    return {o: found.get(o, floor) for o in options}
                if joined:
                    return None
            before += token
        return None
