"""Each stage's measured wall time and the units it processed, and planned vs measured per stage.

The notebook runner (music.pipeline.notebooks) calls `record` after a stage's notebook ran: it writes
{paths.reports}/timings/<stage>[@variant].json with the wall seconds and units read from the stage's own
outputs (seeds, requests, pairs, steps, scorings, games): nothing in a stage module changes for it.
reports/ is git-ignored, so run-specific timings never reach a commit.

    python -m music.pipeline.plan --compare       # planned (outputs/plan.json) vs measured, per stage

prints one row per stage with the ratio planned / measured, so a cost model that drifts shows at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

TIMINGS_DIR = "timings"
# the stages the planner estimates, in pipeline order; per-variant stages are summed over their variants
STAGES = ("seed", "heldout", "simulate", "contrast", "train", "evaluate", "best_of_n", "plots")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _split_rows(folder: Path) -> int | None:
    """Rows of a saved datasets folder (state.json's shards are not counted: dataset_info has no row count)."""
    info = _read(folder / "dataset_info.json")
    if isinstance(info, dict):
        for split in (info.get("splits") or {}).values():
            if isinstance(split, dict) and "num_examples" in split:
                return int(split["num_examples"])
    return None


def stage_units(stage: str, variant: str | None, paths: Any) -> dict:
    """What a stage processed, read from its own outputs after it ran (missing files: left out)."""
    units: dict[str, Any] = {}
    if stage == "seed":
        st = _read(Path(paths.seeds) / "stats.json") or {}
        units = {k: st[k] for k in ("train_seeds", "eval_seeds", "eval_conversations") if k in st}
    elif stage == "heldout":
        rep = _read(Path(paths.heldout) / "heldout_report.json") or {}
        units = dict(rep.get("counts") or {})
        d = (rep.get("failures") or {}).get("d_eval") or {}
        mt = ((rep.get("quality_eval") or {}).get("mtbench")) or {}
        units["assistant_requests"] = int(d.get("units", 0)) + 2 * (
            int(mt.get("kept_questions", 0)) + int(mt.get("failed", 0))
        )
    elif stage == "simulate":
        rep = _read(Path(paths.conversations) / "failure_report.json") or {}
        units = {f"conversations_{k}": v.get("units") for k, v in rep.items() if isinstance(v, dict)}
    elif stage == "contrast":
        rep = _read(Path(paths.pairs) / "filter_report.json") or {}
        for name, s in (rep.get("splits") or {}).items():
            units[f"{name}_candidates"] = s.get("candidates")
            units[f"{name}_kept"] = s.get("kept")
    elif stage == "train" and variant:
        steps = 0
        seeds = 0
        for f in sorted((Path(paths.models) / variant).glob("seed*/train_metrics.json")):
            m = _read(f) or {}
            steps += int(m.get("steps") or 0)
            seeds += 1
        units = {"seeds": seeds, "steps": steps}
    elif stage == "evaluate" and variant:
        info = _read(Path(paths.evaluation) / variant / "info.json") or {}
        items = sum(
            int(v.get("items", 0))
            for by_d in (info.get("truncation") or {}).values()
            for v in (by_d or {}).values()
            if isinstance(v, dict)
        )
        units = {"items": items, "seeds": len(info.get("seeds") or [])}
    elif stage == "best_of_n":
        m = _read(Path(paths.metrics) / "best_of_n.json") or {}
        by_n = m.get("by_n") or {}
        units = {
            "games": sum(int(v.get("n_games", 0)) for v in by_n.values()),
            "judge_calls": sum(int(v.get("n_judge_calls", 0)) for v in by_n.values()),
            "rm_loads": m.get("rm_loads"),
        }
    elif stage == "plots":
        units = {"figures": len(list(Path(paths.figures).glob("*.png")))}
    return {k: v for k, v in units.items() if v is not None}


def timing_file(reports: str | Path, stage: str, variant: str | None = None) -> Path:
    return Path(reports) / TIMINGS_DIR / (f"{stage}@{variant}.json" if variant else f"{stage}.json")


def record(stage: str, variant: str | None, seconds: float, params_file: str | Path = "params.yaml") -> Path | None:
    """Write the stage's wall time and units to {paths.reports}/timings/; never fails the stage (returns None)."""
    try:
        from music.config import load_params

        params = load_params(params_file)
        paths = params.paths
        reports = getattr(paths, "reports", None) or "reports"
        try:
            units = stage_units(stage, variant, paths)
        except Exception:  # noqa: BLE001 - units are a bonus; the wall time is what matters
            units = {}
        path = timing_file(reports, stage, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "stage": stage,
            "variant": variant,
            "wall_s": round(float(seconds), 2),
            "units": units,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "params_file": str(params_file),
        }
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path
    except Exception:  # noqa: BLE001 - recording must never fail a stage that succeeded
        return None


def measured(reports: str | Path) -> dict[str, dict]:
    """stage -> {"wall_s": summed over variants, "parts": {label: wall_s}, "units": {...}} from the recorded files."""
    out: dict[str, dict] = {}
    for f in sorted((Path(reports) / TIMINGS_DIR).glob("*.json")):
        d = _read(f)
        if not isinstance(d, dict) or "wall_s" not in d:
            continue
        stage = d.get("stage") or f.stem.split("@")[0]
        entry = out.setdefault(stage, {"wall_s": 0.0, "parts": {}, "units": {}})
        entry["wall_s"] += float(d["wall_s"])
        label = f"{stage}@{d['variant']}" if d.get("variant") else stage
        entry["parts"][label] = float(d["wall_s"])
        for k, v in (d.get("units") or {}).items():
            if isinstance(v, (int, float)):
                entry["units"][k] = entry["units"].get(k, 0) + v
    return out


def compare(plan: dict, measured_by_stage: dict[str, dict]) -> list[dict]:
    """Rows stage, planned_s, measured_s, ratio (planned / measured) for every stage with both numbers, then a
    total over those stages."""
    hours = plan.get("hours") or {}
    rows = []
    for stage in STAGES:
        h = hours.get(stage)
        m = measured_by_stage.get(stage)
        if h is None or not m:
            continue
        planned, wall = h * 3600, m["wall_s"]
        rows.append(
            {
                "stage": stage,
                "planned_s": planned,
                "measured_s": wall,
                "ratio": planned / wall if wall > 0 else None,
                "parts": len(m["parts"]),
            }
        )
    if rows:
        p, w = sum(r["planned_s"] for r in rows), sum(r["measured_s"] for r in rows)
        rows.append({"stage": "total", "planned_s": p, "measured_s": w, "ratio": p / w if w else None, "parts": 0})
    return rows


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def render_comparison(rows: list[dict], low: float = 0.67, high: float = 1.5) -> str:
    if not rows:
        return "no measured stage timings to compare (a stage run records them under {paths.reports}/timings/)"
    lines = [f"{'stage':<10}  {'planned':>12}  {'measured':>12}  {'planned/measured':>16}"]
    for r in rows:
        ratio = r["ratio"]
        flag = "" if ratio is None or r["stage"] == "total" or low <= ratio <= high else "  <- outside"
        lines.append(
            f"{r['stage']:<10}  {_dur(r['planned_s']):>12}  {_dur(r['measured_s']):>12}  "
            f"{('?' if ratio is None else f'{ratio:.2f}x'):>16}{flag}"
        )
    return "\n".join(lines)
