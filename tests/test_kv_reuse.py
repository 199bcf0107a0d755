"""Key/value reuse (automatic prefix caching) in the transformers backend.

The prefix store alone (no model); then a tiny random Llama with a byte-level ChatML tokenizer, both
built here (no download, seconds): cache positions and masks, replies identical with reuse on and off
through the real simulate + contrast code, counters, response-cache keys, the memory budget. The slow
tests repeat the equalities on the embedded SmolLM2-135M.

Tolerance: reused states were computed in other batch shapes than a fresh forward, so logits agree up
to float rounding, not bit for bit. We require next-token logits through reuse within ATOL = 1e-3 of a
fresh forward (SmolLM2-135M fp32: measured ~5e-5 on logits of magnitude ~30) with the same argmax, and
sampled roll-outs with identical texts (a rounding-level change flips a sampled token only when the
draw falls within ~1e-6 of a boundary).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_seed_files

from music.chat import ResponseCache, make_chat
from music.chat.base import TokenCounts, TokenMeter
from music.chat.kv_cache import PrefixKVStore
from music.config import EMBEDDED_MODEL, ChatModelConfig, ContrastConfig, SimulateConfig

ATOL = 1e-3

# --- the store alone ----------------------------------------------------------------------------------


def states(tokens, layers=2, heads=1, dim=2):
    """Fake states whose values encode (position, token): slices can be checked exactly."""
    t = torch.tensor(tokens, dtype=torch.float32)
    pos = torch.arange(len(tokens), dtype=torch.float32)
    one = torch.stack([pos, t], dim=-1)  # [n, 2]
    return one.expand(layers, 2, heads, len(tokens), dim).clone()


def store_insert(store, tokens):
    full = states(tokens)
    return store.insert(tokens, lambda a, b: full[..., a:b, :])


def joined(match):
    return torch.cat(match.segments, dim=-2) if match.segments else None


def test_store_finds_the_longest_prefix_across_and_inside_blocks():
    s = PrefixKVStore(budget_bytes=10**9, block=4)
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert store_insert(s, a) == 10
    assert s.lookup([9, 9]).length == 0 and s.lookup([]).length == 0
    for probe, n in [
        (a, 10),
        (a + [11, 12], 10),
        (a[:6] + [0, 0], 6),
        (a[:9], 9),
        ([1, 2, 3, 4, 5, 0], 5),
        ([1, 2, 0], 2),
    ]:
        m = s.lookup(probe)
        assert m.length == n
        assert torch.equal(joined(m), states(probe)[..., :n, :]) if n else m.segments == []
    assert s.lookup(a, limit=7).length == 7
    # A sibling branch shares the stored blocks; the store holds its new tokens only.
    b = a[:5] + [50, 51, 52, 53, 54]
    assert store_insert(s, b) == 6  # the first full block (4 tokens) is shared; its second block differs at token 5
    assert s.tokens == 10 + 6
    assert s.lookup(b).length == 10 and s.lookup(a).length == 10
    assert store_insert(s, a) == 0  # already there


def test_store_drops_a_partial_block_made_redundant_by_a_longer_sequence():
    s = PrefixKVStore(budget_bytes=10**9, block=4)
    store_insert(s, [1, 2, 3, 4, 5, 6])  # a full block + a partial [5, 6]
    assert s.tokens == 6
    store_insert(s, [1, 2, 3, 4, 5, 6, 7])  # the partial [5, 6] is a prefix of [5, 6, 7]: replaced
    assert s.tokens == 7 and len(s) == 2
    store_insert(s, [1, 2, 3, 4, 5])  # a prefix of what is stored: nothing new
    assert s.tokens == 7
    store_insert(s, [1, 2, 3, 4, 5, 6, 7, 8, 9])  # [5, 6, 7] -> full block [5, 6, 7, 8] + partial [9]
    assert s.tokens == 9 and len(s) == 3
    assert s.nbytes == sum(b.nbytes for b in s._lru.values()) == 9 * states([0]).numel() * 4


def test_store_evicts_least_recently_used_leaves_within_its_budget():
    per_token = states([0]).numel() * 4
    s = PrefixKVStore(budget_bytes=20 * per_token, block=4)
    common = [1, 2, 3, 4]
    seqs = [common + [10 * k + i for i in range(4)] for k in range(1, 5)]  # 4 tokens shared + 4 own, each
    for q in seqs[:3]:
        store_insert(s, q)
    assert s.tokens == 4 + 3 * 4 and s.nbytes <= s.budget_bytes
    s.lookup(seqs[0])  # seqs[0] is now more recent than seqs[1]
    store_insert(s, seqs[3])  # 4 + 4 * 4 = 20 tokens: fits
    store_insert(s, common + [99, 98, 97, 96, 95])  # 5 more: evicts the least recently used leaves
    assert s.nbytes <= s.budget_bytes and s.evicted_blocks >= 1
    assert s.lookup(seqs[1]).length == 4  # evicted down to the shared block, never the parent before the child
    assert s.lookup(seqs[0]).length == 8 and s.lookup(seqs[3]).length == 8
    s.set_budget(0)
    assert len(s) == 0 and s.nbytes == 0 and s.lookup(seqs[0]).length == 0


def test_counts_and_meter():
    c = TokenCounts(prompt=100, encoded=20, generated=10)
    assert c.as_dict() == {
        "prompt_tokens": 100,
        "prompt_tokens_encoded": 20,
        "generated_tokens": 10,
        "prompt_per_generated": 10.0,
        "encoded_per_generated": 2.0,
    }
    assert TokenCounts().as_dict()["encoded_per_generated"] is None

    class Counting:
        tokens = TokenCounts()

    x = Counting()
    meter = TokenMeter(user=x, assistant=x, other=object())
    x.tokens = x.tokens + TokenCounts(10, 4, 2)
    rep = meter.report()
    assert set(rep) == {"user", "assistant", "total"}  # a backend without counters is left out
    assert rep["total"]["prompt_tokens"] == 10  # one backend given twice counts once
    assert TokenMeter(user=object()).report() == {}


# --- a tiny random Llama with a byte-level ChatML tokenizer ---------------------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:  # GPT-2's byte <-> printable character map
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tiny(path: Path) -> Path:
    """Llama (2 layers, 4 heads, 2 kv heads) + a tokenizer of single ASCII bytes: decoded replies re-tokenise
    to the same ids, as a real chat model's mostly do, so turns can reuse generated tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    b2u = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(specials + [b2u[b] for b in [10, *range(32, 127)]])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML,
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
            tie_word_embeddings=False,
        )
    )
    with torch.no_grad():  # letters and spaces likely, the end of turn now and then, pad and <|im_start|> never
        w = lm.lm_head.weight
        w[0] = 0
        w[1] = 0
        w[2] *= 3
        w[3 + 1 :] *= 2  # every printable byte above the newline
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("kv") / "tiny"))


