"""In-process generation with a Hugging Face causal LM: batched, left-padded, seeded.

Prompts are rendered and tokenised in one step by the model's chat template (no double BOS).
Generation stops at the end-of-turn token(s); the pad token is kept distinct from them.
Requests are sorted by prompt length into batches (less padding); each batch is sampled under its
own seed (see music.chat.base), inside torch.random.fork_rng so the caller's RNG is untouched.
"""

from __future__ import annotations

import threading
from typing import Iterator

from music.chat.base import ChatBackend, ChatReply, Request, SamplingParams, Unit, template_accepts_system
from music.config import ChatModelConfig
from music.models import load_causal_lm, load_tokenizer
from music.schema import validate_conversation

# End-of-turn markers of common chat templates; those present in a vocabulary also stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

_REGISTRY: dict[tuple[str, str], tuple[object, object]] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_model(model: str, dtype: str = "float32"):
    """(model, tokenizer), loaded once per process per (model, dtype): chat roles share weights."""
    key = (model, dtype)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            import torch

            lm = load_causal_lm(model, dtype=dtype)
            if torch.cuda.is_available():
                lm = lm.to("cuda")
            _REGISTRY[key] = (lm, load_tokenizer(model, padding_side="left"))
        return _REGISTRY[key]


def clear_registry() -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


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


class TransformersChat(ChatBackend):
    kind = "transformers"
    unit_label = "batch"

    def __init__(self, cfg: ChatModelConfig, cache=None):
        super().__init__(cfg, cache)
        cfg.validate()
        self.name = f"transformers:{cfg.model}"
        self.lm, self.tok = shared_model(cfg.model, cfg.dtype)
        if getattr(self.tok, "chat_template", None) is None:
            raise ValueError(f"{cfg.model}: the tokenizer has no chat template")
        if self.tok.pad_token_id is None:
            raise ValueError(f"{cfg.model}: the tokenizer has no pad token")
        self.stop_ids = stop_token_ids(self.tok, self.lm)
        if cfg.system_role == "auto":  # a template without a system role (Gemma-2) gets it folded in
            self.fold_system = not template_accepts_system(self.tok)
        self.pad_id = int(self.tok.pad_token_id)

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.cfg.model, "dtype": self.cfg.dtype}

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

    def _generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        sample = params.temperature > 0
        kw = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        if sample:  # plain temperature + nucleus sampling, as an OpenAI-compatible server does
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.repetition_penalty != 1.0:
            kw.update(repetition_penalty=params.repetition_penalty)
        return GenerationConfig(**kw)

    def run(self, units: list[Unit], params: SamplingParams) -> Iterator[tuple[Unit, list[ChatReply]]]:
        import torch

        gen_cfg = self._generation_config(params)
        device = self.lm.device
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        for unit in units:
            ids, mask = self._left_pad([r.payload for r in unit.requests])
            width = ids.shape[1]
            with torch.inference_mode(), torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(unit.seed)
                out = self.lm.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
                )
            yield unit, [self._decode(row) for row in out[:, width:].tolist()]

    def _left_pad(self, prompts: list[list[int]]):
        """(input_ids, attention_mask) with every prompt right-aligned, pad on the left."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        return ids, mask

    def choose(self, conversations: list[list[dict]], options: list[str], *, prefix: str = "", suffix: str = "",
               seed: int = 0, max_new_tokens: int | None = None, desc: str | None = None) -> list[ChatReply]:
        """Constrained decoding: the reply is prefix + the option whose first token is most likely + suffix.

        A small model rarely writes a parseable verdict on its own; scoring the options after the
        prefix always yields one (one forward pass per conversation, batched, no sampling).
        """
        import torch
        from tqdm.auto import tqdm

        first = [self.tok.encode(prefix + o, add_special_tokens=False)[len(self.tok.encode(prefix, add_special_tokens=False))]
                 for o in options]
        if len(set(first)) != len(first):
            raise ValueError(f"options {options} do not differ in their first token after {prefix!r}")
        prefix_ids = self.tok.encode(prefix, add_special_tokens=False) if prefix else []
        prompts = [self.render(self.prepare_messages(validate_conversation(
                       c, source=f"{self.name} request", record=i, field_name=f"conversations[{i}]"))) + prefix_ids
                   for i, c in enumerate(conversations)]
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        replies: list[ChatReply | None] = [None] * len(prompts)
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(order), bs), desc=desc or f"{self.name} choose", unit="batch"):
            rows = order[start : start + bs]
            ids, mask = self._left_pad([prompts[i] for i in rows])
            with torch.inference_mode():
                logits = self.lm(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device)).logits[:, -1, :]
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
