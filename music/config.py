"""Typed configuration: one dataclass per pipeline stage, read from params.yaml.

params.yaml has one top-level section per stage (seed, simulate, contrast, train, evaluate, plots)
plus `paths`. One source of truth: every default below equals the value in params.yaml (a test
checks it), so a profile (profiles/*.yaml) needs to state only what it changes. Unknown keys are
errors (a typo must not silently fall back to a default), and each dataclass checks its own values
in `validate` (called when it is built), naming the key that is wrong.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from music.errors import DataError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"  # the sentence encoder of music.models.encoder
CHAT_BACKENDS = ("transformers", "openai")
SEED_SOURCES = ("sharegpt", "skywork", "hh", "ultrafeedback", "rewardbench")
CONTRAST_METHODS = ("instruct", "resample", "auto")
DIVERGENCE_RULES = ("fixed", "random", "real")
RM_BACKENDS = ("auto", "unsloth", "transformers")
HEAD_INITS = ("zero", "normal")  # train.head_init: the new score head starts at zero or at transformers' random init
DTYPES = ("float32", "bfloat16", "float16")
MODEL_DTYPES = ("auto", *DTYPES)  # auto: float32 on CPU; on a GPU the backbone's 16-bit dtype, else bfloat16
SYSTEM_ROLES = ("auto", "fold", "keep")
BON_SOURCE_KINDS = ("mtbench", "hh", "ultrainteract", "file")
SWAP_SOURCE_KINDS = ("sharegpt", "file")  # evaluate.swap_source KIND:PATH (besides "seeds")


class _Checked:
    """Runs `validate` after construction; `_fail` raises a DataError naming the key."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden where a config has values to check
        pass

    def _fail(self, key: str, problem: str) -> None:
        raise DataError(type(self).__name__, "-", key, problem)

    def _require(self, ok: bool, key: str, problem: str) -> None:
        if not ok:
            self._fail(key, problem)


@dataclass
class Paths(_Checked):
    """Where stages read and write, relative to the repository root."""

    data: str = "data"  # raw inputs (tracked by data.dvc)
    seeds: str = "outputs/seeds"  # seed stage
    conversations: str = "outputs/conversations"  # simulate stage
    pairs: str = "outputs/pairs"  # contrast stage
    heldout: str = "outputs/heldout"  # heldout stage: the test items every experiment is judged on
    models: str = "outputs/models"  # train stage: one folder per variant
    metrics: str = "outputs/metrics"  # evaluate, best_of_n and plots stages
    evaluation: str = "outputs/evaluation"  # evaluate stage: per-item scores, reward trajectories, sources
    figures: str = "outputs/figures"  # plots stage
    plots: str = "outputs/plots"  # plots stage: the data behind the figures, as small CSVs (`dvc plots diff`)
    cache: str = ".cache/music"  # response cache and resume checkpoints (not tracked)
    reports: str = "reports"  # executed notebooks, stage logs, wall-clock timings (not tracked)


