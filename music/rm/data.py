"""Reward-model data: pairs in, token ids out.

- Rendering uses the backbone's own chat template in one step (apply_chat_template(tokenize=True)):
  rendering to text and tokenizing again adds a second BOS on templates that write one (https://github.com/allenai/reward-bench/issues/164).
- Length: nothing is dropped silently (TRL's RewardTrainer drops over-long pairs:
  https://github.com/huggingface/trl/issues/2488). An over-long conversation first loses its oldest whole turns
  (the system prompt and the last user+assistant turn stay), then tokens from the left of what follows the system
  prompt. Each rule's use is counted per pair. A conversation no truncation can fix stops with a DataError naming
  the pair.
- Batching groups pairs of similar length (less padding), in a deterministic order per (seed, epoch).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from music.chat.system_role import fold_system, template_accepts_system
from music.errors import DataError
from music.schema import PreferencePair
from music.store import load_records

MUSIC_KIND = "music"
# The control arm's pairs: the MUSIC pairs cut right after the divergence turn (music_cut_pair), derived
# from {pairs}/music_{split} when loaded; no generation, the same pairs and the same MUSIC subset per seed.
MUSIC_CUT_KIND = "music_cut"
MUSIC_KINDS = (MUSIC_KIND, MUSIC_CUT_KIND)  # capped together by train.music_ratio (mix_pairs)


# ---------------------------------------------------------------- pairs in


def as_pairs(data: Any, source: str, *, allow_empty: bool = False) -> list[PreferencePair]:
    """A Dataset, a list of PreferencePair or a list of TRL-format dicts -> validated PreferencePairs."""
    if data is None:
        raise DataError(source, "-", None, "no preference pairs (got None)")
    pairs = []
    for i, item in enumerate(data):
        rec = item.to_record() if isinstance(item, PreferencePair) else item
        pairs.append(PreferencePair.from_record(rec, source=source, record=_record_name(rec, i)))
    if not pairs and not allow_empty:
        raise DataError(source, "-", None, "no preference pairs")
    return pairs


def _record_name(rec: Any, i: int) -> str:
    pid = rec.get("pair_id") if isinstance(rec, dict) else None
    return f"{i} (pair_id {pid})" if pid is not None else str(i)


def load_variant_pairs(pairs_dir: str | Path, kinds: Iterable[str], split: str = "train") -> dict[str, Any]:
    """The saved pair datasets {pairs_dir}/{kind}_{split}, as records, per kind; `music_cut` is derived from
    {pairs_dir}/music_{split} (music_cut_pair on every pair)."""
    out: dict[str, Any] = {}
    for kind in kinds:
        if kind == MUSIC_CUT_KIND:
            src = Path(pairs_dir) / f"{MUSIC_KIND}_{split}"
            out[kind] = [music_cut_pair(p).to_record() for p in as_pairs(load_records(src), source=str(src))]
        else:
            out[kind] = load_records(Path(pairs_dir) / f"{kind}_{split}")
    return out


def _reply_end(conv: list[dict], start: int) -> int:
    """Index just past the first assistant message at or after `start`."""
    return next(i + 1 for i in range(start, len(conv)) if conv[i]["role"] == "assistant")


def music_cut_pair(pair: PreferencePair) -> PreferencePair:
    """The control arm's pair: a MUSIC pair cut right after the divergence turn, so the two sides share the
    history and differ in the last exchange only (the same contrastive replies, no multi-turn structure).

    The divergence is found from the messages (the first one that differs), so the cut holds whatever the
    metadata says; each side keeps everything up to and including the assistant reply of that turn.
    """
    c, r = pair.chosen, pair.rejected
    first = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), None)
    pid = pair.meta.get("pair_id")
    if first is None:
        raise DataError(
            "music pairs",
            pid if pid is not None else "-",
            "chosen",
            "chosen and rejected never differ (or one is a prefix of the other): no divergence to cut at",
        )
    chosen, rejected = c[: _reply_end(c, first)], r[: _reply_end(r, first)]
    meta = {**pair.meta, "kind": MUSIC_CUT_KIND, "turns_after_divergence": 0, "cut_from": pid}
    return PreferencePair(chosen=chosen, rejected=rejected, meta=meta)


def mix_pairs(
    pairs_by_kind: dict[str, Any], kinds: list[str], music_ratio: float, seed: int
) -> tuple[list[PreferencePair], dict[str, int]]:
    """All pairs of the non-MUSIC kinds, plus MUSIC pairs up to music_ratio per such pair.

    The MUSIC subset is a deterministic draw (seed); returns the pairs and the count per kind.
    """
    if not kinds:
        raise DataError("train.variants", "-", None, "a variant needs at least one kind of pairs")
    chosen: dict[str, list[PreferencePair]] = {}
    for kind in kinds:
        if kind not in pairs_by_kind:
            raise DataError(
                "train pairs", "-", kind, f"no pairs given for kind {kind!r} (have {sorted(pairs_by_kind)})"
            )
        chosen[kind] = as_pairs(pairs_by_kind[kind], source=f"pairs[{kind}]")
    n_other = sum(len(v) for k, v in chosen.items() if k not in MUSIC_KINDS)
    for kind in (k for k in MUSIC_KINDS if k in chosen and n_other):  # music and music_cut: the same draw
        cap = max(0, round(music_ratio * n_other))
        music = chosen[kind]
        order = list(range(len(music)))
        random.Random(f"music-mix-{seed}").shuffle(order)
        chosen[kind] = [music[i] for i in sorted(order[:cap])]
    mixed = [p for kind in kinds for p in chosen[kind]]
    if not mixed:
        raise DataError(
            "train pairs", "-", None, f"no pairs left after mixing kinds {kinds} (music_ratio={music_ratio})"
        )
    return mixed, {kind: len(chosen[kind]) for kind in kinds}


# ---------------------------------------------------------------- rendering and truncation


def render_ids(tokenizer, conv: list[dict]) -> list[int]:
    """Token ids of a whole conversation, rendered and tokenized in one step by the chat template.

    A template without a system role (Gemma-2) gets the system text folded into the first user turn.
    """
    if conv and conv[0]["role"] == "system" and not template_accepts_system(tokenizer):
        conv = fold_system(conv)
    out = tokenizer.apply_chat_template(conv, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out  # transformers 5 returns a BatchEncoding
    return list(ids)


def split_turns(conv: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """(system messages, turns); a turn is a user message and the assistant reply that follows it."""
    system = [m for m in conv[:1] if m["role"] == "system"]
    turns: list[list[dict]] = []
    for msg in conv[len(system) :]:
        if msg["role"] == "user" or not turns:
            turns.append([msg])
        else:
            turns[-1].append(msg)
    return system, turns


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def protected_prefix_len(tokenizer, system: list[dict], ids: list[int]) -> int:
    """Tokens before the first user message's text (system prompt + turn header): never cut."""
    a = render_ids(tokenizer, system + [{"role": "user", "content": "A"}, {"role": "assistant", "content": "A"}])
    b = render_ids(tokenizer, system + [{"role": "user", "content": "B"}, {"role": "assistant", "content": "B"}])
    n = _common_prefix(a, b)
    return _common_prefix(a[:n], ids)


