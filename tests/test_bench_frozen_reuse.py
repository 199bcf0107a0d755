"""benchmarks/bench_rm_frozen_reuse.py runs at its smoke size (a rename breaks this test, not a user) and
prints the side-by-side table with equal losses and rewards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rm_frozen_reuse.py"


@pytest.mark.slow
def test_frozen_reuse_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_rm_frozen_reuse", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "reuse off" in out and "warm/off" in out and "st/s" in out and "c/s" in out
    diffs = [line for line in out.splitlines() if line.startswith("max |loss difference|")][0]
    loss, reward, warm = (part.split()[-1] for part in diffs.split(";"))
    assert float(loss) <= 1e-5 and float(reward) <= 1e-5 and warm == "True"
