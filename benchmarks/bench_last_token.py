"""Scoring with the top layer at the last token only (music.rm.last_token) against the full top layer, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_last_token.py [--n 96] [--rounds 3] [--smoke]

The default RM's shape: the embedded SmolLM2-135M cut to 12 layers, LoRA on the top one (random adapter and head:
fine for throughput), its 11 bottom layers' states computed once and kept (as evaluate@* reuses them across its
12 RMs), so each round times only what every RM runs: the full top layer, norm and head over every token
(`FrozenBottom.scores`) against the last-token path (`FrozenBottom.last_token_scores`). The two alternate
within each round, so both see the same load; prints per-path conversations/s, the ratio and the largest
reward difference. Conversations: synthetic multi-turn ones (bench_scoring.conversations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="conversations per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--backbone", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.rounds, args.layers = 8, 1, 2

    import torch
    from bench_scoring import conversations

    from music.config import EMBEDDED_MODEL, TrainConfig
    from music.rm.data import fit_conversation, pad_batch
    from music.rm.frozen import FrozenBottom, HiddenStore
    from music.rm.last_token import supports_last_token
    from music.rm.model import load_reward_model

    cfg = TrainConfig(
        backbone=args.backbone or EMBEDDED_MODEL, num_layers=args.layers, lora_last_layers=1, max_length=args.max_length
    )
    model, tok, _ = load_reward_model(cfg, device="cpu", seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.05)
    model.eval()
    n_frozen = args.layers - 1
    assert supports_last_token(model, n_frozen)
    convs, source = conversations(args.n)
    ids = sorted(
        (
            fit_conversation(tok, c, args.max_length, source="bench", record=i, field_name="m").ids
            for i, c in enumerate(convs)
        ),
        key=len,
    )
    fb = FrozenBottom(model, n_frozen, HiddenStore())
    batches = [ids[s : s + 8] for s in range(0, len(ids), 8)]
    with torch.inference_mode():
        for b in batches:  # the bottom states once, outside the timing (evaluate reuses them across 12 RMs)
            fb.batch_states(b, max(map(len, b)))
    seconds = {"full": 0.0, "last_token": 0.0}
    scores = {"full": [], "last_token": []}
    for r in range(args.rounds):
        for path in ("full", "last_token") if r % 2 == 0 else ("last_token", "full"):
            run = fb.scores if path == "full" else fb.last_token_scores
            out = []
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    x, m = pad_batch(b, tok.pad_token_id)
                    out += run(b, x, m).tolist()
            seconds[path] += time.perf_counter() - t0
            scores[path] = out
    rate = {k: args.n * args.rounds / v for k, v in seconds.items()}
    diff = max(abs(a - b) for a, b in zip(scores["full"], scores["last_token"]))
    tokens = sum(map(len, ids)) / len(ids)
    print(
        f"torch threads {torch.get_num_threads()}; {args.layers} layers, top 1 scored; {args.n} conversations "
        f"({source}, {tokens:.0f} tokens on average) x {args.rounds} rounds, batches of 8"
    )
    print(f"top layer in full:        {rate['full']:8.1f} conversations/s")
    print(f"top layer at last token:  {rate['last_token']:8.1f} conversations/s")
    print(f"ratio {rate['last_token'] / rate['full']:.2f}x; max |reward difference| {diff:.2e}")
    return {"rate": rate, "ratio": rate["last_token"] / rate["full"], "max_diff": diff}


if __name__ == "__main__":
    main()
