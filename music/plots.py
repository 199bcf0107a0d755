"""Figures for the evaluation results (seaborn); saving them (PNG, SVG, PDF) is a separate step.

Every `plot_*` function takes plain metrics dicts (as written by music.evaluate) and returns a
matplotlib Figure without saving it, so a notebook shows the figure it built and the plots stage
saves the same figure with `save_figure`. Titles say what is shown, including what was skipped.

The figures are `matplotlib.figure.Figure` objects not registered with pyplot: a notebook shows one
with `display(fig)` (or by ending a cell with it), nothing is shown twice, and nothing needs closing.
`save_figure` writes byte-stable files: the same figure gives the same bytes on every run (no date
in SVG/PDF metadata, SVG ids from a fixed salt), so a tracked figure changes only when its data does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)  # headless by default; notebooks keep their inline backend
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import seaborn as sns  # noqa: E402

from music.evaluate.constants import PAPER_REWARDBENCH, SECTION_TITLES, SECTIONS  # noqa: E402
from music.io import atomic_path, write_json  # noqa: E402

SUMMARY_FILE = "summary.json"  # headline numbers for `dvc metrics show` (written by the plots stage)

sns.set_theme(style="whitegrid", context="notebook")
VARIANT_ORDER = ["baseline", "music"]
CHANCE = 0.5


FIGURE_NAMES = ("accuracy_overview", "accuracy_by_distance", "best_of_n", "training_curves")  # file stems

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


def _figure(figsize) -> Figure:
    """A figure not registered with pyplot (see the module docstring)."""
    return Figure(figsize=figsize)


def save_figure(fig: Figure, folder: str | Path, name: str, formats: Sequence[str] = ("png", "svg"),
                dpi: int = 150) -> list[Path]:
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


def load_metrics(metrics_dir: str | Path, variants: Sequence[str], *, required: bool = False) -> dict[str, dict]:
    """{variant: metrics} for the variants whose metrics file exists; `required` stops on a missing one."""
    out = {}
    for v in variants:
        path = Path(metrics_dir) / f"{v}.json"
        if path.exists():
            out[v] = json.loads(path.read_text(encoding="utf-8"))
        elif required:
            raise FileNotFoundError(f"metrics file {path} is missing: run the evaluate stage for variant {v!r} first "
                                    f"(dvc repro evaluate@{v})")
    return out


def _order(variants) -> list[str]:
    return sorted(variants, key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))


def _errors(df: pd.DataFrame):
    """Asymmetric error bars from ci_low/ci_high columns, in the row order of df."""
    return [(df["accuracy"] - df["ci_low"]).clip(lower=0).to_numpy(), (df["ci_high"] - df["accuracy"]).clip(lower=0).to_numpy()]


# ---------------------------------------------------------------- accuracy overview
def accuracy_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Long table (variant, group, set, accuracy, ci_low, ci_high, n) of every headline accuracy."""
    rows = []
    for v, m in metrics.items():
        rb = m.get("rewardbench", {})
        if "skipped" not in rb:
            for s in [*SECTIONS, "average"]:
                if rb.get(s) is not None:
                    rows.append(dict(variant=v, group="RewardBench", set=SECTION_TITLES[s], accuracy=rb[s], ci_low=None, ci_high=None, n=None))
        for name, res in m.get("local", {}).items():
            if "skipped" not in res and res.get("accuracy") is not None:
                rows.append(dict(variant=v, group="local", set=name, **{k: res[k] for k in ("accuracy", "ci_low", "ci_high", "n")}))
        for kind, res in m.get("pairwise", {}).get("by_kind", {}).items():
            rows.append(dict(variant=v, group="held-out pairs", set=f"held-out {kind}", **{k: res[k] for k in ("accuracy", "ci_low", "ci_high", "n")}))
        sens = m.get("sensitivity", {}).get("all")
        if sens and sens.get("accuracy") is not None:
            rows.append(dict(variant=v, group="sensitivity", set="corrupted history", **{k: sens[k] for k in ("accuracy", "ci_low", "ci_high", "n")}))
    return pd.DataFrame(rows, columns=["variant", "group", "set", "accuracy", "ci_low", "ci_high", "n"])


