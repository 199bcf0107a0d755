"""`dvc repro` with one console line per stage: `python -m music.pipeline.repro [dvc repro arguments]`.

DVC itself prints four or five lines per stage ("Running stage 'seed':", the command, "Updating lock
file", "Use `dvc push` ..."); each stage's runner (music.pipeline.notebooks) prints its own line. This wrapper
runs `dvc repro`, keeps the runners' lines, turns "Stage 'x' didn't change, skipping" into
`x ........ up to date`, and drops DVC's other routine lines. Anything it does not recognise (errors,
warnings; DVC's and the stages' stderr come through the same pipe) passes through unchanged, and it
exits with dvc's exit status. On a terminal the stage
lines are redrawn live (MUSIC_PROGRESS=live tells the runners, whose stdout is then this pipe).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from music.pipeline.notebooks import PROGRESS_ENV, stage_line

_SKIPPED = re.compile(r"^(?:Stage )?'([^']+)' didn't change, skipping$")
_DROP = [
    re.compile(r"^Running stage '[^']+':$"),
    re.compile(r"^> .*"),  # the stage's command
    re.compile(r"^Updating lock file '[^']+'$"),
    re.compile(r"^Verifying data sources in stage: '[^']+'$"),
    re.compile(r"^Use `dvc push` to send your updates to remote storage\.$"),
    re.compile(r"^\s*$"),
]


def rewrite(line: str) -> str | None:
    """One line of dvc repro's output -> what the console shows (None: nothing)."""
    m = _SKIPPED.match(line)
    if m:
        if m.group(1).endswith(".dvc"):  # a data source (data.dvc), not a stage
            return None
        return stage_line(m.group(1), "up to date")
    if any(p.match(line) for p in _DROP):
        return None
    return line


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if sys.stdout.isatty():
        env[PROGRESS_ENV] = "live"
    # stderr into the same pipe: DVC then draws none of its transient progress bars, and errors
    # keep their place among the stage lines
    proc = subprocess.Popen(["dvc", "repro", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = sys.stdout.buffer
    pending = b""
    assert proc.stdout is not None
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            text = raw.decode("utf-8", errors="replace")
            shown = text if "\r" in text else rewrite(text)  # a redrawn progress line: as is
            if shown is not None:
                out.write(shown.encode("utf-8") + b"\n")
        if b"\r" in pending:  # a progress line being redrawn: show it now, not at its newline
            out.write(pending)
            pending = b""
        out.flush()
    if pending:
        out.write(pending)
        out.flush()
    return proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
