"""One module per DVC stage, each with the same entry point: `run(params, *, variant=None)`.

seed, heldout, simulate, contrast, train (per variant), evaluate (per variant), best_of_n, plots. A stage
reads its inputs from `params.paths`, writes its outputs there (all files or none) and returns a summary.
"""

from __future__ import annotations

from typing import Iterable


def check_variant(stage: str, variant: str | None, variants: Iterable[str] | None = None) -> None:
    """A per-variant stage needs one of `variants`; any other stage takes none."""
    if variants is None:
        if variant is not None:
            raise ValueError(f"stage {stage!r} has no variants, got variant={variant!r}")
    elif variant not in variants:
        raise ValueError(f"unknown variant {variant!r} for stage {stage!r}; train.variants has {sorted(variants)}")