def tiny_chat(model: str, reuse: bool, cache=None, **kw):
    from music.chat.transformers_backend import TransformersChat

    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("temperature", 1.0)
    kw.setdefault("batch_size", 4)
    return TransformersChat(ChatModelConfig(model=model, reuse_kv=reuse, **kw), cache)


@pytest.fixture
def fresh_store():
    """Each test starts from an empty prefix store (stores are shared per model within a process)."""
    from music.chat import transformers_backend as tb

    tb._KV_STORES.clear()
    yield
    tb._KV_STORES.clear()


def ask(*questions) -> list[list[dict]]:
    return [[{"role": "user", "content": q}] for q in questions]


def fresh_next_token_logits(chat, prompts):
    """The reference: one left-padded forward of the whole prompts, positions from the mask (as generate)."""
    ids, mask = chat._left_pad(prompts)
    with torch.inference_mode():
        return chat.lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[
            :, -1
        ]


def shadow_encoded(prompts, stored=()):
    """Prompt tokens the backend should encode for one batch, by replaying its plan on a store of fake states:
    all but each row's last token come from the store, the missing parts encoded in waves (a row sharing
    SHARE_MIN tokens beyond the store with a row of the current wave waits for the next one), then every
    row's last token."""
    from music.chat.transformers_backend import SHARE_MIN, _common

    shadow = PrefixKVStore(budget_bytes=10**12)
    for q in stored:
        store_insert(shadow, q)
    seqs = [p[:-1] for p in prompts]
    n, pending = len(prompts), list(range(len(prompts)))
    while pending:
        wave, later = [], []
        for j in pending:
            m = shadow.lookup(seqs[j]).length
            if m == len(seqs[j]):
                continue
            if any(_common(seqs[i], seqs[j]) >= m + SHARE_MIN for i in wave):
                later.append(j)
            else:
                wave.append(j)
                n += len(seqs[j]) - m
        for j in wave:
            store_insert(shadow, seqs[j])
        pending = later
    return n


