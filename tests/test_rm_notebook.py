"""Notebook 04 runs end to end through `music.pipeline.notebooks` on tiny data and writes the model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import conv, tiny_cfg, toy_pairs  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_03_trains_the_music_variant(tiny_backbone, tmp_path):
    from datasets import Dataset

    from music.pipeline.notebooks import run_notebook

    pairs_dir = tmp_path / "pairs"
    for kind, n in (("d", 6), ("music", 4)):
        Dataset.from_list([p.to_record() for p in toy_pairs(n, kind, turns=2)]).save_to_disk(
            str(pairs_dir / f"{kind}_train")
        )
    params = {
        "paths": {
            "pairs": str(pairs_dir),
            "models": str(tmp_path / "models"),
            "cache": str(tmp_path / "cache"),
            "reports": str(tmp_path / "reports"),
        },
        "train": {
            "backbone": tiny_backbone,
            "num_layers": None,
            "max_steps": 2,
            "batch_size": 4,
            "max_length": 256,
            "seeds": [0, 1],
            "lora_last_layers": 1,
        },  # the bottom layer frozen: its states reused (music.rm.frozen)
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    executed = run_notebook(
        "train", str(params_file), variant="music", output_dir=tmp_path / "executed", log_output=False
    )
    for s in (0, 1):
        out = tmp_path / "models" / "music" / f"seed{s}"
        assert {"config.json", "model.safetensors", "tokenizer.json", "curve.csv", "train_metrics.json"} <= {
            p.name for p in out.iterdir()
        }
        metrics = json.loads((out / "train_metrics.json").read_text())
        assert (
            metrics["pairs_per_kind"] == {"d": 6, "music": 4} and metrics["variant"] == "music" and metrics["seed"] == s
        )
    timings = json.loads((tmp_path / "reports" / "timings" / "train_music.json").read_text())
    assert [t["seed"] for t in timings] == [0, 1] and all(t["train_seconds"] > 0 for t in timings)
    reuse = [t["frozen_layers_reused"] for t in timings]
    assert (
        reuse[0]["frozen_layers"] == 1 and reuse[1]["store_hits"] > reuse[0]["store_hits"]
    )  # seed 1 reused seed 0's states
    assert list((tmp_path / "cache" / "hidden").rglob("*.pt"))  # shared with the later stages through files
    text = executed.read_text()
    assert "backend: transformers on cpu" in text and "pairs_turns_dropped" in text
