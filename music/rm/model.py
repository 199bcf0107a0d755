"""The reward model: a decoder LM with a scalar head (`score`, one output) on the last real token.

Two backends build it:
- "transformers": AutoModelForSequenceClassification(num_labels=1) + PEFT LoRA with task_type SEQ_CLS
  and modules_to_save=["score"] (target_modules="all-linear" alone would leave the new head untrained:
  https://github.com/huggingface/trl/issues/1379), or full fine-tuning when TrainConfig.lora is False. Runs anywhere.
- "unsloth": Unsloth's FastLanguageModel with num_labels=1 (GPU only). Unsloth's CPU mode has no
  sequence-classification path: it returns a causal LM that would "train" on vocabulary logits, so we
  refuse it on CPU, and on GPU we assert that a one-output score head exists (https://github.com/unslothai/unsloth/issues/1730).

Pooling is the transformers one: the rightmost token that is not the pad token. That is only right
when the pad token differs from the end-of-turn token (https://github.com/huggingface/transformers/issues/35352),
so `ensure_distinct_pad` pins it, in the tokenizer and in the model config.

Attention: `attention_implementation` is the one place that picks it, for training and for scoring
(music.rm.score). A backbone whose config sets `attn_logit_softcapping` (Gemma-2) gets an
implementation that applies the soft-cap: transformers 5.17's sdpa ignores it.

Saving (`save_model_folder`) never merges LoRA into 16-bit weights (a delta below half a bf16 step of
the weight it is added to would vanish): the folder holds the base reward model as trained from (cut
to train.num_layers, training dtype, plain transformers files) plus the PEFT adapter (LoRA and the
trained head, float32), and is scored through PEFT, unmerged: the function that was trained.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

from music.config import TrainConfig
from music.models import load_tokenizer, resolve_model_path
from music.models.shapes import resolve_dtype, use_gradient_checkpointing

log = logging.getLogger(__name__)

# Tokens that end a turn in common chat templates; the pad token must be none of these.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "<unk>")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class BackendChoice:
    name: str  # "unsloth" | "transformers"
    reason: str


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> BackendChoice:
    """Pick the backend for TrainConfig.backend; imports unsloth (first) only when it will be used."""
    if requested not in ("auto", "unsloth", "transformers"):
        raise ValueError(f"train.backend must be auto, unsloth or transformers, got {requested!r}")
    if requested == "transformers":
        return BackendChoice("transformers", "train.backend = transformers (forced)")
    cuda = _cuda_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not cuda:
            raise RuntimeError(
                "train.backend = unsloth needs a CUDA GPU: without one Unsloth falls back to its CPU mode, "
                "which has no sequence-classification path (it returns a causal LM for num_labels=1 and "
                "would train on vocabulary logits). Use backend: auto or transformers on CPU."
            )
        if not has_unsloth:
            raise RuntimeError("train.backend = unsloth, but unsloth is not installed: pip install -e '.[gpu]'")
        _import_unsloth()
        return BackendChoice("unsloth", "train.backend = unsloth (forced); CUDA available")
    if not cuda:
        return BackendChoice("transformers", "auto: no CUDA GPU (Unsloth's CPU mode cannot build a reward model)")
    if not has_unsloth:
        return BackendChoice("transformers", "auto: CUDA available but unsloth is not installed")
    try:
        _import_unsloth()
    except Exception as exc:  # a broken install must not stop training: say why and go on
        return BackendChoice("transformers", f"auto: CUDA available but `import unsloth` failed ({exc!r})")
    return BackendChoice("unsloth", "auto: CUDA available and unsloth imports")


def _import_unsloth():
    # Unsloth patches transformers/peft/trl at import; it must come before them to take full effect.
    late = [m for m in ("transformers", "peft", "trl") if m in sys.modules]
    import unsloth  # noqa: F401

    if late:
        log.warning("%s were imported before unsloth; some Unsloth patches may not apply", ", ".join(late))


def end_of_turn_ids(tokenizer) -> set[int]:
    """The eos id plus every known turn-ending token that the chat template writes."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab and tok in template:
            ids.add(vocab[tok])
    return ids


