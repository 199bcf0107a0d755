"""Plan a profile before running it: cross-stage checks, generation load, training and scoring cost, GPU memory.

    python -m music.pipeline.plan [--params FILE] [--out outputs/plan.json] [--assume KEY=VALUE ...]
    make plan PARAMS=profiles/paper.yaml

Loads no model and needs no network: backbone shapes come from config.json (a local folder, or the
copies committed in music/models/configs/), prompt counts from local files or the hub row counts in
music.sources.prompts.KNOWN_HUB_ROWS. Prints one table and writes the same numbers to --out; exits 1
when a check fails, each error naming the params key to change.

Every number is an estimate from the params and from `Assumptions` (throughputs, fill factors),
which are stated in the report and overridable with --assume. Token counts are upper bounds by
default: every reply uses its whole max_new_tokens, every seed context its max_context_chars.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from music.config import CONTRAST_METHODS, ChatModelConfig, Params, load_params
from music.errors import DataError
from music.files import read_jsonl
from music.models.shapes import (
    DTYPE_BYTES,
    BackboneShape,
    backbone_shape,
    known_backbone,
    resolve_dtype,
    use_gradient_checkpointing,
)
from music.pairs.last_turn import parse_d_source
from music.prompts import PROMPT_DIR
from music.sources.mtbench import load_mtbench_references
from music.sources.prompts import KNOWN_HUB_ROWS, count_available, parse_source
from music.sources.records import HUB_PREFIX

GB = 1e9


@dataclass
class Assumptions:
    """What the estimates assume; each is overridable: --assume NAME=VALUE."""

    chars_per_token: float = 4.0  # English text with Llama/Gemma-class tokenizers
    reply_fill: float = 1.0  # share of max_new_tokens a reply uses (1.0: upper bound)
    context_fill: float = 1.0  # share of seed.max_context_chars a seed context uses (1.0: upper bound)
    message_overhead_tokens: int = 6  # chat-template tokens around each message
    prompt_chars: float = 800.0  # a Best-of-N prompt's length where its source cannot be read offline
    # Served generation, per replica (one entry of base_urls): a 7-9B model in bf16 on one H100 under
    # vLLM with ~32 concurrent requests. Measure yours (vllm bench serve) and pass them here.
    server_prefill_tok_s: float = 15_000.0
    server_decode_tok_s: float = 2_000.0
    # In-process work on the CPU: the speeds of the embedded SmolLM2-135M (fp32, 2 cores) that a fresh clone's
    # `make run` measured per stage (stage wall times / the units below), replaced by this machine's calibration
    # (music.pipeline.calibrate, cached per machine and library versions) where one exists; other in-process
    # models scale by parameter count.
    cpu_prefill_tok_s: float = 450.0  # new prompt tokens encoded per second (after prefix reuse), batched
    cpu_decode_step_s: float = 0.125  # one generation step of a batch of 8 rows (a batch runs to its longest row)
    cpu_decode_step1_s: float = 0.05  # one generation step of a batch of 1 row (steps of other sizes: linear)
    cpu_layer_forward_tok_s: float = 24000.0  # RM scoring: tokens per second through one decoder layer
    cpu_layer_train_tok_s: float = 11000.0  # RM training: tokens per second, forward + backward of one LoRA layer
    cpu_reference_params: float = 134.5e6
    stage_overhead_s: float = 12.0  # per stage notebook: kernel start, imports, model load, figures
    rm_load_s: float = 2.0  # per reward model loaded (train seed, evaluate seed, Best-of-N load)
    # Typical sizes for time (token counts in the table stay upper bounds), measured on the default ShareGPT run:
    # eval seed contexts average 372 of 800 chars, real next user messages 58 of 500, replies ~90% of
    # max_new_tokens, whole held-out conversations ~55% of the RM's 512 tokens.
    typical_context_fill: float = 0.46
    typical_next_user_fill: float = 0.12
    typical_reply_fill: float = 0.9
    typical_conversation_fill: float = 0.55
    # Best-of-N games as played (default run: 10 distinct turn-2 contexts of at most 24, 14 of 48 games judged)
    bon_distinct_context_share: float = 0.42  # share of the at most min(max N, RMs x Ns) later-turn contexts per prompt
    bon_judged_share: float = 0.3  # games whose two RMs picked different conversations (only those are judged)
    # Training and scoring compute on a GPU: effective FLOP/s (model FLOPs / wall time).
    gpu_tflops: float = 400.0  # bf16 on one H100 at ~40% of its 989 dense TFLOP/s
    gpu_memory_gb: float = 80.0  # one GPU's memory, the budget training and scoring must fit
    gpu_overhead_gb: float = 2.0  # CUDA context, allocator fragmentation
    device: str = "auto"  # where the RMs train and score: gpu | cpu | auto (gpu for backbones >= 1B parameters)
    attention: str = "auto"  # sdpa | eager | auto (eager where config.json soft-caps attention logits: Gemma-2)
    adapter_bytes: int = 4  # LoRA weights are kept in float32 (PEFT casts adapters up)
    # Share of a hub seed source's conversations with >= 2 assistant turns (the only ones the seed stage keeps
    # as whole eval conversations for the swap test). Not countable offline; 0 = assume none (Skywork is
    # mostly one turn). A local seed file is counted instead.
    seed_multi_turn_share: float = 0.0


class Findings:
    """Errors (the profile cannot run as written) and warnings, each naming a params key."""

    def __init__(self):
        self.errors: list[dict] = []
        self.warnings: list[dict] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append({"key": key, "message": message})

    def warn(self, key: str, message: str) -> None:
        self.warnings.append({"key": key, "message": message})


@dataclass
class Load:
    """Generation requests of one chat role, with token estimates and the time they take."""

    role: str  # params key of the ChatModelConfig, e.g. "simulate.user"
    cfg: ChatModelConfig
    requests: float = 0.0
    prompt_tokens: float = 0.0
    generated_tokens: float = 0.0
    hours: float | None = None
    rate: str = ""
    # what an in-process model does for them (typical sizes, for time): new prompt tokens encoded after prefix
    # reuse, and generation steps by batch rows (a batch steps until its longest row ends: max_new_tokens)
    encoded_tokens: float = 0.0
    steps_by_rows: dict = dataclasses.field(default_factory=dict)
    decode_steps: bool = True  # False: one forward per request, no sampling (a constrained judge's verdicts)

    def add(self, n: float, prompt: float, generated: float) -> None:
        self.requests += n
        self.prompt_tokens += n * prompt
        self.generated_tokens += n * generated

    def call(self, n: float, encoded: float, max_new: int | None = None) -> None:
        """One generate call of n requests (batched by cfg.batch_size), `encoded` new prompt tokens each."""
        n = max(0, round(n))
        if not n:
            return
        self.encoded_tokens += n * encoded
        steps = self.cfg.max_new_tokens if max_new is None else max_new
        bs = max(1, self.cfg.batch_size)
        full, rest = divmod(n, bs)
        for rows, count in ((bs, full), (rest, 1 if rest else 0)):
            if count and steps:
                self.steps_by_rows[rows] = self.steps_by_rows.get(rows, 0) + count * steps

    def as_dict(self) -> dict:
        return {
            "role": self.role,
            "backend": backend_label(self.cfg),
            "requests": round(self.requests),
            "prompt_tokens": round(self.prompt_tokens),
            "generated_tokens": round(self.generated_tokens),
            "hours": None if self.hours is None else round(self.hours, 3),
            "rate": self.rate,
            "encoded_tokens_typical": round(self.encoded_tokens),
            "decode_steps": sum(self.steps_by_rows.values()),
        }


def backend_label(cfg: ChatModelConfig) -> str:
    if cfg.backend == "openai":
        return f"openai {cfg.model} x{len(cfg.base_urls)}"
    return f"transformers {cfg.model}"


# ---------------------------------------------------------------- token arithmetic


class Tokens:
    """Token estimates for the pieces conversations are made of."""

    def __init__(self, params: Params, assumptions: Assumptions):
        self.assumptions = assumptions
        self.m = assumptions.message_overhead_tokens
        self.sys = {
            name: self.chars((PROMPT_DIR / f"{name}.txt").read_text(encoding="utf-8"))
            for name in ("assistant_system", "user_simulator", "user_opener", "contrast_instruct", "judge_pairwise")
        }
        s = params.seed
        self.context = self.n(s.max_context_chars * assumptions.context_fill) + 2 * s.max_context_turns * self.m
        self.next_user = self.n(min(s.max_message_chars, s.max_context_chars) * assumptions.context_fill) + self.m
        # typical sizes (time estimates): what the default run's seeds and replies measured
        self.context_t = (
            self.n(s.max_context_chars * assumptions.typical_context_fill) + 2 * s.max_context_turns * self.m
        )
        self.next_user_t = self.n(min(s.max_message_chars, s.max_context_chars) * assumptions.typical_next_user_fill)
        self.next_user_t += self.m

    def n(self, chars: float) -> float:
        return chars / self.assumptions.chars_per_token

    def chars(self, text: str) -> float:
        return self.n(len(text))

    def reply(self, cfg: ChatModelConfig) -> float:
        return cfg.max_new_tokens * self.assumptions.reply_fill

    def reply_t(self, cfg: ChatModelConfig) -> float:
        """A reply's typical length (time estimates)."""
        return cfg.max_new_tokens * self.assumptions.typical_reply_fill + self.m