def plot_accuracy_overview(metrics: dict[str, dict]) -> Figure:
    """RewardBench sections per variant when present; otherwise local sets + held-out accuracies."""
    df = accuracy_table(metrics)
    has_rb = (df["group"] == "RewardBench").any()
    if has_rb:
        data = df[df["group"] == "RewardBench"].copy()
        title = "RewardBench accuracy by section (ties count as wrong)"
    else:
        data = df[df["group"] != "RewardBench"].copy()
        skipped = {m.get("rewardbench", {}).get("skipped") for m in metrics.values()} - {None}
        title = "Accuracy on held-out and local labelled sets\n(RewardBench skipped: " + ("; ".join(sorted(skipped)) or "not run") + ")"
    fig = _figure((max(6.0, 1.3 * max(1, data["set"].nunique())), 4.2))
    ax = fig.subplots()
    if data.empty:
        ax.text(0.5, 0.5, "no accuracy metrics found", ha="center", va="center", transform=ax.transAxes)
    else:
        data["accuracy"] = data["accuracy"].astype(float)
        order = list(dict.fromkeys(data["set"]))
        hue_order = _order(data["variant"].unique())
        sns.barplot(data=data, x="set", y="accuracy", hue="variant", order=order, hue_order=hue_order, ax=ax, errorbar=None)
        # Wilson 95% intervals, drawn on each bar (seaborn cannot take precomputed intervals).
        for container, variant in zip(ax.containers, hue_order):
            sub = data[data["variant"] == variant].set_index("set").reindex(order)
            for bar, (_, row) in zip(container, sub.iterrows()):
                if pd.notna(row.get("ci_low")) and pd.notna(row.get("ci_high")):
                    x = bar.get_x() + bar.get_width() / 2
                    ax.vlines(x, row["ci_low"], row["ci_high"], color="black", linewidth=1)
                if pd.notna(row.get("n")):
                    ax.annotate(f"n={int(row['n'])}", (bar.get_x() + bar.get_width() / 2, 0.02), ha="center", fontsize=7, rotation=90, color="white")
        ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never hides a bar
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("")
    ax.set_ylabel("accuracy (chosen > rejected)")
    ax.set_title(title, fontsize=11)
    ax.tick_params(axis="x", rotation=20)
    return fig


# ---------------------------------------------------------------- best-of-N
def bon_table(bon: dict) -> pd.DataFrame:
    rows = []
    for n, r in sorted(bon.get("by_n", {}).items(), key=lambda kv: int(kv[0])):
        for o in ("win", "tie", "loss"):
            rows.append(dict(N=int(n), outcome=o, rate=r[f"{o}_rate"], ci_low=r[f"{o}_ci_low"], ci_high=r[f"{o}_ci_high"], games=r["n_games"]))
    return pd.DataFrame(rows, columns=["N", "outcome", "rate", "ci_low", "ci_high", "games"])