def ensure_distinct_pad(tokenizer) -> bool:
    """Make the pad token differ from every end-of-turn token; True if a token had to be added."""
    eot = end_of_turn_ids(tokenizer)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eot:
        return False
    vocab = tokenizer.get_vocab()
    for cand in PAD_CANDIDATES:
        if cand in vocab and vocab[cand] not in eot:
            tokenizer.pad_token = cand
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


@contextlib.contextmanager
def _quiet_transformers():
    # The load report lists the new score head and the cut layers; both are expected here.
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def attention_implementation(config) -> str | None:
    """The attention implementation for a backbone config, in training and in scoring alike.

    None (transformers' default, sdpa) unless the config sets `attn_logit_softcapping`: sdpa ignores the
    soft-cap, so those backbones get flash_attention_2 where flash-attn >= 2.6.3 is installed and a GPU is
    used, else eager (both apply it). The Unsloth backend replaces Gemma-2's attention with its own
    kernels, which apply the soft-cap too (unsloth/models/gemma2.py).
    """
    text = getattr(config, "text_config", None) or config
    if not (getattr(text, "attn_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None)):
        return None
    if _cuda_available() and _flash_attn_with_softcap():
        return "flash_attention_2"
    return "eager"


def _flash_attn_with_softcap() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from importlib.metadata import version

        major, minor, patch = (int(x) for x in re.findall(r"\d+", version("flash_attn"))[:3])
    except Exception:  # unknown version: eager is always right
        return False
    return (major, minor, patch) >= (2, 6, 3)


def _cut_config(config, num_layers: int | None) -> None:
    if num_layers is None or num_layers >= config.num_hidden_layers:
        return
    if num_layers < 1:
        raise ValueError(f"train.num_layers must be >= 1 or null, got {num_layers}")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen3, Gemma)
        config.layer_types = config.layer_types[:num_layers]


def _cut_layers(model, num_layers: int | None) -> None:
    """Keep the first N decoder layers of an already loaded model (the Unsloth path)."""
    import torch

    base = getattr(model, model.base_model_prefix)
    if num_layers is None or num_layers >= len(base.layers):
        return
    base.layers = torch.nn.ModuleList(list(base.layers)[:num_layers])
    _cut_config(model.config, num_layers)


def score_head(model):
    """The `score` Linear of a (possibly PEFT-wrapped) sequence-classification model, or None."""
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "score" and hasattr(module, "out_features"):
            return module
        if leaf == "score" and hasattr(module, "modules_to_save"):  # PEFT ModulesToSaveWrapper
            return module.modules_to_save["default"]
    return None


def init_score_head(model, how: str) -> None:
    """train.head_init: "zero" sets the trainable score head to 0 (every conversation starts at reward 0, and
    the seed no longer adds a random direction to the reward: music.config.TrainConfig.head_init has the
    numbers); "normal" keeps the backbone class's random init. The LoRA B matrices start at 0 as well, so
    the first step moves only the head; LoRA follows from the second."""
    import torch

    if how == "normal":
        return
    if how != "zero":
        raise ValueError(f"train.head_init must be 'zero' or 'normal', got {how!r}")
    with torch.no_grad():
        for p in score_head(model).parameters():
            p.zero_()


def assert_reward_head(model) -> None:
    """A reward model has one trainable score output; a causal LM
    (https://github.com/unslothai/unsloth/issues/1730) has none."""
    head = score_head(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap PEFT
    if head is None or "ForCausalLM" in type(inner).__name__:
        raise RuntimeError(f"{type(model).__name__} has no `score` head: not a sequence-classification model")
    if head.out_features != 1:
        raise RuntimeError(f"the score head has {head.out_features} outputs, expected 1")
    if not any(p.requires_grad for p in head.parameters()):
        raise RuntimeError(
            "the score head is frozen: it would stay at its random init (https://github.com/huggingface/trl/issues/1379)"
        )


def config_dtype(config) -> str | None:
    """The dtype a config.json states (transformers 5: `dtype`; older: `torch_dtype`), as a name."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if value is None else str(value).replace("torch.", "")


def training_dtype(cfg: TrainConfig, config, cuda: bool) -> str:
    """train.dtype resolved: float32 on CPU; on a GPU the backbone's 16-bit dtype, else bfloat16."""
    import torch

    return resolve_dtype(
        cfg.dtype, config_dtype(config), cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported()
    )


def float32_head(model) -> int:
    """Keep the score head (and PEFT's trainable copy of it) in float32 inside a 16-bit model.

    At the paper's learning rate (2e-6) a bfloat16 head would not move: its updates fall below 16-bit
    resolution. The head's input is cast up by a forward pre-hook, so its output (the reward) is float32.
    Returns how many Linear layers were changed.
    """
    import torch

    n = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "score" in name.split(".") and module.weight.dtype != torch.float32:
            module.float()
            module.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype), *args[1:]))
            n += 1
    return n


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs under LoRA)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def _lora_config(cfg: TrainConfig, n_layers: int):
    from peft import LoraConfig

    layers = None
    if cfg.lora_last_layers:
        layers = list(range(max(0, n_layers - cfg.lora_last_layers), n_layers))
    return LoraConfig(
        task_type="SEQ_CLS",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGETS,
        layers_to_transform=layers,
        modules_to_save=["score"],  # the new head trains in full and is saved with the adapter
    )


