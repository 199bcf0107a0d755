import collections
import json
import random

import pytest
from helpers import REPO

from music.config import Params, Paths, SeedConfig
from music.content_keys import request_key
from music.errors import DataError
from music.sources import RealConversation, load_sharegpt
from music.stages.seed import (
    ROLE_SWAPPED,
    SAME_CONVERSATION,
    TrainIndex,
    base_conversation_id,
    check_disjoint,
    draw_seeds,
    make_seed,
    read_conversation_ids,
    read_seeds,
    roles_swapped,
    turn_spans,
)
from music.stages.seed import run as run_seed

FIXTURE = REPO / "tests" / "fixtures" / "sharegpt_tiny.jsonl"
CFG = SeedConfig(path=str(FIXTURE), n_train=4, n_eval=2, n_eval_conversations=3, seed=0)


def test_seeds_are_deterministic_and_independent_of_input_order():
    convs = load_sharegpt(FIXTURE)
    a = draw_seeds(convs, CFG)
    shuffled = convs[:]
    random.Random(5).shuffle(shuffled)
    b = draw_seeds(shuffled, CFG)
    assert [s.to_record() for s in a.train + a.eval] == [s.to_record() for s in b.train + b.eval]
    c = draw_seeds(convs, SeedConfig(**{**CFG.__dict__, "seed": 1}))
    assert [s.seed_id for s in c.train] != [s.seed_id for s in a.train]


def test_splits_are_disjoint_by_conversation():
    seeds = draw_seeds(load_sharegpt(FIXTURE), CFG)
    train = {s.conversation_id for s in seeds.train}
    evals = {s.conversation_id for s in seeds.eval} | {c.conversation_id for c in seeds.eval_conversations}
    assert train and evals and not train & evals


def test_seed_is_a_prefix_of_whole_turns_ending_before_the_user():
    convs = {c.conversation_id: c.messages for c in load_sharegpt(FIXTURE)}
    seeds = draw_seeds(list(load_sharegpt(FIXTURE)), CFG)
    for s in seeds.train + seeds.eval:
        full = convs[s.conversation_id]
        n = len(s.context)
        assert full[:n] == s.context and s.context[-1]["role"] == "assistant"
        assert full[n] == {"role": "user", "content": s.next_user}
        assert full[n + 1] == {"role": "assistant", "content": s.next_assistant}
        assert 1 <= len(turn_spans(s.context)[1]) <= CFG.max_context_turns


def test_changing_n_train_keeps_the_eval_set():
    convs = load_sharegpt(FIXTURE)
    a = draw_seeds(convs, CFG)
    b = draw_seeds(convs, SeedConfig(**{**CFG.__dict__, "n_train": 2}))
    assert [s.seed_id for s in a.eval] == [s.seed_id for s in b.eval]


def test_too_few_seeds_is_a_clear_error():
    with pytest.raises(DataError, match="only .* seeds fit"):
        draw_seeds(load_sharegpt(FIXTURE), SeedConfig(**{**CFG.__dict__, "n_train": 100}))


