"""Persistent response cache: one sqlite file, one row per generated reply.

sqlite commits are durable, so a run killed with -9 keeps every unit it finished; WAL mode lets
several backends (user, assistant, contrast roles) and processes share one file. One connection per
cache object, guarded by a lock, serves the HTTP backend's thread pool.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from music.chat.base import ChatReply

CACHE_FILE = "responses.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._conn.execute(_SCHEMA)

    @classmethod
    def in_dir(cls, cache_dir: str | Path) -> "ResponseCache":
        return cls(Path(cache_dir) / CACHE_FILE)

    def get_many(self, keys: list[str]) -> dict[str, ChatReply]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT key, text, finish_reason FROM responses WHERE key IN ({marks})", list(keys)
            ).fetchall()
        return {k: ChatReply(text=t, finish_reason=f) for k, t, f in rows}

    def put_many(self, items: list[tuple[str, ChatReply]]) -> None:
        """Store replies in one transaction; error replies are refused (they must be retried)."""
        rows = []
        for key, reply in items:
            if reply.finish_reason == "error" or reply.text is None:
                raise ValueError("error replies are never cached")
            rows.append((key, reply.text, reply.finish_reason, time.time()))
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
