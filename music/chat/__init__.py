"""Chat backends: in-process transformers and OpenAI-compatible HTTP, behind one batched interface.

chat = make_chat(cfg, cache_dir)          # cfg: music.config.ChatModelConfig
replies = chat.generate(conversations, seed=0, desc="assistant turn 1")
"""

from music.chat.base import ChatBackend, ChatReply, SamplingParams
from music.chat.cache import ResponseCache
from music.chat.factory import make_chat

__all__ = ["ChatBackend", "ChatReply", "ResponseCache", "SamplingParams", "make_chat"]
