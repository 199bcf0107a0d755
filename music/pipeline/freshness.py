"""Are a notebook's outputs those of the current params and code? Compare with dvc.lock and say so.

Opened by hand (`run = False`) a stage notebook shows the outputs already on disk. `show(stage)` asks DVC
(`dvc status STAGE`, in process) whether they are still what dvc.lock recorded for the current params,
code and inputs; when they are not it shows a banner naming what changed and the command that brings
them up to date. After `run = True` it lists what the notebook wrote and says that dvc.lock now lags
(`dvc commit STAGE` records it), except under `dvc repro`, which records the stage itself.

Nothing here raises: without DVC, a dvc.lock or a record of the stage, the check says it could not tell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import os
from pathlib import Path

import yaml

from music.pipeline.dvc_file import entry_paths, load_stages
from music.pipeline.notebooks import NOTEBOOKS

BANNER_CLASS = "music-stale-banner"  # tests/test_browser.py fails on a banner where none should be
_MISSING = ("deleted", "not in cache")


@dataclasses.dataclass
class Freshness:
    stage: str  # as DVC addresses it: "train@music"
    state: str  # "current" | "stale" (params, code or inputs changed) | "changed" (only outputs differ)
    #             | "notebook" (only the notebook file changed: saved outputs or edits) | "unknown"
    params: list[str] = dataclasses.field(default_factory=list)  # "simulate.turns"
    deps: list[str] = dataclasses.field(default_factory=list)  # "music/stages/simulate.py (modified)"
    outs: list[str] = dataclasses.field(default_factory=list)  # "outputs/conversations (deleted)"
    reason: str = ""  # why the state is unknown

    def message(self) -> str:
        s = self.stage
        if self.state == "current":
            return f"Outputs of `{s}` are up to date with dvc.lock (same params, code and inputs)."
        if self.state == "unknown":
            return f"Could not compare the outputs of `{s}` with dvc.lock: {self.reason}."
        if self.state == "notebook":
            return (
                f"The outputs of `{s}` match dvc.lock's params and inputs; only this notebook's file changed since "
                f"(saving it stores its outputs, or it was edited), so `dvc status` lists `{s}` and `dvc repro` would "
                f"rerun it. `git checkout {self.deps[0].split(' ')[0]}` undoes a change you did not mean."
            )
        lines = []
        if self.state == "stale":
            lines.append(
                f"OUT OF DATE: the outputs shown below were made from other params, code or inputs than "
                f"the current ones (dvc.lock, stage `{s}`)."
            )
            if self.params:
                lines.append("changed params: " + ", ".join(self.params))
            if self.deps:
                lines.append("changed code and inputs: " + ", ".join(self.deps))
            if self.outs:
                lines.append("changed outputs: " + ", ".join(self.outs))
            lines.append(
                f"Bring them up to date: `dvc repro {s}` (it reruns this stage and any stale stage before it), "
                f"or set `run = True` in the parameters cell, run the notebook, then `dvc commit {s}`."
            )
        else:
            lines.append(f"The outputs of `{s}` differ from what dvc.lock recorded: " + ", ".join(self.outs) + ".")
            if any(o.endswith(f"({m})") for o in self.outs for m in _MISSING):
                lines.append(
                    f"Missing outputs: `dvc pull` (or `dvc checkout {s}`) restores them; `dvc repro {s}` remakes them."
                )
            else:
                lines.append(
                    f"Written by hand? `dvc commit {s}` records them; `dvc checkout {s}` restores the recorded ones."
                )
        return "\n".join(lines)


def _dvc_status(root: Path, address: str) -> dict:
    """`dvc status ADDRESS` as a dict (DVC's own hashing), run from the repository root (DVC resolves outputs
    against the working directory), DVC's log kept off stderr."""
    from dvc.repo import Repo

    quiet = logging.getLogger("dvc")
    saved = quiet.level, quiet.propagate, list(quiet.handlers)
    quiet.handlers, quiet.propagate = [logging.NullHandler()], False
    quiet.setLevel(logging.CRITICAL)
    try:
        with contextlib.chdir(root), contextlib.redirect_stderr(open(os.devnull, "w")) as sink, Repo(str(root)) as repo:
            try:
                return repo.status(targets=[address])
            finally:
                sink.close()
    finally:
        quiet.setLevel(saved[0])
        quiet.propagate, quiet.handlers = saved[1], saved[2]


