"""Typed configuration: one dataclass per pipeline stage, read from params.yaml.

params.yaml has one top-level section per stage (seed, simulate, contrast, train, evaluate, plots)
plus `paths`. One source of truth: every default below equals the value in params.yaml (a test
checks it), so a profile (profiles/*.yaml) needs to state only what it changes. Unknown keys are
errors (a typo must not silently fall back to a default), and each dataclass checks its own values
in `validate` (called when it is built), naming the key that is wrong.

Each field's help is in its metadata, one copy only (`field(default=..., metadata={"help": ...})`, as TRL
does): `field_help(cls, name)` reads it, the notebooks' parameter tables show it, and `python -m music.config
[SECTION]` lists every key with its type, default and help. Help says what a key does; the measurements behind
the chosen defaults are in docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from music.errors import DataError
from music.sources.records import MAX_MALFORMED_SHARE

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"  # the sentence encoder of music.models.encoder
CHAT_BACKENDS = ("transformers", "openai")
SEED_SOURCES = ("sharegpt", "skywork", "hh", "ultrafeedback", "rewardbench")
CONTRAST_METHODS = ("instruct", "resample", "auto", "retrieve")
DIVERGENCE_RULES = ("fixed", "random", "real")
RM_BACKENDS = ("auto", "unsloth", "transformers")
HEAD_INITS = ("zero", "normal")  # train.head_init: the new score head starts at zero or at transformers' random init
DTYPES = ("float32", "bfloat16", "float16")
MODEL_DTYPES = ("auto", *DTYPES)  # auto: float32 on CPU; on a GPU the backbone's 16-bit dtype, else bfloat16
SYSTEM_ROLES = ("auto", "fold", "keep")
BON_SOURCE_KINDS = ("mtbench", "hh", "ultrainteract", "file")
SWAP_SOURCE_KINDS = ("sharegpt", "file")  # heldout.swap_source KIND:PATH (besides "seeds")


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

    def _at_least(self, low: float, *keys: str, or_none: bool = False) -> None:
        """Each of `keys` a number >= `low` (or null when `or_none`)."""
        for key in keys:
            value = getattr(self, key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            self._require(
                (or_none and value is None) or (number and value >= low),
                key,
                f"must be >= {low}{' or null' if or_none else ''}, got {value!r}",
            )

    def _text(self, *keys: str) -> None:
        """Each of `keys` a non-empty string."""
        for key in keys:
            value = getattr(self, key)
            self._require(
                isinstance(value, str) and bool(value.strip()), key, f"must be a non-empty string, got {value!r}"
            )


# Top-level folders no output path may be or lie inside: git's, the environment's, DVC's and the package's own.
PROTECTED_DIRS = (".git", ".venv", ".dvc", "music", "notebooks", "tests", "benchmarks", "docs", "evalsets", "profiles")


def _base_dirs() -> list[Path]:
    """The working directory (relative paths are read from it) and the repository around it (the nearest folder
    up from it with a dvc.yaml or pyproject.toml), when that is another."""
    here = Path(os.path.normpath(os.path.abspath(os.getcwd())))
    marked = [d for d in (here, *here.parents) if (d / "dvc.yaml").exists() or (d / "pyproject.toml").exists()]
    return [here] if not marked or marked[0] == here else [here, marked[0]]


def _overlap(a: Path, b: Path) -> bool:
    """True when `a` and `b` are the same folder or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


@dataclass
class Paths(_Checked):
    """Where stages read and write, relative to the repository root: raw inputs, one folder per stage's outputs,
    and the untracked cache and reports."""

    data: str = field(default="data", metadata={"help": "Raw inputs (tracked by data.dvc)."})
    seeds: str = field(default="outputs/seeds", metadata={"help": "Outputs of the seed stage."})
    conversations: str = field(default="outputs/conversations", metadata={"help": "Outputs of the simulate stage."})
    pairs: str = field(default="outputs/pairs", metadata={"help": "Outputs of the contrast stage."})
    heldout: str = field(
        default="outputs/heldout",
        metadata={"help": "Outputs of the heldout stage: the test items every experiment is judged on."},
    )
    models: str = field(
        default="outputs/models", metadata={"help": "Outputs of the train stage: one folder per variant."}
    )
    metrics: str = field(
        default="outputs/metrics", metadata={"help": "Metrics of the evaluate, best_of_n and plots stages."}
    )
    evaluation: str = field(
        default="outputs/evaluation",
        metadata={"help": "Outputs of the evaluate stage: per-item scores, reward trajectories and their sources."},
    )
    figures: str = field(default="outputs/figures", metadata={"help": "Figures of the plots stage."})
    plots: str = field(
        default="outputs/plots",
        metadata={"help": "The data behind the figures, as small CSVs (what `dvc plots diff` reads)."},
    )
    cache: str = field(
        default=".cache/music", metadata={"help": "Response cache and resume checkpoints (not tracked)."}
    )
    reports: str = field(
        default="reports", metadata={"help": "Executed notebooks, stage logs and wall-clock timings (not tracked)."}
    )

    def validate(self) -> None:
        """Stages replace their output folders whole (music.files.atomic_path), so an output path must not name
        anything else: not the repository (or working directory) or a folder above it, not .git, .venv or the
        package's own folders (PROTECTED_DIRS), not the raw inputs (`data`: neither equal, inside nor around
        them), and no output inside another. A relative path may not climb out of the repository (`..`); an
        absolute one (a scratch folder) may lie elsewhere, but not be `/`, the home folder or above it."""
        bases = _base_dirs()
        where: dict[str, Path] = {}
        for f in dataclasses.fields(self):
            key, value = f.name, getattr(self, f.name)
            self._require(
                isinstance(value, str) and bool(value.strip()), key, f"must be a non-empty path, got {value!r}"
            )
            where[key] = Path(os.path.normpath(os.path.join(bases[0], value)))
            if key == "data":  # an input: read, never replaced
                continue
            self._require(
                Path(value).is_absolute() or not os.path.normpath(value).startswith(".."),
                key,
                f"must stay inside the repository, got {value!r} (it climbs out with '..')",
            )
            home = Path(os.path.normpath(Path.home()))
            for base in (*bases, home):
                self._require(
                    where[key] != base and where[key] not in base.parents,
                    key,
                    f"must not be {base} or a folder above it (the stage would replace it whole), got {value!r}",
                )
            # a relative path as written (stages run from the repository root), an absolute one where it lies
            if Path(value).is_absolute():
                tops = [where[key].relative_to(b).parts[0] for b in bases if b in where[key].parents]
            else:
                tops = [Path(os.path.normpath(value)).parts[0]]
            for top in tops:
                self._require(
                    top not in PROTECTED_DIRS, key, f"must not be or lie inside {top}/ (protected), got {value!r}"
                )
        data, outputs = where.pop("data"), list(where.items())
        for i, (key, place) in enumerate(outputs):
            self._require(
                not _overlap(place, data),
                key,
                f"must not equal, hold or lie inside paths.data ({self.data!r}), the raw inputs; "
                f"got {getattr(self, key)!r}",
            )
            for other, elsewhere in outputs[i + 1 :]:
                if not _overlap(place, elsewhere):
                    continue
                inner, outer = (key, other) if elsewhere in place.parents or place == elsewhere else (other, key)
                changed = {k: getattr(self, k) != Paths.__dataclass_fields__[k].default for k in (inner, outer)}
                named, beside = (outer, inner) if changed[outer] and not changed[inner] else (inner, outer)
                self._fail(
                    named,
                    f"must not equal, hold or lie inside paths.{beside} ({getattr(self, beside)!r}): each stage "
                    f"replaces its own folder whole; got {getattr(self, named)!r}",
                )