def divergence_turns(params: Params, findings: Findings) -> list[int]:
    """Simulated turns where a rejected branch may diverge (each equally likely), checked against simulate.turns."""
    c, K = params.contrast, params.simulate.turns
    if c.divergence == "fixed":
        if not 1 <= c.divergence_turn <= K:
            findings.error("contrast.divergence_turn", f"{c.divergence_turn} is outside 1..simulate.turns={K}")
            return [min(max(1, c.divergence_turn), K)]
        return [c.divergence_turn]
    if c.divergence == "real":  # the first simulated turn (a person's request with simulate.real_next_user)
        if K - 1 < c.min_turns_after_divergence:
            findings.error(
                "contrast.min_turns_after_divergence",
                f"{c.min_turns_after_divergence} turns after simulated turn 1 (divergence real) "
                f"exceed simulate.turns={K}",
            )
        return [1]
    if c.divergence == "random":
        hi = K - c.min_turns_after_divergence
        if hi < 1:
            findings.error(
                "contrast.min_turns_after_divergence",
                f"{c.min_turns_after_divergence} leaves no turn to diverge at among simulate.turns={K}",
            )
            return [K]
        return list(range(1, hi + 1))
    findings.error("contrast.divergence", f"must be 'fixed', 'random' or 'real', got {c.divergence!r}")
    return [1]


# ---------------------------------------------------------------- stages


def plan_seed(params: Params, findings: Findings) -> dict:
    s = params.seed
    out = {
        "train": s.n_train,
        "eval": s.n_eval,
        "eval_conversations": s.n_eval_conversations,
        "source": f"{s.source}:{s.path}",
    }
    for key in ("n_train", "n_eval"):
        if getattr(s, key) < 1:
            findings.error(f"seed.{key}", f"must be >= 1, got {getattr(s, key)}")
    if s.path.startswith(HUB_PREFIX):
        rows = KNOWN_HUB_ROWS.get((s.path[len(HUB_PREFIX) :], s.split))
        out["source_rows"] = rows
    elif Path(s.path).exists():
        out["source_rows"] = (
            sum(1 for line in open(s.path, encoding="utf-8", errors="replace") if line.strip())
            if s.path.endswith((".jsonl", ".ndjson"))
            else None
        )
    else:
        findings.warn("seed.path", f"{s.path} does not exist yet (`make data` materialises data/)")
        out["source_rows"] = None
    rows = out["source_rows"]
    if rows is not None and s.n_train + s.n_eval > rows:
        findings.error(
            "seed.n_train", f"n_train + n_eval = {s.n_train + s.n_eval:,} seeds from a source of {rows:,} conversations"
        )
    return out


def simulated_conversations(params: Params) -> int:
    """Seeds the simulate stage continues: every training seed, and eval seeds up to simulate.max_eval_conversations."""
    cap = params.simulate.max_eval_conversations
    return params.seed.n_train + (params.seed.n_eval if cap is None else min(cap, params.seed.n_eval))


def simulate_splits(params: Params) -> list[int]:
    """Conversations the simulate stage continues per split (one generate call per split and turn)."""
    cap = params.simulate.max_eval_conversations
    return [params.seed.n_train, params.seed.n_eval if cap is None else min(cap, params.seed.n_eval)]


def plan_simulate(params: Params, tokens: Tokens, findings: Findings) -> tuple[dict, list[Load]]:
    sim = params.simulate
    if sim.turns < 1:
        findings.error("simulate.turns", f"must be >= 1, got {sim.turns}")
    n = simulated_conversations(params)
    U, A = tokens.reply(sim.user), tokens.reply(sim.assistant)
    user, asst = Load("simulate.user", sim.user), Load("simulate.assistant", sim.assistant)
    for s in range(1, sim.turns + 1):
        history = tokens.context + (s - 1) * (U + A + 2 * tokens.m)
        if s == 1 and sim.real_next_user:  # turn 1's user message is the seed's real one: no user generation
            asst.add(n, tokens.sys["assistant_system"] + tokens.m + history + tokens.next_user + tokens.m, A)
            continue
        user.add(n, tokens.sys["user_simulator"] + tokens.sys["user_opener"] + 2 * tokens.m + history, U)
        asst.add(n, tokens.sys["assistant_system"] + tokens.m + history + U + tokens.m, A)
    # what the backend encodes (prefix reuse: each role's next prompt extends its last prompt + reply)
    Ut, At, m = tokens.reply_t(sim.user), tokens.reply_t(sim.assistant), tokens.m
    first = tokens.context_t + (tokens.next_user_t if sim.real_next_user else 0.0)
    for k in simulate_splits(params):
        user_seen = asst_seen = False
        for s in range(1, sim.turns + 1):
            history = first + (s - 1) * (Ut + At)
            if not (s == 1 and sim.real_next_user):
                user.call(k, Ut + At if user_seen else 2 * m + history)  # system prompts: a prefix shared by all
                user_seen = True
            asst.call(k, Ut + m if asst_seen else m + history + Ut * (s > 1) + m)
            asst_seen = True
    convo = tokens.context + sim.turns * (U + A + 2 * tokens.m)
    return {"conversations": n, "turns": sim.turns, "conversation_tokens": round(convo)}, [user, asst]


def plan_contrast(params: Params, tokens: Tokens, findings: Findings) -> tuple[dict, list[Load]]:
    sim, c = params.simulate, params.contrast
    if c.method not in CONTRAST_METHODS:
        findings.error("contrast.method", f"must be one of {CONTRAST_METHODS}, got {c.method!r}")
    n = simulated_conversations(params)
    U, A = tokens.reply(sim.user), tokens.reply(sim.assistant)
    user, asst = Load("simulate.user", sim.user), Load("simulate.assistant", sim.assistant)
    contrast = Load("contrast.contrast", c.contrast)
    turns = divergence_turns(params, findings)
    w = n / len(turns)  # conversations diverging at each turn (expected)
    for d in turns:
        before = tokens.context + (d - 1) * (U + A + 2 * tokens.m)
        if c.method in ("instruct", "auto"):
            contrast.add(
                w, tokens.sys["contrast_instruct"] + tokens.m + before + U + tokens.m, tokens.reply(c.contrast)
            )
        elif c.method == "retrieve":  # the nearest real requests are answered (no generated request)
            asst.add(w * c.answered_candidates, tokens.sys["assistant_system"] + tokens.m + before + U + tokens.m, A)
        else:  # resample: the user asks again `candidates` times, the assistant answers the best few
            user.add(
                w * c.candidates, tokens.sys["user_simulator"] + tokens.sys["user_opener"] + 2 * tokens.m + before, U
            )
            asst.add(
                w * min(c.answered_candidates, c.candidates),
                tokens.sys["assistant_system"] + tokens.m + before + U + tokens.m,
                A,
            )
        for s in range(d + 1, sim.turns + 1):  # the rejected branch is simulated on
            history = tokens.context + (s - 1) * (U + A + 2 * tokens.m)
            user.add(w, tokens.sys["user_simulator"] + tokens.sys["user_opener"] + 2 * tokens.m + history, U)
            asst.add(w, tokens.sys["assistant_system"] + tokens.m + history + U + tokens.m, A)
    try:
        labelled = parse_d_source(c.d_source) is not None
    except ValueError as exc:
        findings.error("contrast.d_source", str(exc))
        labelled = True
    if c.d_pairs and not labelled:  # D from the seeds (train; held-out D: the heldout stage)
        asst.add(
            params.seed.n_train,
            tokens.sys["assistant_system"] + tokens.m + tokens.context + tokens.next_user,
            A,
        )
    # what the backend encodes, per split (one process: the prefix store is fresh, then shared by the calls)
    Ut, At, m = tokens.reply_t(sim.user), tokens.reply_t(sim.assistant), tokens.m
    d_avg = sum(turns) / len(turns)
    before = tokens.context_t + (d_avg - 1) * (Ut + At) + (tokens.next_user_t if sim.real_next_user else 0.0)
    user_view = 2 * m + before  # the system prompts are a prefix every request shares: encoded once
    asst_view = m + before
    after = max(0.0, sim.turns - d_avg)  # simulated turns after the divergence, on the rejected branch
    for k, split in zip(simulate_splits(params), ("train", "eval")):
        if c.method in ("instruct", "auto"):
            contrast.call(k, m + asst_view + Ut)
            user_new = Ut + At + user_view  # the user model first sees this history on the rejected branch
        elif c.method == "retrieve":
            ka = c.answered_candidates
            asst.call(k * ka, asst_view / ka + Ut)
            user_new = Ut + At + user_view
        else:
            kc, ka = c.candidates, min(c.answered_candidates, c.candidates)
            user.call(k * kc, user_view / kc)  # the candidates of one conversation share their prompt
            asst.call(k * ka, asst_view / ka + Ut)
            user_new = At
        for i in range(math.ceil(after)):
            user.call(k, user_new if i == 0 else Ut + At)
            asst.call(k, Ut + m)
        if split == "train" and c.d_pairs and not labelled:  # D: the real next request after the stored context
            asst.call(k, tokens.next_user_t + m)
    loads = [x for x in (user, asst, contrast) if x.requests]
    notes = []
    if c.method == "auto":
        notes.append("method auto: resample calls for unparsed contrast replies are not counted")
    return {
        "conversations": n,
        "divergence_turns": turns,
        "d_from": "labelled source" if labelled else "seeds",
        "notes": notes,
    }, loads