@dataclass
class Fit:
    ids: list[int]
    turns_dropped: int = 0
    tokens_cut: int = 0
    length_before: int = 0


def fit_conversation(
    tokenizer, conv: list[dict], max_length: int, *, source: str, record: object, field_name: str
) -> Fit:
    """Render `conv` within max_length: drop oldest whole turns, then cut tokens from the left."""
    ids = render_ids(tokenizer, conv)
    before = len(ids)
    if before <= max_length:
        return Fit(ids, 0, 0, before)
    system, turns = split_turns(conv)
    dropped = 0
    while len(turns) - dropped > 1:
        dropped += 1
        ids = render_ids(tokenizer, system + [m for t in turns[dropped:] for m in t])
        if len(ids) <= max_length:
            return Fit(ids, dropped, 0, before)
    prefix = protected_prefix_len(tokenizer, system, ids)
    if prefix >= max_length:
        raise DataError(
            source,
            record,
            field_name,
            f"cannot fit in train.max_length={max_length}: the system prompt and turn header alone take "
            f"{prefix} tokens; raise max_length or shorten the system prompt",
        )
    keep = max_length - prefix
    return Fit(ids[:prefix] + ids[-keep:], dropped, len(ids) - max_length, before)


# ---------------------------------------------------------------- encoded pairs and their statistics


@dataclass
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    kind: str
    pair_id: str | None = None

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))

    @property
    def n_tokens(self) -> int:
        return len(self.chosen) + len(self.rejected)


