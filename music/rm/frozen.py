"""Reuse of the frozen bottom layers' outputs (train.reuse_frozen_layers).

With LoRA on the top `lora_last_layers` of the kept layers only, the embeddings and the decoder layers
below never change: their output for a conversation (its final token ids, after truncation) is the same
in every epoch, seed, variant and in the scoring of every reward model built on the same backbone. So it
is computed once per conversation, kept in a store, and the forward pass of training and scoring runs
only the layers above (and backward only through them).

Equality with a run without reuse: the bottom layers run for one conversation at a time, unpadded, with
an all-ones mask: exactly the operations a run without reuse does for a batch of one. A padded batch
then runs the top layers from these states (pad positions zero: they are masked keys, so they add
exactly 0 to real tokens). With batches of one (or no padding) the rewards are bitwise those of a run
without reuse; with padded batches, a run without reuse computes the bottom layers on a padded [B, T]
batch instead, which changes float32 results in the last bits (as padding already does in that run:
tests/test_rm_frozen.py measures both). Cached or recomputed, a state is bitwise the same (it never
depends on the batch), so outputs do not depend on the store being warm. Scoring (not training) goes one step
further where one layer sits above the frozen ones (float32): that layer runs at the last token only
(FrozenBottom.last_token_scores, music.rm.last_token), within 1e-5 of the full forward, not bitwise.

Where it applies: train.lora true and 0 < lora_last_layers < kept layers (the bottom
num_layers - lora_last_layers layers are frozen). Full fine-tuning or LoRA on every layer: nothing is
frozen, no reuse. A saved reward model's folder says it through its adapter_config.json
(layers_to_transform, no embedding layer trained), so scoring reuses automatically. The Unsloth backend
(GPU) keeps reuse off: its patched layers and fused kernels are not this code path.

The store (STORE) is keyed by a hash of the bottom weights (backbone, revision, cut and dtype show
there), the layer count and the exact token ids. In memory (bounded by MAX_STORE_BYTES) it serves every
seed, variant and RM scored in one process; the train@* and evaluate@* stages also share it through files
under {paths.cache}/hidden (use_disk_store, bounded by MAX_DISK_BYTES), so evaluate@music reads the states
evaluate@baseline computed for the same items. A stored state is bitwise the one a computation gives, so
no output depends on what the store holds.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MAX_STORE_BYTES = 2 << 30  # in-process store bound (float32 states: ~1.2 MB per 512-token conversation at width 576)
MAX_DISK_BYTES = 4 << 30  # the files under {paths.cache}/hidden (HIDDEN_DIR), shared by the stages
HIDDEN_DIR = "hidden"


def use_disk_store(cache_dir: str | Path) -> Path:
    """Share the states between processes through {cache_dir}/hidden (train@* and evaluate@* call this)."""
    folder = Path(cache_dir) / HIDDEN_DIR
    STORE.use_folder(folder)
    return folder


def frozen_layer_count(lora: bool, lora_last_layers: int | None, num_layers: int) -> int:
    """How many bottom decoder layers never change in training (0: none, no reuse)."""
    if not lora or not lora_last_layers or lora_last_layers >= num_layers:
        return 0
    return num_layers - lora_last_layers


def saved_frozen_layers(model_dir: str | Path) -> int:
    """The frozen bottom layers of a saved reward model, from its adapter_config.json (0: none or no adapter)."""
    path = Path(model_dir) / "adapter_config.json"
    if not path.exists():
        return 0
    conf = json.loads(path.read_text(encoding="utf-8"))
    layers = conf.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    trained_extra = [m for m in (conf.get("modules_to_save") or []) if m not in ("score", "classifier")]
    if not layers or trained_extra or conf.get("peft_type") != "LORA":
        return 0
    return min(layers)


class HiddenStore:
    """Bottom-layer outputs per (model key, token ids): in memory on CPU up to max_bytes, and, once
    `use_folder` names one, in files shared by every process (train@* and evaluate@* stages) up to
    max_disk_bytes. Past a bound new states are not kept (they are computed again when needed). A file holds
    the token ids beside the states and is read only when they match; a file that does not load is a miss."""

    def __init__(self, max_bytes: int = MAX_STORE_BYTES):
        self.max_bytes = max_bytes
        self.data: dict[tuple, Any] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        self.folder: Path | None = None
        self.max_disk_bytes = 0
        self.disk_bytes = 0

    def use_folder(self, folder: str | Path, max_disk_bytes: int = MAX_DISK_BYTES) -> None:
        folder = Path(folder)
        if folder != self.folder:
            folder.mkdir(parents=True, exist_ok=True)
            self.disk_bytes = sum(f.stat().st_size for f in folder.rglob("*.pt"))
        self.folder, self.max_disk_bytes = folder, max_disk_bytes

    def _file(self, key: tuple) -> Path:
        model, ids = key
        digest = hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()
        return self.folder / model / digest[:2] / f"{digest}.pt"

    def _load(self, key: tuple):
        import torch

        path = self._file(key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob["ids"].tolist() == list(key[1]):
                return blob["hidden"]
        except Exception:  # a partial or foreign file: compute again (and overwrite it)
            return None
        return None

    def get(self, key: tuple):
        out = self.data.get(key)
        if out is None and self.folder is not None:
            out = self._load(key)
            if out is not None:
                self.disk_hits += 1
                self._keep(key, out)
        if out is None:
            self.misses += 1
        else:
            self.hits += 1
        return out

    def _keep(self, key: tuple, value) -> None:
        size = value.numel() * value.element_size()
        if self.bytes + size <= self.max_bytes:
            self.data[key] = value
            self.bytes += size

    def put(self, key: tuple, value) -> None:
        self._keep(key, value)
        if self.folder is None:
            return
        import torch

        from music.files import atomic_path

        size = value.numel() * value.element_size()
        if self.disk_bytes + size <= self.max_disk_bytes:
            with atomic_path(self._file(key)) as tmp:
                torch.save({"ids": torch.tensor(list(key[1]), dtype=torch.long), "hidden": value}, tmp)
            self.disk_bytes += size

    def clear(self) -> None:
        """Forget what is in memory and stop using a folder (its files stay)."""
        self.data.clear()
        self.bytes = self.hits = self.misses = self.disk_hits = 0
        self.folder, self.disk_bytes = None, 0


STORE = HiddenStore()  # one per process: shared by every seed, variant and scorer


def _inner(model):
    """The transformers model under PEFT (…ForSequenceClassification)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder(model):
    inner = _inner(model)
    return getattr(inner, inner.base_model_prefix)


