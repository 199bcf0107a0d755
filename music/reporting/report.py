"""What the run found, in words: one sentence per result, from the metrics, beside the paper's direction.

`difference_sentence` reads one row of the paired comparison (MUSIC - baseline with its 95% interval) and
says "better", "worse" or "no difference this run can see" (the interval holds 0); `accuracy_sentence`
calls a test set *chance level* when a binomial (Wilson) interval around the accuracy holds 50%;
`best_of_n_sentence` reads the Best-of-N games. Notebooks 05 and 07 end with these sentences;
`python -m music.reporting.report` prints the headline table at the end of `make run` (under 100 columns).

Every reader here is defensive: summary.json and the metrics files may gain keys (RewardBench sections,
control arms); what is not a result row is skipped.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping

from music.evaluate.constants import PAPER_REWARDBENCH
from music.evaluate.stats import wilson_interval

CHANCE = 0.5
HEADLINE_WIDTH = 100  # `make run`'s last screen fits this many columns
TARGET_HALF_WIDTH = 5.0  # points: the headline intervals' half-width the default run is sized for

GROUP_TITLES = {
    "early": "early-turn tests",
    "last": "last-turn tests",
    "music": "held-out MUSIC pairs",
    "quality": "strong vs weak reply",
    "swap": "swapped reply",
    "swap_same": "reply from another turn",
    "hh": "HH-RLHF",
    "ultrafeedback": "UltraFeedback",
}

# The paper's direction of effect (arXiv 2512.24693), per result, in words (its numbers: music.evaluate.constants).
_RB = {v: PAPER_REWARDBENCH[v]["average"] for v in ("baseline", "music")}
PAPER_DIRECTION = {
    "early": "the paper: MUSIC pairs make the RM better at judging earlier turns of a conversation",
    "last": (
        f"the paper: no loss on last-turn judgements (RewardBench average {_RB['baseline']:.1f} -> {_RB['music']:.1f})"
    ),
    "music": "the paper: an RM trained with MUSIC pairs separates contrastive branches better",
    "best_of_n": "the paper: the MUSIC RM's Best-of-N picks win more often against the baseline's as N grows",
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def title(name: str) -> str:
    test, _, d = name.partition("@")
    base = GROUP_TITLES.get(test, test)
    return f"{base}, {d} from the end" if d else base


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _pts(x: float) -> str:
    return f"{x:+.1f}"


def difference_sentence(
    name: str,
    diff: Any,
    low: Any,
    high: Any,
    n_items: Any = None,
    *,
    percent: bool = False,
    paper: bool = True,
    against: str = "baseline",
) -> str:
    """One paired comparison (MUSIC - `against`, fractions unless percent=True) as a sentence with its interval."""
    scale = 1.0 if percent else 100.0
    d, lo, hi = (_num(v) for v in (diff, low, high))
    items = f" ({_n(int(n_items), 'item')})" if _num(n_items) is not None else ""
    if d is None:
        return f"{_cap(title(name))}{items}: no comparison (a variant has no results)."
    d, interval = d * scale, ""
    than = "" if against == "baseline" else f" than the {against}"
    if lo is not None and hi is not None:
        lo, hi = lo * scale, hi * scale
        interval = f" [{_pts(lo)}, {_pts(hi)}]"
    if lo is not None and lo > 0:
        verdict = f"MUSIC is better{than} by {_pts(d)} points{interval}"
    elif hi is not None and hi < 0:
        verdict = f"MUSIC is worse{than} by {_pts(d)} points{interval}"
    else:
        verdict = (
            f"no difference this run can see: MUSIC - {against} {_pts(d)} points{interval}, an interval that holds 0"
        )
    test = name.partition("@")[0]
    tail = f"; {PAPER_DIRECTION[test]}" if paper and test in PAPER_DIRECTION else ""
    return f"{_cap(title(name))}{items}: {verdict}{tail}."


def chance_interval(accuracy: float, n_items: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy over n items (an item right on k of the seeds counts k/seeds)."""
    return wilson_interval(int(round(accuracy * n_items)), int(n_items))


