"""Conversations and preference pairs as HTML chat bubbles for notebooks (plain text in a terminal).

One renderer for every notebook: a conversation is a column of bubbles; a pair is two columns, the
messages where the two sides differ tinted green on the chosen side and red on the rejected side.
"""

from __future__ import annotations

import html

_COLORS = {"system": "#eeeeee", "user": "#dbeafe", "assistant": "#f3f4f6"}
_TINTS = {
    "bad": ("#fde2e1", "#dc2626"),
    "good": ("#dcfce7", "#16a34a"),  # (background, border)
    "simulated": ("#fef9c3", "#ca8a04"),
}  # neutral: generated text, not an error


def conversation_html(
    messages: list[dict],
    *,
    title: str | None = None,
    footer: str | None = None,
    highlight: set[int] | frozenset[int] = frozenset(),
    tint: str = "bad",
) -> str:
    """One column of bubbles; messages whose index is in `highlight` get the `tint` ("bad": red, "good": green,
    "simulated": a neutral amber for generated turns)."""
    bg_hi, border_hi = _TINTS[tint]
    parts = ['<div style="font-family:sans-serif;font-size:13px;max-width:640px">']
    if title:
        parts.append(f"<div style='font-weight:bold;margin:4px 0'>{html.escape(title)}</div>")
    for i, m in enumerate(messages):
        bg = bg_hi if i in highlight else _COLORS.get(m["role"], "#fff")
        border = f"2px solid {border_hi}" if i in highlight else "1px solid #ddd"
        align = "margin-left:40px" if m["role"] == "assistant" else "margin-right:40px"
        text = html.escape(m["content"]).replace("\n", "<br>")
        parts.append(
            f"<div style='background:{bg};border:{border};border-radius:8px;padding:6px 9px;margin:4px 0;{align}'>"
            f"<b>{m['role']}</b><br>{text}</div>"
        )
    if footer:
        parts.append(f"<div style='color:#6b7280;margin:4px 0'>{html.escape(footer)}</div>")
    parts.append("</div>")
    return "".join(parts)


def side_by_side_html(left: str, right: str) -> str:
    return (
        f"<div style='display:flex;gap:16px;align-items:flex-start'><div style='flex:1'>{left}</div>"
        f"<div style='flex:1'>{right}</div></div>"
    )


def differing(a: list[dict], b: list[dict]) -> set[int]:
    """Indices where two conversations differ (a message present on one side only counts)."""
    return {i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]}


def pair_html(
    chosen: list[dict],
    rejected: list[dict],
    *,
    titles: tuple[str, str] = ("chosen", "rejected"),
    header: str | None = None,
    footers: tuple[str | None, str | None] = (None, None),
) -> str:
    """The two sides next to each other; where they differ: green on the chosen side, red on the rejected."""
    diff = differing(chosen, rejected)
    body = side_by_side_html(
        conversation_html(chosen, title=titles[0], highlight=diff, tint="good", footer=footers[0]),
        conversation_html(rejected, title=titles[1], highlight=diff, tint="bad", footer=footers[1]),
    )
    return (
        f"<div style='font-family:sans-serif;font-size:13px;margin:10px 0 2px'>{html.escape(header)}</div>"
        if header
        else ""
    ) + body


def pair_text(
    chosen: list[dict],
    rejected: list[dict],
    *,
    titles: tuple[str, str] = ("chosen", "rejected"),
    header: str | None = None,
) -> str:
    """The same pair as plain text: shared messages once, then each side's differing messages."""
    diff = differing(chosen, rejected)
    first = min(diff) if diff else len(chosen)
    lines = [f"== {header}"] if header else []
    lines += [f"[{m['role']}] {m['content']}" for m in chosen[:first]]
    for title, conv in zip(titles, (chosen, rejected)):
        lines.append(f"-- {title}:")
        lines += [f"  [{m['role']}] {m['content']}" for m in conv[first:]]
    return "\n".join(lines)


def _display_html(markup: str) -> bool:
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return False
    if get_ipython() is None:
        return False
    display(HTML(markup))
    return True


def show_conversation(messages: list[dict], **kwargs) -> None:
    """Display in a notebook; print plain text elsewhere."""
    if _display_html(conversation_html(messages, **kwargs)):
        return
    if kwargs.get("title"):
        print(f"== {kwargs['title']}")
    for m in messages:
        print(f"[{m['role']}] {m['content']}")
    if kwargs.get("footer"):
        print(kwargs["footer"])


def show_pair(chosen: list[dict], rejected: list[dict], **kwargs) -> None:
    """A preference pair side by side in a notebook (pair_html); as text elsewhere (pair_text)."""
    if not _display_html(pair_html(chosen, rejected, **kwargs)):
        print(pair_text(chosen, rejected, **{k: v for k, v in kwargs.items() if k in ("titles", "header")}))


def show_music_pair(pair: dict) -> None:
    """A MUSIC pair record (outputs/pairs/music_*): the person's request and the rewrite the rejected branch
    answered, then both branches side by side, headed by where they diverge and the relevance margins."""
    rel = pair["relevance"] or {}
    header = (
        f"{pair['pair_id']} · diverges at user turn {pair['divergence_turn']}, {pair['turns_after_divergence']} "
        f"turns after it · margins: chosen {rel.get('chosen_margin')}, rejected {rel.get('rejected_margin')}"
    )
    print(
        f"original request: {pair['original_request']}\nmodified request (answered by the rejected reply): "
        f"{pair['modified_request']}"
    )
    show_pair(pair["chosen"], pair["rejected"], header=header)
