"""RewardBench through the whole evaluate stage (evaluate_variant, what notebook 05 calls) on tiny trained RMs and a
local file in the hub schema (prompt, chosen, rejected, subset, id; every subset, a few rows each), then the plots
stage: every section in metrics/{variant}.json, per-item rows in items.csv, per-section paired differences with
intervals in comparison.csv, and the four sections and the average in summary.json, each equal to
section_scores' arithmetic. Also: the section comparison on synthetic rows, and distance-0 items."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_cfg, toy_pairs

from music.evaluate.compare import compare, headline, rewardbench_compare
from music.evaluate.constants import EXAMPLE_COUNTS, SECTION_KEYS, SECTIONS
from music.evaluate.items import Item, items_from_pairs
from music.evaluate.rewardbench import load_rewardbench_pairs, score_rewardbench, section_scores
from music.schema import PreferencePair

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def hub_rows(per_subset: int = 2, seed: int = 0) -> list[dict]:
    """Every RewardBench subset, `per_subset` rows each, text in the hub's flat schema; plus one identical pair."""
    rng = random.Random(seed)
    rows = []
    for subset in EXAMPLE_COUNTS:
        for k in range(per_subset):
            say = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
            rows.append(
                {
                    "prompt": f"{subset} question {k}: {say(4)}?",
                    "chosen": say(rng.randint(2, 9)),
                    "rejected": say(rng.randint(2, 9)),
                    "subset": subset,
                    "id": len(rows),
                }
            )
    rows.append(
        {
            "prompt": "same?",
            "chosen": "same answer",
            "rejected": "same answer",
            "subset": "donotanswer",
            "id": len(rows),
        }
    )  # RewardBench's rule: kept, and a tie is wrong
    return rows


@pytest.fixture(scope="module")
def rb_run(tiny_backbone, tmp_path_factory):
    """Both variants' tiny RMs (one seed each, different training), scored by the evaluate stage, then the plots
    stage."""
    from test_eval_pairwise import make_workspace

    from music.rm.train import train_reward_model
    from music.stages.evaluate import run as evaluate_variant
    from music.stages.plots import run as run_plots

    root = tmp_path_factory.mktemp("rb_stage")
    P = make_workspace(root, seeds=(0,))
    P.paths.plots = str(root / "plots")
    P.plots.formats = ["png"]
    P.plots.dpi = 40
    rb_file = root / "reward-bench-filtered.jsonl"
    rb_file.write_text("".join(json.dumps(r) + "\n" for r in hub_rows()))
    P.evaluate.rewardbench_path = str(rb_file)
    P.evaluate.batch_size = 16
    for variant, steps in (("baseline", 1), ("music", 3)):
        out = Path(P.paths.models) / variant / "seed0"
        shutil.rmtree(out, ignore_errors=True)
        train_reward_model(
            tiny_cfg(tiny_backbone, max_steps=steps, max_length=128, learning_rate=5e-2),
            {"d": toy_pairs(8)},
            out,
            progress=False,
        )
    metrics = {v: evaluate_variant(P, variant=v) for v in ("baseline", "music")}
    run_plots(P, variants=["baseline", "music"])
    return P, metrics, rb_file


def _items(P, variant) -> pd.DataFrame:
    return pd.read_csv(
        Path(P.paths.evaluation) / variant / "items.csv", dtype={"item_id": str, "group": str}, keep_default_na=False
    )


@pytest.mark.slow
def test_every_section_is_written_and_equals_section_scores(rb_run):
    from music.rm.score import RewardScorer

    P, metrics, rb_file = rb_run
    n_rows = len(hub_rows())
    expect = {}
    for v in ("baseline", "music"):
        on_disk = json.loads((Path(P.paths.metrics) / f"{v}.json").read_text())
        rows = _items(P, v)
        rb = rows[rows["test"] == "rewardbench"]
        assert len(rb) == n_rows and set(rb["source"]) == set(EXAMPLE_COUNTS) and (rb["group"] == "").all()
        assert (rb.loc[rb["chosen_score"] == rb["rejected_score"], "correct"] == 0).all()  # the identical pair: wrong
        expect[v] = section_scores(rb.groupby("source")["correct"].mean().to_dict())
        for k in SECTION_KEYS:
            assert on_disk["rewardbench"][k]["mean"] == pytest.approx(expect[v][k]), (v, k)
            assert on_disk["rewardbench"][k]["n_items"] == n_rows
        assert "rewardbench" not in on_disk["accuracy"]  # its arithmetic is per section, not a plain item mean
    # the same numbers from an independent scoring pass over the file
    direct = score_rewardbench(
        RewardScorer(str(Path(P.paths.models) / "baseline" / "seed0"), batch_size=16),
        load_rewardbench_pairs(str(rb_file)),
    )
    for k in SECTION_KEYS:
        assert direct[k] == pytest.approx(expect["baseline"][k], abs=1e-9), k
    summary = json.loads((Path(P.paths.metrics) / "summary.json").read_text())
    table = pd.read_csv(Path(P.paths.metrics) / "comparison.csv").set_index("slice")
    for k in SECTION_KEYS:
        s = summary["rewardbench"][k]
        b, m = expect["baseline"][k], expect["music"][k]
        assert s["baseline"] == round(100 * b, 1) and s["music"] == round(100 * m, 1), k
        assert s["diff"] == pytest.approx(100 * (m - b), abs=0.051), k  # one seed: paired = difference of scores
        r = table.loc[f"rewardbench:{k}"]
        assert r["diff"] == pytest.approx(m - b, abs=1e-6) and r["ci_low"] <= r["diff"] + 1e-9 <= r["ci_high"] + 2e-9, k
    assert "rewardbench" not in table.index and "rewardbench@1" not in table.index


