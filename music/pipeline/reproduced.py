"""Did a run reproduce the committed data? Compare the output hashes that dvc.lock records now with those of a
git revision (default HEAD, the committed run), for the stages whose outputs are data.

    python -m music.pipeline.reproduced [--rev HEAD] [--stages seed heldout simulate contrast]

The generation stages' outputs (seeds, held-out items, conversations, pairs) are meant to be the same bytes on
any CPU: generation is seeded and greedy choices do not depend on the last bits, and the floats they store are
rounded to what they mean (music.stages.contrast.STORED_DECIMALS); run this after a fresh clone's `make run` to
check it on your machine. Trained weights and the scores computed from them may differ in their last bits
between CPU types, so the train and evaluate stages are not checked by default. Exit 0 when every checked output
matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

DATA_STAGES = ("seed", "heldout", "simulate", "contrast")


def output_hashes(lock: dict, stages: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """{output path: its md5 in `lock` (a parsed dvc.lock)} for the outs of `stages` (a stage missing there adds
    nothing: its outputs then show as None beside the other lock's hashes)."""
    out: dict[str, str | None] = {}
    for stage in stages:
        spec = lock.get("stages", {}).get(stage) or {}
        for entry in spec.get("outs", []):
            out[entry["path"]] = entry.get("md5")
    return out


def compare(now: dict, then: dict, stages: tuple[str, ...] | list[str] = DATA_STAGES) -> list[tuple[str, str, str]]:
    """(path, committed md5, current md5) of every checked output; they match where the two are equal."""
    a, b = output_hashes(then, stages), output_hashes(now, stages)
    return [(path, str(a.get(path)), str(b.get(path))) for path in sorted(set(a) | set(b))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.reproduced", description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="the git revision whose dvc.lock holds the committed run")
    ap.add_argument("--stages", nargs="+", default=list(DATA_STAGES), help="stages whose outputs to check")
    ap.add_argument("--lock", default="dvc.lock", help="the current dvc.lock (default: ./dvc.lock)")
    args = ap.parse_args(argv)
    now = yaml.safe_load(Path(args.lock).read_text(encoding="utf-8"))
    shown = subprocess.run(["git", "show", f"{args.rev}:dvc.lock"], capture_output=True, text=True, check=True)
    rows = compare(now, yaml.safe_load(shown.stdout), args.stages)
    differ = [r for r in rows if r[1] != r[2]]
    for path, then, current in rows:
        print(f"{'same   ' if then == current else 'DIFFERS'} {path:<28} {args.rev}: {then}  now: {current}")
    print(f"{len(rows) - len(differ)} of {len(rows)} outputs as committed at {args.rev}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