def test_duplicate_conversation_ids_are_rejected(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    p = tmp_path / "dup.jsonl"
    p.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(DataError, match="appears 2 times"):
        draw_seeds(load_sharegpt(p), CFG)


def test_stage_writes_all_files_and_they_read_back(tmp_path):
    out = tmp_path / "seeds"
    seeds = run_seed(Params(seed=CFG, paths=Paths(seeds=str(out))))
    assert sorted(p.name for p in out.iterdir()) == [
        "dev_conversations.jsonl",
        "eval.jsonl",
        "eval_conversations.jsonl",
        "stats.json",
        "train.jsonl",
    ]
    assert [s.to_record() for s in read_seeds(out / "train.jsonl")] == [s.to_record() for s in seeds.train]
    assert json.loads((out / "stats.json").read_text())["train_seeds"] == 4


@pytest.mark.parametrize(
    "bad_line, field",
    [
        (
            '{"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}',
            "conversations[1].role",
        ),
        ('{"id": "x", "conversations": [{"from": "alien", "value": "a"}]}', "conversations[0].from"),
        ('{"id": "x"', None),
    ],
)
def test_bad_input_writes_nothing_and_keeps_the_old_output(tmp_path, bad_line, field):
    p = tmp_path / "bad.jsonl"
    p.write_text(FIXTURE.read_text() + bad_line + "\n")
    out = tmp_path / "seeds"
    run_seed(Params(seed=CFG, paths=Paths(seeds=str(out))))  # a previous good run
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(DataError) as exc:
        run_seed(Params(seed=SeedConfig(**{**CFG.__dict__, "path": str(p)}), paths=Paths(seeds=str(out))))
    assert exc.value.record == "line 13" and exc.value.field == field and str(p) in str(exc.value)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.jsonl", "seeds"]  # no temporary left behind


# --- one conversation, several chunks; role-swapped records ------------------------------------------------


def _chat(cid: str, first_user: str | None = None) -> RealConversation:
    msgs = [
        {"role": "user", "content": first_user or f"How do I boil egg {cid}?"},  # one opening per id
        {"role": "assistant", "content": "Boil it for nine minutes."},
        {"role": "user", "content": "And a soft yolk?"},
        {"role": "assistant", "content": "Six minutes."},
        {"role": "user", "content": "Thanks, and in a microwave?"},
        {"role": "assistant", "content": "Better not."},
    ]
    return RealConversation(cid, "sharegpt", msgs)


def test_sharegpt_chunk_ids_map_to_their_conversation():
    # Real ids from the materialised ShareGPT set: hIULog1 was cut into three chunks, zlIFBzJ into two.
    assert {base_conversation_id(i) for i in ("hIULog1_0", "hIULog1_2", "hIULog1_4")} == {"hIULog1"}
    assert base_conversation_id("zlIFBzJ_10") == "zlIFBzJ"
    assert base_conversation_id("skywork:row 12") == "skywork:row 12"  # ids of other sources are their own base


def test_chunks_of_one_conversation_never_feed_both_splits():
    convs = [
        _chat(f"{base}_{k}") for base in ("hIULog1", "zlIFBzJ", "N5JPJtp", "0AYfPYw", "XCATsL4") for k in (0, 2, 4)
    ] + [_chat(f"single{i}_0") for i in range(10)]
    cfg = SeedConfig(path="real-chunk-ids", n_train=6, n_eval=3, n_eval_conversations=3, max_context_turns=1)
    seeds = draw_seeds(convs, cfg)
    train = {base_conversation_id(s.conversation_id) for s in seeds.train}
    held_out = {base_conversation_id(s.conversation_id) for s in seeds.eval}
    held_out |= {base_conversation_id(c.conversation_id) for c in seeds.eval_conversations}
    assert train and held_out and not train & held_out
    assert seeds.stats["skipped"].get(SAME_CONVERSATION, 0) > 0  # later chunks of a drawn conversation: counted


def _index(*convs: RealConversation) -> TrainIndex:
    return TrainIndex.of(make_seed(c, 1, "train") for c in convs)


def test_a_chunk_of_a_training_conversation_is_a_leak():
    assert check_disjoint([(0, "hIULog1_2", None)], _index(_chat("other_0")), source="eval") == 1
    with pytest.raises(DataError, match="hIULog1_2.*training conversation"):
        check_disjoint([(0, "hIULog1_2", None)], _index(_chat("hIULog1_0")), source="eval")


def test_a_copy_of_a_training_conversation_under_another_id_is_a_leak():
    # The bundled ShareGPT file holds ZcVSkdr_40 and Pyhv7Ue_40, byte-identical chats under two ids.
    train, copy = _chat("Pyhv7Ue_40"), _chat("ZcVSkdr_40", "how do I boil egg   PYHV7UE_40?")  # case and spaces
    with pytest.raises(DataError, match="ZcVSkdr_40.*same exchange as a training conversation") as exc:
        check_disjoint([("swap 1", copy.conversation_id, copy.messages)], _index(train), source="swap")
    assert exc.value.record == "swap 1" and exc.value.field == "messages"
    other = _chat("ZcVSkdr_40")
    assert check_disjoint([("swap 1", other.conversation_id, other.messages)], _index(train), source="swap") == 1


def test_copies_under_other_ids_are_one_conversation_in_the_draw():
    # 12 chats, each also present under a second id (as ShareGPT's copies are), and 3 with a shared first request.
    convs = [_chat(f"c{i}_0") for i in range(12)] + [_chat(f"d{i}_0", f"How do I boil egg c{i}_0?") for i in range(12)]
    convs += [_chat(f"hi{i}_0", "hi") for i in range(3)]
    for i, c in enumerate(convs[-3:]):  # same first request, different replies: three openings
        c.messages[1]["content"] = f"Hello {i}!"
    cfg = SeedConfig(path="copies", n_train=6, n_eval=3, n_eval_conversations=4, max_context_turns=1)
    seeds = draw_seeds(convs, cfg)
    groups = {
        c.conversation_id: "c" + c.conversation_id[1:] if c.conversation_id[0] in "cd" else c.conversation_id
        for c in convs
    }
    train = [groups[s.conversation_id] for s in seeds.train]
    held_out = [groups[s.conversation_id] for s in seeds.eval] + [
        groups[c.conversation_id] for c in seeds.eval_conversations
    ]
    assert len(set(train)) == len(train) and not set(train) & set(held_out)
    assert len({groups[s.conversation_id] for s in seeds.eval}) == len(seeds.eval)
    assert len({request_key(c.messages) for c in seeds.eval_conversations}) == len(seeds.eval_conversations)
    assert seeds.stats["content_duplicates"] == 24
    assert seeds.stats["skipped"].get(SAME_CONVERSATION, 0) > 0


def test_role_swapped_records_are_dropped_and_counted():
    # The first materialised ShareGPT record: its "human" turns are ChatGPT's replies.
    swapped = _chat("DhelrJT_0", "Sure, I can do that. What new technology would you like me to review?")
    assert roles_swapped(swapped.messages)
    assert not roles_swapped(_chat("x", "Here is my object. How do I rewrite the if condition?").messages)
    convs = [swapped] + [_chat(f"c{i}_0") for i in range(12)]
    seeds = draw_seeds(convs, SeedConfig(path="p", n_train=10, n_eval=2, n_eval_conversations=2, max_context_turns=1))
    used = {s.conversation_id for s in seeds.train + seeds.eval} | {c.conversation_id for c in seeds.eval_conversations}
    assert "DhelrJT_0" not in used and seeds.stats["skipped"][ROLE_SWAPPED] == 1


def test_materialised_sharegpt_rule_counts():
    """On the real materialised set: the swapped record is the only one the rule drops."""
    path = REPO / "data" / "sharegpt" / "conversations.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (make data materialises it)")
    convs = load_sharegpt(path)
    assert [c.conversation_id for c in convs if roles_swapped(c.messages)] == ["DhelrJT_0"]
    bases = collections.Counter(base_conversation_id(c.conversation_id) for c in convs)
    assert sorted(b for b, n in bases.items() if n > 1) == ["0AYfPYw", "N5JPJtp", "XCATsL4", "hIULog1", "zlIFBzJ"]


