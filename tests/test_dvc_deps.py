"""dvc.yaml lists every piece of code a stage runs: a code change must make `dvc status` say the stage is stale."""

from __future__ import annotations

import copy

import yaml
from helpers import REPO, dvc_stages, missing_code_deps, missing_read_deps, stage_code, stage_paths


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_lists_the_code_it_runs():
    assert missing_code_deps(REPO, _dvc()) == {}


def test_the_derivation_follows_imports_through_the_package():
    code = stage_code(REPO, "contrast")
    # the notebook imports music.stages.contrast, which imports the D-pair module, which imports the sources
    assert {
        "music/stages/contrast.py",
        "music/pairs/last_turn.py",
        "music/sources/sharegpt.py",
        "music/pipeline/notebooks.py",
    } <= code
    assert "music/prompts" in code  # prompt texts are read beside music/prompts/__init__.py
    assert "music/rm/train.py" not in code


def test_removing_a_dep_is_caught():
    dvc = _dvc()
    for name, spec in dvc_stages(dvc).items():
        base = name.split("@")[0]
        deps = stage_paths(spec, "deps")
        victim = next(d for d in deps if d.startswith("music/"))
        broken = copy.deepcopy(dvc)
        stage = broken["stages"][base]
        target = stage["do"] if "do" in stage else stage
        target["deps"] = [d for d in target["deps"] if d != victim]
        missing = missing_code_deps(REPO, broken)
        assert name in missing and all(m == victim or m.startswith(victim.rstrip("/") + "/") for m in missing[name]), (
            name,
            victim,
            missing.get(name),
        )


def test_a_data_read_that_no_dep_covers_is_caught():
    """The slow pipeline test traces what each stage's kernel reads; this is the check it applies."""
    stages = dvc_stages(_dvc())
    reads = {
        "best_of_n": {"data/mtbench/question.jsonl", "outputs/models/music/config.json"},
        "evaluate@baseline": {"outputs/seeds/train.jsonl", "outputs/metrics/baseline.json"},
    }
    assert missing_read_deps(stages, reads) == {}
    stages["best_of_n"]["deps"].remove("data/mtbench")
    assert missing_read_deps(stages, reads) == {"best_of_n": ["data/mtbench/question.jsonl"]}