def check_reuse_positions(chat):
    """Rows of one batch with different stored prefixes (none, inside a block, all but the last token, a
    duplicate): next-token logits through the store equal a fresh forward. Returns the largest difference."""
    p = [
        chat.render(c)
        for c in ask(
            "What is the capital of France?",
            "Name three primary colors, please.",
            "Hi",
            "Write a haiku about rain on a tin roof at night.",
        )
    ]
    p.append(list(p[1]))  # a duplicate of row 1 in the same batch
    stored = [p[1][:21], p[3][:-1]]  # row 1: a prefix ending inside a block; row 3: all but its last token
    for q in stored:
        chat._complete([q])
    before = chat.tokens.encoded
    got = chat.next_token_logits(p)
    ref = fresh_next_token_logits(chat, p)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= ATOL
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert chat.tokens.encoded - before == shadow_encoded(p, stored) < sum(map(len, p)) - len(p[3]) - len(p[1])
    return (got - ref).abs().max().item()


def test_next_token_logits_through_reuse_match_a_fresh_forward(tiny, fresh_store):
    check_reuse_positions(tiny_chat(tiny, True))


def test_generate_is_identical_with_reuse_on_and_off_and_encodes_less(tiny, fresh_store):
    on, off = tiny_chat(tiny, True), tiny_chat(tiny, False)
    convs = ask(*[f"question number {i} " * (i % 3 + 1) for i in range(6)])
    for turn in range(3):
        a, b = on.generate(convs, seed=turn), off.generate(convs, seed=turn)
        assert a == b
        convs = [
            c + [{"role": "assistant", "content": r.text or "ok"}, {"role": "user", "content": f"more {turn}"}]
            for c, r in zip(convs, a)
        ]
    assert on.tokens.prompt == off.tokens.prompt == off.tokens.encoded
    assert on.tokens.generated == off.tokens.generated > 0
    assert on.tokens.encoded < off.tokens.encoded / 2  # byte-level tokens: the template alone is ~25 per turn
    # Padded columns (fully masked queries included) never leak into what is stored.
    assert len(on.kv) and all(torch.isfinite(b.kv).all() for b in on.kv._lru.values())


def test_later_turns_encode_only_what_follows_the_stored_prefix(tiny, fresh_store):
    """Turn 2's prompt = turn 1's prompt + reply + a new user message: the reply's generated tokens are reused."""
    on = tiny_chat(tiny, True, batch_size=8)
    convs = ask(*[f"tell me about topic {i}" for i in range(4)])
    first = on.generate(convs, seed=1)
    convs2 = [
        c + [{"role": "assistant", "content": r.text or "ok"}, {"role": "user", "content": "and then?"}]
        for c, r in zip(convs, first)
    ]
    prompts = [on.render(c) for c in convs2]
    reused = [on.kv.lookup(p[:-1]).length for p in prompts]
    # Each row reuses at least its whole turn-1 prompt; rows whose reply text re-tokenises to what was generated
    # (not an empty reply, no stripped space at its start) reuse generated tokens too.
    assert all(n >= len(on.render(c)) for n, c in zip(reused, convs))
    assert any(n > len(on.render(c)) for n, c in zip(reused, convs))
    expected = sum(len(p) - n for p, n in zip(prompts, reused))  # rows share no new tokens here
    before = on.tokens.encoded
    on.generate(convs2, seed=2)
    assert on.tokens.encoded - before == expected < sum(len(p) for p in prompts) / 2


def test_samples_of_one_prompt_encode_it_once(tiny, fresh_store):
    on = tiny_chat(tiny, True, batch_size=8)
    conv = ask("Write a long story about a dragon and a knight who become friends.")[0]
    n = len(on.render(conv))
    replies = on.generate([conv] * 5, seed=0)
    assert on.tokens.prompt == 5 * n
    assert on.tokens.encoded == (n - 1) + 5  # the prompt once, then each row's last prompt token
    assert len({r.text for r in replies}) > 1  # still distinct samples


def test_choose_picks_the_same_options_with_reuse(tiny, fresh_store):
    convs = ask("Is A or B better? Answer.", "Pick A, B or C.", "Which one, A or B?")
    kw = dict(prefix="[[", suffix="]]")
    on, off = tiny_chat(tiny, True, batch_size=2), tiny_chat(tiny, False, batch_size=2)
    assert on.choose(convs, ["A", "B", "C"], **kw) == off.choose(convs, ["A", "B", "C"], **kw)
    before = on.tokens.encoded
    on.choose(convs, ["A", "B", "C"], **kw)  # asked again: one token per conversation
    assert on.tokens.encoded - before == len(convs)


