"""music: MUlti-Step Instruction Contrast (arXiv 2512.24693) for multi-turn reward models."""

__version__ = "0.1.0"
