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
    req.update(_pins((REPO / "requirements" / "data.txt").read_text().splitlines()))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == req