def test_response_cache_keys_and_replies_do_not_depend_on_reuse(tiny, fresh_store, tmp_path):
    convs = ask(*[f"q{i} " * (i + 1) for i in range(5)])
    caches = {}
    for reuse in (True, False):
        cache = ResponseCache.in_dir(tmp_path / str(reuse))
        tiny_chat(tiny, reuse, cache).generate(convs, seed=7)
        caches[reuse] = cache._conn.execute("SELECT key, text, finish_reason FROM responses ORDER BY key").fetchall()
    assert caches[True] == caches[False] and len(caches[True]) == 5
    assert tiny_chat(tiny, True).identity() == tiny_chat(tiny, False).identity()


def test_the_store_stays_within_its_budget_and_replies_do_not_change(tiny, fresh_store, caplog):
    on, off = tiny_chat(tiny, True), tiny_chat(tiny, False)
    layers, heads = on.lm.config.num_hidden_layers, on.lm.config.num_key_value_heads
    dim = on.lm.config.hidden_size // on.lm.config.num_attention_heads
    per_token = layers * 2 * heads * dim * 4
    on.kv.set_budget(150 * per_token)  # less than one call needs
    convs = ask(*[f"a fairly long question number {i} about many different things" for i in range(8)])
    for turn in range(2):
        a, b = on.generate(convs, seed=turn), off.generate(convs, seed=turn)
        assert a == b
        assert on.kv.nbytes <= on.kv.budget_bytes and on.kv.evicted_blocks > 0
        assert caplog.text.count("key/value store full") == 1  # said once
        convs = [
            c + [{"role": "assistant", "content": r.text or "ok"}, {"role": "user", "content": "go on"}]
            for c, r in zip(convs, a)
        ]


def test_reuse_off_and_shared_store(tiny, fresh_store):
    off = tiny_chat(tiny, False)
    assert off.kv is None and off.reuse_off_reason == "reuse_kv is off"
    a, b = tiny_chat(tiny, True, kv_cache_mb=1), tiny_chat(tiny, True, kv_cache_mb=3)
    assert a.kv is b.kv and a.kv.budget_bytes == 3 * 2**20  # one store per model, the largest budget asked
    with pytest.raises(ValueError, match="kv_cache_mb"):
        tiny_chat(tiny, True, kv_cache_mb=0)


def test_sliding_window_models_are_not_reused():
    from transformers import MistralConfig, MistralForCausalLM

    from music.chat.transformers_backend import reuse_unsupported

    cfg = MistralConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=8,
    )
    assert "sliding" in reuse_unsupported(MistralForCausalLM(cfg))


# --- simulate + a rejected branch, reuse on vs off ---------------------------------------------------------


def seeds_for(n: int):
    from music.stages.seed import Seed

    topics = [
        "braised pork belly",
        "reversing a string in Python",
        "visiting Paris",
        "sleeping better",
        "hash tables",
        "naming a bakery",
        "starting to run",
        "photosynthesis",
        "learning chess",
        "baking bread",
    ]
    return [
        Seed(
            f"kv-{i}",
            f"kv-{i}",
            "test",
            "train",
            [
                {"role": "user", "content": f"Tell me about {topics[i % len(topics)]}."},
                {"role": "assistant", "content": f"Sure. Here is a short overview of {topics[i % len(topics)]}."},
            ],
            None,
            None,
        )
        for i in range(n)
    ]


def roll_out_with_branch(user, assistant, n: int, turns: int, divergence_turn: int, seed: int = 0):
    """simulate_seeds, then contrast_conversations (resample) diverging at a fixed turn: texts out."""
    from music.stages.contrast import contrast_conversations
    from music.stages.simulate import simulate_seeds

    sim = SimulateConfig(turns=turns, trim_truncated=True, seed=seed)
    convs = simulate_seeds(seeds_for(n), user, assistant, sim, split="train")
    # Stated here, not taken from the defaults: the relevance filters off and four requests, so that most branches
    # run to the end.
    cfg = ContrastConfig(
        method="resample",
        divergence="fixed",
        divergence_turn=divergence_turn,
        candidates=4,
        min_contrast_margin=None,
        max_echo_similarity=None,
        request_similarity=None,
        seed=seed,
    )
    cands = contrast_conversations(
        convs, user=user, assistant=assistant, contrast=None, sim_cfg=sim, cfg=cfg, split="train"
    )
    return [c["messages"] for c in convs], [(c["fields"]["rejected"], c["failure"]) for c in cands]


