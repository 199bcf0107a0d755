"""The published walkthrough (music.pipeline.publish): executed notebooks cleaned to byte-stable copies with their
figures."""

from __future__ import annotations

import base64
import json

import nbformat
import pytest
from helpers import REPO

from music.pipeline import publish
from music.pipeline.notebooks import execute_notebook


def _executed(tmp_path, name: str) -> dict:
    """A small notebook executed through the pipeline's runner (papermill: timestamps, durations, widgets, an
    injected parameters cell)."""
    cells = [
        "run = False",
        "from music.reporting import plots\nimport pandas as pd\nprint('repo:', __import__('os').getcwd())",
        "plots.plot_training_curves(pd.DataFrame())",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(2)):\n    pass",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / f"src_{name}"
    if not src.exists():  # the same source notebook for every execution, as in the pipeline
        nbformat.write(nb, src)
    out = tmp_path / "reports" / name
    execute_notebook(src, out, {"run": True}, REPO, log_output=False)
    return json.loads(out.read_text())


@pytest.mark.slow  # runs a notebook
def test_two_executions_publish_the_same_bytes_with_the_figure_embedded(tmp_path):
    first = _executed(tmp_path, "07_plot_results.ipynb")
    second = _executed(tmp_path, "07_plot_results.ipynb")
    assert first["metadata"]["papermill"] != second["metadata"]["papermill"]  # start/end times differ
    a, b = (publish.dumps(publish.clean_notebook(nb, REPO)) for nb in (first, second))
    assert a == b
    clean = json.loads(a)
    assert set(clean["metadata"]) <= {"kernelspec", "language_info"}
    assert all(set(c["metadata"]) <= {"tags", "jupyter"} for c in clean["cells"])
    outputs = [o for c in clean["cells"] for o in c["outputs"]]
    png = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(png) == 1 and base64.b64decode("".join(png[0]))[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(publish._WIDGET in o.get("data", {}) for o in outputs)
    assert "it/s" not in json.dumps(outputs)  # nor the progress bar's text fallback
    text = json.dumps(clean)
    assert str(REPO) not in text and "repo: ." in text


def test_a_progress_bar_is_dropped_with_its_text_fallback_and_other_outputs_stay():
    bar = {
        "output_type": "display_data",
        "metadata": {},
        "data": {publish._WIDGET: {"model_id": "abc"}, "text/plain": ["Loading weights:   0%|   | 0/272"]},
    }
    table = {"output_type": "execute_result", "metadata": {}, "execution_count": 1, "data": {"text/plain": ["42"]}}
    printed = {"output_type": "stream", "name": "stdout", "text": ["done\n"]}
    nb = {
        "metadata": {},
        "cells": [{"cell_type": "code", "metadata": {}, "source": "", "outputs": [bar, table, printed]}],
    }
    assert publish.clean_notebook(nb)["cells"][0]["outputs"] == [table, printed]


def test_publish_writes_the_lessons_in_order_and_names_the_missing(tmp_path):
    source = tmp_path / "reports"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00")])
    for name in ("00_draw_seeds.ipynb", "05_evaluate_rm_music.ipynb"):
        source.mkdir(exist_ok=True)
        nbformat.write(nb, source / name)
    written = publish.publish(source, tmp_path / "walkthrough", root=tmp_path)
    assert [p.name for p in written] == ["00_draw_seeds.ipynb", "05_evaluate_rm_music.ipynb"]
    index = (tmp_path / "walkthrough" / "README.md").read_text()
    assert "[00_draw_seeds](00_draw_seeds.ipynb)" in index and "04_train_rm_baseline.ipynb" in index
    before = {p.name: p.read_bytes() for p in (tmp_path / "walkthrough").iterdir()}
    publish.publish(source, tmp_path / "walkthrough", root=tmp_path)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "walkthrough").iterdir()}


def test_executed_names_follow_the_stages():
    names = publish.executed_names()
    assert names[0] == "00_draw_seeds.ipynb" and names[-1] == "07_plot_results.ipynb"
    assert {
        "04_train_rm_baseline.ipynb",
        "04_train_rm_music.ipynb",
        "05_evaluate_rm_baseline.ipynb",
        "04_train_rm_control.ipynb",
        "05_evaluate_rm_control.ipynb",
    } <= set(names)  # every train.variants arm
    assert "04_train_rm_x.ipynb" in publish.executed_names(
        ["x"]
    ) and "04_train_rm_music.ipynb" not in publish.executed_names(["x"])


@pytest.mark.parametrize("link", ["docs/walkthrough/README.md"])
def test_the_readme_links_the_walkthrough(link):
    assert f"({link})" in (REPO / "README.md").read_text()
