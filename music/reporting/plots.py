"""Figures for the evaluation results (seaborn); saving them (PNG, SVG, PDF) is a separate step.

Every `plot_*` function takes plain metrics dicts (as written by music.evaluate) and returns a
matplotlib Figure without saving it, so a notebook shows the figure it built and the plots stage
saves the same figure with `save_figure`. Titles say what is shown, including what was skipped.

The figures are `NotebookFigure`s (a `matplotlib.figure.Figure` not registered with pyplot): a notebook
shows one as a PNG with `display(fig)` (or by ending a cell with it) through its own `_repr_png_`, so it
draws whatever the notebook's backend is; nothing is shown twice, and nothing needs closing. Importing
this module never changes matplotlib's backend (a notebook keeps its inline backend for its own plots).
`save_figure` writes byte-stable files: the same figure gives the same bytes on every run (no date
in SVG/PDF metadata, SVG ids from a fixed salt), so a tracked figure changes only when its data does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from music.evaluate.constants import PAPER_REWARDBENCH, SECTION_KEYS, SECTION_TITLES
from music.evaluate.stats import bootstrap_interval
from music.files import atomic_path

SUMMARY_FILE = "summary.json"  # headline numbers for `dvc metrics show` (written by the plots stage)

sns.set_theme(style="whitegrid", context="notebook")
VARIANT_ORDER = ["baseline", "music", "control"]
CHANCE = 0.5


FIGURE_NAMES = (
    "accuracy_overview",
    "paired_differences",
    "accuracy_by_distance",
    "reward_trajectory",
    "best_of_n",
    "training_curves",
)  # file stems

# Metadata that makes saved files byte-stable: no creation date (SVG "Date", PDF/PS "CreationDate"),
# and a fixed PNG "Software" entry. Everything else matplotlib writes is a function of the figure.
STABLE_METADATA = {
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
    "ps": {"CreationDate": None},
    "eps": {"CreationDate": None},
    "png": {"Software": "matplotlib"},
}
SVG_HASHSALT = "music"  # SVG clip-path/glyph ids are hashes salted with this (default: a random uuid per save)


DISPLAY_DPI = 100  # a figure shown in a notebook (the saved files use plots.dpi)


class NotebookFigure(Figure):
    """A Figure that shows itself in a notebook as a PNG (IPython calls `_repr_png_`), with no backend:
    it draws in JupyterLab, in papermill's executed copies and in nbconvert, whatever backend is active."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DISPLAY_DPI, bbox_inches="tight", metadata=STABLE_METADATA["png"])
        return buf.getvalue()


def _figure(figsize) -> Figure:
    """A figure not registered with pyplot (see the module docstring)."""
    return NotebookFigure(figsize=figsize)


def save_figure(
    fig: Figure, folder: str | Path, name: str, formats: Sequence[str] = ("png", "svg"), dpi: int = 150
) -> list[Path]:
    """Write `fig` as folder/name.{fmt} for each format, atomically and byte-stable; returns the paths.

    The same figure saved twice gives identical bytes (tests/test_plots.py checks png, svg and pdf).
    """
    paths = []
    for fmt in formats:
        target = Path(folder) / f"{name}.{fmt}"
        with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}), atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=STABLE_METADATA.get(fmt))
        paths.append(target)
    return paths


def order_variants(variants) -> list[str]:
    return sorted(variants, key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))


def _palette(variants) -> dict:
    order = order_variants(variants)
    return dict(zip(order, sns.color_palette(n_colors=max(1, len(order)))))


SLICE_TITLES = {
    "early": "early turns (headline: swap >= 2, MUSIC)",
    "last": "last turn (headline: distance 1)",
    "quality": "strong vs weak reply",
    "swap_same": "reply from another turn",
    "swap": "swapped reply",
    "music": "held-out MUSIC pairs",
    "hh": "HH-RLHF",
    "ultrafeedback": "UltraFeedback",
}


def slice_title(name: str) -> str:
    test, _, d = name.partition("@")
    base = SLICE_TITLES.get(test, test)
    return f"{base}, {d} from end" if d else base


