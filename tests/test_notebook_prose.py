"""Prose that cannot drift: a notebook's Markdown never states a value that params.yaml sets.

A lesson's numbers (turns simulated, candidates, N, seeds, ...) come from the loaded params or the outputs:
printed by a cell, or a Markdown cell rendered from them (`music.pipeline.notebooks.say`). The check reads every
Markdown cell and flags, per sentence (sentences about the paper are exempt: they describe its settings):
  * a number beside a params key named in backticks (`contrast.candidates` ... "4 by default");
  * `key: value` in backticks for a params key (`repetition_penalty: 1.1`);
  * a count of what params.yaml sets ("3 turns", "2 seeds", "6 prompts", "N = 8", "60 pairs each", "by default 4").
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]*_*.ipynb"))  # 00b_... sorts after 00_...

# counts of things params.yaml sets (simulate.turns, train.seeds, evaluate.bon_ns/bon_prompts, contrast.candidates, ...)
COUNTED = (
    r"(?:simulated |more |user |assistant |training |public )?(?:turns?|seeds?|candidates|prompts|layers|epochs"
    r"|steps|pairs each|conversations each|tokens)"
)
PATTERNS = [
    re.compile(rf"\b\d+(?:\.\d+)?\s+{COUNTED}\b"),
    re.compile(r"\bN\s*=\s*\d+"),
    re.compile(r"\b\d+(?:\.\d+)?\s+by default\b|\bby default,?\s+\d"),
    re.compile(r"\bdefault(?: is)?,? \d"),
]


def _params_keys() -> set[str]:
    """Every params.yaml key, as `section.key` and as the bare leaf name."""
    keys: set[str] = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            name = f"{prefix}{k}"
            keys.update({name, str(k)})
            if isinstance(v, dict):
                walk(v, name + ".")

    walk(yaml.safe_load((REPO / "params.yaml").read_text()))
    return keys - {"seed", "paths", "model", "backend"}  # words too common to be a setting's name in prose


KEYS = _params_keys()
MATH = re.compile(r"\$[^$]*\$")
CODE = re.compile(r"`([^`]*)`")


def sentences(markdown: str) -> list[str]:
    """Clauses of a Markdown text: list items, paragraphs and headings apart, then split at . ! ? ; and :
    (so a clause about the paper is exempt, the next one about this run is not). Math and notebook
    numbers ("notebook 05", "# 04 ·") are left out."""
    text = MATH.sub(" ", markdown)
    text = re.sub(r"\bnotebooks? \d\d(?:(?:,| and| or) \d\d)*", "notebook", text)
    text = re.sub(r"^(#+) \d\d ·", r"\1", text, flags=re.M)
    parts = re.split(r"\n\s*(?:[*-]|\d+\.)\s+|\n\s*\n|\n(?=#)|^\s*(?:[*-]|\d+\.)\s+", text)
    return [
        c.strip()
        for part in parts
        for c in re.split(r"(?<=[.!?;])\s+|(?<=:)\s+(?![\d`])", re.sub(r"\s+", " ", part))
        if c.strip()
    ]


def hard_coded(markdown: str) -> list[str]:
    """The sentences of a Markdown text that state a params value (see the module docstring)."""
    bad = []
    for s in sentences(markdown):
        if re.search(r"\bpaper\b", s, re.I):
            continue
        codes = CODE.findall(s)
        named = [c for c in codes if c.strip() in KEYS]
        key_value = [
            c for c in codes if re.fullmatch(r"\s*([\w.]+):\s*[\d.]+\s*", c) and c.split(":")[0].strip() in KEYS
        ]
        prose = CODE.sub(" ", s)
        if key_value or (named and re.search(r"(?<![\w.])\d", prose)) or any(p.search(prose) for p in PATTERNS):
            bad.append(s)
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_markdown_cell_hard_codes_a_params_value(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = [
        f"cell {i}: {s}"
        for i, c in enumerate(cells)
        if c["cell_type"] == "markdown"
        for s in hard_coded("".join(c["source"]))
    ]
    assert found == [], f"{path.name} states params values in prose (render them from P instead):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "the offline default uses the embedded SmolLM2-135M-Instruct and 2 turns, so it fits.",
        "the user model writes the request again, `contrast.candidates` times (4 by default, one batched call);",
        "For smaller N the first N of the same samples are used, so N=2 is a subset of N = 8.",
        "The simulation's `repetition_penalty: 1.1` makes echoes rare.",
        "**hh**, **ultrafeedback** — 60 pairs each of two public last-turn sets.",
        "It trains one model per seed: 2 seeds by default.",
    ],
)
def test_the_check_sees_known_drifts(text):
    assert hard_coded(text), text


@pytest.mark.parametrize(
    "text",
    [
        "The paper uses Gemini 1.5 Pro for both roles and 5 turns.",
        "Distance 1 = the last reply, 2 or more = an earlier reply.",
        "answer briefly (about 80 words).",
        "Dashed: an untrained RM (loss $\\log 2$, accuracy one half).",
    ],
)
def test_the_check_lets_ordinary_prose_through(text):
    assert hard_coded(text) == [], text
