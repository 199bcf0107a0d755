"""Every profile parses into the typed config; typos are errors; pins agree across files."""

import re

import pytest
import yaml
from helpers import REPO

from music.config import ChatModelConfig, Params, TrainConfig, config_listing, field_help, from_dict, load_params
from music.errors import DataError

PROFILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profiles_parse(path):
    params = load_params(path)
    assert isinstance(params, Params)


def test_unknown_key_is_an_error():
    with pytest.raises(DataError, match="field 'n_seeds'.*unknown key"):
        from_dict(Params, {"seed": {"n_seeds": 3}})


def _pins(lines):
    return dict(
        re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
        for line in lines
        if re.match(r"^\s*-?\s*[A-Za-z0-9_.\-]+==", line)
    )


def test_environment_yml_names_the_same_pins_as_requirements():
    req = _pins((REPO / "requirements" / "cpu.txt").read_text().splitlines())
    req.update(_pins((REPO / "requirements" / "serve.txt").read_text().splitlines()))
    req.update(_pins((REPO / "requirements" / "bench.txt").read_text().splitlines()))
    req.update(_pins((REPO / "requirements" / "data.txt").read_text().splitlines()))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == req


def test_defaults_are_the_default_profile():
    """One source of truth: params.yaml states every default, so profiles need only what they change."""
    import dataclasses

    assert dataclasses.asdict(load_params(REPO / "params.yaml")) == dataclasses.asdict(Params())


def _config_classes(cls: type = Params) -> list[type]:
    """Every config dataclass reachable from `cls` through its fields' types, `cls` first."""
    import dataclasses
    import typing

    found = [cls]
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint) and hint not in found:
            found += [c for c in _config_classes(hint) if c not in found]
    return found


# what a measured number looks like: a percentage, a "before -> after", a count "N of M", a range "0.74-0.96"
MEASUREMENT = re.compile(r"\d\s*%|\d\s*->\s*\d|\b\d+ of \d+\b|\d\.?\d*\s*-\s*\d+\.\d")


def test_every_field_has_help_and_no_measurements():
    """One copy of each key's help, in its field's metadata; measurements belong in docs/decisions.md."""
    import dataclasses

    classes = _config_classes()
    assert {c.__name__ for c in classes} >= {"Paths", "ChatModelConfig", "SeedConfig", "TrainConfig", "PlotConfig"}
    missing, measured = [], []
    for cls in classes:
        for f in dataclasses.fields(cls):
            text = field_help(cls, f.name)
            if not text.strip():
                missing.append(f"{cls.__name__}.{f.name}")
            if MEASUREMENT.search(text):
                measured.append(f"{cls.__name__}.{f.name}: {text}")
    assert missing == [] and measured == []
    assert MEASUREMENT.search("62.5-71.9% with normal") and MEASUREMENT.search("scoring 36 -> 16 s")
    assert field_help(Params, "simulate.user.max_new_tokens") == field_help(ChatModelConfig, "max_new_tokens")
    with pytest.raises(KeyError):
        field_help(Params, "seed.n_seeds")


def test_decisions_page_names_real_keys():
    """docs/decisions.md's sections are about keys that exist (a renamed key must not leave a stale section)."""
    headers = [line for line in (REPO / "docs" / "decisions.md").read_text().splitlines() if line.startswith("## ")]
    keys = [k for line in headers for k in re.findall(r"([A-Za-z_]+(?:\.[a-z_]+)+):", line)]
    assert len(keys) >= 10
    for key in keys:
        head, _, rest = key.partition(".")
        assert field_help(ChatModelConfig, rest) if head == "ChatModelConfig" else field_help(Params, key), key


def test_listing_prints_each_key_with_its_type_default_and_help():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "music.config", "train"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("train (TrainConfig): Stage `train`")
    assert "train.head_init: str = zero" in lines and "train.num_layers: int | None = 12" in lines
    flat = " ".join(out.split())
    assert " ".join(field_help(TrainConfig, "head_init").split()) in flat
    assert "train.seeds: list[int] = [0, 1, 2, 3]" in lines and "seed.n_train" not in out
    assert max(len(line) for line in lines) <= 100
    everything = config_listing()
    assert "simulate.{user,assistant}.max_new_tokens: int = 32 (user), 48 (assistant)" in everything.splitlines()
    assert all(f"{section}." in everything for section in ("paths", "seed", "contrast", "evaluate", "plots"))


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("contrast", "method", "magic", "field 'method'.*must be one of"),
        ("contrast", "divergence", "sometimes", "field 'divergence'"),
        ("simulate", "turns", 0, "field 'turns'.*>= 1"),
        ("train", "backend", "tpu", "field 'backend'"),
        ("train", "num_layers", 0, "field 'num_layers'"),
        ("evaluate", "bon_ns", [], "field 'bon_ns'"),
    ],
)
def test_bad_values_name_the_file_section_and_key(section, key, value, match):
    with pytest.raises(DataError, match=match) as exc:
        from_dict(Params, {section: {key: value}}, "params.yaml")
    assert str(exc.value).startswith(f"params.yaml.{section}")


def test_bad_chat_values_name_the_role():
    with pytest.raises(DataError, match=r"params.yaml.simulate.user.*field 'batch_size'"):
        from_dict(Params, {"simulate": {"user": {"batch_size": 0}}}, "params.yaml")