def plot_best_of_n(bon: dict) -> Figure:
    """MUSIC RM's win / loss (and tie) rate against the baseline RM vs N, with 95% Wilson intervals."""
    df = bon_table(bon).dropna(subset=["rate"])
    fig = _figure((6.0, 4.2))
    ax = fig.subplots()
    colors = {"win": "tab:green", "tie": "tab:gray", "loss": "tab:red"}
    offsets = {"win": -0.08, "tie": 0.0, "loss": 0.08}  # so overlapping intervals stay visible
    for o in ("win", "tie", "loss"):
        sub = df[df["outcome"] == o]
        if sub.empty:
            continue
        x = [n * (1 + offsets[o]) for n in sub["N"]]
        err = [(sub["rate"] - sub["ci_low"]).clip(lower=0).to_numpy(), (sub["ci_high"] - sub["rate"]).clip(lower=0).to_numpy()]
        ax.errorbar(x, sub["rate"], yerr=err, marker="o", capsize=4, color=colors[o], label={"win": "MUSIC wins", "tie": "ties", "loss": "MUSIC losses"}[o])
    ax.set_xscale("log", base=2)
    ns = sorted(df["N"].unique())
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("N (candidates per turn)")
    ax.set_ylabel("rate over prompts")
    games = int(df["games"].max()) if not df.empty else 0
    ax.set_title(f"Best-of-N: MUSIC RM vs baseline RM, judged in both orders\n"
                 f"({games} prompts per N; judge {bon.get('judge', '?')}; 95% Wilson intervals)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- accuracy by turn distance
def distance_table(metrics: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for v, m in metrics.items():
        for d, r in m.get("pairwise", {}).get("music_by_distance", {}).items():
            rows.append(dict(variant=v, panel="MUSIC pairs: divergence turn", distance=int(d), **{k: r[k] for k in ("accuracy", "ci_low", "ci_high", "n")}))
        for d, r in m.get("sensitivity", {}).get("by_distance", {}).items():
            rows.append(dict(variant=v, panel="real conversations: corrupted turn", distance=int(d), **{k: r[k] for k in ("accuracy", "ci_low", "ci_high", "n")}))
    return pd.DataFrame(rows, columns=["variant", "panel", "distance", "accuracy", "ci_low", "ci_high", "n"])


def plot_by_distance(metrics: dict[str, dict]) -> Figure:
    """Accuracy vs how many turns before the end the difference sits (1 = last turn), per variant."""
    df = distance_table(metrics).dropna(subset=["accuracy"])
    panels = ["MUSIC pairs: divergence turn", "real conversations: corrupted turn"]
    fig = _figure((10.0, 4.0))
    axes = fig.subplots(1, 2, sharey=True)
    palette = dict(zip(_order(df["variant"].unique()), sns.color_palette(n_colors=max(1, df["variant"].nunique()))))
    for ax, panel in zip(axes, panels):
        sub = df[df["panel"] == panel]
        for i, v in enumerate(_order(sub["variant"].unique())):
            s = sub[sub["variant"] == v].sort_values("distance")
            x = s["distance"] + (i - 0.5) * 0.06
            ax.errorbar(x, s["accuracy"], yerr=_errors(s), marker="o", capsize=3, color=palette[v], label=v)
            for xi, yi, n in zip(x, s["accuracy"], s["n"]):
                ax.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(4, 4 if i == 0 else -10), fontsize=7, color=palette[v])
        if sub.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_xticks(sorted(sub["distance"].unique()))
            ax.legend(fontsize=8, loc="lower left")
        ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("turns before the end (1 = last assistant turn)")
    axes[0].set_ylabel("accuracy (ties wrong)")
    axes[0].set_ylim(-0.02, 1.05)
    fig.suptitle("Does the RM see differences earlier in the conversation?", fontsize=11)
    return fig


# ---------------------------------------------------------------- training curves
def load_curves(models_dir: str | Path, variants: Sequence[str]) -> pd.DataFrame:
    frames = []
    for v in variants:
        path = Path(models_dir) / v / "curve.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(variant=v))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "loss", "accuracy", "variant"])


def plot_training_curves(curves: pd.DataFrame) -> Figure:
    """Bradley-Terry loss and batch accuracy per step, per variant (rolling mean over 5 steps)."""
    fig = _figure((10.0, 3.8))
    axes = fig.subplots(1, 2)
    hue_order = _order(curves["variant"].unique()) if not curves.empty else None
    for ax, col in zip(axes, ("loss", "accuracy")):
        if curves.empty or col not in curves:
            ax.text(0.5, 0.5, "no curve.csv found", ha="center", va="center", transform=ax.transAxes)
            continue
        df = curves.sort_values(["variant", "step"]).copy()
        df[f"{col} (rolling 5)"] = df.groupby("variant")[col].transform(lambda s: s.rolling(5, min_periods=1).mean())
        sns.lineplot(data=df, x="step", y=col, hue="variant", hue_order=hue_order, ax=ax, alpha=0.25, legend=False)
        sns.lineplot(data=df, x="step", y=f"{col} (rolling 5)", hue="variant", hue_order=hue_order, ax=ax)
        ax.set_ylabel(col)
        ax.legend(fontsize=8, title="variant")
    if not curves.empty and "loss" in curves:
        axes[0].axhline(0.6931, color="grey", linestyle="--", linewidth=1)  # -log sigmoid(0): an untrained RM
        axes[1].axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("Reward-model training (faint: per step; solid: rolling mean; dashed: chance)", fontsize=11)
    return fig


# ---------------------------------------------------------------- results table
def results_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Our numbers (percent) beside the paper's RewardBench rows; our RewardBench columns are empty
    when it was skipped. Scale: the paper used Gemma-2-9B on ~100k pairs, we a 135M model on tens."""
    rows = []
    for v, paper in PAPER_REWARDBENCH.items():
        rows.append({"model": f"paper: {'baseline' if v == 'baseline' else '+MUSIC'} (Gemma-2-9B)",
                     **{SECTION_TITLES[k]: val for k, val in paper.items()}})
    for v in _order(metrics):
        m = metrics[v]
        rb = m.get("rewardbench", {})
        row = {"model": f"ours: {v}"}
        for k in [*SECTIONS, "average"]:
            row[SECTION_TITLES[k]] = None if "skipped" in rb or rb.get(k) is None else round(100 * rb[k], 1)
        for kind, r in m.get("pairwise", {}).get("by_kind", {}).items():
            row[f"held-out {kind}"] = None if r["accuracy"] is None else round(100 * r["accuracy"], 1)
        sens = m.get("sensitivity", {}).get("all", {})
        row["corrupted history"] = None if sens.get("accuracy") is None else round(100 * sens["accuracy"], 1)
        for name, r in m.get("local", {}).items():
            row[name] = None if "skipped" in r else round(100 * r["accuracy"], 1)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def headline(metrics: dict[str, dict], bon: dict | None) -> dict:
    """A compact summary for `dvc metrics show`: our row of the results table per variant (percent),
    and the MUSIC RM's Best-of-N win/tie/loss counts per N."""
    table = results_table(metrics)
    out: dict = {}
    for model, row in table.iterrows():
        if model.startswith("ours: "):
            out[model[len("ours: "):]] = {k: v for k, v in row.items() if v is not None and v == v}
    if bon:
        out["best_of_n"] = {f"N={n}": "{}/{}/{}".format(r.get("wins"), r.get("ties"), r.get("losses")) for n, r in bon.get("by_n", {}).items()}
    return out


def build_all(P, variants: Sequence[str] | None = None) -> dict[str, Figure]:
    """Every figure from whatever metrics and curves exist: {file stem: Figure}, in FIGURE_NAMES order.
    best_of_n is absent when best_of_n.json is; a missing variant's metrics file is an error."""
    variants = list(variants or P.train.variants)
    metrics = load_metrics(P.paths.metrics, variants, required=True)
    bon = load_best_of_n(P.paths.metrics)
    figs = {"accuracy_overview": plot_accuracy_overview(metrics), "accuracy_by_distance": plot_by_distance(metrics)}
    if bon:
        figs["best_of_n"] = plot_best_of_n(bon)
    figs["training_curves"] = plot_training_curves(load_curves(P.paths.models, variants))
    return figs


def load_best_of_n(metrics_dir: str | Path) -> dict | None:
    path = Path(metrics_dir) / "best_of_n.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def make_all(P, variants: Sequence[str] | None = None) -> list[Path]:
    """The plots stage: build every figure, save each under P.paths.figures, write the summary;
    returns the written figure paths."""
    variants = list(variants or P.train.variants)
    paths: list[Path] = []
    for name, fig in build_all(P, variants).items():
        paths += save_figure(fig, P.paths.figures, name, formats=tuple(P.plots.formats), dpi=P.plots.dpi)
    metrics = load_metrics(P.paths.metrics, variants, required=True)
    write_json(Path(P.paths.metrics) / SUMMARY_FILE, headline(metrics, load_best_of_n(P.paths.metrics)))
    return paths
