"""Figures and the comparison from synthetic per-item results: paired differences and their intervals, plot
functions return figures, saving is separate and byte-stable, the stage writes every file and the headline."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

from music.config import Params, Paths
from music.evaluate.compare import compare, headline, load_item_rows, trajectory_summary
from music.reporting import plots
from music.stages import plots as plots_stage
from music.stages.evaluate import ITEM_FIELDS, TRAJECTORY_FIELDS

# (test, distance, group): the endpoints fixed in advance (music.evaluate.items): quality twins in no group
TESTS = [
    ("quality", 1, ""),
    ("quality", 2, ""),
    ("swap", 1, "last"),
    ("swap", 2, "early"),
    ("swap", 3, "early"),
    ("music", 2, "early"),
    ("hh", 1, "last"),
]


def item_rows(variant: str, p_right: dict[str, float], seeds=(0, 1, 2), n=40, seed=0) -> list[dict]:
    """Rows as the evaluate stage writes them: each item right with probability p_right[test]; swap@1/2/3 of
    conversation i share cluster c{i}, the two quality twins of question i share q{i}; the history-blind
    reference ties (1/2) where the last exchange is identical (swap, quality at distance >= 2), else is a coin."""
    rng = random.Random(f"{seed}-{variant}")
    rows = []
    for s in seeds:
        for test, d, group in TESTS:
            for i in range(n):
                c = rng.random() < p_right.get(f"{test}@{d}", p_right.get(test, 0.5))
                tie = test in ("swap", "quality") and d >= 2
                blind = 0.5 if tie else float(rng.random() < 0.5)
                rows.append(
                    {
                        "variant": variant,
                        "seed": s,
                        "test": test,
                        "item_id": f"{test}-{d}-{i}",
                        "source": "x",
                        "distance": d,
                        "group": group,
                        "chosen_score": 1.0 if c else 0.0,
                        "rejected_score": 0.5,
                        "correct": int(c),
                        "cluster": {"swap": f"c{i}", "quality": f"q{i}"}.get(test, ""),
                        "blind_chosen_score": 0.0,
                        "blind_rejected_score": 0.0,
                        "blind_correct": blind,
                        "length_correct": 0.5 if test == "swap" else float(i % 2),
                    }
                )
    return rows


def trajectory_rows(variant: str, gaps: dict[int, float], seeds=(0, 1, 2), pairs=10) -> list[dict]:
    rng = random.Random(variant)
    return [
        {
            "variant": variant,
            "seed": s,
            "pair_id": f"p{i}",
            "relative_turn": k,
            "chosen_score": 0.0,
            "rejected_score": 0.0,
            "gap": 0.0 if k < 0 else g + rng.gauss(0, 0.1),
            "score_sd": 2.0,
        }
        for s in seeds
        for i in range(pairs)
        for k, g in gaps.items()
    ]


def workspace(tmp_path: Path, *, music_early=0.8) -> Params:
    P = Params(
        paths=Paths(
            metrics=str(tmp_path / "m"),
            models=str(tmp_path / "models"),
            figures=str(tmp_path / "fig"),
            evaluation=str(tmp_path / "ev"),
            plots=str(tmp_path / "pl"),
        )
    )
    specs = {
        "baseline": ({"quality@1": 0.8, "swap@1": 0.8, "music": 0.5}, {-1: 0, 0: 0.2, 1: 0.1}),
        "music": (
            {
                "quality@1": 0.8,
                "swap@1": 0.8,
                "quality@2": music_early,
                "swap@2": music_early,
                "swap@3": music_early,
                "music": music_early,
            },
            {-1: 0, 0: 1.0, 1: 0.8},
        ),
        "control": ({"quality@1": 0.8, "swap@1": 0.8, "music": 0.5}, {-1: 0, 0: 0.5, 1: 0.2}),
    }
    for v, (p, gaps) in specs.items():
        folder = tmp_path / "ev" / v
        folder.mkdir(parents=True)
        for name, fields, rows in (
            ("items.csv", ITEM_FIELDS, item_rows(v, p)),
            ("trajectory.csv", TRAJECTORY_FIELDS, trajectory_rows(v, gaps)),
        ):
            with open(folder / name, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(fields))
                w.writeheader()
                w.writerows(rows)
        for s in (0, 1, 2):
            (tmp_path / "models" / v / f"seed{s}").mkdir(parents=True)
            pd.DataFrame(
                {
                    "step": range(1, 21),
                    "loss": [0.7 - 0.01 * i for i in range(20)],
                    "accuracy": [0.5 + 0.01 * i for i in range(20)],
                }
            ).to_csv(tmp_path / "models" / v / f"seed{s}" / "curve.csv", index=False)
    (tmp_path / "m").mkdir()
    return P


BON = {
    "judge": "embedded",
    "by_n": {
        str(n): {
            "n_games": 8,
            **{
                f"{o}_{k}": v
                for o, (r, lo, hi) in {
                    "win": (0.25, 0.07, 0.59),
                    "tie": (0.5, 0.2, 0.8),
                    "loss": (0.25, 0.07, 0.59),
                }.items()
                for k, v in (("rate", r), ("ci_low", lo), ("ci_high", hi))
            },
        }
        for n in (2, 4, 8)
    },
}


def test_paired_comparison_finds_a_real_early_gain_and_no_last_turn_change(tmp_path):
    P = workspace(tmp_path)
    table = compare(load_item_rows(P.paths.evaluation, ["baseline", "music", "control"])).set_index("slice")
    early, last = table.loc["early"], table.loc["last"]
    assert early["n_items"] == 3 * 40 and early["ci_low"] > 0.1  # 0.5 -> 0.8 on 120 items: clearly excludes 0
    assert early["n_clusters"] == 40 + 40  # swap@2/3 of a conversation: one cluster; each MUSIC pair alone
    assert early["control_n_items"] == 120 and early["control_ci_low"] > 0.1 and early["diff_control"] > 0.2
    assert last["ci_low"] < 0 < last["ci_high"] and last["control_ci_low"] < 0 < last["control_ci_high"]
    assert last["n_items"] == 80  # swap@1 and hh; the quality twins are reported apart
    assert table.loc["quality@2", "baseline_seeds"] == 3 and 0 <= table.loc["quality@2", "baseline_sd"] < 0.2
    assert (table.loc[["early", "last"], "endpoint"] == "headline").all()
    assert (table.drop(index=["early", "last"])["endpoint"] == "secondary").all()
    # the history-blind reference: MUSIC's RM beats its own last-exchange score on early items, the baseline does not
    assert table.loc["swap@2", "music_blind_accuracy"] == 0.5 and early["music_blind_gap_ci_low"] > 0.1
    assert early["baseline_blind_gap_ci_low"] < 0 < early["baseline_blind_gap_ci_high"]
    assert table.loc["swap", "length_accuracy"] == 0.5 and table.loc["quality", "length_ci_low"] < 0.5
    null = compare(
        load_item_rows(workspace(tmp_path / "null", music_early=0.5).paths.evaluation, ["baseline", "music", "control"])
    ).set_index("slice")
    assert null.loc["early", "ci_low"] < 0 < null.loc["early", "ci_high"]
    assert null.loc["early", "control_ci_low"] < 0 < null.loc["early", "control_ci_high"]


def test_headline_is_numbers_only_and_fits_a_terminal(tmp_path):
    P = workspace(tmp_path)
    out = headline(compare(load_item_rows(P.paths.evaluation, ["baseline", "music", "control"])), BON)
    assert set(out) == {"early", "last", "music", "quality", "best_of_n_win_minus_loss"}
    old_keys = {"baseline", "music", "diff", "diff_ci_low", "diff_ci_high", "n_items"}  # kept: readers of older runs
    assert set(out["early"]) == old_keys | {
        "n_clusters",
        "control",
        "diff_control",
        "diff_control_ci_low",
        "diff_control_ci_high",
        "history_blind",
        "length_only",
    }
    assert set(out["early"]["history_blind"]) == {"baseline", "music", "control"}
    assert set(out["early"]["history_blind"]["music"]) == {"accuracy", "gap", "gap_ci_low", "gap_ci_high"}
    flat = pd.json_normalize(out).iloc[0]
    assert all(isinstance(v, (int, float)) for v in flat) and len(flat) <= 100
    two = headline(
        compare(load_item_rows(P.paths.evaluation, ["baseline", "music"]))
    )  # no control arm: no control keys
    assert set(two["early"]) == old_keys | {"n_clusters", "history_blind", "length_only"}
    assert out["best_of_n_win_minus_loss"] == {"N2": 0.0, "N4": 0.0, "N8": 0.0}


def test_trajectory_summary_is_zero_before_divergence_and_standardised(tmp_path):
    P = workspace(tmp_path)
    from music.evaluate.compare import load_trajectories

    s = trajectory_summary(load_trajectories(P.paths.evaluation, ["baseline", "music"])).set_index(
        ["variant", "relative_turn"]
    )
    assert s.loc[("music", -1), "gap"] == 0.0 and s.loc[("music", 0), "gap"] == pytest.approx(
        0.5, abs=0.05
    )  # 1.0 / sd 2
    assert s.loc[("music", 0), "ci_low"] < 0.5 < s.loc[("music", 0), "ci_high"] and s.loc[("music", 0), "pairs"] == 10


def test_plot_functions_return_figures_without_pyplot(tmp_path):
    figs, table, traj = plots_stage.build(workspace(tmp_path))
    assert list(figs) == [n for n in plots.FIGURE_NAMES if n != "best_of_n"]  # no best_of_n.json here
    assert all(isinstance(f, Figure) and f.axes for f in figs.values())
    assert isinstance(plots.plot_best_of_n(BON), Figure)
    assert plt.get_fignums() == []  # not registered with pyplot: a notebook shows each once, nothing to close
    assert list(tmp_path.joinpath("fig").glob("*")) == []  # building writes nothing


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_saving_the_same_figure_twice_gives_the_same_bytes(tmp_path, fmt):
    P = workspace(tmp_path)
    rows = load_item_rows(P.paths.evaluation, ["baseline", "music"])
    fig = plots.plot_by_distance(rows)  # clip paths, text
    first = plots.save_figure(fig, tmp_path / "a", "f", formats=(fmt,), dpi=60)
    second = plots.save_figure(fig, tmp_path / "b", "f", formats=(fmt,), dpi=60)
    assert [p.name for p in first] == [f"f.{fmt}"]
    assert first[0].read_bytes() == second[0].read_bytes()
    again = plots.save_figure(plots.plot_by_distance(rows), tmp_path / "c", "f", formats=(fmt,), dpi=60)
    assert again[0].read_bytes() == first[0].read_bytes()  # ids depend on content, not on the object
    if fmt == "svg":
        text = first[0].read_text()
        assert "<dc:date>" not in text and "clip-path" in text


def test_make_all_writes_figures_summary_and_table_byte_stable(tmp_path):
    P = workspace(tmp_path)
    (tmp_path / "m" / "best_of_n.json").write_text(json.dumps(BON))
    paths = plots_stage.run(P)
    assert sorted(p.name for p in paths) == sorted(f"{n}.{f}" for n in plots.FIGURE_NAMES for f in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in paths)
    assert plt.get_fignums() == []
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["early"]["diff"] > 10  # points
    table = pd.read_csv(tmp_path / "m" / "comparison.csv")
    assert {"early", "last", "swap@3", "hh"} <= set(table["slice"])
    # the data behind the figures, one column per series (what `dvc plots diff` overlays)
    loss = pd.read_csv(tmp_path / "pl" / "training_loss.csv")
    assert list(loss.columns) == ["step", "baseline", "music", "control"] and len(loss) == 20
    dist = pd.read_csv(tmp_path / "pl" / "accuracy_by_distance_swap.csv")
    assert list(dist.columns) == ["distance", "baseline", "music", "control"] and list(dist["distance"]) == [1, 2, 3]
    traj = pd.read_csv(tmp_path / "pl" / "reward_trajectory.csv")
    assert list(traj.columns) == ["relative_turn", "baseline", "music", "control"] and traj.loc[0, "music"] == 0.0
    # plot data in git keeps 4 decimals (what differs between CPUs sits in the 6th); the comparison keeps 6
    assert not re.search(r"\.\d{5}", (tmp_path / "pl" / "training_loss.csv").read_text())
    assert re.search(r"\.\d{6}", (tmp_path / "m" / "comparison.csv").read_text())
    first = {p.name: p.read_bytes() for p in paths}
    assert {p.name: p.read_bytes() for p in plots_stage.run(P)} == first  # a rerun rewrites the same bytes


def test_results_table_and_the_papers_rows(tmp_path):
    P = workspace(tmp_path)
    t = plots.results_table(compare(load_item_rows(P.paths.evaluation, ["baseline", "music", "control"])))
    early = plots.slice_title("early")
    assert early in t.index and t.loc[early, "items"] == 120
    assert t.loc[early, "MUSIC - baseline [95% CI]"].startswith("+") and t.loc[
        early, "MUSIC - control [95% CI]"
    ].startswith("+")
    assert t.loc[early, "endpoint"] == "headline" and t.loc[plots.slice_title("quality@2"), "endpoint"] == "secondary"
    assert t.loc[early, "music: RM - history-blind [95% CI]"].startswith("+")
    paper = plots.paper_table()
    assert (
        paper.loc["paper: +MUSIC (Gemma-2-9B)", "Avg"] == 86.6
        and paper.loc["paper: baseline (Gemma-2-9B)", "Reasoning"] == 83.1
    )


def test_missing_items_file_stops_the_plots_stage_naming_it(tmp_path):
    P = workspace(tmp_path)
    (tmp_path / "ev" / "music" / "items.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"music/items\.csv is missing.*evaluate@music"):
        plots_stage.run(P)
    assert not (tmp_path / "fig").exists()
