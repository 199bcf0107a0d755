"""Frozen-layer reuse (train.reuse_frozen_layers, music.rm.frozen) on and off, side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rm_frozen_reuse.py [--layers 12] [--lora-layers 6]
        [--pairs 32] [--epochs 2] [--seeds 2] [--n 64] [--smoke]

Model: the embedded SmolLM2-135M-Instruct cut to --layers decoder layers, LoRA on the top --lora-layers
(the default RM: 12 and 6), transformers backend. Training: --seeds runs of --epochs over --pairs synthetic
multi-turn pairs, as train@variant does (one process, seeds in turn: the store serves every seed); steps/s
of the step loop, the first seed (cold store) apart. Scoring: two saved RMs (two seeds) score --n
conversations as evaluate does, with and without reuse; conversations/s. Prints the largest reward and
loss differences between the two paths and the seconds spent computing bottom states (what a store
shared across processes could still save). --smoke: a 2-layer, few-pair run that only checks it works.
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


def synthetic_conversation(rng: random.Random, turns: int) -> list[dict]:
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    msgs = []
    for _ in range(turns):
        msgs += [{"role": "user", "content": say(rng.randint(5, 25))},
                 {"role": "assistant", "content": say(rng.randint(8, 90))}]
    return msgs


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Multi-turn pairs (1-3 turns) that differ in the last reply: ~60 to ~600 tokens."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        history = synthetic_conversation(rng, rng.randint(1, 3))[:-1]
        good = {"role": "assistant", "content": "Sure. " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90)))}
        bad = {"role": "assistant", "content": "No. " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90)))}
        pairs.append(PreferencePair(history + [good], history + [bad], {"pair_id": f"s{i}", "kind": "d"}))
    return pairs


def train(cfg: TrainConfig, pairs, seeds: list[int], out: Path | None) -> dict:
    from music.rm.frozen import STORE
    from music.rm.train import run_training, save_reward_model

    STORE.clear()  # every measurement starts cold
    runs = []
    for s in seeds:
        o = run_training(cfg, {"d": pairs}, progress=False, seed=s)
        runs.append({"seconds": o.timing["train_seconds"], "steps": o.metrics["steps"], "curve": o.curve,
                     "reuse": o.timing["frozen_layers_reused"]})
        if out is not None:
            save_reward_model(o, out / f"seed{s}")
    return {"runs": runs, "steps_per_s": sum(r["steps"] for r in runs) / sum(r["seconds"] for r in runs)}


def score(dirs: list[Path], convs, reuse: bool, batch_size: int, max_length: int) -> dict:
    from music.rm.frozen import STORE
    from music.rm.score import RewardScorer

    STORE.clear()
    scores, seconds, bottom = [], [], 0.0
    for d in dirs:  # one RM at a time, as evaluate@variant scores its seeds
        scorer = RewardScorer(d, batch_size=batch_size, max_length=max_length, device="cpu", reuse_frozen=reuse)
        t0 = time.perf_counter()
        scores.append(scorer.score(convs))
        seconds.append(time.perf_counter() - t0)
        bottom += scorer.frozen.compute_seconds if scorer.frozen else 0.0
    return {"scores": scores, "seconds": seconds, "conv_per_s": len(dirs) * len(convs) / sum(seconds),
            "bottom_seconds": bottom}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--lora-layers", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--n", type=int, default=64, help="conversations scored by each RM")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.layers, args.lora_layers, args.pairs, args.epochs, args.seeds, args.n = 2, 1, 4, 1, 2, 4

    import torch

    pairs = synthetic_pairs(args.pairs)
    rng = random.Random(1)
    convs = [synthetic_conversation(rng, rng.randint(1, 4)) for _ in range(args.n)]
    seeds = list(range(args.seeds))
    base = dict(backbone=EMBEDDED_MODEL, num_layers=args.layers, backend="transformers", lora=True,
                lora_last_layers=args.lora_layers, batch_size=args.batch_size, epochs=args.epochs,
                max_length=args.max_length, save_every=0, seeds=seeds)
    print(f"torch threads {torch.get_num_threads()}; SmolLM2 first {args.layers} layers, LoRA on the top "
          f"{args.lora_layers}; {len(pairs)} synthetic pairs x {args.epochs} epochs x {len(seeds)} seeds; "
          f"batch {args.batch_size}; scoring {args.n} conversations x {len(seeds)} RMs", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for reuse in (False, True):
            out = Path(tmp) / ("on" if reuse else "off")
            res[reuse] = train(TrainConfig(**base, reuse_frozen_layers=reuse), pairs, seeds, out)
            print(f"train reuse={'on ' if reuse else 'off'}: {res[reuse]['steps_per_s']:.3f} steps/s "
                  f"(per seed: {', '.join('%.3f' % (r['steps'] / r['seconds']) for r in res[reuse]['runs'])}); "
                  f"store {res[reuse]['runs'][-1]['reuse']}", flush=True)
        dirs = [Path(tmp) / "off" / f"seed{s}" for s in seeds]
        sc = {}
        for reuse in (False, True):
            sc[reuse] = score(dirs, convs, reuse, batch_size=8, max_length=args.max_length)
            print(f"score reuse={'on ' if reuse else 'off'}: {sc[reuse]['conv_per_s']:.2f} conv/s "
                  f"(per RM: {', '.join(f'{args.n / s:.2f}' for s in sc[reuse]['seconds'])})", flush=True)

    loss_diff = max(abs(a["loss"] - b["loss"]) for ra, rb in zip(res[False]["runs"], res[True]["runs"])
                    for a, b in zip(ra["curve"], rb["curve"]))
    score_diff = max(abs(a - b) for sa, sb in zip(sc[False]["scores"], sc[True]["scores"]) for a, b in zip(sa, sb))
    bottom = sum(r["reuse"]["bottom_seconds"] for r in res[True]["runs"])
    train_on = sum(r["seconds"] for r in res[True]["runs"])
    print()
    print(f"{'':10s}{'reuse off':>14s}{'reuse on':>14s}{'speed-up':>10s}")
    print(f"{'train':10s}{res[False]['steps_per_s']:>10.3f} st/s{res[True]['steps_per_s']:>10.3f} st/s"
          f"{res[True]['steps_per_s'] / res[False]['steps_per_s']:>9.2f}x")
    print(f"{'score':10s}{sc[False]['conv_per_s']:>10.2f} c/s {sc[True]['conv_per_s']:>10.2f} c/s "
          f"{sc[True]['conv_per_s'] / sc[False]['conv_per_s']:>8.2f}x")
    print(f"max |loss difference| {loss_diff:.2e}; max |reward difference| {score_diff:.2e}")
    score_on = sum(sc[True]["seconds"])
    print(f"bottom states computed (reuse on; the most a store shared across processes could still save): "
          f"training {bottom:.1f} s of {train_on:.1f} s ({bottom / train_on:.0%}), "
          f"scoring {sc[True]['bottom_seconds']:.1f} s of {score_on:.1f} s ({sc[True]['bottom_seconds'] / score_on:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
