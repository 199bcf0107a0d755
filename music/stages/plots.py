"""Stage `plots`: every figure from the evaluation results, the headline numbers (metrics/summary.json), the
comparison table (metrics/comparison.csv) and the data behind the figures (plots/*.csv, for `dvc plots`).

The figures themselves are drawn by music.reporting.plots; this module gathers the stage's inputs and saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from music.config import Params
from music.evaluate.compare import compare, headline, load_item_rows, load_trajectories, trajectory_summary
from music.files import atomic_path, write_json
from music.reporting.plots import (
    SUMMARY_FILE,
    distance_table,
    load_best_of_n,
    load_curves,
    order_variants,
    plot_accuracy_overview,
    plot_best_of_n,
    plot_by_distance,
    plot_paired_differences,
    plot_reward_trajectory,
    plot_training_curves,
    save_figure,
)
from music.stages import check_variant

COMPARISON_FORMAT = "%.6f"  # metrics/comparison.csv: accuracies over items, the same on any CPU
# plots/*.csv in git: training losses and reward gaps move in the 6th decimal between CPUs (float rounding);
# 4 decimals are what the figures can show, and rarely differ
PLOT_DATA_FORMAT = "%.4f"


def build(
    params: Params, variants: Sequence[str] | None = None
) -> tuple[dict[str, Figure], pd.DataFrame, pd.DataFrame]:
    """(figures {file stem: Figure} in FIGURE_NAMES order, the comparison table, the trajectory summary)."""
    variants = order_variants(variants or params.train.variants)
    rows = load_item_rows(params.paths.evaluation, variants)
    table = compare(rows)
    traj = trajectory_summary(load_trajectories(params.paths.evaluation, variants))
    bon = load_best_of_n(params.paths.metrics, params.paths.evaluation)
    figs = {
        "accuracy_overview": plot_accuracy_overview(rows, table),
        "paired_differences": plot_paired_differences(table),
        "accuracy_by_distance": plot_by_distance(rows),
        "reward_trajectory": plot_reward_trajectory(traj),
    }
    if bon:
        figs["best_of_n"] = plot_best_of_n(bon)
    figs["training_curves"] = plot_training_curves(load_curves(params.paths.models, variants, params.train.seeds))
    return figs, table, traj


def plot_data(params: Params, variants: Sequence[str], traj: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The data behind the figures, the shape `dvc plots` overlays across revisions: {file stem: frame}, each
    an x column and one column per variant (training curves averaged over seeds; the figures show each seed)."""
    variants = order_variants(variants)
    out = {}

    def wide(df: pd.DataFrame, x: str, value: str) -> pd.DataFrame:
        table = df.pivot_table(index=x, columns="variant", values=value) if not df.empty else pd.DataFrame()
        return (
            table.reindex(columns=variants).rename_axis(None, axis=1).reset_index()
            if not table.empty
            else pd.DataFrame(columns=[x, *variants])
        )

    curves = load_curves(params.paths.models, variants, params.train.seeds)
    for col in ("loss", "accuracy"):
        out[f"training_{col}"] = wide(curves, "step", col)
    dist = distance_table(load_item_rows(params.paths.evaluation, variants))
    for test in ("quality", "swap", "swap_same", "music"):
        out[f"accuracy_by_distance_{test}"] = wide(dist[dist["test"] == test], "distance", "accuracy")
    out["reward_trajectory"] = wide(traj, "relative_turn", "gap")
    return out


def run(params: Params, *, variant: str | None = None, variants: Sequence[str] | None = None) -> list[Path]:
    """The plots stage: build every figure and save it under params.paths.figures; write the headline numbers
    (metrics/summary.json), the comparison table (metrics/comparison.csv) and the data behind the figures
    (params.paths.plots/*.csv). Returns the figure paths."""
    check_variant("plots", variant)
    variants = list(variants or params.train.variants)
    figs, table, traj = build(params, variants)
    paths: list[Path] = []
    for name, fig in figs.items():
        paths += save_figure(fig, params.paths.figures, name, formats=tuple(params.plots.formats), dpi=params.plots.dpi)
    write_json(Path(params.paths.metrics) / SUMMARY_FILE, headline(table, load_best_of_n(params.paths.metrics)))
    frames = {
        "comparison": (Path(params.paths.metrics), table, COMPARISON_FORMAT),
        **{
            name: (Path(params.paths.plots), df, PLOT_DATA_FORMAT)
            for name, df in plot_data(params, variants, traj).items()
        },
    }
    for name, (folder, df, float_format) in frames.items():
        with atomic_path(folder / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
    return paths
