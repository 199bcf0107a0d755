"""Figures draw in a notebook: nothing the package imports changes matplotlib's backend, and the package's
figures show as images in an executed notebook (papermill, as the pipeline runs them), beside pyplot's."""

from __future__ import annotations

import json
import re

import nbformat
import pytest
from helpers import REPO, image_outputs, unrendered_figures


def test_no_module_of_the_package_sets_a_matplotlib_backend():
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "music").rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"matplotlib\.use\(|pyplot\.switch_backend\(|plt\.switch_backend\(", line)
    ]
    assert offenders == [], "a notebook importing these loses its inline backend (figures print as text)"


@pytest.mark.slow  # runs a notebook
def test_package_figures_and_pyplot_figures_draw_in_an_executed_notebook(tmp_path):
    import papermill as pm

    cells = [
        "import matplotlib\nfrom music.pipeline import notebooks as notebook\n"
        "from music.reporting import plots, render\nfrom music.evaluate import compare\n"
        "print(matplotlib.get_backend())",
        "import pandas as pd\nplots.plot_best_of_n({'by_n': {'2': {'win_rate': 0.5, 'win_ci_low': 0.2, "
        "'win_ci_high': 0.8,"
        " 'tie_rate': 0.5, 'tie_ci_low': 0.2, 'tie_ci_high': 0.8, 'loss_rate': 0.0, 'loss_ci_low': 0.0,"
        " 'loss_ci_high': 0.3, 'n_games': 4}}})",
        "from IPython.display import display\ndisplay(plots.plot_training_curves(pd.DataFrame()))",
        "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);",  # the notebooks' own plots (00, 04)
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "figures.ipynb", tmp_path / "figures_out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False, cwd=str(REPO))
    executed = json.loads(out.read_text())
    backend = "".join(executed["cells"][0]["outputs"][0]["text"])
    assert "inline" in backend, f"importing the package changed the notebook's backend to {backend!r}"
    assert unrendered_figures(executed) == []
    assert image_outputs(executed) == 3
    assert all(any("image/png" in o.get("data", {}) for o in c["outputs"]) for c in executed["cells"][1:])


@pytest.mark.parametrize("bad", ["<Figure size 1250x440 with 1 Axes>", "<seaborn.axisgrid.FacetGrid at 0x7f>"])
def test_the_check_sees_a_figure_printed_as_text(bad):
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "execute_result", "data": {"text/plain": bad}}]}]}
    assert unrendered_figures(nb) == [f"cell 0: {bad}"]
