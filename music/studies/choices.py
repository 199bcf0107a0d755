"""Study `choices`: the training choices params.yaml records, rechecked on the development split.

Two defaults were first chosen by looking at the held-out items the headline reports (train.lora_last_layers,
train.head_init). Here each is rechecked where that is allowed: every alternative in `study.choices` changes one
train key from params.yaml ("lora_last_layers=2"), trains the baseline arm (the D pairs, on which the choice was
first measured) with the default's seeds and matched step count, and scores swap items built from the seed stage's
development conversations (music.stages.seed: conversations of neither split, so no held-out item and no
training conversation is read). Swapping needs no generation, so the study costs training and scoring only.

Per alternative and group (the headline's: `last` = the swapped reply is the last one, `early` = two or more
replies before the end, length-matched), the accuracy averaged over seeds and the difference alternative -
default, paired on the same items and seeds, with the two-level interval (music.evaluate.stats). Written to
{out}/results.json and {out}/results.csv (in git; studies/dvc.yaml declares the stage: `dvc repro
studies/dvc.yaml`). Models go to {paths.cache}/studies/choices (not tracked).

    python -m music.studies.choices [--params params.yaml] [--out studies/choices]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from music.config import Params, TrainConfig, load_params
from music.errors import DataError
from music.evaluate.items import Item
from music.evaluate.stats import strict_wins, two_level_bootstrap
from music.evaluate.swap import swap_pairs
from music.files import atomic_path, write_json
from music.stages.seed import SEED_FILES, read_conversations

log = logging.getLogger(__name__)

DEFAULT = "default"  # the alternative that changes nothing: params.yaml's train section as it is
GROUPS = ("last", "early")
N_BOOT = 4000
OUT = Path("studies") / "choices"


def parse_choice(text: str) -> tuple[str, Any]:
    """'lora_last_layers=2' -> ("lora_last_layers", 2): a TrainConfig key and a YAML value."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not sep or key not in names:
        raise DataError(
            "study.choices", text, "choices", f"expected KEY=VALUE with KEY one of train's keys {sorted(names)}"
        )
    return key, yaml.safe_load(value)


def alternatives(params: Params) -> dict[str, TrainConfig]:
    """{name: the train config it trains}: the default first, then one per study.choices entry."""
    out = {DEFAULT: params.train}
    for text in params.study.choices:
        key, value = parse_choice(text)
        if getattr(params.train, key) == value:
            raise DataError("study.choices", text, "choices", f"train.{key} is already {value!r}: nothing to compare")
        out[f"{key}={value}"] = dataclasses.replace(params.train, **{key: value})  # validated on construction
    return out


def dev_items(params: Params) -> list[Item]:
    """Swap items of the development conversations: chosen = the conversation, rejected = one reply swapped in
    from another development conversation (music.evaluate.swap, the held-out swap test's construction)."""
    path = Path(params.paths.seeds) / SEED_FILES["dev_conversations"]
    if not path.exists():
        raise DataError(path, "-", None, "file does not exist (rerun the seed stage: `dvc repro seed`)")
    convs = [{"conversation_id": c.conversation_id, "messages": c.messages} for c in read_conversations(path)]
    if len(convs) < 2:
        raise DataError(path, "-", None, f"{len(convs)} development conversations; raise seed.n_dev_conversations")
    pairs, _ = swap_pairs(convs, max_distance=params.heldout.swap_max_distance, seed=params.study.seed)
    return [
        Item(p.test, p.item_id, p.distance, p.intact, p.swapped, "sharegpt-dev", str(p.conversation_id)) for p in pairs
    ]


