"""Evaluation of the trained reward models.

Modules: run (the `evaluate@{variant}` stage: guards, every metric, one metrics file), rewardbench (the
benchmark's section rules), pairwise (held-out and local labelled pairs), sensitivity (corrupted
history), best_of_n + judge (the `best_of_n` stage), stats (intervals), constants (RewardBench tables).
This package file imports nothing, so `music.evaluate.stats` loads alone (the plots stage uses it).
"""
