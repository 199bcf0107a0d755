"""Baseline vs MUSIC vs the control arm, paired on the same items, over training seeds.

Each variant's evaluate stage writes one row per (item, seed) (music.stages.evaluate). Here an item's
accuracy is its share of seeds that got it right; a difference between arms (MUSIC - baseline: `diff`;
MUSIC - control: `diff_control`) is the mean over items of the paired per-item differences, with a 95%
two-level percentile bootstrap (stats.two_level_bootstrap): conversation clusters resampled (items sharing
a conversation or question move together) and the training seeds resampled. Item difficulty cancels in the
pairing; so does what a training seed does to every arm alike: seed s initialises every arm's LoRA (and,
with train.head_init normal, its head) the same way (music.rm.model); with the random head the seed moved
every arm's early accuracy together (62-72%). So when both arms have the same seeds (`seeds_paired`) they
are resampled jointly, as matched pairs; otherwise within each arm. Each variant's accuracy is also reported
per seed (mean, sd, over seeds).

Endpoints fixed in advance (music.evaluate.items): the headline is `early` and `last` (endpoint
"headline" in comparison.csv); every other slice is "secondary". Beside each slice, the history-blind
references: each variant's own RM fed only the last exchange ({v}_blind_accuracy, ties 1/2) and the gap
RM - history-blind with its two-level interval ({v}_blind_gap...), and length alone (length_accuracy: the
side with more assistant characters wins, ties 1/2; a cluster-bootstrap interval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from music.evaluate.constants import EXAMPLE_COUNTS, REWARDBENCH_TEST, SECTION_KEYS, SECTIONS
from music.evaluate.stats import bootstrap_interval, resample_counts, spread, two_level_bootstrap

BASE, OTHER, CONTROL = "baseline", "music", "control"
N_BOOT = 4000
HEADLINE = ("early", "last")  # the endpoints fixed in advance; every other slice is secondary


def load_item_rows(evaluation_dir: str | Path, variants: Sequence[str]) -> pd.DataFrame:
    frames = []
    for v in variants:
        path = Path(evaluation_dir) / v / "items.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run the evaluate stage for variant {v!r} first (dvc repro evaluate@{v})"
            )
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


def _with_clusters(rows: pd.DataFrame) -> pd.DataFrame:
    """rows with a `cluster` for every item ("" or absent: the item alone) and numeric reference columns."""
    cluster = rows["cluster"].astype(str) if "cluster" in rows else pd.Series("", index=rows.index)
    alone = rows["test"].astype(str) + ":" + rows["item_id"].astype(str)
    out = rows.assign(cluster=cluster.where(cluster != "", alone))
    for col in ("blind_correct", "length_correct"):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else float("nan")
    return out


def _matrix(sub: pd.DataFrame, variant: str, value: str = "correct") -> pd.DataFrame:
    """(training seeds x items) of one variant; items = (test, item_id) columns, complete in every seed."""
    v = sub[sub["variant"] == variant]
    if v.empty:
        return pd.DataFrame()
    return v.pivot_table(index="seed", columns=["test", "item_id"], values=value, aggfunc="first").dropna(axis=1)


def _contrast(
    mats: dict[str, pd.DataFrame], minuend: str, subtrahend: str, clusters: pd.Series, seed: int
) -> dict | None:
    a, b = mats.get(minuend), mats.get(subtrahend)
    if a is None or b is None or a.empty or b.empty:
        return None
    items = a.columns.intersection(b.columns)
    paired = list(a.index) == list(b.index)  # the same training seeds in both arms: matched by design
    return two_level_bootstrap(
        [a[items].to_numpy(), b[items].to_numpy()],
        [1.0, -1.0],
        clusters.loc[items].tolist(),
        n_boot=N_BOOT,
        seed=seed,
        paired_seeds=paired,
    )


def compare(
    rows: pd.DataFrame, base: str = BASE, other: str = OTHER, seed: int = 0, control: str = CONTROL
) -> pd.DataFrame:
    """One row per slice: its endpoint (headline | secondary), each variant's accuracy (mean over seeds, sd
    over seeds, seeds), the paired differences other - base (diff, ci_low, ci_high, n_items, n_clusters) and
    other - control (diff_control, ...) over the items both have with two-level 95% bootstrap intervals, and
    the history-blind references (module docstring)."""
    rows = _with_clusters(rows)
    out = []
    for name, mask in _slices(rows):
        sub = rows[mask]
        clusters = sub.groupby(["test", "item_id"])["cluster"].first()
        row: dict = {"slice": name, "endpoint": "headline" if name in HEADLINE else "secondary"}
        mats = {}
        for v in (base, other, control):
            if not (sub["variant"] == v).any():
                continue
            seeds = sub[sub["variant"] == v].groupby("seed")["correct"].mean()
            s = spread(seeds.tolist())
            row.update({f"{v}_accuracy": s["mean"], f"{v}_sd": s["sd"], f"{v}_seeds": s["n"]})
            mats[v] = _matrix(sub, v)
        for prefix, subtrahend in (("", base), ("control_", control)):
            d = _contrast(mats, other, subtrahend, clusters, seed)
            if d is None:
                continue
            key = "diff" if not prefix else "diff_control"
            row.update(
                {
                    key: d["diff"],
                    f"{prefix}ci_low": d["ci_low"],
                    f"{prefix}ci_high": d["ci_high"],
                    f"{prefix}n_items": d["n"],
                    f"{prefix}n_clusters": d["n_clusters"],
                    f"{prefix}seeds_paired": d["paired_seeds"],
                }
            )
        for v in mats:  # the RM's own history-blind reference: the gap RM - last exchange only, two-level interval
            blind = _matrix(sub, v, "blind_correct")
            if blind.empty:
                continue
            full = mats[v][blind.columns.intersection(mats[v].columns)]
            g = two_level_bootstrap(
                [full.to_numpy() - blind[full.columns].to_numpy()],
                [1.0],
                clusters.loc[full.columns].tolist(),
                n_boot=N_BOOT,
                seed=seed,
            )
            row.update(
                {
                    f"{v}_blind_accuracy": float(blind[full.columns].to_numpy().mean()),
                    f"{v}_blind_gap": g["diff"],
                    f"{v}_blind_gap_ci_low": g["ci_low"],
                    f"{v}_blind_gap_ci_high": g["ci_high"],
                }
            )
        length = sub.dropna(subset=["length_correct"]).groupby(["test", "item_id"])["length_correct"].first()
        if not length.empty:  # seed- and model-free: a cluster bootstrap only
            ln = two_level_bootstrap(
                [length.to_numpy()[None, :]], [1.0], clusters.loc[length.index].tolist(), n_boot=N_BOOT, seed=seed
            )
            row.update({"length_accuracy": ln["diff"], "length_ci_low": ln["ci_low"], "length_ci_high": ln["ci_high"]})
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
    out = {k: {"slice": rewardbench_slice(k), "endpoint": "secondary"} for k in SECTION_KEYS}
    for v in (base, other):
        sub = rb[rb["variant"] == v]
        if sub.empty:
            continue
        per_seed = [
            _section_values(g["source"], g["correct"].to_numpy(dtype=float))  # correct: from unrounded scores
            for _, g in sub.groupby("seed")
        ]
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
        for _, idx in both.groupby("source").indices.items():  # subsets in sorted order, one draw each
            draws[:, idx] = resample_counts(rng, len(idx), N_BOOT)
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
    frames = [
        pd.read_csv(Path(evaluation_dir) / v / "trajectory.csv")
        for v in variants
        if (Path(evaluation_dir) / v / "trajectory.csv").is_file()
    ]
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
        out.append(
            {
                "variant": v,
                "relative_turn": int(k),
                "gap": float(g["z"].mean()),
                "ci_low": lo,
                "ci_high": hi,
                "pairs": len(g),
            }
        )
    return pd.DataFrame(out)


def _percent(r: pd.Series, col: str) -> float | None:
    return None if pd.isna(r.get(col)) else round(100 * float(r[col]), 1)


def headline(table: pd.DataFrame, best_of_n: dict | None = None) -> dict:
    """The numbers a reader compares (numbers only, for `dvc metrics show` / `dvc exp show`): the two
    endpoints fixed in advance (early, last), then held-out MUSIC pairs and the quality twins (secondary,
    reported apart): each arm's accuracy (percent), MUSIC - baseline and (with a control arm) MUSIC - control
    with their two-level intervals (points), items and clusters, each arm's history-blind accuracy and its
    gap RM - history-blind with its interval (history_blind), and length alone (length_only)."""
    out: dict = {}
    for name in (*HEADLINE, "music", "quality"):
        r = table[table["slice"] == name]
        if r.empty:
            continue
        r = r.iloc[0]
        out[name] = {
            k: _percent(r, c)
            for k, c in (
                ("baseline", f"{BASE}_accuracy"),
                ("music", f"{OTHER}_accuracy"),
                ("diff", "diff"),
                ("diff_ci_low", "ci_low"),
                ("diff_ci_high", "ci_high"),
            )
        }
        out[name]["n_items"] = None if pd.isna(r.get("n_items")) else int(r["n_items"])
        if pd.notna(r.get("n_clusters")):
            out[name]["n_clusters"] = int(r["n_clusters"])
        if pd.notna(r.get(f"{CONTROL}_accuracy")):
            out[name]["control"] = _percent(r, f"{CONTROL}_accuracy")
        if pd.notna(r.get("diff_control")):
            out[name].update(
                diff_control=_percent(r, "diff_control"),
                diff_control_ci_low=_percent(r, "control_ci_low"),
                diff_control_ci_high=_percent(r, "control_ci_high"),
            )
        blind = {
            v: {
                "accuracy": _percent(r, f"{v}_blind_accuracy"),
                "gap": _percent(r, f"{v}_blind_gap"),
                "gap_ci_low": _percent(r, f"{v}_blind_gap_ci_low"),
                "gap_ci_high": _percent(r, f"{v}_blind_gap_ci_high"),
            }
            for v in (BASE, OTHER, CONTROL)
            if pd.notna(r.get(f"{v}_blind_gap"))
        }
        if blind:
            out[name]["history_blind"] = blind
        if pd.notna(r.get("length_accuracy")):
            out[name]["length_only"] = _percent(r, "length_accuracy")
    rb = {k: table[table["slice"] == rewardbench_slice(k)] for k in SECTION_KEYS}
    if any(not r.empty for r in rb.values()):  # RewardBench: the four sections and the average, percent
        out[REWARDBENCH_TEST] = {}
        for k, r in rb.items():
            if r.empty:
                continue
            r = r.iloc[0]
            out[REWARDBENCH_TEST][k] = {
                name: (None if pd.isna(r.get(c)) else round(100 * float(r[c]), 1))
                for name, c in (
                    ("baseline", f"{BASE}_accuracy"),
                    ("music", f"{OTHER}_accuracy"),
                    ("diff", "diff"),
                    ("diff_ci_low", "ci_low"),
                    ("diff_ci_high", "ci_high"),
                )
            }
    if best_of_n:
        out["best_of_n_win_minus_loss"] = {
            f"N{n}": round(100 * ((v.get("win_rate") or 0) - (v.get("loss_rate") or 0)), 1)
            for n, v in sorted(best_of_n.get("by_n", {}).items(), key=lambda kv: int(kv[0]))
        }
        half = {
            n: v
            for n, v in sorted(best_of_n.get("by_n", {}).items(), key=lambda kv: int(kv[0]))
            if v.get("win_rate_ties_half") is not None
        }
        if half:  # (W + T/2) / N, percent, with its bootstrap interval over prompts (and seeds), next to the games
            # in which both RMs picked the identical conversation and whether every game tied
            out["best_of_n_win_rate"] = {
                f"N{n}": {
                    "rate": round(100 * v["win_rate_ties_half"], 1),
                    "ci_low": round(100 * v["win_rate_ties_half_ci_low"], 1),
                    "ci_high": round(100 * v["win_rate_ties_half_ci_high"], 1),
                    **{
                        k: int(v[key])
                        for k, key in (("games", "n_games"), ("identical", "n_identical"), ("all_ties", "all_ties"))
                        if v.get(key) is not None
                    },
                }
                for n, v in half.items()
            }
        check = best_of_n.get("judge_check")
        if isinstance(check, dict) and check.get("accuracy") is not None:  # the judge on known pairs, percent
            out["best_of_n_judge"] = {
                "accuracy": round(100 * check["accuracy"], 1),
                "ci_low": round(100 * check["ci_low"], 1),
                "ci_high": round(100 * check["ci_high"], 1),
                "n_pairs": int(check["n_pairs"]),
                "at_chance": int(check["at_chance"]),
            }
    return out