def mtbench_usable(max_chars: int) -> tuple[list[tuple[float, float, float]], int]:
    """(chars of question 1, reference 1 + question 2, ...) for the MT-Bench questions the heldout stage answers
    (music.pairs.quality_twins.mtbench_twins: two turns, references, within heldout.quality_max_chars), and how
    many have references; offline from the materialised file, else MTBENCH_REFERENCED typical ones."""
    try:
        from music.sources import load_mtbench_questions

        refs = load_mtbench_references()
        qs = load_mtbench_questions()
    except (FileNotFoundError, DataError, ImportError):
        q = float(A_MTBENCH_CHARS)
        return [(q, 2 * q)] * MTBENCH_REFERENCED, MTBENCH_REFERENCED
    usable = []
    for q in qs:
        r = refs.get(q["question_id"])
        if not r or len(r) < 2 or len(q["turns"]) < 2:
            continue
        if sum(map(len, q["turns"][:2])) + sum(map(len, r[:2])) <= max_chars:
            usable.append((float(len(q["turns"][0])), float(len(r[0]) + len(q["turns"][1]))))
    return usable, len(refs)


def plan_heldout(params: Params, tokens: Tokens, findings: Findings) -> tuple[dict, list[Load]]:
    """Held-out D on the eval seeds (the assistant answers each real next request) and MT-Bench quality twins (the
    assistant answers two turns of each usable referenced question); the swap items need no model."""
    sim, c, h, s = params.simulate, params.contrast, params.heldout, params.seed
    asst = Load("simulate.assistant", sim.assistant)
    A, m = tokens.reply(sim.assistant), tokens.m
    try:
        labelled = parse_d_source(c.d_source) is not None
    except ValueError:
        labelled = True
    out: dict[str, Any] = {"d_eval_from": "labelled source" if labelled else "seeds"}
    if c.d_pairs and not labelled:
        asst.add(s.n_eval, tokens.sys["assistant_system"] + m + tokens.context + tokens.next_user, A)
        asst.call(s.n_eval, m + tokens.context_t + tokens.next_user_t + m)
    if h.quality_mtbench:
        usable, refs = mtbench_usable(h.quality_max_chars)
        out["mtbench_questions"] = {"with_references": refs, "answered": len(usable)}
        if usable:
            q1 = sum(tokens.n(a) for a, _ in usable) / len(usable) + m
            rest = sum(tokens.n(b) for _, b in usable) / len(usable) + 2 * m
            asst.add(len(usable), tokens.sys["assistant_system"] + m + q1, A)
            asst.add(len(usable), tokens.sys["assistant_system"] + m + q1 + rest, A)
            asst.call(len(usable), m + q1)
            asst.call(len(usable), rest)  # turn 2: the system message and question 1 are stored
    return out, [asst] if asst.requests else []


A_MTBENCH_CHARS = 400  # a typical MT-Bench question (and about half a reference answer)
MTBENCH_REFERENCED = 30  # questions with GPT-4 reference answers (math, reasoning, coding), if the file is absent


def mtbench_reference_count() -> int:
    """MT-Bench questions with reference answers (held-out quality twins), read offline where possible."""
    try:
        return len(load_mtbench_references())
    except (FileNotFoundError, DataError):
        return MTBENCH_REFERENCED


def d_pair_count(params: Params, split: str) -> tuple[int | None, str]:
    """Last-turn pairs D for a split: from the seeds (upper bound) or a labelled source's size."""
    c, s = params.contrast, params.seed
    if not c.d_pairs:
        return 0, "contrast.d_pairs is false"
    try:
        parsed = parse_d_source(c.d_source)
    except ValueError:
        return None, "bad contrast.d_source"
    if parsed is None:
        return (s.n_train if split == "train" else s.n_eval), "one per seed (before filtering)"
    kind, location = parsed
    eval_split = params.heldout.d_eval_split
    hub_split = eval_split if split == "eval" and eval_split != "train" else "train"
    if location.startswith(HUB_PREFIX):
        rows = KNOWN_HUB_ROWS.get((location[len(HUB_PREFIX) :], hub_split))
    elif Path(location).exists() and location.endswith((".jsonl", ".jsonl.gz")):
        rows = sum(1 for _ in read_jsonl(location))
    else:
        rows = None
    if rows is None:
        return (c.d_limit, "contrast.d_limit") if c.d_limit else (None, f"size of {location} unknown offline")
    if c.d_limit:
        rows = min(rows, c.d_limit)
    if hub_split == "train" and eval_split == "train":  # the seed stage holds conversations out
        held = s.n_eval + s.n_eval_conversations
        rows = max(0, rows - held) if split == "train" else min(rows, held)
    return rows, f"{location} split {hub_split}"


def reward_shape(params: Params, findings: Findings) -> BackboneShape | None:
    t = params.train
    if not known_backbone(t.backbone):
        findings.error(
            "train.backbone",
            f"no config.json for {t.backbone!r} offline: give a local folder, or commit its "
            "config.json under music/models/configs/ (see music.models.shapes)",
        )
        return None
    return backbone_shape(t.backbone)


def train_device(shape: BackboneShape, assumptions: Assumptions) -> str:
    if assumptions.device in ("gpu", "cpu"):
        return assumptions.device
    return "gpu" if shape.reward_params() >= 1e9 else "cpu"


def attention_kind(shape: BackboneShape, assumptions: Assumptions) -> str:
    if assumptions.attention in ("sdpa", "eager"):
        return assumptions.attention
    return "eager" if shape.attn_logit_softcapping else "sdpa"


def training_memory(params: Params, shape: BackboneShape, assumptions: Assumptions, dtype: str) -> dict:
    """GPU memory of one training micro-batch (bytes -> GB), with and without gradient checkpointing."""
    t = params.train
    L = shape.layers(t.num_layers)
    wbytes = DTYPE_BYTES[dtype]
    n_params = shape.reward_params(t.num_layers)
    if t.lora:
        lora_layers = min(t.lora_last_layers or L, L)
        trainable = shape.lora_params(t.lora_r, lora_layers) + shape.hidden_size  # + the score head
        state = trainable * (assumptions.adapter_bytes * 2 + 8)  # weight + grad + two AdamW moments (float32)
        span = lora_layers  # backward runs through the layers from the lowest adapted one up
        optim = f"LoRA r{t.lora_r} on {lora_layers} layers: {trainable / 1e6:.1f}M float32 params + grads + AdamW"
    else:
        trainable = n_params
        state = n_params * wbytes * 3  # grad + two AdamW moments, in the weights' dtype (torch AdamW)
        span = L
        optim = f"full fine-tuning: grads + AdamW moments in {dtype}"
    seqs = 2 * t.batch_size  # chosen and rejected rows of one micro-batch
    tokens = seqs * t.max_length
    abytes = DTYPE_BYTES[dtype]
    per_layer = shape.activation_elems_per_token()
    if attention_kind(shape, assumptions) == "eager":
        per_layer += shape.eager_attention_elems_per_token(t.max_length)
    layer_act = tokens * per_layer * abytes
    stored_off = span * layer_act  # layers below the lowest trained one run without autograd: they keep nothing
    stored_on = span * tokens * shape.hidden_size * abytes + layer_act  # layer inputs + one layer recomputed
    workspace = layer_act  # gradients of one layer's activations during backward
    weights = n_params * wbytes
    base = weights + state + assumptions.gpu_overhead_gb * GB
    total_on, total_off = base + stored_on + workspace, base + stored_off + workspace
    ckpt = use_gradient_checkpointing(t.gradient_checkpointing, n_params)
    return {
        "dtype": dtype,
        "params": n_params,
        "trainable_params": trainable,
        "optimizer": optim,
        "micro_batch": {"sequences": seqs, "max_length": t.max_length, "tokens": tokens},
        "attention": attention_kind(shape, assumptions),
        "gb": {
            "weights": weights / GB,
            "trainable_state": state / GB,
            "overhead": assumptions.gpu_overhead_gb,
            "activations_checkpointing": (stored_on + workspace) / GB,
            "activations_no_checkpointing": (stored_off + workspace) / GB,
            "total_checkpointing": total_on / GB,
            "total_no_checkpointing": total_off / GB,
        },
        "gradient_checkpointing": ckpt,
        "total_gb": (total_on if ckpt else total_off) / GB,
    }


def frozen_share(params: Params, shape: BackboneShape, device: str) -> float:
    """Share of the kept layers whose outputs are computed once per conversation and reused by every step, seed,
    variant and scoring pass (train.reuse_frozen_layers, music.rm.frozen): the layers below LoRA, on the
    transformers backend (on a GPU the auto backend is Unsloth, which does not reuse them)."""
    t = params.train
    if not (t.reuse_frozen_layers and t.lora and t.lora_last_layers) or (
        device == "gpu" and t.backend != "transformers"
    ):
        return 0.0
    L = shape.layers(t.num_layers)
    return max(0, L - min(t.lora_last_layers, L)) / L