def _load_transformers(cfg: TrainConfig, path: str, tok, device, seed: int):
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    _cut_config(config, cfg.num_layers)
    config.pad_token_id = tok.pad_token_id
    dtype = training_dtype(cfg, config, cuda=str(device).startswith("cuda"))
    torch.manual_seed(seed)  # the new score head's init
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, dtype=getattr(torch, dtype), attn_implementation=attention_implementation(config)
        )
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.to(device)
    if use_gradient_checkpointing(cfg.gradient_checkpointing, sum(p.numel() for p in model.parameters())):
        enable_gradient_checkpointing(model)
    if cfg.lora:
        torch.manual_seed(seed)
        model = get_peft_model(model, _lora_config(cfg, config.num_hidden_layers))
    float32_head(model)
    return model


def unsloth_load_kwargs(cfg: TrainConfig, path: str, dtype) -> dict:
    """What FastLanguageModel.from_pretrained gets (a function, so a CPU test can check it)."""
    return dict(
        model_name=path,
        max_seq_length=cfg.max_length,
        dtype=dtype,  # train.dtype (auto: the backbone's 16-bit dtype, else bfloat16)
        load_in_4bit=False,
        num_labels=1,  # maps to AutoModelForSequenceClassification on GPU
        full_finetuning=not cfg.lora,
        # the model id asked for, not a mirror from Unsloth's name mapper (the tokenizer comes from the id)
        use_exact_model_name=True,
    )


def _load_unsloth(cfg: TrainConfig, path: str, tok, seed: int):
    import torch
    from transformers import AutoConfig
    from unsloth import FastLanguageModel  # imported first by choose_backend

    dtype = training_dtype(cfg, AutoConfig.from_pretrained(path), cuda=True)
    # attention: Unsloth drops attn_implementation and runs its own Gemma-2 kernels (soft-cap applied)
    model, _ = FastLanguageModel.from_pretrained(**unsloth_load_kwargs(cfg, path, getattr(torch, dtype)))
    if "ForSequenceClassification" not in type(model).__name__:
        raise RuntimeError(
            f"Unsloth returned {type(model).__name__} for num_labels=1, not a sequence-classification model "
            "(https://github.com/unslothai/unsloth/issues/1730); use train.backend: transformers"
        )
    _cut_layers(model, cfg.num_layers)
    model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    ckpt = use_gradient_checkpointing(cfg.gradient_checkpointing, sum(p.numel() for p in model.parameters()))
    if not cfg.lora and ckpt:
        enable_gradient_checkpointing(model)
    if cfg.lora:
        n = model.config.num_hidden_layers
        layers = list(range(max(0, n - cfg.lora_last_layers), n)) if cfg.lora_last_layers else None
        # Unsloth picks task_type SEQ_CLS for a classification model, and PEFT then adds "score" to
        # modules_to_save itself; Unsloth's own modules_to_save accepts only lm_head/embed_tokens.
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=LORA_TARGETS,
            layers_to_transform=layers,
            bias="none",
            use_gradient_checkpointing="unsloth" if ckpt else False,
            random_state=seed,
        )
    float32_head(model)
    return model


