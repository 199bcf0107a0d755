"""Comparing runs the way DVC users do: an experiment on the tiny profile, in a temporary repository, must
show numbers (not `!`) for the committed run and the experiment in `dvc exp show`, and `dvc metrics diff` and
`dvc plots diff` must work between them. Slow: the tiny pipeline runs twice (about 5 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

pytestmark = pytest.mark.slow


def _sh(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, (
        f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _project_copy(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files), plus data/."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if (REPO / "data").is_dir():
        shutil.copytree(REPO / "data", dest / "data")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    if not (REPO / "data" / "mtbench").is_dir():
        pytest.skip("data/ is not materialised (make data)")
    root = tmp_path_factory.mktemp("exp") / "repo"
    root.mkdir()
    _project_copy(root)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    # the default params with the tiny profile's values: the stages read params.yaml
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in yaml.safe_load((root / "profiles" / "tiny.yaml").read_text()).items():
        params[section] = {**params.get(section, {}), **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny"],
        [sys.executable, "-m", "dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny run: dvc.lock, metrics and plot data"],
    ):
        _sh(cmd, root, env)
    _sh([sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "longer", "-S", "train.max_steps=3"], root, env)
    return root, env


def test_exp_show_has_numbers_for_main_and_the_experiment(experiment):
    root, env = experiment
    rows = json.loads(_sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env).stdout)

    def headline(entry):
        data = entry["data"]
        assert not data.get("error"), data.get("error")
        metrics = data["metrics"]["outputs/metrics/summary.json"]["data"]
        return metrics

    base = headline(rows[0])  # the workspace / HEAD
    exps = [e for r in rows for e in (r.get("experiments") or []) for e in e.get("revs", [])]
    assert exps, rows
    exp = headline(exps[0])
    for m in (base, exp):
        assert isinstance(m["last"]["baseline"], (int, float)) and isinstance(m["last"]["diff"], (int, float))
    table = _sh(
        [sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--no-pager"], root, {**env, "COLUMNS": "160"}
    ).stdout
    assert "!" not in table.replace("!=", "")  # no metric missing for any row
    assert max(len(line) for line in table.splitlines()) <= 160


def test_metrics_and_plots_diff_between_main_and_the_experiment(experiment):
    root, env = experiment
    diff = _sh([sys.executable, "-m", "dvc", "metrics", "diff", "main", "longer", "--all", "--json"], root, env)
    both = json.loads(diff.stdout)["outputs/metrics/summary.json"]  # --all: unchanged numbers too
    assert isinstance(both["last.baseline"]["old"], (int, float)) and isinstance(
        both["last.baseline"]["new"], (int, float)
    )
    out = root / "plots_diff"
    _sh([sys.executable, "-m", "dvc", "plots", "diff", "main", "longer", "-o", str(out)], root, env)
    assert (out / "index.html").is_file()
    text = (out / "index.html").read_text()
    assert "reward_trajectory" in text and "training_loss" in text
