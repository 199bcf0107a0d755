"""Stage `heldout`: the held-out test items, built once from the seeds and the `heldout` params section.

Three tests are written to outputs/heldout/ (names: music.evaluate.heldout_items):
- `d_eval`: last-turn pairs on the eval seeds, the real next reply vs the embedded assistant's reply
  (music.pairs.last_turn; or a labelled set's `heldout.d_eval_split` rows with `contrast.d_source: KIND:LOCATION`);
- `quality_eval`: quality twins (music.pairs.quality_twins), from d_eval and MT-Bench;
- `swap_eval.jsonl`: whole held-out conversations with one reply swapped (music.evaluate.swap), materialised.

They live in a stage of their own so that two experiments on the contrast *method* (`dvc exp run -S
contrast.candidates=...`) are judged on the same items: this stage reads only outputs/seeds, data/mtbench,
and the params that define the items (HELDOUT_PARAMS, the `params:` of dvc.yaml's `heldout`), never the
method's keys. Seeds: the generation here derives from `heldout.seed` (contrast.seed draws the method's
divergence turns and requests; an experiment on it must not redraw the test). Held-out MUSIC pairs
(`music_eval`) stay in the contrast stage: they are the method's own output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from music.chat import make_chat
from music.chat.base import derive_seed
from music.config import ContrastConfig, Params
from music.evaluate.heldout_items import REPORT_FILE, SWAP_FILE, swap_record
from music.evaluate.swap import load_swap_conversations, swap_pairs
from music.failures import check_failed_share, failure_summary
from music.files import write_json, write_jsonl
from music.pairs.filters import REASONS, apply_filters, generation_error
from music.pairs.last_turn import d_candidates, d_records_from_source, parse_d_source
from music.pairs.quality_twins import mtbench_twins, sharegpt_twins
from music.schema import pair_record
from music.sources import load_mtbench_questions, load_mtbench_references
from music.stages import check_variant
from music.stages.seed import SEED_FILES, check_disjoint, read_conversation_ids, read_seeds, read_train_index
from music.store import pair_features, save_records

# contrast.* keys that shape D eval and the quality twins (also read by the contrast stage for d_train and the
# MUSIC pairs' filters: a change to one of them changes both, on purpose: it changes what a D item is).
HELDOUT_CONTRAST_KEYS = (
    "d_pairs",
    "d_source",
    "d_limit",
    "max_reply_chars",
    "drop_truncated",
    "max_failed_share",
    "max_malformed_share",
)
# Every param this stage reads: dvc.yaml lists exactly these (tests/test_heldout.py). Its own section whole; of
# the others, only the keys that make a held-out D pair the same kind of item as a training one.
HELDOUT_PARAMS = (
    "heldout",
    "simulate.assistant",
    "simulate.trim_truncated",
    *(f"contrast.{k}" for k in HELDOUT_CONTRAST_KEYS),
)


def heldout_contrast(cfg: ContrastConfig) -> ContrastConfig:
    """A ContrastConfig holding only HELDOUT_CONTRAST_KEYS (every other key at a value that never fires on a D
    pair): what the filters and the D loaders see here, so no method key can reach a held-out item."""
    return ContrastConfig(
        **{k: getattr(cfg, k) for k in HELDOUT_CONTRAST_KEYS}, min_contrast_margin=None, max_echo_similarity=None
    )


def d_eval_records(params: Params, assistant: Any, report: dict) -> list[dict]:
    """Held-out last-turn pairs D (what the contrast stage wrote as d_eval before this stage existed)."""
    cfg = heldout_contrast(params.contrast)
    if not cfg.d_pairs:
        return []
    seeds_dir = Path(params.paths.seeds)
    if parse_d_source(cfg.d_source) is not None:
        held_out = set().union(
            *(read_conversation_ids(seeds_dir / SEED_FILES[name]) for name in ("eval", "eval_conversations"))
        )
        report["d_source_malformed"] = malformed = {}
        records = d_records_from_source(cfg, "eval", held_out, malformed, eval_split=params.heldout.d_eval_split)
        report["splits"]["d_eval"] = {
            "candidates": len(records),
            "kept": len(records),
            "removed": {r: 0 for r in REASONS},
        }
        return records
    cands = d_candidates(
        read_seeds(seeds_dir / SEED_FILES["eval"]),
        assistant,
        split="eval",
        seed=derive_seed(params.heldout.seed, "d", "eval"),
        trim=params.simulate.trim_truncated,
    )
    kept, report["splits"]["d_eval"] = apply_filters(cands, cfg)
    failed = [
        ("generation_error", f"{c['fields']['pair_id']}: {error}")
        for c in cands
        if (error := generation_error(c, cfg)) is not None
    ]
    report["failures"]["d_eval"] = failures = failure_summary(len(cands), failed)
    check_failed_share(
        failures,
        cfg.max_failed_share,
        what="heldout: D eval candidates (seeds)",
        key="contrast.max_failed_share",
        advice="What to change: check the server named in the first error (simulate.assistant) and rerun "
        "(finished replies come from the response cache).",
    )
    return [_record(c) for c in kept]


def _record(cand: dict) -> dict:
    return pair_record(**cand["fields"])


def quality_eval_records(params: Params, d_eval: Sequence[dict], assistant: Any) -> tuple[list[dict], dict]:
    """Held-out quality twins (music.pairs.quality_twins): ShareGPT from the eval D pairs, MT-Bench by generation."""
    cfg = heldout_contrast(params.contrast)
    records, counts = [], {}
    if cfg.d_pairs and parse_d_source(cfg.d_source) is None:
        records += sharegpt_twins(d_eval, read_seeds(Path(params.paths.seeds) / SEED_FILES["eval"]))
    if params.heldout.quality_mtbench:
        mt, counts = mtbench_twins(
            load_mtbench_questions(),
            load_mtbench_references(),
            assistant,
            seed=derive_seed(params.heldout.seed, "quality"),
            max_chars=params.heldout.quality_max_chars,
            trim=params.simulate.trim_truncated,
        )
        records += mt
    by_source: dict[str, int] = {}
    for r in records:
        key = f"{r['source']}_{'last' if r['turns_after_divergence'] == 0 else 'early'}"
        by_source[key] = by_source.get(key, 0) + 1
    return records, {
        "pairs": len(records),
        "by_source_and_position": dict(sorted(by_source.items())),
        "mtbench": counts,
    }


def swap_eval_records(params: Params) -> tuple[list[dict], dict]:
    """The swap test's items (music.evaluate.swap: loaded, checked against the training seeds, swapped), as records."""
    e, seeds_dir = params.heldout, Path(params.paths.seeds)
    conversations, path = load_swap_conversations(
        e.swap_source, seeds_dir / SEED_FILES["eval_conversations"], limit=e.swap_conversations
    )
    train = read_train_index(seeds_dir / SEED_FILES["train"])
    check_disjoint(
        ((c["conversation_id"], c["conversation_id"], c["messages"]) for c in conversations), train, source=str(path)
    )
    pairs, counts = swap_pairs(
        conversations, max_distance=e.swap_max_distance, seed=e.seed, same_conversation=e.swap_same_conversation
    )
    records = [swap_record(p) for p in pairs]
    return records, {**counts, "conversations": len(conversations), "source": f"{e.swap_source}: {path}"}


