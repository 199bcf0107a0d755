"""Seed contexts: random prefixes of whole turns of real conversations, split by source conversation.

A seed is the first k user/assistant turns of a real conversation (1 <= k <= max_context_turns), ending
where the user speaks next: the paper's "random segment". The real next turn is kept beside it
(`next_user`, `next_assistant`) for the last-turn pairs D. Train and eval seeds come from disjoint sets
of conversations; the eval side also keeps whole conversations for the multi-turn evaluations.

Disjointness is by *group* of conversations: ShareGPT cuts a long chat into chunks `<id>_0`, `<id>_1`, ...,
so two chunk ids can be one conversation (`base_conversation_id`), and the same chat can sit in the file under
two ids (music.content_keys: conversations that open with the same exchange are one group). A group gives at most
one conversation to each split and never one to both; the whole held-out conversations differ in their first
request too (swap donors). Records whose roles are swapped
(the "user" writes like the assistant: ShareGPT has a few) are dropped and counted.
"""

from __future__ import annotations

import collections
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from music.config import Params, SeedConfig
from music.content_keys import opening_key, request_key
from music.errors import DataError
from music.files import atomic_path, read_jsonl, write_json, write_jsonl
from music.schema import validate_conversation
from music.sources import RealConversation, load_conversations
from music.sources.records import Skipped
from music.stages import check_variant

_CHUNK_ID = re.compile(r"^(?P<base>.+)_(?P<chunk>\d+)$")
# How an assistant opens a reply; a real user's first message almost never opens this way (measured on
# the 1,626 materialised ShareGPT records: one does, and its roles are swapped throughout).
_ASSISTANT_OPENING = re.compile(
    r"^\s*(?:sure[,!.]|certainly[,!.]|of course[,!.]|absolutely[,!.]|i'd be happy to|i would be happy to"
    r"|i'm sorry,? but|i am sorry,? but|i apologi[sz]e|as an ai|as a language model|(?:hello|hi)[,!] how can i"
    r"|you're welcome|great question)",
    re.I,
)
ROLE_SWAPPED = "roles swapped (the first user message opens like an assistant reply)"
SAME_CONVERSATION = "another chunk of the same conversation, or a conversation with the same opening, was already drawn"
NO_PREFIX = "no feasible prefix within the length limits"
NOT_NEEDED = "not needed (looked at while searching for whole eval conversations)"


def base_conversation_id(conversation_id: str) -> str:
    """The conversation a record belongs to: ShareGPT chunk ids `<id>_<k>` map to `<id>`."""
    m = _CHUNK_ID.match(str(conversation_id))
    return m.group("base") if m else str(conversation_id)


def roles_swapped(messages: list[dict]) -> bool:
    """The stated rule for dropping a record: its first user message opens like an assistant reply."""
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    return bool(_ASSISTANT_OPENING.match(first_user))


SEED_FILES = {
    "train": "train.jsonl",
    "eval": "eval.jsonl",
    "eval_conversations": "eval_conversations.jsonl",
    "dev_conversations": "dev_conversations.jsonl",  # the development split (music.studies.choices)
}


@dataclass
class Seed:
    seed_id: str
    conversation_id: str
    source: str
    split: str
    context: list[dict]
    next_user: str | None
    next_assistant: str | None
    # The real user/assistant turn after the next one ([] when there is none): held-out pairs that differ
    # at the next reply get it appended to both sides, so the difference sits one turn from the end.
    following: list[dict] = field(default_factory=list)

    def to_record(self) -> dict:
        return asdict(self)