def accuracy_sentence(name: str, accuracy: Any, n_items: Any, who: str = "the RM") -> str:
    """An accuracy with its binomial interval; "chance level" when the interval holds 50%."""
    a, n = _num(accuracy), _num(n_items)
    if a is None or not n:
        return f"{_cap(title(name))}: no items."
    lo, hi = chance_interval(a, int(n))
    if lo <= CHANCE <= hi:
        verdict = "chance level (the interval holds 50%)"
    elif lo > CHANCE:
        verdict = "above chance"
    else:
        verdict = "below chance"
    return (
        f"{_cap(title(name))}: {who} {100 * a:.1f}% right over {_n(int(n), 'item')} "
        f"[{100 * lo:.0f}%, {100 * hi:.0f}%]: {verdict}."
    )


def judge_phrase(check: Mapping | None) -> tuple[str, bool | None]:
    """The Best-of-N judge's measured accuracy on pairs with a known answer, in words, and whether it is at chance
    (None: not measured). `check` is best_of_n.json's judge_check (fractions) or summary.json's
    best_of_n_judge (percent)."""
    if not isinstance(check, Mapping) or _num(check.get("accuracy")) is None:
        return "the judge was not measured on pairs with a known answer", None
    scale = 1.0 if check.get("percent") else 100.0
    a, lo, hi = (_num(check.get(k)) for k in ("accuracy", "ci_low", "ci_high"))
    n = int(_num(check.get("n_pairs")) or 0)
    ci = f" [{scale * lo:.0f}%, {scale * hi:.0f}%]" if None not in (lo, hi) else ""
    at_chance = bool(check.get("at_chance")) if check.get("at_chance") is not None else lo is None or lo <= 0.5 <= hi
    return (
        f"the judge picks the known better reply in {scale * a:.0f}%{ci} of {_n(n, 'known pair')}"
        + (": at chance" if at_chance else (": above chance" if (lo or 0) > 0.5 else ": below chance")),
        at_chance,
    )


def best_of_n_sentence(bon: Mapping | None) -> str:
    """The Best-of-N games at the largest N, in words, read against the judge's measured accuracy: with a judge at
    chance the comparison is uninformative, whatever the win rate."""
    by_n = (bon or {}).get("by_n") or {}
    rows = {int(n): r for n, r in by_n.items() if isinstance(r, Mapping) and str(n).isdigit()}
    if not rows:
        return "Best-of-N: no games in this run."
    n = max(rows)
    r = rows[n]
    games = int(r.get("n_games") or 0)
    wins, ties, losses = (int(r.get(k) or 0) for k in ("wins", "ties", "losses"))
    ident = int(r.get("n_identical") or 0)
    check = (bon or {}).get("judge_check")
    if check is None and _num(r.get("judge_accuracy")) is not None:
        check = {
            k: r.get(f"judge_accuracy{s}")
            for k, s in (("accuracy", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))
        }
        check["at_chance"] = r.get("judge_at_chance")
    judge, at_chance = judge_phrase(check)
    # The paper's comparison: (W + T/2) / N with its bootstrap interval over prompts and seeds
    # (music.stages.best_of_n); a Best-of-N file from before that has only the Wilson intervals of the win and loss
    # rates.
    rate, lo, hi = (
        _num(r.get(k)) for k in ("win_rate_ties_half", "win_rate_ties_half_ci_low", "win_rate_ties_half_ci_high")
    )
    if at_chance:
        verdict = "uninformative, because the judge is at chance on pairs with a known answer"
    elif games and ties == games:
        verdict = "no difference this run can see: every game tied"
    elif rate is not None and None not in (lo, hi):
        verdict = (
            "the MUSIC RM's picks win more often"
            if lo > 0.5
            else "the baseline RM's picks win more often"
            if hi < 0.5
            else "no difference this run can see (the interval holds 50%)"
        )
    else:
        wl, wh = _num(r.get("win_ci_low")), _num(r.get("win_ci_high"))
        ll, lh = _num(r.get("loss_ci_low")), _num(r.get("loss_ci_high"))
        if None not in (wl, lh) and wl > lh:
            verdict = "the MUSIC RM's picks win more often"
        elif None not in (ll, wh) and ll > wh:
            verdict = "the baseline RM's picks win more often"
        else:
            verdict = "no difference this run can see (the win and loss intervals overlap)"
        rate, lo, hi = (wins / games if games else 0.0), wl, wh
    if rate is None:
        rate = (wins + ties / 2) / games if games else 0.0
    same = f"; in {ident} both RMs picked the identical conversation" if ident else ""
    short = int(r.get("n_short_games") or 0)
    same += f"; {short} played with fewer than N candidates" if short else ""
    failed = int(r.get("n_failed") or 0)
    same += f"; {failed} failed" if failed else ""
    ci = f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if None not in (lo, hi) else ""
    return (
        f"Best-of-N at N = {n}: the MUSIC RM won {wins}, tied {ties} and lost {losses} of {_n(games, 'game')}{same}; "
        f"win rate (W + T/2)/N {100 * rate:.0f}%{ci}: {verdict}; {judge}; {PAPER_DIRECTION['best_of_n']}."
    )


