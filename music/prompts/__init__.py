"""Prompt templates live here as text files; load them by name, with a digest for pair metadata.

p = load_prompt("user_simulator")   # -> Prompt(name="user_simulator.txt", text=..., sha256=...)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Prompt:
    name: str  # file name, e.g. "user_simulator.txt"
    text: str  # stripped of the trailing newline
    sha256: str  # of the file's bytes: pairs record exactly which prompt made them

    def meta(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}


def load_prompt(name: str) -> Prompt:
    file = PROMPT_DIR / (name if name.endswith(".txt") else f"{name}.txt")
    if not file.is_file():
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r} in {PROMPT_DIR} (known: {', '.join(known)})")
    raw = file.read_bytes()
    return Prompt(file.name, raw.decode("utf-8").rstrip("\n"), hashlib.sha256(raw).hexdigest())
