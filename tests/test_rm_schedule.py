"""Matched arms: every variant trains the same number of optimizer steps on the same
number of pairs per step; the smaller variant cycles through its data more often."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import tiny_cfg, toy_pairs  # noqa: F401

from music.config import Params, Paths
from music.rm.schedule import describe, full_batches, matched_steps
from music.rm.train import plan_batches
from music.stages.train import run as train_variant
from music.store import seed_dir


class _Encoded:
    def __init__(self, length: int):
        self.length = length


def test_one_step_count_from_the_largest_variant():
    cfg = tiny_cfg("x", max_steps=None, epochs=2, batch_size=4)
    m = matched_steps({"baseline": 48, "music": 72}, cfg)
    # Today's default data: 48 D pairs alone gave 24 steps, D + 24 MUSIC pairs 36; matched, both get 36.
    assert m["steps"] == 36 and m["pairs_per_step"] == 4 and m["reference_variant"] == "music"
    assert m["epochs_over_data"] == {"baseline": 3.0, "music": 2.0}
    assert "36 optimizer steps of 4 pairs" in describe(m)
    fixed = matched_steps({"baseline": 48, "music": 72}, tiny_cfg("x", max_steps=50, batch_size=4, grad_accum=2))
    assert fixed["steps"] == 50 and fixed["pairs_per_step"] == 8 and fixed["rule"] == "train.max_steps"


def test_every_micro_batch_is_full_and_each_epoch_sees_every_pair():
    lengths = [10 + (7 * i) % 50 for i in range(10)]  # 10 pairs, batches of 4: one short batch per epoch
    cfg = tiny_cfg("x", max_steps=None, epochs=3, batch_size=4, grad_accum=1)
    micro, steps = plan_batches([_Encoded(n) for n in lengths], cfg, seed=0, steps=20)
    assert steps == 20 and len(micro) == 20
    assert all(len(b) == 4 and len(set(b)) == 4 for b in micro)
    for e in range(5):  # 3 batches per epoch
        assert set().union(*map(set, micro[3 * e : 3 * e + 3])) == set(range(10))
    assert plan_batches([_Encoded(n) for n in lengths], cfg, seed=0, steps=20)[0] == micro  # deterministic
    # Fewer pairs than a batch: the pairs repeat, the batch is still full.
    assert full_batches([[0, 1]], [5, 6], 4, 0, 0) == [[0, 1, 0, 1]]


def _write_pairs(path: Path, pairs):
    from music.schema import pair_record
    from music.store import pair_features, save_records

    save_records([pair_record(chosen=p.chosen, rejected=p.rejected, **p.meta) for p in pairs], path, pair_features())


def test_train_variant_matches_the_arms_in_steps_and_pairs_per_step(tiny_backbone, tmp_path, monkeypatch):
    import music.rm.train as train_mod

    _write_pairs(tmp_path / "pairs" / "d_train", toy_pairs(6))
    _write_pairs(tmp_path / "pairs" / "music_train", toy_pairs(5, "music", turns=2))
    P = Params(
        paths=Paths(
            pairs=str(tmp_path / "pairs"),
            models=str(tmp_path / "models"),
            cache=str(tmp_path / "cache"),
            reports=str(tmp_path / "reports"),
        ),
        train=tiny_cfg(tiny_backbone, max_steps=None, epochs=2, batch_size=4, save_every=0),
    )
    seen: dict[str, list[int]] = {}
    real_collate = train_mod.collate_pairs

    def spy(batch, pad_id):
        seen.setdefault(current[0], []).append(len(batch))
        return real_collate(batch, pad_id)

    monkeypatch.setattr(train_mod, "collate_pairs", spy)
    current = [""]
    runs = {}
    for variant in ("baseline", "music"):
        current[0] = variant
        runs[variant] = train_variant(P, variant=variant, progress=False)[0]
    # baseline 6 pairs, music 6 + 5: 2 epochs of the larger set = 2 x 3 batches of 4 = 6 steps for both.
    assert runs["baseline"]["steps"] == runs["music"]["steps"] == 6
    assert seen["baseline"] == seen["music"] == [4] * 6
    saved = json.loads((seed_dir(P.paths.models, "baseline", 0) / "train_metrics.json").read_text())
    assert saved["matched_arms"]["steps"] == 6 and saved["pairs_per_step"] == 4
    # the default variants hold a control arm (D + the same MUSIC pairs, cut): it ties with music at 11 pairs and
    # the tie goes to the first name
    assert saved["matched_arms"]["pairs_per_variant"] == {"baseline": 6, "control": 11, "music": 11}
    assert saved["epochs_over_data"] == 4.0 and saved["matched_arms"]["reference_variant"] == "control"