def turn_spans(messages: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
    """(leading system messages, [(start, end) index span of each user(+assistant) turn])."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    spans, start = [], len(system)
    for i in range(start, len(messages)):
        if messages[i]["role"] == "user":
            spans.append((i, i + 1))
        else:
            spans[-1] = (spans[-1][0], i + 1)
    return system, spans


def feasible_prefix_lengths(conv: RealConversation, cfg: SeedConfig) -> list[int]:
    """Values of k whose context and real next turn respect the length limits."""
    msgs = conv.messages
    _, spans = turn_spans(msgs)
    out = []
    last = len(spans) - 1 if cfg.require_next_turn else len(spans)
    for k in range(1, min(cfg.max_context_turns, last) + 1):
        context = msgs[: spans[k - 1][1]]
        nxt = msgs[spans[k][0] : spans[k][1]] if k < len(spans) else []
        if context[-1]["role"] != "assistant" or (cfg.require_next_turn and len(nxt) != 2):
            continue
        if any(len(m["content"]) > cfg.max_message_chars for m in context + nxt):
            continue
        if sum(len(m["content"]) for m in context) > cfg.max_context_chars:
            continue
        out.append(k)
    return out


def make_seed(conv: RealConversation, k: int, split: str, max_message_chars: int | None = None) -> Seed:
    msgs = conv.messages
    _, spans = turn_spans(msgs)
    context = msgs[: spans[k - 1][1]]
    nxt = msgs[spans[k][0] : spans[k][1]] if k < len(spans) else []
    next_user = nxt[0]["content"] if nxt else None
    next_assistant = nxt[1]["content"] if len(nxt) > 1 else None
    after = [dict(m) for m in msgs[spans[k + 1][0] : spans[k + 1][1]]] if k + 1 < len(spans) else []
    if len(after) != 2 or any(max_message_chars and len(m["content"]) > max_message_chars for m in after):
        after = []
    return Seed(
        f"{conv.conversation_id}:{k}",
        conv.conversation_id,
        conv.source,
        split,
        [dict(m) for m in context],
        next_user,
        next_assistant,
        after,
    )


def eval_conversation_prefix(conv: RealConversation, cfg: SeedConfig) -> RealConversation | None:
    """A whole held-out conversation for the multi-turn tests: the conversation's longest prefix of whole
    turns with >= 2 assistant turns, every message within max_message_chars and all of them within
    2 * max_context_chars; None when not even its first two turns fit.

    The whole conversation when it fits (the same record as before prefixes were taken). A longer chat cut
    after a turn is still a real conversation up to that point, and swap items only need >= 2 assistant
    turns: cutting more than doubles the chats that qualify in the materialised ShareGPT (173 -> 366).
    """
    msgs = conv.messages
    system, spans = turn_spans(msgs)
    limit, total, end, replies = 2 * cfg.max_context_chars, sum(len(m["content"]) for m in system), None, 0
    for a, b in spans:
        turn = msgs[a:b]
        total += sum(len(m["content"]) for m in turn)
        if (
            turn[-1]["role"] != "assistant"
            or total > limit
            or any(len(m["content"]) > cfg.max_message_chars for m in turn)
        ):
            break
        replies += 1
        end = b
    if end is None or replies < 2:
        return None
    return conv if end == len(msgs) else replace(conv, messages=[dict(m) for m in msgs[:end]])


@dataclass
class SeedSet:
    train: list[Seed]
    eval: list[Seed]
    eval_conversations: list[RealConversation]
    stats: dict
    dev_conversations: list[RealConversation] = field(default_factory=list)


def draw_seeds(conversations: list[RealConversation], cfg: SeedConfig) -> SeedSet:
    """Deterministic for a given cfg.seed and input set (input order does not matter).

    Two passes over one shuffled order. The held-out side first: eval seeds and whole eval
    conversations (>= 2 assistant turns), independent of n_train. Then training seeds from every
    conversation the held-out side did not take (nor any chunk of one it took), from the start of
    the order. On single-turn-heavy sets (Skywork-80K) the search for whole eval conversations runs
    through most of the data; a single pass that held training back until then starved it.
    """
    ids = collections.Counter(c.conversation_id for c in conversations)
    dup = sorted(i for i, n in ids.items() if n > 1)
    if dup:
        raise DataError(
            cfg.path, f"conversation_id {dup[0]!r}", "id", f"appears {ids[dup[0]]} times; ids must be unique"
        )
    pool = sorted(conversations, key=lambda c: c.conversation_id)
    rng = random.Random(cfg.seed)
    rng.shuffle(pool)
    swapped = [roles_swapped(c.messages) for c in pool]
    bases = conversation_groups(pool)
    eval_requests: set[str] = set()  # whole held-out conversations: one per first request (swap donors)
    same_request = 0
    feasible = [feasible_prefix_lengths(c, cfg) for c in pool]
    used: dict[int, str] = {}  # pool index -> split

    evals, eval_convs = [], []
    eval_bases: set[str] = set()
    examined = cut = 0
    for i, conv in enumerate(pool):  # pass 1: the held-out side
        if len(evals) >= cfg.n_eval and len(eval_convs) >= cfg.n_eval_conversations:
            break
        examined = i + 1
        if swapped[i] or bases[i] in eval_bases:
            continue
        if feasible[i] and len(evals) < cfg.n_eval:
            evals.append(make_seed(conv, rng.choice(feasible[i]), "eval", cfg.max_message_chars))
            used[i] = "eval"
        whole = eval_conversation_prefix(conv, cfg) if len(eval_convs) < cfg.n_eval_conversations else None
        if whole is not None and request_key(whole.messages) in eval_requests:
            whole, same_request = None, same_request + 1
        if whole is not None:
            eval_requests.add(request_key(whole.messages))
            eval_convs.append(whole)
            cut += whole is not conv
            used[i] = "eval"
        if i in used:
            eval_bases.add(bases[i])

    train: list[Seed] = []
    train_bases: set[str] = set()
    for i, conv in enumerate(pool):  # pass 2: training seeds from everything else
        if len(train) >= cfg.n_train:
            break
        examined = max(examined, i + 1)
        if swapped[i] or i in used or bases[i] in eval_bases or bases[i] in train_bases or not feasible[i]:
            continue
        train.append(make_seed(conv, rng.choice(feasible[i]), "train", cfg.max_message_chars))
        used[i] = "train"
        train_bases.add(bases[i])

    dev, dev_requests = [], set()  # pass 3: the development split, from what neither side took
    for i, conv in enumerate(pool):
        if len(dev) >= cfg.n_dev_conversations:
            break
        examined = max(examined, i + 1)
        if swapped[i] or i in used or bases[i] in eval_bases or bases[i] in train_bases:
            continue
        whole = eval_conversation_prefix(conv, cfg)
        if whole is None or request_key(whole.messages) in dev_requests:
            continue
        dev.append(whole)
        dev_requests.add(request_key(whole.messages))
        used[i] = "dev"
        train_bases.add(bases[i])  # one conversation per group, and the skip counts below name it

    skipped = collections.Counter()  # conversations examined that no split took, by reason
    for i in range(examined):
        if i in used:
            continue
        if swapped[i]:
            skipped[ROLE_SWAPPED] += 1
        elif bases[i] in eval_bases or bases[i] in train_bases:
            skipped[SAME_CONVERSATION] += 1
        elif not feasible[i]:
            skipped[NO_PREFIX] += 1
        else:
            skipped[NOT_NEEDED] += 1
    if len(train) < cfg.n_train or len(evals) < cfg.n_eval:
        raise DataError(
            cfg.path,
            "-",
            None,
            f"only {len(train)} train / {len(evals)} eval seeds fit the limits "
            f"(asked {cfg.n_train} / {cfg.n_eval}); loosen max_message_chars or max_context_chars",
        )
    train_index = TrainIndex.of(train)
    check_disjoint(
        ((f"eval seed {s.seed_id}", s.conversation_id, s.context) for s in evals),
        train_index,
        source=f"{cfg.path} (drawn seeds)",
    )
    check_disjoint(
        ((f"eval conversation {c.conversation_id}", c.conversation_id, c.messages) for c in eval_convs),
        train_index,
        source=f"{cfg.path} (drawn seeds)",
    )
    held_out = [(s.conversation_id, s.context) for s in evals] + [(c.conversation_id, c.messages) for c in eval_convs]
    for against in (
        train_index,
        TrainIndex(
            frozenset(base_conversation_id(cid) for cid, _ in held_out),
            frozenset(opening_key(m) for _, m in held_out),
        ),
    ):
        check_disjoint(
            ((f"dev conversation {c.conversation_id}", c.conversation_id, c.messages) for c in dev),
            against,
            source=f"{cfg.path} (drawn seeds)",
        )
    stats = {
        "conversations_in_source": len(conversations),
        "conversations_examined": examined,
        "train_seeds": len(train),
        "eval_seeds": len(evals),
        "eval_conversations": len(eval_convs),
        "eval_conversations_missing": max(0, cfg.n_eval_conversations - len(eval_convs)),
        "eval_conversations_cut": cut,  # cut after their last turn within the limits (eval_conversation_prefix)
        "dev_conversations": len(dev),
        "dev_conversations_missing": max(0, cfg.n_dev_conversations - len(dev)),
        "skipped": dict(skipped),
        # conversations of the source that share their opening exchange with one of another id (music.content_keys)
        "content_duplicates": content_duplicates(pool),
        # whole conversations not taken because another one already held out opens with the same request
        "eval_conversations_same_request": same_request,
        "context_turns": dict(
            sorted(collections.Counter(len(turn_spans(s.context)[1]) for s in train + evals).items())
        ),
    }
    return SeedSet(train, evals, eval_convs, stats, dev)


def conversation_groups(conversations: Sequence[RealConversation]) -> list[str]:
    """A group label per conversation: chunks of one chat (`base_conversation_id`) and conversations that open
    with the same exchange (`opening_key`) share one, transitively."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    nodes = [
        (f"id:{base_conversation_id(c.conversation_id)}", f"opening:{opening_key(c.messages)}") for c in conversations
    ]
    for a, b in nodes:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller label wins: the same groups in any input order
    return [find(a) for a, _ in nodes]


