"""music.pipeline.reproduced: a run's data outputs compared with the committed dvc.lock."""

from __future__ import annotations

import subprocess

import yaml

from music.pipeline import reproduced


def lock(**md5s) -> dict:
    return {"stages": {s: {"outs": [{"path": f"outputs/{s}", "md5": m}]} for s, m in md5s.items()}}


def test_matching_and_differing_outputs_are_told_apart():
    then = lock(seed="a", heldout="b", simulate="c", contrast="d", plots="x")
    assert all(r[1] == r[2] for r in reproduced.compare(then, then))
    now = lock(seed="a", heldout="b", simulate="c", contrast="CHANGED", plots="y")
    rows = reproduced.compare(now, then)
    assert [r[0] for r in rows if r[1] != r[2]] == ["outputs/contrast"]  # plots is not a data stage
    assert [r[0] for r in reproduced.compare(now, then, ["plots"]) if r[1] != r[2]] == ["outputs/plots"]
    missing = reproduced.compare(lock(seed="a"), then)
    assert ("heldout (not in dvc.lock)", "None", "None") not in missing
    assert ("outputs/heldout", "b", "None") in missing


def test_the_command_exits_1_when_a_data_output_moved(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, check=True)
    committed = lock(seed="a", heldout="b", simulate="c", contrast="d")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(committed))
    subprocess.run(["git", "add", "dvc.lock"], check=True)
    subprocess.run(["git", "commit", "-qm", "run"], check=True)
    assert reproduced.main([]) == 0
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock(seed="a", heldout="b", simulate="c", contrast="e")))
    assert reproduced.main([]) == 1
    assert "DIFFERS outputs/contrast" in capsys.readouterr().out
