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
from music.rm.data import Fit, as_pairs, fit_conversation, pad_batch
from music.rm.frozen import FrozenBottom, saved_frozen_layers
from music.rm.model import attention_implementation, float32_head, reward_scores, score_head
from music.schema import validate_conversation
from music.threads import forward_threads

DEFAULT_MAX_LENGTH = 2048
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _saved_tensors(folder: Path, prefix: str) -> dict:
    """The tensors named `prefix*` in a saved model's safetensors file(s), in their saved dtype."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(
            {f for k, f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].items() if k.startswith(prefix)}
        )
    else:
        files = ["model.safetensors"] if (folder / "model.safetensors").exists() else []
    out = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)})
    return out


def _base_view(model_dir: Path, tmp: Path) -> Path:
    """A folder of links to the base model's files, without the adapter: transformers would otherwise
    load the adapter itself, in the 16-bit dtype (LoRA and head rounded)."""
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in ADAPTER_FILES:
            try:
                (tmp / f.name).symlink_to(f.resolve())
            except OSError:  # no symlinks on this filesystem
                import shutil

                shutil.copy2(f, tmp / f.name)
    return tmp


def load_scoring_model(model_dir: str | Path, dtype: str, device: str = "cpu"):
    """A saved reward model (music.rm.model.save_model_folder) as the function it was trained as.

    The base in `dtype` with the attention of music.rm.model.attention_implementation; the score head
    in float32 with its saved float32 weights; LoRA (when the folder holds an adapter) applied through
    PEFT, unmerged, in float32, as in training.
    """
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    kw = dict(dtype=getattr(torch, dtype), attn_implementation=attention_implementation(config))
    has_adapter = (model_dir / "adapter_config.json").exists()
    with tempfile.TemporaryDirectory(prefix="rm-base-") as tmp:
        src = _base_view(model_dir, Path(tmp)) if has_adapter else model_dir
        model = AutoModelForSequenceClassification.from_pretrained(src, **kw)
    float32_head(model)
    head = score_head(model)
    saved = {k.split(".")[-1]: v for k, v in _saved_tensors(model_dir, "score.").items()}
    with torch.no_grad():
        for name, value in saved.items():
            getattr(head, name).copy_(value.to(torch.float32))
    if has_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_dir, autocast_adapter_dtype=True)  # LoRA in float32
    model.to(device).eval()
    if score_head(model).weight.dtype != torch.float32:
        raise RuntimeError(f"{model_dir}: the score head loaded as {score_head(model).weight.dtype}, not float32")
    return model


def score_conversations(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_length: int,
    batch_size: int = 8,
    source: str = "conversations",
    progress: bool = False,
    frozen: FrozenBottom | None = None,
    desc: str = "score",
) -> list[float]:
    """Scores in input order; batches are sorted by length (less padding), run under inference_mode.

    `frozen` (music.rm.frozen): the bottom layers' output comes from its store (computed once per conversation).
    """
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
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            chunk = order[s : s + batch_size]
            x, mask = pad_batch([ids[i] for i in chunk], tokenizer.pad_token_id)
            with forward_threads():  # the cores other jobs leave idle (music.threads); scores do not depend on it
                if frozen:
                    scores = frozen.last_token_scores([ids[i] for i in chunk], x.to(dev), mask.to(dev))
                else:
                    scores = reward_scores(model, x.to(dev), mask.to(dev))
            for i, v in zip(chunk, scores.tolist()):
                out[i] = float(v)
    model.train(was_training)
    return out


class RewardScorer:
    """A saved reward model (music.rm.model.save_model_folder) that scores conversations; loaded by
    load_scoring_model (LoRA unmerged, float32 head, the training attention). When the folder's adapter
    leaves bottom layers frozen (music.rm.frozen.saved_frozen_layers), their output is computed once per
    conversation and shared with every other scorer and training run of this process. reuse_frozen None:
    as the RM was trained (train_metrics.json's train.reuse_frozen_layers; true when absent)."""

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        reuse_frozen: bool | None = None,
        progress_desc: str | None = None,
    ):
        import torch
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} holds no saved model (config.json missing)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self.device.startswith("cuda")
        # auto: float32 on CPU; on a GPU the saved model's 16-bit dtype, else bfloat16 (evaluate.dtype)
        saved = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.dtype = resolve_dtype(
            dtype,
            saved.get("dtype") or saved.get("torch_dtype"),
            cuda=cuda,
            bf16_supported=cuda and torch.cuda.is_bf16_supported(),
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = load_scoring_model(self.model_dir, self.dtype, self.device)
        if self.model.config.pad_token_id != self.tokenizer.pad_token_id:
            raise ValueError(
                f"{self.model_dir}: config pad_token_id {self.model.config.pad_token_id} differs from the "
                f"tokenizer's {self.tokenizer.pad_token_id}; pooling would pick the wrong token"
            )
        self.batch_size = batch_size
        self.progress_desc = progress_desc  # set: every score() call shows a progress bar with this label
        self.max_length = max_length or self._trained_max_length()
        if reuse_frozen is None:
            reuse_frozen = bool(self._trained_config().get("reuse_frozen_layers", True))
        n_frozen = saved_frozen_layers(self.model_dir) if reuse_frozen else 0
        self.frozen = FrozenBottom(self.model, n_frozen) if n_frozen else None

    def _trained_config(self) -> dict:
        path = self.model_dir / "train_metrics.json"
        return json.loads(path.read_text(encoding="utf-8"))["config"] if path.exists() else {}

    def _trained_max_length(self) -> int:
        return int(self._trained_config().get("max_length", DEFAULT_MAX_LENGTH))

    def fit(self, conversation: list[dict]) -> Fit:
        """The conversation as this scorer sees it: rendered and fitted to max_length (music.rm.data.Fit)."""
        conv = validate_conversation(conversation, source=str(self.model_dir), record=0)
        return fit_conversation(
            self.tokenizer, conv, self.max_length, source=str(self.model_dir), record=0, field_name="messages"
        )

    def score(self, conversations: list[list[dict]], progress: bool = False) -> list[float]:
        return score_conversations(
            self.model,
            self.tokenizer,
            conversations,
            max_length=self.max_length,
            batch_size=self.batch_size,
            source=str(self.model_dir),
            progress=progress or self.progress_desc is not None,
            frozen=self.frozen,
            desc=self.progress_desc or "score",
        )


def score_pairs(scorer, pairs: Any, source: str = "pairs") -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) for a Dataset / list of PreferencePair / list of dicts.

    One scorer call for all chosen and rejected conversations (it batches by length); `scorer` is
    anything with .score(conversations) -> list[float]. No pairs give two empty lists.
    """
    pairs = as_pairs(pairs, source, allow_empty=True)
    scores = list(scorer.score([p.chosen for p in pairs] + [p.rejected for p in pairs])) if pairs else []
    return scores[: len(pairs)], scores[len(pairs) :]