ARM_NAMES = {"baseline": "baseline", "music": "MUSIC", "control": "control"}


def _change(what: str, d: float, lo: float | None, hi: float | None, where: str = "") -> str:
    """A paired difference in points, in words: an effect where the interval excludes 0, else the size it rules
    out; `where` (e.g. "over 40 items") goes inside the parenthesis with the numbers."""
    numbers = f"{_pts(d)} points" + (f" [{_pts(lo)}, {_pts(hi)}]" if None not in (lo, hi) else ", no interval")
    numbers += f" {where}" if where else ""
    if lo is not None and lo > 0:
        return f"raises {what} ({numbers})"
    if hi is not None and hi < 0:
        return f"lowers {what} ({numbers})"
    if None in (lo, hi):
        return f"changes {what} ({numbers})"
    return f"changes {what} by less than {max(abs(lo), abs(hi)):.1f} points ({numbers})"


def _reads_history(blind: Mapping) -> str:
    """Which RMs beat their own history-blind score (interval above 0) on the early-turn items."""
    above = [
        ARM_NAMES.get(v, v) for v, g in blind.items() if _num(g.get("gap_ci_low")) is not None and g["gap_ci_low"] > 0
    ]
    if not above:
        return "so no RM shows that it reads the history"
    if len(above) == len(blind):
        return "so every RM shows that it reads the history"
    if len(above) > 1:
        return f"so only the {' and the '.join(above)} RMs show that they read the history"
    return f"so only the {above[0]} RM shows that it reads the history"


