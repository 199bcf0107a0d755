"""Execute the stage notebooks in order through papermill on the tiny profile (as `dvc repro` does).

The module-scoped `pipeline` fixture runs every stage once, in dvc.yaml's order; each test asks for it and
reads what the stages wrote, so no test depends on another having run first (select any with -k).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, dvc_stages, image_outputs, missing_read_deps, unrendered_figures

from music.config import Params, Paths
from music.pipeline.notebooks import run_notebook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile with every output path moved into a temporary folder."""
    root = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    params["paths"] = {name: str(root / name) for name in Paths.__dataclass_fields__}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return {"root": root, "params_file": params_file, "paths": params["paths"]}


def assert_figures_drawn(executed: Path, at_least: int) -> None:
    """The executed copy shows its figures as images (not `<Figure size ...>` text)."""
    nb = json.loads(Path(executed).read_text(encoding="utf-8"))
    assert unrendered_figures(nb) == [], f"{executed}: figures printed as text"
    assert image_outputs(nb) >= at_least, f"{executed}: {image_outputs(nb)} images, expected {at_least} or more"


def run(tiny, stage, variant=None):
    """Run one stage; its kernel logs every file it reads (tests/trace_reads) for the deps check below."""
    reads = tiny["root"] / "reads"
    reads.mkdir(exist_ok=True)
    env = {
        "MUSIC_TRACE_READS": str(reads / (f"{stage}@{variant}" if variant else stage)),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "tests" / "trace_reads"), os.environ.get("PYTHONPATH")])
        ),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_notebook(
            stage, str(tiny["params_file"]), variant=variant, output_dir=tiny["root"] / "executed", log_output=False
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


VARIANTS = ("baseline", "music", "control")  # dvc.yaml's foreach of train and evaluate
# every DVC stage, each after the stages whose outputs it reads (the order `dvc repro` runs them in)
STAGES = [
    ("seed", None),
    ("heldout", None),
    ("simulate", None),
    ("contrast", None),
    *(("train", v) for v in VARIANTS),
    *(("evaluate", v) for v in VARIANTS),
    ("best_of_n", None),
    ("plots", None),
]


@pytest.fixture(scope="module")
def pipeline(tiny) -> dict[str, Path]:
    """The whole pipeline run once on the tiny profile: DVC stage name ("seed", "train@music", ...) -> its
    executed notebook. A stage that fails stops the run: every test that asks for the fixture reports it."""
    done, wall = {}, tiny.setdefault("wall_s", {})
    for stage, variant in STAGES:
        started = time.monotonic()
        done[f"{stage}@{variant}" if variant else stage] = run(tiny, stage, variant)
        wall[stage] = wall.get(stage, 0.0) + time.monotonic() - started
    return done


def test_planned_stage_times_within_a_generous_bound_of_measured(tiny, pipeline):
    """The planner's reference cost model against this run's stage times: a broken model fails, not a timing."""
    from music.config import load_params
    from music.pipeline.plan import make_plan
    from music.pipeline.timings import compare

    plan = make_plan(load_params(tiny["params_file"]))
    rows = compare(plan, {s: {"wall_s": w, "parts": {s: w}} for s, w in tiny["wall_s"].items()})
    assert len(rows) == len(tiny["wall_s"]) + 1, rows
    assert all(0.1 <= r["ratio"] <= 10 for r in rows), rows


def test_seed(tiny, pipeline):
    stats = json.loads((tiny["root"] / "seeds" / "stats.json").read_text())
    assert stats["train_seeds"] == 4 and stats["eval_seeds"] == 2


def test_heldout(tiny, pipeline):
    report = json.loads((tiny["root"] / "heldout" / "heldout_report.json").read_text())
    from music.evaluate.heldout_items import read_swap_items
    from music.store import load_records

    d_eval = load_records(tiny["root"] / "heldout" / "d_eval")
    assert d_eval and all(r["kind"] == "d" for r in d_eval)
    assert report["counts"]["quality_eval"] == len(load_records(tiny["root"] / "heldout" / "quality_eval")) > 0
    assert len(read_swap_items(tiny["root"] / "heldout" / "swap_eval.jsonl")) == report["counts"]["swap_eval"] > 0


def test_simulate(tiny, pipeline):
    from music.store import load_records

    convs = load_records(tiny["root"] / "conversations" / "train")
    assert len(convs) == 4


def test_contrast(tiny, pipeline):
    report = json.loads((tiny["root"] / "pairs" / "filter_report.json").read_text())
    assert report  # the filter table exists
    from music.store import load_records

    d_train = load_records(tiny["root"] / "pairs" / "d_train")
    assert d_train and all(r["kind"] == "d" for r in d_train)
    music_train = load_records(tiny["root"] / "pairs" / "music_train")
    assert music_train, f"every MUSIC pair was filtered out: {report}"
    assert all(r["chosen"] != r["rejected"] and r["divergence_turn"] for r in music_train)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train(tiny, pipeline, variant):
    assert_figures_drawn(pipeline[f"train@{variant}"], 1)
    for seed in (0, 1):  # the tiny profile trains two seeds
        metrics = json.loads((tiny["root"] / "models" / variant / f"seed{seed}" / "train_metrics.json").read_text())
        assert metrics["variant"] == variant and metrics["seed"] == seed


@pytest.mark.parametrize("variant", VARIANTS)
def test_evaluate(tiny, pipeline, variant):
    assert_figures_drawn(pipeline[f"evaluate@{variant}"], 2)
    metrics = json.loads((tiny["root"] / "metrics" / f"{variant}.json").read_text())
    assert metrics["accuracy"]["swap@1"]["n"] == 2 and "last" in metrics["accuracy"]  # two seeds
    assert (tiny["root"] / "evaluation" / variant / "items.csv").is_file()


def test_best_of_n(tiny, pipeline):
    result = json.loads((tiny["root"] / "metrics" / "best_of_n.json").read_text())
    assert set(result["by_n"]) == {"2"}


def test_plots(tiny, pipeline):
    assert_figures_drawn(pipeline["plots"], 6)
    figures = {p.name for p in (tiny["root"] / "figures").iterdir()}
    assert {"paired_differences.png", "reward_trajectory.png", "best_of_n.png", "training_curves.png"} <= figures
    summary = json.loads((tiny["root"] / "metrics" / "summary.json").read_text())
    assert "last" in summary and summary["last"]["n_items"] > 0  # the tiny fixture may have no early items


_ATOMIC_TMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}$")


