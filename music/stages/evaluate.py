"""The `evaluate@{variant}` stage: every held-out test, scored by each training seed's reward model.

Guards first (the trained models exist; no held-out conversation is a training conversation), then one
scoring pass per seed over all items (music.evaluate.items) and the reward trajectories of the held-out
MUSIC pairs, then atomic writes:
- outputs/metrics/{variant}.json: numbers only, per test / distance / group, mean and spread over seeds;
- outputs/evaluation/{variant}/items.csv: one row per item and seed (the paired comparisons of the
  plots stage read these; RewardBench rows have test "rewardbench", source = the subset, and no group),
  with each item's cluster and its history-blind references (music.evaluate.items: the same RM scoring
  only the last exchange, scored in the same pass; length alone; empty for RewardBench rows),
  trajectory.csv, and info.json (sources, counts, skip reasons, identical pairs dropped: text).
RewardBench sections in the metrics use SECTION_KEYS (chat, chat_hard, safety, reasoning, average).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from music.config import Params
from music.evaluate.constants import SECTION_KEYS
from music.evaluate.heldout_items import REPORT_FILE, SWAP_FILE, read_swap_items
from music.evaluate.items import GROUPS, Item, item_rows, items_from_pairs, score_groups, summarize_rows
from music.evaluate.pairwise import local_pairs, require_model
from music.evaluate.rewardbench import load_rewardbench_pairs, rewardbench_items, rewardbench_result
from music.evaluate.stats import spread
from music.files import atomic_path, write_json
from music.rm.frozen import use_disk_store
from music.rm.score import RewardScorer
from music.schema import PreferencePair, user_turns
from music.stages import check_variant
from music.stages.seed import SEED_FILES, check_disjoint, read_train_index
from music.store import read_pairs, seed_dir

ITEM_FIELDS = (
    "variant",
    "seed",
    "test",
    "item_id",
    "source",
    "distance",
    "group",
    "chosen_score",
    "rejected_score",
    "correct",
    "cluster",
    "blind_chosen_score",
    "blind_rejected_score",
    "blind_correct",
    "length_correct",
)
TRAJECTORY_FIELDS = ("variant", "seed", "pair_id", "relative_turn", "chosen_score", "rejected_score", "gap", "score_sd")


@dataclass(frozen=True)
class TrajectoryPoint:
    """The two branches of a held-out MUSIC pair cut after one assistant turn, `relative_turn` turns after
    the divergence (-1 = the turn before it: both prefixes are still identical)."""

    pair_id: str
    relative_turn: int
    chosen: list[dict]
    rejected: list[dict]


def trajectory_points(pairs: Sequence[PreferencePair]) -> list[TrajectoryPoint]:
    out = []
    for p in pairs:
        g = int(p.meta["divergence_turn"])
        for t in range(max(1, g - 1), user_turns(p.chosen) + 1):
            out.append(
                TrajectoryPoint(str(p.meta["pair_id"]), t - g, _through_turn(p.chosen, t), _through_turn(p.rejected, t))
            )
    return out


def _through_turn(conv: list[dict], turn: int) -> list[dict]:
    """The conversation up to the assistant reply of its `turn`-th user turn."""
    seen = 0
    for i, m in enumerate(conv):
        seen += m["role"] == "user"
        if seen == turn and m["role"] == "assistant":
            return conv[: i + 1]
    raise ValueError(f"conversation has no assistant reply in user turn {turn}")


def load_items(params) -> tuple[list[Item], list[PreferencePair], dict]:
    """(items of every test, held-out MUSIC pairs, info): every held-out input checked against the training
    seeds' conversations before anything is scored."""
    cfg, paths = params.evaluate, params.paths
    train = read_train_index(Path(paths.seeds) / SEED_FILES["train"])
    info: dict = {"sources": {}, "skipped": {}}
    items: list[Item] = []
    loaded = {}
    # quality twins and swap items: the heldout stage (the same for every experiment on the method);
    # held-out MUSIC pairs: the contrast stage (the method's own output)
    for src, test in ((Path(paths.heldout) / "quality_eval", "quality"), (Path(paths.pairs) / "music_eval", "music")):
        pairs = read_pairs(src)
        check_disjoint(
            ((p.meta.get("pair_id", i), p.meta.get("conversation_id"), p.chosen) for i, p in enumerate(pairs)),
            train,
            source=str(src),
        )
        loaded[test] = pairs
        items += items_from_pairs(test, pairs)
        info["sources"][test] = str(src)
    swap_file = Path(paths.heldout) / SWAP_FILE
    swapped = read_swap_items(swap_file)  # every swap of a conversation (both donor kinds): one cluster
    check_disjoint(((it.item_id, it.cluster, it.chosen) for it in swapped), train, source=str(swap_file))
    items += swapped
    report_file = Path(paths.heldout) / REPORT_FILE
    heldout_report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.exists() else {}
    swap_info = heldout_report.get("swap", {})
    info["sources"]["swap"] = swap_info.get("source", str(swap_file))
    info["swap"] = {k: v for k, v in swap_info.items() if k != "source"}
    for name, path in sorted(cfg.local_sets.items()):
        pairs, skipped = local_pairs(name, path, limit=cfg.local_set_limit)
        if pairs is None:
            info["skipped"][name] = skipped
            continue
        items += items_from_pairs(name, pairs, source=name)
        info["sources"][name] = str(path)
        info[f"{name}_malformed_records_skipped"] = skipped
    identical = [it for it in items if it.distance < 1]  # chosen == rejected: nothing to judge, in no group
    info["identical_pairs_dropped"] = {
        t: sum(it.test == t for it in identical) for t in sorted({it.test for it in identical})
    }
    return [it for it in items if it.distance >= 1], loaded["music"], info