def test_simulate_and_contrast_give_identical_conversations_with_reuse(tiny, fresh_store):
    # The random tiny model's unit seeds depend on its temporary path, so how many rejected branches survive the
    # filters varies from run to run: try a few roll-out seeds until at least two ran to the end (every try must
    # be identical with and without reuse).
    for seed in range(5):
        out, counts = {}, {}
        for reuse in (True, False):
            user = tiny_chat(tiny, reuse, max_new_tokens=10, batch_size=4)
            assistant = tiny_chat(tiny, reuse, max_new_tokens=14, batch_size=4)
            meter = TokenMeter(user=user, assistant=assistant)
            out[reuse] = roll_out_with_branch(user, assistant, n=8, turns=3, divergence_turn=2, seed=seed)
            counts[reuse] = meter.report()["total"]
        assert out[True] == out[False]
        assert counts[True]["generated_tokens"] == counts[False]["generated_tokens"] > 0
        assert counts[True]["prompt_tokens_encoded"] <= 0.5 * counts[False]["prompt_tokens_encoded"]
        if sum(r is not None for r, _ in out[True][1]) >= 2:  # some branches ran to the end
            return
    pytest.fail(f"no roll-out seed gave two complete rejected branches: {[f for _, f in out[True][1]]}")


def test_stage_summaries_report_token_counts(tiny, fresh_store, tmp_path):
    from music.stages.simulate import run as run_simulate

    P = write_seed_files(tmp_path, n_train=2, n_eval=1)
    P.simulate.turns = 2
    backends = (tiny_chat(tiny, True, max_new_tokens=6), tiny_chat(tiny, True, max_new_tokens=6))
    summary = run_simulate(P, backends=backends)
    tok = summary["train"]["tokens"]
    assert set(tok) == {"user", "assistant", "total"}
    assert tok["total"]["prompt_tokens_encoded"] < tok["total"]["prompt_tokens"]
    assert tok["total"]["encoded_per_generated"] < tok["total"]["prompt_per_generated"]


# --- the embedded SmolLM2-135M (slow) -----------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_logits_through_reuse_within_tolerance(fresh_store):
    chat = make_chat(ChatModelConfig(model=EMBEDDED_MODEL), None)
    assert chat.kv is not None
    diff = check_reuse_positions(chat)
    assert diff > 0 or diff == 0  # reported by -rA; the bound is ATOL inside


@pytest.mark.slow
def test_embedded_model_rollout_with_branch_is_identical_with_reuse(fresh_store):
    """8 conversations x 3 simulated turns, then a rejected branch diverging at turn 2 and continued to the end."""
    out, counts = {}, {}
    for reuse in (False, True):
        user = make_chat(ChatModelConfig(model=EMBEDDED_MODEL, max_new_tokens=16, batch_size=8, reuse_kv=reuse), None)
        assistant = make_chat(
            ChatModelConfig(model=EMBEDDED_MODEL, max_new_tokens=24, batch_size=8, reuse_kv=reuse), None
        )
        meter = TokenMeter(user=user, assistant=assistant)
        out[reuse] = roll_out_with_branch(user, assistant, n=8, turns=3, divergence_turn=2)
        counts[reuse] = meter.report()["total"]
    assert out[True] == out[False]
    assert sum(r is not None for r, _ in out[True][1]) >= 4
    assert counts[True]["generated_tokens"] == counts[False]["generated_tokens"]
    assert counts[True]["encoded_per_generated"] <= 0.5 * counts[False]["encoded_per_generated"]


def test_wave_helpers():
    from music.chat.transformers_backend import _length_groups, _span

    # Rows go longest first; a row joins a group while the group's padding stays under half of its positions.
    assert _length_groups([0, 1, 2, 3], [100, 90, 10, 8]) == [[0, 1, 2, 3]]  # 400 positions for 208 tokens
    assert _length_groups([0, 1, 2, 3], [10, 100, 8, 300]) == [[3, 1], [0, 2]]
    assert _length_groups([5], [3]) == [[5]]
    segs = [states([1, 2, 3]), states([4, 5])[..., :, :, :, :]]
    whole = torch.cat(segs, dim=-2)
    for a, b in [(0, 5), (1, 4), (3, 5), (2, 3), (0, 3)]:
        assert torch.equal(_span(segs, a, b), whole[..., a:b, :])
