"""show_params prints what the profile sets (defaults marked) and names, in one line, the fields it leaves unset."""

from __future__ import annotations

from music.config import Params
from music.pipeline.notebooks import show_params


def test_show_params_prints_the_profiles_keys_and_marks_defaults(capsys):
    P = Params()
    P.simulate.turns = 7
    profile = {"turns": 7, "seed": 0, "user": {"model": "embedded:smollm2-135m-instruct", "max_new_tokens": 32}}
    show_params(P.simulate, "simulate", profile=profile)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "simulate:" and "  turns: 7" in lines and "  seed: 0  # default" in lines
    assert "  user:" in lines and "    max_new_tokens: 32" in lines or "    max_new_tokens: 32  # default" in lines
    assert not any(line.strip().startswith(("kv_cache_mb:", "base_urls:", "api_key_env:", "assistant:")) for line in lines)
    unset = out[out.index("# not set by the profile"):]
    assert "kv_cache_mb" in unset and "assistant" in unset and "trim_truncated" in unset
    assert max(len(line) for line in lines) <= 88


def test_without_a_profile_every_field_is_printed(capsys):
    show_params(Params().seed, "seed", profile=None)
    assert "  n_train:" in capsys.readouterr().out
