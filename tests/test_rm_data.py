"""Rendering, truncation, mixing and batching of reward-model pairs (chat template, length rules)."""

from __future__ import annotations

import pytest
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

from music.errors import DataError
from music.rm.data import (
    as_pairs,
    collate_pairs,
    encode_pairs,
    fit_conversation,
    length_grouped_batches,
    load_variant_pairs,
    mix_pairs,
    music_cut_pair,
    render_ids,
    split_turns,
)
from music.schema import PreferencePair, first_difference_distance

# ---------------------------------------------------------------- chat template: one step, one BOS


@pytest.fixture(scope="module")
def bos_tok():
    """A Llama-style tokenizer: adds <s> when tokenizing text, and its chat template writes <s> too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", "user", "assistant", "system", ":", "hi", "hello", "there"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    return tok


def test_render_in_one_step_has_a_single_bos(bos_tok):
    c = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ids = render_ids(bos_tok, c)
    two_step = bos_tok(bos_tok.apply_chat_template(c, tokenize=False)).input_ids
    assert two_step[:2] == [1, 1]  # the pitfall itself (https://github.com/allenai/reward-bench/issues/164)
    assert ids.count(1) == 1 and ids[0] == 1
    assert ids == two_step[1:]


def test_render_equals_the_template_ids_for_smollm(smol_tok):
    c = conv(0, True, turns=2)
    ids = render_ids(smol_tok, c)
    assert ids == list(smol_tok.apply_chat_template(c, tokenize=True)["input_ids"])
    assert ids[:2] != [smol_tok.bos_token_id] * 2
    assert smol_tok.decode(ids).startswith("<|im_start|>system\n")  # the template's default system prompt
    assert ids[-2] == smol_tok.convert_tokens_to_ids("<|im_end|>")


# ---------------------------------------------------------------- length: turns first, then tokens, never silent


def _long_conv(turns=4, system="Be brief."):
    c = [{"role": "system", "content": system}]
    for t in range(turns):
        c += [
            {"role": "user", "content": f"turn {t} " + "word " * 30},
            {"role": "assistant", "content": f"reply {t} " + "ok " * 30},
        ]
    return c


def test_split_turns_groups_user_and_assistant():
    system, turns = split_turns(_long_conv(3))
    assert [m["role"] for m in system] == ["system"]
    assert [[m["role"] for m in t] for t in turns] == [["user", "assistant"]] * 3


def test_oldest_whole_turns_go_first_and_system_stays(smol_tok):
    c = _long_conv(4)
    full = len(render_ids(smol_tok, c))
    two_turns = len(render_ids(smol_tok, c[:1] + c[5:]))
    fit = fit_conversation(smol_tok, c, two_turns, source="s", record=0, field_name="chosen")
    assert full > two_turns
    assert (fit.turns_dropped, fit.tokens_cut, fit.length_before) == (2, 0, full)
    text = smol_tok.decode(fit.ids)
    assert "Be brief." in text and "turn 2" in text and "reply 3" in text
    assert "turn 0" not in text and "turn 1" not in text


def test_then_tokens_are_cut_from_the_left_keeping_system_and_end(smol_tok):
    c = _long_conv(2)
    last_turn = render_ids(smol_tok, c[:1] + c[3:])
    fit = fit_conversation(smol_tok, c, len(last_turn) - 10, source="s", record=0, field_name="chosen")
    assert fit.turns_dropped == 1 and fit.tokens_cut == 10
    assert len(fit.ids) == len(last_turn) - 10
    assert fit.ids[-20:] == last_turn[-20:]  # the end (and the pooled last token) is intact
    assert smol_tok.decode(fit.ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_unfixable_conversation_names_the_pair(smol_tok):
    c = _long_conv(1, system="rules " * 200)
    pair = PreferencePair(c, c, {"pair_id": "p-long", "kind": "d"})
    with pytest.raises(DataError) as err:
        encode_pairs(smol_tok, [pair], max_length=64, source="d_train")
    msg = str(err.value)
    assert "d_train" in msg and "p-long" in msg and "'chosen'" in msg and "max_length=64" in msg


def test_stats_count_each_rule_per_pair(smol_tok):
    short = conv(0, True)
    long = _long_conv(3)
    pairs = [
        PreferencePair(short, short, {"pair_id": "a", "kind": "d"}),
        PreferencePair(long, short, {"pair_id": "b", "kind": "music"}),
        PreferencePair(short, long, {"pair_id": "c", "kind": "music"}),
    ]
    max_len = len(render_ids(smol_tok, long[:1] + long[3:]))  # room for the last two turns
    encoded, stats = encode_pairs(smol_tok, pairs, max_length=max_len)
    assert all(p.length <= max_len for p in encoded)
    a = stats["all"]
    assert (a["pairs"], a["pairs_untouched"], a["pairs_turns_dropped"], a["pairs_tokens_cut"]) == (3, 1, 2, 0)
    assert a["share_turns_dropped"] == pytest.approx(2 / 3, abs=1e-3)
    assert stats["music"]["pairs_turns_dropped"] == 2 and stats["d"]["pairs_untouched"] == 1
    assert a["examples"] == ["b", "c"]


# ---------------------------------------------------------------- bad input stops with a clear message


def test_empty_side_is_a_data_error():
    rec = {"chosen": [], "rejected": conv(0, False), "pair_id": "x1"}
    with pytest.raises(DataError, match=r"music_train, record 0 \(pair_id x1\), field 'chosen': conversation is empty"):
        as_pairs([rec], "music_train")


def test_no_pairs_is_a_data_error():
    with pytest.raises(DataError, match="no preference pairs"):
        as_pairs([], "d_train")
    with pytest.raises(DataError, match="no pairs given for kind 'music'"):
        mix_pairs({"d": toy_pairs(2)}, ["d", "music"], 1.0, 0)


def test_accepts_dicts_pairs_and_datasets():
    from datasets import Dataset

    pairs = toy_pairs(3)
    recs = [p.to_record() for p in pairs]
    for data in (pairs, recs, Dataset.from_list(recs)):
        got = as_pairs(data, "src")
        assert [p.meta["pair_id"] for p in got] == ["d0", "d1", "d2"] and got[0].chosen == pairs[0].chosen


# ---------------------------------------------------------------- mixing and batching


def test_music_ratio_caps_music_pairs_deterministically():
    by_kind = {"d": toy_pairs(10, "d"), "music": toy_pairs(30, "music")}
    mixed, counts = mix_pairs(by_kind, ["d", "music"], 0.5, seed=3)
    assert counts == {"d": 10, "music": 5} and len(mixed) == 15
    again, _ = mix_pairs(by_kind, ["d", "music"], 0.5, seed=3)
    other, _ = mix_pairs(by_kind, ["d", "music"], 0.5, seed=4)
    ids = lambda ps: [p.meta["pair_id"] for p in ps]  # noqa: E731
    assert ids(mixed) == ids(again) and ids(mixed) != ids(other)
    base, counts = mix_pairs(by_kind, ["d"], 0.5, seed=3)
    assert counts == {"d": 10}


def _music_pair(i: int, diverge: int, turns: int = 4, user_differs: bool = False) -> PreferencePair:
    """A MUSIC-like pair: a shared history, a divergence at user turn `diverge` (the reply, or the request and
    the reply), then different continuations on each side."""
    sides = []
    for side in ("c", "r"):
        msgs = [{"role": "system", "content": "sys"}]
        for t in range(1, turns + 1):
            same = t < diverge
            u = f"q{i}.{t}" if same or (t == diverge and not user_differs) else f"q{i}.{t}-{side}"
            msgs += [
                {"role": "user", "content": u},
                {"role": "assistant", "content": f"a{i}.{t}" + ("" if same else f"-{side}")},
            ]
        sides.append(msgs)
    return PreferencePair(
        *sides,
        {"pair_id": f"m{i}", "kind": "music", "divergence_turn": diverge, "turns_after_divergence": turns - diverge},
    )


def test_control_pairs_are_music_pairs_cut_after_the_divergence_and_differ_in_the_last_turn_only():
    for user_differs in (False, True):
        for g in (1, 2, 3):
            pair = _music_pair(7, g, user_differs=user_differs)
            assert first_difference_distance(pair.chosen, pair.rejected) == 4 - g + 1  # the multi-turn pair
            cut = music_cut_pair(pair)
            n = 1 + 2 * g  # system + g turns
            assert cut.chosen == pair.chosen[:n] and cut.rejected == pair.rejected[:n]
            assert first_difference_distance(cut.chosen, cut.rejected) == 1  # the last exchange only
            assert cut.chosen[-1] != cut.rejected[-1] and cut.chosen[-1]["role"] == "assistant"
            shared = n - (2 if user_differs else 1)
            assert cut.chosen[:shared] == cut.rejected[:shared]
            assert (
                cut.meta["kind"] == "music_cut"
                and cut.meta["cut_from"] == "m7"
                and cut.meta["turns_after_divergence"] == 0
            )
    same = PreferencePair(pair.chosen, pair.chosen, {"pair_id": "x"})
    with pytest.raises(DataError, match="never differ"):
        music_cut_pair(same)


def test_the_control_arm_holds_the_data_size_and_the_music_subset(tmp_path):
    from music.schema import pair_record
    from music.store import pair_features, save_records

    recs = [
        pair_record(
            chosen=p.chosen,
            rejected=p.rejected,
            pair_id=p.meta["pair_id"],
            kind="music",
            divergence_turn=2,
            turns_after_divergence=2,
        )
        for p in (_music_pair(i, 2) for i in range(12))
    ]
    save_records(recs, tmp_path / "music_train", pair_features())
    save_records(
        [pair_record(chosen=p.chosen, rejected=p.rejected, pair_id=p.meta["pair_id"], kind="d") for p in toy_pairs(8)],
        tmp_path / "d_train",
        pair_features(),
    )
    by_kind = load_variant_pairs(tmp_path, ["d", "music", "music_cut"])
    music, n_music = mix_pairs(by_kind, ["d", "music"], 0.5, seed=3)
    control, n_control = mix_pairs(by_kind, ["d", "music_cut"], 0.5, seed=3)
    assert n_music == {"d": 8, "music": 4} and n_control == {"d": 8, "music_cut": 4}
    assert [p.meta["pair_id"] for p in music] == [p.meta["pair_id"] for p in control]  # the same pairs, cut
    for m, c in zip(music[8:], control[8:]):
        assert c.chosen == m.chosen[:5] and first_difference_distance(c.chosen, c.rejected) == 1


def test_length_grouped_batches_cover_all_and_cut_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(20, 500) for _ in range(97)]
    grouped = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    plain = length_grouped_batches(lengths, 4, seed=1, epoch=0, group=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(97))
    pad = lambda bs: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert pad(grouped) < 0.5 * pad(plain)
    assert grouped == length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert grouped != length_grouped_batches(lengths, 4, seed=1, epoch=1)
    assert grouped != length_grouped_batches(lengths, 4, seed=2, epoch=0)


def test_collate_puts_chosen_rows_first(smol_tok):
    encoded, _ = encode_pairs(smol_tok, toy_pairs(3), max_length=256)
    ids, mask = collate_pairs(encoded, smol_tok.pad_token_id)
    assert ids.shape[0] == 6
    for k, p in enumerate(encoded):
        assert ids[k, : len(p.chosen)].tolist() == p.chosen and int(mask[k].sum()) == len(p.chosen)
        assert ids[3 + k, : len(p.rejected)].tolist() == p.rejected
    assert (ids[mask == 0] == smol_tok.pad_token_id).all()


def test_golden_rendering_of_a_multi_turn_pair(smol_tok):
    """Exactly what the RM reads for each side of a two-turn pair: one BOS, the template's default system
    prompt, every turn closed by <|im_end|>; the two sides differ only in the last reply."""
    chosen = [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Nine minutes."},
        {"role": "user", "content": "Soft?"},
        {"role": "assistant", "content": "Six minutes."},
    ]
    rejected = [*chosen[:3], {"role": "assistant", "content": "Al dente."}]
    head = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHow do I boil an egg?<|im_end|>\n<|im_start|>assistant\nNine minutes.<|im_end|>\n"
        "<|im_start|>user\nSoft?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids_c, ids_r = render_ids(smol_tok, chosen), render_ids(smol_tok, rejected)
    assert smol_tok.decode(ids_c) == head + "Six minutes.<|im_end|>\n"
    assert smol_tok.decode(ids_r) == head + "Al dente.<|im_end|>\n"
    assert ids_c.count(smol_tok.bos_token_id) == 5 and ids_c[0] == smol_tok.bos_token_id  # <|im_start|> is the BOS
    assert smol_tok.pad_token_id not in ids_c  # padding never looks like a real token
