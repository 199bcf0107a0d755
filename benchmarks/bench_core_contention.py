"""Torch threads when another job holds a core (`simulate` ran 3x slower beside another job).

    .venv/bin/python benchmarks/bench_core_contention.py [--rounds 3] [--seeds 8] [--tokens 32] [--smoke]

Run it on an otherwise idle machine. The workload is the simulate stage's: music's in-process transformers
backend (response cache off) generates --tokens tokens for a batch of --seeds ShareGPT-like prompts. Four
settings, interleaved round by round so each sees the same machine: torch threads = every core or 1, each
alone and beside a competitor (a busy-loop process: another job holding one core), and beside it with the count
music.threads chooses (what generation and scoring do unless OMP_NUM_THREADS is set). Printed: seconds per
generate call per setting (median over rounds) and the ratios that answer the question: with a competitor,
all-cores threads / 1 thread (> 1: the OpenMP team waits for its preempted thread, so fewer threads are
faster on a shared machine), and what the competitor costs each thread count. Replies are compared too: the
thread count must not change them (greedy decoding here, so a difference would be arithmetic, not sampling).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Explain how a hash table handles collisions, with a short example in Python.",
    "I am planning a three-day trip to Lisbon in March. What should I see, and where should I stay?",
    "What is the difference between a list and a tuple in Python, and when should I use each?",
    "Write a polite email to my landlord asking to fix the heating, which has been broken for a week.",
    "How do vaccines train the immune system? Keep it simple, I am not a biologist.",
    "Give me a weekly running plan for a beginner who wants to run 5 km without stopping.",
    "Summarise the causes of the French Revolution in a few sentences.",
    "My sourdough bread is too dense. What could be going wrong?",
]


def _busy() -> None:  # another job holding one core
    while True:
        pass


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=8, help="prompts in the batch")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per reply")
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument(
        "--smoke", action="store_true", help="one round, 2 prompts, 2 tokens: checks it runs, measures nothing"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.seeds, args.tokens = 1, 2, 2

    import torch

    from music.chat import make_chat
    from music.config import EMBEDDED_MODEL, ChatModelConfig

    cores = os.cpu_count() or 1
    chat = make_chat(
        ChatModelConfig(
            model=args.model or EMBEDDED_MODEL, max_new_tokens=args.tokens, temperature=0.0, batch_size=args.seeds
        ),
        None,
    )
    convs = [[{"role": "user", "content": (PROMPTS * (args.seeds // len(PROMPTS) + 1))[i]}] for i in range(args.seeds)]
    chat.generate(convs[:1], max_new_tokens=2, seed=-1)  # warm-up: the first generate of a process is slow

    from music import threads

    # threads 0 = music.threads chooses (a fresh first look each time, the competitor already running)
    settings = [(t, c) for t in sorted({cores, 1}, reverse=True) for c in (False, True)] + [(0, False), (0, True)]
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    replies: dict[tuple[int, bool], list[str]] = {}
    for _ in range(args.rounds):
        for n_threads, competitor in settings:
            torch.set_num_threads(n_threads or cores)
            proc = mp.Process(target=_busy, daemon=True) if competitor else None
            if proc:
                proc.start()
                time.sleep(0.2)
            os.environ.pop(threads.ENV_SWITCH, None)
            adapt = n_threads == 0 and threads.adaptive()
            threads._IDLE = None  # music.threads looks afresh; a fixed count: switched off below
            os.environ[threads.ENV_SWITCH] = "1" if adapt else "0"
            try:
                t0 = time.perf_counter()
                out = chat.generate(convs, seed=0)
                times[n_threads, competitor].append(time.perf_counter() - t0)
            finally:
                if proc:
                    proc.terminate()
                    proc.join()
            replies.setdefault((n_threads, competitor), [r.text for r in out])
    torch.set_num_threads(cores)
    os.environ.pop(threads.ENV_SWITCH, None)

    med = {s: statistics.median(v) for s, v in times.items()}

    def name(s):
        return (f"{s[0]} thread{'s' if s[0] > 1 else ''}" if s[0] else "music.threads' choice") + (
            ", beside a busy core" if s[1] else ", alone"
        )

    first = next(iter(replies.values()))
    result = {
        "cores": cores,
        "rounds": args.rounds,
        "prompts": args.seeds,
        "tokens": args.tokens,
        "seconds": {name(s): round(v, 2) for s, v in med.items()},
        "same_replies_across_settings": all(r == first for r in replies.values()),
    }
    if cores > 1:
        result["ratios"] = {
            f"beside a busy core: {cores} threads / 1 thread": round(med[cores, True] / med[1, True], 2),
            f"{cores} threads: beside a busy core / alone": round(med[cores, True] / med[cores, False], 2),
            "1 thread: beside a busy core / alone": round(med[1, True] / med[1, False], 2),
            f"beside a busy core: music.threads' choice / {cores} threads": round(med[0, True] / med[cores, True], 2),
            f"alone: music.threads' choice / {cores} threads": round(med[0, False] / med[cores, False], 2),
            f"alone: {cores} threads / 1 thread": round(med[cores, False] / med[1, False], 2),
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
