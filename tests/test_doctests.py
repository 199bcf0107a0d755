"""The `>>>` examples in the docstrings of the small pure functions run with the tests (and stay correct)."""

from __future__ import annotations

import doctest
import importlib

import pytest

# modules whose docstrings carry examples: bt_loss; pad_batch and collate_pairs; the RewardBench section scores
MODULES = ["music.rm.train", "music.rm.data", "music.evaluate.rewardbench"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {name}'s docstring examples failed (printed above)"
    assert result.attempted > 0, f"{name} has no docstring examples left"
