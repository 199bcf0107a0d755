"""The `evaluate@{variant}` stage: guards first, then every metric, then one atomic write of
outputs/metrics/{variant}.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

from music.evaluate.pairwise import local_set_accuracy, pairwise_accuracy, require_model
from music.evaluate.rewardbench import load_rewardbench_pairs, score_rewardbench
from music.evaluate.sensitivity import load_eval_conversations, sensitivity_accuracy
from music.io import write_json
from music.rm.score import RewardScorer
from music.seeding import SEED_FILES, check_disjoint, read_conversation_ids
from music.store import read_pairs


def evaluate_variant(P, variant: str, *, scorer=None) -> dict:
    """Run every evaluation for one trained RM and write outputs/metrics/{variant}.json.

    `scorer` (anything with .score(conversations) -> list[float]) replaces the trained model in tests;
    the checkpoint checks still run.
    """
    cfg, paths = P.evaluate, P.paths
    model_dir = require_model(Path(paths.models) / variant, variant)
    train_metrics_path = model_dir / "train_metrics.json"
    train_ids = read_conversation_ids(Path(paths.seeds) / SEED_FILES["train"])

    # Load every held-out input and check it against the training seeds before scoring anything.
    pairs = []
    for name in ("d_eval", "music_eval"):
        src = Path(paths.pairs) / name
        loaded = read_pairs(src)
        check_disjoint(((i, p.meta.get("conversation_id")) for i, p in enumerate(loaded)), train_ids, source=str(src))
        pairs += loaded
    conv_path = Path(paths.seeds) / SEED_FILES["eval_conversations"]
    conversations = load_eval_conversations(conv_path, limit=cfg.sensitivity_conversations)
    check_disjoint(((i, c["conversation_id"]) for i, c in enumerate(conversations)), train_ids, source=str(conv_path))

    if scorer is None:
        scorer = RewardScorer(str(model_dir), batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype)
    start = time.perf_counter()
    metrics: dict = {"variant": variant, "model_dir": str(model_dir)}
    metrics["pairwise"] = pairwise_accuracy(scorer, pairs)
    metrics["sensitivity"] = sensitivity_accuracy(
        scorer, conversations, max_distance=cfg.sensitivity_max_distance, seed=cfg.seed
    )
    if cfg.rewardbench_path or cfg.rewardbench:
        metrics["rewardbench"] = score_rewardbench(
            scorer, load_rewardbench_pairs(cfg.rewardbench_path), source=cfg.rewardbench_path or "hub"
        )
    else:
        metrics["rewardbench"] = {
            "skipped": "evaluate.rewardbench is false and no rewardbench_path (the hub is unreachable offline)"
        }
    metrics["local"] = local_set_accuracy(scorer, cfg.local_sets, limit=cfg.local_set_limit)
    metrics["train"] = {k: v for k, v in _read_json(train_metrics_path).items() if isinstance(v, (int, float))}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_json(Path(paths.metrics) / f"{variant}.json", metrics)
    return metrics


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}