def load_reward_model(cfg: TrainConfig, device: str | None = None, seed: int = 0) -> tuple[Any, Any, dict]:
    """Build the trainable reward model (head and LoRA initialised from `seed`); returns (model, tokenizer,
    info) with the backend and why."""
    choice = choose_backend(cfg.backend)
    path = resolve_model_path(cfg.backbone)
    tok = load_tokenizer(cfg.backbone, padding_side="right")
    added_pad = ensure_distinct_pad(tok)
    if choice.name == "unsloth":
        model = _load_unsloth(cfg, path, tok, seed)
        device = "cuda"
    else:
        device = device or ("cuda" if _cuda_available() else "cpu")
        model = _load_transformers(cfg, path, tok, device, seed)
    assert_reward_head(model)
    init_score_head(model, cfg.head_init)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    info = {
        "backend": choice.name,
        "reason": choice.reason,
        "device": device,
        "model_class": type(model).__name__,
        "num_layers": _base_config(model).num_hidden_layers,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "pad_token_added": added_pad,
        "trainable_params": n_train,
        "total_params": n_all,
        "dtype": str(next(p for n, p in model.named_parameters() if "score" not in n).dtype).replace("torch.", ""),
        "head_dtype": str(score_head(model).weight.dtype).replace("torch.", ""),
        "attn_implementation": "unsloth" if choice.name == "unsloth" else _base_config(model)._attn_implementation,
        "gradient_checkpointing": bool(
            getattr(model, "is_gradient_checkpointing", False)
            or getattr(getattr(model, "base_model", None), "is_gradient_checkpointing", False)
        ),
    }
    return model, tok, info


def _base_config(model):
    return getattr(model, "config", None) or model.base_model.config


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _base_state_dict(model) -> dict:
    """The base model's weights inside a PEFT model: LoRA left out, and the trained copy of each module
    PEFT trains in full (the score head) in place of its initial weights, so that a plain
    `AutoModelForSequenceClassification.from_pretrained(folder)` (which loads the adapter's LoRA but, in
    transformers 5.17, not its head) still gets the trained head."""
    out = {}
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue
        out[key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = value
    return out


def save_model_folder(model, tokenizer, folder, base_name: str | None = None) -> None:
    """Write a reward model that reloads to the same function (music.rm.score.load_scoring_model).

    LoRA: the base reward model (config.json + weights in the training dtype; cut and resized as
    trained) and, beside it, the PEFT adapter (adapter_config.json + adapter_model.safetensors: LoRA and
    the trained score head, float32). Nothing is merged. Full fine-tuning: the model itself (the head
    keeps its float32 weights in the file). Then the tokenizer. `base_name` (train.backbone) is written as the
    adapter's base_model_name_or_path instead of this machine's path to the backbone (the base beside it is
    what loads).
    """
    from pathlib import Path

    folder = Path(folder)
    base = model.get_base_model() if is_peft(model) else model
    base.config.pad_token_id = tokenizer.pad_token_id
    if is_peft(model):
        base.save_pretrained(folder, state_dict=_base_state_dict(model))
        configs = list(model.peft_config.values())
        kept = [c.base_model_name_or_path for c in configs]
        try:
            for c in configs:
                c.base_model_name_or_path = base_name or c.base_model_name_or_path
            model.save_pretrained(folder, save_embedding_layers=False)  # the base beside holds the (resized) embeddings
        finally:
            for c, name in zip(configs, kept):
                c.base_model_name_or_path = name
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template (with this machine's paths)
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def reward_scores(model, input_ids, attention_mask):
    """One float32 score per row; anything else (a causal LM's vocabulary logits) is an error."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    if tuple(logits.shape) != (input_ids.shape[0], 1):
        raise RuntimeError(
            f"expected one score per conversation (shape ({input_ids.shape[0]}, 1)), got logits of shape "
            f"{tuple(logits.shape)}: is this a sequence-classification model with num_labels=1?"
        )
    return logits[:, 0].float()