def content_duplicates(conversations: Sequence[RealConversation]) -> int:
    """How many conversations open with the same exchange as one of another chat (not counting chunks of one)."""
    by_opening: dict[str, set[str]] = collections.defaultdict(set)
    for c in conversations:
        by_opening[opening_key(c.messages)].add(base_conversation_id(c.conversation_id))
    return sum(1 for c in conversations if len(by_opening[opening_key(c.messages)]) > 1)


@dataclass(frozen=True)
class TrainIndex:
    """What a held-out record must not share with the training seeds: a base conversation id, or an opening
    exchange (music.content_keys; a seed's context starts with its conversation's opening)."""

    bases: frozenset[str]
    openings: frozenset[str]

    @classmethod
    def of(cls, seeds: Iterable[Seed]) -> "TrainIndex":
        seeds = list(seeds)
        return cls(
            frozenset(base_conversation_id(s.conversation_id) for s in seeds),
            frozenset(opening_key(s.context) for s in seeds),
        )


def check_disjoint(
    eval_records: Iterable[tuple[object, object, Sequence[dict] | None]], train: TrainIndex, *, source: str
) -> int:
    """Raise DataError if an evaluation record's conversation is also a training conversation: the same base
    conversation (ShareGPT chunks of one chat are one conversation), or the same opening exchange (a copy of a
    training chat under another id; music.content_keys).

    eval_records: (record, conversation_id, messages) triples, messages from the conversation's start (None: the
    id alone is checked); returns how many were checked.
    """
    n = 0
    for record, cid, messages in eval_records:
        if cid is None:
            raise DataError(source, record, "conversation_id", "missing: cannot check that it is held out")
        if base_conversation_id(str(cid)) in train.bases:
            raise DataError(
                source, record, "conversation_id", f"{cid!r} is (a chunk of) a training conversation (train/eval leak)"
            )
        if messages is not None and opening_key(messages) in train.openings:
            raise DataError(
                source,
                record,
                "messages",
                f"{cid!r} opens with the same exchange as a training conversation (a copy under another id: "
                "train/eval leak)",
            )
        n += 1
    return n