ScorerFactory = Callable[[Path], object]


def drop_truncated_identical(items: Sequence[Item], fit: Callable | None) -> tuple[list[Item], dict | None]:
    """The items left to judge once each conversation is fitted to the scorer's length (music.rm.data.
    fit_conversation: oldest turns dropped first), and what the fitting did, per test and distance: items, those
    that lost turns or tokens (`truncated`), and those whose two sides became token-identical (`identical`: a
    swap whose swapped reply sat in a dropped turn). An identical item has nothing to judge: it is dropped from
    every group rather than scored as wrong. `fit` None (a scorer that does not say how it fits): nothing is
    dropped and the counts are None."""
    if fit is None:
        return list(items), None
    counts: dict[str, dict[str, dict[str, int]]] = {}
    kept = []
    for it in items:
        chosen, rejected = fit(it.chosen), fit(it.rejected)
        row = counts.setdefault(it.test, {}).setdefault(str(it.distance), {"items": 0, "truncated": 0, "identical": 0})
        row["items"] += 1
        row["truncated"] += any(f.turns_dropped or f.tokens_cut for f in (chosen, rejected))
        if chosen.ids == rejected.ids:
            row["identical"] += 1
        else:
            kept.append(it)
    return kept, {t: dict(sorted(d.items(), key=lambda kv: int(kv[0]))) for t, d in sorted(counts.items())}


def run(params: Params, *, variant: str | None = None, make_scorer: ScorerFactory | None = None) -> dict:
    """Score every test with each seed's RM of `variant`; write the metrics, items, trajectory and info files.

    `make_scorer(model_dir)` replaces RewardScorer (tests pass fakes); the checkpoint checks still run.
    """
    check_variant("evaluate", variant, params.train.variants)
    cfg, paths = params.evaluate, params.paths
    model_dirs = {
        s: require_model(seed_dir(paths.models, variant, s), f"{variant} (seed {s})") for s in params.train.seeds
    }
    items, music_pairs, info = load_items(params)
    points = trajectory_points(music_pairs)
    point_items = [Item("trajectory", f"{p.pair_id}@{p.relative_turn}", 1, p.chosen, p.rejected) for p in points]
    rewardbench = load_rewardbench_pairs(cfg.rewardbench_path) if (cfg.rewardbench or cfg.rewardbench_path) else None
    if rewardbench is None:
        info["skipped"]["rewardbench"] = (
            "evaluate.rewardbench is false and no rewardbench_path (the hub is unreachable offline)"
        )
    rb_items = rewardbench_items(rewardbench, source=cfg.rewardbench_path or "hub") if rewardbench is not None else []
    if rb_items:
        info["sources"]["rewardbench"] = cfg.rewardbench_path or "hub"
    make_scorer = make_scorer or (
        lambda d: RewardScorer(
            str(d),
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            dtype=cfg.dtype,
            progress_desc=f"score {variant} {Path(d).name}",
        )
    )
    use_disk_store(paths.cache)  # frozen-layer states (music.rm.frozen) shared with the other stages

    rows, traj_rows, per_seed, rb = [], [], {}, {}
    truncation: dict | None = None
    for s, model_dir in model_dirs.items():
        scorer = make_scorer(model_dir)
        if s == next(iter(model_dirs)):  # every seed's RM fits conversations alike (the variant's max_length)
            items, truncation = drop_truncated_identical(items, getattr(scorer, "fit", None))
            info["truncation"] = truncation
            blind_items = [it.blind() for it in items]  # the history-blind reference: last exchanges (deduplicated)
        scored = score_groups(
            scorer, {"items": items, "blind": blind_items, "rewardbench": rb_items, "trajectory": point_items}
        )
        seed_rows = item_rows(items, scored["items"], scored["blind"], variant=variant, seed=s)
        rb_scores = scored["rewardbench"]
        rows += seed_rows + item_rows(rb_items, rb_scores, variant=variant, seed=s)  # RewardBench: in no group
        per_seed[s] = {**summarize_rows(seed_rows), "history_blind": blind_summary(seed_rows)}
        traj = scored["trajectory"]
        sd = spread([x for pair in scored["items"] + traj for x in pair])["sd"] or 1.0
        traj_rows += [
            {
                "variant": variant,
                "seed": s,
                "pair_id": p.pair_id,
                "relative_turn": p.relative_turn,
                "chosen_score": round(c, 6),
                "rejected_score": round(r, 6),
                "gap": round(c - r, 6),
                "score_sd": round(sd, 6),
            }
            for p, (c, r) in zip(points, traj)
        ]
        if rb_items:
            rb[s] = rewardbench_result(
                [it.source for it in rb_items], [c for c, _ in rb_scores], [r for _, r in rb_scores]
            )
        del scorer  # one RM in memory at a time (a 9B RM per seed)
    metrics = seed_summary(per_seed)
    if rb:  # per section (SECTION_KEYS): the weighted section score's mean/sd/min/max over seeds
        metrics["rewardbench"] = {
            k: {**spread([r[k] for r in rb.values() if r.get(k) is not None]), "n_items": len(rb_items)}
            for k in SECTION_KEYS
        }
    out = Path(paths.evaluation) / variant
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        _write_csv(tmp / "items.csv", ITEM_FIELDS, rows)
        _write_csv(tmp / "trajectory.csv", TRAJECTORY_FIELDS, traj_rows)
        write_json(
            tmp / "info.json",
            {
                **info,
                "variant": variant,
                "seeds": list(model_dirs),
                "model_dirs": {str(s): str(d) for s, d in model_dirs.items()},
            },
        )
    write_json(Path(paths.metrics) / f"{variant}.json", metrics)
    return metrics


