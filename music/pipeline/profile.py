"""Apply a profile (profiles/*.yaml) as a DVC experiment, without rewriting the tracked params.yaml.

    python -m music.pipeline.profile profiles/paper.yaml [--base params.yaml] [--cache-dir DIR]

prints the `--set-param` arguments that turn `--base` into the profile, for

    # what `make run PARAMS=...` runs:
    dvc exp run --temp -n paper $(python -m music.pipeline.profile profiles/paper.yaml)

The experiment runs in a temporary copy of the repository and is saved as a DVC experiment
(`dvc exp show`; `dvc exp apply NAME` or `dvc exp branch NAME BRANCH` to take its results); the
workspace, params.yaml included, is left as it was. Both files are resolved through music.config
first (a profile states only what differs from the defaults), then compared leaf by leaf: changed
values become `++key=value`, keys only the base has (inside free-form maps such as
evaluate.local_sets) become `~key`. The result is checked by applying the arguments with DVC's own
Hydra machinery to a copy of the base and comparing. `--cache-dir` makes a relative paths.cache
absolute, so experiments share the workspace's response cache and resume checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from music.config import load_params


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):  # Hydra reads 2e-06 as a string; 2.0e-06 is a float
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as a Hydra override")


def diff_overrides(base: dict, target: dict, prefix: str = "") -> list[str]:
    """Hydra overrides that turn `base` into `target` (both plain dicts)."""
    out: list[str] = []
    for key in base:
        if key not in target:
            out.append(f"~{prefix}{key}")
    for key, value in target.items():
        path = f"{prefix}{key}"
        old = base.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict) and value:
            out += diff_overrides(old, value, f"{path}.")
        elif old is _MISSING or old != value or isinstance(old, bool) != isinstance(value, bool):
            if isinstance(old, dict) and isinstance(value, dict):  # an emptied map: replace it whole
                out += [f"~{path}", f"++{path}={{}}"]
            else:
                out.append(f"++{path}={hydra_value(value)}")
    return out


_MISSING = object()


def profile_overrides(
    profile: str | Path, base: str | Path = "params.yaml", cache_dir: str | Path | None = None
) -> list[str]:
    target = dataclasses.asdict(load_params(profile))
    if cache_dir is not None and not Path(target["paths"]["cache"]).is_absolute():
        target["paths"]["cache"] = str(Path(cache_dir).resolve())
    overrides = diff_overrides(dataclasses.asdict(load_params(base)), target)
    check_overrides(base, overrides, target)
    return overrides


def check_overrides(base: str | Path, overrides: list[str], target: dict) -> None:
    """Apply `overrides` to a copy of `base` as `dvc exp run -S` would; it must give `target`."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(base, copy)
        if overrides:
            apply_overrides(copy, overrides)
        got = dataclasses.asdict(load_params(copy))
    if got != target:
        bad = sorted(k for k in target if got.get(k) != target[k])
        raise AssertionError(f"the overrides do not reproduce the profile (sections {bad} differ)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.profile", description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--base", default="params.yaml")
    ap.add_argument("--cache-dir", default=None, help="make a relative paths.cache absolute under this folder")
    args = ap.parse_args(argv)
    overrides = profile_overrides(args.profile, args.base, args.cache_dir)
    print(" ".join(f"-S {shlex.quote(o)}" for o in overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
