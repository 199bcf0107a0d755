"""Study `contrast_methods`: which way of making the modified request gives near misses, on the same seeds.

MUSIC's rejected reply must answer a request *close to* the person's but asking for something else. Each method
in `study.contrast_methods` (music.stages.contrast: "resample", "retrieve", ...) makes the MUSIC candidates of
the simulated conversations the simulate stage wrote (outputs/conversations: the same seeds and chosen branches
for every method), and the contrast stage's filters keep what they keep. Per method and split:
- candidates, pairs kept and kept per seed;
- the near-miss share: kept pairs whose modified request lies inside `study.near_miss_window` of the original
  (cosine, the contrast encoder; the window read from hand-written near misses: docs/decisions.md);
- the median similarity, the drops by reason, the wall time and the tokens the models processed (0 when every
  reply came from this study's response cache: a rerun costs nothing, its wall time says so).

"retrieve" takes the window as its contrast.request_similarity, the others none. Nothing is trained or
scored, and no held-out item decides anything: the criterion is the pairs themselves. `study.sample_pairs` kept
pairs per method, drawn at random with `study.seed` (not nearest first), are written for reading side by side.
Written to {out}/results.json, results.csv and sample_pairs.json (in git; `dvc repro studies/dvc.yaml`). Replies
are cached in {paths.cache}/studies/contrast_methods/{method} (not tracked).

    python -m music.studies.contrast_methods [--params params.yaml] [--out studies/contrast_methods]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from music.chat import make_chat
from music.chat.base import TokenMeter
from music.config import Params, load_params
from music.files import atomic_path, write_json
from music.models.encoder import shared_encoder
from music.pairs.relevance import Encoder
from music.stages.contrast import candidates_to_records, retrieval_pool, split_candidates

log = logging.getLogger(__name__)

OUT = Path("studies") / "contrast_methods"
SPLITS = ("train", "eval")


def method_config(params: Params, method: str):
    """params.contrast with `method`, each method with its own window whatever params.yaml's default method is:
    "retrieve" takes its request from study.near_miss_window; the others have none (the 135M user model's
    rewrites rarely fall inside one: docs/decisions.md). So neither contrast.method nor
    contrast.request_similarity changes what the study compares (studies/dvc.yaml does not depend on them)."""
    band = list(params.study.near_miss_window) if method == "retrieve" else None
    cfg = dataclasses.replace(params.contrast, method=method, request_similarity=band)
    cfg.validate()
    return cfg


def near_miss_share(records: Sequence[dict], window: Sequence[float]) -> float | None:
    """Share of pairs whose modified request's similarity to the original lies in [lo, hi] (None: no pair)."""
    sims = [(r.get("relevance") or {}).get("request_similarity") for r in records]
    lo, hi = window
    return round(sum(s is not None and lo <= s <= hi for s in sims) / len(sims), 4) if sims else None


def divergence_row(record: dict) -> dict:
    """The two requests and the two replies at the divergence of a kept pair, for reading."""
    at = [i for i, m in enumerate(record["chosen"]) if m["role"] == "user"][record["divergence_turn"] - 1]
    return {
        "pair_id": record["pair_id"],
        "original request": record["original_request"],
        "modified request": record["modified_request"],
        "similarity": (record.get("relevance") or {}).get("request_similarity"),
        "chosen reply": record["chosen"][at + 1]["content"],
        "rejected reply": record["rejected"][at + 1]["content"],
        "modified request from": record["models"].get("contrast"),
    }


def run_method(
    params: Params, method: str, *, encoder: Encoder, backends=None, splits: Sequence[str] = SPLITS
) -> tuple[list[dict], list[dict]]:
    """(one summary row per split, every kept pair record) of one method on the simulated conversations.
    `backends` (user, assistant) replace the configured models (tests)."""
    cfg = method_config(params, method)
    if backends is None:
        cache = Path(params.paths.cache) / "studies" / "contrast_methods" / method
        backends = (
            make_chat(params.simulate.user, cache, role="simulate.user"),
            make_chat(params.simulate.assistant, cache, role="simulate.assistant"),
        )
    user, assistant = backends
    pool = retrieval_pool(params) if method == "retrieve" else None
    window = params.study.near_miss_window
    rows, kept_all = [], []
    for split in splits:
        meter = TokenMeter(user=user, assistant=assistant)
        start = time.perf_counter()
        cands, kept, stats = split_candidates(
            params, cfg, split, user=user, assistant=assistant, contrast=None, encoder=encoder, pool=pool
        )
        wall = time.perf_counter() - start
        records = candidates_to_records(kept)
        kept_all += records
        sims = [
            r["relevance"]["request_similarity"]
            for r in records
            if r["relevance"].get("request_similarity") is not None
        ]
        tokens = meter.report().get("total", {})
        rows.append(
            {
                "method": method,
                "split": split,
                "seeds": len(cands),
                "candidates": stats["candidates"],
                "kept": len(records),
                "kept_per_seed": round(len(records) / len(cands), 4) if cands else None,
                "near_miss_share": near_miss_share(records, window),
                "near_misses": sum(window[0] <= s <= window[1] for s in sims),
                "median_similarity": round(statistics.median(sims), 4) if sims else None,
                "removed": {k: v for k, v in stats["removed"].items() if v},
                "wall_s": round(wall, 1),
                "tokens": tokens,
                "pool": len(pool) if pool is not None else None,
                "request_similarity": cfg.request_similarity,
            }
        )
        log.info(
            "%s %s: %d of %d kept, near-miss share %s",
            method,
            split,
            len(records),
            len(cands),
            rows[-1]["near_miss_share"],
        )
    return rows, kept_all


def run(params: Params, out: str | Path = OUT, *, encoder: Encoder | None = None, backends=None) -> dict:
    encoder = encoder or shared_encoder(params.contrast.encoder)
    rows, samples = [], {}
    for method in params.study.contrast_methods:
        method_rows, kept = run_method(params, method, encoder=encoder, backends=backends)
        rows += method_rows
        pick = random.Random(params.study.seed).sample(range(len(kept)), min(params.study.sample_pairs, len(kept)))
        samples[method] = [divergence_row(kept[i]) for i in sorted(pick)]
    result = {"near_miss_window": list(params.study.near_miss_window), "rows": rows}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / "results.json", result)
        write_json(tmp / "sample_pairs.json", samples)
        with open(tmp / "results.csv", "w", newline="", encoding="utf-8") as fh:
            fields = [k for k in rows[0] if k not in ("removed", "tokens", "request_similarity")]
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(load_params(args.params), args.out)
    for r in result["rows"]:
        sys.stdout.write(
            f"{r['method']:9} {r['split']:5} kept {r['kept']:3} of {r['seeds']:3} seeds, near misses "
            f"{r['near_misses']:3} (share {r['near_miss_share']}), median similarity {r['median_similarity']}, "
            f"{r['wall_s']} s\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
