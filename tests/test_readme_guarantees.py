"""The README's "What it guarantees" section: every guarantee names the tests that pin it, and they exist."""

from __future__ import annotations

import re

from helpers import REPO


def _section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## What it guarantees")
    return text[start : text.index("\n## ", start + 1)]


def test_every_guarantee_names_a_test_that_exists():
    section = _section()
    defined = {
        m.group(1)
        for path in (REPO / "tests").glob("test_*.py")
        for m in re.finditer(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M)
    }
    bullets = [b for b in section.split("\n- ")[1:]]
    assert len(bullets) >= 6
    for bullet in bullets:
        named = re.findall(r"`(test_\w+)`", bullet)
        assert named, f"a guarantee without a test: {bullet[:80]!r}"
        assert set(named) <= defined, f"no such test: {sorted(set(named) - defined)}"
