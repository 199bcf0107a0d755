"""Matched training arms: every variant trains for the same number of optimizer steps on the same number
of pairs per step, so a difference between variants is not "more steps".

- Steps: `train.max_steps` when set; else one count for all variants, that of the variant with the most
  pairs at `train.epochs` (ceil(epochs * ceil(pairs / batch_size) / grad_accum)). A variant with fewer pairs
  cycles through its data more often (its `epochs_over_data` in the training metrics says how often).
- Pairs per step: every micro-batch is full (`batch_size` pairs); an epoch whose pairs do not divide into
  whole batches tops its one short batch up with other pairs of the same epoch, nearest in length
  (`full_batches`). So every step of every variant sees batch_size * grad_accum pairs.

No torch here: the plan (music.pipeline.plan) uses the same rule offline.
"""

from __future__ import annotations

import math
import random


def steps_for(pairs: int, epochs: float, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps for `pairs` pairs at `epochs` passes (at least 1)."""
    return max(1, math.ceil(epochs * math.ceil(pairs / batch_size) / grad_accum)) if pairs else 0


def matched_steps(pairs_per_variant: dict[str, int], cfg) -> dict:
    """The one step count every variant trains for, and how it was decided.

    `pairs_per_variant`: each variant's number of training pairs after mixing (music.rm.data.mix_pairs).
    Returns {"steps", "pairs_per_step", "rule", "reference_variant", "pairs_per_variant", "epochs_over_data"}.
    """
    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.max_steps:
        steps, rule, ref = int(cfg.max_steps), "train.max_steps", None
    else:
        ref = max(sorted(pairs_per_variant), key=lambda v: pairs_per_variant[v])  # ties: the first by name
        steps = steps_for(pairs_per_variant[ref], cfg.epochs, cfg.batch_size, cfg.grad_accum)
        rule = f"train.epochs ({cfg.epochs:g}) over the largest variant ({ref}, {pairs_per_variant[ref]} pairs)"
    passes = {v: (round(steps * per_step / n, 2) if n else None) for v, n in sorted(pairs_per_variant.items())}
    return {
        "steps": steps,
        "pairs_per_step": per_step,
        "rule": rule,
        "reference_variant": ref,
        "pairs_per_variant": dict(sorted(pairs_per_variant.items())),
        "epochs_over_data": passes,
    }


def describe(m: dict) -> str:
    """One line for notebook 04 and the logs."""
    passes = ", ".join(f"{v} {p}" for v, p in m["epochs_over_data"].items())
    return (
        f"matched arms: every variant trains {m['steps']} optimizer steps of {m['pairs_per_step']} pairs "
        f"(steps from {m['rule']}); passes over each variant's data: {passes}"
    )


def full_batches(batches: list[list[int]], lengths: list[int], batch_size: int, seed, epoch: int) -> list[list[int]]:
    """Top every short batch up to `batch_size` with other indices of the epoch, nearest in length first
    (deterministic in (seed, epoch)); with fewer pairs than a batch, indices repeat."""
    everyone = sorted({i for b in batches for i in b})
    out = []
    for b in batches:
        if len(b) >= batch_size or not everyone:
            out.append(list(b))
            continue
        rng = random.Random(f"rm-topup-{seed}-{epoch}")
        others = [i for i in everyone if i not in b]
        rng.shuffle(others)
        target = sorted(lengths[i] for i in b)[len(b) // 2]
        others.sort(key=lambda i: abs(lengths[i] - target))  # stable: ties keep the shuffled order
        fill = list(b)
        pool = list(others)
        while len(fill) < batch_size:
            if not pool:  # fewer pairs than a batch: repeat them
                pool = list(everyone)
            fill.append(pool.pop(0))
        out.append(fill)
    return out