def train_and_score(params: Params, name: str, cfg: TrainConfig, items: Sequence[Item]) -> list[list[bool]]:
    """(seeds x items) correct of the baseline arm trained with `cfg`, one RM per train seed."""
    from music.rm.data import load_variant_pairs
    from music.rm.frozen import use_disk_store
    from music.rm.score import RewardScorer
    from music.rm.train import matched_arms, train_reward_model

    every_kind = load_variant_pairs(
        params.paths.pairs, sorted({k for ks in cfg.variants.values() for k in ks}), split="train"
    )
    matched = matched_arms(cfg, every_kind)  # the same step count as the default run's arms
    if cfg.reuse_frozen_layers:
        use_disk_store(params.paths.cache)
    rows = []
    for s in cfg.seeds:
        out = Path(params.paths.cache) / "studies" / "choices" / name.replace("=", "-") / f"seed{s}"
        kinds = {k: every_kind[k] for k in cfg.variants["baseline"]}
        train_reward_model(cfg, kinds, out, variant="baseline", progress=False, seed=s, matched=matched)
        e = params.evaluate
        scorer = RewardScorer(out, batch_size=e.batch_size, max_length=e.max_length, dtype=e.dtype)
        scores = scorer.score([it.chosen for it in items] + [it.rejected for it in items])
        rows.append(strict_wins(scores[: len(items)], scores[len(items) :]))
        log.info("choices %s seed %d: %.1f%% of %d dev items", name, s, 100 * sum(rows[-1]) / len(items), len(items))
    return rows


def summarise(correct: dict[str, list[list[bool]]], items: Sequence[Item], seed: int = 0) -> list[dict]:
    """One row per alternative and group: accuracy (mean over seeds) and alternative - default with its interval."""
    import numpy as np

    rows = []
    for group in GROUPS:
        cols = [i for i, it in enumerate(items) if it.group == group]
        clusters = [items[i].cluster_id for i in cols]
        base = np.asarray(correct[DEFAULT], dtype=float)[:, cols]
        for name, mat in correct.items():
            m = np.asarray(mat, dtype=float)[:, cols]
            acc = two_level_bootstrap([m], [1.0], clusters, n_boot=N_BOOT, seed=seed)
            diff = (
                two_level_bootstrap([m, base], [1.0, -1.0], clusters, n_boot=N_BOOT, seed=seed, paired_seeds=True)
                if name != DEFAULT
                else None
            )
            rows.append(
                {
                    "alternative": name,
                    "group": group,
                    "n_items": len(cols),
                    "n_clusters": acc["n_clusters"],
                    "accuracy": _pct(acc["diff"]),
                    "accuracy_low": _pct(acc["ci_low"]),
                    "accuracy_high": _pct(acc["ci_high"]),
                    "by_seed": [_pct(v) for v in m.mean(axis=1)] if cols else [],
                    "diff_vs_default": _pct(diff["diff"]) if diff else None,
                    "diff_low": _pct(diff["ci_low"]) if diff else None,
                    "diff_high": _pct(diff["ci_high"]) if diff else None,
                }
            )
    return rows


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * float(x), 2)


def verdict(row: dict) -> str:
    """How a difference reads: the default kept, the alternative better, or no difference the study can see."""
    if row["diff_vs_default"] is None:
        return "default"
    if row["diff_low"] > 0:
        return "alternative better"
    if row["diff_high"] < 0:
        return "default better"
    return "no difference this study can see"


def run(params: Params, out: str | Path = OUT) -> dict:
    items = dev_items(params)
    arms = alternatives(params)
    correct = {name: train_and_score(params, name, cfg, items) for name, cfg in arms.items()}
    rows = summarise(correct, items, seed=params.study.seed)
    result = {
        "split": "development (seed.n_dev_conversations: conversations of neither the training nor the held-out side)",
        "dev_conversations": len({it.cluster for it in items}),
        "seeds": list(params.train.seeds),
        "alternatives": {name: _changed(cfg, params.train) for name, cfg in arms.items()},
        "rows": [{**r, "verdict": verdict(r)} for r in rows],
    }
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / "results.json", result)
        with open(tmp / "results.csv", "w", newline="", encoding="utf-8") as fh:
            fields = [k for k in result["rows"][0] if k != "by_seed"]
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(result["rows"])
    return result


def _changed(cfg: TrainConfig, default: TrainConfig) -> dict:
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(load_params(args.params), args.out)
    for r in result["rows"]:
        diff = (
            ""
            if r["diff_vs_default"] is None
            else f"  {r['diff_vs_default']:+.1f} [{r['diff_low']:+.1f}, {r['diff_high']:+.1f}]"
        )
        line = f"{r['group']:6} {r['alternative']:24} {r['accuracy']:5.1f}% of {r['n_items']}{diff}  {r['verdict']}"
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
