"""RewardBench scoring tables (the one place for them) and the paper's reported numbers.

Copied from allenai/reward-bench rewardbench/constants.py (EXAMPLE_COUNTS, SUBSET_MAPPING): a
section score is the example-count-weighted mean of its subsets' accuracies, and the average is the
plain mean of the four sections. math-prm is weighted 984 (= 6 x 164, the size of the code subsets)
although the filtered split holds 447 math-prm rows, so maths and code count equally in Reasoning.
"""

from __future__ import annotations

SECTIONS: dict[str, list[str]] = {
    "chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "chat_hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}

EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "math-prm": 984,  # weight, not row count (447 rows)
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}

# The one naming of the sections (the keys of SECTIONS, plus "average"): every file and table the project
# writes uses these keys; SECTION_TITLES are the display names (reward-bench's own "Chat", "Chat Hard", ...).
SECTION_KEYS: tuple[str, ...] = (*SECTIONS, "average")
SECTION_TITLES = {
    "chat": "Chat",
    "chat_hard": "Chat Hard",
    "safety": "Safety",
    "reasoning": "Reasoning",
    "average": "Avg",
}
REWARDBENCH_TEST = "rewardbench"  # the `test` of RewardBench rows in items.csv (their `source` is the subset)

HUB_ID = "allenai/reward-bench"
HUB_SPLIT = "filtered"
HUB_ROWS = 2985

# arXiv 2512.24693, RewardBench table (percent), Gemma-2-9B-Instruct RMs trained on Skywork (+ MUSIC).
PAPER_REWARDBENCH: dict[str, dict[str, float]] = {
    "baseline": {"chat": 96.9, "chat_hard": 73.0, "safety": 90.9, "reasoning": 83.1, "average": 86.0},
    "music": {"chat": 96.4, "chat_hard": 72.4, "safety": 90.8, "reasoning": 87.0, "average": 86.6},
}