def compute_identity(model) -> dict:
    """What besides the weights decides the bottom states' bits: the layers' settings, the attention kernel,
    the device (a GPU's states differ from a CPU's in the last bits), the thread count and the library versions."""
    import torch
    import transformers

    dec = _decoder(model)
    conf = dec.config
    dev = next(model.parameters()).device
    keys = (
        "model_type",
        "hidden_act",
        "rms_norm_eps",
        "layer_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "max_position_embeddings",
        "sliding_window",
        "attention_bias",
        "mlp_bias",
        "head_dim",
        "_attn_implementation",
    )
    return {
        "class": type(dec).__name__,
        "config": {k: getattr(conf, k, None) for k in keys},
        "device": str(dev.type) + (f":{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def model_key(model, n_frozen: int) -> str:
    """Identity of what the bottom layers compute: a hash of the embeddings' and bottom layers' weights
    (backbone, revision, cut and dtype all show there), the layer count and compute_identity."""
    import torch

    dec = _decoder(model)
    h = hashlib.sha256(f"frozen-{n_frozen}".encode())
    h.update(json.dumps(compute_identity(model), sort_keys=True, default=str).encode())
    modules = [("embed", dec.get_input_embeddings())] + [(f"layer{i}", dec.layers[i]) for i in range(n_frozen)]
    for name, mod in modules:
        for pname, p in sorted(mod.state_dict().items()):
            t = p.detach().to("cpu").contiguous()
            h.update(f"{name}.{pname}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Stop(Exception):
    pass


def _passthrough(original, inject):
    """Stands in for a frozen decoder layer in the top-only forward: the first one returns the injected
    bottom-layer states, the others hand them on."""
    import torch

    class Passthrough(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_type = getattr(original, "attention_type", None)  # per-layer masks (Qwen3, Gemma)
            self.inject = inject

        def forward(self, hidden_states, *args, **kwargs):
            return self.inject if self.inject is not None else hidden_states

    return Passthrough()


class FrozenBottom:
    """Runs a reward model as (stored bottom-layer states) + (top layers, norm, head)."""

    def __init__(self, model, n_frozen: int, store: HiddenStore | None = None):
        if n_frozen < 1:
            raise ValueError(f"FrozenBottom needs at least one frozen layer, got {n_frozen}")
        self.model = model
        self.n_frozen = n_frozen
        self.store = STORE if store is None else store
        self.key = model_key(model, n_frozen)
        self.compute_seconds = (
            0.0  # spent computing bottom states (what a store shared across processes could still save)
        )

    def _compute(self, ids: list[int]):
        """The bottom layers' output for one conversation, unpadded (batch of one, all-ones mask)."""
        import torch

        dec = _decoder(self.model)
        dev = next(self.model.parameters()).device
        got = []

        def hook(mod, args, out):
            got.append(out[0] if isinstance(out, tuple) else out)
            raise _Stop

        x = torch.tensor([ids], dtype=torch.long, device=dev)
        handle = dec.layers[self.n_frozen - 1].register_forward_hook(hook)
        try:
            # plain tensors even under an outer inference_mode: a training forward may reuse them
            with torch.inference_mode(False), torch.no_grad():
                self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got[0][0].detach().to("cpu")

    def states(self, ids: list[int]):
        key = (self.key, tuple(ids))
        out = self.store.get(key)
        if out is None:
            t0 = time.perf_counter()
            out = self._compute(ids)
            self.compute_seconds += time.perf_counter() - t0
            self.store.put(key, out)
        return out

    def batch_states(self, seqs: list[list[int]], width: int):
        """[B, width, hidden] bottom states, right-padded with zeros (pad positions are masked keys)."""
        import torch

        rows = [self.states(s) for s in seqs]
        out = torch.zeros((len(rows), width, rows[0].shape[-1]), dtype=rows[0].dtype)
        for r, h in enumerate(rows):
            out[r, : h.shape[0]] = h
        return out

    @contextmanager
    def _top_only(self, inject):
        dec = _decoder(self.model)
        kept = [dec.layers[i] for i in range(self.n_frozen)]
        try:
            for i in range(self.n_frozen):
                dec.layers[i] = _passthrough(kept[i], inject if i == 0 else None)
            yield
        finally:
            for i in range(self.n_frozen):
                dec.layers[i] = kept[i]

    def scores(self, seqs: list[list[int]], input_ids, attention_mask):
        """One float32 score per row, as music.rm.model.reward_scores: the same input_ids/attention_mask
        (right-padded `seqs`), with the bottom layers' output taken from the store."""
        from music.rm.model import reward_scores

        dev = input_ids.device
        hidden = self.batch_states(seqs, input_ids.shape[1]).to(dev)
        with self._top_only(hidden):
            return reward_scores(self.model, input_ids, attention_mask)

    def last_token_scores(self, seqs: list[list[int]], input_ids, attention_mask):
        """`scores` for inference, cheaper where one decoder layer sits above the frozen ones: the reward reads
        that layer's output at the last real token only, so the layer runs its keys and values for every token
        and everything else (query, attention, MLP, norm, head) for that token alone (music.rm.last_token).
        Other architectures and splits: `scores`. Not for training (its gradients take the full path)."""
        from music.rm.last_token import last_token_rewards, supports_last_token

        if not supports_last_token(self.model, self.n_frozen):
            return self.scores(seqs, input_ids, attention_mask)
        hidden = self.batch_states(seqs, input_ids.shape[1]).to(input_ids.device)
        return last_token_rewards(self.model, hidden, input_ids, attention_mask)

    def stats(self) -> dict:
        return {
            "frozen_layers": self.n_frozen,
            "store_hits": self.store.hits,
            "store_misses": self.store.misses,
            "store_disk_hits": self.store.disk_hits,
            "store_mb": round(self.store.bytes / 2**20, 1),
            "bottom_seconds": round(self.compute_seconds, 2),
        }


def frozen_bottom_for_training(cfg, model, info: dict) -> FrozenBottom | None:
    """The reuse for a training run, or None: switched off, nothing frozen, or the Unsloth backend."""
    if not cfg.reuse_frozen_layers or info.get("backend") != "transformers":
        return None
    n = frozen_layer_count(cfg.lora, cfg.lora_last_layers, int(info["num_layers"]))
    return FrozenBottom(model, n) if n else None
