"""One sentence per result (music.reporting.report): effects only where the interval excludes 0, chance level named,
Best-of-N read, and the headline table at the end of `make run` fits 100 columns."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import REPO

from music.reporting import report


def test_an_interval_that_holds_zero_is_no_difference_this_run_can_see():
    s = report.difference_sentence("early", 0.022, -0.015, 0.060, 67)
    assert "no difference this run can see" in s and "+2.2 points [-1.5, +6.0]" in s and "67 items" in s
    assert report.PAPER_DIRECTION["early"] in s


@pytest.mark.parametrize(
    "low,high,word", [(0.01, 0.09, "MUSIC is better by +5.0"), (-0.09, -0.01, "MUSIC is worse by +5.0")]
)
def test_an_interval_off_zero_is_an_effect(low, high, word):
    assert word in report.difference_sentence("last", 0.05, low, high, 100)


def test_chance_level_is_a_binomial_interval_holding_half():
    assert "chance level" in report.accuracy_sentence("hh", 0.475, 60)
    assert "chance level" in report.accuracy_sentence("ultrafeedback", 0.533, 60)
    assert "above chance" in report.accuracy_sentence("quality", 0.80, 100)
    assert "below chance" in report.accuracy_sentence("swap", 0.20, 100)
    assert report.accuracy_sentence("hh", 0.475, 60).startswith("HH-RLHF: ")


def test_best_of_n_sentence_reads_the_largest_n_and_identical_picks():
    bon = json.loads((REPO / "outputs" / "metrics" / "best_of_n.json").read_text())
    s = report.best_of_n_sentence(bon)
    n = max(int(k) for k in bon["by_n"])
    row = bon["by_n"][str(n)]
    assert f"N = {n}" in s and f"in {round(row['identical_share'] * row['n_games'])} both RMs picked" in s
    # the committed run's judge is at chance on the known pairs: the sentence must not read a win rate from it
    assert bon["judge_check"]["at_chance"] and "uninformative, because the judge is at chance" in s
    won = {
        "by_n": {
            "2": {
                "n_games": 20,
                "wins": 18,
                "ties": 2,
                "losses": 0,
                "win_ci_low": 0.7,
                "win_ci_high": 0.97,
                "loss_ci_low": 0.0,
                "loss_ci_high": 0.16,
            }
        }
    }
    assert "the MUSIC RM's picks win more often" in report.best_of_n_sentence(won)
    assert report.best_of_n_sentence(None) == "Best-of-N: no games in this run."


def test_comparison_findings_name_each_group_and_public_set():
    table = pd.read_csv(REPO / "outputs" / "metrics" / "comparison.csv")
    found = report.comparison_findings(table, {"by_n": {}})
    assert [s.split(" (")[0].split(":")[0] for s in found[:3]] == [
        "Early-turn tests",
        "Last-turn tests",
        "Held-out MUSIC pairs",
    ]
    assert sum("chance level" in s for s in found) >= 2  # HH and UltraFeedback in the committed run
    assert found[-1] == "Best-of-N: no games in this run."


def test_variant_findings_read_a_metrics_file():
    metrics = json.loads((REPO / "outputs" / "metrics" / "baseline.json").read_text())
    found = report.variant_findings(metrics, "baseline")
    assert found[0].startswith("Early-turn tests: the baseline RM") and "%" in found[0]


def test_headline_fits_100_columns_and_reads_summary_defensively():
    summary = json.loads((REPO / "outputs" / "metrics" / "summary.json").read_text())
    summary["rewardbench"] = {"chat": {"baseline": 50.0}}  # keys other issues may add: skipped or shown, never a crash
    summary["control_early"] = {
        "baseline": 60.0,
        "music": None,
        "diff": None,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "n_items": 10,
    }
    text = report.headline_table(summary)
    assert max(len(line) for line in text.splitlines()) <= report.HEADLINE_WIDTH
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["test", "group", "baseline"]
    assert any(line.startswith("early-turn tests") and "[" in line for line in lines)
    assert "At this scale, MUSIC" in text and "Half-widths of the headline intervals" in text


def test_headline_command_prints_the_table(capsys):
    assert report.main([str(REPO / "outputs" / "metrics" / "summary.json")]) == 0
    out = capsys.readouterr().out
    assert "early-turn tests" in out and max(len(line) for line in out.splitlines()) <= 100
    assert report.main([str(REPO / "nowhere.json")]) == 1


def test_make_run_ends_with_the_headline_table_not_dvc_metrics_show():
    makefile = (REPO / "Makefile").read_text()
    run = makefile[makefile.index("\nrun:") : makefile.index("\nelse", makefile.index("\nrun:"))]
    assert "music.reporting.report" in run and "dvc metrics show" not in run
    assert run.index("music.pipeline.publish") < run.index(
        "music.reporting.report"
    )  # the table is the last thing printed


def test_comparison_findings_add_the_control_arm_and_the_history_blind_gaps():
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "slice": "early",
                "diff": 0.02,
                "ci_low": -0.01,
                "ci_high": 0.05,
                "n_items": 60,
                "diff_control": 0.04,
                "control_ci_low": 0.01,
                "control_ci_high": 0.07,
                "control_n_items": 60,
                "music_blind_gap": 0.12,
                "music_blind_gap_ci_low": 0.03,
                "music_blind_gap_ci_high": 0.2,
            }
        ]
    )
    lines = report.comparison_findings(table)
    assert any("MUSIC is better than the control (cut MUSIC pairs) by +4.0 points [+1.0, +7.0]" in s for s in lines)
    assert any("history-blind" in s and "music +12.0 points [+3.0, +20.0]" in s for s in lines)
    assert not any("control" in s for s in report.comparison_findings(table.drop(columns=["diff_control"])))


def _summary(diff=(2.0, -3.0, 4.5), control=(1.0, -4.0, 6.0), last=(0.5, -2.0, 3.0), gaps=None):
    early = {
        "diff": diff[0],
        "diff_ci_low": diff[1],
        "diff_ci_high": diff[2],
        "n_items": 300,
        "n_clusters": 150,
        "diff_control": control[0],
        "diff_control_ci_low": control[1],
        "diff_control_ci_high": control[2],
    }
    if gaps:
        early["history_blind"] = {v: {"gap": g[0], "gap_ci_low": g[1], "gap_ci_high": g[2]} for v, g in gaps.items()}
    return {"early": early, "last": {"diff": last[0], "diff_ci_low": last[1], "diff_ci_high": last[2], "n_items": 400}}


def test_result_sentence_states_a_null_with_the_size_it_rules_out():
    s = report.result_sentence(_summary(gaps={"baseline": (1.0, -2.0, 4.0), "music": (6.0, 2.0, 10.0)}))
    assert ". " not in s and s.endswith(".")  # one sentence
    assert (
        "changes early-turn accuracy by less than 4.5 points (+2.0 points [-3.0, +4.5] over 300 items from 150 chats)"
        in s
    )
    assert "changes it by less than 6.0 points (+1.0 points [-4.0, +6.0]) against the control" in s
    assert "changes last-turn accuracy by less than 3.0 points" in s
    assert "baseline +1.0 [-2.0, +4.0], MUSIC +6.0 [+2.0, +10.0] points, so only the MUSIC RM shows" in s
    effect = report.result_sentence(_summary(diff=(6.0, 1.5, 10.0), gaps={"music": (-1.0, -3.0, 1.0)}))
    assert "raises early-turn accuracy (+6.0 points [+1.5, +10.0]" in effect and "so no RM shows" in effect
    assert "lowers last-turn accuracy" in report.result_sentence(_summary(last=(-4.0, -7.0, -1.0)))
    assert report.result_sentence({}).startswith("This run has no early-turn comparison")


def test_half_widths_and_the_headline_table_print_them():
    summary = _summary(gaps={"music": (6.0, 2.0, 10.0)})
    assert report.half_widths(summary) == {
        "early: MUSIC - baseline": 3.8,
        "early: MUSIC - control": 5.0,
        "early: music - history-blind": 4.0,
        "last: MUSIC - baseline": 2.5,
    }
    text = report.headline_table(summary)
    assert "early: MUSIC - baseline 3.8" in text.replace("\n  ", " ") and "At this scale, MUSIC" in text


def test_variant_result_sentence_reads_its_own_history_blind_gap():
    row = {
        "music_accuracy": 0.62,
        "music_blind_gap": 0.05,
        "music_blind_gap_ci_low": -0.01,
        "music_blind_gap_ci_high": 0.11,
    }
    s = report.variant_result_sentence(row, "music")
    assert "The MUSIC RM gets 62.0% of the early-turn items right" in s
    assert "+5.0 points [-1.0, +11.0]: no sign that it reads the history (a gap above 11.0 points is ruled out)" in s
    assert "reads the history" in report.variant_result_sentence({**row, "music_blind_gap_ci_low": 0.01}, "music")
    assert "no early-turn items" in report.variant_result_sentence({}, "control")
