"""Any OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama, llama.cpp server, hosted APIs).

Standard library only. Requests go out concurrently from a bounded thread pool, round-robin over
several base URLs (replicas). 429, 5xx, timeouts and dropped connections are retried with
exponential backoff and seeded jitter (Retry-After wins when the server sends it); anything that
still fails comes back as an error reply for that conversation only (the stage counts those, and
fails past its `max_failed_share`). A status that retrying cannot fix and that says the setup is
wrong (400, 401, 403, 404, 405, 415, 422: wrong model name, key, URL path, or a field or body the server
rejects) stops the whole call at once with a ServerRejected error naming the role, the server, the status,
the server's own message and what to check: requests not yet sent are dropped, requests sleeping in
backoff give up at once, and the call does not wait for requests still in flight. A 400 about one
conversation's length is that conversation's error reply only. A missing key variable (api_key_env names
one that is not set) is an error before any request. The API key is read from the environment and scrubbed
from every error string.
"""

from __future__ import annotations

import email.utils
import http.client
import itertools
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator
from urllib.parse import urlsplit

from music.chat.base import ChatBackend, ChatReply, SamplingParams, Unit, derive_seed
from music.config import ChatModelConfig

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 120.0
ERROR_BODY_CHARS = 300
# Statuses that mean the setup is wrong: every request would fail the same way, so the call stops at once.
SETUP_STATUS_HINTS = {
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
# A 400 about one conversation's length (vLLM, OpenAI) is that conversation's failure, not a wrong setup.
_CONTEXT_LENGTH = re.compile(
    r"context length|context_length|maximum context|max_model_len|too long|too many tokens", re.I
)


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class FatalError(Exception):
    """A failure of one request that retrying cannot fix (413, a 400 about length, a success without text...)."""


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


class MissingApiKey(RuntimeError):
    """`api_key_env` names an environment variable that is not set (raised before any request)."""


class _SetupStatus(Exception):
    def __init__(self, url: str, status: int, detail: str):
        super().__init__(detail)
        self.url, self.status, self.detail = url, status, detail


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host  # never the userinfo part of a URL


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


class OpenAIChat(ChatBackend):
    kind = "openai"
    unit_label = "req"

    def __init__(self, cfg: ChatModelConfig, cache=None, role: str | None = None):
        super().__init__(cfg, cache)
        self.role = role or "an openai chat role"  # e.g. "simulate.user": what errors call this backend
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise MissingApiKey(
                f"{self.role} (model {cfg.model!r} at {', '.join(cfg.base_urls)}): api_key_env names the environment "
                f"variable {cfg.api_key_env!r}, which is not set. Export it with the server's key, or set "
                f"api_key_env: '' (or null) in this role's block for a server that needs no key."
            )
        if not cfg.base_urls:
            raise ValueError("an OpenAI-compatible backend needs at least one base URL (base_urls)")
        if cfg.max_concurrency < 1 or cfg.max_retries < 0 or cfg.timeout_s <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        self.base_urls = [u.rstrip("/") for u in cfg.base_urls]
        self.name = f"openai:{cfg.model}@{','.join(_host(u) for u in self.base_urls)}"
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self.requests_by_url: dict[str, int] = {u: 0 for u in self.base_urls}  # attempts, for logs/tests

    def identity(self) -> dict:
        # The server is part of what determines a reply: a reused served-model-name on another server
        # (or a new revision behind the same name) must not return old replies. The order of the
        # replicas does not matter.
        return {
            "kind": self.kind,
            "model": self.cfg.model,
            "base_urls": sorted(self.base_urls),
            "revision": self.cfg.revision,
        }

    def _api_key(self) -> str | None:
        return os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._api_key()
        if key:
            text = text.replace(key, "***")
        return text

    def _next_url(self) -> str:
        with self._rr_lock:
            url = self.base_urls[next(self._rr) % len(self.base_urls)]
            self.requests_by_url[url] += 1
        return url

    def run(self, units: list[Unit], params: SamplingParams) -> Iterator[tuple[Unit, list[ChatReply]]]:
        if not units:
            return
        rejected: list[ServerRejected] = []  # the first setup error stops every request not yet sent
        stop = threading.Event()  # set with it: requests sleeping in backoff give up at once

        def task(unit: Unit) -> ChatReply | None:
            if rejected:
                return None
            try:
                return self._complete(unit, params, stop)
            except ServerRejected as exc:
                rejected.append(exc)
                stop.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(units)))
        try:
            futures = {pool.submit(task, unit): unit for unit in units}
            for fut in as_completed(futures):
                if rejected:
                    break
                reply = fut.result()
                if reply is None:  # a request skipped after a rejection
                    break
                yield futures[fut], [reply]
        finally:  # on an interrupt, drop the queued requests instead of sending them all first
            # after a rejection, do not wait for requests in flight either: they end by their own timeout
            pool.shutdown(wait=not rejected, cancel_futures=True)
        if rejected:
            raise rejected[0]

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
            if stop is not None and stop.is_set():  # another request found the setup wrong: no more attempts
                return ChatReply(None, "error", f"stopped: another request was rejected; last: {last}")
            try:
                return self._post(data)
            except _SetupStatus as exc:
                raise ServerRejected(
                    role=self.role,
                    base_url=exc.url,
                    model=self.cfg.model,
                    status=exc.status,
                    server_message=self._redact(exc.detail),
                    hint=SETUP_STATUS_HINTS[exc.status],
                ) from None
            except FatalError as exc:
                return ChatReply(None, "error", self._redact(str(exc)))
            except RetryableError as exc:
                last = self._redact(str(exc))
                if attempt == self.cfg.max_retries:
                    break
                delay = self.cfg.backoff_s * (2**attempt) * (0.5 + rng.random())  # jitter in [0.5, 1.5)
                if exc.retry_after is not None:
                    delay = exc.retry_after
                if stop is not None:
                    stop.wait(min(delay, MAX_BACKOFF_S))  # wakes at once when another request is rejected
                else:
                    time.sleep(min(delay, MAX_BACKOFF_S))
        return ChatReply(None, "error", f"failed after {self.cfg.max_retries + 1} attempts: {last}")

    def _post(self, data: bytes) -> ChatReply:
        url = self._next_url()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{url}/chat/completions", data=data, headers=headers, method="POST")
        where = _host(url)
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            body = self._redact(exc.read().decode("utf-8", "replace"))
            detail = body[:ERROR_BODY_CHARS]
            message = f"HTTP {exc.code} from {where}: {detail}"
            if exc.code in SETUP_STATUS_HINTS and not (exc.code == 400 and _CONTEXT_LENGTH.search(body)):
                raise _SetupStatus(url, exc.code, server_message(body)[: 2 * ERROR_BODY_CHARS]) from None
            if exc.code in RETRY_STATUS:
                raise RetryableError(message, parse_retry_after(exc.headers.get("Retry-After"))) from None
            raise FatalError(message) from None
        except (TimeoutError, socket.timeout):
            raise RetryableError(f"timeout after {self.cfg.timeout_s}s from {where}") from None
        except urllib.error.URLError as exc:  # refused / reset / timed out while connecting
            raise RetryableError(f"connection error to {where}: {exc.reason}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:  # dropped mid-response
            raise RetryableError(f"connection dropped by {where}: {type(exc).__name__}: {exc}") from None
        return self._parse(raw, where)

    def _parse(self, raw: bytes, where: str) -> ChatReply:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            # A truncated body from a proxy is worth another try; the server may answer properly.
            detail = self._redact(raw.decode("utf-8", "replace"))[:ERROR_BODY_CHARS]  # redact, then cut
            raise RetryableError(f"malformed response from {where}: {detail}") from None
        if not isinstance(text, str):
            raise FatalError(
                f"response from {where} has no text content (finish_reason={choice.get('finish_reason')!r})"
            )
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return ChatReply(text=text.strip(), finish_reason=reason)
