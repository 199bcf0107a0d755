"""Evaluation of the trained reward models (the library; the stages are music.stages.evaluate and
music.stages.best_of_n).

Modules: items (test items, score groups), heldout_items (the held-out items as the heldout stage writes
them), swap (swapped-history items), pairwise (the guard every evaluation runs first; committed last-turn
sets), rewardbench (the benchmark's section rules), compare (arms paired on the same items), judge (pairwise
judging for Best-of-N), stats (intervals), constants (RewardBench tables). This package file imports nothing,
so `music.evaluate.stats` loads alone.
"""