def _locked(root: Path, address: str) -> bool:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return False
    return address in ((yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {})


def check(stage: str, variant: str | None = None, root: str | Path | None = None) -> Freshness:
    """Compare the stage's outputs with dvc.lock (see the module docstring)."""
    from music.pipeline.notebooks import repo_root

    root = Path(root) if root else repo_root()
    address = f"{stage}@{variant}" if variant else stage
    if not (root / ".dvc").is_dir():
        return Freshness(address, "unknown", reason=f"{root} is not a DVC repository")
    if not _locked(root, address):
        return Freshness(address, "unknown", reason="dvc.lock has no record of this stage yet (`dvc repro` writes it)")
    try:
        status = _dvc_status(root, address)
    except Exception as exc:  # a broken dvc.yaml, a DVC without git, ...: say so, never stop the lesson
        return Freshness(address, "unknown", reason=f"`dvc status {address}` failed ({type(exc).__name__}: {exc})")
    out = Freshness(address, "current")
    for entry in status.get(address, []):
        if isinstance(entry, str):  # "changed command", "always changed"
            out.deps.append(entry)
            continue
        for path, change in (entry.get("changed deps") or {}).items():
            if isinstance(change, dict):  # a params file: {key: "modified"}
                out.params += [f"{k} ({v})" if v != "modified" else k for k, v in change.items()]
            else:
                out.deps.append(f"{path} ({change})")
        out.outs += [f"{p} ({c})" for p, c in (entry.get("changed outs") or {}).items()]
    notebook = f"notebooks/{NOTEBOOKS.get(stage, '')}"
    if out.deps == [f"{notebook} (modified)"] and not out.params and not out.outs:
        out.state = "notebook"  # saving the notebook in JupyterLab stores its outputs: DVC counts that as a change
    elif out.params or out.deps:
        out.state = "stale"
    elif out.outs:
        out.state = "changed"
    return out


def stage_outs(stage: str, variant: str | None = None, root: str | Path | None = None) -> list[str]:
    """The outputs (outs and metrics) dvc.yaml lists for a stage."""
    from music.pipeline.notebooks import repo_root

    root = Path(root) if root else repo_root()
    spec = load_stages(root)[f"{stage}@{variant}" if variant else stage]
    return entry_paths(spec, "outs") + entry_paths(spec, "metrics")


def written_message(stage: str, variant: str | None = None, root: str | Path | None = None) -> str:
    """After `run = True`: what the notebook wrote, and how dvc.lock learns about it."""
    address = f"{stage}@{variant}" if variant else stage
    try:
        outs = ", ".join(f"`{o}`" for o in stage_outs(stage, variant, root))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        outs = "its outputs"
    if os.environ.get("DVC_STAGE"):  # running under `dvc repro`: DVC records the outputs when the stage ends
        return (
            f"This run wrote the stage's outputs ({outs}); `dvc repro` records them in dvc.lock when `{address}` ends."
        )
    return (
        f"This run wrote the stage's outputs (dvc.yaml: {outs}). dvc.lock now lags behind them: "
        f"`dvc status` reports `{address}` as changed until "
        f"`dvc commit {address}` records these outputs (or `dvc repro {address}` remakes and records them)."
    )


def _html(text: str, stale: bool) -> str:
    body = "<br>".join(html.escape(line).replace("`", "") for line in text.splitlines())
    if stale:
        return (
            f"<div class='{BANNER_CLASS}' style='background:#fff7ed;border:2px solid #ea580c;border-radius:6px;"
            f"padding:8px 12px;margin:6px 0;font-family:sans-serif;font-size:13px'>{body}</div>"
        )
    return f"<div style='color:#4b5563;font-family:sans-serif;font-size:12px;margin:4px 0'>{body}</div>"


def show(stage: str, variant: str | None = None, run: bool = False, root: str | Path | None = None) -> Freshness | None:
    """In a stage notebook, after its expensive cell: with run=True, what was written and that dvc.lock lags;
    otherwise the freshness check, as a banner when the outputs are out of date (plain text outside a notebook)."""
    if run:
        text, stale, result = written_message(stage, variant, root), False, None
    else:
        result = check(stage, variant, root)
        text, stale = result.message(), result.state in ("stale", "changed")
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(HTML(_html(text, stale)))
    else:
        print(text)
    return result