def read_train_index(path: str | Path) -> TrainIndex:
    """The TrainIndex of a training seed file (train.jsonl): every record's conversation_id, and the opening of
    its `context` where the record has one (a file of ids alone is checked by id)."""
    ids = read_conversation_ids(path)
    openings = set()
    if Path(path).stat().st_size:
        for lineno, rec in read_jsonl(path):
            context = rec.get("context")
            if context is not None:
                validate_conversation(context, source=str(path), record=f"line {lineno}", field_name="context")
                openings.add(opening_key(context))
    return TrainIndex(frozenset(base_conversation_id(i) for i in ids), frozenset(openings))


def read_conversation_ids(path: str | Path) -> set[str]:
    """conversation_id of every record of a seed file (train.jsonl, eval.jsonl, eval_conversations.jsonl)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "seed file does not exist (run the seed stage first)")
    ids: set[str] = set()
    if path.stat().st_size == 0:  # a split the profile asked none of (e.g. n_eval_conversations: 0)
        return ids
    for lineno, rec in read_jsonl(path):
        cid = rec.get("conversation_id") if isinstance(rec, dict) else None
        if cid is None:
            raise DataError(path, f"line {lineno}", "conversation_id", "missing field")
        ids.add(str(cid))
    return ids


def write_seed_set(seeds: SeedSet, out_dir: str | Path) -> None:
    """All files or none: the folder is built aside and moved into place."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_jsonl(tmp / SEED_FILES["train"], (s.to_record() for s in seeds.train))
        write_jsonl(tmp / SEED_FILES["eval"], (s.to_record() for s in seeds.eval))
        write_jsonl(tmp / SEED_FILES["eval_conversations"], (c.to_record() for c in seeds.eval_conversations))
        write_jsonl(tmp / SEED_FILES["dev_conversations"], (c.to_record() for c in seeds.dev_conversations))
        write_json(tmp / "stats.json", seeds.stats)


