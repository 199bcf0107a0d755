"""In-process generation with a Hugging Face causal LM: batched, left-padded, seeded.

Prompts are rendered and tokenised in one step by the model's chat template (no double BOS).
Generation stops at the end-of-turn token(s); the pad token is kept distinct from them.
Requests are sorted by prompt length into batches (less padding); each batch is sampled under its
own seed (see music.chat.base), inside torch.random.fork_rng so the caller's RNG is untouched.

With `reuse_kv` (the default), key/value states are reused across calls (music.chat.kv_cache). Each
row's prompt minus its last token is completed in the prefix store: only the tokens after its longest
stored prefix are encoded, in batched waves with explicit positions (rows of one batch that share a
long prefix encode it once). Then the batch is generated from a cache built of those states,
left-padded: the last prompt token of every row is the one new input, positions come from the
attention mask (generate's cumsum), padded cache columns are zeros under a zero mask. Afterwards every
row's prompt + generated tokens are stored. Batches, unit seeds and response-cache keys are those of
the non-reusing path; replies agree with it up to float rounding (tests/test_kv_reuse.py).

Generation uses the configured sampling only: the model's generation_config.json (which transformers would
otherwise fill into every field left unset: a repetition_penalty of 1.05, a top_k, a min_p...) is reduced to its
special token ids at load (plain_generation_defaults). The response-cache identity names the model by content
(music.models.embedded.model_source: a hub commit, or a digest of a local folder's configs and weights), with its
revision, chat template, vocabulary and stop/pad ids, so a model changed in place never reuses old replies.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Iterator, Sequence

from music.chat.base import ChatBackend, ChatReply, Request, SamplingParams, TokenCounts, Unit, template_accepts_system
from music.chat.kv_cache import PrefixKVStore, _common
from music.config import ChatModelConfig
from music.files import dumps_canonical
from music.models import load_causal_lm, load_tokenizer
from music.models.embedded import model_source
from music.schema import validate_conversation
from music.threads import forward_threads

# End-of-turn markers of common chat templates; those present in a vocabulary also stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

_REGISTRY: dict[tuple, tuple[object, object]] = {}
_SOURCES: dict[tuple, dict] = {}  # registry key -> model_source of what was loaded (identified when loading)
_REGISTRY_LOCK = threading.Lock()
_KV_STORES: dict[tuple, PrefixKVStore] = {}

# What of a model's generation_config.json generation keeps: its special tokens. Every other field it sets would be
# filled by transformers into each field our GenerationConfig leaves unset (None), overriding "off".
KEPT_GENERATION_DEFAULTS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def plain_generation_defaults(lm) -> dict:
    """Make `lm.generation_config` hold only its special token ids; returns the fields dropped (those set to other
    than transformers' own defaults), e.g. {"repetition_penalty": 1.05, "top_k": 20}."""
    from transformers import GenerationConfig

    old = lm.generation_config
    neutral = {**GenerationConfig().to_dict(), **getattr(GenerationConfig, "_get_default_generation_params", dict)()}
    dropped = {
        k: v
        for k, v in old.to_dict().items()
        if k not in KEPT_GENERATION_DEFAULTS
        and not k.startswith("_")
        and k not in ("transformers_version", "output_attentions", "output_hidden_states", "use_cache")
        and v is not None
        and v != neutral.get(k)
    }
    kept = {k: getattr(old, k, None) for k in KEPT_GENERATION_DEFAULTS if getattr(old, k, None) is not None}
    lm.generation_config = GenerationConfig(**kept)
    return dropped


def shared_model(model: str, dtype: str = "float32", revision: str | None = None):
    """(model, tokenizer), loaded once per process per (model, dtype, revision): chat roles share weights."""
    key = (model, dtype, revision)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            import torch

            lm = load_causal_lm(model, dtype=dtype, revision=revision)
            tok = load_tokenizer(model, padding_side="left", revision=revision)
            _SOURCES[key] = model_source(model, revision, lm)  # right after loading: what these weights are
            if torch.cuda.is_available():
                lm = lm.to("cuda")
            use_gqa_attention(lm)
            plain_generation_defaults(lm)
            _REGISTRY[key] = (lm, tok)
        return _REGISTRY[key]


def shared_model_source(model: str, dtype: str = "float32", revision: str | None = None) -> dict:
    """model_source of the model shared_model loaded for these arguments (loading it if needed)."""
    shared_model(model, dtype, revision)
    with _REGISTRY_LOCK:
        return _SOURCES[(model, dtype, revision)]


# --- grouped-query attention without copying the keys and values ------------------------------
# transformers' sdpa path repeats every key/value head for each query head it serves (repeat_kv: a full copy
# of the whole cache, per layer, per generated token) whenever an attention mask is given, and generation
# with left padding always gives one. On CPU that copy, not the matrix products, dominated a decoding step
# of SmolLM2-135M (9 query heads, 3 key/value heads) once the conversation was long: each step's cost grew
# with the context (benchmarks/bench_simulation.py --case long-context). PyTorch's own kernel takes the
# grouped heads as they are (enable_gqa) and gives bit-identical results on CPU.
GQA_ATTENTION = "music_sdpa_gqa"


def _gqa_sdpa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' sdpa attention, with grouped heads passed to the kernel instead of repeated (CPU)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (
        groups <= 1
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or kwargs.get("output_attentions", False)
        or key.shape[-1] != value.shape[-1]
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(lm, on: bool = True) -> bool:
    """Switch a causal LM that runs transformers' "sdpa" attention to the grouped-head kernel above (on=False:
    back to "sdpa"). Returns whether the model now uses it; other attention implementations are left alone."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    current = getattr(lm.config, "_attn_implementation", None)
    if current not in ("sdpa", GQA_ATTENTION):
        return False
    if GQA_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(GQA_ATTENTION, _gqa_sdpa_attention)
        AttentionMaskInterface.register(GQA_ATTENTION, sdpa_mask)
    lm.set_attn_implementation(GQA_ATTENTION if on else "sdpa")
    return on


def shared_kv_store(model: str, dtype: str, budget_mb: int, revision: str | None = None) -> PrefixKVStore:
    """The prefix store of a loaded model, shared by its backends; its budget is the largest asked for."""
    key = (model, dtype, revision)
    budget = int(budget_mb) * 2**20
    with _REGISTRY_LOCK:
        store = _KV_STORES.get(key)
        if store is None:
            store = _KV_STORES[key] = PrefixKVStore(budget)
        elif budget > store.budget_bytes:
            store.set_budget(budget)
        return store


def clear_registry() -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
        _SOURCES.clear()
        _KV_STORES.clear()


def reuse_unsupported(lm) -> str | None:
    """Why key/value states of `lm` cannot be reused here (None: they can)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if lm.config.is_encoder_decoder:
        return "encoder-decoder model"
    try:
        layers = DynamicCache(config=lm.config).layers
    except Exception as e:  # noqa: BLE001 - any model whose cache we cannot build is simply not reused
        return f"no dynamic cache ({e})"
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return "not every layer is full attention with a plain dynamic cache (sliding window, recurrent...)"
    return None


def stop_token_ids(tok, lm) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, the generation config's eos, known end-of-turn tokens.

    The pad token is excluded unless it is also the tokenizer's eos (then padding is a stop anyway).
    """
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(lm.generation_config, "eos_token_id", None)
    for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if i is not None:
            ids.add(int(i))
    vocab = tok.get_vocab()
    for t in END_OF_TURN_TOKENS:
        if t in vocab:
            ids.add(int(vocab[t]))
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        ids.discard(int(tok.pad_token_id))
    # A template that opens every turn with the BOS token must not stop on it.
    if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id:
        ids.discard(int(tok.bos_token_id))
    if not ids:
        raise ValueError(f"{tok.name_or_path}: no end-of-turn token found; set the tokenizer's eos token")
    return sorted(ids)


SHARE_MIN = 32  # tokens two rows of a batch must share beyond the store for one to wait (see _complete)


def _length_groups(rows: list[int], lengths: list[int]) -> list[list[int]]:
    """Split rows (longest first) into groups whose padding stays under half of what they compute."""
    groups: list[list[int]] = []
    width = total = 0
    for j, n in sorted(zip(rows, lengths), key=lambda x: -x[1]):
        if groups and (len(groups[-1]) + 1) * width <= 2 * (total + n):
            groups[-1].append(j)
            total += n
        else:
            groups.append([j])
            width = total = n
    return groups


def _place(past, row: int, col: int, segments: list) -> None:
    """Copy segments [layers, 2, heads, n, head_dim] into past[:, :, row, :, col:col + sum(n), :]."""
    for seg in segments:
        past[:, :, row, :, col : col + seg.shape[-2], :] = seg
        col += seg.shape[-2]


def _span(segments: list, a: int, b: int):
    """Tokens [a, b) of the concatenation of segments (copies only what is asked)."""
    import torch

    parts, start = [], 0
    for seg in segments:
        n = seg.shape[-2]
        lo, hi = max(a, start), min(b, start + n)
        if lo < hi:
            parts.append(seg[..., lo - start : hi - start, :])
        start += n
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)


def _growing_layer_class():
    """A DynamicLayer that appends into spare room instead of concatenating (see growing_cache)."""
    global _GrowingLayer
    if _GrowingLayer is None:
        import torch
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            """Keys and values live in a buffer with room for `reserve` more tokens (doubling when full); each
            update writes the new states in place and returns views of the filled part. DynamicLayer's
            torch.cat copies the whole cache for every generated token: O(context) per step, and the dominant
            cost of a decoding step on CPU for a long conversation."""

            reserve = 64

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                buf = getattr(self, "_buf", None)
                n = self.keys.shape[-2] if self.keys.numel() else 0
                if (
                    buf is None
                    or self.keys.data_ptr() != buf[0].data_ptr()
                    or n + key_states.shape[-2] > buf[0].shape[-2]
                ):
                    # (re)start a buffer: first update, someone replaced self.keys, or no room left
                    need = n + key_states.shape[-2]
                    cap = max(need + self.reserve, 2 * n)
                    shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
                    buf = (
                        torch.empty(shape, dtype=key_states.dtype, device=key_states.device),
                        torch.empty(
                            (*value_states.shape[:-2], cap, value_states.shape[-1]),
                            dtype=value_states.dtype,
                            device=value_states.device,
                        ),
                    )
                    if n:
                        buf[0][..., :n, :].copy_(self.keys)
                        buf[1][..., :n, :].copy_(self.values)
                    self._buf = buf
                m = n + key_states.shape[-2]
                buf[0][..., n:m, :].copy_(key_states)
                buf[1][..., n:m, :].copy_(value_states)
                self.keys, self.values = buf[0][..., :m, :], buf[1][..., :m, :]
                return self.keys, self.values

        _GrowingLayer = GrowingLayer
    return _GrowingLayer


_GrowingLayer = None


def growing_cache(cache, config, reserve: int):
    """`cache` (a DynamicCache, or None for an empty one) with each plain DynamicLayer turned into a layer that
    appends in place with room for `reserve` tokens; layers of other kinds (sliding windows...) are kept."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if cache is None:
        cache = DynamicCache(config=config)
    cls = _growing_layer_class()
    layers = []
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            new = cls()
            new.reserve = reserve
            if layer.is_initialized:
                new.lazy_initialization(layer.keys, layer.values)
                new.keys, new.values = layer.keys, layer.values
            layer = new
        layers.append(layer)
    cache.layers = layers
    return cache


class TransformersChat(ChatBackend):
    kind = "transformers"
    unit_label = "batch"

    def __init__(self, cfg: ChatModelConfig, cache=None):
        super().__init__(cfg, cache)
        cfg.validate()
        self.name = f"transformers:{cfg.model}"
        self.lm, self.tok = shared_model(cfg.model, cfg.dtype, cfg.revision)
        self.source = shared_model_source(cfg.model, cfg.dtype, cfg.revision)
        if getattr(self.tok, "chat_template", None) is None:
            raise ValueError(f"{cfg.model}: the tokenizer has no chat template")
        if self.tok.pad_token_id is None:
            raise ValueError(f"{cfg.model}: the tokenizer has no pad token")
        self.stop_ids = stop_token_ids(self.tok, self.lm)
        if cfg.system_role == "auto":  # a template without a system role (Gemma-2) gets it folded in
            self.fold_system = not template_accepts_system(self.tok)
        self.pad_id = int(self.tok.pad_token_id)
        self.tokens = TokenCounts()
        self.kv: PrefixKVStore | None = None
        self.reuse_off_reason = None if cfg.reuse_kv else "reuse_kv is off"
        if cfg.reuse_kv:
            self.reuse_off_reason = reuse_unsupported(self.lm)
            if self.reuse_off_reason is None:
                self.kv = shared_kv_store(cfg.model, cfg.dtype, cfg.kv_cache_mb, cfg.revision)
        self._identity: dict | None = None

    def identity(self) -> dict:
        """The model by content (model_source: no path, no time), its revision and dtype, and what of the tokenizer
        shapes a prompt or ends a reply: chat template, vocabulary, special tokens, stop and pad ids."""
        if self._identity is None:
            tok = self.tok
            vocab = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
            tokenizer = {
                "chat_template": tok.chat_template,
                "vocab": hashlib.sha256(dumps_canonical(vocab).encode("utf-8")).hexdigest(),
                "special": {k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
                "stop_ids": self.stop_ids,
                "pad_id": self.pad_id,
            }
            self._identity = {
                "kind": self.kind,
                "model": self.source,
                "revision": self.cfg.revision,
                "dtype": self.cfg.dtype,
                "tokenizer": hashlib.sha256(dumps_canonical(tokenizer).encode("utf-8")).hexdigest(),
            }
        return self._identity

    def render(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt: template applied and tokenised in one step."""
        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def prepare(self, requests: list[Request], params: SamplingParams) -> None:
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        for r in requests:
            r.payload = self.render(r.messages)
            if limit and len(r.payload) + params.max_new_tokens > limit:
                raise ValueError(
                    f"{self.name}: conversation {r.index} has {len(r.payload)} prompt tokens; "
                    f"with max_new_tokens it exceeds the model's {limit} positions"
                )

    def plan(self, requests: list[Request]) -> list[list[int]]:
        # Longest first (memory problems show up at once), ties by input position: deterministic.
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].payload), i))
        bs = self.cfg.batch_size
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    def _generation_config(self, params: SamplingParams, **extra):
        """The sampling asked for and nothing else: every field generate() would fill from the model's own
        generation_config.json is either set here or was dropped at load (plain_generation_defaults)."""
        from transformers import GenerationConfig

        sample = params.temperature > 0
        kw = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            repetition_penalty=params.repetition_penalty,  # 1.0: off, whatever the model's file says
            **extra,
        )
        if sample:  # plain temperature + nucleus sampling, as an OpenAI-compatible server does
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        return GenerationConfig(**kw)

    def run(self, units: list[Unit], params: SamplingParams) -> Iterator[tuple[Unit, list[ChatReply]]]:
        import torch

        gen_cfg = self._generation_config(params, return_dict_in_generate=self.kv is not None)
        device = self.lm.device
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        for unit in units:
            prompts = [r.payload for r in unit.requests]
            with forward_threads():  # the cores other jobs leave idle (music.threads); replies do not depend on it
                if self.kv is not None:
                    rows = self._generate_reusing(prompts, gen_cfg, unit.seed, fork_devices)
                else:
                    ids, mask = self._left_pad(prompts)
                    width = ids.shape[1]
                    with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices):
                        torch.manual_seed(unit.seed)
                        out = self.lm.generate(
                            input_ids=ids.to(device),
                            attention_mask=mask.to(device),
                            generation_config=gen_cfg,
                            **self._cache_kwargs(None, params.max_new_tokens),
                        )
                    rows = out[:, width:].tolist()
                    self.tokens.encoded += sum(len(p) for p in prompts)
            self.tokens.prompt += sum(len(p) for p in prompts)
            self.tokens.generated += sum(self._generated_length(row) for row in rows)
            yield unit, [self._decode(row) for row in rows]

    # --- key/value reuse -----------------------------------------------------------------------------
    def _generated_length(self, tokens: list[int]) -> int:
        stops = set(self.stop_ids)
        return next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))

    @staticmethod
    def _stack(cache, row: int, start: int, stop: int):
        """States of columns [start, stop) of `row` of a DynamicCache: [layers, 2, heads, n, head_dim]."""
        import torch

        return torch.stack(
            [torch.stack([layer.keys[row, :, start:stop], layer.values[row, :, start:stop]]) for layer in cache.layers]
        )

    grow_in_place = True  # generate into a cache that appends in place (growing_cache); False: transformers' own

    def _cache_kwargs(self, cache, max_new_tokens: int) -> dict:
        """generate()'s past_key_values: `cache` (None: empty) as a growing cache, unless grow_in_place is off."""
        if not self.grow_in_place:
            return {} if cache is None else {"past_key_values": cache}
        return {"past_key_values": growing_cache(cache, self.lm.config, max_new_tokens + 1)}

    def _dynamic_cache(self, states):
        """A DynamicCache from [layers, 2, batch, heads, n, head_dim] (None when n == 0)."""
        from transformers import DynamicCache

        if states.shape[-2] == 0:
            return None
        return DynamicCache([(states[i, 0], states[i, 1]) for i in range(states.shape[0])], config=self.lm.config)

    def _complete(self, seqs: list[list[int]]) -> list[list]:
        """States of each token sequence as segments [layers, 2, heads, n, head_dim] (n summing to its
        length), made sure to be in the store; only what follows each one's longest stored prefix is encoded.

        Rows are encoded in batched waves. A row whose remaining tokens share at least SHARE_MIN tokens with
        a row of the current wave waits for the next wave, where it finds them stored: samples of one
        prompt, or conversations under one long system prompt, encode the shared part once.
        """
        out: list[list | None] = [None] * len(seqs)
        pending = list(range(len(seqs)))
        while pending:
            wave, later, matches = [], [], {}
            for j in pending:
                match = self.kv.lookup(seqs[j]) if seqs[j] else None
                if match is None or match.length == len(seqs[j]):
                    out[j] = match.segments if match else []
                elif any(_common(seqs[i], seqs[j]) >= match.length + SHARE_MIN for i in wave):
                    later.append(j)
                else:
                    wave.append(j)
                    matches[j] = match
            for group in _length_groups(wave, [len(seqs[j]) - matches[j].length for j in wave]):
                for j, states in zip(group, self._encode([seqs[j] for j in group], [matches[j] for j in group])):
                    out[j] = states
            pending = later
        return out  # type: ignore[return-value]

    def _encode(self, seqs: list[list[int]], matches: list) -> list[list]:
        """One batched forward (no vocabulary projection) of each sequence's tokens after its stored prefix.

        Layout: the stored states right-aligned in the first P = max(stored) columns, then the new tokens
        right-aligned in the last N = max(new) columns; the zero columns in between are masked out, positions
        are given explicitly. Returns each row's segments (stored ones, then the new states), after storing.
        """
        import torch

        device = self.lm.device
        done = [m.length for m in matches]
        new = [len(q) - d for q, d in zip(seqs, done)]
        P, N, b = max(done), max(new), len(seqs)
        ids = torch.full((b, N), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, P + N), dtype=torch.long)
        positions = torch.zeros((b, N), dtype=torch.long)
        for row, (q, d, n) in enumerate(zip(seqs, done, new)):
            ids[row, N - n :] = torch.tensor(q[d:], dtype=torch.long)
            mask[row, P - d : P] = 1
            mask[row, P + N - n :] = 1
            positions[row, N - n :] = torch.arange(d, d + n)
        with torch.inference_mode():
            cache = None
            if P:
                some = next(m.segments[0] for m in matches if m.segments)
                layers, _, heads, _, dim = some.shape
                past = torch.zeros((layers, 2, b, heads, P, dim), dtype=some.dtype, device=device)
                for row, (m, d) in enumerate(zip(matches, done)):
                    _place(past, row, P - d, m.segments)
                cache = self._dynamic_cache(past)
                del past
            res = self.lm.base_model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                use_cache=True,
            )
            fresh = [self._stack(res.past_key_values, row, P + N - n, P + N) for row, n in enumerate(new)]
        self.tokens.encoded += sum(new)
        out = []
        for q, m, d, f in zip(seqs, matches, done, fresh):
            segments = [*m.segments, f]
            self.kv.insert(q, lambda a, z, segments=segments: _span(segments, a, z))
            out.append(segments)
        return out

    def _reused_batch(self, prompts: list[list[int]]):
        """(input_ids, attention_mask, cache): left-padded prompts, and a cache holding every prompt token but
        the last, taken from the store (see _complete for what gets encoded).

        Cache column c of row r holds the token at column c of input_ids (each row right-aligned); padded
        columns are zeros under a zero mask; generate() feeds the last column and takes positions from the
        mask's cumulative sum, so every row sees its own tokens at positions 0..len-1.
        """
        import torch

        device = self.lm.device
        segments = self._complete([p[:-1] for p in prompts])
        ids, mask = self._left_pad(prompts)
        width = ids.shape[1]
        some = next((row[0] for row in segments if row), None)
        cache = None
        if some is not None:  # [layers, 2, batch, heads, width - 1, head_dim]
            layers, _, heads, _, dim = some.shape
            with torch.inference_mode():
                past = torch.zeros((layers, 2, len(prompts), heads, width - 1, dim), dtype=some.dtype, device=device)
                for row, (p, segs) in enumerate(zip(prompts, segments)):
                    _place(past, row, width - len(p), segs)
                cache = self._dynamic_cache(past)
        self.tokens.encoded += len(prompts)  # every row's last prompt token
        return ids.to(device), mask.to(device), cache

    def _store_rows(self, cache, width: int, sequences: list[tuple[int, list[int]]]) -> None:
        """Store each row's (prompt length, tokens): row r's first token is at column width - prompt length."""
        for row, (prompt_len, seq) in enumerate(sequences):
            first = width - prompt_len
            self.kv.insert(seq, lambda a, b, row=row, first=first: self._stack(cache, row, first + a, first + b))

    def _generate_reusing(self, prompts: list[list[int]], gen_cfg, seed: int, fork_devices: list) -> list[list[int]]:
        import torch

        ids, mask, cache = self._reused_batch(prompts)
        width = ids.shape[1]
        with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            out = self.lm.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=gen_cfg,
                **self._cache_kwargs(cache, gen_cfg.max_new_tokens),
            )
        rows = out.sequences[:, width:].tolist()
        # Tokens that went through the model: each prompt, then the generated ones up to the stop token (the
        # call's last generated token is never fed back).
        self._store_rows(
            out.past_key_values,
            width,
            [(len(p), p + gen[: min(self._generated_length(gen), len(gen) - 1)]) for p, gen in zip(prompts, rows)],
        )
        return rows

    def next_token_logits(self, prompts: list[list[int]]):
        """Logits of the token after each prompt [batch, vocab], as generate's first step computes them:
        one left-padded batch, positions from the attention mask; with reuse_kv from stored states."""
        import inspect

        import torch

        last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.lm.forward).parameters else {}
        if self.kv is None:
            ids, mask = self._left_pad(prompts)
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            with torch.inference_mode():
                out = self.lm(
                    input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **last
                )
            self.tokens.encoded += sum(len(p) for p in prompts)
            return out.logits[:, -1, :]
        ids, mask, cache = self._reused_batch(prompts)
        with torch.inference_mode():
            out = self.lm(
                input_ids=ids[:, -1:],
                attention_mask=mask,
                past_key_values=cache,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                use_cache=True,
                **last,
            )
        self._store_rows(out.past_key_values, ids.shape[1], [(len(p), p) for p in prompts])
        return out.logits[:, -1, :]

    def _left_pad(self, prompts: list[list[int]]):
        """(input_ids, attention_mask) with every prompt right-aligned, pad on the left."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        return ids, mask

    def option_prompts(
        self, conversations: list[list[dict]], options: Sequence[str], prefix: str = ""
    ) -> tuple[list[int], list[list[int]]]:
        """(each option's first token after `prefix`, each conversation rendered for a reply that starts with
        `prefix`): what constrained choice and label log-probabilities score."""
        prefix_ids = self.tok.encode(prefix, add_special_tokens=False) if prefix else []
        first = [self.tok.encode(prefix + o, add_special_tokens=False)[len(prefix_ids)] for o in options]
        if len(set(first)) != len(first):
            raise ValueError(f"options {list(options)} do not differ in their first token after {prefix!r}")
        prompts = [
            self.render(
                self.prepare_messages(
                    validate_conversation(c, source=f"{self.name} request", record=i, field_name=f"conversations[{i}]")
                )
            )
            + prefix_ids
            for i, c in enumerate(conversations)
        ]
        return first, prompts

    def choose(
        self,
        conversations: list[list[dict]],
        options: list[str],
        *,
        prefix: str = "",
        suffix: str = "",
        seed: int = 0,
        max_new_tokens: int | None = None,
        desc: str | None = None,
    ) -> list[ChatReply]:
        """Constrained decoding: the reply is prefix + the option whose first token is most likely + suffix.

        A small model rarely writes a parseable verdict on its own; scoring the options after the
        prefix always yields one (one forward pass per conversation, batched, no sampling). With
        reuse_kv each conversation is encoded from its longest stored prefix (a judge prompt shared by
        every item is encoded once).
        """
        import torch
        from tqdm.auto import tqdm

        first, prompts = self.option_prompts(conversations, options, prefix)
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        replies: list[ChatReply | None] = [None] * len(prompts)
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(order), bs), desc=desc or f"{self.name} choose", unit="batch"):
            rows = order[start : start + bs]
            self.tokens.prompt += sum(len(prompts[i]) for i in rows)
            with forward_threads():  # music.threads
                if self.kv is not None:  # each row from its longest stored prefix
                    logits = self.next_token_logits([prompts[i] for i in rows])
                else:  # unchanged from before reuse (positions not taken from the mask: RoPE only sees differences)
                    ids, mask = self._left_pad([prompts[i] for i in rows])
                    with torch.inference_mode():
                        logits = self.lm(
                            input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device)
                        ).logits[:, -1, :]
                    self.tokens.encoded += sum(len(prompts[i]) for i in rows)
            picks = logits[:, first].argmax(dim=-1).tolist()
            for r, i in enumerate(rows):
                replies[i] = ChatReply(text=f"{prefix}{options[picks[r]]}{suffix}", finish_reason="stop")
        return replies  # type: ignore[return-value]

    def _decode(self, tokens: list[int]) -> ChatReply:
        stops = set(self.stop_ids)
        cut = next((i for i, t in enumerate(tokens) if t in stops), None)
        # generate() only ends a row early at a stop token, so no stop token means the budget ran out.
        body, reason = (tokens, "length") if cut is None else (tokens[:cut], "stop")
        text = self.tok.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        return ChatReply(text=text, finish_reason=reason)
