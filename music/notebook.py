"""Run the numbered notebooks as pipeline stages, and give each notebook its typed parameters.

A stage notebook's cell tagged "parameters" holds `params_file = "params.yaml"` and `params = None`;
`python -m music.notebook STAGE` executes it with papermill from the repository root, injecting the
whole params file as the `params` dict (and `variant` for per-variant stages). Opened by hand in
JupyterLab, the same notebook reads params.yaml itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any


from music.config import Params, from_dict, load_params, read_params_file

# stage name -> notebook file (one place)
NOTEBOOKS = {
    "seed": "00_draw_seeds.ipynb",
    "simulate": "01_simulate_conversations.ipynb",
    "contrast": "02_contrast_pairs.ipynb",
    "train": "03_train_rm.ipynb",
    "evaluate": "04_evaluate_rm.ipynb",
    "best_of_n": "05_pick_best_of_n.ipynb",
    "plots": "06_plot_results.ipynb",
}
EXECUTED_DIR = "reports/notebooks"  # executed copies (change every run; nothing depends on them)


def repo_root(start: Path | None = None) -> Path:
    """The folder holding dvc.yaml (or params.yaml), searched upwards from `start` or the cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / "pyproject.toml").exists():
            return folder
    return here


def load_stage_params(params: dict | None, params_file: str = "params.yaml") -> Params:
    """In a notebook: typed params from the injected dict, else from params_file; cwd -> repo root."""
    root = repo_root()
    os.chdir(root)
    if params is not None:
        return from_dict(Params, params, f"{params_file} (injected)")
    return load_params(root / params_file)


def run_stage(stage: str, params_file: str = "params.yaml", variant: str | None = None,
              output_dir: str | Path = EXECUTED_DIR, log_output: bool = True) -> Path:
    """Execute a stage's notebook with papermill; returns the executed copy's path."""
    import papermill as pm

    if stage not in NOTEBOOKS:
        raise SystemExit(f"unknown stage {stage!r}; known: {', '.join(NOTEBOOKS)}")
    root = repo_root()
    params_path = Path(params_file)
    raw = read_params_file(params_path)  # floats as DVC writes them (2e-06) read as floats
    from_dict(Params, raw, str(params_path))  # fail fast on typos, before a kernel starts
    parameters: dict[str, Any] = {"params": raw, "params_file": str(params_path)}
    if variant is not None:
        parameters["variant"] = variant
    source = root / "notebooks" / NOTEBOOKS[stage]
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    suffix = f"_{variant}" if variant else ""
    target = out_dir / f"{source.stem}{suffix}.ipynb"
    pm.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(root),
                        log_output=log_output, progress_bar=False, kernel_name="python3")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.notebook", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(NOTEBOOKS))
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--variant", default=None, help="RM variant, for per-variant stages")
    ap.add_argument("--output-dir", default=EXECUTED_DIR)
    args = ap.parse_args(argv)
    # papermill streams each cell's output (progress bars included) through its logger
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = run_stage(args.stage, args.params, args.variant, args.output_dir)
    print(f"executed notebook: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
