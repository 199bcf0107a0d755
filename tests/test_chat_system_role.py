"""System messages for templates without a system role, and the server's identity in the cache key."""

from __future__ import annotations

import shutil

import pytest
from helpers import LoopbackJSONServer

from music.chat import make_chat
from music.chat.base import SamplingParams
from music.chat.system_role import fold_system, template_accepts_system
from music.config import ChatModelConfig
from music.rm.data import render_ids

# A template in the style of Gemma-2's: no system role (it raises), user/assistant must alternate.
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye?"},
]


def test_fold_system_joins_the_first_user_message():
    folded = fold_system(CONV)
    assert folded[0] == {"role": "user", "content": "Be brief.\n\nHi"} and folded[1:] == CONV[2:]
    assert fold_system(CONV[1:]) == CONV[1:]  # nothing to fold
    lone = fold_system([{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}])
    assert lone == [{"role": "user", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert CONV[0]["role"] == "system"  # the input is not changed


@pytest.fixture(scope="module")
def no_system_model(tiny_backbone, tmp_path_factory):
    """The tiny Llama with a tokenizer whose chat template raises on a system message."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("no_system")
    shutil.copytree(tiny_backbone, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = NO_SYSTEM_TEMPLATE
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.slow
def test_in_process_model_without_system_role_gets_it_folded(no_system_model):
    from transformers import AutoTokenizer

    assert not template_accepts_system(AutoTokenizer.from_pretrained(no_system_model))
    chat = make_chat(ChatModelConfig(model=no_system_model, max_new_tokens=3, temperature=0.0), None)
    assert chat.fold_system
    replies = chat.generate([CONV, CONV[1:]], seed=0)
    assert [r.finish_reason for r in replies] != ["error", "error"]
    text = chat.tok.decode(chat.render(chat.prepare_messages(CONV)))
    assert "<|im_start|>user\nBe brief.\n\nHi<|im_end|>" in text and "system" not in text
    verdicts = chat.choose([CONV], ["A", "B"], prefix="[[", suffix="]]")  # constrained judging folds too
    assert verdicts[0].text in ("[[A]]", "[[B]]")
    assert render_ids(chat.tok, CONV) == render_ids(chat.tok, fold_system(CONV))  # the reward model folds too
    keep = make_chat(ChatModelConfig(model=no_system_model, max_new_tokens=3, system_role="keep"), None)
    assert not keep.fold_system
    with pytest.raises(Exception, match="System role not supported"):
        keep.generate([CONV])


@pytest.mark.slow
def test_template_with_a_system_role_is_left_alone(smol_tok):
    assert template_accepts_system(smol_tok)


class Recorder(LoopbackJSONServer):
    """An OpenAI-compatible endpoint that answers every request and records the bodies."""

    def __init__(self):
        self.bodies: list[dict] = []
        super().__init__(self._respond)

    def _respond(self, body: dict) -> tuple[int, dict]:
        self.bodies.append(body)
        return 200, {"choices": [{"message": {"content": f"reply {len(self.bodies)}"}, "finish_reason": "stop"}]}


@pytest.fixture
def recorders():
    pair = [Recorder(), Recorder()]
    yield pair
    for r in pair:
        r.close()


def served(urls, **kw) -> ChatModelConfig:
    return ChatModelConfig(
        backend="openai", model="m", base_urls=list(urls), max_retries=0, timeout_s=5, api_key_env="", **kw
    )


def test_server_option_folds_the_system_message(recorders):
    a, _ = recorders
    make_chat(served([a.url], system_role="fold"), None).generate([CONV])
    make_chat(served([a.url]), None).generate([CONV])  # auto = keep for servers
    folded, kept = (b["messages"] for b in a.bodies)
    assert folded == fold_system(CONV) and kept == CONV


def test_cache_key_names_the_server_and_revision(recorders, tmp_path):
    a, b = recorders
    params = SamplingParams(8, 0.7, 0.9, 0)

    def key(cfg):
        return make_chat(cfg, None)._requests([CONV], params)[0].key

    assert key(served([a.url, b.url])) == key(served([b.url, a.url]))  # replica order does not matter
    assert key(served([a.url])) != key(served([b.url]))
    assert key(served([a.url])) != key(served([a.url], revision="v2"))
    assert key(served([a.url], system_role="fold")) != key(served([a.url]))  # what is sent is what is keyed

    first = make_chat(served([a.url]), tmp_path).generate([CONV])
    again = make_chat(served([a.url]), tmp_path).generate([CONV])
    moved = make_chat(served([b.url]), tmp_path).generate([CONV])  # same model name, another server
    assert first[0].text == again[0].text and len(a.bodies) == 1  # a rerun is served from the cache
    assert len(b.bodies) == 1 and moved[0].text == "reply 1"  # not the old reply from server a
