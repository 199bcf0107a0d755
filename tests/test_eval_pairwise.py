"""Held-out pair accuracy by kind and divergence distance; guards (disjointness, missing checkpoint);
the whole evaluate stage on tiny files with a fake scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from music.config import Params, Paths
from music.errors import DataError
from music.evaluate.run import evaluate_variant
from music.evaluate.pairwise import divergence_distance, local_set_accuracy, pairwise_accuracy, require_model
from music.schema import PreferencePair
from music.seeding import check_disjoint


class LastReplyScorer:
    """Reads only the last reply (word count): the kind of RM MUSIC is meant to fix."""

    def __init__(self):
        self.calls = 0

    def score(self, conversations):
        self.calls += 1
        return [float(len(c[-1]["content"].split())) for c in conversations]


def conv(*replies, users=None):
    out = []
    for i, r in enumerate(replies):
        out += [{"role": "user", "content": (users or {}).get(i, f"question {i}")}, {"role": "assistant", "content": r}]
    return out


def music_pair(cid, divergence_turn, chosen, rejected):
    return PreferencePair(conv(*chosen), conv(*rejected), {"kind": "music", "divergence_turn": divergence_turn, "conversation_id": cid})


def test_divergence_distance_counts_from_the_end():
    assert divergence_distance(music_pair("c", 3, ["a", "b", "c"], ["a", "b", "x"])) == 1
    assert divergence_distance(music_pair("c", 1, ["a", "b", "c"], ["x", "b", "c"])) == 3


def test_pairwise_by_kind_and_distance():
    pairs = [
        PreferencePair(conv("good long answer"), conv("bad"), {"kind": "d", "conversation_id": "d1"}),
        PreferencePair(conv("bad"), conv("long bad answer"), {"kind": "d", "conversation_id": "d2"}),
        music_pair("m1", 2, ["x", "right answer here"], ["x", "no"]),  # distance 1: correct
        music_pair("m2", 1, ["right", "same end"], ["wrong", "same end"]),  # distance 2: tie -> wrong
    ]
    res = pairwise_accuracy(LastReplyScorer(), pairs)
    assert res["by_kind"]["d"]["accuracy"] == 0.5 and res["by_kind"]["d"]["n"] == 2
    assert res["by_kind"]["music"]["accuracy"] == 0.5
    assert res["music_by_distance"]["1"]["accuracy"] == 1.0
    assert res["music_by_distance"]["2"]["accuracy"] == 0.0
    assert res["all"]["n"] == 4


def test_disjointness_raises_on_a_leak():
    assert check_disjoint([(0, "a"), (1, "b")], {"c"}, source="pairs") == 2
    with pytest.raises(DataError, match="'b'.*training conversation"):
        check_disjoint([(0, "a"), (1, "b")], {"b"}, source="pairs/d_eval")
    with pytest.raises(DataError, match="conversation_id"):
        check_disjoint([(0, None)], set(), source="pairs/d_eval")


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
    res = local_set_accuracy(LastReplyScorer(), {"ultrafeedback": str(path), "hh": str(tmp_path / "none.jsonl.gz")}, limit=10)
    assert res["ultrafeedback"]["accuracy"] == 1.0
    assert "does not exist" in res["hh"]["skipped"]


def test_local_sets_on_real_hh(shared_data):
    res = local_set_accuracy(LastReplyScorer(), {"hh": str(shared_data / "hh-rlhf" / "harmless-base-test-first2000.jsonl.gz")}, limit=100)
    assert res["hh"]["n"] + res["hh"]["n_skipped"] == 100 and res["hh"]["n_skipped"] >= 1  # line 87 has an empty turn


# ---------------------------------------------------------------- the whole stage on tiny files
def _write_pairs(path: Path, pairs):
    from datasets import Dataset

    Dataset.from_list([p.to_record() for p in pairs]).save_to_disk(str(path))


def make_workspace(tmp_path: Path, *, leak: bool = False) -> Params:
    paths = Paths(seeds=str(tmp_path / "seeds"), pairs=str(tmp_path / "pairs"), models=str(tmp_path / "models"),
                  metrics=str(tmp_path / "metrics"), figures=str(tmp_path / "figures"))
    model = Path(paths.models) / "baseline"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "train_metrics.json").write_text(json.dumps({"final_loss": 0.5, "steps": 3, "note": "text is dropped"}))
    seeds = Path(paths.seeds)
    seeds.mkdir()
    train_ids = ["t1", "t2"] + (["m1"] if leak else [])
    (seeds / "train.jsonl").write_text("".join(json.dumps({"conversation_id": c}) + "\n" for c in train_ids))
    convs = [{"conversation_id": f"e{i}", "source": "test", "messages": conv(f"topic{i} one", f"topic{i} two", f"topic{i} three")}
             for i in range(3)]
    (seeds / "eval_conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    _write_pairs(Path(paths.pairs) / "d_eval", [PreferencePair(conv("good long answer"), conv("bad"), {"kind": "d", "conversation_id": "d1", "divergence_turn": None})])
    _write_pairs(Path(paths.pairs) / "music_eval", [music_pair("m1", 2, ["x", "right answer here"], ["x", "no"])])
    P = Params(paths=paths)
    P.evaluate.local_sets = {"hh": str(tmp_path / "absent.jsonl.gz")}
    return P


def test_evaluate_variant_writes_flat_metrics(tmp_path):
    P = make_workspace(tmp_path)
    metrics = evaluate_variant(P, "baseline", scorer=LastReplyScorer())
    on_disk = json.loads((tmp_path / "metrics" / "baseline.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["pairwise"]["by_kind"]["d"]["accuracy"] == 1.0
    assert on_disk["pairwise"]["music_by_distance"]["1"]["n"] == 1
    assert set(on_disk["sensitivity"]["by_distance"]) == {"1", "2", "3"}
    assert "skipped" in on_disk["rewardbench"] and "skipped" in on_disk["local"]["hh"]
    assert on_disk["train"] == {"final_loss": 0.5, "steps": 3}


def test_evaluate_variant_refuses_a_leak_before_scoring(tmp_path):
    P = make_workspace(tmp_path, leak=True)
    scorer = LastReplyScorer()
    with pytest.raises(DataError, match="music_eval.*'m1'"):
        evaluate_variant(P, "baseline", scorer=scorer)
    assert scorer.calls == 0 and not (tmp_path / "metrics" / "baseline.json").exists()


def test_evaluate_variant_missing_model(tmp_path):
    P = make_workspace(tmp_path)
    with pytest.raises(FileNotFoundError, match="models/music/config.json"):
        evaluate_variant(P, "music", scorer=LastReplyScorer())
