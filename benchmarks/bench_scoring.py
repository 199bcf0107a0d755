"""Reward-model scoring throughput: RewardScorer (length-sorted batches, inference_mode) against
scoring one conversation at a time (plain forward call per conversation), same model and data.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_scoring.py [--model DIR] [--n 64] [--layers 12] [--smoke]

Without --model it uses outputs/models/baseline when present, else builds the embedded SmolLM2-135M
as an AutoModelForSequenceClassification (random score head: fine for throughput) in a temp folder,
cut to --layers decoder layers like the training default. Conversations: HH-RLHF multi-turn
transcripts from ../shared/data when present, else synthetic ones. One run each; prints the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_embedded_rm(target: Path, layers: int | None, backbone: str | None = None) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from music.config import EMBEDDED_MODEL
    from music.models import load_tokenizer, resolve_model_path

    backbone = backbone or EMBEDDED_MODEL
    tok = load_tokenizer(backbone, padding_side="right")
    torch.manual_seed(0)
    kw = {"num_hidden_layers": layers} if layers else {}
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(backbone), num_labels=1, **kw)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def conversations(n: int, seed: int = 0) -> tuple[list[list[dict]], str]:
    data = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-first2000.jsonl.gz"
    if data.exists():
        from music.sources import load_hh

        pairs = load_hh(str(data), limit=4 * n, skipped=[])  # a few HH records have empty turns
        convs = [c for p in pairs for c in (p.chosen, p.rejected)]
        return random.Random(seed).sample(convs, n), f"HH-RLHF transcripts ({data.name})"
    rng = random.Random(seed)
    words = "the a reward model reads every turn of this conversation and scores it".split()
    convs = []
    for _ in range(n):
        msgs = []
        for _ in range(rng.randint(1, 4)):
            msgs += [
                {"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(5, 40)))},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(5, 80)))},
            ]
        convs.append(msgs)
    return convs, "synthetic conversations"


def one_at_a_time(scorer, convs) -> list[float]:
    """The naive loop: render, forward (autograd on, as a plain model call), read the score."""
    import torch

    from music.rm.data import fit_conversation

    out = []
    for i, conv in enumerate(convs):
        ids = fit_conversation(
            scorer.tokenizer, conv, scorer.max_length, source="bench", record=i, field_name="messages"
        ).ids
        x = torch.tensor([ids])
        out.append(float(scorer.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, 0]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="float32", help="both paths use it (bfloat16 is fast on CPUs with AMX)")
    ap.add_argument(
        "--backbone",
        default=None,
        help="causal LM the RM is built from without --model (default: the embedded SmolLM2-135M-Instruct)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: 4 conversations, 1 layer, 128 tokens (tests/test_benchmarks.py)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.layers, args.batch_size, args.max_length = 4, 1, 2, 128

    import torch

    from music.rm.score import RewardScorer

    with tempfile.TemporaryDirectory() as tmp:
        trained = REPO / "outputs/models/baseline/seed0"  # train.seeds: one model per seed (music.store.seed_dir)
        model_dir = args.model or (str(trained) if (trained / "config.json").exists() and not args.backbone else None)
        if model_dir is None:
            model_dir = str(build_embedded_rm(Path(tmp) / "rm", args.layers, args.backbone))
            label = f"{args.backbone or 'embedded SmolLM2-135M'}, {args.layers} layers, random score head"
        else:
            label = model_dir
        scorer = RewardScorer(
            model_dir, batch_size=args.batch_size, max_length=args.max_length, device="cpu", dtype=args.dtype
        )
        convs, data_label = conversations(args.n)
        scorer.score(convs[:2])  # warm-up (first-call allocations), same for both paths
        t0 = time.perf_counter()
        batched = scorer.score(convs)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = one_at_a_time(scorer, convs)
        t_single = time.perf_counter() - t0
    lengths = sorted(len(scorer.tokenizer.apply_chat_template(c, tokenize=True)["input_ids"]) for c in convs)
    diff = max(abs(a - b) for a, b in zip(batched, single))
    print(
        f"model: {label}; data: {args.n} {data_label}; "
        f"tokens min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}"
    )
    print(
        f"threads: {torch.get_num_threads()}; dtype {args.dtype}; "
        f"batch size {args.batch_size}; max_length {args.max_length}"
    )
    print(f"RewardScorer (sorted batches, inference_mode): {t_batched:.2f} s = {args.n / t_batched:.1f} conv/s")
    print(f"one at a time (plain forward):                {t_single:.2f} s = {args.n / t_single:.1f} conv/s")
    print(f"speed-up: {t_single / t_batched:.2f}x; max |score difference| {diff:.2e}")
    return {"batched_s": t_batched, "single_s": t_single, "speedup": t_single / t_batched, "max_diff": diff}


if __name__ == "__main__":
    main()