@dataclass
class ChatModelConfig(_Checked):
    """One chat role: an in-process transformers model, or any OpenAI-compatible server."""

    backend: str = "transformers"  # "transformers" (in-process) | "openai" (HTTP server)
    model: str = EMBEDDED_MODEL  # embedded id, Hugging Face id, local path, or the server's model name
    max_new_tokens: int = 64  # reply budget; a reply cut by it is trimmed to a sentence or filtered
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9  # nucleus sampling
    # > 1 discourages repeating tokens already in the conversation (in-process: HF's repetition_penalty, which
    # covers the prompt; servers: sent as `repetition_penalty`, which vLLM and SGLang accept); 1 = off
    repetition_penalty: float = 1.0
    batch_size: int = 8  # conversations generated together (in-process)
    dtype: str = "float32"  # in-process weights
    # In-process (transformers) only: automatic prefix caching. Each forward pass's key/value states are
    # kept by token ids (music.chat.kv_cache) and a later request encodes only what follows its longest
    # stored prefix: a roll-out's next turn, a rejected branch's shared history, samples of one prompt.
    # Replies equal the non-reusing path's up to float rounding (reused states come from other batch
    # shapes; tests/test_kv_reuse.py pins the tolerance); the response-cache keys do not depend on it.
    # The store is shared by every backend of the same model in a process; kv_cache_mb bounds it (the
    # largest value asked by those backends), least recently used blocks are evicted. SmolLM2-135M in
    # fp32 needs about 46 KB per token (30 layers x 2 x 3 kv heads x 64 x 4 bytes): 4096 MB ~ 90k tokens.
    # A roll-out touches every conversation once per turn and role, so size the budget to hold one
    # conversation per role for all of them (the default profile's seeds, ~500 tokens each: ~3 GB); below
    # that, LRU cycles and reuse falls (a warning is logged on the first eviction; outputs stay the same).
    # OpenAI-compatible servers do their own (vLLM: --enable-prefix-caching).
    reuse_kv: bool = True  # automatic prefix caching (above)
    kv_cache_mb: int = 4096  # the prefix store's budget, shared per model in a process
    # OpenAI-compatible endpoints only
    base_urls: list[str] = field(default_factory=lambda: ["http://localhost:8000/v1"])  # several = round-robin
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key (never the key itself)
    max_concurrency: int = 8  # requests in flight
    timeout_s: float = 60.0  # per request
    max_retries: int = 5  # on 429, 5xx, timeouts and dropped connections
    backoff_s: float = 1.0  # first retry delay; doubles each retry (Retry-After wins)
    revision: str | None = None  # the served model's revision or version: part of the response-cache key
    # The system message: "fold" puts its text at the start of the first user message (for chat templates
    # without a system role, e.g. Gemma-2's, which raises; vLLM then answers HTTP 400), "keep" sends it as
    # is, "auto" folds for in-process models whose template rejects it and keeps it for servers.
    system_role: str = "auto"

    def validate(self) -> None:
        self._require(self.system_role in SYSTEM_ROLES, "system_role",
                      f"must be one of {SYSTEM_ROLES}, got {self.system_role!r}")
        self._require(self.backend in CHAT_BACKENDS, "backend", f"must be one of {CHAT_BACKENDS}, got {self.backend!r}")
        self._require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        self._require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        self._require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        self._require(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        self._require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        self._require(self.kv_cache_mb > 0 or not self.reuse_kv, "kv_cache_mb", f"must be > 0 with reuse_kv, got {self.kv_cache_mb}")
        self._require(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        self._require(bool(self.base_urls), "base_urls", "needs at least one URL")
        self._require(self.max_concurrency >= 1, "max_concurrency", f"must be >= 1, got {self.max_concurrency}")
        self._require(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")


def _share(cfg: _Checked, key: str) -> None:
    value = getattr(cfg, key)
    cfg._require(isinstance(value, (int, float)) and 0 <= value <= 1, key, f"must be a share in [0, 1], got {value!r}")


def _chat(**kw) -> Any:
    return field(default_factory=lambda: ChatModelConfig(**kw))


@dataclass
class SeedConfig(_Checked):
    """Stage `seed`: random prefixes of real conversations, split train/eval by source conversation."""

    source: str = "sharegpt"  # loader: sharegpt | skywork | hh | ultrafeedback | rewardbench (music.sources)
    path: str = "data/sharegpt/conversations.jsonl"  # local file, or `hub:<dataset id>`
    split: str = "train"  # hub split
    n_train: int = 40  # training seeds
    n_eval: int = 72  # held-out seeds (held-out pairs)
    n_eval_conversations: int = 240  # whole held-out conversations (multi-turn tests; or their first >= 2 turns that fit)
    max_context_turns: int = 2  # a seed is a prefix of 1..this many whole user/assistant turns
    max_message_chars: int = 500  # longest message allowed in a seed context and its real next turn
    max_context_chars: int = 800  # longest seed context (whole eval conversations: twice this)
    require_next_turn: bool = True  # keep the real next turn (needed for the offline last-turn pairs D)
    seed: int = 0  # shuffles the conversations
    # malformed source records are skipped and counted (stats.json); more than this share of them fails the stage
    max_malformed_share: float = 0.01

    def validate(self) -> None:
        _share(self, "max_malformed_share")
        self._require(self.source in SEED_SOURCES, "source", f"must be one of {SEED_SOURCES}, got {self.source!r}")
        for key in ("n_train", "n_eval", "n_eval_conversations"):
            self._require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        self._require(self.max_context_turns >= 1, "max_context_turns", f"must be >= 1, got {self.max_context_turns}")


@dataclass
class SimulateConfig(_Checked):
    """Stage `simulate`: each seed continued for `turns` turns by a user model and an assistant model."""

    user: ChatModelConfig = _chat(max_new_tokens=32, repetition_penalty=1.1)  # the simulated user (roles swapped: notebook 02)
    assistant: ChatModelConfig = _chat(max_new_tokens=48, repetition_penalty=1.1)  # the assistant (the simulated policy)
    turns: int = 2  # simulated turns after the seed context (5 in the paper)
    # eval seeds simulated for the held-out MUSIC pairs (null: all); the others serve only the held-out
    # last-turn and quality pairs, which need no simulation
    max_eval_conversations: int | None = 72
    trim_truncated: bool = True  # a reply cut by max_new_tokens is trimmed to its last full sentence
    seed: int = 0  # per-call sampling seeds derive from it
    # the stage fails when more than this share of a split's conversations had a request fail (music.failures)
    max_failed_share: float = 0.1
    # true: the first simulated turn's user message is the seed's real next user message (a person's request;
    # no user generation for it; a seed without one gets a generated message, counted); false: generated
    real_next_user: bool = True

    def validate(self) -> None:
        _share(self, "max_failed_share")
        self._require(self.turns >= 1, "turns", f"must be >= 1, got {self.turns}")
        self._require(self.max_eval_conversations is None or self.max_eval_conversations >= 0, "max_eval_conversations",
                      f"must be >= 0 or null, got {self.max_eval_conversations}")


@dataclass
class ContrastConfig(_Checked):
    """Stage `contrast`: MUSIC pairs (a rejected branch that goes wrong at one turn) and last-turn pairs D."""

    contrast: ChatModelConfig = _chat(max_new_tokens=96)  # writes the rejected reply (method instruct/auto)
    # How the rejected reply is made: "instruct" = one call with the contrastive prompt (MODIFIED
    # REQUEST / ANSWER format); "resample" = the user model writes another request from the same
    # history, the assistant answers it normally (works with tiny models); "auto" = instruct, and
    # resample where the reply cannot be parsed.
    method: str = "resample"
    # "fixed" (divergence_turn) | "random" (drawn per conversation) | "real" (the first simulated turn, whose user
    # message is the seed's real next user message with simulate.real_next_user: a person's request is misread)
    divergence: str = "real"
    divergence_turn: int = 1  # 1-based simulated turn, used when divergence == "fixed"
    # "random" draws among turns leaving at least this many after it: 1 = never the last turn, so every
    # MUSIC pair differs in two or more assistant turns (a pair diverging at the last turn is a last-turn pair)
    min_turns_after_divergence: int = 1
    candidates: int = 2  # "resample": the user model writes the divergence request again this many times
    answered_candidates: int = 2  # at most this many, the most unlike the original (on topic), are answered; the clearest contrast is kept
    encoder: str = EMBEDDED_ENCODER  # sentence encoder for the relevance checks (music.pairs.relevance)
    # "resample": [lo, hi] window of cosine similarity (encoder) between a rewritten request and the original; only
    # rewrites inside it are answered (the rest are counted as `outside_band`, not failures); null: no window
    request_similarity: list[float] | None = None
    # Filters on relevance (null: off). A pair is kept when the rejected reply is closer to the modified
    # request than to the original, and the chosen reply closer to the original, both by at least this:
    min_contrast_margin: float | None = 0.05
    max_echo_similarity: float | None = 0.9  # a simulated message this similar to the one it answers is an echo
    quality_mtbench: bool = True  # held-out quality twins from MT-Bench's referenced questions (music.pairs.quality_twins)
    quality_max_chars: int = 2000  # longest quality twin kept (the RM must see the whole conversation)
    d_pairs: bool = True  # build last-turn pairs D
    d_source: str = "seeds"  # "seeds" (real vs model reply) | "KIND:LOCATION" for music.sources.load_pairs
    d_limit: int | None = None  # pairs read from a labelled D source (per split); null = all
    d_eval_split: str = "test"  # split of a labelled D source used for d_eval ("train": the seed stage's split)
    max_reply_chars: int = 1200  # over-length filter
    drop_truncated: bool = False  # also drop pairs with replies cut by max_new_tokens even when trimmed
    seed: int = 0  # divergence draws and sampling seeds derive from it
    # the stage fails when more than this share of a split's candidates failed (a contrast request failed, or an
    # `instruct` reply did not parse; the quality filters' drops are not failures), or no MUSIC train pair is kept
    max_failed_share: float = 0.1
    min_music_train_pairs: int = 1  # fewer MUSIC training pairs kept fails the stage (train@music needs them)
    # malformed records of a labelled D source are skipped and counted (filter_report.json); more fails the stage
    max_malformed_share: float = 0.01

    def validate(self) -> None:
        _share(self, "max_failed_share")
        _share(self, "max_malformed_share")
        self._require(self.min_music_train_pairs >= 0, "min_music_train_pairs", f"must be >= 0, got {self.min_music_train_pairs}")
        self._require(self.method in CONTRAST_METHODS, "method", f"must be one of {CONTRAST_METHODS}, got {self.method!r}")
        self._require(self.divergence in DIVERGENCE_RULES, "divergence",
                      f"must be one of {DIVERGENCE_RULES}, got {self.divergence!r}")
        self._require(self.divergence_turn >= 1, "divergence_turn", f"must be >= 1, got {self.divergence_turn}")
        self._require(self.min_turns_after_divergence >= 0, "min_turns_after_divergence",
                      f"must be >= 0, got {self.min_turns_after_divergence}")
        self._require(self.candidates >= 1, "candidates", f"must be >= 1, got {self.candidates}")
        self._require(self.answered_candidates >= 1, "answered_candidates", f"must be >= 1, got {self.answered_candidates}")
        band = self.request_similarity
        self._require(band is None or (isinstance(band, (list, tuple)) and len(band) == 2
                                       and all(isinstance(x, (int, float)) for x in band) and -1 <= band[0] < band[1] <= 1),
                      "request_similarity", f"must be null or [lo, hi] with -1 <= lo < hi <= 1, got {band!r}")
        self._require(self.d_source == "seeds" or ":" in self.d_source, "d_source",
                      f"must be 'seeds' or 'KIND:LOCATION', got {self.d_source!r}")


@dataclass
class TrainConfig(_Checked):
    """Stage `train`: a Bradley-Terry reward model per variant (a scalar head on the last real token)."""

    backbone: str = EMBEDDED_MODEL  # embedded id, Hugging Face id or local path
    backend: str = "auto"  # auto: Unsloth on a CUDA GPU when installed, else transformers + PEFT | unsloth | transformers
    num_layers: int | None = 12  # keep the first N decoder layers (null: all), to fit a CPU budget
    # name -> kinds of training pairs (outputs/pairs/{kind}_train): baseline = D only, music = D + MUSIC,
    # control = D + the same MUSIC pairs cut after the divergence turn (music_cut: derived, music.rm.data)
    variants: dict[str, list[str]] = field(default_factory=lambda: {"baseline": ["d"], "music": ["d", "music"],
                                                                    "control": ["d", "music_cut"]})
    music_ratio: float = 1.0  # MUSIC pairs per original pair in the mix (capped by what exists)
    lora: bool = True  # false: full fine-tuning
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling (alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_last_layers: int | None = 1  # LoRA on the top N kept layers only (null: all); no backward pass below
    # The new score head's initial weights: "zero" (the score starts at 0 for every conversation; the first
    # steps fit the head to the pairs) or "normal" (transformers' N(0, initializer_range), TRL's default). With a
    # few dozen steps the random head stays a random feature of the reward: in the default run (4 seeds, same
    # items) baseline early-turn accuracy by seed was 62.5-71.9% with "normal" and 73.0-74.5% with "zero".
    head_init: str = "zero"
    max_length: int = 512  # tokens; longer conversations lose their oldest turns first (counted)
    batch_size: int = 4  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: float = 2.0  # passes over the mixed pairs (fractions allowed)
    max_steps: int | None = None  # overrides epochs when set
    learning_rate: float = 5e-4  # AdamW peak learning rate (the paper: 2e-6 for a 9B full model)
    warmup_ratio: float = 0.1  # linear warmup over this share of the steps, then linear decay to 0
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    margin: float = 0.0  # Bradley-Terry margin
    center_coef: float = 0.0  # reward centering: + center_coef * mean((r_c + r_r)^2)
    length_grouping: bool = True  # batch pairs of similar length (less padding)
    save_every: int = 10  # resume checkpoint every N optimizer steps (outside DVC outputs)
    # One model per seed and variant (outputs/models/{variant}/seed{s}); a seed fixes LoRA's (and a normal head's)
    # initialisation, the data order and the MUSIC subset. Results are reported as mean and spread over seeds.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    dtype: str = "auto"  # weights: auto = float32 on CPU, the backbone's 16-bit dtype (else bfloat16) on a GPU
    gradient_checkpointing: bool | None = None  # null: on for backbones of >= 1B parameters (music.models.shapes)
    # Compute the frozen bottom layers' output (LoRA on the top lora_last_layers only) once per conversation and
    # reuse it across epochs, seeds, variants and scoring (music.rm.frozen); not on the Unsloth backend; same rewards
    reuse_frozen_layers: bool = True

    def validate(self) -> None:
        self._require(self.dtype in MODEL_DTYPES, "dtype", f"must be one of {MODEL_DTYPES}, got {self.dtype!r}")
        self._require(self.backend in RM_BACKENDS, "backend", f"must be one of {RM_BACKENDS}, got {self.backend!r}")
        self._require(self.head_init in HEAD_INITS, "head_init", f"must be one of {HEAD_INITS}, got {self.head_init!r}")
        self._require(self.num_layers is None or self.num_layers >= 1, "num_layers",
                      f"must be >= 1 or null, got {self.num_layers}")
        self._require(bool(self.variants) and all(self.variants.values()), "variants",
                      "needs at least one variant, each with at least one kind of pairs")
        self._require(self.music_ratio >= 0, "music_ratio", f"must be >= 0, got {self.music_ratio}")
        for key in ("batch_size", "grad_accum", "max_length"):
            self._require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        self._require(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        self._require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        self._require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        self._require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self._require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds",
                      f"must be a non-empty list of distinct seeds, got {self.seeds}")


@dataclass
class EvalConfig(_Checked):
    """Stages `evaluate` (one RM at a time) and `best_of_n` (both RMs against each other)."""

    rewardbench: bool = False  # true needs the Hugging Face hub (allenai/reward-bench, split filtered)
    rewardbench_path: str | None = None  # or a local file of the same schema (prompt, chosen, rejected, subset)
    # Real labelled last-turn sets (name -> path; names start with hh or ultrafeedback): small subsets
    # committed in evalsets/ (source and license there); an absent path is skipped with the reason recorded.
    local_sets: dict[str, str] = field(default_factory=lambda: {
        "hh": "evalsets/hh-rlhf-harmless-base-test-first60.jsonl",
        "ultrafeedback": "evalsets/ultrafeedback-binarized-eval-first60.jsonl",
    })
    local_set_limit: int = 60  # first N records of each local set
    swap_conversations: int = 240  # whole held-out conversations for the swapped-history test (music.evaluate.swap)
    swap_max_distance: int = 3  # swap one assistant reply 1..this many turns from the end
    # Also swap in a reply from another turn of the SAME conversation (test `swap_same`: the topic held fixed).
    # Off by default: every RM of the default run preferred the copy of its own reply (~21% right, a repetition
    # effect, not history reading) and it cost 11% of the scoring; in no endpoint (README, Results).
    swap_same_conversation: bool = False
    # Where the swap test's whole held-out conversations come from (music.evaluate.swap): "seeds" (the seed
    # stage's eval_conversations.jsonl), "sharegpt:PATH" (a ShareGPT-format file; conversations with >= 2
    # assistant turns) or "file:PATH" (jsonl of {conversation_id, messages}). Single-turn seeds (Skywork)
    # give the early-turn group no swap items: point this at a multi-turn source.
    swap_source: str = "seeds"
    max_length: int | None = None  # RM scoring length (null: the RM's trained max_length)
    batch_size: int = 8  # conversations scored together
    bon_ns: list[int] = field(default_factory=lambda: [2, 4])  # Best-of-N sizes
    bon_prompts: int = 6  # Best-of-N prompts
    # Where Best-of-N prompts come from (music.sources.prompts): "mtbench" (two scripted user turns each;
    # "mtbench:PATH" for another question.jsonl), "hh:LOCATION", "ultrainteract:LOCATION" or "file:PATH".
    bon_source: str = "mtbench"
    bon_turns: int | None = None  # assistant turns per game (null: the source's own turns); simulate.user writes the rest
    policy: ChatModelConfig = _chat(max_new_tokens=48)  # samples Best-of-N candidates
    judge: ChatModelConfig = _chat(max_new_tokens=8, temperature=0.0)  # compares the two RMs' conversations
    # In-process judges pick the likeliest of [[A]]/[[B]]/[[C]] (a 135M model rarely writes a parseable
    # verdict); servers always generate and are parsed. false: generate and parse everywhere.
    judge_constrained: bool = True
    seed: int = 0  # corruption draws and Best-of-N sampling
    dtype: str = "auto"  # RM weights when scoring: auto = float32 on CPU, the model's 16-bit dtype (else bfloat16) on a GPU
    max_failed_share: float = 0.1  # best_of_n fails when more than this share of its games failed (music.failures)

    def validate(self) -> None:
        _share(self, "max_failed_share")
        self._require(self.dtype in MODEL_DTYPES, "dtype", f"must be one of {MODEL_DTYPES}, got {self.dtype!r}")
        self._require(self.bon_source.partition(":")[0] in BON_SOURCE_KINDS, "bon_source",
                      f"must start with one of {BON_SOURCE_KINDS} (KIND[:LOCATION]), got {self.bon_source!r}")
        self._require(self.swap_source == "seeds" or (self.swap_source.partition(":")[0] in SWAP_SOURCE_KINDS
                                                       and bool(self.swap_source.partition(":")[2])), "swap_source",
                      f"must be 'seeds', 'sharegpt:PATH' or 'file:PATH', got {self.swap_source!r}")
        self._require(self.bon_turns is None or self.bon_turns >= 1, "bon_turns", f"must be >= 1 or null, got {self.bon_turns}")
        self._require(bool(self.bon_ns) and all(n >= 1 for n in self.bon_ns), "bon_ns", f"must be sizes >= 1, got {self.bon_ns}")
        for key in ("local_set_limit", "swap_conversations", "swap_max_distance", "batch_size", "bon_prompts"):
            self._require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class PlotConfig(_Checked):
    """Stage `plots`: figures and the results table."""

    formats: list[str] = field(default_factory=lambda: ["png", "svg"])  # one file per format per figure
    dpi: int = 150  # raster resolution


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
    """Build dataclass `cls` from a dict, recursively; unknown keys and bad values raise DataError."""
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
    try:
        return cls(**kwargs)
    except DataError as exc:  # say which file and section the bad value came from
        raise DataError(where, "-", exc.field, exc.problem) from None


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (2e-06): PyYAML reads them as strings,
    and DVC writes floats that way when `dvc exp run -S` (or music.pipeline.profile) sets a parameter."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_params_file(path: str | Path) -> dict:
    """The raw params mapping of a YAML file (see ParamsLoader)."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=ParamsLoader) or {}  # noqa: S506 (a SafeLoader subclass)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "params file does not exist")
    return from_dict(Params, read_params_file(path), str(path))


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
