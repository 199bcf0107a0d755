"""data/ is rebuilt byte for byte from the pinned packages: its hash must match data.dvc."""

import json
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from music.pipeline.materialize import dvc_status, ensure_data


@pytest.mark.slow
def test_materialised_data_matches_data_dvc_and_leaves_status_clean(tmp_path):
    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    msg = ensure_data(tmp_path / "data.dvc")
    assert "hash matches" in msg
    assert dvc_status(tmp_path / "data.dvc") == {}
    assert ensure_data(tmp_path / "data.dvc") == "data/ already matches data.dvc"
    manifest = json.loads((tmp_path / "data" / "MANIFEST.json").read_text())
    assert manifest["sharegpt"]["kept"] > 1000


@pytest.mark.slow
def test_changed_bytes_are_detected(tmp_path):
    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    ensure_data(tmp_path / "data.dvc")
    with open(tmp_path / "data" / "mtbench" / "question.jsonl", "a") as fh:
        fh.write("\n")
    assert dvc_status(tmp_path / "data.dvc") != {}