@dataclass
class ChatModelConfig(_Checked):
    """One chat role: an in-process transformers model, or any OpenAI-compatible server.

    The generation keys apply to either; batch_size, dtype, reuse_kv and kv_cache_mb to an in-process model
    only; base_urls to revision to a server only.
    """

    backend: str = field(
        default="transformers",
        metadata={"help": '"transformers" (an in-process model) or "openai" (any OpenAI-compatible HTTP server).'},
    )
    model: str = field(
        default=EMBEDDED_MODEL,
        metadata={"help": "An embedded id, Hugging Face id or local path; for a server, the model name it serves."},
    )
    max_new_tokens: int = field(
        default=64,
        metadata={
            "help": "Reply budget in tokens; a reply cut by it is trimmed to its last full sentence or filtered out."
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(
        default=0.9,
        metadata={"help": "Nucleus sampling: the smallest set of tokens of this total probability, in (0, 1]."},
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Above 1 discourages tokens already in the conversation; 1 = off. In-process it is HF's "
            "repetition_penalty (which covers the prompt); servers get it as `repetition_penalty` (vLLM, SGLang)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Conversations generated together (in-process)."})
    dtype: str = field(
        default="float32", metadata={"help": "Weights of an in-process model: float32 | bfloat16 | float16."}
    )
    reuse_kv: bool = field(
        default=True,
        metadata={
            "help": "In-process automatic prefix caching (music.chat.kv_cache): a request encodes only what follows "
            "its longest stored prefix; replies equal the non-reusing path's up to float rounding. Servers do their "
            "own (vLLM: --enable-prefix-caching)."
        },
    )
    kv_cache_mb: int = field(
        default=4096,
        metadata={
            "help": "Budget of the prefix store in MB, shared by every backend of the same model in a process (the "
            "largest asked wins); least recently used blocks are evicted. Size it to hold one conversation per role "
            "for all conversations of a roll-out, or reuse falls (a warning is logged; outputs stay the same)."
        },
    )
    base_urls: list[str] = field(
        default_factory=lambda: ["http://localhost:8000/v1"],
        metadata={"help": "Server endpoints (OpenAI-compatible); several are used round-robin."},
    )
    api_key_env: str | None = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable that holds the server's API key (never the key itself; a "
            "value that looks like a key is an error that does not repeat it). Unset with the default name and a "
            "server on this machine: no key is sent. '' or null: never send a key."
        },
    )
    allow_key_over_http: bool = field(
        default=False,
        metadata={
            "help": "Send the API key over plain http:// to a host other than this machine (localhost, 127.x.x.x, "
            "::1); false: such a base URL with a key set is an error before any request (use https://, or "
            "api_key_env: '' for a server without a key)."
        },
    )
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight to the server."})
    timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one server request, in seconds."})
    max_retries: int = field(
        default=5,
        metadata={
            "help": "Retries of a server request on 429, 5xx, timeouts and dropped connections (a 429 that says "
            "insufficient_quota stops the stage at once)."
        },
    )
    backoff_s: float = field(
        default=1.0,
        metadata={"help": "First retry delay in seconds; it doubles each retry (a Retry-After header wins)."},
    )
    breaker_failures: int = field(
        default=20,
        metadata={
            "help": "Consecutive connection errors or timeouts, across all requests of this role, that stop the "
            "stage with an error naming the server (a dead, unreachable or hung server); 0 = off."
        },
    )
    breaker_window: int = field(
        default=100,
        metadata={
            "help": "The last this-many request attempts of this role (429s aside) are watched: when more than "
            "breaker_failed_share of them failed (5xx, timeouts, dropped connections), the stage stops; 0 = off."
        },
    )
    breaker_failed_share: float = field(
        default=0.8,
        metadata={"help": "The share of failed attempts, in (0, 1], over breaker_window that stops the stage."},
    )
    stage_time_limit_s: float | None = field(
        default=None,
        metadata={
            "help": "Longest wall time in seconds from this role's first request in a stage until the stage stops "
            "with an error (finished replies stay in the response cache); null = no limit."
        },
    )
    revision: str | None = field(
        default=None,
        metadata={
            "help": "The served model's revision or version, part of the response-cache key (with what the "
            "server's /models lists for the model); null: none."
        },
    )
    system_role: str = field(
        default="auto",
        metadata={
            "help": 'The system message: "fold" puts its text at the start of the first user message (templates '
            'without a system role, e.g. Gemma-2\'s: transformers raises, vLLM answers HTTP 400), "keep" sends it '
            'as is, "auto" folds for in-process models whose template rejects it and keeps it for servers.'
        },
    )

    def validate(self) -> None:
        self._require(
            self.system_role in SYSTEM_ROLES, "system_role", f"must be one of {SYSTEM_ROLES}, got {self.system_role!r}"
        )
        self._require(self.backend in CHAT_BACKENDS, "backend", f"must be one of {CHAT_BACKENDS}, got {self.backend!r}")
        self._require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        self._require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        self._require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        self._require(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        self._require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        self._require(
            self.kv_cache_mb > 0 or not self.reuse_kv,
            "kv_cache_mb",
            f"must be > 0 with reuse_kv, got {self.kv_cache_mb}",
        )
        self._require(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        self._require(bool(self.base_urls), "base_urls", "needs at least one URL")
        self._require(self.max_concurrency >= 1, "max_concurrency", f"must be >= 1, got {self.max_concurrency}")
        self._require(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")
        self._require(self.backoff_s >= 0, "backoff_s", f"must be >= 0, got {self.backoff_s}")
        self._require(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        self._require(
            all(isinstance(u, str) and u.strip() for u in self.base_urls), "base_urls", "entries must be non-empty URLs"
        )
        self._check_api_key_env()
        self._require(
            isinstance(self.allow_key_over_http, bool),
            "allow_key_over_http",
            f"must be true or false, got {self.allow_key_over_http!r}",
        )
        self._require(self.breaker_failures >= 0, "breaker_failures", f"must be >= 0, got {self.breaker_failures}")
        self._require(self.breaker_window >= 0, "breaker_window", f"must be >= 0, got {self.breaker_window}")
        self._require(
            0 < self.breaker_failed_share <= 1,
            "breaker_failed_share",
            f"must be in (0, 1], got {self.breaker_failed_share}",
        )
        self._require(
            self.stage_time_limit_s is None or self.stage_time_limit_s > 0,
            "stage_time_limit_s",
            f"must be > 0 or null, got {self.stage_time_limit_s}",
        )

    @staticmethod
    def api_key_env_problem(name: str) -> str | None:
        """What is wrong with `name` as api_key_env (None: a plausible variable name), without repeating it."""
        shown = f"the value given ({len(name)} characters) is not repeated here"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return (
                "must be the NAME of an environment variable (letters, digits and underscores, not starting with a "
                f"digit) that holds the key, never the key itself; {shown}. Put the key in a variable (export "
                "OPENAI_API_KEY=...) and give its name, or '' for a server without a key"
            )
        if (
            name.startswith(("sk_", "hf_", "ghp_", "gho_", "github_pat_", "gsk_", "AIza", "xai_", "pk_", "rk_"))
            or max(len(part) for part in name.split("_")) >= 20
        ):
            return (
                f"looks like an API key, not the name of an environment variable; {shown}. Put the key in a "
                "variable (export OPENAI_API_KEY=...) and give its name, or '' for a server without a key"
            )
        return None

    def _check_api_key_env(self) -> None:
        """api_key_env is a variable name; the problem never repeats the value (it may be a pasted key)."""
        name = self.api_key_env
        if name is None or name == "":
            return
        if not isinstance(name, str):
            self._fail("api_key_env", f"must be an environment-variable name or '', got a {type(name).__name__}")
        problem = self.api_key_env_problem(name)
        if problem:
            self._fail("api_key_env", problem)


def _share(cfg: _Checked, key: str) -> None:
    value = getattr(cfg, key)
    cfg._require(isinstance(value, (int, float)) and 0 <= value <= 1, key, f"must be a share in [0, 1], got {value!r}")


def _chat(text: str, **kw: Any) -> Any:
    """A ChatModelConfig role field: its defaults (`kw`, what differs from ChatModelConfig's) and its help."""
    return field(default_factory=lambda: ChatModelConfig(**kw), metadata={"help": text})


@dataclass
class SeedConfig(_Checked):
    """Stage `seed`: random prefixes of real conversations, split train/eval by source conversation.

    Where the conversations come from (source, path, split), how many seeds (n_*), and how long they may be.
    """

    source: str = field(
        default="sharegpt",
        metadata={"help": "Loader of the source conversations: sharegpt | skywork | hh | ultrafeedback | rewardbench."},
    )
    path: str = field(
        default="data/sharegpt/conversations.jsonl",
        metadata={"help": "A local file, or `hub:<dataset id>` for a Hugging Face hub dataset."},
    )
    split: str = field(default="train", metadata={"help": "Split read from a hub dataset."})
    n_train: int = field(default=40, metadata={"help": "Training seeds drawn."})
    n_eval: int = field(
        default=72,
        metadata={
            "help": "Held-out seeds drawn, the source of the held-out pairs; only some give a kept held-out MUSIC "
            "pair, so draw more than the pairs you need."
        },
    )
    n_eval_conversations: int = field(
        default=240,
        metadata={
            "help": "Whole held-out conversations (or their first >= 2 turns that fit) for the multi-turn swap "
            "tests; more of them give the early-turn headline more power."
        },
    )
    n_dev_conversations: int = field(
        default=60,
        metadata={
            "help": "Whole conversations of the training side (no training seed's, no held-out one's) kept as a "
            "development split: the choices params.yaml records are made on it, never on the held-out items "
            "(music.studies.choices)."
        },
    )
    max_context_turns: int = field(
        default=2, metadata={"help": "A seed is a prefix of 1 to this many whole user/assistant turns."}
    )
    max_message_chars: int = field(
        default=500,
        metadata={"help": "Longest message, in characters, allowed in a seed context and its real next turn."},
    )
    max_context_chars: int = field(
        default=800,
        metadata={"help": "Longest seed context in characters (whole eval conversations: twice this)."},
    )
    require_next_turn: bool = field(
        default=True,
        metadata={"help": "Keep only seeds with a real next turn (the offline last-turn pairs D need it)."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed of the shuffle that draws the seeds."})
    max_malformed_share: float = field(
        default=MAX_MALFORMED_SHARE,
        metadata={
            "help": "Malformed source records are skipped and counted (stats.json); the stage fails when more than "
            "this share of them is malformed."
        },
    )

    def validate(self) -> None:
        _share(self, "max_malformed_share")
        self._require(self.source in SEED_SOURCES, "source", f"must be one of {SEED_SOURCES}, got {self.source!r}")
        for key in ("n_train", "n_eval", "n_eval_conversations", "n_dev_conversations"):
            self._require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        self._require(self.max_context_turns >= 1, "max_context_turns", f"must be >= 1, got {self.max_context_turns}")
        self._at_least(1, "max_message_chars", "max_context_chars")
        self._at_least(0, "seed")
        self._text("path", "split")


@dataclass
class HeldoutConfig(_Checked):
    """Stage `heldout`: the held-out test items every experiment is judged on, built from the seeds alone.

    Held-out last-turn pairs D (made like the training D: contrast.d_* and simulate.assistant), quality twins
    (quality_*) and swapped-history items (swap_*). Nothing of the contrast method reaches them.
    """

    d_eval_split: str = field(
        default="test",
        metadata={
            "help": 'Split of a labelled D source (contrast.d_source) that gives the held-out D pairs; "train": the '
            "rows of that split whose conversations the seed stage held out."
        },
    )
    quality_mtbench: bool = field(
        default=True,
        metadata={
            "help": "Held-out quality twins from MT-Bench's referenced questions: GPT-4's reference answer vs "
            "simulate.assistant's (music.pairs.quality_twins)."
        },
    )
    quality_max_chars: int = field(
        default=2000,
        metadata={"help": "Longest quality twin kept, in characters (the RM must see the whole conversation)."},
    )
    swap_conversations: int = field(
        default=240,
        metadata={"help": "Whole held-out conversations for the swapped-history test (music.evaluate.swap)."},
    )
    swap_max_distance: int = field(
        default=3, metadata={"help": "Swap one assistant reply 1 to this many turns from the end."}
    )
    swap_same_conversation: bool = field(
        default=False,
        metadata={
            "help": "Also swap in a reply from another turn of the same conversation (test swap_same: the topic held "
            "fixed). A secondary test, in no endpoint (docs/decisions.md)."
        },
    )
    swap_source: str = field(
        default="seeds",
        metadata={
            "help": 'Where the swap test\'s whole conversations come from: "seeds" (eval_conversations.jsonl), '
            '"sharegpt:PATH" (conversations with >= 2 assistant turns) or "file:PATH" (jsonl of {conversation_id, '
            "messages}). Single-turn seeds (Skywork) give no early-turn swap items: use a multi-turn source."
        },
    )
    seed: int = field(
        default=0,
        metadata={"help": "The held-out D replies', the MT-Bench twins' and the swap draws' seeds derive from it."},
    )

    def validate(self) -> None:
        self._require(
            self.swap_source == "seeds"
            or (self.swap_source.partition(":")[0] in SWAP_SOURCE_KINDS and bool(self.swap_source.partition(":")[2])),
            "swap_source",
            f"must be 'seeds', 'sharegpt:PATH' or 'file:PATH', got {self.swap_source!r}",
        )
        for key in ("swap_conversations", "swap_max_distance", "quality_max_chars"):
            self._require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        self._at_least(0, "seed")
        self._text("d_eval_split")


@dataclass
class SimulateConfig(_Checked):
    """Stage `simulate`: each seed continued for `turns` turns by a user model and an assistant model."""

    user: ChatModelConfig = _chat(
        "The simulated user (a strict role-play prompt, roles swapped: notebook 02).",
        max_new_tokens=32,
        repetition_penalty=1.1,
    )
    assistant: ChatModelConfig = _chat(
        "The assistant (the simulated policy).", max_new_tokens=48, repetition_penalty=1.1
    )
    turns: int = field(
        default=2,
        metadata={
            "help": "Simulated turns after the seed context (the paper: 5); each costs a user and an assistant "
            "generation per conversation."
        },
    )
    max_eval_conversations: int | None = field(
        default=48,
        metadata={
            "help": "Eval seeds simulated for the held-out MUSIC pairs (null: all); the others serve only the "
            "held-out last-turn and quality pairs, which need no simulation."
        },
    )
    trim_truncated: bool = field(
        default=True, metadata={"help": "Trim a reply cut by max_new_tokens to its last full sentence."}
    )
    seed: int = field(default=0, metadata={"help": "Per-call sampling seeds derive from it."})
    max_failed_share: float = field(
        default=0.1,
        metadata={
            "help": "The stage fails when more than this share of a split's conversations had a request fail "
            "(music.failures)."
        },
    )
    real_next_user: bool = field(
        default=True,
        metadata={
            "help": "true: the first simulated user message is the seed's real next user message (a person's "
            "request; a seed without one gets a generated message, counted); false: every user message is generated."
        },
    )

    def validate(self) -> None:
        _share(self, "max_failed_share")
        self._require(self.turns >= 1, "turns", f"must be >= 1, got {self.turns}")
        self._require(
            self.max_eval_conversations is None or self.max_eval_conversations >= 0,
            "max_eval_conversations",
            f"must be >= 0 or null, got {self.max_eval_conversations}",
        )
        self._at_least(0, "seed")


@dataclass
class ContrastConfig(_Checked):
    """Stage `contrast`: MUSIC pairs (a rejected branch that goes wrong at one turn) and last-turn pairs D.

    How the rejected branch is made (contrast, method, divergence*, candidates), the relevance filters on it
    (encoder, request_similarity, min_contrast_margin, max_echo_similarity), the pairs D (d_*), and failure limits.
    """

    contrast: ChatModelConfig = _chat("Writes the rejected reply (method instruct or auto).", max_new_tokens=96)
    method: str = field(
        default="retrieve",
        metadata={
            "help": 'How the rejected reply is made: "instruct" = one call with the contrastive prompt (MODIFIED '
            'REQUEST / ANSWER format); "resample" = the user model rewrites the request from the same history and '
            'the assistant answers it normally (works with tiny models); "auto" = instruct, and resample where the '
            'reply cannot be parsed; "retrieve" = the nearest opening request of another training-side conversation '
            "inside request_similarity (a person's near miss; music.pairs.retrieve), answered normally."
        },
    )
    divergence: str = field(
        default="real",
        metadata={
            "help": 'The simulated turn that goes wrong: "fixed" (divergence_turn), "random" (drawn per conversation) '
            'or "real" (turn 1, whose user message is the seed\'s real next one with simulate.real_next_user: a '
            "person's request is misread)."
        },
    )
    divergence_turn: int = field(
        default=1, metadata={"help": '1-based simulated turn that goes wrong when divergence is "fixed".'}
    )
    min_turns_after_divergence: int = field(
        default=1,
        metadata={
            "help": '"random" draws among turns that leave at least this many after it: 1 = never the last turn, so '
            "every MUSIC pair differs in two or more assistant turns."
        },
    )
    candidates: int = field(
        default=2,
        metadata={"help": '"resample": the user model writes the divergence request again this many times.'},
    )
    answered_candidates: int = field(
        default=2,
        metadata={
            "help": "At most this many modified requests are answered (resample: the rewrites most unlike the "
            "original, on topic; retrieve: the nearest inside request_similarity); the clearest contrast is kept."
        },
    )
    encoder: str = field(
        default=EMBEDDED_ENCODER,
        metadata={"help": "Sentence encoder for the relevance checks (music.pairs.relevance)."},
    )
    request_similarity: list[float] | None = field(
        default_factory=lambda: [0.25, 0.8],
        metadata={
            "help": '"resample" and "retrieve": [lo, hi] window of cosine similarity (encoder) between a modified '
            "request and the original; only requests inside it are answered (the rest are counted as outside_band, "
            'not failures). null: no window ("retrieve" needs one).'
        },
    )
    min_contrast_margin: float | None = field(
        default=0.05,
        metadata={
            "help": "Keep a pair only when the rejected reply is closer (cosine) to the modified request than to the "
            "original, and the chosen reply closer to the original, both by at least this. null: off."
        },
    )
    max_echo_similarity: float | None = field(
        default=0.9,
        metadata={
            "help": "Drop a conversation where a simulated message is more similar (cosine) than this to the one it "
            "answers (an echo). null: off."
        },
    )
    d_pairs: bool = field(default=True, metadata={"help": "Build the last-turn pairs D."})
    d_source: str = field(
        default="seeds",
        metadata={
            "help": '"seeds" (the real next reply vs a model reply) or "KIND:LOCATION", a labelled preference set '
            "read by music.sources.load_pairs."
        },
    )
    d_limit: int | None = field(
        default=None, metadata={"help": "Pairs read from a labelled D source, per split; null: all."}
    )
    max_reply_chars: int = field(
        default=1200, metadata={"help": "Drop a pair with a generated message longer than this many characters."}
    )
    drop_truncated: bool = field(
        default=False,
        metadata={"help": "Also drop pairs with a reply cut by max_new_tokens, even when it was trimmed."},
    )
    seed: int = field(default=0, metadata={"help": "Divergence draws and sampling seeds derive from it."})
    max_failed_share: float = field(
        default=0.1,
        metadata={
            "help": "The stage fails when more than this share of a split's candidates failed (a contrast request "
            "failed, or an instruct reply did not parse); the filters' drops are not failures."
        },
    )
    min_music_train_pairs: int = field(
        default=1,
        metadata={"help": "The stage fails when fewer MUSIC training pairs are kept (train@music needs them)."},
    )
    max_malformed_share: float = field(
        default=MAX_MALFORMED_SHARE,
        metadata={
            "help": "Malformed records of a labelled D source are skipped and counted (filter_report.json); the "
            "stage fails when more than this share of them is malformed."
        },
    )

    def validate(self) -> None:
        _share(self, "max_failed_share")
        _share(self, "max_malformed_share")
        self._require(
            self.min_music_train_pairs >= 0, "min_music_train_pairs", f"must be >= 0, got {self.min_music_train_pairs}"
        )
        self._require(
            self.method in CONTRAST_METHODS, "method", f"must be one of {CONTRAST_METHODS}, got {self.method!r}"
        )
        self._require(
            self.divergence in DIVERGENCE_RULES,
            "divergence",
            f"must be one of {DIVERGENCE_RULES}, got {self.divergence!r}",
        )
        self._require(self.divergence_turn >= 1, "divergence_turn", f"must be >= 1, got {self.divergence_turn}")
        self._require(
            self.min_turns_after_divergence >= 0,
            "min_turns_after_divergence",
            f"must be >= 0, got {self.min_turns_after_divergence}",
        )
        self._require(self.candidates >= 1, "candidates", f"must be >= 1, got {self.candidates}")
        self._require(
            self.answered_candidates >= 1, "answered_candidates", f"must be >= 1, got {self.answered_candidates}"
        )
        band = self.request_similarity
        self._require(
            band is None
            or (
                isinstance(band, (list, tuple))
                and len(band) == 2
                and all(isinstance(x, (int, float)) for x in band)
                and -1 <= band[0] < band[1] <= 1
            ),
            "request_similarity",
            f"must be null or [lo, hi] with -1 <= lo < hi <= 1, got {band!r}",
        )
        self._require(
            self.method != "retrieve" or band is not None,
            "request_similarity",
            "must be [lo, hi] with method retrieve (the window the nearest request is taken from), got null",
        )
        self._require(
            self.d_source == "seeds" or ":" in self.d_source,
            "d_source",
            f"must be 'seeds' or 'KIND:LOCATION', got {self.d_source!r}",
        )
        # one meaning for every format and the hub: null reads all, a number that many (0 would read none)
        self._at_least(1, "d_limit", or_none=True)
        self._at_least(1, "max_reply_chars")
        self._at_least(0, "seed")
        echo = self.max_echo_similarity
        self._require(
            echo is None or -1 <= echo <= 1, "max_echo_similarity", f"must be a cosine in [-1, 1] or null, got {echo!r}"
        )
        self._text("encoder")


@dataclass
class TrainConfig(_Checked):
    """Stage `train`: a Bradley-Terry reward model per variant and seed (a scalar head on the last real token).

    The backbone and how much of it trains (num_layers, lora*, head_init), the data mix (variants, music_ratio),
    the optimisation, and the seeds.
    """

    backbone: str = field(
        default=EMBEDDED_MODEL,
        metadata={"help": "The RM's base model: an embedded id, Hugging Face id or local path."},
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": '"auto": Unsloth on a CUDA GPU when installed, else transformers + PEFT; or "unsloth" | '
            '"transformers".'
        },
    )
    num_layers: int | None = field(
        default=12, metadata={"help": "Keep the first N decoder layers (null: all), to fit a CPU budget."}
    )
    variants: dict[str, list[str]] = field(
        default_factory=lambda: {"baseline": ["d"], "music": ["d", "music"], "control": ["d", "music_cut"]},
        metadata={
            "help": "Variant name -> kinds of training pairs (outputs/pairs/{kind}_train): baseline = D only, "
            "music = D + MUSIC, control = D + the same MUSIC pairs cut after the divergence turn (music_cut, "
            "derived in music.rm.data)."
        },
    )
    music_ratio: float = field(
        default=1.0, metadata={"help": "MUSIC pairs per original pair in the mix (capped by what exists)."}
    )
    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters; false: full fine-tuning."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling: the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_last_layers: int | None = field(
        default=1,
        metadata={
            "help": "LoRA on the top N kept layers only (null: all): no backward pass runs below them, and their "
            "frozen input can be reused (reuse_frozen_layers)."
        },
    )
    head_init: str = field(
        default="zero",
        metadata={
            "help": 'Initial weights of the new score head: "zero" (every score starts at 0; the first steps fit the '
            "head to the pairs) or \"normal\" (transformers' N(0, initializer_range), TRL's default). With few steps "
            "a random head stays a seed-made feature of the reward."
        },
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Tokens per conversation; longer conversations lose their oldest turns first (counted)."},
    )
    batch_size: int = field(default=4, metadata={"help": "Pairs per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    epochs: float = field(default=2.0, metadata={"help": "Passes over the mixed pairs (fractions allowed)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps; overrides epochs when set (null: from epochs)."}
    )
    learning_rate: float = field(
        default=5e-4,
        metadata={"help": "AdamW peak learning rate (the paper: 2e-6, for full fine-tuning of a 9B model)."},
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={"help": "Linear warmup over this share of the steps, in [0, 1), then linear decay to 0."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    margin: float = field(
        default=0.0, metadata={"help": "Bradley-Terry margin: the loss is -log sigmoid(r_c - r_r - margin)."}
    )
    center_coef: float = field(
        default=0.0, metadata={"help": "Reward centering: adds center_coef * mean((r_c + r_r)^2) to the loss."}
    )
    length_grouping: bool = field(
        default=True, metadata={"help": "Batch pairs of similar length together (less padding)."}
    )
    save_every: int = field(
        default=10,
        metadata={"help": "Write a resume checkpoint every N optimizer steps (outside the DVC outputs)."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3],
        metadata={
            "help": "One model per seed and variant (outputs/models/{variant}/seed{s}): a seed fixes LoRA's (and a "
            "normal head's) initialisation, the data order and the MUSIC subset. Results are the mean and spread "
            "over seeds."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": 'RM weights: "auto" = float32 on CPU, on a GPU the backbone\'s 16-bit dtype (else bfloat16); '
            "or float32 | bfloat16 | float16."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory; null: on for backbones of >= 1B "
            "parameters (music.models.shapes)."
        },
    )
    reuse_frozen_layers: bool = field(
        default=True,
        metadata={
            "help": "Compute the frozen bottom layers' output (below lora_last_layers) once per conversation and "
            "reuse it across epochs, seeds, variants and scoring (music.rm.frozen); same rewards. Not on Unsloth."
        },
    )

    def validate(self) -> None:
        self._require(self.dtype in MODEL_DTYPES, "dtype", f"must be one of {MODEL_DTYPES}, got {self.dtype!r}")
        self._require(self.backend in RM_BACKENDS, "backend", f"must be one of {RM_BACKENDS}, got {self.backend!r}")
        self._require(self.head_init in HEAD_INITS, "head_init", f"must be one of {HEAD_INITS}, got {self.head_init!r}")
        self._require(
            self.num_layers is None or self.num_layers >= 1,
            "num_layers",
            f"must be >= 1 or null, got {self.num_layers}",
        )
        self._require(
            bool(self.variants) and all(self.variants.values()),
            "variants",
            "needs at least one variant, each with at least one kind of pairs",
        )
        self._require(self.music_ratio >= 0, "music_ratio", f"must be >= 0, got {self.music_ratio}")
        for key in ("batch_size", "grad_accum", "max_length"):
            self._require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        self._require(
            self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}"
        )
        self._require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        self._require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        self._require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self._require(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds) and all(s >= 0 for s in self.seeds),
            "seeds",
            f"must be a non-empty list of distinct seeds >= 0, got {self.seeds}",
        )
        self._at_least(1, "lora_r", "lora_alpha")
        self._at_least(1, "lora_last_layers", or_none=True)
        self._require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self._at_least(0, "weight_decay", "max_grad_norm", "center_coef", "save_every")
        self._text("backbone")


@dataclass
class EvalConfig(_Checked):
    """Stages `evaluate` (one RM at a time) and `best_of_n` (both RMs against each other).

    The last-turn sets (rewardbench*, local_set*), scoring, and Best-of-N (bon_*, policy, judge); the held-out
    items themselves are the heldout section's.
    """

    rewardbench: bool = field(
        default=False,
        metadata={"help": "Also score RewardBench (allenai/reward-bench, split filtered); true needs the hub."},
    )
    rewardbench_path: str | None = field(
        default=None,
        metadata={"help": "Or a local file of the same schema (prompt, chosen, rejected, subset); null: none."},
    )
    local_sets: dict[str, str] = field(
        default_factory=lambda: {
            "hh": "evalsets/hh-rlhf-harmless-base-test-first60.jsonl",
            "ultrafeedback": "evalsets/ultrafeedback-binarized-eval-first60.jsonl",
        },
        metadata={
            "help": "Real labelled last-turn sets, name -> path (names start with hh or ultrafeedback): small subsets "
            "committed in evalsets/ (source and license there). An absent path is skipped, the reason recorded."
        },
    )
    local_set_limit: int = field(default=60, metadata={"help": "First N records read from each local set."})
    max_length: int | None = field(
        default=None, metadata={"help": "Tokens per conversation when scoring; null: the RM's trained max_length."}
    )
    batch_size: int = field(default=8, metadata={"help": "Conversations scored together."})
    bon_ns: list[int] = field(default_factory=lambda: [2, 4, 8], metadata={"help": "Best-of-N sizes N."})
    bon_prompts: int = field(default=4, metadata={"help": "Best-of-N prompts."})
    bon_source: str = field(
        default="mtbench",
        metadata={
            "help": 'Where Best-of-N prompts come from (music.sources.prompts): "mtbench" (two scripted user turns '
            'each; "mtbench:PATH" for another question.jsonl), "hh:LOCATION", "ultrainteract:LOCATION" or '
            '"file:PATH".'
        },
    )
    bon_turns: int | None = field(
        default=None,
        metadata={
            "help": "Assistant turns per Best-of-N game (null: the source's own turns); simulate.user writes the "
            "user turns the source lacks."
        },
    )
    policy: ChatModelConfig = _chat(
        "Samples the Best-of-N candidates (pure sampling by default, so the N candidates differ).",
        max_new_tokens=48,
        temperature=1.0,
        top_p=1.0,
    )
    judge: ChatModelConfig = _chat(
        "Compares the two RMs' Best-of-N conversations.", max_new_tokens=8, temperature=0.0, batch_size=8
    )
    judge_constrained: bool = field(
        default=True,
        metadata={
            "help": "In-process judges pick the likeliest of [[A]]/[[B]]/[[C]] (a small model rarely writes a "
            "parseable verdict); servers always generate and are parsed. false: generate and parse everywhere. "
            "Only for label verdicts (bon_judge_graded: false)."
        },
    )
    bon_judge_graded: bool = field(
        default=True,
        metadata={
            "help": "Graded verdicts: the judge's log-probabilities of [[A]] and [[B]] in both orders, summed so a "
            "constant position preference cancels (in-process: the logits; served: the OpenAI logprobs field). "
            "false: label verdicts, a side wins only when both orders agree."
        },
    )
    bon_judge_check_pairs: int = field(
        default=16,
        metadata={
            "help": "Held-out quality twins (known answer) the judge is measured on before its verdicts are read, "
            "both orders each; 0: not measured."
        },
    )
    seed: int = field(default=0, metadata={"help": "Best-of-N prompt choice and sampling derive from it."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": 'RM weights when scoring: "auto" = float32 on CPU, on a GPU the model\'s 16-bit dtype (else '
            "bfloat16); or float32 | bfloat16 | float16."
        },
    )
    max_failed_share: float = field(
        default=0.1,
        metadata={"help": "best_of_n fails when more than this share of its games failed (music.failures)."},
    )

    def validate(self) -> None:
        _share(self, "max_failed_share")
        self._require(self.dtype in MODEL_DTYPES, "dtype", f"must be one of {MODEL_DTYPES}, got {self.dtype!r}")
        self._require(
            self.bon_source.partition(":")[0] in BON_SOURCE_KINDS,
            "bon_source",
            f"must start with one of {BON_SOURCE_KINDS} (KIND[:LOCATION]), got {self.bon_source!r}",
        )
        self._require(
            self.bon_turns is None or self.bon_turns >= 1, "bon_turns", f"must be >= 1 or null, got {self.bon_turns}"
        )
        self._require(
            bool(self.bon_ns) and all(n >= 1 for n in self.bon_ns), "bon_ns", f"must be sizes >= 1, got {self.bon_ns}"
        )
        for key in ("local_set_limit", "batch_size", "bon_prompts"):
            self._require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        self._at_least(0, "bon_judge_check_pairs")
        self._at_least(1, "max_length", or_none=True)
        self._at_least(0, "seed")
        self._require(
            self.rewardbench_path is None or bool(self.rewardbench_path.strip()),
            "rewardbench_path",
            f"must be a path or null, got {self.rewardbench_path!r}",
        )
        self._require(
            all(name and path for name, path in self.local_sets.items()),
            "local_sets",
            f"must map names to paths, got {self.local_sets!r}",
        )


@dataclass
class PlotConfig(_Checked):
    """Stage `plots`: figures and the results table."""

    formats: list[str] = field(
        default_factory=lambda: ["png", "svg"],
        metadata={"help": "Image formats written, one file per format per figure (e.g. png, svg, pdf)."},
    )
    dpi: int = field(default=150, metadata={"help": "Raster resolution in dots per inch."})

    def validate(self) -> None:
        self._require(
            bool(self.formats) and all(isinstance(f, str) and f.strip() for f in self.formats),
            "formats",
            f"must be a non-empty list of formats, got {self.formats!r}",
        )
        self._at_least(1, "dpi")


@dataclass
class StudyConfig(_Checked):
    """Studies beside the pipeline (studies/dvc.yaml: `dvc repro studies/dvc.yaml`; not part of `make run`)."""

    choices: list[str] = field(
        default_factory=lambda: ["lora_last_layers=2", "head_init=normal"],
        metadata={
            "help": "music.studies.choices: train keys, each changed alone from params.yaml (KEY=VALUE), rechecked "
            "on the development split (seed.n_dev_conversations) against the default."
        },
    )
    contrast_methods: list[str] = field(
        default_factory=lambda: ["resample", "retrieve"],
        metadata={
            "help": "music.studies.contrast_methods: contrast methods compared on the same simulated conversations "
            "(pairs kept, near-miss share, time)."
        },
    )
    near_miss_window: list[float] = field(
        default_factory=lambda: [0.25, 0.8],
        metadata={
            "help": "A modified request is a near miss when its cosine similarity to the original lies in [lo, hi] "
            "(read from hand-written near misses: docs/decisions.md); retrieve's window where contrast sets none."
        },
    )
    sample_pairs: int = field(
        default=10, metadata={"help": "Kept pairs per method drawn at random (study.seed) for reading."}
    )
    seed: int = field(
        default=0, metadata={"help": "Swap donors of the development items, the bootstrap and the pairs drawn."}
    )

    def validate(self) -> None:
        for text in self.choices:
            self._require("=" in str(text), "choices", f"entries are KEY=VALUE, got {text!r}")
        for method in self.contrast_methods:
            self._require(
                method in CONTRAST_METHODS, "contrast_methods", f"entries are one of {CONTRAST_METHODS}, got {method!r}"
            )
        lo_hi = self.near_miss_window
        self._require(
            len(lo_hi) == 2 and -1 <= lo_hi[0] < lo_hi[1] <= 1,
            "near_miss_window",
            f"must be [lo, hi] with -1 <= lo < hi <= 1, got {lo_hi!r}",
        )
        self._at_least(1, "sample_pairs")
        self._require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass
class Params:
    """The whole params file: one section per pipeline stage, plus `paths`."""

    paths: Paths = field(default_factory=Paths, metadata={"help": "Where stages read and write."})
    seed: SeedConfig = field(
        default_factory=SeedConfig, metadata={"help": "Stage seed: random prefixes of real conversations."}
    )
    heldout: HeldoutConfig = field(
        default_factory=HeldoutConfig,
        metadata={"help": "Stage heldout: the held-out test items (D eval, quality twins, swapped history)."},
    )
    simulate: SimulateConfig = field(
        default_factory=SimulateConfig,
        metadata={"help": "Stage simulate: each seed continued by a user model and an assistant model."},
    )
    contrast: ContrastConfig = field(
        default_factory=ContrastConfig, metadata={"help": "Stage contrast: MUSIC pairs and last-turn pairs D."}
    )
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "Stage train: a Bradley-Terry reward model per variant."}
    )
    evaluate: EvalConfig = field(
        default_factory=EvalConfig, metadata={"help": "Stages evaluate and best_of_n: testing the reward models."}
    )
    plots: PlotConfig = field(
        default_factory=PlotConfig, metadata={"help": "Stage plots: figures and the results table."}
    )
    study: StudyConfig = field(
        default_factory=StudyConfig,
        metadata={"help": "Studies beside the pipeline (studies/dvc.yaml): the choices rechecked on the dev split."},
    )


def _type_name(hint: Any) -> str:
    """A type hint as params.yaml readers know it: int, float, list[str], int | None, a mapping (ChatModelConfig)."""
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    if isinstance(hint, type) and not typing.get_args(hint):
        return {"NoneType": "null"}.get(hint.__name__, hint.__name__)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "")


def _misfit(value: Any, hint: Any) -> str | None:
    """None when `value` has type `hint`; else what was expected. Strict, as YAML gives values: an int is not a
    bool or a float like 2.5, a float is any finite number, a list is never a bare string, null only where the
    type says `| None`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = f"expected {_type_name(hint)}"
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        return None if any(_misfit(value, a) is None for a in args) else expected
    if hint is type(None):
        return None if value is None else expected
    if hint is bool:
        return None if isinstance(value, bool) else expected
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else expected
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else f"{expected} (a finite number)"
    if hint is str:
        return None if isinstance(value, str) else expected
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"{expected} (a list)"
        for i, item in enumerate(value):
            problem = _misfit(item, args[0] if args else Any)
            if problem:
                return f"{expected}: item {i} ({item!r}): {problem}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{expected} (a mapping)"
        for k, item in value.items():
            problem = _misfit(k, args[0]) or _misfit(item, args[1])
            if problem:
                return f"{expected}: at {k!r}: {problem}"
        return None
    if isinstance(hint, type):
        return None if isinstance(value, hint) else expected
    return None


def _dataclass_of(hint: Any) -> type | None:
    """The config dataclass a field holds (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def from_dict(cls: type, data: Any, where: str = "params"):
    """Build dataclass `cls` from a dict, recursively; unknown keys, values of the wrong type (from the field's
    type hint; see _misfit) and bad values (each class's `validate`) raise DataError naming file.section and key."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise DataError(where, "-", None, f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in names), key=str)
    if unknown:
        raise DataError(where, "-", str(unknown[0]), f"unknown key for {cls.__name__} (known: {sorted(names)})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        nested = _dataclass_of(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{key}")
        problem = _misfit(value, hint)
        if problem:
            raise DataError(where, "-", key, f"{problem}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except DataError as exc:  # say which file and section the bad value came from
        raise DataError(where, "-", exc.field, exc.problem) from None


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (2e-06): PyYAML reads them as strings,
    and DVC writes floats that way when `dvc exp run -S` (or music.pipeline.profile) sets a parameter."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _refuse_non_json(value: Any, source: str, key: str) -> None:
    """A DataError naming `source` and the dotted `key` for any value JSON could not hold: bytes (!!binary),
    dates and timestamps, sets, pairs (!!omap), non-finite floats, non-string mapping keys. Such values would
    reach the notebooks' parameters cell (papermill writes them as Python source) unchecked."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(source, "-", key or None, f"expected a finite number, got {value!r}")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_non_json(item, source, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise DataError(source, "-", f"{key}.{k!r}" if key else repr(k), "keys must be strings")
            _refuse_non_json(item, source, f"{key}.{k}" if key else k)
        return
    kind = {bytes: "binary data (!!binary)", datetime.date: "a date or timestamp", datetime.datetime: "a timestamp"}
    what = next((v for t, v in kind.items() if isinstance(value, t)), type(value).__name__)
    raise DataError(
        source,
        "-",
        key or None,
        f"only plain values are allowed (strings, numbers, true/false, null, lists, mappings), got {what}: "
        f"{value!r} (quote it to give a string)",
    )


def read_params_file(path: str | Path) -> dict:
    """The raw params mapping of a YAML file (see ParamsLoader); only JSON-like values (see _refuse_non_json)."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=ParamsLoader) or {}  # noqa: S506 (a SafeLoader subclass)
    if not isinstance(raw, dict):
        raise DataError(path, "-", None, f"expected a mapping of sections, got {type(raw).__name__}")
    _refuse_non_json(raw, str(path), "")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "params file does not exist")
    return from_dict(Params, read_params_file(path), str(path))


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


# ---------------------------------------------------------------- help: each field's metadata, and a listing
def field_help(cls: Any, name: str) -> str:
    """The help of config field `name` of dataclass `cls` (a class or an instance), from its metadata; a dotted
    name walks nested configs: `field_help(Params, "simulate.user.max_new_tokens")`. "" when it has none."""
    owner = cls if isinstance(cls, type) else type(cls)
    *path, leaf = name.split(".")
    for part in path:
        owner = typing.get_type_hints(owner)[part]
    found = {f.name: f for f in dataclasses.fields(owner)}
    if leaf not in found:
        raise KeyError(f"{owner.__name__} has no field {leaf!r}")
    return str(found[leaf].metadata.get("help", ""))


def _flow(value: Any) -> str:
    """A value as one line of YAML, as params.yaml writes it (null, true, [png, svg], {hh: path})."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _docstring(cls: type) -> str:
    """A class docstring as one paragraph."""
    return " ".join((cls.__doc__ or "").split())


def _entry(key: str, type_name: str, default: str, text: str, width: int) -> list[str]:
    import textwrap

    head = textwrap.wrap(
        f"{key}: {type_name}" + (f" = {default}" if default else ""),
        width,
        subsequent_indent="      ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    body = textwrap.wrap(
        text or "(no help)", width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False
    )
    return head + body


def config_listing(sections: typing.Sequence[str] | None = None, width: int = 100) -> str:
    """Every params key of `sections` (default: all) with its type, default and help, wrapped to `width`.

    A chat role (simulate.user, ...) is one entry; the ChatModelConfig keys of a section's roles follow its own
    keys once, as `simulate.{user,assistant}.KEY`, with each role's default where they differ.
    """
    import textwrap

    defaults = Params()
    out: list[str] = []
    for section in dataclasses.fields(Params):
        if sections and section.name not in sections:
            continue
        cls = typing.get_type_hints(Params)[section.name]
        value = getattr(defaults, section.name)
        if out:
            out.append("")
        out += textwrap.wrap(f"{section.name} ({cls.__name__}): {_docstring(cls)}", width, subsequent_indent="  ")
        roles: list[str] = []
        for f in dataclasses.fields(cls):
            default = getattr(value, f.name)
            if dataclasses.is_dataclass(default):
                roles.append(f.name)
                out += _entry(f"{section.name}.{f.name}", type(default).__name__, "", f.metadata.get("help", ""), width)
            else:
                out += _entry(
                    f"{section.name}.{f.name}", str(f.type), _flow(default), f.metadata.get("help", ""), width
                )
        if not roles:
            continue
        role_cls = type(getattr(value, roles[0]))
        group = roles[0] if len(roles) == 1 else "{" + ",".join(roles) + "}"
        out += textwrap.wrap(
            f"{section.name}.{group}: the keys of each role ({role_cls.__name__}): {_docstring(role_cls)}",
            width,
            subsequent_indent="  ",
        )
        for f in dataclasses.fields(role_cls):
            shown = {r: _flow(getattr(getattr(value, r), f.name)) for r in roles}
            default = (
                next(iter(shown.values()))
                if len(set(shown.values())) == 1
                else ", ".join(f"{v} ({r})" for r, v in shown.items())
            )
            out += _entry(f"{section.name}.{group}.{f.name}", str(f.type), default, f.metadata.get("help", ""), width)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m music.config [SECTION ...]`: print the params keys with their type, default and help."""
    import argparse
    import sys

    names = [f.name for f in dataclasses.fields(Params)]
    parser = argparse.ArgumentParser(
        prog="python -m music.config", description="List the params.yaml keys: type, default and help."
    )
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"one of {', '.join(names)} (default: all)")
    parser.add_argument("--width", type=int, default=100, help="wrap the listing to this many columns")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in names]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r} (known: {', '.join(names)})")
    sys.stdout.write(config_listing(args.sections, args.width) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
