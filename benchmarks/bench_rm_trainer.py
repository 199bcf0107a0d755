"""This package's reward-model trainer vs TRL's RewardTrainer: same model, same pairs, same steps.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rm_trainer.py [--layers 4] [--pairs 32] [--epochs 2]
        [--data synthetic|hh] [--repeats 2] [--smoke]

Model: the embedded SmolLM2-135M-Instruct cut to --layers decoder layers, LoRA r16 (+ trained score head).
Data: --pairs synthetic multi-turn pairs of varied length (default), or HH-RLHF pairs from
../shared/data/hh-rlhf when present (--data hh). Prints real (non-pad) tokens per second for both,
their ratio and both final losses (best of --repeats alternating runs). TRL on CPU: use_cpu, bf16 off, gradient
checkpointing off (its defaults are bf16 and gradient checkpointing). Under ~5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from music.config import EMBEDDED_MODEL, TrainConfig  # noqa: E402
from music.schema import PreferencePair  # noqa: E402

WORDS = "the model answers each question with care and detail about cooking travel code music history".split()


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Multi-turn pairs, 1-3 turns, replies of 8-90 words: lengths from ~60 to ~600 tokens."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    pairs = []
    for i in range(n):
        turns = rng.randint(1, 3)
        history = []
        for _ in range(turns - 1):
            history += [
                {"role": "user", "content": say(rng.randint(5, 25))},
                {"role": "assistant", "content": say(rng.randint(8, 90))},
            ]
        q = {"role": "user", "content": say(rng.randint(5, 25))}
        good = {"role": "assistant", "content": "Sure. " + say(rng.randint(8, 90))}
        bad = {"role": "assistant", "content": "No. " + say(rng.randint(8, 90))}
        pairs.append(PreferencePair(history + [q, good], history + [q, bad], {"pair_id": f"s{i}", "kind": "d"}))
    return pairs


def hh_pairs(n: int) -> list[PreferencePair]:
    from music.sources.hh import load_hh
    from music.sources.records import Skipped

    folder = ROOT.parent / "shared" / "data" / "hh-rlhf"
    if not folder.exists():
        raise SystemExit(f"--data hh needs {folder} (absent); use --data synthetic")
    path = next(folder.glob("*.jsonl.gz"))
    skipped = Skipped(path)  # HH holds a few malformed records (line 87: an empty turn): skipped, up to the limit
    pairs = load_hh(path, limit=400, skipped=skipped)
    skipped.check()
    pairs = [p for p in pairs if len(p.chosen) >= 4]
    return pairs[:n]


def run_ours(cfg: TrainConfig, pairs) -> dict:
    from music.rm.train import run_training

    out = run_training(cfg, {"d": pairs}, progress=False, seed=0)
    m, t = out.metrics, out.timing
    return {
        "seconds": t["train_seconds"],
        "tokens_per_s": t["tokens_per_s"],
        "final_loss": m["last_step_loss"],
        "padding_share": m["padding_share"],
        "steps": m["steps"],
    }


def run_trl(cfg: TrainConfig, pairs, steps: int) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from music.rm.model import load_reward_model

    model, tok, _ = load_reward_model(cfg)  # same LoRA model, same seed, same pad token
    ds = Dataset.from_list([{"chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=cfg.batch_size,
            max_steps=steps,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=max(1, int(steps * cfg.warmup_ratio)),
            max_grad_norm=cfg.max_grad_norm,
            weight_decay=cfg.weight_decay,
            max_length=cfg.max_length,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        trainer.remove_callback(PrinterCallback)  # one log line per step otherwise
        seen = trainer.train_dataset
        n_tokens_epoch = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in seen)
        kept = len(seen)
        t0 = time.perf_counter()
        trainer.train()
        secs = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    epochs = steps * cfg.batch_size / kept
    return {
        "seconds": round(secs, 2),
        "tokens_per_s": round(n_tokens_epoch * epochs / secs, 1),
        "final_loss": losses[-1],
        "pairs_kept_by_trl": kept,
        "steps": steps,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--data", choices=["synthetic", "hh"], default="synthetic")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each trainer; the best counts")
    ap.add_argument("--model", default=EMBEDDED_MODEL, help="backbone (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: 1 layer, 4 pairs of <= 128 tokens, one run each (tests/test_benchmarks.py)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.layers, args.pairs, args.epochs, args.batch_size, args.max_length, args.repeats = 1, 4, 1, 2, 128, 1

    import torch

    pairs = synthetic_pairs(args.pairs) if args.data == "synthetic" else hh_pairs(args.pairs)
    steps = args.epochs * -(-len(pairs) // args.batch_size)
    cfg = TrainConfig(
        backbone=args.model,
        num_layers=args.layers,
        backend="transformers",
        lora=True,
        batch_size=args.batch_size,
        max_steps=steps,
        max_length=args.max_length,
        learning_rate=2e-4,
        warmup_ratio=0.1,
        seeds=[0],
        save_every=0,
    )
    print(
        f"torch threads {torch.get_num_threads()}; {len(pairs)} {args.data} pairs; "
        f"{args.model} first {args.layers} layers, LoRA r{cfg.lora_r}; {steps} steps of {args.batch_size} pairs"
    )
    best: dict[str, dict] = {}
    for rep in range(args.repeats):  # alternate, keep the best of each: other jobs on the machine add noise
        for name, run in (("ours", lambda: run_ours(cfg, pairs)), ("trl", lambda: run_trl(cfg, pairs, steps))):
            res = run()
            print(f"run {rep + 1} {name}: {res}", flush=True)
            if name not in best or res["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = res
    ours, trl = best["ours"], best["trl"]
    ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
    print(
        f"best of {args.repeats}: tokens/s ours {ours['tokens_per_s']} trl {trl['tokens_per_s']}, "
        f"ratio ours/trl = {ratio:.2f}; final loss ours {ours['final_loss']:.4f}, trl {trl['final_loss']:.4f}"
    )
    return {"ours": ours, "trl": trl, "ratio": ratio}


if __name__ == "__main__":
    main()