def test_the_default_draw_has_no_content_duplicate_across_or_inside_the_splits():
    """The reviewer's reproduction: ZcVSkdr_40 (a copy of training seed Pyhv7Ue_40's chat) was a held-out swap
    conversation, and 8O1UHdu_0/RuLt4Z6_0 two held-out clusters of one chat. Now no opening exchange is on both
    sides, none twice in a split, and no two whole held-out conversations share a first request."""
    from music.config import load_params
    from music.content_keys import opening_key

    path = REPO / "data" / "sharegpt" / "conversations.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (make data materialises it)")
    cfg = load_params(REPO / "params.yaml").seed
    seeds = draw_seeds(load_sharegpt(path), SeedConfig(**{**cfg.__dict__, "path": str(path)}))
    train = [opening_key(s.context) for s in seeds.train]
    evals = [opening_key(s.context) for s in seeds.eval]
    convs = [opening_key(c.messages) for c in seeds.eval_conversations]
    assert len(set(train)) == len(train) and len(set(evals)) == len(evals) and len(set(convs)) == len(convs)
    assert not set(train) & (set(evals) | set(convs))
    assert len({request_key(c.messages) for c in seeds.eval_conversations}) == len(convs)
    assert seeds.stats["content_duplicates"] >= 4  # the copies the reviewer named, at least


def test_the_development_split_takes_only_what_neither_side_took(tmp_path):
    from music.stages.seed import read_seed_set, write_seed_set

    convs = [_chat(f"c{i}_0") for i in range(30)] + [_chat(f"d{i}_0", f"How do I boil egg c{i}_0?") for i in range(5)]
    cfg = SeedConfig(path="p", n_train=6, n_eval=3, n_eval_conversations=4, n_dev_conversations=50, max_context_turns=1)
    seeds = draw_seeds(convs, cfg)
    group = {c.conversation_id: "c" + c.conversation_id[1:] for c in convs}  # d<i> is a copy of c<i>
    dev = [group[c.conversation_id] for c in seeds.dev_conversations]
    others = {group[s.conversation_id] for s in seeds.train + seeds.eval}
    others |= {group[c.conversation_id] for c in seeds.eval_conversations}
    assert dev and len(set(dev)) == len(dev) and not set(dev) & others
    assert len(dev) == 30 - len(others) and seeds.stats["dev_conversations"] == len(dev)
    assert seeds.stats["dev_conversations_missing"] == 50 - len(dev)
    assert draw_seeds(convs, SeedConfig(**{**cfg.__dict__, "n_dev_conversations": 0})).train == seeds.train
    write_seed_set(seeds, tmp_path / "seeds")
    assert read_seed_set(tmp_path / "seeds").dev_conversations == seeds.dev_conversations