def seed_summary(per_seed: dict[int, dict]) -> dict:
    """Numbers only: per group, test and test@distance, the accuracy's mean/sd/min/max over seeds and the
    number of items; plus each seed's accuracies."""
    acc: dict[str, list[float]] = defaultdict(list)
    n: dict[str, int] = {}
    for summary in per_seed.values():
        for g in GROUPS:
            if g in summary["groups"]:
                acc[g].append(summary["groups"][g]["accuracy"])
                n[g] = summary["groups"][g]["n"]
        for t, v in summary["tests"].items():
            acc[t].append(v["accuracy"])
            n[t] = v["n"]
            for d, dv in v["by_distance"].items():
                acc[f"{t}@{d}"].append(dv["accuracy"])
                n[f"{t}@{d}"] = dv["n"]
    blind: dict[str, list[float]] = defaultdict(list)
    for summary in per_seed.values():
        for k, v in summary.get("history_blind", {}).items():
            blind[k].append(v)
    out = {
        "accuracy": {k: {**spread(v), "n_items": n[k]} for k, v in sorted(acc.items())},
        "per_seed": {
            str(s): {k: v["accuracy"] for k, v in summary["groups"].items()} for s, summary in per_seed.items()
        },
    }
    if blind:  # the same RM on the last exchange only (ties count 1/2): mean/sd over seeds, per group and test
        out["history_blind"] = {k: spread(v) for k, v in sorted(blind.items())}
    return out


def blind_summary(rows: Sequence[dict]) -> dict[str, float]:
    """The history-blind reference's accuracy (ties 1/2) per group and per test, from one seed's item rows."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for key in filter(None, (r["group"], r["test"])):
            acc[key].append(float(r["blind_correct"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def hardest_items(
    params, variant: str, k: int = 3, tests: Sequence[str] = ("quality", "swap")
) -> list[tuple[Item, float]]:
    """The `k` items of `tests` this variant gets most wrong: the lowest chosen - rejected score, averaged
    over seeds (read from its items.csv; the conversations rebuilt with load_items)."""
    import pandas as pd

    rows = pd.read_csv(Path(params.paths.evaluation) / variant / "items.csv", dtype={"item_id": str})
    rows = rows[rows["test"].isin(tests)]
    margin = (
        (rows["chosen_score"] - rows["rejected_score"]).groupby([rows["test"], rows["item_id"]]).mean().sort_values()
    )
    items = {(it.test, it.item_id): it for it in load_items(params)[0]}
    return [(items[key], float(m)) for key, m in margin.head(k).items() if key in items]