def train_flops_per_token(params: Params, shape: BackboneShape, ckpt: bool, device: str = "cpu") -> float:
    """Per trained token; the reused bottom layers' one pass per conversation is not counted (small beside the
    steps that reread it)."""
    t = params.train
    L = shape.layers(t.num_layers)
    fwd = shape.forward_flops_per_token(t.max_length, t.num_layers)
    span = min(t.lora_last_layers or L, L) / L if t.lora else 1.0
    backward = span * fwd * (1.0 if t.lora else 2.0)  # input grads (+ weight grads when full)
    return fwd * (1 - frozen_share(params, shape, device)) + backward + (span * fwd if ckpt else 0.0)


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


LORA_MIN_LEARNING_RATE = 1e-5  # below it the planner warns: a full-fine-tuning rate used with LoRA


def cpu_scale(shape: BackboneShape, assumptions: Assumptions) -> float:
    """How much slower than the calibrated reference model (SmolLM2-135M) a layer of this backbone runs."""
    ref = backbone_shape("embedded:smollm2-135m-instruct") if known_backbone("embedded:smollm2-135m-instruct") else None
    per_layer_ref = ref.layer_params() if ref is not None else assumptions.cpu_reference_params / 30
    return shape.layer_params() / per_layer_ref


def scoring_seconds(
    params: Params, shape: BackboneShape, assumptions: Assumptions, device: str, top_tokens: float, new_tokens: float
) -> float:
    """CPU seconds to score: `top_tokens` through the layers each model runs (those above the reused bottom, or all),
    `new_tokens` (conversations no stage scored before) once through the reused bottom layers."""
    L = shape.layers(params.train.num_layers)
    share = frozen_share(params, shape, device)
    frozen = round(L * share)
    per = cpu_scale(shape, assumptions) / assumptions.cpu_layer_forward_tok_s
    return (top_tokens * top_layer_work(shape, L, frozen) + new_tokens * frozen) * per


def top_layer_work(shape: BackboneShape, layers: int, frozen: int) -> float:
    """Layers' worth of work per token that each model runs above the reused bottom when scoring: the top layer
    at the last token only where music.rm.last_token applies (one layer above a reused bottom, a supported
    architecture), so per token it costs its key/value projections' share of the layer."""
    from music.rm.last_token import SUPPORTED

    top = layers - frozen
    if frozen >= 1 and top == 1 and shape.model_type in SUPPORTED:
        return 2 * shape.hidden_size * shape.kv_dim / shape.layer_params()
    return float(top)


def train_seconds(
    params: Params, shape: BackboneShape, assumptions: Assumptions, device: str, tokens: float, new_tokens: float
) -> float:
    """CPU seconds to train on `tokens` (every step's sequences) and to compute the reused bottom of `new_tokens`
    once: LoRA layers forward + backward, the frozen layers between them and the bottom forward only."""
    t = params.train
    L = shape.layers(t.num_layers)
    span = min(t.lora_last_layers or L, L) if t.lora else L
    share = frozen_share(params, shape, device)
    frozen = round(L * share)
    scale = cpu_scale(shape, assumptions)
    per_step_token = (
        span / assumptions.cpu_layer_train_tok_s + (L - span - frozen) / assumptions.cpu_layer_forward_tok_s
    )
    if not t.lora:
        per_step_token = L / assumptions.cpu_layer_train_tok_s * 1.5  # weight gradients as well
    return (tokens * per_step_token + new_tokens * frozen / assumptions.cpu_layer_forward_tok_s) * scale


def typical_conversations(params: Params, tokens: Tokens) -> dict[str, float]:
    """Typical token lengths of what the RMs train on and score (capped at the RM's max length in use)."""
    sim = params.simulate
    Ut, At = tokens.reply_t(sim.user), tokens.reply_t(sim.assistant)
    last = tokens.context_t + tokens.next_user_t + At
    music = last + (sim.turns - 1) * (Ut + At)
    return {
        "d": last,
        "music": music,
        "music_cut": last,
        "quality_twins": last + 0.5 * (Ut + At),
        "music_eval": music,
        "trajectory": last + 0.5 * (sim.turns - 1) * (Ut + At),
        "swap": params.train.max_length * tokens.assumptions.typical_conversation_fill,
        "rewardbench": params.train.max_length * tokens.assumptions.typical_conversation_fill,
    }


def local_set_tokens(path: str, limit: int, tokens: Tokens) -> float | None:
    """Mean tokens of a committed last-turn set's chosen side (its first `limit` rows), or None."""
    try:
        rows = read_jsonl(path)
        total, n = 0.0, 0
        for _, r in rows:
            side = r.get("chosen")
            text = (
                str(r.get("prompt") or "") + "".join(str(m.get("content", "")) for m in side)
                if isinstance(side, list)
                else str(r.get("prompt") or "") + str(side)
            )
            total += tokens.chars(text) + 2 * tokens.m
            n += 1
            if n >= limit:
                break
        return total / n if n else None
    except (OSError, ValueError, DataError, AttributeError):
        return None