def test_read_conversation_ids_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match="seed stage"):
        read_conversation_ids(tmp_path / "train.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    assert read_conversation_ids(tmp_path / "empty.jsonl") == set()


def _single_turn_heavy(n_single: int = 300, n_multi: int = 3) -> list:
    """Skywork-like: mostly one-turn chats, a few with two assistant turns (the only whole eval conversations)."""
    from music.sources import RealConversation

    def turn(i, t):
        return [{"role": "user", "content": f"question {i}.{t}"}, {"role": "assistant", "content": f"answer {i}.{t}"}]

    convs = [RealConversation(f"s{i:04d}", "skywork", turn(i, 0)) for i in range(n_single)]
    convs += [RealConversation(f"m{i}", "skywork", turn(i, 0) + turn(i, 1)) for i in range(n_multi)]
    return convs


def test_single_turn_heavy_sets_do_not_starve_training():
    cfg = SeedConfig(
        source="skywork", path="hub:x", n_train=250, n_eval=5, n_eval_conversations=3, require_next_turn=False, seed=0
    )
    convs = _single_turn_heavy()
    seeds = draw_seeds(convs, cfg)
    assert len(seeds.train) == 250 and len(seeds.eval) == 5 and len(seeds.eval_conversations) == 3
    assert {c.conversation_id for c in seeds.eval_conversations} == {"m0", "m1", "m2"}
    assert "no feasible prefix within the length limits" not in seeds.stats["skipped"]  # nothing misfiled
    assert seeds.stats["eval_conversations_missing"] == 0
    # the held-out side does not depend on n_train
    fewer = draw_seeds(convs, SeedConfig(**{**cfg.__dict__, "n_train": 10}))
    assert [s.seed_id for s in fewer.eval] == [s.seed_id for s in seeds.eval]
    assert [c.conversation_id for c in fewer.eval_conversations] == [
        c.conversation_id for c in seeds.eval_conversations
    ]


def test_missing_whole_eval_conversations_are_reported_not_fatal():
    cfg = SeedConfig(
        source="skywork", path="hub:x", n_train=100, n_eval=5, n_eval_conversations=10, require_next_turn=False, seed=0
    )
    seeds = draw_seeds(_single_turn_heavy(), cfg)
    assert len(seeds.train) == 100 and seeds.stats["eval_conversations_missing"] == 7


def test_long_chats_give_their_first_turns_that_fit_as_eval_conversations():
    from music.stages.seed import eval_conversation_prefix

    cfg = SeedConfig(path="p", max_message_chars=50, max_context_chars=100)  # messages <= 50, all <= 200 chars

    def turns(*lengths):
        return [{"role": r, "content": "x" * n} for pair in lengths for r, n in zip(("user", "assistant"), pair)]

    fits = RealConversation("a", "sharegpt", turns((10, 20), (10, 20)))
    assert eval_conversation_prefix(fits, cfg) is fits  # unchanged when whole
    long_third = RealConversation("b", "sharegpt", turns((10, 20), (10, 20), (10, 80), (10, 20)))
    cut = eval_conversation_prefix(long_third, cfg)
    assert cut.conversation_id == "b" and cut.messages == long_third.messages[:4]  # stops before the long message
    over_total = RealConversation("c", "sharegpt", turns((50, 50), (50, 45), (10, 10)))
    assert eval_conversation_prefix(over_total, cfg).messages == over_total.messages[:4]  # 195 chars; 215 with turn 3
    assert eval_conversation_prefix(RealConversation("d", "sharegpt", turns((10, 20), (10, 80))), cfg) is None
    assert eval_conversation_prefix(RealConversation("e", "sharegpt", turns((10, 20))), cfg) is None  # one reply
    assert long_third.messages[4]["content"] == "x" * 10  # the source record is not modified
    # draw_seeds takes them and counts the cut ones (a first request of its own: one whole conversation per request)
    fits.messages[0]["content"] = "y" * 10
    seeds = draw_seeds(
        [long_third, fits],
        SeedConfig(path="p", n_train=0, n_eval=0, n_eval_conversations=2, max_message_chars=50, max_context_chars=100),
    )
    assert sorted(len(c.messages) for c in seeds.eval_conversations) == [4, 4]
    assert seeds.stats["eval_conversations_cut"] == 1