def load_seed_source(cfg: SeedConfig) -> tuple[list[RealConversation], dict]:
    """The source's conversations and what was skipped as malformed (counts per reason, first records); more
    than seed.max_malformed_share of malformed records is a DataError."""
    skipped = Skipped(cfg.path, cfg.max_malformed_share, "seed.max_malformed_share")
    conversations = load_conversations(cfg.source, cfg.path, split=cfg.split, skipped=skipped)
    return conversations, skipped.check()


def run(params: Params, *, variant: str | None = None) -> SeedSet:
    """The seed stage: draw the seeds from params.seed's source and write them to params.paths.seeds."""
    check_variant("seed", variant)
    conversations, malformed = load_seed_source(params.seed)
    seeds = draw_seeds(conversations, params.seed)
    seeds.stats["malformed_records"] = malformed
    write_seed_set(seeds, params.paths.seeds)
    return seeds


def read_seeds(path: str | Path) -> list[Seed]:
    out = []
    for lineno, rec in read_jsonl(path):
        for key in (
            "seed_id",
            "conversation_id",
            "source",
            "split",
            "context",
            "next_user",
            "next_assistant",
            "following",
        ):
            if key not in rec:
                raise DataError(path, f"line {lineno}", key, "missing field")
        rec["context"] = validate_conversation(
            rec["context"], source=str(path), record=f"line {lineno}", field_name="context", must_end_with="assistant"
        )
        if rec["following"] and [m.get("role") for m in rec["following"]] != ["user", "assistant"]:
            raise DataError(path, f"line {lineno}", "following", "must be [] or one user and one assistant message")
        out.append(Seed(**rec))
    return out


def read_conversations(path: str | Path) -> list[RealConversation]:
    """Whole conversations as write_seed_set wrote them (eval_conversations.jsonl, dev_conversations.jsonl); an
    absent or empty file (a split the profile asked none of) gives none."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return []
    out = []
    for lineno, rec in read_jsonl(path):
        for key in ("conversation_id", "source", "messages"):
            if not isinstance(rec, dict) or key not in rec:
                raise DataError(path, f"line {lineno}", key, "missing field")
        messages = validate_conversation(rec["messages"], source=str(path), record=f"line {lineno}")
        out.append(RealConversation(rec["conversation_id"], rec["source"], messages))
    return out


def read_seed_set(out_dir: str | Path) -> SeedSet:
    """What write_seed_set wrote: the seeds, the whole eval and dev conversations and the stats."""
    out_dir = Path(out_dir)
    return SeedSet(
        read_seeds(out_dir / SEED_FILES["train"]),
        read_seeds(out_dir / SEED_FILES["eval"]),
        read_conversations(out_dir / SEED_FILES["eval_conversations"]),
        json.loads((out_dir / "stats.json").read_text(encoding="utf-8")),
        read_conversations(out_dir / SEED_FILES["dev_conversations"]),
    )
