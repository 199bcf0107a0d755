"""make_chat: the one way stages get a chat backend (with the response cache when asked)."""

from __future__ import annotations

from pathlib import Path

from music.chat.base import ChatBackend
from music.chat.cache import ResponseCache
from music.chat.openai_backend import OpenAIChat
from music.chat.transformers_backend import TransformersChat
from music.config import ChatModelConfig


def make_chat(cfg: ChatModelConfig, cache_dir: str | Path | None = None, role: str | None = None) -> ChatBackend:
    """A backend for `cfg`; replies are cached in {cache_dir}/responses.sqlite unless cache_dir is None.

    `role` (e.g. "simulate.user") is what a served backend's errors call it."""
    cache = ResponseCache.in_dir(cache_dir) if cache_dir is not None else None
    if cfg.backend == "transformers":
        return TransformersChat(cfg, cache)
    if cfg.backend == "openai":
        return OpenAIChat(cfg, cache, role=role)
    cfg.validate()  # names the allowed backends
    raise AssertionError(f"ChatModelConfig.validate accepted backend {cfg.backend!r}")
