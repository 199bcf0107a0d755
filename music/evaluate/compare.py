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

import pandas as pd

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
    """(name, row mask): the two groups, every test, and every test at every distance."""
    out = [(g, rows["group"] == g) for g in ("early", "last") if (rows["group"] == g).any()]
    for t in sorted(rows["test"].unique()):
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
    return pd.DataFrame(out)


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
    if best_of_n:
        out["best_of_n_win_minus_loss"] = {
            f"N{n}": round(100 * ((v.get("win_rate") or 0) - (v.get("loss_rate") or 0)), 1)
            for n, v in sorted(best_of_n.get("by_n", {}).items(), key=lambda kv: int(kv[0]))}
    return out