# ---------------------------------------------------------------- accuracy overview
def plot_accuracy_overview(rows: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Each variant's accuracy per test (bars: mean over training seeds; dots: each seed), chance dashed."""
    names = [
        n
        for n in (
            "early",
            "last",
            "quality@2",
            "quality@1",
            "swap@2",
            "swap@3",
            "swap@1",
            "swap_same@2",
            "swap_same@3",
            "swap_same@1",
            "music",
            "hh",
            "ultrafeedback",
        )
        if (table["slice"] == n).any()
    ]
    fig = _figure((max(7.0, 1.05 * len(names) + 2), 4.4))
    ax = fig.subplots()
    variants = order_variants(rows["variant"].unique())
    colors = _palette(variants)
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        for i, name in enumerate(names):
            mask = _slice_mask(rows, name) & (rows["variant"] == v)
            per_seed = rows[mask].groupby("seed")["correct"].mean()
            if per_seed.empty:
                continue
            x = i + (j - (len(variants) - 1) / 2) * width
            ax.bar(x, per_seed.mean(), width=width * 0.95, color=colors[v], label=v if i == 0 else None, alpha=0.85)
            ax.scatter([x] * len(per_seed), per_seed, color="black", s=8, zorder=3)
            n_items = rows[mask].groupby("seed").size().iloc[0]
            ax.annotate(f"n={n_items}", (x, 0.02), ha="center", fontsize=6, rotation=90, color="white")
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)), [slice_title(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (chosen > rejected)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    seeds = rows.groupby("variant")["seed"].nunique().max()
    ax.set_title(
        f"Accuracy per test (bars: mean over {seeds} training seeds, dots: each seed; ties wrong)", fontsize=10
    )
    return fig


def _slice_mask(rows: pd.DataFrame, name: str) -> pd.Series:
    if name in ("early", "last"):
        return rows["group"] == name
    test, _, d = name.partition("@")
    mask = rows["test"] == test
    return mask & (rows["distance"] == int(d)) if d else mask


# ---------------------------------------------------------------- the paired differences
# (value column, interval columns, label, marker, colour): MUSIC - baseline and MUSIC - control
CONTRASTS = (
    ("diff", "ci_low", "ci_high", "MUSIC - baseline", "o", "tab:blue"),
    ("diff_control", "control_ci_low", "control_ci_high", "MUSIC - control (cut pairs)", "s", "tab:orange"),
)


def plot_paired_differences(table: pd.DataFrame, tolerance: float = 0.02) -> Figure:
    """MUSIC - baseline and MUSIC - control accuracy, paired on the same items, with 95% two-level bootstrap
    intervals (seeds x conversation clusters); a difference whose interval excludes 0 is drawn filled. The
    headline endpoints come first; the grey band on last-turn slices is the 2-point loss we tolerate."""
    order = [
        n
        for n in (
            "early",
            "last",
            "swap@2",
            "swap@3",
            "swap_same@2",
            "swap_same@3",
            "music@2",
            "music@3",
            "music@4",
            "swap@1",
            "swap_same@1",
            "hh",
            "ultrafeedback",
            "quality@2",
            "quality@1",
        )
        if (table["slice"] == n).any()
    ]
    t = table.set_index("slice").reindex(order).dropna(subset=["diff"])
    shown = [c for c in CONTRASTS if c[0] in t and t[c[0]].notna().any()]
    fig = _figure((8.0, max(3.0, 0.32 * len(t) * (1 + len(shown)) + 1.2)))
    ax = fig.subplots()
    ys = [float(y) for y in range(len(t))][::-1]
    step = 0.36 if len(shown) > 1 else 0.0
    for y, (name, r) in zip(ys, t.iterrows()):
        for j, (col, lo, hi, label, marker, color) in enumerate(shown):
            if pd.isna(r.get(col)):
                continue
            yy = y + step / 2 - j * step
            excludes = r[lo] > 0 or r[hi] < 0
            ax.errorbar(
                r[col],
                yy,
                xerr=[[r[col] - r[lo]], [r[hi] - r[col]]],
                fmt=marker,
                capsize=3,
                color=color,
                mfc=color if excludes else "white",
                label=label if y == ys[0] else None,
            )
            n = r.get("n_items" if col == "diff" else "control_n_items")
            ax.annotate(
                f"{100 * r[col]:+.1f} [{100 * r[lo]:+.1f}, {100 * r[hi]:+.1f}]  n={int(n) if pd.notna(n) else '?'}",
                (1.02, yy),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=7,
                color=color,
            )
        if name == "last" or name.endswith("@1") or name in ("hh", "ultrafeedback"):
            ax.axhspan(y - 0.45, y + 0.45, xmin=0, xmax=1, color="0.93", zorder=0)
    ax.axvline(0, color="black", linewidth=1)
    ax.axvline(-tolerance, color="grey", linestyle=":", linewidth=1, label=f"-{100 * tolerance:.0f} points")
    ax.set_yticks(
        ys, [slice_title(n) + ("" if n in ("early", "last") else " (secondary)") for n in t.index], fontsize=8
    )
    ax.set_xlabel("accuracy difference (paired on items; 95% two-level bootstrap CI: seeds x conversations)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        "Does MUSIC change what the RM gets right, beyond more contrastive pairs?\n(filled: the interval "
        "excludes 0; shaded rows: last-turn tests; the first two rows are the headline)",
        fontsize=10,
    )
    return fig


# ---------------------------------------------------------------- accuracy by turn distance
def distance_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, test and distance: accuracy (mean over seeds of per-item accuracy) and a 95% bootstrap
    interval over items, and the number of items."""
    out = []
    per_item = rows.groupby(["variant", "test", "distance", "item_id"])["correct"].mean().reset_index()
    for (v, t, d), g in per_item.groupby(["variant", "test", "distance"]):
        lo, hi = bootstrap_interval(g["correct"].tolist(), n_boot=2000, seed=0)
        out.append(
            {
                "variant": v,
                "test": t,
                "distance": int(d),
                "accuracy": float(g["correct"].mean()),
                "ci_low": lo,
                "ci_high": hi,
                "n": len(g),
            }
        )
    return pd.DataFrame(out, columns=["variant", "test", "distance", "accuracy", "ci_low", "ci_high", "n"])


def plot_by_distance(rows: pd.DataFrame) -> Figure:
    """Accuracy vs how many assistant turns before the end the difference sits (1 = the last reply)."""
    df = distance_table(rows)
    panels = [t for t in ("quality", "swap", "swap_same", "music") if (df["test"] == t).any()]
    fig = _figure((4.0 * max(1, len(panels)), 3.9))
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    colors = _palette(df["variant"].unique())
    for ax, panel in zip(axes, panels):
        sub = df[df["test"] == panel]
        for i, v in enumerate(order_variants(sub["variant"].unique())):
            s = sub[sub["variant"] == v].sort_values("distance")
            x = s["distance"] + (i - 0.5) * 0.08
            err = [
                (s["accuracy"] - s["ci_low"]).clip(lower=0).to_numpy(),
                (s["ci_high"] - s["accuracy"]).clip(lower=0).to_numpy(),
            ]
            ax.errorbar(x, s["accuracy"], yerr=err, marker="o", capsize=3, color=colors[v], label=v)
            for xi, yi, n in zip(x, s["accuracy"], s["n"]):
                ax.annotate(
                    f"n={n}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4 if i == 0 else -10),
                    fontsize=7,
                    color=colors[v],
                )
        ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(sorted(sub["distance"].unique()))
        ax.set_title(SLICE_TITLES.get(panel, panel), fontsize=10)
        ax.set_xlabel("assistant turns before the end (1 = last)")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("accuracy (mean over seeds; 95% CI)")
    axes[0].set_ylim(-0.02, 1.05)
    fig.suptitle("Does the RM see differences earlier in the conversation? (dashed: chance)", fontsize=11)
    return fig


# ---------------------------------------------------------------- reward trajectories
def plot_reward_trajectory(summary: pd.DataFrame) -> Figure:
    """The teaching figure: the reward gap between the chosen and rejected branch of held-out MUSIC pairs,
    after each assistant turn, by turn relative to the divergence (0 = the turn the rejected branch went wrong)."""
    fig = _figure((6.2, 4.0))
    ax = fig.subplots()
    if summary.empty:
        ax.text(0.5, 0.5, "no held-out MUSIC pairs", ha="center", va="center", transform=ax.transAxes)
        return fig
    colors = _palette(summary["variant"].unique())
    for i, v in enumerate(order_variants(summary["variant"].unique())):
        s = summary[summary["variant"] == v].sort_values("relative_turn")
        x = s["relative_turn"] + (i - 0.5) * 0.06
        err = [(s["gap"] - s["ci_low"]).clip(lower=0).to_numpy(), (s["ci_high"] - s["gap"]).clip(lower=0).to_numpy()]
        ax.errorbar(x, s["gap"], yerr=err, marker="o", capsize=3, color=colors[v], label=f"{v} RM")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.axvspan(-1.4, -0.5, color="0.94", zorder=0)
    ax.annotate("before: both branches identical", (-0.95, ax.get_ylim()[1]), ha="center", va="top", fontsize=7)
    ks = sorted(summary["relative_turn"].unique())
    ax.set_xticks(ks, ["before" if k < 0 else ("divergence" if k == 0 else f"+{k}") for k in ks])
    ax.set_xlabel("assistant turn relative to the divergence")
    ax.set_ylabel("reward(chosen) - reward(rejected)\n(in the RM's score SDs; 95% CI)")
    pairs = int(summary["pairs"].max())
    ax.set_title(
        f"Reward trajectories on {pairs} held-out MUSIC pairs\n(each prefix scored; mean over training seeds)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- best-of-N
def bon_table(bon: dict) -> pd.DataFrame:
    rows = []
    for n, r in sorted(bon.get("by_n", {}).items(), key=lambda kv: int(kv[0])):
        for o in ("win", "tie", "loss"):
            rows.append(
                dict(
                    N=int(n),
                    outcome=o,
                    rate=r[f"{o}_rate"],
                    ci_low=r[f"{o}_ci_low"],
                    ci_high=r[f"{o}_ci_high"],
                    games=r["n_games"],
                )
            )
    return pd.DataFrame(rows, columns=["N", "outcome", "rate", "ci_low", "ci_high", "games"])


def plot_best_of_n(bon: dict) -> Figure:
    """The MUSIC RM's win rate (W + T/2) / N against the baseline RM by N, with its 95% bootstrap interval over
    prompts and seeds; beside it the share of games in which both RMs picked the identical conversation (bars) and
    the judge's accuracy on pairs with a known answer (a band; where best_of_n.json has it). A judge at chance and a
    run in which every game tied are said in words. A best_of_n.json from before the win rate had only win / tie /
    loss rates with Wilson intervals: those are drawn instead."""
    fig = _figure((6.4, 4.8))
    ax = fig.subplots()
    rows = sorted(bon.get("by_n", {}).items(), key=lambda kv: int(kv[0]))
    half = [
        (int(n), r["win_rate_ties_half"], r.get("win_rate_ties_half_ci_low"), r.get("win_rate_ties_half_ci_high"))
        for n, r in rows
        if r.get("win_rate_ties_half") is not None
    ]
    notes = []
    check = bon.get("judge_check") if isinstance(bon.get("judge_check"), dict) else None
    if check and check.get("accuracy") is not None:
        lo, hi = check.get("ci_low"), check.get("ci_high")
        ax.axhspan(
            lo if lo is not None else check["accuracy"],
            hi if hi is not None else check["accuracy"],
            color="tab:blue",
            alpha=0.12,
            label=f"judge on {check.get('n_pairs', '?')} known pairs: {100 * check['accuracy']:.0f}% right (95% CI)",
        )
        if check.get("at_chance"):
            notes.append("the judge is at chance on known pairs:\nthe win rate is uninformative")
    ns = [int(n) for n, _ in rows]
    if half:
        same = [(int(n), r["n_identical"] / r["n_games"]) for n, r in rows if r.get("n_games")]
        if same:
            ax.bar(
                [n for n, _ in same],
                [v for _, v in same],
                width=[0.35 * n for n, _ in same],
                color="0.85",
                edgecolor="0.6",
                label="both RMs picked the same conversation",
            )
        x = [n for n, *_ in half]
        y = [h for _, h, _, _ in half]
        err = [
            [max(0.0, h - (lo if lo is not None else h)) for _, h, lo, _ in half],
            [max(0.0, (hi if hi is not None else h) - h) for _, h, _, hi in half],
        ]
        ax.errorbar(
            x,
            y,
            yerr=err,
            marker="D",
            capsize=4,
            color="black",
            linestyle=":",
            label="MUSIC win rate (W + T/2)/N, 95% CI over prompts x seeds",
        )
    else:  # an older best_of_n.json: win / tie / loss rates with Wilson intervals
        df = bon_table(bon).dropna(subset=["rate"])
        colors = {"win": "tab:green", "tie": "tab:gray", "loss": "tab:red"}
        offsets = {"win": -0.08, "tie": 0.0, "loss": 0.08}  # so overlapping intervals stay visible
        for o in ("win", "tie", "loss"):
            sub = df[df["outcome"] == o]
            if sub.empty:
                continue
            ax.errorbar(
                [n * (1 + offsets[o]) for n in sub["N"]],
                sub["rate"],
                yerr=[
                    (sub["rate"] - sub["ci_low"]).clip(lower=0).to_numpy(),
                    (sub["ci_high"] - sub["rate"]).clip(lower=0).to_numpy(),
                ],
                marker="o",
                capsize=4,
                color=colors[o],
                label={"win": "MUSIC wins", "tie": "ties", "loss": "MUSIC losses"}[o] + " (95% Wilson)",
            )
        ns = sorted(df["N"].unique())
    ax.axhline(0.5, color="black", linewidth=0.6, alpha=0.4)
    played = [r for _, r in rows if r.get("n_games")]
    if played and all(r.get("ties") == r.get("n_games") for r in played):
        notes.append(
            f"every game tied ({sum(r['n_games'] for r in played)} games):\nthe judge preferred neither RM's picks"
        )
    if notes:
        ax.text(
            0.5,
            0.4,
            "\n".join(notes),
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
            color="0.25",
            bbox={"facecolor": "white", "edgecolor": "0.6", "alpha": 0.9},
        )
    ax.set_xscale("log", base=2)
    if ns:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlim(min(ns) / 1.6, max(ns) * 1.6)
    ax.set_ylim(-0.02, 1.42)  # headroom above 1 for the legend
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("N (candidates per turn)")
    ax.set_ylabel("share")
    games = max((int(r.get("n_games") or 0) for _, r in rows), default=0)
    seeds = bon.get("rm_seeds")
    ax.set_title(
        f"Best-of-N: MUSIC RM vs baseline RM, judged in both orders\n"
        f"({games} games per N{f' ({seeds} seed pairs)' if seeds else ''}; judge {bon.get('judge', '?')})",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="upper center")  # in the headroom above 1
    return fig


# ---------------------------------------------------------------- training curves
def load_curves(models_dir: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    frames = []
    for v in variants:
        for s in seeds:
            path = Path(models_dir) / v / f"seed{s}" / "curve.csv"
            if path.exists():
                frames.append(pd.read_csv(path).assign(variant=v, seed=s))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["step", "loss", "accuracy", "variant", "seed"])
    )


def plot_training_curves(curves: pd.DataFrame) -> Figure:
    """Bradley-Terry loss and batch accuracy per step (rolling mean over 5 steps), one line per training seed."""
    fig = _figure((10.0, 3.8))
    axes = fig.subplots(1, 2)
    if curves.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no curve.csv found", ha="center", va="center", transform=ax.transAxes)
        return fig
    colors = _palette(curves["variant"].unique())
    for ax, col in zip(axes, ("loss", "accuracy")):
        for (v, s), g in curves.sort_values("step").groupby(["variant", "seed"]):
            ax.plot(
                g["step"],
                g[col].rolling(5, min_periods=1).mean(),
                color=colors[v],
                alpha=0.8,
                linewidth=1.2,
                label=v if s == curves["seed"].min() else None,
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{col} (rolling mean of 5)")
        ax.legend(fontsize=8, title="variant")
    axes[0].axhline(0.6931, color="grey", linestyle="--", linewidth=1)  # -log sigmoid(0): an untrained RM
    axes[1].axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("Reward-model training, one line per seed (dashed: chance)", fontsize=11)
    return fig


# ---------------------------------------------------------------- results table
def _interval(t: pd.DataFrame, col: str, lo: str, hi: str) -> list[str]:
    return [
        f"{100 * d:+.1f} [{100 * a:+.1f}, {100 * b:+.1f}]" if pd.notna(d) else ""
        for d, a, b in zip(t[col], t[lo], t[hi])
    ]


def results_table(table: pd.DataFrame) -> pd.DataFrame:
    """Percent, one row per slice: its endpoint (headline | secondary), each variant (mean over seeds, sd),
    MUSIC - baseline and MUSIC - control [95% CI], items, each RM's gap over its own history-blind score
    [95% CI] and the length-alone reference."""
    t = table.copy()
    out = pd.DataFrame({"test": [slice_title(s) for s in t["slice"]]})
    if "endpoint" in t:
        out["endpoint"] = t["endpoint"].fillna("secondary").tolist()
    for v in VARIANT_ORDER:
        if f"{v}_accuracy" in t:
            out[v] = [
                f"{100 * a:.1f} ± {100 * sd:.1f}" if pd.notna(a) else ""
                for a, sd in zip(t[f"{v}_accuracy"], t[f"{v}_sd"])
            ]
    if "diff" in t:
        out["MUSIC - baseline [95% CI]"] = _interval(t, "diff", "ci_low", "ci_high")
    if "diff_control" in t:
        out["MUSIC - control [95% CI]"] = _interval(t, "diff_control", "control_ci_low", "control_ci_high")
    if "diff" in t:
        out["items"] = [int(n) if pd.notna(n) else None for n in t["n_items"]]
    for v in VARIANT_ORDER:
        if f"{v}_blind_gap" in t:
            out[f"{v}: RM - history-blind [95% CI]"] = _interval(
                t, f"{v}_blind_gap", f"{v}_blind_gap_ci_low", f"{v}_blind_gap_ci_high"
            )
    if "length_accuracy" in t:
        out["length alone"] = [f"{100 * a:.1f}" if pd.notna(a) else "" for a in t["length_accuracy"]]
    return out.set_index("test")


def paper_table() -> pd.DataFrame:
    """The paper's RewardBench rows (percent; Gemma-2-9B RMs, ~73k Skywork + ~31k MUSIC pairs)."""
    return pd.DataFrame(
        [
            {
                "model": f"paper: {'baseline' if v == 'baseline' else '+MUSIC'} (Gemma-2-9B)",
                **{SECTION_TITLES[k]: val for k, val in paper.items()},
            }
            for v, paper in PAPER_REWARDBENCH.items()
        ]
    ).set_index("model")


def rewardbench_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """RewardBench sections in percent, this run's variants (mean ± sd over training seeds, from each variant's
    metrics/{variant}.json) above the paper's two rows (constants.PAPER_REWARDBENCH), one column per section."""
    rows = []
    for v in order_variants(metrics):
        rb = (metrics[v] or {}).get("rewardbench")
        if not rb:
            continue
        row = {"model": f"this run: {v} (mean ± sd over {max(r.get('n', 0) for r in rb.values())} seeds)"}
        for k in SECTION_KEYS:
            r = rb.get(k) or {}
            row[SECTION_TITLES[k]] = (
                "" if r.get("mean") is None else f"{100 * r['mean']:.1f} ± {100 * (r.get('sd') or 0):.1f}"
            )
        rows.append(row)
    paper = paper_table().map(lambda x: f"{x:.1f}").reset_index()
    return pd.concat(
        [pd.DataFrame(rows, columns=["model", *(SECTION_TITLES[k] for k in SECTION_KEYS)]), paper], ignore_index=True
    ).set_index("model")


def load_best_of_n(metrics_dir: str | Path, evaluation_dir: str | Path | None = None) -> dict | None:
    """best_of_n.json (numbers), with best_of_n_info.json (judge, policy, ...) merged in when given and present."""
    path = Path(metrics_dir) / "best_of_n.json"
    if not path.exists():
        return None
    out = json.loads(path.read_text(encoding="utf-8"))
    info = Path(evaluation_dir) / "best_of_n_info.json" if evaluation_dir else None
    return {**out, **json.loads(info.read_text(encoding="utf-8"))} if info and info.exists() else out