def result_sentence(summary: Mapping) -> str:
    """The run's result in one sentence (README, notebook 07): MUSIC - baseline on the early-turn endpoint
    (an effect, or the size its interval rules out), MUSIC - control, the last-turn endpoint, and each RM's
    gap over its own history-blind score; `summary` is outputs/metrics/summary.json (percent points)."""
    early, last = summary.get("early") or {}, summary.get("last") or {}
    if _num(early.get("diff")) is None:
        return "This run has no early-turn comparison (a variant or the early-turn items are missing)."
    where = f"over {_n(int(early['n_items']), 'item')}" + (
        f" from {early['n_clusters']} chats" if early.get("n_clusters") else ""
    )
    early_change = _change(
        "early-turn accuracy", early["diff"], _num(early.get("diff_ci_low")), _num(early.get("diff_ci_high")), where
    )
    text = f"At this scale, MUSIC {early_change} against the baseline"
    if _num(early.get("diff_control")) is not None:
        control_change = _change(
            "it", early["diff_control"], _num(early.get("diff_control_ci_low")), _num(early.get("diff_control_ci_high"))
        )
        text += f" and {control_change} against the control trained on the same pairs cut after the divergence"
    if _num(last.get("diff")) is not None:
        last_change = _change(
            "last-turn accuracy",
            last["diff"],
            _num(last.get("diff_ci_low")),
            _num(last.get("diff_ci_high")),
            "over " + _n(int(last["n_items"]), "item"),
        )
        text += f", while it {last_change}"
    blind = {
        v: g
        for v, g in (early.get("history_blind") or {}).items()
        if None not in (_num(g.get("gap")), _num(g.get("gap_ci_low")), _num(g.get("gap_ci_high")))
    }
    if blind:
        gaps = ", ".join(
            f"{ARM_NAMES.get(v, v)} {_pts(g['gap'])} [{_pts(g['gap_ci_low'])}, {_pts(g['gap_ci_high'])}]"
            for v, g in blind.items()
        )
        text += (
            f"; on the early-turn items each RM's accuracy minus its own history-blind score (the last exchange "
            f"alone) is {gaps} points, {_reads_history(blind)}"
        )
    return text + "."


def variant_result_sentence(early: Mapping, variant: str) -> str:
    """Notebook 05's one sentence for one arm: its early-turn accuracy and its gap over its own history-blind score
    with the two-level interval; `early` is the "early" row of music.evaluate.compare.compare on this arm's items
    (fractions). The comparison with the other arms needs every arm: notebook 07."""
    name = ARM_NAMES.get(variant, variant)
    acc = _num(early.get(f"{variant}_accuracy"))
    if acc is None:
        return f"The {name} RM has no early-turn items in this run."
    text = f"The {name} RM gets {100 * acc:.1f}% of the early-turn items right (mean over its training seeds)"
    g, lo, hi = (_num(early.get(f"{variant}_blind_gap{k}")) for k in ("", "_ci_low", "_ci_high"))
    if None not in (g, lo, hi):
        verdict = (
            "it reads the history"
            if lo > 0
            else "it does worse than on the last exchange alone"
            if hi < 0
            else f"no sign that it reads the history (a gap above {hi * 100:.1f} points is ruled out)"
        )
        text += (
            f"; its accuracy minus its own history-blind score (the last exchange alone) is {_pts(100 * g)} points "
            f"[{_pts(100 * lo)}, {_pts(100 * hi)}]: {verdict}"
        )
    return text + ". MUSIC against the baseline and the control: notebook 07 (it needs every arm's scores)."


def half_widths(summary: Mapping) -> dict[str, float]:
    """The headline intervals' half-widths in points, e.g. {"early: MUSIC - baseline": 4.1, ...}."""
    out = {}
    for name in ("early", "last"):
        g = summary.get(name) or {}
        for key, label in (("diff", "MUSIC - baseline"), ("diff_control", "MUSIC - control")):
            lo, hi = _num(g.get(f"{key}_ci_low")), _num(g.get(f"{key}_ci_high"))
            if None not in (lo, hi):
                out[f"{name}: {label}"] = round((hi - lo) / 2, 1)
        for v, b in (g.get("history_blind") or {}).items():
            lo, hi = _num(b.get("gap_ci_low")), _num(b.get("gap_ci_high"))
            if None not in (lo, hi):
                out[f"{name}: {v} - history-blind"] = round((hi - lo) / 2, 1)
    return out


