"""The heldout stage: the test items every experiment on the contrast method is judged on stay put.

Two checks: (1) with DVC's own status on the real dvc.yaml's `heldout` and `contrast`
params, changing a contrast *method* parameter leaves `heldout` up to date while `contrast` goes stale;
(2) the held-out files do not depend on those parameters: built twice with different method params, they are
byte-identical (and a key that does define them, heldout.seed, changes them: the comparison can fail).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, FakeChat, dvc_stages, tree_bytes, write_seed_files

from music.evaluate.heldout_items import REPORT_FILE, SWAP_FIELDS, SWAP_FILE, read_swap_items
from music.pipeline import freshness
from music.stages.heldout import HELDOUT_PARAMS
from music.stages.heldout import run as run_heldout
from music.store import load_records

METHOD_CHANGES = {  # contrast keys of the method only: none may reach a held-out item
    "candidates": 7,
    "answered_candidates": 1,
    "min_contrast_margin": 0.5,
    "method": "instruct",
    "seed": 5,
    "max_echo_similarity": 0.1,
    "divergence": "fixed",
    "min_music_train_pairs": 3,
}


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def _heldout(tmp_path: Path, **contrast):
    P = write_seed_files(tmp_path)
    P.heldout.swap_max_distance = 2
    for k, v in contrast.items():
        setattr(P.contrast, k, v)
    report = run_heldout(P, assistant=FakeChat("fake:assistant"))
    return P, report


def test_dvc_yaml_lists_exactly_the_keys_the_stage_reads_never_a_section():
    stages = dvc_stages(_dvc_yaml())  # ${paths.…} resolved from params.yaml, as DVC does
    spec = stages["heldout"]
    assert tuple(spec["params"]) == HELDOUT_PARAMS
    assert spec["params"][0] == "heldout"  # its own section whole; of the others, dotted keys only
    assert all("." in k for k in spec["params"][1:])  # never the whole `contrast` section
    assert not {f"contrast.{k}" for k in METHOD_CHANGES} & set(spec["params"])
    data = [d for d in spec["deps"] if not d.startswith(("music/", "notebooks/"))]
    assert data == ["outputs/seeds", "data/mtbench"]  # nothing the method writes (outputs/pairs, conversations)
    assert spec["outs"] == ["outputs/heldout"]
    assert all("outputs/heldout" in stages[f"evaluate@{v}"]["deps"] for v in ("baseline", "music", "control"))


def test_heldout_writes_d_eval_quality_twins_and_swap_items(tmp_path):
    P, report = _heldout(tmp_path)
    out = Path(P.paths.heldout)
    d_eval = load_records(out / "d_eval")
    assert [r["pair_id"] for r in d_eval] == ["d-eval-s0", "d-eval-s1"] and all(r["kind"] == "d" for r in d_eval)
    assert d_eval[0]["chosen"][-1]["content"] == "Real next reply 0."
    quality = load_records(out / "quality_eval")
    assert {r["source"] for r in quality} == {"sharegpt", "mtbench"} and len(quality) == report["counts"][
        "quality_eval"
    ]
    lines = [json.loads(x) for x in (out / SWAP_FILE).read_text().splitlines()]
    assert lines and all(set(rec) == {*SWAP_FIELDS, "test"} for rec in lines)
    items = read_swap_items(out / SWAP_FILE)
    assert [it.item_id for it in items] == [rec["item_id"] for rec in lines]
    assert all(
        it.chosen != it.rejected
        and it.cluster == rec["conversation_id"]
        and it.test == rec["test"]
        and (rec["donor_id"] != rec["conversation_id"]) == (rec["test"] == "swap")
        for it, rec in zip(items, lines)
    )
    written = json.loads((out / REPORT_FILE).read_text())
    assert written["counts"] == {"d_eval": 2, "quality_eval": len(quality), "swap_eval": len(items)}
    assert written["params"] == list(HELDOUT_PARAMS)


def test_the_held_out_files_do_not_depend_on_the_contrast_method(tmp_path):
    P, _ = _heldout(tmp_path)
    first = tree_bytes(Path(P.paths.heldout))
    for k, v in METHOD_CHANGES.items():  # the same folders, every method key changed: rebuilt in place
        setattr(P.contrast, k, v)
    run_heldout(P, assistant=FakeChat("fake:assistant"))
    assert tree_bytes(Path(P.paths.heldout)) == first  # byte-identical
    # the comparison can fail: a key that defines the items (the seed of their generation) changes them
    P.heldout.seed = 1
    run_heldout(P, assistant=FakeChat("fake:assistant"))
    again = tree_bytes(Path(P.paths.heldout))
    assert {k for k in first if again.get(k) != first[k]} >= {"d_eval/data-00000-of-00001.arrow", SWAP_FILE}


def test_a_leak_into_the_swap_items_stops_the_stage_before_anything_is_written(tmp_path):
    from music.errors import DataError
    from music.files import read_jsonl, write_jsonl

    P = write_seed_files(tmp_path)
    train = Path(P.paths.seeds) / "train.jsonl"
    leaked = next(rec for _, rec in read_jsonl(Path(P.paths.seeds) / "eval_conversations.jsonl"))["conversation_id"]
    write_jsonl(train, [*(rec for _, rec in read_jsonl(train)), {"conversation_id": leaked}])
    assistant = FakeChat("fake:assistant")
    with pytest.raises(DataError, match="train/eval leak"):
        run_heldout(P, assistant=assistant)
    assert assistant.calls == 0 and not Path(P.paths.heldout).exists()


# ---------------------------------------------------------------- DVC's own status, the real params lists
WRITE = (
    "import pathlib, sys\nout = pathlib.Path(sys.argv[1])\nout.mkdir(exist_ok=True)\n"
    "(out / 'done.txt').write_text(sys.argv[1])\n"
)


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """A DVC repo with the real params.yaml and the real `heldout` and `contrast` params lists (a trivial command
    each), reproduced once."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    real = _dvc_yaml()["stages"]
    (tmp_path / "write.py").write_text(WRITE)
    stages = {
        name: {
            "cmd": f"{sys.executable} write.py {name}_out",
            "deps": ["write.py"],
            "params": copy.deepcopy(real[name]["params"]),
            "outs": [f"{name}_out"],
        }
        for name in ("heldout", "contrast")
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    for args in (["init", "--no-scm", "-q"], ["repro", "-q"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, check=True, capture_output=True, text=True)
    return tmp_path


def _set_param(root: Path, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    section, leaf = key.split(".")
    params[section][leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize(
    "key,value", [("contrast.candidates", 7), ("contrast.min_contrast_margin", 0.5), ("contrast.method", "instruct")]
)
def test_a_contrast_method_change_leaves_heldout_up_to_date(dvc_repo, key, value):
    assert freshness.check("heldout", root=dvc_repo).state == "current"
    _set_param(dvc_repo, key, value)
    contrast = freshness.check("contrast", root=dvc_repo)
    assert contrast.state == "stale" and contrast.params, contrast
    heldout = freshness.check("heldout", root=dvc_repo)
    assert heldout.state == "current", heldout


def test_a_change_to_what_defines_the_items_makes_heldout_stale(dvc_repo):
    _set_param(dvc_repo, "heldout.swap_conversations", 5)
    assert freshness.check("heldout", root=dvc_repo).params == ["heldout"]  # DVC names the section it tracks whole
    assert freshness.check("contrast", root=dvc_repo).state == "current"