@dataclass
class TruncationStats:
    """How many pairs each length rule touched (a pair counts once per rule, whichever side it hit)."""

    pairs: int = 0
    pairs_untouched: int = 0
    pairs_turns_dropped: int = 0
    pairs_tokens_cut: int = 0
    turns_dropped: int = 0  # over both sides
    tokens_cut: int = 0
    max_length_before: int = 0
    mean_length: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few pair ids that lost turns

    @property
    def share_turns_dropped(self) -> float:
        return self.pairs_turns_dropped / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["share_turns_dropped"] = round(self.share_turns_dropped, 4)
        d["mean_length"] = round(self.mean_length, 1)
        return d


def encode_pairs(
    tokenizer, pairs: list[PreferencePair], max_length: int, source: str = "pairs"
) -> tuple[list[EncodedPair], dict[str, dict]]:
    """Fit every pair in max_length; returns the encoded pairs and truncation stats per kind and 'all'."""
    encoded: list[EncodedPair] = []
    stats: dict[str, TruncationStats] = {"all": TruncationStats()}
    total_len: dict[str, int] = {"all": 0}
    for i, pair in enumerate(pairs):
        pid = pair.meta.get("pair_id")
        kind = str(pair.meta.get("kind", source))
        rec = f"{i} (pair_id {pid})" if pid is not None else i
        c = fit_conversation(tokenizer, pair.chosen, max_length, source=source, record=rec, field_name="chosen")
        r = fit_conversation(tokenizer, pair.rejected, max_length, source=source, record=rec, field_name="rejected")
        enc = EncodedPair(c.ids, r.ids, kind, None if pid is None else str(pid))
        encoded.append(enc)
        for key in ("all", kind):
            s = stats.setdefault(key, TruncationStats())
            total_len[key] = total_len.get(key, 0) + enc.n_tokens
            s.pairs += 1
            s.turns_dropped += c.turns_dropped + r.turns_dropped
            s.tokens_cut += c.tokens_cut + r.tokens_cut
            s.max_length_before = max(s.max_length_before, c.length_before, r.length_before)
            hit_turns = bool(c.turns_dropped or r.turns_dropped)
            hit_tokens = bool(c.tokens_cut or r.tokens_cut)
            s.pairs_turns_dropped += hit_turns
            s.pairs_tokens_cut += hit_tokens
            s.pairs_untouched += not (hit_turns or hit_tokens)
            if hit_turns and len(s.examples) < 5:
                s.examples.append(str(pid if pid is not None else i))
    for key, s in stats.items():
        s.mean_length = total_len[key] / (2 * s.pairs) if s.pairs else 0.0
    return encoded, {k: v.as_dict() for k, v in stats.items()}


# ---------------------------------------------------------------- batching


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group: bool = True, mega_batches: int = 16
) -> list[list[int]]:
    """Batches of indices: shuffled, sorted by length within mega-batches, batch order shuffled.

    Deterministic in (seed, epoch): a str seed makes random.Random hash it with sha512, not hash().
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(f"rm-batches-{seed}-{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group:
        size = batch_size * mega_batches
        idx = [j for s in range(0, len(idx), size) for j in sorted(idx[s : s + size], key=lambda j: -lengths[j])]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_batch(seqs: list[list[int]], pad_id: int, padding_side: str = "right"):
    """(input_ids, attention_mask) LongTensors, padded to the longest sequence.

    >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    >>> pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="left")[0].tolist()
    [[5, 6, 7], [0, 0, 8]]
    """
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        sl = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        ids[row, sl] = torch.tensor(s, dtype=torch.long)
        mask[row, sl] = 1
    return ids, mask


def collate_pairs(batch: list[EncodedPair], pad_id: int):
    """One padded batch: the chosen sides in rows [0, B), the rejected sides in rows [B, 2B).

    >>> batch = [EncodedPair([1, 2], [3], "d"), EncodedPair([4], [5, 6, 7], "music")]
    >>> ids, mask = collate_pairs(batch, pad_id=0)
    >>> ids.tolist()  # chosen of pair 0, chosen of pair 1, rejected of pair 0, rejected of pair 1
    [[1, 2, 0], [4, 0, 0], [3, 0, 0], [5, 6, 7]]
    >>> mask.sum(dim=1).tolist()
    [2, 1, 1, 3]
    """
    return pad_batch([p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
