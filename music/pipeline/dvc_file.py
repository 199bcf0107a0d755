"""dvc.yaml as DVC runs it: `foreach` stages expanded (`train@baseline`) and `${…}` resolved from params.yaml.

dvc.yaml names its paths once, through `${paths.…}` (params.yaml's `paths` section), and per-variant stages
through `${item}`; the freshness check and the tests read the stages through here, so they see the same
paths DVC does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from music.config import read_params_file

_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def resolve(value: Any, variables: dict) -> Any:
    """`value` with every `${a.b}` replaced by variables["a"]["b"] (strings, lists and mappings, recursively)."""
    if isinstance(value, str):

        def lookup(match: re.Match) -> str:
            node: Any = variables
            for part in match.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(f"dvc.yaml: ${{{match.group(1)}}} is not defined in params.yaml")
                node = node[part]
            return str(node)

        return _VAR.sub(lookup, value)
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if isinstance(value, dict):
        return {resolve(k, variables): resolve(v, variables) for k, v in value.items()}
    return value


def expand_stages(dvc: dict, params: dict) -> dict[str, dict]:
    """Stage name ("train@baseline" for foreach stages) -> its spec with every `${…}` resolved."""
    out = {}
    for name, spec in dvc["stages"].items():
        if "foreach" in spec:
            for item in spec["foreach"]:
                text = json.dumps(spec["do"]).replace("${item}", str(item))
                out[f"{name}@{item}"] = resolve(json.loads(text), params)
        else:
            out[name] = resolve(spec, params)
    return out


def load_stages(root: str | Path, params_file: str = "params.yaml") -> dict[str, dict]:
    """The stages of {root}/dvc.yaml, resolved with {root}/{params_file} (see expand_stages)."""
    root = Path(root)
    dvc = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    params = read_params_file(root / params_file) if (root / params_file).exists() else {}
    return expand_stages(dvc, params)


def entry_paths(spec: dict, key: str) -> list[str]:
    """The paths listed under deps / outs / metrics / plots of a stage (entries may be {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in spec.get(key, [])]
