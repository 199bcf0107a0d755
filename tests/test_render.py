"""The one renderer of conversations and pairs: escaping, highlighting where two sides differ, plain text."""

from __future__ import annotations

from music.reporting.render import conversation_html, differing, pair_html, pair_text, show_pair

CHOSEN = [
    {"role": "user", "content": "How do I boil an egg?"},
    {"role": "assistant", "content": "Nine minutes."},
    {"role": "user", "content": "Soft?"},
    {"role": "assistant", "content": "Six <b>minutes</b>."},
]
REJECTED = CHOSEN[:1] + [
    {"role": "assistant", "content": "Pasta takes ten."},
    CHOSEN[2],
    {"role": "assistant", "content": "Al dente."},
]


def test_differing_indices():
    assert differing(CHOSEN, REJECTED) == {1, 3}
    assert differing(CHOSEN, CHOSEN[:2]) == {2, 3}
    assert differing(CHOSEN, CHOSEN) == set()


def test_conversation_html_escapes_and_tints():
    out = conversation_html(CHOSEN, title="t & u", highlight={3}, tint="good")
    assert "Six &lt;b&gt;minutes&lt;/b&gt;." in out and "<b>minutes</b>" not in out
    assert "t &amp; u" in out and "#dcfce7" in out and "#fde2e1" not in out
    assert out.count("2px solid") == 1


def test_a_pair_is_green_where_chosen_differs_and_red_where_rejected_does():
    out = pair_html(CHOSEN, REJECTED, header="pair p1")
    left, right = out.split("<div style='flex:1'>")[1:3]
    assert left.count("#dcfce7") == 2 and "#fde2e1" not in left  # the chosen side is never drawn as wrong
    assert right.count("#fde2e1") == 2 and "#dcfce7" not in right
    assert out.startswith("<div style='font-family:sans-serif;font-size:13px;margin:10px 0 2px'>pair p1</div>")


def test_pair_text_shows_the_shared_part_once(capsys):
    text = pair_text(CHOSEN, REJECTED, header="p1")
    assert text.splitlines() == [
        "== p1",
        "[user] How do I boil an egg?",
        "-- chosen:",
        "  [assistant] Nine minutes.",
        "  [user] Soft?",
        "  [assistant] Six <b>minutes</b>.",
        "-- rejected:",
        "  [assistant] Pasta takes ten.",
        "  [user] Soft?",
        "  [assistant] Al dente.",
    ]
    show_pair(CHOSEN, REJECTED, header="p1")  # no notebook here: printed as text
    assert capsys.readouterr().out.strip() == text
