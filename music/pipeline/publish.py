"""Publish the executed notebooks of a run as a walkthrough a reader can open without running anything.

`python -m music.pipeline.publish` (the last step of `make run`) copies the executed stage notebooks from
reports/notebooks/ (papermill's copies, figures embedded as PNG) to docs/walkthrough/, cleaned so that the
same executed notebook always gives the same bytes: papermill's and the kernel's metadata (start and end
times, durations, paths) removed, cell ids numbered (papermill's injected cell gets a random one), widget
states and widget outputs dropped with their text fallbacks (progress bars: random model ids, and a bar frozen
at whatever it showed when the kernel saved it, which differs between runs and machines), the repository's
absolute path written as `.`, keys sorted. docs/walkthrough/README.md lists the
lessons in order with what is missing. GitHub renders each .ipynb with its figures.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Sequence

from music.files import atomic_path
from music.pipeline.notebooks import EXECUTED_DIR, NOTEBOOKS, repo_root

WALKTHROUGH_DIR = "docs/walkthrough"
VARIANT_STAGES = ("train", "evaluate")  # one executed copy per variant of train.variants
_WIDGET = "application/vnd.jupyter.widget-view+json"
_CELL_METADATA_KEEP = ("tags", "jupyter")  # tags (parameters, injected-parameters) and collapsed/hidden state


def executed_names(variants: Sequence[str] | None = None) -> list[str]:
    """The executed copies a full run writes, in lesson order: 00_draw_seeds.ipynb, ..., 04_train_rm_baseline.ipynb;
    one per variant (default: train.variants of params.yaml) for the train and evaluate stages."""
    if variants is None:
        from music.config import load_params

        variants = list(load_params(repo_root() / "params.yaml").train.variants)
    out = []
    for stage, notebook in NOTEBOOKS.items():
        stem = Path(notebook).stem
        out += [f"{stem}_{v}.ipynb" for v in variants] if stage in VARIANT_STAGES else [notebook]
    return out


def _scrub(value, root: str):
    """Text with the repository's absolute path written as `.` (a clone elsewhere gives the same bytes)."""
    if isinstance(value, str):
        return value.replace(root + "/", "./").replace(root, ".")
    if isinstance(value, list):
        return [_scrub(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, root) for k, v in value.items()}
    return value


def clean_notebook(nb: dict, root: str | Path | None = None) -> dict:
    """An executed notebook without what changes from run to run but its content (see the module docstring)."""
    nb = copy.deepcopy(nb)
    root = str(Path(root).resolve()) if root else None
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    nb["metadata"].get("language_info", {}).pop("version", None)  # the Python patch version of the machine
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"cell-{i:02d}"  # papermill's injected-parameters cell gets a random id on every run
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in _CELL_METADATA_KEEP}
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data is not None:
                if _WIDGET in data:
                    continue  # a widget (a progress bar) and its text fallback: run-specific, not the lesson
                out["metadata"] = {k: v for k, v in out.get("metadata", {}).items() if k != _WIDGET}
            outputs.append(_scrub(out, root) if root else out)
        cell["outputs"] = outputs
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def publish(
    source: str | Path = EXECUTED_DIR,
    target: str | Path = WALKTHROUGH_DIR,
    root: str | Path | None = None,
    variants: Sequence[str] | None = None,
) -> list[Path]:
    """Clean every executed copy found in `source` into `target` (atomically); write target/README.md. Returns
    the notebooks written."""
    root = Path(root) if root else repo_root()
    source, target = Path(source), Path(target)
    written, missing = [], []
    for name in executed_names(variants):
        path = source / name
        if not path.is_file():
            missing.append(name)
            continue
        nb = clean_notebook(json.loads(path.read_text(encoding="utf-8")), root)
        with atomic_path(target / name) as tmp:
            Path(tmp).write_text(dumps(nb), encoding="utf-8")
        written.append(target / name)
    lines = [
        "# Walkthrough: the notebooks of the committed run, executed",
        "",
        "Each lesson as the pipeline ran it (`make run`, default profile), with its outputs and figures; "
        "made by `python -m music.pipeline.publish` from reports/notebooks/. Open them here, or run them yourself "
        "in JupyterLab (`make lab`).",
        "",
    ]
    lines += [f"- [{p.stem}]({p.name})" for p in written]
    if missing:
        lines += ["", "Not executed in this run (so not here): " + ", ".join(missing)]
    with atomic_path(target / "README.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.publish", description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=EXECUTED_DIR, help=f"executed notebooks (default: {EXECUTED_DIR})")
    ap.add_argument(
        "--target", default=WALKTHROUGH_DIR, help=f"where the walkthrough goes (default: {WALKTHROUGH_DIR})"
    )
    args = ap.parse_args(argv)
    written = publish(args.source, args.target)
    print(f"walkthrough: {len(written)} executed notebooks in {args.target}/ (index: {args.target}/README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
