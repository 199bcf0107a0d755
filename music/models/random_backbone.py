"""A backbone of a known shape with random weights, built from a committed config.json (offline).

    folder = write_random_backbone("google/gemma-2-9b-it", out, tokenizer, num_layers=2, hidden_size=64)

The committed config (music/models/configs/) gives the architecture (Gemma-2: soft-capped attention,
four norms per layer, sliding windows); `overrides` shrink it for a CPU test or keep the real widths
for a GPU measurement (benchmarks/gpu_check_unsloth.py). The folder holds a causal LM and the given
tokenizer, so the reward-model loaders read it like any local backbone. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from music.models.shapes import config_source


def random_backbone_config(model_id: str, num_layers: int, **overrides):
    """The transformers config of `model_id`'s committed config.json, cut to `num_layers`, with overrides."""
    import json

    from transformers import AutoConfig

    source = config_source(model_id)
    if source is None:
        raise KeyError(f"no committed config.json for {model_id!r} (music/models/configs/)")
    raw = json.loads(Path(source).read_text(encoding="utf-8"))
    raw.update(overrides, num_hidden_layers=num_layers)
    model_type = raw.pop("model_type")
    for key in ("architectures", "transformers_version", "torch_dtype", "layer_types"):
        raw.pop(key, None)
    return AutoConfig.for_model(model_type, **raw)


def write_random_backbone(
    model_id: str,
    out_dir: str | Path,
    tokenizer,
    num_layers: int,
    *,
    seed: int = 0,
    dtype: str = "float32",
    **overrides,
) -> str:
    """Save a random causal LM of `model_id`'s shape and the tokenizer; the vocabulary is the tokenizer's unless
    `vocab_size` is overridden (larger: the tokenizer uses the first ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = random_backbone_config(model_id, num_layers, **{**ids, **overrides})  # overrides may keep the vocab size
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
