"""Figures from synthetic metrics: plot functions return figures, saving is separate and byte-stable,
files written in every format, titles say what is shown."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

from music import plots
from music.config import Params, Paths
from music.evaluate.stats import accuracy_summary


def acc(k, n):
    return accuracy_summary([True] * k + [False] * (n - k))


def variant_metrics(shift, rewardbench=False):
    m = {
        "pairwise": {"all": acc(10 + shift, 20), "by_kind": {"d": acc(7, 10), "music": acc(3 + shift, 10)},
                     "music_by_distance": {"1": acc(3, 4), "2": acc(1 + shift, 4), "3": acc(0, 2)}},
        "sensitivity": {"all": acc(20 + shift, 40), "by_distance": {str(d): acc(8 - d + shift, 10) for d in (1, 2, 3, 4)}},
        "local": {"hh": acc(120, 200), "ultrafeedback": {"skipped": "x does not exist"}},
        "rewardbench": {"skipped": "offline"},
    }
    if rewardbench:
        m["rewardbench"] = {"chat": 0.9, "chat_hard": 0.6, "safety": 0.8, "reasoning": 0.7, "average": 0.75}
    return m


BON = {"judge": "embedded", "by_n": {str(n): {"n_games": 8, **{f"{o}_{k}": v for o, (r, lo, hi) in
       {"win": (0.25, 0.07, 0.59), "tie": (0.5, 0.2, 0.8), "loss": (0.25, 0.07, 0.59)}.items()
       for k, v in (("rate", r), ("ci_low", lo), ("ci_high", hi))}} for n in (2, 4, 8)}}


@pytest.mark.parametrize("rewardbench", [False, True])
def test_overview_says_what_it_shows(tmp_path, rewardbench):
    fig = plots.plot_accuracy_overview({"baseline": variant_metrics(0, rewardbench), "music": variant_metrics(2, rewardbench)})
    title = fig.axes[0].get_title()
    assert ("RewardBench accuracy by section" in title) == rewardbench
    assert ("RewardBench skipped: offline" in title) != rewardbench
    assert list(tmp_path.iterdir()) == []  # building a figure writes nothing


def test_plot_functions_return_figures_without_pyplot():
    metrics = {"baseline": variant_metrics(0), "music": variant_metrics(2)}
    curves = pd.DataFrame({"step": [1, 2, 3] * 2, "loss": [0.7, 0.6, 0.5] * 2, "accuracy": [0.5, 0.6, 0.7] * 2,
                           "variant": ["baseline"] * 3 + ["music"] * 3})
    figs = [plots.plot_accuracy_overview(metrics), plots.plot_by_distance(metrics), plots.plot_best_of_n(BON),
            plots.plot_training_curves(curves)]
    assert all(isinstance(f, Figure) and f.axes for f in figs)
    assert plt.get_fignums() == []  # not registered with pyplot: a notebook shows each once, nothing to close


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_saving_the_same_figure_twice_gives_the_same_bytes(tmp_path, fmt):
    fig = plots.plot_by_distance({"baseline": variant_metrics(0), "music": variant_metrics(2)})  # clip paths, text
    first = plots.save_figure(fig, tmp_path / "a", "f", formats=(fmt,), dpi=60)
    second = plots.save_figure(fig, tmp_path / "b", "f", formats=(fmt,), dpi=60)
    assert [p.name for p in first] == [f"f.{fmt}"]
    assert first[0].read_bytes() == second[0].read_bytes()
    # and a freshly built figure of the same data too (ids depend on content, not on the object)
    again = plots.save_figure(plots.plot_by_distance({"baseline": variant_metrics(0), "music": variant_metrics(2)}),
                              tmp_path / "c", "f", formats=(fmt,), dpi=60)
    assert again[0].read_bytes() == first[0].read_bytes()
    if fmt == "svg":
        text = first[0].read_text()
        assert "<dc:date>" not in text and "clip-path" in text


def test_accuracy_table_skips_skipped_sets():
    df = plots.accuracy_table({"baseline": variant_metrics(0)})
    assert "ultrafeedback" not in set(df["set"]) and "hh" in set(df["set"])
    assert set(df["group"]) == {"local", "held-out pairs", "sensitivity"}


def test_make_all_writes_png_and_svg(tmp_path):
    P = Params(paths=Paths(metrics=str(tmp_path / "m"), models=str(tmp_path / "models"), figures=str(tmp_path / "fig")))
    (tmp_path / "m").mkdir()
    for v, shift in (("baseline", 0), ("music", 2)):
        (tmp_path / "m" / f"{v}.json").write_text(json.dumps(variant_metrics(shift)))
        (tmp_path / "models" / v).mkdir(parents=True)
        pd.DataFrame({"step": range(1, 21), "loss": [0.7 - 0.01 * i - 0.005 * shift for i in range(20)],
                      "accuracy": [0.5 + 0.01 * i for i in range(20)]}).to_csv(tmp_path / "models" / v / "curve.csv", index=False)
    (tmp_path / "m" / "best_of_n.json").write_text(json.dumps(BON))
    paths = plots.make_all(P)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{f}" for n in ("accuracy_overview", "accuracy_by_distance", "best_of_n", "training_curves") for f in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in paths)
    assert plt.get_fignums() == []  # nothing left open in pyplot
    first = {p.name: p.read_bytes() for p in paths}
    assert {p.name: p.read_bytes() for p in plots.make_all(P)} == first  # a rerun rewrites the same bytes
    figs = plots.build_all(P)
    assert list(figs) == list(plots.FIGURE_NAMES)


def test_results_table_sits_beside_the_paper():
    t = plots.results_table({"music": variant_metrics(2), "baseline": variant_metrics(0)})
    assert list(t.index) == ["paper: baseline (Gemma-2-9B)", "paper: +MUSIC (Gemma-2-9B)", "ours: baseline", "ours: music"]
    assert t.loc["paper: +MUSIC (Gemma-2-9B)", "Avg"] == 86.6 and t.loc["paper: baseline (Gemma-2-9B)", "Reasoning"] == 83.1
    assert pd.isna(t.loc["ours: music", "Avg"]) and t.loc["ours: music", "held-out music"] == 50.0


def test_headline_summary_is_compact_and_per_variant():
    from music.plots import headline

    metrics = {
        "baseline": {"pairwise": {"by_kind": {"d": {"accuracy": 0.5}}}, "sensitivity": {"all": {"accuracy": 0.25}},
                     "rewardbench": {"skipped": "offline"}, "local": {"hh": {"accuracy": 0.6}}},
        "music": {"pairwise": {"by_kind": {"d": {"accuracy": 0.75}}}, "sensitivity": {"all": {"accuracy": 0.5}},
                  "rewardbench": {"skipped": "offline"}, "local": {"hh": {"skipped": "absent"}}},
    }
    bon = {"by_n": {"2": {"wins": 1, "ties": 4, "losses": 1}}}
    out = headline(metrics, bon)
    assert out["baseline"] == {"held-out d": 50.0, "corrupted history": 25.0, "hh": 60.0}
    assert out["music"] == {"held-out d": 75.0, "corrupted history": 50.0}  # skipped sets are left out
    assert out["best_of_n"] == {"N=2": "1/4/1"}


def test_missing_metrics_file_stops_the_plots_stage_naming_it(tmp_path):
    P = Params(paths=Paths(metrics=str(tmp_path / "m"), models=str(tmp_path / "models"), figures=str(tmp_path / "fig")))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "baseline.json").write_text(json.dumps(variant_metrics(0)))
    with pytest.raises(FileNotFoundError, match=r"music\.json is missing.*evaluate@music"):
        plots.make_all(P)
    assert not (tmp_path / "fig").exists()
