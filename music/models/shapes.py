"""A backbone's shape from its config.json, without loading weights (for music.pipeline.plan).

    shape = backbone_shape("google/gemma-2-9b-it")   # committed config: works offline
    shape.reward_params(), shape.lora_params(r=16), shape.activation_elems_per_token()

Where the config.json comes from, first match wins: a local folder holding config.json; the
committed copies in music/models/configs/ (the embedded model and the paper's backbone, by id);
otherwise a KeyError naming the model and how to add one. Nothing is downloaded.

Counts are for the decoder-only families this project uses (Llama, SmolLM2, Qwen, Mistral,
Gemma-2): gated MLP (3 matrices), grouped-query attention, RMSNorm. A test checks them against
transformers' own models built on the meta device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# model id -> committed config file (music/models/configs/*.json)
COMMITTED_CONFIGS = {
    "embedded:smollm2-135m-instruct": "smollm2-135m-instruct.json",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct.json",
    "google/gemma-2-9b-it": "gemma-2-9b-it.json",
}

# RMSNorms per decoder layer (Gemma-2 adds pre/post feed-forward norms).
NORMS_PER_LAYER = {"gemma2": 4, "gemma3_text": 4}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class BackboneShape:
    name: str
    source: str  # where config.json was read
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str | None
    attention_bias: bool = False
    attn_logit_softcapping: float | None = None
    norms_per_layer: int = 2

    @classmethod
    def from_config(cls, cfg: dict, name: str, source: str) -> "BackboneShape":
        if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers
            cfg = {**cfg["text_config"], "torch_dtype": cfg.get("torch_dtype")}
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            return cls(
                name=name,
                source=source,
                model_type=str(cfg.get("model_type", "unknown")),
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                intermediate_size=int(cfg["intermediate_size"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings") or 0),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
                attention_bias=bool(cfg.get("attention_bias", False)),
                attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
                norms_per_layer=NORMS_PER_LAYER.get(str(cfg.get("model_type")), 2),
            )
        except KeyError as exc:
            raise KeyError(f"{source}: config.json lacks {exc.args[0]!r}; cannot size {name}") from None

    # ---- dimensions
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layers(self, num_layers: int | None = None) -> int:
        """Layers kept (train.num_layers cuts the backbone; None keeps all)."""
        return self.num_layers if num_layers is None else min(int(num_layers), self.num_layers)

    # ---- parameters
    def layer_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.attention_bias:
            attn += self.q_dim + 2 * self.kv_dim + h
        return attn + 3 * h * i + self.norms_per_layer * h

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def causal_lm_params(self, num_layers: int | None = None) -> int:
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params()
        return self.embedding_params() + self.layers(num_layers) * self.layer_params() + self.hidden_size + lm_head

    def reward_params(self, num_layers: int | None = None) -> int:
        """AutoModelForSequenceClassification(num_labels=1): no LM head, a one-output score head."""
        return (
            self.embedding_params()
            + self.layers(num_layers) * self.layer_params()
            + self.hidden_size
            + self.hidden_size
        )

    def lora_params(self, r: int, lora_layers: int | None = None) -> int:
        """LoRA A and B on q/k/v/o/gate/up/down of `lora_layers` layers (None: all)."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_dim, self.kv_dim
        per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
        return per_layer * (self.num_layers if lora_layers is None else lora_layers)

    # ---- activations (elements per token per layer)
    def activation_elems_per_token(self) -> int:
        """Tensors one decoder layer keeps for backward, per token (SDPA/flash attention, no dropout).

        Norm inputs (one per RMSNorm) and the attention-normed input; q, k, v and the attention
        output; the MLP's normed input, gate, up, activation and product (4 x intermediate).
        """
        h, i = self.hidden_size, self.intermediate_size
        return (self.norms_per_layer + 2) * h + 2 * self.q_dim + 2 * self.kv_dim + 4 * i

    def eager_attention_elems_per_token(self, seq_len: int) -> int:
        """Extra per token when attention scores are materialised (eager): scores and probabilities."""
        return 2 * self.num_heads * seq_len

    def inference_elems_per_token(self) -> int:
        """Live tensors of one layer's forward pass under inference_mode, per token (rough peak)."""
        h, i = self.hidden_size, self.intermediate_size
        return 3 * h + 2 * self.q_dim + 2 * self.kv_dim + 3 * i

    def forward_flops_per_token(self, seq_len: int, num_layers: int | None = None) -> float:
        """2 x (parameters in the kept layers) + causal attention (QK^T and AV over seq_len / 2 keys)."""
        n = self.layers(num_layers)
        return 2.0 * n * self.layer_params() + 2.0 * n * self.q_dim * seq_len


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def config_source(model: str) -> Path | None:
    """The config.json used for `model`, or None when neither a local folder nor a committed copy has one."""
    local = Path(model)
    if (local / "config.json").is_file():
        return local / "config.json"
    if local.suffix == ".json" and local.is_file():
        return local
    if model in COMMITTED_CONFIGS:
        return CONFIG_DIR / COMMITTED_CONFIGS[model]
    return None


def backbone_shape(model: str) -> BackboneShape:
    path = config_source(model)
    if path is None:
        raise KeyError(
            f"no config.json for {model!r}: give a local model folder, or commit its config.json under "
            f"{CONFIG_DIR} and add it to music.models.shapes.COMMITTED_CONFIGS (known: {sorted(COMMITTED_CONFIGS)})"
        )
    return BackboneShape.from_config(_read(path), model, str(path))


def known_backbone(model: str) -> bool:
    return config_source(model) is not None


# ---- rules the trainer, the scorer and the planner share (one place)
LARGE_BACKBONE_PARAMS = 1_000_000_000  # from here gradient checkpointing is on unless set otherwise
DTYPE_SETTINGS = ("auto", *DTYPE_BYTES)


def resolve_dtype(setting: str, backbone_dtype: str | None, *, cuda: bool, bf16_supported: bool = True) -> str:
    """The dtype to load a backbone in: `setting` unless "auto"; auto = float32 on CPU, and on a GPU the
    backbone's own 16-bit dtype (its config's torch_dtype) or else bfloat16 (float16 where bf16 is unsupported)."""
    if setting not in DTYPE_SETTINGS:
        raise ValueError(f"dtype must be one of {DTYPE_SETTINGS}, got {setting!r}")
    if setting != "auto":
        return setting
    if not cuda:
        return "float32"
    if backbone_dtype == "float16" or (backbone_dtype == "bfloat16" and bf16_supported):
        return backbone_dtype
    return "bfloat16" if bf16_supported else "float16"


def use_gradient_checkpointing(setting: bool | None, n_params: int) -> bool:
    """`setting` when given; None (auto) = on for backbones of LARGE_BACKBONE_PARAMS or more."""
    return n_params >= LARGE_BACKBONE_PARAMS if setting is None else bool(setting)
