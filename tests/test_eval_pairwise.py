"""Evaluation items, per-seed scoring, reward trajectories, guards (disjointness, missing checkpoints) and
the whole evaluate stage on tiny files with fake scorers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from music.config import Params, Paths
from music.errors import DataError
from music.evaluate.items import item_rows, items_from_pairs, score_items, summarize_rows
from music.evaluate.pairwise import local_pairs, require_model
from music.schema import PreferencePair, first_difference_distance
from music.stages.evaluate import run as evaluate_variant
from music.stages.evaluate import trajectory_points
from music.stages.seed import TrainIndex, check_disjoint


class LastReplyScorer:
    """Reads only the last reply (word count): the kind of RM MUSIC is meant to fix."""

    def __init__(self):
        self.calls, self.conversations = 0, 0

    def score(self, conversations):
        self.calls += 1
        self.conversations += len(conversations)
        return [float(len(c[-1]["content"].split())) for c in conversations]


def conv(*replies, users=None):
    out = []
    for i, r in enumerate(replies):
        out += [{"role": "user", "content": (users or {}).get(i, f"question {i}")}, {"role": "assistant", "content": r}]
    return out


def music_pair(cid, divergence_turn, chosen, rejected):
    return PreferencePair(
        conv(*chosen),
        conv(*rejected),
        {"kind": "music", "divergence_turn": divergence_turn, "conversation_id": cid, "pair_id": f"music-{cid}"},
    )


def test_distance_counts_assistant_turns_from_the_first_difference():
    assert first_difference_distance(conv("a", "b", "c"), conv("a", "b", "x")) == 1
    assert first_difference_distance(conv("a", "b", "c"), conv("x", "b", "c")) == 3
    assert first_difference_distance(conv("a"), conv("a")) == 0


def test_items_groups_and_a_last_reply_scorer():
    pairs = [
        music_pair("m1", 2, ["x", "right answer here"], ["x", "no"]),  # distance 1: correct
        music_pair("m2", 1, ["right", "same end"], ["wrong", "same end"]),
    ]  # distance 2: a tie, counted wrong
    items = items_from_pairs("quality", pairs, source="sharegpt") + items_from_pairs("music", pairs)
    # the endpoints fixed in advance: quality twins in no group; held-out MUSIC pairs in early (length-matched) or last
    assert [(i.test, i.distance, i.group) for i in items] == [
        ("quality", 1, None),
        ("quality", 2, None),
        ("music", 1, "last"),
        ("music", 2, "early"),
    ]
    assert (
        items[0].cluster_id == "m1"
        and items_from_pairs("hh", [PreferencePair(conv("a"), conv("b"))])[0].cluster_id == "hh:0"
    )
    scorer = LastReplyScorer()
    rows = item_rows(items, score_items(scorer, items), variant="v", seed=0)
    assert scorer.calls == 1 and scorer.conversations == 4  # 8 conversations, each distinct one scored once
    summary = summarize_rows(rows)
    assert summary["groups"]["last"]["accuracy"] == 1.0 and summary["groups"]["early"]["accuracy"] == 0.0
    assert summary["tests"]["music"]["by_distance"]["2"]["n"] == 1
    assert rows[0]["variant"] == "v" and rows[0]["correct"] == 1 and rows[1]["correct"] == 0


def test_trajectory_cuts_each_branch_after_every_turn_from_the_one_before_divergence():
    pair = music_pair("m", 2, ["a", "b", "c"], ["a", "x", "y"])
    points = trajectory_points([pair])
    assert [p.relative_turn for p in points] == [-1, 0, 1]
    assert points[0].chosen == points[0].rejected == conv("a")
    assert points[1].chosen == conv("a", "b") and points[1].rejected == conv("a", "x")
    assert points[2].chosen == pair.chosen and points[2].rejected == pair.rejected


def test_disjointness_raises_on_a_leak():
    train = TrainIndex(frozenset({"b"}), frozenset())
    assert check_disjoint([(0, "a", None), (1, "c", None)], train, source="pairs") == 2
    with pytest.raises(DataError, match="'b'.*training conversation"):
        check_disjoint([(0, "a", None), (1, "b", None)], train, source="pairs/quality_eval")
    with pytest.raises(DataError, match="conversation_id"):
        check_disjoint([(0, None, None)], train, source="pairs/quality_eval")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "music" / "config.json")):
        require_model(tmp_path / "music", "music")
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="train_metrics.json"):
        require_model(tmp_path / "music", "music")


def test_local_sets_skip_absent_paths(tmp_path):
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "long good answer", "rejected": "bad"}) + "\n")
    pairs, skipped = local_pairs("ultrafeedback", path, limit=10)
    assert len(pairs) == 1 and skipped == 0
    pairs, reason = local_pairs("hh", tmp_path / "none.jsonl.gz", limit=10)
    assert pairs is None and "does not exist" in reason


def test_local_sets_on_real_hh(shared_data):
    pairs, skipped = local_pairs("hh", shared_data / "hh-rlhf" / "harmless-base-test-first2000.jsonl.gz", limit=100)
    assert len(pairs) + skipped == 100 and skipped >= 1  # line 87 has an empty turn


# ---------------------------------------------------------------- the whole stage on tiny files
def _write_pairs(path: Path, pairs):
    from music.schema import pair_record
    from music.store import pair_features, save_records

    save_records(
        [pair_record(chosen=p.chosen, rejected=p.rejected, **{k: v for k, v in p.meta.items()}) for p in pairs],
        path,
        pair_features(),
    )


def write_heldout(P: Params, quality=None) -> None:
    """The heldout stage on the workspace's seeds (swap items; no generation: D eval and MT-Bench off), then the
    given quality twins in place of its (empty) quality_eval."""
    from music.stages.heldout import run as run_heldout

    P.contrast.d_pairs, P.heldout.quality_mtbench = False, False
    run_heldout(P)
    if quality is not None:
        _write_pairs(Path(P.paths.heldout) / "quality_eval", quality)


def make_workspace(tmp_path: Path, *, leak: bool = False, seeds=(0, 1)) -> Params:
    paths = Paths(
        seeds=str(tmp_path / "seeds"),
        pairs=str(tmp_path / "pairs"),
        heldout=str(tmp_path / "heldout"),
        models=str(tmp_path / "models"),
        metrics=str(tmp_path / "metrics"),
        evaluation=str(tmp_path / "evaluation"),
        figures=str(tmp_path / "figures"),
    )
    for s in seeds:
        model = Path(paths.models) / "baseline" / f"seed{s}"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        (model / "train_metrics.json").write_text(json.dumps({"final_loss": 0.5, "steps": 3}))
    seeds_dir = Path(paths.seeds)
    seeds_dir.mkdir()
    train_ids = ["t1", "t2"] + (["m1"] if leak else [])
    (seeds_dir / "train.jsonl").write_text("".join(json.dumps({"conversation_id": c}) + "\n" for c in train_ids))
    convs = [
        {
            "conversation_id": f"e{i}",
            "source": "test",
            "messages": conv(f"topic{i} one" + " x" * i, f"topic{i} two" + " x" * i, f"topic{i} three" + " x" * i),
        }
        for i in range(4)
    ]
    (seeds_dir / "eval_conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    quality = [
        PreferencePair(
            conv("good long answer"),
            conv("bad"),
            {"kind": "quality", "conversation_id": "q1", "pair_id": "q1-last", "source": "sharegpt"},
        ),
        PreferencePair(
            conv("good long answer", "same"),
            conv("bad", "same"),
            {"kind": "quality", "conversation_id": "q1", "pair_id": "q1-early", "source": "sharegpt"},
        ),
    ]
    _write_pairs(
        Path(paths.pairs) / "music_eval", [music_pair("m1", 2, ["x", "right answer here", "end"], ["x", "no", "end!"])]
    )
    P = Params(paths=paths)
    P.heldout.swap_same_conversation = True  # off by default; every test kind is scored here
    write_heldout(P, quality)
    P.train.seeds = list(seeds)
    P.evaluate.local_sets = {"hh": str(tmp_path / "absent.jsonl.gz")}
    return P


def test_evaluate_variant_writes_numbers_items_and_trajectories(tmp_path):
    P = make_workspace(tmp_path)
    made = []

    def make_scorer(model_dir):
        made.append(Path(model_dir).name)
        return LastReplyScorer()

    metrics = evaluate_variant(P, variant="baseline", make_scorer=make_scorer)
    assert made == ["seed0", "seed1"]
    on_disk = json.loads((tmp_path / "metrics" / "baseline.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))

    def numbers_only(x):
        return (
            all(numbers_only(v) for v in x.values())
            if isinstance(x, dict)
            else isinstance(x, (int, float)) or x is None
        )

    assert numbers_only(on_disk)
    acc = on_disk["accuracy"]
    assert acc["quality@1"]["mean"] == 1.0 and acc["quality@2"]["mean"] == 0.0 and acc["quality@2"]["n"] == 2
    assert acc["last"]["n_items"] >= 1 and acc["early"]["n_items"] >= 1
    assert {"swap@1", "swap@2", "swap@3", "music@2"} <= set(acc)
    rows = list(csv.DictReader(open(tmp_path / "evaluation" / "baseline" / "items.csv")))
    assert {r["seed"] for r in rows} == {"0", "1"} and {r["test"] for r in rows} == {
        "quality",
        "music",
        "swap",
        "swap_same",
    }
    traj = list(csv.DictReader(open(tmp_path / "evaluation" / "baseline" / "trajectory.csv")))
    assert sorted({int(r["relative_turn"]) for r in traj}) == [-1, 0, 1]
    assert all(float(r["gap"]) == 0.0 for r in traj if r["relative_turn"] == "-1")  # identical before divergence
    info = json.loads((tmp_path / "evaluation" / "baseline" / "info.json").read_text())
    assert "does not exist" in info["skipped"]["hh"] and "rewardbench" in info["skipped"]


def test_evaluate_variant_refuses_a_leak_before_scoring(tmp_path):
    P = make_workspace(tmp_path, leak=True)
    scorer = LastReplyScorer()
    with pytest.raises(DataError, match="music_eval.*'m1'"):
        evaluate_variant(P, variant="baseline", make_scorer=lambda d: scorer)
    assert scorer.calls == 0 and not (tmp_path / "metrics" / "baseline.json").exists()


def test_evaluate_variant_missing_model(tmp_path):
    P = make_workspace(tmp_path)
    with pytest.raises(FileNotFoundError, match="models/music/seed0/config.json"):
        evaluate_variant(P, variant="music", make_scorer=lambda d: LastReplyScorer())


class HistoryScorer:
    """Reads every message: the score is the word count of the whole conversation (a swap never ties)."""

    @staticmethod
    def value(c) -> float:
        return float(sum(len(m["content"].split()) for m in c)) + 0.01 * len(c)

    def score(self, conversations):
        return [self.value(c) for c in conversations]


def test_the_history_blind_reference_sees_only_the_last_exchange(tmp_path):
    from music.evaluate.items import Item, last_exchange
    from music.stages.evaluate import load_items

    long = [{"role": "system", "content": "be brief"}] + conv("one", "two", "three", users={2: "final question"})
    assert last_exchange(long) == [
        {"role": "user", "content": "final question"},
        {"role": "assistant", "content": "three"},
    ]
    item = Item("swap", "x", 2, long, long[:2] + [{"role": "assistant", "content": "swapped in"}] + long[3:], "s", "c1")
    assert item.blind().chosen == item.blind().rejected == last_exchange(long) and item.blind().cluster == "c1"

    P = make_workspace(tmp_path)
    evaluate_variant(P, variant="baseline", make_scorer=lambda d: HistoryScorer())
    items = {(it.test, it.item_id): it for it in load_items(P)[0]}
    rows = [r for r in csv.DictReader(open(tmp_path / "evaluation" / "baseline" / "items.csv")) if r["seed"] == "0"]
    for r in rows:
        it = items[(r["test"], r["item_id"])]
        assert float(r["chosen_score"]) == pytest.approx(HistoryScorer.value(it.chosen), abs=1e-6)
        assert float(r["blind_chosen_score"]) == pytest.approx(HistoryScorer.value(last_exchange(it.chosen)), abs=1e-6)
        assert float(r["blind_rejected_score"]) == pytest.approx(
            HistoryScorer.value(last_exchange(it.rejected)), abs=1e-6
        )
    swaps = [r for r in rows if r["test"] == "swap"]
    early = [r for r in swaps if int(r["distance"]) >= 2]
    assert early and all(float(r["blind_correct"]) == 0.5 and r["chosen_score"] != r["rejected_score"] for r in early)
    by_cluster = {}
    for r in swaps:  # swap@1/2/3 of one conversation share a cluster
        by_cluster.setdefault(r["cluster"], set()).add(int(r["distance"]))
    assert any(len(d) > 1 for d in by_cluster.values())
    quality = {r["item_id"]: r for r in rows if r["test"] == "quality"}
    assert quality["q1-last"]["cluster"] == quality["q1-early"]["cluster"] == "q1"  # twins share a question
    assert float(quality["q1-last"]["length_correct"]) == 1.0  # "good long answer" is longer than "bad"
    metrics = json.loads((tmp_path / "metrics" / "baseline.json").read_text())
    assert metrics["history_blind"]["swap"]["n"] == 2  # per seed, over two seeds
