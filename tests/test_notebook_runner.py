"""The stage runner's console: one line per stage, the cell log in a file, no kernel noise; config display."""

from __future__ import annotations

import dataclasses
import io
import re

import nbformat
import pytest
import yaml

from music.config import ContrastConfig, Params, SeedConfig
from music.pipeline import repro
from music.pipeline.notebooks import (
    LABEL_WIDTH,
    StageError,
    StageProgress,
    execute_notebook,
    format_duration,
    format_params,
    show_params,
    stage_label,
    stage_line,
)


# ---------------------------------------------------------------- show_params
def _plain(obj):
    """asdict() output with tuples as lists (what YAML gives back)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclasses.dataclass
class _Toy:
    name: str = "contrast"
    prompt: str = "Line one of a prompt.\nLine two, with {placeholders} and: colons."
    note: str = " ".join(["a-fairly-long-word"] * 12)  # ~220 characters, no newline
    variants: tuple = ("baseline", "music")
    ratio: float = 0.5
    path: str | None = None


def test_format_params_is_yaml_that_reads_back_the_same_values():
    for cfg in (_Toy(), SeedConfig(), ContrastConfig(), Params().train):
        text = format_params(cfg)
        assert yaml.safe_load(text) == _plain(dataclasses.asdict(cfg))


def test_format_params_wraps_at_word_boundaries_and_keeps_prompts_as_blocks():
    text = format_params(_Toy(), name="toy", width=60)
    lines = text.splitlines()
    assert lines[0] == "toy:" and lines[1].startswith("  name: contrast")
    longest = len("a-fairly-long-word")
    assert all(len(line) <= 60 + longest + 1 for line in lines)  # folded at the first space past the width
    words = [w for line in lines for w in line.replace("note:", "").split()]
    assert words.count("a-fairly-long-word") == 12  # folded between words, never inside one
    assert "  prompt: |-\n    Line one of a prompt.\n    Line two, with {placeholders} and: colons." in text
    assert "  variants: [baseline, music]" in lines


def test_show_params_prints(capsys):
    show_params(SeedConfig(n_train=3), "seed")
    out = capsys.readouterr().out
    assert out.startswith("seed:\n  source: sharegpt\n") and "  n_train: 3\n" in out


# ---------------------------------------------------------------- the stage line
def test_stage_lines_line_up():
    a, b = stage_line("seed", "done in 3 s"), stage_line(stage_label("train", "music"), "up to date")
    assert a == "seed " + "." * (LABEL_WIDTH - 4) + " done in 3 s"
    assert a.index(" done") == b.index(" up to date") and b.startswith("train@music ...")


@pytest.mark.parametrize("seconds,text", [(0.4, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3725, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_progress_off_a_terminal_prints_only_the_final_line():
    out = io.StringIO()
    p = StageProgress("seed", stream=out, live=False)
    p.start()
    p.on_notebook_start(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_markdown_cell("x")])
    )
    p.on_cell_execute(cell=None, cell_index=0)
    assert out.getvalue() == ""
    line = p.finish(ok=True)
    assert out.getvalue() == line + "\n" and line.startswith("seed ....") and line.endswith("done in 0 s")


def test_progress_on_a_terminal_redraws_one_line():
    out = io.StringIO()
    p = StageProgress("contrast", stream=out, live=True, interval=60)
    p.start()
    p.on_notebook_start(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(str(i)) for i in range(3)]))
    p.on_cell_execute(cell=None, cell_index=0)
    p.on_cell_execute(cell=None, cell_index=1)
    p.finish(ok=False)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("FAILED at cell 2/3 after 0 s\x1b[K\n")
    assert "\r" + stage_line("contrast", "cell 2/3 · 0:00") + "\x1b[K" in text


# ---------------------------------------------------------------- executing a notebook quietly
def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("params = None", metadata={"tags": ["parameters"]}),
            *(nbformat.v4.new_code_cell(s) for s in sources),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_stage_prints_one_line_and_logs_the_rest(tmp_path, capfd):
    src = _notebook(
        tmp_path / "ok.ipynb",
        "print('hello from the cell', params)",
        "import sys, os; print('to stderr', file=sys.stderr); os.write(2, b'fd-level noise\\n')",
    )
    out = tmp_path / "reports" / "ok.ipynb"
    progress = StageProgress("toy", live=False)
    assert execute_notebook(src, out, {"params": {"a": 1}}, tmp_path, progress=progress) == out
    console = capfd.readouterr()
    assert re.fullmatch(re.escape(stage_line("toy", "done in")) + r" \d+ s\n", console.out)
    assert console.err == ""  # no [IPKernelApp] warning, no papermill log, no cell output
    log = (tmp_path / "reports" / "ok.log").read_text()
    assert "hello from the cell {'a': 1}" in log and "to stderr" in log and "Executing Cell" in log
    assert "without encryption" not in log  # IPC transport: the warning is gone, not just hidden


def test_a_failing_stage_raises_with_the_log_tail_and_paths(tmp_path, capfd):
    src = _notebook(tmp_path / "bad.ipynb", "print('before the error')", "raise ValueError('the seed file is empty')")
    out = tmp_path / "reports" / "bad.ipynb"
    with pytest.raises(StageError) as info:
        execute_notebook(src, out, {}, tmp_path, progress=StageProgress("toy", live=False))
    err = info.value
    assert err.notebook == out and err.log == tmp_path / "reports" / "bad.log"
    assert "ValueError: the seed file is empty" in str(err) and str(err.log) in str(err)
    assert "\x1b[" not in str(err)  # ANSI colours stripped
    assert "FAILED at cell 3/3" in capfd.readouterr().out


# ---------------------------------------------------------------- dvc repro, one line per stage
DVC_TRANSCRIPT = """\
Verifying data sources in stage: 'data.dvc'
'data.dvc' didn't change, skipping

Stage 'seed' didn't change, skipping

Running stage 'simulate':
> python -m music.pipeline.notebooks simulate
simulate .............. done in 11 s
Updating lock file 'dvc.lock'

Running stage 'train@music':
> python -m music.pipeline.notebooks train --variant music
train@music ........... done in 29 s
Updating lock file 'dvc.lock'
Use `dvc push` to send your updates to remote storage.
ERROR: failed to reproduce 'evaluate@baseline': something DVC says
"""


def test_dvc_repro_output_becomes_one_line_per_stage():
    shown = [s for s in map(repro.rewrite, DVC_TRANSCRIPT.splitlines()) if s is not None]
    assert shown == [
        stage_line("seed", "up to date"),
        "simulate .............. done in 11 s",
        "train@music ........... done in 29 s",
        "ERROR: failed to reproduce 'evaluate@baseline': something DVC says",
    ]
