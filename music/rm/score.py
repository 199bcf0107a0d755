"""Score conversations with a saved reward model (or an in-memory one), with training's length rules.

    scorer = RewardScorer("outputs/models/baseline")
    scorer.score([[{"role": "user", ...}, {"role": "assistant", ...}], ...])  # -> list[float], input order
    chosen, rejected = score_pairs(scorer, pairs)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from music.models.shapes import resolve_dtype
from music.rm.data import as_pairs, fit_conversation, pad_batch
from music.rm.model import reward_scores
from music.schema import validate_conversation

DEFAULT_MAX_LENGTH = 2048


def score_conversations(
    model, tokenizer, conversations: list[list[dict]], *, max_length: int, batch_size: int = 8,
    source: str = "conversations", progress: bool = False,
) -> list[float]:
    """Scores in input order; batches are sorted by length (less padding), run under inference_mode."""
    import torch
    from tqdm.auto import tqdm

    ids = []
    for i, conv in enumerate(conversations):
        conv = validate_conversation(conv, source=source, record=i)
        ids.append(fit_conversation(tokenizer, conv, max_length, source=source, record=i, field_name="messages").ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc="score", disable=not progress):
            chunk = order[s:s + batch_size]
            x, mask = pad_batch([ids[i] for i in chunk], tokenizer.pad_token_id)
            for i, v in zip(chunk, reward_scores(model, x.to(dev), mask.to(dev)).tolist()):
                out[i] = float(v)
    model.train(was_training)
    return out


class RewardScorer:
    """A saved reward model (`AutoModelForSequenceClassification` folder) that scores conversations."""

    def __init__(self, model_dir: str | Path, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} holds no saved model (config.json missing)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self.device.startswith("cuda")
        # auto: float32 on CPU; on a GPU the saved model's 16-bit dtype, else bfloat16 (evaluate.dtype)
        saved = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.dtype = resolve_dtype(dtype, saved.get("dtype") or saved.get("torch_dtype"), cuda=cuda,
                                   bf16_supported=cuda and torch.cuda.is_bf16_supported())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, dtype=getattr(torch, self.dtype))
        self.model.to(self.device).eval()
        if self.model.config.pad_token_id != self.tokenizer.pad_token_id:
            raise ValueError(
                f"{self.model_dir}: config pad_token_id {self.model.config.pad_token_id} differs from the "
                f"tokenizer's {self.tokenizer.pad_token_id}; pooling would pick the wrong token"
            )
        self.batch_size = batch_size
        self.max_length = max_length or self._trained_max_length()

    def _trained_max_length(self) -> int:
        path = self.model_dir / "train_metrics.json"
        if path.exists():
            return int(json.loads(path.read_text(encoding="utf-8"))["config"]["max_length"])
        return DEFAULT_MAX_LENGTH

    def score(self, conversations: list[list[dict]], progress: bool = False) -> list[float]:
        return score_conversations(self.model, self.tokenizer, conversations, max_length=self.max_length,
                                   batch_size=self.batch_size, source=str(self.model_dir), progress=progress)


def score_pairs(scorer, pairs: Any, source: str = "pairs") -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) for a Dataset / list of PreferencePair / list of dicts.

    One scorer call for all chosen and rejected conversations (it batches by length); `scorer` is
    anything with .score(conversations) -> list[float]. No pairs give two empty lists.
    """
    pairs = as_pairs(pairs, source, allow_empty=True)
    scores = list(scorer.score([p.chosen for p in pairs] + [p.rejected for p in pairs])) if pairs else []
    return scores[: len(pairs)], scores[len(pairs):]