def plan_train(
    params: Params,
    shape: BackboneShape | None,
    assumptions: Assumptions,
    findings: Findings,
    tokens: Tokens | None = None,
) -> dict:
    t = params.train
    for key in ("batch_size", "grad_accum", "max_length"):
        if getattr(t, key) < 1:
            findings.error(f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    if t.lora and t.lora_last_layers is not None and t.num_layers and t.lora_last_layers > t.num_layers:
        findings.error("train.lora_last_layers", f"{t.lora_last_layers} exceeds train.num_layers={t.num_layers}")
    out: dict[str, Any] = {"backbone": t.backbone, "variants": {}, "lora": t.lora, "learning_rate": t.learning_rate}
    if t.lora and t.learning_rate < LORA_MIN_LEARNING_RATE:
        findings.warn(
            "train.learning_rate",
            f"LoRA with learning_rate {t.learning_rate:g}: LoRA's B matrices start at zero and "
            "AdamW moves each entry by about the learning rate per step, so the model stays close to the base plus a "
            f"trained head (a full-fine-tuning rate; LoRA needs >= {LORA_MIN_LEARNING_RATE:g}, e.g. 1e-4)",
        )
    if shape is None:
        return out
    if shape.max_position_embeddings and t.max_length > shape.max_position_embeddings:
        findings.error(
            "train.max_length",
            f"{t.max_length} exceeds {t.backbone}'s context of {shape.max_position_embeddings} tokens",
        )
    if t.num_layers and t.num_layers > shape.num_layers:
        findings.warn("train.num_layers", f"{t.num_layers} > the backbone's {shape.num_layers} layers: all are kept")
    device = train_device(shape, assumptions)
    dtype = resolve_dtype(t.dtype, shape.torch_dtype, cuda=device == "gpu")
    mem = training_memory(params, shape, assumptions, dtype)
    out.update(
        device=device,
        dtype=dtype,
        memory=mem,
        shape={
            "params": shape.reward_params(t.num_layers),
            "layers": shape.layers(t.num_layers),
            "hidden": shape.hidden_size,
            "context": shape.max_position_embeddings,
            "config": _relative(shape.source),
        },
    )
    if device == "gpu" and mem["total_gb"] > assumptions.gpu_memory_gb:
        hint = (
            "turn train.gradient_checkpointing on, or lower train.batch_size (raise grad_accum)"
            if not mem["gradient_checkpointing"]
            else "lower train.batch_size (raise train.grad_accum) or train.max_length"
        )
        findings.error(
            "train.batch_size",
            f"training needs about {mem['total_gb']:.1f} GB, more than one "
            f"{assumptions.gpu_memory_gb:.0f} GB GPU: {hint}",
        )
    if not t.lora and dtype in ("bfloat16", "float16") and t.learning_rate < 1e-4:
        findings.warn(
            "train.lora",
            f"full fine-tuning in {dtype} with learning_rate {t.learning_rate:g}: most updates are "
            "below 16-bit resolution (no float32 master weights in this trainer); prefer LoRA or dtype float32",
        )
    rate = assumptions.gpu_tflops * 1e12
    flops = train_flops_per_token(params, shape, mem["gradient_checkpointing"], device)
    typical = typical_conversations(params, tokens) if tokens is not None else {}

    def cpu_hours(variant_kinds, steps: int | None, pairs_by_kind: dict, new_kinds: set) -> float | None:
        """Steps of typical (length-grouped, ~15% padded) sequences, the bottom of new conversations once, RM loads."""
        if steps is None:
            return None
        lengths = [min(t.max_length, typical.get(k, t.max_length)) for k in variant_kinds]
        seq = sum(lengths) / len(lengths) * 1.15
        seqs = steps * t.batch_size * t.grad_accum * 2 * len(t.seeds)
        new = sum(2 * pairs_by_kind.get(k, 0) * min(t.max_length, typical.get(k, t.max_length)) for k in new_kinds)
        s = train_seconds(params, shape, assumptions, device, seqs * seq, new)
        return (s + len(t.seeds) * assumptions.rm_load_s) / 3600

    d_train, d_note = d_pair_count(params, "train")
    music = params.seed.n_train  # one MUSIC pair per train seed at most (filters remove some)
    seen_kinds: set = set()  # pair kinds whose bottom states an earlier variant computed (train@* run in this order)
    new_by_variant: dict = {}
    for variant, kinds in t.variants.items():
        n_d = (d_train or 0) if "d" in kinds else 0
        n_m = 0
        if "music" in kinds or "music_cut" in kinds:
            n_m = music if not n_d else min(music, round(t.music_ratio * n_d))
        pairs = n_d + n_m
        unknown = "d" in kinds and d_train is None
        per_step = t.batch_size * t.grad_accum
        if t.max_steps:
            steps = t.max_steps
        elif unknown:
            steps = None
            findings.warn(
                "train.max_steps",
                f"variant {variant}: the number of D pairs is unknown offline ({d_note}); "
                "set train.max_steps or contrast.d_limit to plan the steps",
            )
        else:
            steps = max(1, math.ceil(t.epochs * math.ceil(pairs / t.batch_size) / t.grad_accum)) if pairs else 0
        tokens = None if steps is None else steps * per_step * 2 * t.max_length * len(t.seeds)  # one model per seed
        hours = None if tokens is None else tokens * flops / rate / 3600
        by_kind = {"d": n_d, "music": n_m, "music_cut": n_m}
        new_kinds = {k for k in kinds if k not in seen_kinds}
        seen_kinds.update(kinds)
        if device == "cpu" and tokens is not None:
            hours = cpu_hours(kinds, steps, by_kind, new_kinds)
        passes = None if steps is None or not pairs else steps * per_step / pairs
        out["variants"][variant] = {
            "kinds": kinds,
            "pairs": pairs,
            "pairs_d": n_d if not unknown else None,
            "pairs_music": n_m,
            "d_source": d_note,
            "steps": steps,
            "pairs_per_step": per_step,
            "seeds": len(t.seeds),
            "epochs_over_data": None if passes is None else round(passes, 2),
            "tokens": tokens,
            "hours": hours,
        }
        new_by_variant[variant] = (kinds, by_kind, new_kinds)
    known = {v: d["pairs"] for v, d in out["variants"].items() if d["steps"] is not None}
    if known and len(known) == len(out["variants"]) and not t.max_steps:  # matched arms (music.rm.schedule)
        from music.rm.schedule import matched_steps

        m = matched_steps(known, t)
        for v, d in out["variants"].items():
            d["steps"] = m["steps"]
            d["epochs_over_data"] = m["epochs_over_data"][v]
            d["tokens"] = m["steps"] * d["pairs_per_step"] * 2 * t.max_length * len(t.seeds)
            d["hours"] = d["tokens"] * flops / rate / 3600
            if device == "cpu":
                kinds, by_kind, new_kinds = new_by_variant[v]
                d["hours"] = cpu_hours(kinds, m["steps"], by_kind, new_kinds)
    out["flops_per_token"] = flops
    out["rate"] = (
        f"{assumptions.gpu_tflops:g} TFLOP/s (GPU, assumed)"
        if device == "gpu"
        else f"{assumptions.cpu_layer_train_tok_s:,.0f} / {assumptions.cpu_layer_forward_tok_s:,.0f} tokens/s per "
        "LoRA / frozen layer (CPU)"
    )
    return out


def scoring_memory(
    shape: BackboneShape,
    layers: int | None,
    dtype: str,
    batch: int,
    length: int,
    assumptions: Assumptions,
    resident: int = 1,
) -> dict:
    tokens = batch * length
    per = shape.inference_elems_per_token()
    if attention_kind(shape, assumptions) == "eager":
        per += shape.eager_attention_elems_per_token(length)
    weights = shape.reward_params(layers) * DTYPE_BYTES[dtype]
    act = tokens * per * DTYPE_BYTES[dtype]
    total = resident * weights + act + assumptions.gpu_overhead_gb * GB
    return {
        "dtype": dtype,
        "models_resident": resident,
        "weights_gb": weights / GB,
        "activations_gb": act / GB,
        "batch": batch,
        "max_length": length,
        "total_gb": total / GB,
    }


def plan_evaluate(
    params: Params,
    shape: BackboneShape | None,
    assumptions: Assumptions,
    findings: Findings,
    T: Tokens | None = None,
) -> dict:
    e, s = params.evaluate, params.seed
    length = e.max_length or params.train.max_length
    if shape is not None and shape.max_position_embeddings and length > shape.max_position_embeddings:
        findings.error(
            "evaluate.max_length",
            f"{length} exceeds {params.train.backbone}'s context of {shape.max_position_embeddings} tokens",
        )
    h = params.heldout
    conv = min(h.swap_conversations, s.n_eval_conversations) if h.swap_source == "seeds" else h.swap_conversations
    if h.swap_source == "seeds" and h.swap_conversations > s.n_eval_conversations:
        findings.warn(
            "heldout.swap_conversations",
            f"{h.swap_conversations} > seed.n_eval_conversations={s.n_eval_conversations}: at most {conv} are used",
        )
    c = params.contrast
    sharegpt_twins = 2 * s.n_eval if c.d_pairs and parse_d_source(c.d_source) is None else 0
    mt_twins = 2 * mtbench_reference_count() if h.quality_mtbench else 0
    # conversations scored per model (two per pair; upper bounds before filtering)
    music_eval = simulated_conversations(params) - s.n_train
    scored = {
        "quality_twins": 2 * (sharegpt_twins + mt_twins),
        "music_eval": 2 * music_eval,
        "swap": 2 * conv * h.swap_max_distance,
        "trajectory": 2 * music_eval * params.simulate.turns,
    }
    rewardbench = None
    if e.rewardbench or e.rewardbench_path:  # what the stage will load: a local file's rows, else the hub's
        rows, how = rewardbench_rows(e.rewardbench_path, findings)
        scored["rewardbench"] = 2 * rows
        rewardbench = {"rows": rows, "from": how}
    present = {k: v for k, v in e.local_sets.items() if Path(v).exists()}
    if present:
        scored["local_sets"] = 2 * e.local_set_limit * len(present)
    n = sum(scored.values())
    models = len(params.train.variants) * len(params.train.seeds)
    out: dict[str, Any] = {
        "conversations_scored_per_model": scored,
        "models": models,
        "max_length": length,
        "early_turn_items": early_turn_items(params, assumptions, findings),
    }
    if rewardbench is not None:
        out["rewardbench"] = rewardbench
    if shape is None:
        return out
    device = train_device(shape, assumptions)
    dtype = resolve_dtype(e.dtype, shape.torch_dtype, cuda=device == "gpu")
    rate = assumptions.gpu_tflops * 1e12
    tokens = n * length * models
    # every model runs the layers above the reused bottom; the bottom runs once per conversation (frozen_share)
    share = frozen_share(params, shape, device)
    passes = models * (1 - share) + share
    hours = n * length * passes * shape.forward_flops_per_token(length, params.train.num_layers) / rate / 3600
    if device == "cpu" and T is not None:
        typical = typical_conversations(params, T)
        local = [local_set_tokens(v, e.local_set_limit, T) for v in present.values()]
        if local and all(x is not None for x in local):
            typical["local_sets"] = sum(local) / len(local)
        per_model = sum(v * min(length, typical.get(k, length)) for k, v in scored.items())
        out["typical_tokens_per_model"] = round(per_model)
        compute = scoring_seconds(params, shape, assumptions, device, per_model * models, per_model)
        out["compute_s"] = compute
        hours = (compute + models * assumptions.rm_load_s) / 3600
    out.update(
        device=device,
        tokens=tokens,
        frozen_share=round(share, 3),
        hours=hours,
        memory=scoring_memory(shape, params.train.num_layers, dtype, e.batch_size, length, assumptions),
    )
    if device == "gpu" and out["memory"]["total_gb"] > assumptions.gpu_memory_gb:
        findings.error(
            "evaluate.batch_size",
            f"scoring needs about {out['memory']['total_gb']:.1f} GB, more than one "
            f"{assumptions.gpu_memory_gb:.0f} GB GPU: lower evaluate.batch_size or evaluate.max_length",
        )
    return out


def _multi_turn_swaps(conversations: list[dict], max_distance: int) -> int:
    """Swap items at distance >= 2 that whole conversations allow: min(assistant turns, max_distance) - 1 each."""
    return sum(
        max(0, min(sum(m["role"] == "assistant" for m in c["messages"]), max_distance) - 1) for c in conversations
    )


def early_turn_items(params: Params, assumptions: Assumptions, findings: Findings) -> dict:
    """How many items the early-turn group (swap at distance >= 2; held-out MUSIC pairs uncounted) will hold, and
    what the estimate assumes; an error when it is 0 (the paper-scale comparison would have no early-turn result)."""
    from music.evaluate.swap import load_swap_conversations
    from music.sources import load_conversations
    from music.stages.seed import eval_conversation_prefix

    h, s, c = params.heldout, params.seed, params.contrast
    notes: list[str] = []
    quality = 0
    if c.d_pairs and parse_d_source(c.d_source) is None:
        quality += s.n_eval
        notes.append(f"quality: at most one early twin per eval seed ({s.n_eval}; only seeds with a real next turn)")
    if h.quality_mtbench:
        refs = mtbench_reference_count()
        quality += refs
        notes.append(f"quality: one MT-Bench early twin per referenced question ({refs})")
    swap: int | None
    kind, _, location = h.swap_source.partition(":")
    if kind == "seeds":
        if s.path.startswith(HUB_PREFIX):
            rows = KNOWN_HUB_ROWS.get((s.path[len(HUB_PREFIX) :], s.split)) or 0
            multi = int(rows * assumptions.seed_multi_turn_share)
            notes.append(
                f"swap: {s.path} cannot be read offline; assumes {assumptions.seed_multi_turn_share:g} of its {rows:,} "
                "conversations have >= 2 assistant turns (--assume seed_multi_turn_share=...)"
            )
        elif Path(s.path).exists():
            try:
                convs = load_conversations(s.source, s.path, split=s.split)
            except (DataError, ValueError, OSError) as exc:
                convs = []
                findings.warn("seed.path", f"cannot count multi-turn conversations in {s.path}: {exc}")
            multi = sum(eval_conversation_prefix(x, s) is not None for x in convs)
            notes.append(
                f"swap: {multi:,} conversations of {s.path} qualify as whole eval conversations (or their first "
                ">= 2 turns; an upper bound: "
                "train seeds draw from the same file)"
            )
        else:
            multi = None
            notes.append(f"swap: {s.path} does not exist yet; not counted")
        n_conv = None if multi is None else min(h.swap_conversations, s.n_eval_conversations, multi)
        swap = None if n_conv is None else n_conv * 1  # each has >= 2 assistant turns: at least one early swap
        if n_conv:
            notes.append(
                f"swap: {n_conv:,} conversations x at least 1 early swap each (the turns beyond 2 not counted)"
            )
    elif location and Path(location).exists():
        convs, _ = load_swap_conversations(h.swap_source, "", limit=h.swap_conversations)
        swap = _multi_turn_swaps(convs, h.swap_max_distance)
        notes.append(f"swap: counted in {location} ({len(convs):,} conversations, distances 2..{h.swap_max_distance})")
    else:
        swap = None
        notes.append(f"swap: {location} does not exist yet (`make data`); not counted")
    if h.swap_same_conversation:
        notes.append(
            "swap_same (a reply from another turn of the same chat) adds items where a like-length reply "
            "exists there; not counted (a lower bound)"
        )
    notes.append(
        "every swap finds a like-length donor (misses are counted by the stage); hh/ultrafeedback and "
        "RewardBench are last-turn only; the early group (music.evaluate.items) is swap >= 2 plus the "
        "length-matched held-out MUSIC pairs (not counted: the contrast filters decide); quality twins are "
        "reported apart, not in the total"
    )
    total = swap
    if total == 0:
        findings.error(
            "heldout.swap_source",
            "the early-turn group would hold no swap item (no "
            "multi-turn held-out conversations for the swap test): set heldout.swap_source to a multi-turn source "
            "(sharegpt:PATH or file:PATH)",
        )
    elif total is None:
        findings.warn(
            "heldout.swap_source",
            "cannot count the early-turn items offline; the only early-turn test is the swap test",
        )
    return {"total": total, "quality": quality, "swap": swap, "assumes": notes}


def rewardbench_rows(path: str | None, findings: Findings) -> tuple[int, str]:
    """RewardBench rows the evaluate stage will score: a local file's own rows (it wins over the hub, as in
    music.evaluate.rewardbench.load_rewardbench_pairs), else the hub's filtered split."""
    from music.evaluate.constants import HUB_ID, HUB_ROWS, HUB_SPLIT
    from music.sources.records import iter_records

    if not path:
        return HUB_ROWS, f"hub:{HUB_ID} split {HUB_SPLIT}"
    if not Path(path).exists():
        findings.error("evaluate.rewardbench_path", f"{path} does not exist")
        return 0, f"{path} (missing)"
    try:
        return sum(1 for _ in iter_records(path)), f"{path} (rows read)"
    except DataError as exc:
        findings.error("evaluate.rewardbench_path", str(exc))
        return 0, f"{path} (unreadable)"


def plan_best_of_n(
    params: Params, tokens: Tokens, shape: BackboneShape | None, assumptions: Assumptions, findings: Findings
) -> tuple[dict, list[Load]]:
    e = params.evaluate
    source = e.bon_source
    out: dict[str, Any] = {"source": source, "prompts": e.bon_prompts, "ns": list(e.bon_ns)}
    try:
        _, location = parse_source(source)
        available, source_turns, how = count_available(source)
    except DataError as exc:
        findings.error("evaluate.bon_source", exc.problem)
        location, available, source_turns, how = None, None, None, str(exc)
    out["available"], out["available_note"] = available, how
    if location and not location.startswith(HUB_PREFIX) and not Path(location).exists():
        findings.error("evaluate.bon_source", f"{location} does not exist")
    elif available is None:
        findings.warn("evaluate.bon_source", f"cannot count the prompts offline: {how}")
    elif e.bon_prompts > available:
        findings.error(
            "evaluate.bon_prompts",
            f"{e.bon_prompts} prompts asked, but {source} has {available} "
            f"({how}); lower evaluate.bon_prompts or choose a larger evaluate.bon_source",
        )
    if not e.bon_ns or any(int(n) < 1 for n in e.bon_ns):
        findings.error("evaluate.bon_ns", f"must be positive integers, got {e.bon_ns}")
        return out, []
    turns = e.bon_turns or source_turns or 1
    out["turns"] = turns
    scripted = min(source_turns or 1, turns)
    out["turns_from_source"], out["turns_simulated"] = scripted, turns - scripted
    policy, judge, user = (
        Load("evaluate.policy", e.policy),
        Load("evaluate.judge", e.judge),
        Load("simulate.user", params.simulate.user),
    )
    Pn, ns = e.bon_prompts, sorted({int(n) for n in e.bon_ns})
    K = len(params.train.seeds)  # every training seed plays (turn-1 samples are shared: the response cache)
    out["rm_seeds"] = K
    G, M, S = len(ns), max(ns), sum(ns)
    Q = tokens.n(assumptions.prompt_chars) + tokens.m
    R, U = tokens.reply(e.policy), tokens.reply(params.simulate.user)
    scored = 0.0
    for t in range(1, turns + 1):
        history = Q + (t - 1) * (R + U + 2 * tokens.m)  # user turn t included after its message
        if t == 1:
            policy.add(Pn * M, history, R)
            scored += 2 * K * Pn * M
            continue
        if t > scripted:  # the simulated user writes turn t for each (RM, N) conversation
            user.add(
                2 * K * Pn * G,
                tokens.sys["user_simulator"] + tokens.sys["user_opener"] + 2 * tokens.m + history - U - tokens.m,
                U,
            )
        policy.add(2 * K * Pn * S, history, R)  # an upper bound: identical contexts are sampled once
        scored += 2 * K * Pn * S
    convo = Q + turns * (R + tokens.m) + (turns - 1) * (U + tokens.m)
    judge.add(2 * K * Pn * G, tokens.sys["judge_pairwise"] + 2 * convo + tokens.m, tokens.reply(e.judge))
    out["rm_scorings"] = round(scored)
    # the games as played (time): max(N) samples per distinct context, N=2 a prefix of N=4; later-turn contexts
    # hold an RM's pick, so at most min(max N, RMs x Ns) per prompt, and RMs that agree share them; the judge
    # sees only games whose RMs picked differently, both orders, one forward each when constrained or graded
    Rt, Ut, m = tokens.reply_t(e.policy), tokens.reply_t(params.simulate.user), tokens.m
    Qt = Q
    contexts = Pn * min(M, 2 * K * G) * assumptions.bon_distinct_context_share
    policy.call(Pn * M, Qt / M)
    scored_t = 2 * K * Pn * M  # every RM scores turn 1's candidates
    distinct_t = Pn * M
    for t in range(2, turns + 1):
        if t > scripted:
            user.call(contexts, Rt + m if t > 2 else Qt + Rt)
        policy.call(contexts * M, (Rt + Ut + 2 * m) / M)
        scored_t += 2 * K * Pn * G * M * assumptions.bon_distinct_context_share
        distinct_t += contexts * M
    convo_t = Qt + turns * Rt + (turns - 1) * Ut
    graded = getattr(e, "bon_judge_graded", False)
    judge.decode_steps = not (e.judge_constrained or graded)
    judged = K * Pn * G * assumptions.bon_judged_share
    judge.call(2 * judged, 2 * convo_t + m)
    check = getattr(e, "bon_judge_check_pairs", 0) or 0
    if check:  # the judge measured on held-out quality twins first, judged the same way
        judge.call(2 * check, 2 * (tokens.context_t + tokens.next_user_t + tokens.reply_t(params.simulate.assistant)))
    out["played"] = {
        "distinct_later_contexts": round(contexts),
        "judged_games": round(judged),
        "rm_scorings": round(scored_t),
        "rm_loads": K * (2 * turns - (turns - 1)),
        "judge_check_pairs": check,
    }
    if shape is not None:
        device = train_device(shape, assumptions)
        dtype = resolve_dtype(e.dtype, shape.torch_dtype, cuda=device == "gpu")
        length = min(e.max_length or params.train.max_length, math.ceil(convo))
        if device == "gpu":
            rate = assumptions.gpu_tflops * 1e12
            out["rm_hours"] = (
                scored * length * shape.forward_flops_per_token(length, params.train.num_layers) / rate / 3600
            )
        else:
            L = min(e.max_length or params.train.max_length, convo_t)
            out["rm_hours"] = (
                scoring_seconds(params, shape, assumptions, device, scored_t * L, distinct_t * L)
                + out["played"]["rm_loads"] * assumptions.rm_load_s
            ) / 3600
        out["memory"] = scoring_memory(
            shape,
            params.train.num_layers,
            dtype,
            e.batch_size,
            e.max_length or params.train.max_length,
            assumptions,
            resident=1,
        )
    return out, [x for x in (policy, user, judge) if x.requests]


# ---------------------------------------------------------------- generation time, checks on chat roles


def role_shape(cfg: ChatModelConfig) -> BackboneShape | None:
    return backbone_shape(cfg.model) if cfg.backend == "transformers" and known_backbone(cfg.model) else None


def decode_step_s(rows: int, assumptions: Assumptions) -> float:
    """Seconds of one generation step of a batch of `rows` (the reference model), linear between 1 and 8 rows."""
    a, b = assumptions.cpu_decode_step1_s, assumptions.cpu_decode_step_s
    return max(a * 0.5, a + (b - a) * (rows - 1) / 7)


def time_loads(loads: list[Load], assumptions: Assumptions) -> None:
    for ld in loads:
        cfg = ld.cfg
        if cfg.backend == "openai":
            k = max(1, len(cfg.base_urls))
            pre, dec = assumptions.server_prefill_tok_s * k, assumptions.server_decode_tok_s * k
            ld.rate = f"server x{k}: {pre:,.0f} prefill / {dec:,.0f} decode tok/s (assumed)"
            ld.hours = (ld.prompt_tokens / pre + ld.generated_tokens / dec) / 3600
            continue
        shape = role_shape(cfg)
        if shape is None:
            ld.rate = "unknown (in-process model without a known config.json)"
            continue
        scale = shape.causal_lm_params() / assumptions.cpu_reference_params
        pre = assumptions.cpu_prefill_tok_s / scale
        decode = sum(decode_step_s(r, assumptions) * n for r, n in ld.steps_by_rows.items()) * scale
        if not ld.decode_steps:
            decode = 0.0
        step8 = decode_step_s(8, assumptions) * scale
        ld.rate = f"in-process CPU: {pre:,.0f} prefill tok/s, {step8:.3f} s per step of 8 rows"
        ld.hours = (ld.encoded_tokens / pre + decode) / 3600


def check_roles(params: Params, tokens: Tokens, findings: Findings) -> None:
    """Checks on each chat role: in-process context length; Gemma-style templates behind a server."""
    roles = {
        "simulate.user": params.simulate.user,
        "simulate.assistant": params.simulate.assistant,
        "contrast.contrast": params.contrast.contrast,
        "evaluate.policy": params.evaluate.policy,
        "evaluate.judge": params.evaluate.judge,
    }
    longest = tokens.context + params.simulate.turns * (
        tokens.reply(params.simulate.user) + tokens.reply(params.simulate.assistant) + 4 * tokens.m
    )
    for key, cfg in roles.items():
        if cfg.max_new_tokens < 1:
            findings.error(f"{key}.max_new_tokens", f"must be >= 1, got {cfg.max_new_tokens}")
        if cfg.backend not in ("transformers", "openai"):
            findings.error(f"{key}.backend", f"must be transformers or openai, got {cfg.backend!r}")
            continue
        if cfg.backend == "openai" and not cfg.base_urls:
            findings.error(f"{key}.base_urls", "an openai backend needs at least one base URL")
        if cfg.backend == "openai" and cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            findings.warn(
                f"{key}.api_key_env",
                f"${cfg.api_key_env} is not set here: the stage stops before its first "
                "request unless it is set where it runs (api_key_env: '' for a server without a key)",
            )
        if cfg.backend == "openai" and "gemma" in cfg.model.lower() and cfg.system_role != "fold":
            findings.warn(
                f"{key}.system_role",
                f"{cfg.model}: Gemma chat templates reject the system role (vLLM answers "
                "HTTP 400); set system_role: fold",
            )
        shape = role_shape(cfg)
        if shape and shape.max_position_embeddings and longest + cfg.max_new_tokens > shape.max_position_embeddings:
            findings.warn(
                f"{key}.max_new_tokens",
                f"conversations may reach ~{longest:.0f} tokens plus {cfg.max_new_tokens} "
                f"new ones, beyond {cfg.model}'s {shape.max_position_embeddings} positions",
            )


# ---------------------------------------------------------------- the whole plan


SEED_S = 4.0  # the seed stage (reads and draws; no model): measured 3 to 6 s
PLOTS_S = 5.0  # the plots stage beyond its notebook's overhead (figures from the metrics): measured 15 to 18 s in all


def make_plan(params: Params, assumptions: Assumptions | None = None, params_file: str = "params.yaml") -> dict:
    assumptions = assumptions or Assumptions()
    F = Findings()
    T = Tokens(params, assumptions)
    shape = reward_shape(params, F)
    stages: dict[str, Any] = {"seed": plan_seed(params, F)}
    loads: dict[str, list[Load]] = {}
    stages["heldout"], loads["heldout"] = plan_heldout(params, T, F)
    stages["simulate"], loads["simulate"] = plan_simulate(params, T, F)
    stages["contrast"], loads["contrast"] = plan_contrast(params, T, F)
    stages["train"] = plan_train(params, shape, assumptions, F, T)
    stages["evaluate"] = plan_evaluate(params, shape, assumptions, F, T)
    stages["best_of_n"], loads["best_of_n"] = plan_best_of_n(params, T, shape, assumptions, F)
    check_roles(params, T, F)
    mt = stages["simulate"]["conversation_tokens"]
    if mt > params.train.max_length:
        F.warn(
            "train.max_length",
            f"simulated conversations may reach ~{mt} tokens > train.max_length="
            f"{params.train.max_length}: the oldest turns are dropped (counted in train_metrics.json)",
        )
    hours: dict[str, float | None] = {"seed": SEED_S / 3600}
    for stage, ls in loads.items():
        time_loads(ls, assumptions)
        stages[stage]["generation"] = [ld.as_dict() for ld in ls]
        hours[stage] = None if any(ld.hours is None for ld in ls) else sum(ld.hours for ld in ls)
    tr = stages["train"].get("variants", {})
    hours["train"] = (
        None if any(v["hours"] is None for v in tr.values()) or not tr else sum(v["hours"] for v in tr.values())
    )
    hours["evaluate"] = stages["evaluate"].get("hours")
    if hours["best_of_n"] is not None and "rm_hours" in stages["best_of_n"]:
        hours["best_of_n"] += stages["best_of_n"]["rm_hours"]
    hours["plots"] = PLOTS_S / 3600
    # each stage notebook starts a kernel, imports, loads its models and draws its figures (per variant)
    notebooks = {"train": len(params.train.variants), "evaluate": len(params.train.variants)}
    for stage in ("heldout", "simulate", "contrast", "train", "evaluate", "best_of_n", "plots"):
        if hours.get(stage) is not None:
            hours[stage] += notebooks.get(stage, 1) * assumptions.stage_overhead_s / 3600
    order = ("seed", "heldout", "simulate", "contrast", "train", "evaluate", "best_of_n", "plots")
    hours = {k: hours[k] for k in order if k in hours}
    total = None if any(h is None for h in hours.values()) else sum(hours.values())
    return {
        "params_file": str(params_file),
        "ok": not F.errors,
        "errors": F.errors,
        "warnings": F.warnings,
        "assumptions": dataclasses.asdict(assumptions),
        "stages": stages,
        "hours": hours,
        "total_hours": total,
        "requests": sum(ld.requests for ls in loads.values() for ld in ls),
    }


# ---------------------------------------------------------------- report


def _n(x: Any, digits: int = 0) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{round(x):,}"


def _h(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:.2f}" if x >= 0.01 else "<0.01"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def render(plan: dict) -> str:
    st = plan["stages"]
    lines = [f"Plan for {plan['params_file']}: " + ("OK" if plan["ok"] else f"{len(plan['errors'])} error(s)"), ""]
    rows = []
    for stage in ("heldout", "simulate", "contrast", "best_of_n"):
        for g in st[stage].get("generation", []):
            rows.append(
                [
                    stage,
                    g["role"],
                    g["backend"],
                    _n(g["requests"]),
                    _n(g["prompt_tokens"]),
                    _n(g["generated_tokens"]),
                    _h(g["hours"]),
                ]
            )
    lines += ["Generation (token counts are upper bounds unless --assume reply_fill/context_fill < 1)"]
    lines += _table(rows, ["stage", "role", "backend", "requests", "prompt tok", "gen tok", "hours"])
    tr = st["train"]
    if "memory" in tr:
        mem = tr["memory"]
        shape = tr["shape"]
        lines += [
            "",
            f"Reward model: {tr['backbone']} ({shape['params'] / 1e9:.2f}B params, {shape['layers']} layers, "
            f"context {shape['context']}; {shape['config']}) on {tr['device']} in {tr['dtype']}, at {tr['rate']}",
        ]
        rows = [
            [
                v,
                "+".join(d["kinds"]),
                _n(d["pairs"]),
                _n(d["steps"]),
                _n(d["pairs_per_step"]),
                _n(d["epochs_over_data"], 2),
                _n(d["seeds"]),
                _n(d["tokens"] / 1e6 if d["tokens"] is not None else None, 1),
                _h(d["hours"]),
            ]
            for v, d in tr["variants"].items()
        ]
        lines += _table(
            rows, ["variant", "kinds", "pairs (<=)", "steps", "pairs/step", "passes", "seeds", "M tokens (<=)", "hours"]
        )
        lines.append(("LoRA" if tr["lora"] else "full fine-tuning") + f" learning rate {tr['learning_rate']:g}")
        g = mem["gb"]
        mb = mem["micro_batch"]
        lines += [
            "",
            f"Training memory per GPU, GB (micro-batch {mb['sequences']} sequences x {mb['max_length']} tokens, "
            f"{mem['attention']} attention; {mem['optimizer']})",
        ]
        rows = [
            ["weights", f"{mem['dtype']}", f"{g['weights']:.1f}", f"{g['weights']:.1f}"],
            ["trainable state", "", f"{g['trainable_state']:.1f}", f"{g['trainable_state']:.1f}"],
            ["activations", "", f"{g['activations_checkpointing']:.1f}", f"{g['activations_no_checkpointing']:.1f}"],
            ["overhead", "", f"{g['overhead']:.1f}", f"{g['overhead']:.1f}"],
            ["total", "", f"{g['total_checkpointing']:.1f}", f"{g['total_no_checkpointing']:.1f}"],
        ]
        lines += _table(rows, ["", "", "checkpointing on", "off"])
        fits = plan["assumptions"]["gpu_memory_gb"]
        lines.append(
            f"gradient checkpointing: {'on' if mem['gradient_checkpointing'] else 'off'} -> {mem['total_gb']:.1f} GB "
            + (
                f"({'fits' if mem['total_gb'] <= fits else 'does NOT fit'} one {fits:.0f} GB GPU)"
                if tr["device"] == "gpu"
                else "(CPU)"
            )
        )
    ev, bon = st["evaluate"], st["best_of_n"]
    if "memory" in ev:
        m = ev["memory"]
        lines += [
            "",
            f"Scoring: {_n(sum(ev['conversations_scored_per_model'].values()))} conversations for each of "
            f"{ev['models']} models "
            f"({', '.join(f'{k} {v:,}' for k, v in ev['conversations_scored_per_model'].items())}), "
            f"{m['dtype']}, batch {m['batch']} x {m['max_length']}: {m['total_gb']:.1f} GB, {_h(ev['hours'])} h",
        ]
    early = ev.get("early_turn_items")
    if early:
        lines += [
            "",
            f"Early-turn items (swap at distance >= 2, plus held-out MUSIC pairs): {_n(early['total'])} "
            f"(swap {_n(early['swap'])}; quality twins, reported apart: {_n(early['quality'])}); assumes:",
        ]
        lines += [f"  - {note}" for note in early["assumes"]]
    lines += [
        "",
        f"Best-of-N: {bon['prompts']} prompts from {bon['source']} (available: {_n(bon.get('available'))}), "
        f"N in {bon['ns']}, {bon.get('turns', '?')} turns ({bon.get('turns_from_source', '?')} from the source, "
        f"{bon.get('turns_simulated', '?')} simulated), {bon.get('rm_seeds', '?')} seed pair(s) of RMs; "
        f"RM scorings {_n(bon.get('rm_scorings'))}"
        + (f", one RM at a time: {bon['memory']['total_gb']:.1f} GB" if "memory" in bon else ""),
    ]
    hrs = plan["hours"]
    lines += [
        "",
        "Hours by stage: "
        + ", ".join(f"{k} {_h(v)}" for k, v in hrs.items())
        + f"; total {_h(plan['total_hours'])} ({_n(plan['requests'])} generation requests)",
    ]
    a = plan["assumptions"]
    cal = plan.get("calibration") or {}
    lines += [
        "Time model (--assume NAME=VALUE overrides any): in-process CPU work at "
        f"{a['cpu_prefill_tok_s']:,.0f} prefill tok/s, {a['cpu_decode_step_s']:.3f} s per decode step of 8 rows "
        f"({a['cpu_decode_step1_s']:.3f} s of 1), RM layers {a['cpu_layer_forward_tok_s']:,.0f} tok/s forward / "
        f"{a['cpu_layer_train_tok_s']:,.0f} tok/s LoRA training, {a['stage_overhead_s']:g} s per stage notebook: "
        + (cal.get("source") or "reference speeds of a fresh clone's make run on 2 cores (not this machine)"),
        f"  typical sizes (time only): seed context {a['typical_context_fill']:g}, next request "
        f"{a['typical_next_user_fill']:g}, replies {a['typical_reply_fill']:g}, whole conversations "
        f"{a['typical_conversation_fill']:g} of their limits; Best-of-N later contexts "
        f"{a['bon_distinct_context_share']:g}, games judged {a['bon_judged_share']:g}",
        f"Assumed, not measured here: server {a['server_prefill_tok_s']:,.0f}/{a['server_decode_tok_s']:,.0f} "
        f"prefill/decode tok/s per replica; GPU {a['gpu_tflops']:g} TFLOP/s, {a['gpu_memory_gb']:g} GB "
        f"(README: Running at paper scale); {a['chars_per_token']:g} chars/token; token counts: reply_fill "
        f"{a['reply_fill']:g}, context_fill {a['context_fill']:g}",
    ]
    for w in plan["warnings"]:
        lines.append(f"warning [{w['key']}]: {w['message']}")
    for e in plan["errors"]:
        lines.append(f"ERROR [{e['key']}]: {e['message']}")
    return "\n".join(lines)


def parse_assumptions(items: list[str]) -> Assumptions:
    A = Assumptions()
    types = {f.name: f.type for f in dataclasses.fields(Assumptions)}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"--assume {item!r}: expected NAME=VALUE with NAME one of {', '.join(types)}")
        cast = {"float": float, "int": int, "str": str}[str(types[name])]
        setattr(A, name, cast(value))
    return A


