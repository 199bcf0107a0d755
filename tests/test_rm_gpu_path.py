"""The GPU path's housekeeping, checked on CPU: what the Unsloth loader is asked for (a fake `unsloth`
module records it; the real one is not installed here) and one model in memory at a time across seeds."""

from __future__ import annotations

import gc
import sys
import types
import weakref

import pytest
from helpers import tiny_cfg, toy_pairs  # noqa: F401

from music.config import Params


class _Stop(Exception):
    pass


def test_unsloth_loads_the_exact_model_id(tiny_backbone, monkeypatch):
    import music.rm.model as rm_model

    seen = {}

    def from_pretrained(**kw):
        seen.update(kw)
        raise _Stop

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = types.SimpleNamespace(from_pretrained=from_pretrained)
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setattr(rm_model, "training_dtype", lambda cfg, config, cuda: "bfloat16")  # no GPU to ask
    with pytest.raises(_Stop):
        rm_model._load_unsloth(tiny_cfg(tiny_backbone, max_length=2048), tiny_backbone, tok=None, seed=0)
    assert seen["model_name"] == tiny_backbone and seen["use_exact_model_name"] is True  # no mirror swap
    assert seen["num_labels"] == 1 and seen["load_in_4bit"] is False and seen["full_finetuning"] is False
    assert seen["max_seq_length"] == 2048


@pytest.mark.slow
def test_each_seeds_model_is_freed_before_the_next_loads(tiny_backbone, tmp_path, monkeypatch):
    """A model held by a reference cycle (as Unsloth's are) must be gone before the next seed's model loads."""
    import torch

    import music.rm.train as rm_train
    import music.stages.train as train_stage

    P = Params()
    P.train = tiny_cfg(
        tiny_backbone, max_steps=1, seeds=[0, 1], variants={"baseline": ["d"]}
    )  # the pairs below are D only
    P.paths.models, P.paths.cache, P.paths.reports = str(tmp_path / "m"), str(tmp_path / "c"), str(tmp_path / "r")
    monkeypatch.setattr(train_stage, "load_variant_pairs", lambda *a, **k: {"d": toy_pairs(4)})
    real_load = rm_train.load_reward_model
    alive, at_load, emptied = [], [], []

    def load_with_cycle(*a, **k):
        at_load.append([r() is not None for r in alive])
        model, tok, info = real_load(*a, **k)
        model.__dict__["_cycle"] = model  # a reference cycle: only a collection frees it
        alive.append(weakref.ref(model))
        return model, tok, info

    monkeypatch.setattr(rm_train, "load_reward_model", load_with_cycle)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    gc.disable()  # only an explicit collection may free the cycle
    try:
        train_stage.run(P, variant="baseline", progress=False)
    finally:
        gc.enable()
    assert at_load == [[], [False]]  # seed 0's model was collected before seed 1's loaded
    assert len(emptied) == 2  # the CUDA cache is emptied after each seed
