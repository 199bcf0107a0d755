"""Any OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama, llama.cpp server, hosted APIs).

Standard library only. Requests go out concurrently from a bounded thread pool, round-robin over
several base URLs (replicas). 429, 5xx, timeouts and dropped connections are retried with
exponential backoff and seeded jitter (Retry-After wins when the server sends it); anything that
still fails comes back as an error reply for that conversation only. The API key is read from the
environment at request time and scrubbed from every error string.
"""

from __future__ import annotations

import email.utils
import http.client
import itertools
import json
import os
import random
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


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class FatalError(Exception):
    """A failure that retrying cannot fix (400, 401, 404, a malformed success...)."""


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


class OpenAIChat(ChatBackend):
    kind = "openai"
    unit_label = "req"

    def __init__(self, cfg: ChatModelConfig, cache=None):
        super().__init__(cfg, cache)
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
        return {"kind": self.kind, "model": self.cfg.model, "base_urls": sorted(self.base_urls),
                "revision": self.cfg.revision}

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
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(units)))
        try:
            futures = {pool.submit(self._complete, unit, params): unit for unit in units}
            for fut in as_completed(futures):
                yield futures[fut], [fut.result()]
        finally:  # on an interrupt, drop the queued requests instead of sending them all first
            pool.shutdown(wait=True, cancel_futures=True)

    def _complete(self, unit: Unit, params: SamplingParams) -> ChatReply:
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
            try:
                return self._post(data)
            except FatalError as exc:
                return ChatReply(None, "error", self._redact(str(exc)))
            except RetryableError as exc:
                last = self._redact(str(exc))
                if attempt == self.cfg.max_retries:
                    break
                delay = self.cfg.backoff_s * (2**attempt) * (0.5 + rng.random())  # jitter in [0.5, 1.5)
                if exc.retry_after is not None:
                    delay = exc.retry_after
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
            detail = self._redact(exc.read().decode("utf-8", "replace"))[:ERROR_BODY_CHARS]
            message = f"HTTP {exc.code} from {where}: {detail}"
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
            raise FatalError(f"response from {where} has no text content (finish_reason={choice.get('finish_reason')!r})")
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return ChatReply(text=text.strip(), finish_reason=reason)
