"""The choices study (music.studies.choices): alternatives, development items, the summary; never held-out items."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from helpers import REPO

from music.config import Params, Paths, StudyConfig, TrainConfig
from music.errors import DataError
from music.files import write_jsonl
from music.studies.choices import DEFAULT, alternatives, dev_items, parse_choice, summarise, verdict


def test_alternatives_change_one_train_key_each_and_refuse_what_changes_nothing():
    params = Params(study=StudyConfig(choices=["lora_last_layers=2", "head_init=normal"]))
    arms = alternatives(params)
    assert list(arms) == [DEFAULT, "lora_last_layers=2", "head_init=normal"]
    assert arms["lora_last_layers=2"].lora_last_layers == 2 and arms["lora_last_layers=2"].head_init == "zero"
    assert parse_choice("max_length=256") == ("max_length", 256)
    with pytest.raises(DataError, match="one of train's keys"):
        parse_choice("lora_layers=2")
    with pytest.raises(DataError, match="already 1"):
        alternatives(Params(study=StudyConfig(choices=["lora_last_layers=1"])))
    with pytest.raises(DataError, match="head_init"):  # the TrainConfig checks its own values
        alternatives(Params(study=StudyConfig(choices=["head_init=uniform"])))


def _conv(i: int, turns: int = 3) -> dict:
    msgs = []
    for t in range(turns):
        msgs += [
            {"role": "user", "content": f"Question {t} of chat {i}?"},
            {"role": "assistant", "content": f"Answer {t} of chat {i}, about as long as the others."},
        ]
    return {"conversation_id": f"dev{i}_0", "source": "sharegpt", "messages": msgs}


def test_dev_items_are_swaps_of_the_development_conversations_only(tmp_path):
    seeds = tmp_path / "seeds"
    write_jsonl(seeds / "dev_conversations.jsonl", [_conv(i) for i in range(6)])
    params = Params(paths=Paths(seeds=str(seeds)))
    items = dev_items(params)
    assert items and {it.cluster for it in items} == {f"dev{i}_0" for i in range(6)}
    assert {it.distance for it in items} == {1, 2, 3}
    for it in items:  # chosen: the conversation as it was; rejected: one reply from another dev conversation
        assert it.chosen != it.rejected and len(it.chosen) == len(it.rejected)
        assert it.chosen in [_conv(i)["messages"] for i in range(6)]
    assert {it.group for it in items} >= {"last", "early"}
    with pytest.raises(DataError, match="does not exist"):
        dev_items(Params(paths=Paths(seeds=str(tmp_path / "none"))))


def test_summary_pairs_alternatives_with_the_default_on_the_same_items():
    from music.evaluate.items import Item

    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a reply"}]
    items = [Item("swap", f"i{k}", 1 + k % 2, conv, conv, "dev", f"c{k // 2}") for k in range(40)]
    default = [[k % 4 != 0 for k in range(40)] for _ in range(4)]  # 75% right
    better = [[True] * 40 for _ in range(4)]
    rows = summarise({DEFAULT: default, "head_init=normal": better}, items)
    by = {(r["alternative"], r["group"]): r for r in rows}
    assert by[(DEFAULT, "last")]["diff_vs_default"] is None and verdict(by[(DEFAULT, "last")]) == "default"
    alt = by[("head_init=normal", "last")]
    assert alt["accuracy"] == 100.0 and alt["diff_vs_default"] == 50.0 and alt["n_items"] == 20
    assert alt["diff_low"] > 0 and verdict(alt) == "alternative better"


def test_the_study_is_declared_beside_the_pipeline_with_its_params():
    from helpers import covered, module_code

    stage = yaml.safe_load((REPO / "studies" / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["choices"]
    assert not [f for f in module_code(REPO, {"music.studies.choices"}) if not covered(f, stage["deps"])]
    assert stage["cmd"] == "python -m music.studies.choices" and stage["wdir"] == ".."
    assert {"train", "study.choices", "study.seed", "heldout.swap_max_distance"} <= set(stage["params"])
    assert "outputs/seeds" in stage["deps"] and "music/studies/choices.py" in stage["deps"]
    # every key the study may change is a train key, so `dvc repro studies/dvc.yaml` sees a change to it
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(parse_choice(c)[0] in names for c in StudyConfig().choices)
