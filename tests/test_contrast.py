"""Contrast: parsing, divergence choice, the rejected branch's shape, D pairs and the written pair sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONTRAST_PROMPT, FakeChat, WordOverlapEncoder, make_seeds, tree_bytes, write_seed_files

from music.chat import ChatReply
from music.config import ContrastConfig, SimulateConfig
from music.schema import PreferencePair, user_turns
from music.stages.contrast import contrast_conversations, parse_contrast, pick_divergence
from music.stages.contrast import run as run_contrast
from music.stages.heldout import run as run_heldout
from music.stages.simulate import run as run_simulate
from music.stages.simulate import simulate_seeds
from music.store import load_records


@pytest.mark.parametrize(
    "text,expected",
    [
        ("MODIFIED REQUEST: twice-cooked pork?\nANSWER: Slice and fry.", ("twice-cooked pork?", "Slice and fry.")),
        (
            "Sure.\n**MODIFIED REQUEST:** How do I shuffle?\n**ANSWER:** Use random.shuffle.\nDone.",
            ("How do I shuffle?", "Use random.shuffle.\nDone."),
        ),
        ("modified request: a\n\nanswer: b", ("a", "b")),
        ("MODIFIED REQUEST: only the request", None),
        ("ANSWER: only the answer", None),
        ("MODIFIED REQUEST:\nANSWER: ", None),
        (None, None),
    ],
)
def test_parse_contrast(text, expected):
    assert parse_contrast(text) == expected


def test_pick_divergence_fixed_random_and_keyed_by_seed_id():
    assert pick_divergence("s", 3, ContrastConfig(divergence="fixed", divergence_turn=2)) == 2
    with pytest.raises(ValueError, match="outside"):
        pick_divergence("s", 2, ContrastConfig(divergence="fixed", divergence_turn=3))
    cfg = ContrastConfig(divergence="random", seed=0, min_turns_after_divergence=0)
    draws = [pick_divergence(f"s{i}", 4, cfg) for i in range(60)]
    assert draws == [pick_divergence(f"s{i}", 4, cfg) for i in range(60)]  # same id, same turn
    assert set(draws) == {1, 2, 3, 4}
    # the default never diverges at the last turn: a MUSIC pair always differs in 2+ assistant turns
    assert {pick_divergence(f"s{i}", 4, ContrastConfig(divergence="random")) for i in range(60)} == {1, 2, 3}
    late = ContrastConfig(divergence="random", min_turns_after_divergence=2)
    assert {pick_divergence(f"s{i}", 4, late) for i in range(60)} == {1, 2}
    assert [
        pick_divergence(f"s{i}", 4, ContrastConfig(divergence="random", seed=1, min_turns_after_divergence=0))
        for i in range(60)
    ] != draws
    with pytest.raises(ValueError, match="leaves no turn"):
        pick_divergence("s", 1, ContrastConfig(divergence="random", min_turns_after_divergence=1))


def _simulated(turns=3, n=4):
    return simulate_seeds(
        make_seeds(n),
        FakeChat("fake:user"),
        FakeChat("fake:assistant"),
        SimulateConfig(turns=turns, real_next_user=False),
        split="train",
    )


def _first_difference(a: list[dict], b: list[dict]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def test_instruct_branch_diverges_at_the_chosen_turn_and_keeps_going():
    convs = _simulated(turns=3)
    user, asst, con = FakeChat("fake:user"), FakeChat("fake:assistant"), FakeChat("fake:contrast")
    cfg = ContrastConfig(method="instruct", divergence="fixed", divergence_turn=2)
    cands = contrast_conversations(
        convs,
        user=user,
        assistant=asst,
        contrast=con,
        sim_cfg=SimulateConfig(turns=3, real_next_user=False),
        cfg=cfg,
        split="train",
        encoder=WordOverlapEncoder(),
    )
    assert con.calls == 1 and user.calls == 1 and asst.calls == 1  # batched: one call each
    for conv, c in zip(convs, cands):
        f = c["fields"]
        assert (
            c["failure"] is None and f["contrast_method"] == "instruct" and f["models"]["contrast"] == "fake:contrast"
        )
        chosen, rejected = f["chosen"], f["rejected"]
        assert user_turns(chosen) == user_turns(rejected) and rejected[-1]["role"] == "assistant"
        assert f["divergence_turn"] == conv["context_turns"] + 2 and f["turns_after_divergence"] == 1
        i = _first_difference(chosen, rejected)
        assert rejected[i]["role"] == "assistant" and user_turns(rejected[: i + 1]) == f["divergence_turn"]
        assert rejected[i - 1] == chosen[i - 1] and f["original_request"] == chosen[i - 1]["content"]
        assert rejected[i]["content"].startswith("The answer about")  # only the ANSWER part, no request
        assert "MODIFIED" not in rejected[i]["content"]
        assert f["modified_request"].startswith("What about")
        assert rejected[i + 1]["content"] != chosen[i + 1]["content"]  # the user reacts to the rejected history
        assert "contrast_instruct.txt" in {p["name"] for p in f["prompts"]}
        PreferencePair.from_record({k: v for k, v in f.items()}, source="test", record=f["pair_id"])


def test_auto_falls_back_to_resampling_when_the_reply_does_not_parse():
    convs = _simulated(turns=2)

    def unparseable(messages, seed):
        return (
            ChatReply("I think you meant something else.", "stop")
            if CONTRAST_PROMPT in messages[0]["content"]
            else None
        )

    user, asst = FakeChat("fake:user"), FakeChat("fake:assistant")
    cfg = ContrastConfig(method="auto", divergence="fixed", divergence_turn=1, request_similarity=None)
    cands = contrast_conversations(
        convs,
        user=user,
        assistant=asst,
        contrast=FakeChat(script=unparseable),
        sim_cfg=SimulateConfig(turns=2, real_next_user=False),
        cfg=cfg,
        split="train",
        encoder=WordOverlapEncoder(),
    )
    for c in cands:
        f = c["fields"]
        assert c["failure"] is None and f["contrast_method"] == "resample"
        assert c["notes"]["instruct_parsed"] is False
        assert f["modified_request"] != f["original_request"] and f["modified_request"].startswith("Could you tell me")
        i = _first_difference(f["chosen"], f["rejected"])
        assert f["rejected"][i]["content"].startswith("Answer ")
        assert [e["role"] for e in c["events"] if e["branch"] == "rejected"] == [
            "modified_request",
            "assistant",
            "user",
            "assistant",
        ]
    # instruct-only: the same replies are counted failures
    only = contrast_conversations(
        convs,
        user=user,
        assistant=asst,
        contrast=FakeChat(script=unparseable),
        sim_cfg=SimulateConfig(turns=2, real_next_user=False),
        cfg=ContrastConfig(method="instruct", divergence="fixed"),
        split="train",
        encoder=WordOverlapEncoder(),
    )
    assert {c["failure"] for c in only} == {"modified_request"}


def test_failed_simulation_becomes_a_counted_candidate_not_a_pair():
    convs = _simulated(turns=2)
    convs[0] = {**convs[0], "failure": "empty_reply"}
    cands = contrast_conversations(
        convs,
        user=FakeChat(),
        assistant=FakeChat(),
        contrast=FakeChat(),
        sim_cfg=SimulateConfig(turns=2, real_next_user=False),
        cfg=ContrastConfig(method="instruct", divergence="random"),
        split="train",
        encoder=WordOverlapEncoder(),
    )
    assert cands[0]["failure"] == "empty_reply" and cands[0]["fields"]["rejected"] is None
    assert all(c["failure"] is None for c in cands[1:])


def _stage(tmp_path, **contrast):
    P = write_seed_files(tmp_path)
    P.simulate.turns = 2
    for k, v in contrast.items():
        setattr(P.contrast, k, v)
    run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    report = run_contrast(
        P,
        backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), FakeChat("fake:contrast")),
        encoder=WordOverlapEncoder(),
    )
    return P, report


def test_run_contrast_writes_three_loadable_pair_sets_and_a_report(tmp_path):
    from datasets import load_from_disk

    P, report = _stage(tmp_path, method="auto")
    out = Path(P.paths.pairs)
    assert (out / "filter_report.json").is_file()
    assert not (out / "d_eval").exists() and not (out / "quality_eval").exists()  # held-out: music.stages.heldout
    for name in ("d_train", "music_train", "music_eval"):
        ds = load_from_disk(str(out / name))
        recs = ds.to_list()
        assert len(recs) == report["splits"][name]["kept"] > 0
        for r in recs:
            PreferencePair.from_record(r, source=name, record=r["pair_id"])
            assert r["kind"] == name.split("_")[0]
    d = load_records(out / "d_train")[0]
    assert d["chosen"][-1]["content"] == "Real next reply 0." and d["rejected"][-1]["content"].startswith("Answer ")
    assert d["chosen"][:-1] == d["rejected"][:-1] and d["divergence_turn"] is None
    assert d["chosen"][-2] == {"role": "user", "content": "Real next user 0?"}
    first = tree_bytes(out)
    run_contrast(
        P,
        backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), FakeChat("fake:contrast")),
        encoder=WordOverlapEncoder(),
    )
    assert tree_bytes(out) == first  # byte-identical


def test_d_from_a_labelled_source_uses_the_loader(tmp_path, monkeypatch):
    import music.pairs.last_turn

    calls = []

    def fake_load_pairs(kind, location, *, split="train", limit=None, skipped=None):
        calls.append((kind, location, split, limit))
        conv = [{"role": "user", "content": f"q {split}"}]
        return [
            PreferencePair(
                conv + [{"role": "assistant", "content": "good"}],
                conv + [{"role": "assistant", "content": "bad"}],
                {"pair_id": f"p-{split}"},
            )
        ]

    monkeypatch.setattr(music.pairs.last_turn, "load_pairs", fake_load_pairs)
    P, report = _stage(tmp_path, d_source="skywork:hub:Skywork/Skywork-Reward-Preference-80K-v0.2", d_limit=5)
    assert calls == [("skywork", "hub:Skywork/Skywork-Reward-Preference-80K-v0.2", "train", 5)]
    run_heldout(P, assistant=FakeChat("fake:assistant"))  # held-out D: the heldout stage
    assert calls[1:] == [("skywork", "hub:Skywork/Skywork-Reward-Preference-80K-v0.2", "test", 5)]
    assert [r["pair_id"] for r in load_records(Path(P.paths.heldout) / "d_eval")] == ["d-p-test"]
    with pytest.raises(ValueError, match="KIND:LOCATION"):
        from music.pairs.last_turn import parse_d_source

        parse_d_source("hub")


def test_missing_conversations_name_the_folder(tmp_path):
    from music.errors import DataError

    with pytest.raises(DataError, match="run the stage"):
        load_records(tmp_path / "conversations" / "train")


def test_an_empty_pair_set_keeps_its_columns(tmp_path):
    from datasets import load_from_disk

    from music.store import pair_features, save_records

    save_records([], tmp_path / "empty", pair_features())
    ds = load_from_disk(str(tmp_path / "empty"))
    assert len(ds) == 0 and set(ds.column_names) == set(pair_features())
    assert load_records(tmp_path / "empty") == []


def test_d_from_the_seed_source_follows_the_seed_split(tmp_path, monkeypatch):
    """With one split (Skywork), a pair whose conversation the seed stage held out is never a training pair."""
    import music.pairs.last_turn
    from music.files import read_jsonl

    P = write_seed_files(tmp_path)
    held_out = {rec["conversation_id"] for _, rec in read_jsonl(Path(P.paths.seeds) / "eval.jsonl")}
    ids = sorted(held_out) + ["train-only-1", "train-only-2"]

    def fake_load_pairs(kind, location, *, split="train", limit=None, skipped=None):
        assert split == "train"
        conv = [{"role": "user", "content": "q"}]
        return [
            PreferencePair(
                conv + [{"role": "assistant", "content": "good"}],
                conv + [{"role": "assistant", "content": "bad"}],
                {"pair_id": i},
            )
            for i in ids
        ]

    monkeypatch.setattr(music.pairs.last_turn, "load_pairs", fake_load_pairs)
    P.simulate.turns = 2
    P.contrast.d_source, P.heldout.d_eval_split = "skywork:hub:Skywork/Skywork-Reward-Preference-80K-v0.2", "train"
    run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    run_contrast(
        P,
        backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), FakeChat("fake:contrast")),
        encoder=WordOverlapEncoder(),
    )
    run_heldout(P, assistant=FakeChat("fake:assistant"))
    train = {r["conversation_id"] for r in load_records(Path(P.paths.pairs) / "d_train")}
    evals = {r["conversation_id"] for r in load_records(Path(P.paths.heldout) / "d_eval")}
    assert train == {"train-only-1", "train-only-2"} and evals == held_out and held_out


# --- divergence at the real next user message (contrast.divergence: real) ---------------------------------------


def test_divergence_real_is_the_first_simulated_turn():
    assert pick_divergence("s", 3, ContrastConfig(divergence="real")) == 1
    assert pick_divergence("s", 1, ContrastConfig(divergence="real", min_turns_after_divergence=0)) == 1
    with pytest.raises(ValueError, match="min_turns_after_divergence"):
        pick_divergence("s", 1, ContrastConfig(divergence="real", min_turns_after_divergence=1))


def test_real_divergence_misreads_the_persons_request_and_says_so():
    import dataclasses

    seeds = make_seeds(4)
    seeds[3] = dataclasses.replace(seeds[3], next_user=None)  # turn 1 generated: the pair says its request is not real
    convs = simulate_seeds(
        seeds,
        FakeChat("fake:user"),
        FakeChat("fake:assistant"),
        SimulateConfig(turns=3, real_next_user=True),
        split="train",
    )
    asst = FakeChat("fake:assistant")
    cands = contrast_conversations(
        convs,
        user=FakeChat("fake:user"),
        assistant=asst,
        contrast=None,
        sim_cfg=SimulateConfig(turns=3, real_next_user=False),
        split="train",
        encoder=WordOverlapEncoder(),
        cfg=ContrastConfig(method="resample", divergence="real", min_contrast_margin=None, request_similarity=None),
    )
    for s, conv, c in zip(seeds, convs, cands):
        f = c["fields"]
        assert c["failure"] is None and f["divergence_turn"] == conv["context_turns"] + 1
        assert f["turns_after_divergence"] == 2
        reply_at = len(s.context) + 1
        assert f["chosen"][:reply_at] == f["rejected"][:reply_at]  # same history, the real request included
        assert f["chosen"][reply_at] != f["rejected"][reply_at]
        assert f["relevance"]["original_request_real"] is (s.next_user is not None)
        if s.next_user:
            assert f["original_request"] == s.next_user == f["chosen"][reply_at - 1]["content"]
        # both replies at the divergence come from the assistant model (same backend, same prompt)
        assert f["rejected"][reply_at]["content"].startswith("Answer ") and f["chosen"][reply_at]["content"].startswith(
            "Answer "
        )
    from music.stages.contrast import band_counts

    counts = band_counts(cands, cands, ContrastConfig())
    assert counts["real_requests"] == 3 and counts["kept_real_requests"] == 3 and counts["rewrites_outside_band"] == 0


def test_near_miss_rows_draw_real_request_pairs_at_random_and_show_both_replies_at_the_divergence():
    from music.stages.contrast import near_miss_rows

    ctx = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    def pair(i, real):
        chosen = [
            *ctx,
            {"role": "user", "content": f"real {i}"},
            {"role": "assistant", "content": f"A{i}"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
        rejected = [*chosen[:3], {"role": "assistant", "content": f"B{i}"}, *chosen[4:]]
        return {
            "pair_id": f"p{i}",
            "chosen": chosen,
            "rejected": rejected,
            "divergence_turn": 2,
            "original_request": f"real {i}",
            "modified_request": f"near {i}",
            "relevance": {
                "original_request_real": real,
                "request_similarity": 0.5,
                "chosen_margin": 0.1,
                "rejected_margin": 0.2,
            },
        }

    pairs = [pair(0, False)] + [pair(i, True) for i in range(1, 13)]
    pairs[0]["relevance"]["request_similarity"] = 0.9  # not a real request: never shown
    for i in range(1, 13):
        pairs[i]["relevance"]["request_similarity"] = round(0.3 + 0.04 * i, 2)
    rows = near_miss_rows(pairs, n=4, seed=0)
    ids = [r["pair_id"] for r in rows]
    assert len(ids) == 4 and "p0" not in ids
    assert ids == sorted(ids, key=lambda p: int(p[1:]))  # file order, not nearest first
    assert ids != ["p12", "p11", "p10", "p9"] and rows == near_miss_rows(pairs, n=4, seed=0)  # random, seeded
    assert near_miss_rows(pairs, n=4, seed=1) != rows
    assert len(near_miss_rows(pairs, n=50)) == 12  # every real-request pair when there are fewer
    row = next(r for r in near_miss_rows(pairs, n=12) if r["pair_id"] == "p1")
    assert row["original request (real)"] == "real 1" and row["modified request"] == "near 1"
    assert row["chosen reply"] == "A1" and row["rejected reply"] == "B1"


def test_the_stage_with_real_requests_and_a_window_reports_both(tmp_path):
    def stage(root, band):
        P = write_seed_files(root)
        P.simulate.turns, P.simulate.real_next_user = 2, True
        P.contrast.divergence, P.contrast.request_similarity, P.contrast.min_music_train_pairs = "real", band, 0
        P.contrast.d_pairs = P.heldout.quality_mtbench = False
        P.contrast.candidates, P.contrast.answered_candidates = 3, 2  # 3 rewrites per request: 9 for the 3 seeds
        run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
        return P, run_contrast(
            P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant"), None), encoder=WordOverlapEncoder()
        )

    # the fake rewrites share no word with the fake real requests (similarity 0): inside [0, 0.8], outside [0.1, 0.8]
    P, report = stage(tmp_path / "in", [0.0, 0.8])
    assert report["band"]["music_train"] == {
        "request_similarity": [0.0, 0.8],
        "rewrites_usable": 9,
        "rewrites_outside_band": 0,
        "no_rewrite_in_band": 0,
        "real_requests": 3,
        "kept_real_requests": report["splits"]["music_train"]["kept"],
    }
    recs = load_records(Path(P.paths.pairs) / "music_train")
    assert recs and all(
        r["relevance"]["original_request_real"] and r["relevance"]["request_similarity"] == 0.0 for r in recs
    )
    assert all(r["original_request"].startswith("Real next user") for r in recs)
    P, report = stage(tmp_path / "out", [0.1, 0.8])
    assert (
        report["splits"]["music_train"]["removed"]["request_band"] == 3 and report["splits"]["music_train"]["kept"] == 0
    )
    assert report["band"]["music_train"]["rewrites_outside_band"] == 9
    assert report["failures"]["music_train"]["failed"] == 0  # window drops are not request failures


def test_stored_relevance_floats_keep_four_decimals_and_nothing_else_changes():
    from music.stages.contrast import STORED_DECIMALS, stored_floats

    rel = {"chosen_margin": 0.1234567, "echo": 0.99996, "modified_candidates": [{"s": -0.00004}], "real": True, "n": 3}
    assert STORED_DECIMALS == 4
    assert stored_floats(rel) == {
        "chosen_margin": 0.1235,
        "echo": 1.0,
        "modified_candidates": [{"s": -0.0}],
        "real": True,
        "n": 3,
    }
    assert stored_floats(None) is None
