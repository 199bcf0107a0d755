"""Committed study results as tables for the notebooks (the studies themselves: music.studies, studies/dvc.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

CONTRAST_METHODS_DIR = Path("studies") / "contrast_methods"  # music.studies.contrast_methods writes here

CONTRAST_METHODS_COLUMNS = {
    "seeds": "seeds",
    "kept": "kept",
    "kept_per_seed": "kept per seed",
    "near_misses": "near misses",
    "near_miss_share": "near-miss share",
    "median_similarity": "median similarity",
    "wall_s": "wall s",
}


def contrast_methods_table(folder: str | Path = CONTRAST_METHODS_DIR):
    """One row per contrast method and split (notebook 03): pairs kept, near-miss share, median similarity, time.
    A clear error when the study has not been run."""
    import pandas as pd

    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the contrast_methods study has not been run (dvc repro studies/dvc.yaml)")
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    frame = pd.DataFrame(rows).set_index(["method", "split"])
    return frame[list(CONTRAST_METHODS_COLUMNS)].rename(columns=CONTRAST_METHODS_COLUMNS)
