"""Study contrast_methods: every method on the same simulated conversations, near misses counted, pairs to read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from helpers import FakeChat, WordOverlapEncoder, retrieval_project

from music.stages.simulate import run as run_simulate
from music.studies.contrast_methods import method_config, near_miss_share
from music.studies.contrast_methods import run as run_study


def test_near_miss_share_counts_the_window_inclusive():
    recs = [{"relevance": {"request_similarity": s}} for s in (0.25, 0.8, 0.1, 0.9)] + [{"relevance": None}]
    assert near_miss_share(recs, [0.25, 0.8]) == 0.4
    assert near_miss_share([], [0.25, 0.8]) is None


def test_both_methods_run_on_the_same_seeds_and_write_what_a_reader_compares(tmp_path):
    P = retrieval_project(tmp_path)
    P.study.near_miss_window, P.study.sample_pairs = [0.3, 0.9], 2
    for default in ("resample", "retrieve"):  # each method with its own window, whatever the default is
        P.contrast.method = default
        P.contrast.request_similarity = [0.25, 0.8] if default == "retrieve" else None
        assert method_config(P, "retrieve").request_similarity == [0.3, 0.9]
        assert method_config(P, "resample").request_similarity is None
    run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    out = tmp_path / "study"
    result = run_study(
        P, out, encoder=WordOverlapEncoder(), backends=(FakeChat("fake:user"), FakeChat("fake:assistant"))
    )
    rows = {(r["method"], r["split"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in ("resample", "retrieve") for s in ("train", "eval")}
    for (method, split), r in rows.items():
        assert r["seeds"] == {"train": 3, "eval": 2}[split]  # the same simulated conversations for each method
        assert r["kept"] > 0
    # the fake user's rewrites share no word with the real requests: no near miss; the pool's are near misses
    assert rows["resample", "train"]["near_miss_share"] == 0.0 and rows["resample", "train"]["pool"] is None
    assert rows["retrieve", "train"]["near_miss_share"] == 1.0 and rows["retrieve", "train"]["pool"] == 3
    samples = json.loads((out / "sample_pairs.json").read_text())
    assert [len(samples[m]) for m in ("resample", "retrieve")] == [2, 2]
    assert all(s["modified request from"].startswith("retrieved:pool_") for s in samples["retrieve"])
    assert all(s["original request"].startswith("Real next user") for m in samples for s in samples[m])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,split,seeds,candidates,kept") and len(csv_lines) == 5
    assert sorted(p.name for p in Path(out).iterdir()) == ["results.csv", "results.json", "sample_pairs.json"]


def test_the_study_is_declared_beside_the_pipeline_with_its_inputs():
    import yaml
    from helpers import REPO, covered, module_code

    stage = yaml.safe_load((REPO / "studies" / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["contrast_methods"]
    assert not [f for f in module_code(REPO, {"music.studies.contrast_methods"}) if not covered(f, stage["deps"])]
    assert stage["cmd"] == "python -m music.studies.contrast_methods" and stage["wdir"] == ".."
    assert {"data", "outputs/seeds", "outputs/conversations"} <= set(stage["deps"])  # the pool, the seeds, the chats
    assert {"seed", "simulate", "contrast.encoder", "contrast.min_contrast_margin", "study.contrast_methods"} <= set(
        stage["params"]
    ) and "study.near_miss_window" in stage["params"]
    # what the study compares does not follow the default method or its window (method_config)
    assert not {"contrast", "contrast.method", "contrast.request_similarity"} & set(stage["params"])
    from music.config import ContrastConfig

    listed = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("contrast.")}
    # every other contrast key the candidates depend on is listed (D pairs are not made by the study)
    unlisted = {f.name for f in dataclasses.fields(ContrastConfig)} - listed
    assert unlisted == {
        "method",
        "request_similarity",
        "d_pairs",
        "d_source",
        "d_limit",
        "min_music_train_pairs",
        "max_malformed_share",
    }, unlisted
