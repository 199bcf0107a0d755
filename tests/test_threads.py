"""Torch threads follow the idle cores for forward-only work (music.threads), and nothing they compute changes."""

from __future__ import annotations

import pytest
import torch

from music import threads


@pytest.fixture
def adapting(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV_SWITCH, raising=False)
    monkeypatch.setattr(threads, "_IDLE", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def fake_samples(monkeypatch, samples):
    """(wall s, machine busy CPU s, own CPU s) returned one after the other."""
    it = iter(samples)
    monkeypatch.setattr(threads, "_cpu_sample", lambda: next(it))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 1e9)  # every look is past CHECK_EVERY_S


def test_threads_drop_when_another_job_holds_a_core_and_come_back(adapting, monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    # start; 10 s with the machine 2 cores busy, 1 of them ours; then 10 s with only ours busy
    fake_samples(monkeypatch, [(0.0, 0.0, 0.0), (10.0, 20.0, 10.0), (20.0, 30.0, 20.0)])
    idle = threads.IdleCores(first_look_s=0)  # the first look
    assert idle.choose() == 1  # another job holds one of the two cores
    assert idle.choose() == 2  # it ended


def test_forward_threads_restores_the_count_and_respects_a_fixed_one(adapting, monkeypatch):
    class Busy:
        def choose(self):
            return 1

    monkeypatch.setattr(threads, "_IDLE", Busy())
    with threads.forward_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with threads.forward_threads() as n:
        assert n is None and torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(threads.ENV_SWITCH, "0")
    assert not threads.adaptive()


def test_forward_outputs_are_bitwise_the_same_at_any_thread_count(adapting, tiny_backbone):
    """Why adapting is safe for generation and scoring (and why training keeps its count: its gradients are
    not bitwise the same)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (4, 300), generator=g)
    out = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        with torch.inference_mode():
            out[n] = model(input_ids=ids).logits
        torch.manual_seed(0)
        with torch.inference_mode():
            out[f"gen{n}"] = model.generate(
                input_ids=ids[:, :50], max_new_tokens=8, do_sample=True, top_p=0.9, pad_token_id=0
            )
    assert torch.equal(out[1], out[2]) and torch.equal(out["gen1"], out["gen2"])


def test_generation_and_scoring_run_inside_forward_threads():
    """The two forward-only hot paths use it (a new path should too)."""
    from pathlib import Path

    root = Path(threads.__file__).parent
    assert (root / "chat" / "transformers_backend.py").read_text().count("with forward_threads()") == 2
    assert "with forward_threads()" in (root / "rm" / "score.py").read_text()
    assert "forward_threads" not in (root / "rm" / "train.py").read_text()  # training keeps its thread count
