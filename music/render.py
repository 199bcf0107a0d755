"""Conversations as HTML chat bubbles for notebooks (plain text in a terminal)."""

from __future__ import annotations

import html

_COLORS = {"system": "#eeeeee", "user": "#dbeafe", "assistant": "#f3f4f6"}
_HIGHLIGHT = "#fde2e1"


def conversation_html(messages: list[dict], *, title: str | None = None, footer: str | None = None,
                      highlight: set[int] | frozenset[int] = frozenset()) -> str:
    """One column of bubbles; messages whose index is in `highlight` get a red tint and border."""
    parts = ['<div style="font-family:sans-serif;font-size:13px;max-width:640px">']
    if title:
        parts.append(f"<div style='font-weight:bold;margin:4px 0'>{html.escape(title)}</div>")
    for i, m in enumerate(messages):
        bg = _HIGHLIGHT if i in highlight else _COLORS.get(m["role"], "#fff")
        border = "2px solid #dc2626" if i in highlight else "1px solid #ddd"
        align = "margin-left:40px" if m["role"] == "assistant" else "margin-right:40px"
        text = html.escape(m["content"]).replace("\n", "<br>")
        parts.append(f"<div style='background:{bg};border:{border};border-radius:8px;padding:6px 9px;margin:4px 0;{align}'>"
                     f"<b>{m['role']}</b><br>{text}</div>")
    if footer:
        parts.append(f"<div style='color:#6b7280;margin:4px 0'>{html.escape(footer)}</div>")
    parts.append("</div>")
    return "".join(parts)


def side_by_side_html(left: str, right: str) -> str:
    return (f"<div style='display:flex;gap:16px;align-items:flex-start'><div style='flex:1'>{left}</div>"
            f"<div style='flex:1'>{right}</div></div>")


def show_conversation(messages: list[dict], **kwargs) -> None:
    """Display in a notebook; print plain text elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None:
            display(HTML(conversation_html(messages, **kwargs)))
            return
    except ImportError:
        pass
    if kwargs.get("title"):
        print(f"== {kwargs['title']}")
    for m in messages:
        print(f"[{m['role']}] {m['content']}")
    if kwargs.get("footer"):
        print(kwargs["footer"])