def _synthetic(seed=0, n=6, p_base=0.5, p_music=0.5, seeds=(0, 1)) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for v, p in (("baseline", p_base), ("music", p_music)):
        for s in seeds:
            for subset in EXAMPLE_COUNTS:
                for i in range(n):
                    c = int(rng.random() < p)
                    rows.append(
                        {
                            "variant": v,
                            "seed": s,
                            "test": "rewardbench",
                            "item_id": f"{subset}-{i}",
                            "source": subset,
                            "distance": 1,
                            "group": "",
                            "chosen_score": float(c),
                            "rejected_score": 0.5,
                            "correct": c,
                        }
                    )
    return pd.DataFrame(rows)


def test_section_comparison_is_section_scores_arithmetic_with_an_interval():
    rows = _synthetic(p_base=0.5, p_music=0.8)
    out = {r["slice"]: r for r in rewardbench_compare(rows)}
    assert set(out) == {f"rewardbench:{k}" for k in SECTION_KEYS}
    for v in ("baseline", "music"):
        per_seed = [
            section_scores(g.groupby("source")["correct"].mean().to_dict())
            for _, g in rows[rows["variant"] == v].groupby("seed")
        ]
        for k in SECTION_KEYS:
            assert out[f"rewardbench:{k}"][f"{v}_accuracy"] == pytest.approx(sum(r[k] for r in per_seed) / 2)
            assert out[f"rewardbench:{k}"][f"{v}_seeds"] == 2
    for k in SECTION_KEYS:
        r = out[f"rewardbench:{k}"]
        assert r["diff"] == pytest.approx(r["music_accuracy"] - r["baseline_accuracy"])
        assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert out["rewardbench:reasoning"]["n_items"] == 6 * len(SECTIONS["reasoning"])
    assert out["rewardbench:average"]["ci_low"] > 0  # 0.5 -> 0.8 on 138 items: the interval excludes 0
    same = {
        r["slice"]: r
        for r in rewardbench_compare(
            _synthetic(p_base=0.6, p_music=0.6).assign(
                correct=lambda d: d.groupby(["seed", "item_id"])["correct"].transform("first")
            )
        )
    }
    assert (
        same["rewardbench:chat"]["diff"] == 0
        and same["rewardbench:chat"]["ci_low"] == same["rewardbench:chat"]["ci_high"] == 0
    )


def test_headline_carries_every_section():
    table = compare(_synthetic(p_base=0.5, p_music=0.8))
    out = headline(table)
    assert set(out["rewardbench"]) == set(SECTION_KEYS)
    assert set(out["rewardbench"]["reasoning"]) == {"baseline", "music", "diff", "diff_ci_low", "diff_ci_high"}
    assert all(isinstance(x, float) for sec in out["rewardbench"].values() for x in sec.values())


def test_identical_pairs_enter_no_group():
    same = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pair = PreferencePair(same, [dict(m) for m in same], {"pair_id": "uf-identical"})
    (item,) = items_from_pairs("ultrafeedback", [pair])
    assert item.distance == 0 and item.group is None
    assert Item("swap", "x", 1, same, same).group == "last"


def test_the_evaluate_stage_drops_identical_pairs(tmp_path):
    from test_eval_pairwise import LastReplyScorer, make_workspace

    from music.stages.evaluate import run as evaluate_variant

    P = make_workspace(tmp_path, seeds=(0,))
    uf = tmp_path / "uf.jsonl"
    same = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "same reply"}]
    recs = [
        {"prompt": "q", "chosen": same, "rejected": same, "id": "identical"},
        {"prompt": "q", "chosen": same, "rejected": [same[0], {"role": "assistant", "content": "other"}], "id": "fine"},
    ]
    uf.write_text("".join(json.dumps(r) + "\n" for r in recs))
    P.evaluate.local_sets = {"ultrafeedback": str(uf)}
    evaluate_variant(P, variant="baseline", make_scorer=lambda d: LastReplyScorer())
    rows = list(csv.DictReader(open(tmp_path / "evaluation" / "baseline" / "items.csv")))
    uf_rows = [r for r in rows if r["test"] == "ultrafeedback"]
    assert [r["item_id"] for r in uf_rows] == ["ultrafeedback:fine"]
    assert all(r["distance"] != "0" for r in rows)
    info = json.loads((tmp_path / "evaluation" / "baseline" / "info.json").read_text())
    assert info["identical_pairs_dropped"] == {"ultrafeedback": 1}


def test_the_swap_test_reads_its_conversations_from_heldout_swap_source(tmp_path):
    from test_eval_pairwise import LastReplyScorer, conv, make_workspace, write_heldout

    from music.stages.evaluate import run as evaluate_variant

    P = make_workspace(tmp_path, seeds=(0,))
    path = tmp_path / "multi.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"conversation_id": f"x{i}", "messages": conv(f"first {i}" + " y" * i, f"second {i}" + " y" * i)}
            )
            + "\n"
            for i in range(4)
        )
    )
    P.heldout.swap_source = f"file:{path}"
    write_heldout(P)  # the swap items are the heldout stage's (evaluate reads them from outputs/heldout)
    metrics = evaluate_variant(P, variant="baseline", make_scorer=lambda d: LastReplyScorer())
    rows = list(csv.DictReader(open(tmp_path / "evaluation" / "baseline" / "items.csv")))
    assert {r["item_id"].split(":")[0] for r in rows if r["test"] == "swap"} <= {f"x{i}" for i in range(4)}
    assert metrics["accuracy"]["swap@2"]["n_items"] >= 1
    info = json.loads((tmp_path / "evaluation" / "baseline" / "info.json").read_text())
    assert info["sources"]["swap"] == f"file:{path}: {path}"