def comparison_findings(table, bon: Mapping | None = None) -> list[str]:
    """Notebook 07's closing sentences from the comparison table (music.evaluate.compare.compare: columns slice,
    {variant}_accuracy, diff, ci_low, ci_high, n_items): the groups, each variant on the public last-turn sets
    (chance level named), and Best-of-N."""
    rows = {r["slice"]: r for r in table.to_dict("records")} if hasattr(table, "to_dict") else dict(table)
    out = [
        difference_sentence(name, r.get("diff"), r.get("ci_low"), r.get("ci_high"), r.get("n_items"))
        for name, r in rows.items()
        if name in ("early", "last", "music")
    ]
    for name in ("early", "last"):  # the control arm: the same MUSIC pairs cut after the divergence turn
        r = rows.get(name) or {}
        if _num(r.get("diff_control")) is not None:
            out.append(
                difference_sentence(
                    name,
                    r.get("diff_control"),
                    r.get("control_ci_low"),
                    r.get("control_ci_high"),
                    r.get("control_n_items"),
                    paper=False,
                    against="control (cut MUSIC pairs)",
                )
            )
    early = rows.get("early") or {}
    gaps = [
        (v, *(_num(early.get(f"{v}_blind_gap{k}")) for k in ("", "_ci_low", "_ci_high")))
        for v in ("baseline", "music", "control")
    ]
    gaps = [g for g in gaps if g[1] is not None]
    if gaps:  # an RM that reads the history beats its own score on the last exchange alone
        out.append(
            "Early-turn tests, each RM minus its own history-blind score (the last exchange alone): "
            + "; ".join(
                f"{v} {_pts(100 * d)} points"
                + (f" [{_pts(100 * lo)}, {_pts(100 * hi)}]" if None not in (lo, hi) else "")
                for v, d, lo, hi in gaps
            )
            + " (an interval above 0: the RM uses the history)."
        )
    for name in ("hh", "ultrafeedback"):
        if name in rows:
            r = rows[name]
            parts = [
                accuracy_sentence(name, r.get(f"{v}_accuracy"), r.get("n_items"), f"the {v} RM")
                for v in ("baseline", "music")
                if _num(r.get(f"{v}_accuracy")) is not None
            ]
            out += parts
    if bon is not None:
        out.append(best_of_n_sentence(bon))
    return out


def variant_findings(metrics: Mapping, variant: str) -> list[str]:
    """Notebook 05's closing sentences: one variant's accuracy per group and public set (mean over seeds),
    with binomial intervals; chance level named."""
    acc = metrics.get("accuracy") or {}
    out = []
    for name in ("early", "last", "music", "hh", "ultrafeedback"):
        r = acc.get(name)
        if isinstance(r, Mapping):
            out.append(accuracy_sentence(name, r.get("mean"), r.get("n_items"), f"the {variant} RM"))
    if "early" in acc:
        out.append(
            f"An RM that ignores the history sits at chance on the early-turn tests; "
            f"{PAPER_DIRECTION['early']} (notebook 07 compares the two variants)."
        )
    return out


def say_all(sentences: list[str]) -> None:
    """The sentences as a Markdown list in a notebook (plain lines elsewhere)."""
    from music.pipeline.notebooks import say

    say("\n".join(f"- {s}" for s in sentences))


# ---------------------------------------------------------------- the headline at the end of `make run`
# Row labels of the end-of-run table (19 characters at most); secondary slices are marked so.
TABLE_LABELS = {"music": "MUSIC pairs (2nd)", "quality": "strong/weak (2nd)"}


