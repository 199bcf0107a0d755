"""Accuracies and confidence intervals (Wilson score interval; seeded percentile bootstrap).

Every bootstrap in the package draws its resamples here, with resample_indices (or resample_counts, the same
draws counted): bootstrap_interval, paired_difference and two_level_bootstrap below, the RewardBench section
intervals (music.evaluate.compare) and the Best-of-N win-rate intervals (music.stages.best_of_n).
"""

from __future__ import annotations

import math
import random
from typing import Sequence


def strict_wins(chosen: Sequence[float], rejected: Sequence[float]) -> list[bool]:
    """chosen > rejected, strictly: a tie is wrong (RewardBench's rule)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores but {len(rejected)} rejected scores")
    return [c > r for c, r in zip(chosen, rejected)]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials; (nan, nan) when n == 0.

    Chosen over the normal interval because our n is small (8 prompts, tens of pairs) and rates sit
    near 0 or 1, where the normal interval leaves [0, 1] or collapses to zero width.
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp so the interval always holds p (rounding left 1.0 just outside it at k == n)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def resample_indices(rng, n: int, n_boot: int):
    """n_boot bootstrap resamples of range(n): each n indices drawn uniformly with replacement.

    rng is a numpy Generator (np.random.default_rng(seed)): a (n_boot x n) integer array, from one
    rng.integers call. bootstrap_interval's intervals come from the standard library's stream instead: with a
    random.Random, the resamples are lists drawn one index at a time (rng.choice), lazily, row after row.
    Callers that draw several times from one rng keep their own order of calls (the intervals depend on it).
    """
    if isinstance(rng, random.Random):
        indices = range(n)
        return ([rng.choice(indices) for _ in indices] for _ in range(n_boot))
    return rng.integers(0, n, size=(n_boot, n))


def resample_counts(rng, n: int, n_boot: int):
    """(n_boot x n) floats: how often each of range(n) is drawn in each resample of resample_indices (numpy rng)."""
    import numpy as np

    flat = (np.arange(n_boot)[:, None] * n + resample_indices(rng, n, n_boot)).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def bootstrap_interval(
    values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, deterministic for a given seed."""
    vals = list(values)
    if not vals:
        return (math.nan, math.nan)
    n = len(vals)
    means = sorted(sum(vals[i] for i in draw) / n for draw in resample_indices(random.Random(seed), n, n_boot))
    lo = means[int(math.floor(alpha / 2 * (n_boot - 1)))]
    hi = means[int(math.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return (lo, hi)


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """{"accuracy", "n", "ci_low", "ci_high"} with a Wilson interval; accuracy is None when n == 0."""
    n = len(correct)
    k = sum(bool(c) for c in correct)
    lo, hi = wilson_interval(k, n)
    return {
        "accuracy": k / n if n else None,
        "n": n,
        "ci_low": None if n == 0 else lo,
        "ci_high": None if n == 0 else hi,
    }


def paired_difference(
    base: Sequence[float], other: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Mean of other - base over paired items, with a seeded percentile-bootstrap interval over items.

    base[i] and other[i] are the same item's values (e.g. its accuracy averaged over training seeds) for
    two models; resampling items keeps each pair together, so item difficulty cancels.
    """
    import numpy as np

    if len(base) != len(other):
        raise ValueError(f"{len(base)} base values but {len(other)} paired values")
    d = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    if d.size == 0:
        return {"diff": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = d[resample_indices(rng, d.size, n_boot)].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(d.size)}


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, min and max (e.g. of one accuracy over training seeds)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(vals), "max": max(vals), "n": len(vals)}


def two_level_bootstrap(
    arms: Sequence,
    coefs: Sequence[float],
    clusters: Sequence,
    *,
    n_boot: int = 4000,
    alpha: float = 0.05,
    seed: int = 0,
    paired_seeds: bool = False,
) -> dict:
    """A contrast between training arms on the same items, with a two-level percentile-bootstrap interval.

    arms[k] is a (training seeds x items) array of arm k's per-item values (e.g. 1/0 correct), the columns
    the same items in every arm; the statistic is the mean over items of sum_k coefs[k] * (arm k's value
    averaged over its seeds): (+1, -1) gives other - base, (1,) one arm's mean. Each bootstrap draw resamples
    (1) whole clusters of items (clusters[i] = item i's cluster: items sharing a conversation or question
    move together) and (2) the training seeds of each arm, within that arm and independently of the others,
    so both the item sample and the seed-to-seed variation of training widen the interval.
    paired_seeds: row j of every arm is the same training seed (matched by design: the seed initialises every
    arm's LoRA, and a random head, alike: music.rm.model), so each draw resamples seed indices once for all arms: what a
    seed does to every arm alike cancels, as item difficulty does. Needs arms with the same number of rows.
    Returns {"diff", "ci_low", "ci_high", "n" (items), "n_clusters", "paired_seeds"}; None values when there
    are no items.
    """
    import numpy as np

    mats = [np.atleast_2d(np.asarray(a, dtype=float)) for a in arms]
    if len(mats) != len(coefs):
        raise ValueError(f"{len(mats)} arms but {len(coefs)} coefficients")
    n = mats[0].shape[1] if mats else 0
    if any(m.shape[1] != n for m in mats) or len(clusters) != n:
        raise ValueError(
            f"arms and clusters disagree on the number of items: {[m.shape for m in mats]}, {len(clusters)} clusters"
        )
    if paired_seeds and len({m.shape[0] for m in mats}) > 1:
        raise ValueError(
            f"paired_seeds needs the same training seeds in every arm, got {[m.shape[0] for m in mats]} rows"
        )
    if n == 0:
        return {"diff": None, "ci_low": None, "ci_high": None, "n": 0, "n_clusters": 0, "paired_seeds": paired_seeds}
    if any(m.shape[0] == 0 for m in mats):
        raise ValueError("an arm has no training seeds")
    _, inv = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    k = int(inv.max()) + 1
    point = float(sum(c * m.mean(axis=0) for c, m in zip(coefs, mats)).mean())
    rng = np.random.default_rng(seed)
    # the order of draws is fixed (clusters, then the shared seeds or each arm's seeds in turn): the intervals
    # published in outputs/metrics depend on it
    weights = resample_counts(rng, k, n_boot)[:, inv]  # (draws x items): how often each item's cluster was drawn
    stat = np.zeros((n_boot, n))
    shared = resample_counts(rng, mats[0].shape[0], n_boot) if paired_seeds else None
    for c, m in zip(coefs, mats):
        seeds = shared if paired_seeds else resample_counts(rng, m.shape[0], n_boot)
        stat += c * (seeds / m.shape[0]) @ m
    boot = (weights * stat).sum(axis=1) / weights.sum(axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "diff": point,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(n),
        "n_clusters": k,
        "paired_seeds": paired_seeds,
    }
