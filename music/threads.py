"""Torch threads that follow the cores other jobs leave idle, for forward-only work (generation, scoring).

An OpenMP team waits for its slowest thread at every parallel region. When another job holds one of the
cores, the preempted thread makes the whole team wait: measured side by side with
benchmarks/bench_core_contention.py (2 cores, the embedded model generating 32 tokens for 8 prompts, one
busy-loop job beside it): 2 threads 52.9 s, 1 thread 10.1 s; alone, 2 threads are 1.8x faster than 1 (4.3 s).
That made `simulate` 3x slower beside another job. So before each batch of forward-only work,
`forward_threads()` sets torch's thread count to the cores the other processes left idle since the last
look (from /proc/stat, this process's own CPU time subtracted), and restores the count afterwards.

Only forward passes: their outputs are bitwise the same at any thread count (tests/test_threads.py), so a
run's results do not depend on the machine's load. Training keeps its thread count: gradients differ in the
last bits between thread counts. Set OMP_NUM_THREADS (or MUSIC_ADAPT_THREADS=0) to fix the count yourself.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

CHECK_EVERY_S = 2.0  # look at /proc/stat at most this often (a batch takes seconds)
FIRST_LOOK_S = 0.25  # the first look of a process: this long, idle, so the first batch has a measurement too
ENV_SWITCH = "MUSIC_ADAPT_THREADS"


def adaptive() -> bool:
    """False when the user fixed the thread count (OMP_NUM_THREADS) or switched this off, or without /proc/stat."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return os.path.exists("/proc/stat")


def _cpu_sample() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process) since boot / process start."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    t = os.times()
    return time.monotonic(), (sum(fields) - idle) / hz, t.user + t.system


class IdleCores:
    """Cores other processes kept busy between two looks (a rate: busy CPU seconds per wall second)."""

    def __init__(self, first_look_s: float = FIRST_LOOK_S) -> None:
        self.cores = os.cpu_count() or 1
        self._last = _cpu_sample()
        self.threads = None  # the last count chosen
        if first_look_s > 0:
            time.sleep(first_look_s)
            self.threads = self._idle(self.others_busy())

    def others_busy(self) -> float | None:
        now = _cpu_sample()
        wall = now[0] - self._last[0]
        if wall < 1e-3:
            return None
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        return max(0.0, others)

    def choose(self) -> int:
        """Threads for the next batch: the cores left idle (at least 1); unchanged between looks."""
        if self.threads is not None and time.monotonic() - self._last[0] < CHECK_EVERY_S:
            return self.threads
        busy = self.others_busy()
        if busy is not None or self.threads is None:
            self.threads = self._idle(busy)
        return self.threads

    def _idle(self, busy: float | None) -> int:
        return max(1, self.cores - round(busy or 0.0))


_IDLE: IdleCores | None = None


@contextmanager
def forward_threads() -> Iterator[int | None]:
    """Within: torch uses the cores other jobs leave idle (forward-only work); restored on exit. Yields the count
    (None: not adapting)."""
    global _IDLE
    if not adaptive():
        yield None
        return
    import torch

    if _IDLE is None:
        _IDLE = IdleCores()
    before = torch.get_num_threads()
    n = min(_IDLE.choose(), before)  # never more threads than the process was started with
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
