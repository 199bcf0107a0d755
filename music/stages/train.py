"""Stage `train@{variant}`: one reward model per training seed, every arm matched in steps and pairs per step.

The trainer itself is music.rm.train (a library: pairs in, a model out); this module reads the stage's pairs,
matches the arms (music.rm.schedule) and writes each seed's model to {paths.models}/{variant}/seed{s}.

A kill does not cost the seeds that had finished: each is kept under {paths.cache}/rm_resume (keyed by its
training fingerprint) until every seed of the variant is saved, and a rerun restores them instead of training
them again (byte for byte); an unfinished seed resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from music.config import Params
from music.files import write_json
from music.rm.data import load_variant_pairs
from music.rm.frozen import use_disk_store
from music.rm.schedule import describe
from music.rm.train import drop_resume_folders, free_accelerator_memory, matched_arms, train_reward_model
from music.stages import check_variant
from music.store import seed_dir

log = logging.getLogger(__name__)


def run(params: Params, *, variant: str | None = None, progress: bool = True) -> list[dict]:
    """The train@{variant} stage: one model per seed in train.seeds; wall-clock times go to
    {paths.reports}/timings/train_{variant}.json (untracked). Returns each seed's metrics."""
    cfg = params.train
    check_variant("train", variant, cfg.variants)
    every_kind = load_variant_pairs(
        params.paths.pairs, sorted({k for ks in cfg.variants.values() for k in ks}), split="train"
    )
    pairs_by_kind = {k: every_kind[k] for k in cfg.variants[variant]}  # one read serves the variant and the matching
    matched = matched_arms(cfg, every_kind)
    log.info(describe(matched))
    if cfg.reuse_frozen_layers:
        use_disk_store(params.paths.cache)  # frozen-layer states shared with the other train@ and evaluate@ stages
    runs = []
    resume_dir = Path(params.paths.cache) / "rm_resume"
    for s in cfg.seeds:
        runs.append(
            train_reward_model(
                cfg,
                pairs_by_kind,
                seed_dir(params.paths.models, variant, s),
                resume_dir=resume_dir,
                variant=variant,
                progress=progress,
                seed=s,
                matched=matched,
                keep_finished=True,  # until every seed is saved: a rerun after a kill restores it
            )
        )
        free_accelerator_memory()  # one model on the GPU at a time
    restored = [r["seed"] for r in runs if r["timing"].get("restored")]
    if restored:
        log.info("seeds %s of %s restored from %s (finished before an interruption)", restored, variant, resume_dir)
    drop_resume_folders(resume_dir, variant)  # every seed is saved: finished copies and stale checkpoints go
    write_json(Path(params.paths.reports) / "timings" / f"train_{variant}.json", [r["timing"] for r in runs])
    return runs


def load_runs(params: Params, variant: str) -> list[dict] | None:
    """The saved train_metrics.json of every seed of a variant, or None when one is missing (train first)."""
    paths = [seed_dir(params.paths.models, variant, s) / "train_metrics.json" for s in params.train.seeds]
    if not all(p.is_file() for p in paths):
        return None
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]
