"""System messages for chat templates without a system role (one place for every backend and the RM).

Gemma-2's chat template raises "System role not supported" on a system message, and vLLM serving it
answers HTTP 400. For such templates the system text is folded into the first user message.
In-process chat models and the reward model detect it from the tokenizer's template
(`template_accepts_system`); for servers it is the option `system_role: fold` of a ChatModelConfig.
"""

from __future__ import annotations


def fold_system(messages: list[dict]) -> list[dict]:
    """The conversation without a system message: its text opens the first user message.

    For chat templates without a system role (Gemma-2's raises "System role not supported"; vLLM
    answers such requests with HTTP 400). A conversation that does not start with a user message
    gets the system text as its own first user message, so user/assistant still alternate.
    """
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


_SYSTEM_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def template_accepts_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (False when it raises)."""
    try:
        tokenizer.apply_chat_template(_SYSTEM_PROBE, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja2 TemplateError from raise_exception(...), or anything the template does
        return False
    return True
