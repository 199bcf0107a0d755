"""Benchmarks must not rot: each one in benchmarks/ runs at a smoke size here, so a renamed
config key or function breaks a test, not a user. benchmarks/gpu_check_unsloth.py needs a CUDA GPU and
Unsloth and is checked where one is present (not here).

Each benchmark is run in-process through its main(argv) with --smoke: on the tiny 2-layer test backbone
(seconds), and once more on the embedded SmolLM2-135M-Instruct (marked slow: it loads the real model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py"))


def load_bench(name: str):
    path = REPO / "benchmarks" / name
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_benchmark_has_a_smoke_test():
    # bench_rm_frozen_reuse.py's smoke run is tests/test_bench_frozen_reuse.py
    assert BENCHMARKS == [
        "bench_core_contention.py",
        "bench_last_token.py",
        "bench_rm_frozen_reuse.py",
        "bench_rm_trainer.py",
        "bench_scoring.py",
        "bench_simulation.py",
    ], "a new benchmark needs a smoke run in tests/test_benchmarks.py"
    for name in BENCHMARKS:
        assert "--smoke" in (REPO / "benchmarks" / name).read_text(encoding="utf-8"), name


def _rm_trainer(model_args: list[str]):
    out = load_bench("bench_rm_trainer.py").main(["--smoke", *model_args])
    assert out["ours"]["steps"] == out["trl"]["steps"] >= 1
    assert out["ours"]["tokens_per_s"] > 0 and out["trl"]["tokens_per_s"] > 0


def _scoring(model_args: list[str]):
    out = load_bench("bench_scoring.py").main(["--smoke", *model_args])
    assert out["max_diff"] < 1e-3 and out["batched_s"] > 0  # both paths score the same conversations alike


def _simulation(model_args: list[str], tmp_path: Path):
    out = load_bench("bench_simulation.py").main(
        ["--smoke", "--seeds-file", str(tmp_path / "absent.jsonl"), "--json", str(tmp_path / "sim.json"), *model_args]
    )
    assert out["today"]["generated_tokens"] > 0 and out["reuse"]["generated_tokens"] > 0
    assert out["identical_share"] > 0.5  # the reusing path reproduces today's replies (float rounding aside)
    assert (tmp_path / "sim.json").is_file()
    long = load_bench("bench_simulation.py").main(
        ["--smoke", "--case", "long-context", "--sharegpt", str(tmp_path / "absent.jsonl"), *model_args]
    )
    assert [r["turn"] for r in long["per_turn"]] == [1, 2]  # per simulated turn, both paths side by side
    assert all(r["before_seconds"] > 0 and r["after_seconds"] > 0 for r in long["per_turn"])
    assert long["identical_share"] == 1.0  # the decoding fix changes no reply


def _contention(model_args: list[str]):
    out = load_bench("bench_core_contention.py").main(["--smoke", *model_args])
    assert all(v > 0 for v in out["seconds"].values()) and len(out["seconds"]) == (6 if out["cores"] > 1 else 4)
    assert out["same_replies_across_settings"]  # greedy replies: the thread count must not change them


def test_bench_core_contention_smoke(tiny_backbone):
    _contention(["--model", tiny_backbone])


def test_bench_rm_trainer_smoke(tiny_backbone):
    _rm_trainer(["--model", tiny_backbone])


def test_bench_last_token_smoke(tiny_backbone):
    out = load_bench("bench_last_token.py").main(["--smoke", "--backbone", tiny_backbone])
    assert out["max_diff"] <= 1e-5 and out["rate"]["last_token"] > 0 and out["rate"]["full"] > 0


def test_bench_scoring_smoke(tiny_backbone):
    _scoring(["--backbone", tiny_backbone])


def test_bench_simulation_smoke(tiny_backbone, tmp_path):
    _simulation(["--model", tiny_backbone], tmp_path)


@pytest.mark.slow
def test_bench_rm_trainer_smoke_embedded():
    _rm_trainer([])


@pytest.mark.slow
def test_bench_scoring_smoke_embedded():
    _scoring([])


@pytest.mark.slow
def test_bench_simulation_smoke_embedded(tmp_path):
    _simulation([], tmp_path)
