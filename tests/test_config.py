"""Every profile parses into the typed config; typos are errors; pins agree across files."""

import re

import pytest
import yaml

from music.config import Params, from_dict, load_params
from music.errors import DataError
from tests.conftest import REPO

PROFILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profiles_parse(path):
    params = load_params(path)
    assert isinstance(params, Params)


def test_unknown_key_is_an_error():
    with pytest.raises(DataError, match="field 'n_seeds'.*unknown key"):
        from_dict(Params, {"seed": {"n_seeds": 3}})


def _pins(lines):
    return dict(re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==(\S+)", l).groups() for l in lines
                if re.match(r"^\s*-?\s*[A-Za-z0-9_.\-]+==", l))


def test_environment_yml_names_the_same_pins_as_requirements():
    req = _pins((REPO / "requirements" / "cpu.txt").read_text().splitlines())
    req.update(_pins((REPO / "requirements" / "serve.txt").read_text().splitlines()))
    req.update(_pins((REPO / "requirements" / "data.txt").read_text().splitlines()))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == req


def test_defaults_are_the_default_profile():
    """One source of truth: params.yaml states every default, so profiles need only what they change."""
    import dataclasses

    assert dataclasses.asdict(load_params(REPO / "params.yaml")) == dataclasses.asdict(Params())


def test_every_field_is_documented_where_it_is_declared():
    """Each config field carries a comment on its line or the line above (or is named in the class docstring)."""
    import ast
    import inspect

    import music.config as config

    lines = inspect.getsource(config).splitlines()
    undocumented = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.ClassDef) or node.name in ("Params",):
            continue
        doc = ast.get_docstring(node) or ""
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                line, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2].strip()
                if "#" not in line and not above.startswith("#") and stmt.target.id not in doc:
                    undocumented.append(f"{node.name}.{stmt.target.id}")
    assert undocumented == []


@pytest.mark.parametrize("section, key, value, match", [
    ("contrast", "method", "magic", "field 'method'.*must be one of"),
    ("contrast", "divergence", "sometimes", "field 'divergence'"),
    ("simulate", "turns", 0, "field 'turns'.*>= 1"),
    ("train", "backend", "tpu", "field 'backend'"),
    ("train", "num_layers", 0, "field 'num_layers'"),
    ("evaluate", "bon_ns", [], "field 'bon_ns'"),
])
def test_bad_values_name_the_file_section_and_key(section, key, value, match):
    with pytest.raises(DataError, match=match) as exc:
        from_dict(Params, {section: {key: value}}, "params.yaml")
    assert str(exc.value).startswith(f"params.yaml.{section}")


def test_bad_chat_values_name_the_role():
    with pytest.raises(DataError, match=r"params.yaml.simulate.user.*field 'batch_size'"):
        from_dict(Params, {"simulate": {"user": {"batch_size": 0}}}, "params.yaml")
