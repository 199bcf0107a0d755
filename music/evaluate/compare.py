"""Baseline vs MUSIC, paired on the same items, over training seeds.

Each variant's evaluate stage writes one row per (item, seed) (music.evaluate.run). Here an item's
accuracy is its share of seeds that got it right; the MUSIC - baseline difference is the mean over items
of the paired per-item differences, with a seeded percentile bootstrap over items (95%). Item difficulty
cancels in the pairing; seed-to-seed variation is averaged within each item. Each variant's accuracy is
also reported per seed (mean, sd, min, max over seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from music.evaluate.constants import EXAMPLE_COUNTS, REWARDBENCH_TEST, SECTION_KEYS, SECTIONS
from music.evaluate.stats import bootstrap_interval, paired_difference, spread

BASE, OTHER = "baseline", "music"
N_BOOT = 4000


def load_item_rows(evaluation_dir: str | Path, variants: Sequence[str]) -> pd.DataFrame:
    frames = []
    for v in variants:
        path = Path(evaluation_dir) / v / "items.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the evaluate stage for variant {v!r} first (dvc repro evaluate@{v})")
        frames.append(pd.read_csv(path, dtype={"item_id": str, "group": str}, keep_default_na=False))
    return pd.concat(frames, ignore_index=True)


def _slices(rows: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(name, row mask): the two groups, every test, and every test at every distance (RewardBench is
    compared per section by rewardbench_compare: its arithmetic is a weighted mean of subsets)."""
    out = [(g, rows["group"] == g) for g in ("early", "last") if (rows["group"] == g).any()]
    for t in sorted(set(rows["test"].unique()) - {REWARDBENCH_TEST}):
        out.append((t, rows["test"] == t))
        for d in sorted(rows.loc[rows["test"] == t, "distance"].unique()):
            out.append((f"{t}@{d}", (rows["test"] == t) & (rows["distance"] == d)))
    return out


