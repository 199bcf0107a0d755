"""Reward models: backbone + scalar head (model), rendering and truncation (data), the trainer (train),
and scoring of conversations with a saved model (score).

Submodules import torch and transformers lazily where they can; import what you need from them:
`from music.rm.train import train_reward_model`, `from music.rm.score import RewardScorer`.
"""