CALIBRATED_FIELDS = {  # Assumptions field <- calibration key (music.pipeline.calibrate)
    "cpu_prefill_tok_s": "prefill_tok_s",
    "cpu_layer_forward_tok_s": "layer_forward_tok_s",
    "cpu_layer_train_tok_s": "layer_train_tok_s",
}


def apply_calibration(assumptions: Assumptions, calibration: dict, keep: set[str]) -> dict:
    """Measured speeds of this machine into `assumptions` (fields named in `keep`, set by --assume, stay)."""
    for name, key in CALIBRATED_FIELDS.items():
        if name not in keep and calibration.get(key):
            setattr(assumptions, name, float(calibration[key]))
    steps = calibration.get("decode_step_s") or {}
    if "cpu_decode_step_s" not in keep and steps.get("8"):
        assumptions.cpu_decode_step_s = float(steps["8"])
    if "cpu_decode_step1_s" not in keep and steps.get("1"):
        assumptions.cpu_decode_step1_s = float(steps["1"])
    return {
        "source": f"measured on this machine (calibration {calibration.get('key')}, {calibration.get('measured_at')})",
        "key": calibration.get("key"),
        "identity": calibration.get("identity"),
    }


def compare_main(params_file: str, plan_path: Path) -> int:
    from music.pipeline.timings import compare, measured, render_comparison

    if not plan_path.exists():
        print(f"no plan at {plan_path}: `make plan` (or python -m music.pipeline.plan) writes it before a run")
        return 1
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    params = load_params(params_file)
    reports = getattr(params.paths, "reports", None) or "reports"
    rows = compare(plan, measured(reports))
    print(f"Planned ({plan_path}) vs measured ({Path(reports) / 'timings'}), per stage:")
    print(render_comparison(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file or profile (default: params.yaml)")
    ap.add_argument("--out", default="outputs/plan.json", help="where to write the plan as JSON")
    ap.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE", help="override an assumption")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine first when no calibration is cached (a short probe; music.pipeline.calibrate)",
    )
    ap.add_argument("--reference", action="store_true", help="ignore a cached calibration: the reference speeds")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="print the plan in --out against the stage timings the last run recorded ({paths.reports}/timings)",
    )
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
    except DataError as exc:  # a bad value: the config names the section and key
        print(
            f"ERROR [{exc.source.removeprefix(str(args.params) + '.')}.{exc.field}]: {exc.problem}"
            if exc.field
            else f"ERROR: {exc}"
        )
        return 1
    if args.compare:
        return compare_main(args.params, Path(args.out))
    assumptions = parse_assumptions(args.assume)
    calibration = None
    if not args.reference:
        from music.pipeline import calibrate

        cache = params.paths.cache
        data = calibrate.calibrate(cache) if args.calibrate else calibrate.load_cached(cache)
        if data is not None:
            calibration = apply_calibration(assumptions, data, {a.partition("=")[0] for a in args.assume})
    plan = make_plan(params, assumptions, args.params)
    if calibration is not None:
        plan["calibration"] = calibration
    print(render(plan))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nplan written to {out}")
    return 0 if plan["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