def compare(rows: pd.DataFrame, base: str = BASE, other: str = OTHER, seed: int = 0) -> pd.DataFrame:
    """One row per slice: each variant's accuracy (mean over seeds, sd over seeds, seeds), the paired
    difference other - base over the items both have, its 95% bootstrap interval, and the item count."""
    out = []
    for name, mask in _slices(rows):
        sub = rows[mask]
        per_item = sub.groupby(["variant", "test", "item_id"])["correct"].mean().unstack("variant")
        row: dict = {"slice": name}
        for v in (base, other):
            if v not in per_item:
                continue
            seeds = sub[sub["variant"] == v].groupby("seed")["correct"].mean()
            s = spread(seeds.tolist())
            row.update({f"{v}_accuracy": s["mean"], f"{v}_sd": s["sd"], f"{v}_seeds": s["n"]})
        if base in per_item and other in per_item:
            both = per_item[[base, other]].dropna()
            d = paired_difference(both[base].tolist(), both[other].tolist(), n_boot=N_BOOT, seed=seed)
            row.update({"diff": d["diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n_items": d["n"]})
        out.append(row)
    out += rewardbench_compare(rows, base, other, seed=seed)
    return pd.DataFrame(out)


def rewardbench_slice(section: str) -> str:
    """The comparison table's slice name of a RewardBench section (SECTION_KEYS): "rewardbench:chat", ..."""
    return f"{REWARDBENCH_TEST}:{section}"


def _section_weights(subsets: pd.Series) -> dict[str, np.ndarray]:
    """Per section: each item's weight EXAMPLE_COUNTS[subset] / (rows of that subset) / sum of the section's
    present counts, so sum(weight * correct) is section_scores' arithmetic (absent subsets skipped)."""
    n = subsets.value_counts()
    out = {}
    for section, members in SECTIONS.items():
        present = [m for m in members if m in n.index]
        total = sum(EXAMPLE_COUNTS[m] for m in present)
        if total:
            out[section] = np.array([EXAMPLE_COUNTS[x] / n[x] / total if x in present else 0.0 for x in subsets])
    return out


def _section_values(subsets: pd.Series, values: np.ndarray) -> dict[str, float]:
    """music.evaluate.rewardbench.section_scores on per-item values (sections present; average when all four are)."""
    out = {sec: float(w @ values) for sec, w in _section_weights(subsets).items()}
    if len(out) == len(SECTIONS):
        out["average"] = sum(out[s] for s in SECTIONS) / len(SECTIONS)
    return out


def rewardbench_compare(rows: pd.DataFrame, base: str = BASE, other: str = OTHER, seed: int = 0) -> list[dict]:
    """One row per RewardBench section and the average (slice "rewardbench:<key>"), the columns of compare().

    Each variant's score per seed is section_scores() of that seed's subset accuracies; the table gives their
    mean and sd over seeds. The paired difference is over the items both variants have (each item's
    correctness averaged over seeds), weighted as section_scores weights subsets; its 95% interval is a
    percentile bootstrap that resamples items within each subset (subset sizes, hence the weights, fixed),
    the same draw for every section so the average's interval is the mean of the four sections' draws.
    """
    rb = rows[rows["test"] == REWARDBENCH_TEST]
    if rb.empty:
        return []
    out = {k: {"slice": rewardbench_slice(k)} for k in SECTION_KEYS}
    for v in (base, other):
        sub = rb[rb["variant"] == v]
        if sub.empty:
            continue
        per_seed = [_section_values(g["source"], g["correct"].to_numpy(dtype=float))  # correct: from unrounded scores
                    for _, g in sub.groupby("seed")]
        for k in SECTION_KEYS:
            sp = spread([r[k] for r in per_seed if k in r])
            out[k].update({f"{v}_accuracy": sp["mean"], f"{v}_sd": sp["sd"], f"{v}_seeds": sp["n"]})
    per_item = rb.groupby(["variant", "source", "item_id"])["correct"].mean().unstack("variant")
    if base in per_item and other in per_item:
        both = per_item[[base, other]].dropna().reset_index()
        d = (both[other] - both[base]).to_numpy(dtype=float)
        weights = _section_weights(both["source"])
        rng = np.random.default_rng(seed)
        draws = np.zeros((N_BOOT, len(d)))  # per bootstrap draw: how often each item is drawn (within its subset)
        for _, idx in both.groupby("source").indices.items():
            picks = rng.integers(0, len(idx), size=(N_BOOT, len(idx)))
            np.add.at(draws, (np.arange(N_BOOT)[:, None], idx[picks]), 1.0)
        boot = {sec: draws @ (w * d) for sec, w in weights.items()}
        point = _section_values(both["source"], d)
        if "average" in point:
            boot["average"] = sum(boot[s] for s in SECTIONS) / len(SECTIONS)
        for k, value in point.items():
            lo, hi = np.quantile(boot[k], [0.025, 0.975])
            n_items = int((weights[k] > 0).sum()) if k in weights else len(d)
            out[k].update({"diff": value, "ci_low": float(lo), "ci_high": float(hi), "n_items": n_items})
    return list(out.values())


def load_trajectories(evaluation_dir: str | Path, variants: Sequence[str]) -> pd.DataFrame:
    frames = [pd.read_csv(Path(evaluation_dir) / v / "trajectory.csv") for v in variants
              if (Path(evaluation_dir) / v / "trajectory.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trajectory_summary(traj: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per variant and turn relative to the divergence: the mean chosen - rejected reward gap in units of
    the model's score standard deviation (so RMs of different scales compare), averaged over seeds per
    pair, with a bootstrap 95% interval over pairs."""
    if traj.empty:
        return pd.DataFrame(columns=["variant", "relative_turn", "gap", "ci_low", "ci_high", "pairs"])
    traj = traj.assign(z=traj["gap"] / traj["score_sd"])
    per_pair = traj.groupby(["variant", "relative_turn", "pair_id"])["z"].mean().reset_index()
    out = []
    for (v, k), g in per_pair.groupby(["variant", "relative_turn"]):
        lo, hi = bootstrap_interval(g["z"].tolist(), n_boot=N_BOOT, seed=seed)
        out.append({"variant": v, "relative_turn": int(k), "gap": float(g["z"].mean()), "ci_low": lo, "ci_high": hi,
                    "pairs": len(g)})
    return pd.DataFrame(out)


def headline(table: pd.DataFrame, best_of_n: dict | None = None) -> dict:
    """The numbers a reader compares (numbers only, for `dvc metrics show` / `dvc exp show`): per group
    and for held-out MUSIC pairs, both accuracies (percent) and MUSIC - baseline with its interval (points)."""
    out: dict = {}
    for name in ("early", "last", "music"):
        r = table[table["slice"] == name]
        if r.empty:
            continue
        r = r.iloc[0]
        out[name] = {k: (None if pd.isna(r.get(c)) else round(100 * float(r[c]), 1))
                     for k, c in (("baseline", f"{BASE}_accuracy"), ("music", f"{OTHER}_accuracy"), ("diff", "diff"),
                                  ("diff_ci_low", "ci_low"), ("diff_ci_high", "ci_high"))}
        out[name]["n_items"] = None if pd.isna(r.get("n_items")) else int(r["n_items"])
    rb = {k: table[table["slice"] == rewardbench_slice(k)] for k in SECTION_KEYS}
    if any(not r.empty for r in rb.values()):  # RewardBench: the four sections and the average, percent
        out[REWARDBENCH_TEST] = {}
        for k, r in rb.items():
            if r.empty:
                continue
            r = r.iloc[0]
            out[REWARDBENCH_TEST][k] = {name: (None if pd.isna(r.get(c)) else round(100 * float(r[c]), 1))
                                        for name, c in (("baseline", f"{BASE}_accuracy"), ("music", f"{OTHER}_accuracy"),
                                                        ("diff", "diff"), ("diff_ci_low", "ci_low"), ("diff_ci_high", "ci_high"))}
    if best_of_n:
        out["best_of_n_win_minus_loss"] = {
            f"N{n}": round(100 * ((v.get("win_rate") or 0) - (v.get("loss_rate") or 0)), 1)
            for n, v in sorted(best_of_n.get("by_n", {}).items(), key=lambda kv: int(kv[0]))}
        half = {n: v for n, v in sorted(best_of_n.get("by_n", {}).items(), key=lambda kv: int(kv[0]))
                if v.get("win_rate_ties_half") is not None}
        if half:  # (W + T/2) / N, percent, with its bootstrap interval over prompts
            out["best_of_n_win_rate"] = {f"N{n}": {"rate": round(100 * v["win_rate_ties_half"], 1),
                                                   "ci_low": round(100 * v["win_rate_ties_half_ci_low"], 1),
                                                   "ci_high": round(100 * v["win_rate_ties_half_ci_high"], 1)}
                                         for n, v in half.items()}
    return out
