"""Stale outputs flagged: music.pipeline.freshness compares a stage's outputs with dvc.lock (a real DVC repo, one
stage)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from music.pipeline import freshness

STAGE = {
    "cmd": f"{sys.executable} make.py",
    "deps": ["make.py", "input.txt"],
    "params": ["step.turns"],
    "outs": ["out"],
}
MAKE = (
    "import yaml, pathlib\np = yaml.safe_load(open('params.yaml'))\npathlib.Path('out').mkdir(exist_ok=True)\n"
    "pathlib.Path('out/result.txt').write_text(open('input.txt').read() * p['step']['turns'])\n"
)


def _dvc(root, *args):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    (tmp_path / "make.py").write_text(MAKE)
    (tmp_path / "input.txt").write_text("x")
    (tmp_path / "params.yaml").write_text("step:\n  turns: 3\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"simulate": STAGE}}))
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")
    return tmp_path


def test_fresh_outputs_are_current(repo):
    result = freshness.check("simulate", root=repo)
    assert result.state == "current", result
    assert "up to date" in result.message()


def test_a_changed_param_makes_the_outputs_stale_and_names_the_command(repo):
    (repo / "params.yaml").write_text("step:\n  turns: 2\n")
    result = freshness.check("simulate", root=repo)
    assert result.state == "stale" and result.params == ["step.turns"], result
    assert "OUT OF DATE" in result.message() and "`dvc repro simulate`" in result.message()
    assert freshness.BANNER_CLASS in freshness._html(result.message(), stale=True)


def test_changed_code_is_stale_too(repo):
    (repo / "make.py").write_text(MAKE + "# changed\n")
    result = freshness.check("simulate", root=repo)
    assert result.state == "stale" and result.deps == ["make.py (modified)"], result


def test_outputs_written_by_hand_say_how_to_record_them(repo):
    (repo / "out" / "result.txt").write_text("by hand")
    result = freshness.check("simulate", root=repo)
    assert result.state == "changed" and result.outs, result
    assert "dvc commit simulate" in result.message()


def test_without_dvc_or_a_record_the_check_says_it_cannot_tell(tmp_path, repo):
    assert freshness.check("simulate", root=tmp_path / "elsewhere").state == "unknown"
    (repo / "dvc.lock").unlink()
    result = freshness.check("simulate", root=repo)
    assert result.state == "unknown" and "no record" in result.message()


def test_after_run_the_notebook_lists_what_it_wrote_and_that_dvc_lock_lags(repo, monkeypatch):
    text = freshness.written_message("simulate", root=repo)
    assert "`out`" in text and "dvc.lock now lags" in text and "dvc commit simulate" in text
    monkeypatch.setenv("DVC_STAGE", "simulate")
    assert "lags" not in freshness.written_message("simulate", root=repo)


def test_show_prints_outside_a_notebook(repo, capsys):
    (repo / "params.yaml").write_text("step:\n  turns: 4\n")
    assert freshness.show("simulate", root=repo).state == "stale"
    captured = capsys.readouterr()
    assert "OUT OF DATE" in captured.out and captured.err == ""


def test_foreach_stage_outputs_are_listed_per_variant():
    assert freshness.stage_outs("train", "music") == ["outputs/models/music"]
    assert "outputs/metrics/summary.json" in freshness.stage_outs("plots")


def test_a_notebook_saved_with_outputs_is_not_called_out_of_date(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    (tmp_path / "notebooks").mkdir()
    nb = tmp_path / "notebooks" / "02_simulate_conversations.ipynb"
    nb.write_text("{}")
    (tmp_path / "make.py").write_text(MAKE)
    (tmp_path / "input.txt").write_text("x")
    (tmp_path / "params.yaml").write_text("step:\n  turns: 3\n")
    stage = dict(STAGE, deps=[*STAGE["deps"], "notebooks/02_simulate_conversations.ipynb"])
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"simulate": stage}}))
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")
    nb.write_text('{"saved": "with outputs"}')
    result = freshness.check("simulate", root=tmp_path)
    assert result.state == "notebook" and "OUT OF DATE" not in result.message(), result
    (tmp_path / "params.yaml").write_text("step:\n  turns: 5\n")
    assert freshness.check("simulate", root=tmp_path).state == "stale"