def _as_default_path(path: Path, tiny) -> str | None:
    """A file a stage read, named as in the default profile (repo-relative); None when DVC need not track it."""
    root, defaults = tiny["root"], Params().paths
    if path.is_relative_to(root):
        name, *rest = path.relative_to(root).parts
        rest = [_ATOMIC_TMP.sub(r"\1", part) for part in rest]  # music.files.atomic_path's temporary sibling
        if name in ("cache", "reports", "executed", "reads", "params.yaml") or name not in Paths.__dataclass_fields__:
            return None  # the response cache, resume checkpoints and timings are deliberately untracked
        return "/".join([getattr(defaults, name), *rest])
    if not path.is_relative_to(REPO):
        return None  # installed packages, the converted embedded model
    rel = path.relative_to(REPO)
    if rel.parts[0] in (".venv", ".git", "music.egg-info") or "__pycache__" in rel.parts:
        return None
    if str(rel) in ("dvc.yaml", "params.yaml"):
        # read only to name the stage's outputs in the notebook's text (music.pipeline.freshness, with dvc.yaml's
        # ${paths.…} resolved from params.yaml as DVC does), never to compute: the stage's params are injected
        return None
    if str(rel) == yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())["seed"]["path"]:
        return Params().seed.path  # the tiny profile's stand-in for the default seed source
    return str(rel)


def test_every_stage_lists_the_data_it_reads(tiny, pipeline):
    """Every repository file a stage's kernel opened is a dep (or an output) of that stage in dvc.yaml."""
    stages = dvc_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert sorted(pipeline) == sorted(stages), "the pipeline fixture runs every stage of dvc.yaml"
    reads_dir = tiny["root"] / "reads"
    assert sorted(p.name for p in reads_dir.iterdir()) == sorted(stages), "every stage ran with the trace"
    reads = {
        name: {_as_default_path(Path(line), tiny) for line in (reads_dir / name).read_text().splitlines()} - {None}
        for name in stages
    }
    assert reads["best_of_n"] and reads["seed"]  # the trace saw files
    assert missing_read_deps(stages, reads) == {}
