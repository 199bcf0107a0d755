"""show_params prints what the profile sets (defaults marked), each key followed by its help (the field's
metadata) as YAML comments, and names, in one line, the fields it leaves unset. The text parses as YAML."""

from __future__ import annotations

import dataclasses

import yaml

from music.config import ChatModelConfig, Params, SimulateConfig, field_help
from music.pipeline.notebooks import show_params


def test_show_params_pins_its_layout(capsys):
    P = Params()
    P.plots.dpi = 60
    show_params(P.plots, "plots", profile={"dpi": 60})
    assert capsys.readouterr().out == (
        "plots:\n"
        "  dpi: 60\n"
        "      # Raster resolution in dots per inch.\n"
        "# not set by the profile, so at their defaults (`python -m music.config plots` explains\n"
        "#   each): formats\n"
    )


def test_show_params_prints_the_profiles_keys_with_their_help_and_marks_defaults(capsys):
    P = Params()
    P.simulate.turns = 7
    profile = {
        "turns": 7,
        "seed": 0,
        "user": {"model": "embedded:smollm2-135m-instruct", "max_new_tokens": 32},
        "assistant": {"max_new_tokens": 48},
    }
    show_params(P.simulate, "simulate", profile=profile)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "simulate:" and "  turns: 7" in lines and "  seed: 0  # default" in lines
    # a key's help follows it, 4 columns deeper, as comments (wrapped: its first words on the next line)
    turns = lines.index("  turns: 7")
    assert lines[turns + 1].startswith("      # ") and field_help(SimulateConfig, "turns").startswith(
        lines[turns + 1].removeprefix("      # ")
    )
    assert lines[lines.index("  seed: 0  # default") + 1] == "      # " + field_help(SimulateConfig, "seed")
    # a chat role: its help under it, then its keys (defaults are the role's own: user's max_new_tokens is 32)
    user = lines.index("  user:")
    assert lines[user + 1] == "      # " + field_help(SimulateConfig, "user")
    assert "    max_new_tokens: 32  # default" in lines and "    max_new_tokens: 48  # default" in lines
    # a second role's keys are not explained again
    help_first_words = "        # " + field_help(ChatModelConfig, "max_new_tokens")[:30]
    assert sum(line.startswith(help_first_words) for line in lines) == 1
    assert not any(
        line.strip().startswith(("kv_cache_mb:", "base_urls:", "api_key_env:", "trim_truncated:")) for line in lines
    )
    unset = out[out.index("# not set by the profile") :]
    assert "kv_cache_mb" in unset and "trim_truncated" in unset and "python -m music.config simulate" in unset
    assert max(len(line) for line in lines) <= 88
    # the comments change nothing: the text reads back as the printed values
    assert yaml.safe_load(out) == {
        "simulate": {
            "user": {"model": "embedded:smollm2-135m-instruct", "max_new_tokens": 32},
            "assistant": {"max_new_tokens": 48},
            "turns": 7,
            "seed": 0,
        }
    }


def test_without_help_the_table_has_no_comments_but_the_marks(capsys):
    show_params(Params().simulate, "simulate", profile={"turns": 2, "user": {"max_new_tokens": 32}}, with_help=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["simulate:", "  user:", "    max_new_tokens: 32  # default", "  turns: 2  # default"]
    assert lines[4].startswith("# not set by the profile")


def test_without_a_profile_every_field_is_printed_with_its_help(capsys):
    show_params(Params().seed, "seed", profile=None)
    out = capsys.readouterr().out
    assert out.startswith("seed:\n  source: sharegpt\n      # Loader of") and "  n_train: 40\n" in out
    assert "# default" not in out  # nothing to tell a default from
    assert yaml.safe_load(out) == {"seed": dataclasses.asdict(Params().seed)}


@dataclasses.dataclass
class _Prompted:
    prompt: str = dataclasses.field(default="Line one.\nLine two.", metadata={"help": "A multi-line prompt."})
    n: int = dataclasses.field(default=1, metadata={"help": "A count."})


def test_a_block_value_gets_its_help_above_it(capsys):
    """Comment lines under a literal block would be read as its text: a block's help goes on the line above."""
    show_params(_Prompted(), "toy", profile={"prompt": "Line one.\nLine two.", "n": 1})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["toy:", "  # A multi-line prompt.", "  prompt: |-  # default", "    Line one."]
    assert yaml.safe_load("\n".join(lines)) == {"toy": {"prompt": "Line one.\nLine two.", "n": 1}}