def run(params: Params, *, variant: str | None = None, assistant: Any = None) -> dict:
    """Write outputs/heldout/{d_eval, quality_eval, swap_eval.jsonl, heldout_report.json}; returns the report.

    `assistant` replaces the configured simulate.assistant model (tests pass a fake); it is built only when
    something is generated (D from the seeds, MT-Bench twins).
    """
    check_variant("heldout", variant)
    cfg = heldout_contrast(params.contrast)
    needs_generation = (cfg.d_pairs and parse_d_source(cfg.d_source) is None) or params.heldout.quality_mtbench
    if assistant is None and needs_generation:
        assistant = make_chat(params.simulate.assistant, params.paths.cache, role="simulate.assistant")
    out = Path(params.paths.heldout)
    report: dict = {
        "reasons": list(REASONS),
        "splits": {},
        "failures": {},
        "d_source": cfg.d_source,
        "params": list(HELDOUT_PARAMS),
    }
    swap, report["swap"] = swap_eval_records(params)  # cheap checks first: a leak stops the stage before any generation
    d_eval = d_eval_records(params, assistant, report)
    quality, report["quality_eval"] = quality_eval_records(params, d_eval, assistant)
    save_records(d_eval, out / "d_eval", pair_features())
    save_records(quality, out / "quality_eval", pair_features())
    write_jsonl(out / SWAP_FILE, swap)
    report["counts"] = {"d_eval": len(d_eval), "quality_eval": len(quality), "swap_eval": len(swap)}
    write_json(out / REPORT_FILE, report)
    return report
