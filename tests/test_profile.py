"""Profiles run as DVC experiments: the overrides reproduce each profile exactly and params.yaml is never rewritten."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from music.config import load_params, read_params_file
from music.pipeline.profile import diff_overrides, hydra_value, profile_overrides

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_overrides_reproduce_the_profile(path, tmp_path):
    from dvc.utils.hydra import apply_overrides

    overrides = profile_overrides(path, REPO / "params.yaml")  # checks itself; checked again here
    copy = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", copy)
    apply_overrides(copy, overrides)
    assert dataclasses.asdict(load_params(copy)) == dataclasses.asdict(load_params(path))


def test_the_default_profile_needs_no_override_and_the_cache_can_be_shared(tmp_path):
    assert profile_overrides(REPO / "params.yaml", REPO / "params.yaml") == []
    shared = profile_overrides(REPO / "params.yaml", REPO / "params.yaml", cache_dir=tmp_path / "c")
    assert shared == [f"++paths.cache='{(tmp_path / 'c').resolve()}'"]


def test_override_grammar():
    assert hydra_value(2e-06) == "2.0e-06" and hydra_value(0.03) == "0.03" and hydra_value(None) == "null"
    assert hydra_value("hub:Sky/work's") == "'hub:Sky/work\\'s'" and hydra_value([1, "a"]) == "[1, 'a']"
    assert diff_overrides({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}) == ["~a.y"]
    assert diff_overrides({"m": {"k": "v"}}, {"m": {}}) == ["~m", "++m={}"]


def test_dvc_style_floats_read_as_floats(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  learning_rate: 2e-06\n  warmup_ratio: 0.03\n  max_steps: 10\n")
    raw = read_params_file(f)["train"]
    assert raw == {"learning_rate": 2e-06, "warmup_ratio": 0.03, "max_steps": 10}


def test_make_run_with_a_profile_never_copies_it_over_params_yaml():
    out = subprocess.run(["make", "-n", "run", "PARAMS=profiles/paper.yaml"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dvc exp run --temp" in out.stdout and "music.pipeline.plan" in out.stdout
    assert "cp " not in out.stdout and "> params.yaml" not in out.stdout


@pytest.mark.slow
def test_a_profile_experiment_leaves_the_workspace_alone(tmp_path):
    """The seed stage of profiles/tiny.yaml as `make run` starts it, in a scratch git copy of the repository."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }

    def run(*cmd):
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "scratch")
    run(sys.executable, "-m", "music.pipeline.materialize")
    before = (repo / "params.yaml").read_bytes()
    args = profile_overrides(repo / "profiles" / "tiny.yaml", repo / "params.yaml", cache_dir=repo / ".cache" / "music")
    run("dvc", "exp", "run", "--temp", "-n", "tiny-seed", *[a for o in args for a in ("-S", o)], "seed")
    assert (repo / "params.yaml").read_bytes() == before
    assert run("git", "status", "--porcelain", "--untracked-files=no") == ""
    shown = json.loads(run("dvc", "exp", "show", "--json"))
    exps = [e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "tiny-seed"]
    assert exps, shown
    params = exps[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    tiny = load_params(repo / "profiles" / "tiny.yaml")
    assert params["seed"]["n_train"] == tiny.seed.n_train and params["simulate"]["turns"] == tiny.simulate.turns
    assert load_params(repo / "params.yaml").seed.n_train != tiny.seed.n_train  # the workspace kept the default