def headline_table(summary: Mapping) -> str:
    """summary.json as a compact table: rows test groups; columns each arm's accuracy, MUSIC - baseline and (with a
    control arm) MUSIC - control with their 95% intervals, items; then each RM's gap over its own history-blind
    score on the early-turn endpoint, Best-of-N and one sentence per endpoint."""
    control = any(isinstance(r, Mapping) and "diff_control" in r for r in summary.values())
    cell = lambda v: f"{v:.1f}%" if v is not None else "—"  # noqa: E731

    def contrast(r: Mapping, key: str) -> str:
        d, lo, hi = (_num(r.get(k)) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
        return f"{_pts(d)} [{_pts(lo)}, {_pts(hi)}]" if None not in (d, lo, hi) else (_pts(d) if d is not None else "—")

    head = f"{'test group':<20}{'baseline':>9}{'MUSIC':>8}"
    head += (
        f"{'control':>9}  {'MUSIC-base [95% CI]':<22}{'MUSIC-control [95% CI]':<23}"
        if control
        else f"  {'MUSIC - baseline [95% CI]':<29}"
    )
    head += f"{'items':>6}"
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        if not (isinstance(r, Mapping) and "diff" in r):
            continue
        row = (
            f"{TABLE_LABELS.get(name, title(name))[:19]:<20}"
            f"{cell(_num(r.get('baseline'))):>9}{cell(_num(r.get('music'))):>8}"
        )
        row += (
            f"{cell(_num(r.get('control'))):>9}  {contrast(r, 'diff'):<22}{contrast(r, 'diff_control'):<23}"
            if control
            else f"  {contrast(r, 'diff'):<29}"
        )
        items = r.get("n_items")
        lines.append(row + f"{int(items) if _num(items) is not None else '—':>6}")
    blind = (summary.get("early") or {}).get("history_blind") if isinstance(summary.get("early"), Mapping) else None
    if isinstance(blind, Mapping) and blind:
        lines.append(
            "Early turns, RM minus its own history-blind score (last exchange only), points: "
            + "; ".join(f"{v} {contrast(g, 'gap')}" for v, g in blind.items() if isinstance(g, Mapping))
        )
    lines += best_of_n_lines(summary)
    widths = half_widths(summary)
    if widths:
        lines.append(
            f"Half-widths of the headline intervals (points; the aim is <= {TARGET_HALF_WIDTH:g}): "
            + "; ".join(f"{k} {v:.1f}" for k, v in widths.items())
        )
    lines.append(result_sentence(summary))
    return "\n".join(_wrap(line, HEADLINE_WIDTH) for line in lines)


def best_of_n_lines(summary: Mapping) -> list[str]:
    """The headline's Best-of-N lines: per N the win rate (W + T/2)/N with its interval over prompts and seeds and
    how often both RMs picked the identical conversation, then the judge's accuracy on known pairs; a summary from
    before those keys gets MUSIC wins - losses."""
    rates = summary.get("best_of_n_win_rate")
    if isinstance(rates, Mapping) and rates:
        cells = []
        for k, v in rates.items():
            if not isinstance(v, Mapping) or _num(v.get("rate")) is None:
                continue
            cell = f"{k.replace('N', 'N=')} {v['rate']:.0f}%"
            if None not in (_num(v.get("ci_low")), _num(v.get("ci_high"))):
                cell += f" [{v['ci_low']:.0f}, {v['ci_high']:.0f}]"
            if _num(v.get("identical")) is not None and _num(v.get("games")) is not None:
                cell += f" same pick {int(v['identical'])}/{int(v['games'])}"
            cells.append(cell)
        out = ["Best-of-N, MUSIC win rate (W + T/2)/N [95% CI, prompts x seeds]: " + "; ".join(cells)]
        judge, at_chance = judge_phrase(
            {**summary["best_of_n_judge"], "percent": True}
            if isinstance(summary.get("best_of_n_judge"), Mapping)
            else None
        )
        out.append(
            f"Best-of-N judge: {judge.removeprefix('the judge ')}"
            + (" (so Best-of-N is uninformative)" if at_chance else "")
        )
        return out
    bon = summary.get("best_of_n_win_minus_loss")
    if isinstance(bon, Mapping) and bon:
        return [
            "Best-of-N, MUSIC wins - losses (points): "
            + ", ".join(f"{k.replace('N', 'N=')}: {_pts(v)}" for k, v in bon.items() if _num(v) is not None)
        ]
    return []


def _wrap(line: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width, subsequent_indent="  ")) if len(line) > width else line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m music.reporting.report", description="The run's headline table (fits 100 columns)."
    )
    ap.add_argument("summary", nargs="?", default="outputs/metrics/summary.json")
    args = ap.parse_args(argv)
    path = Path(args.summary)
    if not path.is_file():
        print(f"no {path}: run the pipeline first (make run)")
        return 1
    print(headline_table(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
