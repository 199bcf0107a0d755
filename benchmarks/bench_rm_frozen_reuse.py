"""Frozen-layer reuse (train.reuse_frozen_layers, music.rm.frozen) on and off, side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rm_frozen_reuse.py [--layers 12] [--lora-layers 6]
        [--pairs 32] [--epochs 2] [--seeds 2] [--n 64] [--smoke]

Model: the embedded SmolLM2-135M-Instruct cut to --layers decoder layers, LoRA on the top --lora-layers
(the default RM: 12 and 6), transformers backend. Training: --seeds runs of --epochs over --pairs synthetic
multi-turn pairs, as train@variant does (one process, seeds in turn: the store serves every seed); steps/s
of the step loop, the first seed (cold store) apart. Scoring: two saved RMs (two seeds) score --n
conversations as evaluate does; conversations/s. Three modes: reuse off; on, in a new process (memory
empty, the files under {paths.cache}/hidden written); on with those files already there (a later stage:
train@music after train@baseline, evaluate@music after evaluate@baseline). Prints the largest reward and
loss differences against reuse off, whether warm files change anything (they must not), and the seconds
spent computing bottom states. --smoke: a 2-layer, few-pair run that only checks it works.
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
        msgs += [
            {"role": "user", "content": say(rng.randint(5, 25))},
            {"role": "assistant", "content": say(rng.randint(8, 90))},
        ]
    return msgs


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Multi-turn pairs (1-3 turns) that differ in the last reply: ~60 to ~600 tokens."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        history = synthetic_conversation(rng, rng.randint(1, 3))[:-1]
        good = {
            "role": "assistant",
            "content": "Sure. " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90))),
        }
        bad = {"role": "assistant", "content": "No. " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90)))}
        pairs.append(PreferencePair(history + [good], history + [bad], {"pair_id": f"s{i}", "kind": "d"}))
    return pairs


def train(cfg: TrainConfig, pairs, seeds: list[int], out: Path | None, folder: Path | None = None) -> dict:
    from music.rm.frozen import STORE
    from music.rm.train import run_training, save_reward_model

    STORE.clear()  # nothing in memory: a new process
    if folder is not None:
        STORE.use_folder(folder)  # the files under {paths.cache}/hidden, as the stages use them
    runs = []
    for s in seeds:
        o = run_training(cfg, {"d": pairs}, progress=False, seed=s)
        runs.append(
            {
                "seconds": o.timing["train_seconds"],
                "steps": o.metrics["steps"],
                "curve": o.curve,
                "reuse": o.timing["frozen_layers_reused"],
            }
        )
        if out is not None:
            save_reward_model(o, out / f"seed{s}")
    return {"runs": runs, "steps_per_s": sum(r["steps"] for r in runs) / sum(r["seconds"] for r in runs)}


def score(dirs: list[Path], convs, reuse: bool, batch_size: int, max_length: int, folder: Path | None = None) -> dict:
    from music.rm.frozen import STORE
    from music.rm.score import RewardScorer

    STORE.clear()
    if folder is not None:
        STORE.use_folder(folder)
    scores, seconds, bottom = [], [], 0.0
    for d in dirs:  # one RM at a time, as evaluate@variant scores its seeds
        scorer = RewardScorer(d, batch_size=batch_size, max_length=max_length, device="cpu", reuse_frozen=reuse)
        t0 = time.perf_counter()
        scores.append(scorer.score(convs))
        seconds.append(time.perf_counter() - t0)
        bottom += scorer.frozen.compute_seconds if scorer.frozen else 0.0
    return {
        "scores": scores,
        "seconds": seconds,
        "conv_per_s": len(dirs) * len(convs) / sum(seconds),
        "bottom_seconds": bottom,
    }


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
    base = dict(
        backbone=EMBEDDED_MODEL,
        num_layers=args.layers,
        backend="transformers",
        lora=True,
        lora_last_layers=args.lora_layers,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_length=args.max_length,
        save_every=0,
        seeds=seeds,
    )
    print(
        f"torch threads {torch.get_num_threads()}; SmolLM2 first {args.layers} layers, LoRA on the top "
        f"{args.lora_layers}; {len(pairs)} synthetic pairs x {args.epochs} epochs x {len(seeds)} seeds; "
        f"batch {args.batch_size}; scoring {args.n} conversations x {len(seeds)} RMs",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        res, files = {}, {"train": Path(tmp) / "hidden-train", "score": Path(tmp) / "hidden-score"}
        # off | on (a new process, files written) | warm (a later process: the files exist, e.g. train@music
        # after train@baseline on the same pairs, evaluate@music after evaluate@baseline)
        modes = {"off": False, "on": True, "warm": True}
        for mode, reuse in modes.items():
            out = Path(tmp) / mode if mode == "off" else None
            res[mode] = train(
                TrainConfig(**base, reuse_frozen_layers=reuse), pairs, seeds, out, files["train"] if reuse else None
            )
            print(
                f"train {mode:4s}: {res[mode]['steps_per_s']:.3f} steps/s "
                f"(per seed: {', '.join('%.3f' % (r['steps'] / r['seconds']) for r in res[mode]['runs'])}); "
                f"store {res[mode]['runs'][-1]['reuse']}",
                flush=True,
            )
        dirs = [Path(tmp) / "off" / f"seed{s}" for s in seeds]
        sc = {}
        for mode, reuse in modes.items():
            sc[mode] = score(
                dirs, convs, reuse, batch_size=8, max_length=args.max_length, folder=files["score"] if reuse else None
            )
            print(
                f"score {mode:4s}: {sc[mode]['conv_per_s']:.2f} conv/s "
                f"(per RM: {', '.join(f'{args.n / s:.2f}' for s in sc[mode]['seconds'])})",
                flush=True,
            )

    loss_diff = max(
        abs(a["loss"] - b["loss"])
        for m in ("on", "warm")
        for ra, rb in zip(res["off"]["runs"], res[m]["runs"])
        for a, b in zip(ra["curve"], rb["curve"])
    )
    score_diff = max(
        abs(a - b)
        for m in ("on", "warm")
        for sa, sb in zip(sc["off"]["scores"], sc[m]["scores"])
        for a, b in zip(sa, sb)
    )
    warm_same = [r["curve"] for r in res["warm"]["runs"]] == [r["curve"] for r in res["on"]["runs"]] and sc["warm"][
        "scores"
    ] == sc["on"]["scores"]
    bottom = sum(r["reuse"]["bottom_seconds"] for r in res["on"]["runs"])
    train_on, score_on = sum(r["seconds"] for r in res["on"]["runs"]), sum(sc["on"]["seconds"])
    print()
    print(f"{'':8s}{'reuse off':>14s}{'reuse on':>14s}{'files warm':>14s}{'on/off':>8s}{'warm/off':>9s}")
    print(
        f"{'train':8s}"
        + "".join(f"{res[m]['steps_per_s']:>9.3f} st/s" for m in modes)
        + f"{res['on']['steps_per_s'] / res['off']['steps_per_s']:>7.2f}x"
        f"{res['warm']['steps_per_s'] / res['off']['steps_per_s']:>8.2f}x"
    )
    print(
        f"{'score':8s}"
        + "".join(f"{sc[m]['conv_per_s']:>9.2f} c/s " for m in modes)
        + f"{sc['on']['conv_per_s'] / sc['off']['conv_per_s']:>7.2f}x"
        f"{sc['warm']['conv_per_s'] / sc['off']['conv_per_s']:>8.2f}x"
    )
    print(
        f"max |loss difference| {loss_diff:.2e}; max |reward difference| {score_diff:.2e}; "
        f"warm files give bitwise the same losses and rewards: {warm_same}"
    )
    print(
        f"bottom states computed with reuse on (what the files save a later stage): "
        f"training {bottom:.1f} s of {train_on:.1f} s ({bottom / train_on:.0%}), "
        f"scoring {sc['on']['bottom_seconds']:.1f} s of {score_on:.1f} s ({sc['on']['bottom_seconds'] / score_on:.0%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
