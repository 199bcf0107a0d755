"""Execute the stage notebooks in order through papermill on the tiny profile (as `dvc repro` does)."""

from __future__ import annotations

import json

import pytest
import yaml

from music.config import Paths
from music.notebook import run_stage
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile with every output path moved into a temporary folder."""
    root = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    params["paths"] = {name: str(root / name) for name in Paths.__dataclass_fields__}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return {"root": root, "params_file": params_file, "paths": params["paths"]}


def run(tiny, stage, variant=None):
    return run_stage(stage, str(tiny["params_file"]), variant=variant, output_dir=tiny["root"] / "executed", log_output=False)


def test_00_seed(tiny):
    run(tiny, "seed")
    stats = json.loads((tiny["root"] / "seeds" / "stats.json").read_text())
    assert stats["train_seeds"] == 4 and stats["eval_seeds"] == 2


def test_01_simulate(tiny):
    run(tiny, "simulate")
    from music.store import load_records

    convs = load_records(tiny["root"] / "conversations" / "train")
    assert len(convs) == 4


def test_02_contrast(tiny):
    run(tiny, "contrast")
    report = json.loads((tiny["root"] / "pairs" / "filter_report.json").read_text())
    assert report  # the filter table exists
    from music.store import load_records

    d_train = load_records(tiny["root"] / "pairs" / "d_train")
    assert d_train and all(r["kind"] == "d" for r in d_train)
    music_train = load_records(tiny["root"] / "pairs" / "music_train")
    assert music_train, f"every MUSIC pair was filtered out: {report}"
    assert all(r["chosen"] != r["rejected"] and r["divergence_turn"] for r in music_train)


@pytest.mark.parametrize("variant", ["baseline", "music"])
def test_03_train(tiny, variant):
    run(tiny, "train", variant)
    metrics = json.loads((tiny["root"] / "models" / variant / "train_metrics.json").read_text())
    assert metrics["variant"] == variant


@pytest.mark.parametrize("variant", ["baseline", "music"])
def test_04_evaluate(tiny, variant):
    run(tiny, "evaluate", variant)
    metrics = json.loads((tiny["root"] / "metrics" / f"{variant}.json").read_text())
    assert "pairwise" in metrics and "sensitivity" in metrics


def test_05_pick_best_of_n(tiny):
    run(tiny, "best_of_n")
    result = json.loads((tiny["root"] / "metrics" / "best_of_n.json").read_text())
    assert set(result["by_n"]) == {"2"}


def test_06_plot_results(tiny):
    run(tiny, "plots")
    figures = {p.name for p in (tiny["root"] / "figures").iterdir()}
    assert {"accuracy_overview.png", "best_of_n.png", "training_curves.png"} <= figures
