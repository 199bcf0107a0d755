"""Pairwise judging of two conversations with any chat backend.

The prompt is a file (music/prompts/judge_pairwise.txt) with {conversation_a} and {conversation_b};
the judge answers [[A]], [[B]] or [[C]] (tie).

Two ways to read a verdict:
- a label (`parse_verdict`): the reply is parsed; a reply we cannot parse is None, which the caller counts as a
  failed judge call (never a tie, never dropped).
- graded (`label_logprobs`, `graded_margin`): the judge's log-probabilities of the labels A and B as the first
  token after "[[". In-process judges compute them from the next-token logits (one forward pass); served judges
  read the OpenAI-compatible `logprobs`/`top_logprobs` fields. Per order, log p(A) - log p(B) says how much the
  judge prefers the conversation in position A; summed over both orders (with the sign of the second order
  flipped) a constant preference for a position cancels exactly, and what is left is the preference for the
  conversation itself, in nats.

`judge_check` measures a judge on pairs with a known answer (chosen better than rejected) the same way, with a
bootstrap interval over clusters: a judge whose interval holds 50% is at chance, and a comparison it judges
says nothing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

PROMPT_FILE = Path(__file__).resolve().parent.parent / "prompts" / "judge_pairwise.txt"
VERDICT_OPTIONS = ("A", "B", "C")  # A better, B better, C tie
VERDICT_PREFIX, VERDICT_SUFFIX = "[[", "]]"
VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
TIE_NATS = 1e-6  # a graded margin this close to 0 is a tie (a judge with no preference at all, e.g. a constant one)
CHANCE = 0.5


def load_template(path: str | Path | None = None) -> str:
    text = Path(path or PROMPT_FILE).read_text(encoding="utf-8")
    for slot in ("{conversation_a}", "{conversation_b}"):
        if slot not in text:
            raise ValueError(f"judge prompt {path or PROMPT_FILE} lacks the slot {slot}")
    return text


def render_conversation(conv: list[dict]) -> str:
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in conv)


def judge_request(template: str, conv_a: list[dict], conv_b: list[dict]) -> list[dict]:
    """The judge's input conversation. str.replace, not str.format: replies may contain braces."""
    text = template.replace("{conversation_a}", render_conversation(conv_a))
    text = text.replace("{conversation_b}", render_conversation(conv_b))
    return [{"role": "user", "content": text}]


def parse_verdict(reply: str | None) -> str | None:
    """'A', 'B', 'C' (tie), or None when the reply has no verdict or contradicting ones."""
    if not reply:
        return None
    found = set(VERDICT_RE.findall(reply))
    return found.pop() if len(found) == 1 else None


def combine_orders(first: str | None, second: str | None) -> tuple[str, bool]:
    """Outcome for the MUSIC RM from two label verdicts: first with A=baseline/B=music, second swapped.

    As in MT-Bench's pairwise judging, a side wins only when both orders agree; any disagreement
    (including one tie) is a tie. Returns (outcome, consistent). A missing verdict (None) is a failed judge
    call: the caller counts the game as failed before combining (here it reads as a tie).
    """
    to_outcome_1 = {"A": "loss", "B": "win", "C": "tie", None: "tie"}
    to_outcome_2 = {"A": "win", "B": "loss", "C": "tie", None: "tie"}
    o1, o2 = to_outcome_1[first], to_outcome_2[second]
    return (o1, True) if o1 == o2 else ("tie", False)


# ---------------------------------------------------------------- graded verdicts
def label_logprobs(
    judge,
    requests: Sequence[list[dict]],
    *,
    options: Sequence[str] = VERDICT_OPTIONS,
    prefix: str = VERDICT_PREFIX,
    max_new_tokens: int | None = None,
    desc: str | None = None,
) -> list[dict[str, float] | None]:
    """Per request {option: log-probability of the option's first token after `prefix`}; None for a request that
    failed (a served judge that returned no log-probabilities for the verdict).

    A backend with an `option_logprobs` method (served judges) answers itself; an in-process backend (one with
    `next_token_logits`) is asked for the logits of the token after the rendered prompt + prefix: one forward
    pass per request, batched, no sampling."""
    if hasattr(judge, "option_logprobs"):
        return judge.option_logprobs(
            list(requests), list(options), prefix=prefix, max_new_tokens=max_new_tokens, desc=desc
        )
    if hasattr(judge, "option_prompts") and hasattr(judge, "next_token_logits"):
        return _in_process_logprobs(judge, requests, options, prefix, desc)
    raise TypeError(
        f"{type(judge).__name__} gives no label log-probabilities (neither option_logprobs nor next_token_logits): "
        "set evaluate.bon_judge_graded: false to parse generated verdicts instead"
    )


def _in_process_logprobs(judge, requests, options, prefix, desc) -> list[dict[str, float]]:
    import torch
    from tqdm.auto import tqdm

    from music.threads import forward_threads

    first, prompts = judge.option_prompts(list(requests), list(options), prefix)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[dict[str, float] | None] = [None] * len(prompts)
    bs = max(1, int(judge.cfg.batch_size))
    for start in tqdm(range(0, len(order), bs), desc=desc or f"{judge.name} label log-probabilities", unit="batch"):
        rows = order[start : start + bs]
        with forward_threads():  # music.threads
            logits = judge.next_token_logits([prompts[i] for i in rows])
        lp = torch.log_softmax(logits.float(), dim=-1)[:, first].tolist()
        for r, i in enumerate(rows):
            out[i] = {o: float(v) for o, v in zip(options, lp[r])}
    return out


def preference(lp: dict[str, float] | None) -> float | None:
    """One order's graded verdict: log p(A) - log p(B), > 0 when the judge prefers position A; None if failed."""
    if not lp or "A" not in lp or "B" not in lp or not all(math.isfinite(lp[k]) for k in ("A", "B")):
        return None
    return lp["A"] - lp["B"]


def graded_margin(first: dict | None, second: dict | None) -> float | None:
    """The second conversation's advantage in nats, from both orders: `first` judged (x as A, y as B), `second`
    judged (y as A, x as B); > 0 favours y. A judge that adds a constant c to log p(A) - log p(B) whatever it
    reads gives (-c) + (+c) = 0: position bias cancels. None when either order failed."""
    p1, p2 = preference(first), preference(second)
    return None if p1 is None or p2 is None else p2 - p1


def outcome_of_margin(margin: float, tie: float = TIE_NATS) -> str:
    """win (> tie), loss (< -tie) or tie, for the side the margin is measured for."""
    return "win" if margin > tie else "loss" if margin < -tie else "tie"


def likeliest(lp: dict[str, float] | None) -> str | None:
    """The label the judge finds likeliest (what a constrained verdict would have said); None if failed."""
    return max(lp, key=lambda k: (lp[k], k)) if lp else None


# ---------------------------------------------------------------- the judge on pairs with a known answer
def judge_check(
    judge,
    pairs: Sequence[Any],
    template: str,
    *,
    graded: bool = True,
    clusters: Sequence[object] | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    constrained: bool = True,
    n_boot: int = 4000,
    desc: str = "judge check",
) -> tuple[dict, list[dict]]:
    """The judge's accuracy on pairs whose answer is known (pair.chosen better than pair.rejected), judged in
    both orders as the Best-of-N games are: graded, a pair is right when the summed margin favours the chosen
    conversation (a tie, margin 0, counts one half); by label, when both orders prefer it (disagreement or a
    tie verdict: one half). 95% percentile bootstrap over clusters (clusters[i]: pair i's conversation; each
    pair alone by default). A failed call (None) leaves its pair out, counted in n_failed.

    Returns (numbers: accuracy, ci_low, ci_high, n_pairs, n_clusters, n_failed, at_chance (1 when the interval
    holds 50%, or no pair was judged), first_position_share (how often the likeliest label of a call was A, over
    both orders: 0.5 for a judge without position bias), records: one per pair (pair_id, score, margin,
    verdicts))."""
    from music.evaluate.stats import two_level_bootstrap

    requests = []
    for p in pairs:
        requests += [judge_request(template, p.chosen, p.rejected), judge_request(template, p.rejected, p.chosen)]
    calls = _judge_calls(
        judge, requests, graded=graded, seed=seed, max_new_tokens=max_new_tokens, constrained=constrained, desc=desc
    )
    records, scores, kept = [], [], []
    for i, p in enumerate(pairs):
        one, two = calls[2 * i], calls[2 * i + 1]
        rec = {"pair_id": (getattr(p, "meta", None) or {}).get("pair_id", i), "score": None, "margin": None}
        if graded:
            # margin for `chosen`: graded_margin measures the second-named conversation of order 1 (`rejected`)
            m = graded_margin(one, two)
            rec.update(logprobs=[one, two], verdicts=[likeliest(one), likeliest(two)])
            if m is not None:
                rec["margin"] = -m
                rec["score"] = {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome_of_margin(-m)]
        else:
            rec["verdicts"] = [one, two]
            if one is not None and two is not None:  # combine_orders' "win" is the second-named side's (rejected)
                outcome, _ = combine_orders(one, two)
                rec["score"] = {"win": 0.0, "tie": 0.5, "loss": 1.0}[outcome]
        records.append(rec)
        if rec["score"] is not None:
            scores.append(rec["score"])
            kept.append(i)
    labels = [v for r in records for v in r.get("verdicts", []) if v is not None]
    cl = [str(clusters[i]) if clusters is not None else str(i) for i in kept]
    boot = two_level_bootstrap([[scores]], (1.0,), cl, n_boot=n_boot, seed=seed) if scores else {}
    lo, hi = boot.get("ci_low"), boot.get("ci_high")
    numbers = {
        "accuracy": boot.get("diff"),
        "ci_low": lo,
        "ci_high": hi,
        "n_pairs": len(scores),
        "n_clusters": boot.get("n_clusters", 0),
        "n_failed": len(pairs) - len(scores),
        "at_chance": int(lo is None or lo <= CHANCE <= hi),
        "first_position_share": (sum(v == "A" for v in labels) / len(labels)) if labels else None,
    }
    return numbers, records


def _judge_calls(judge, requests, *, graded, seed, max_new_tokens, constrained, desc) -> list:
    """Per request: the label log-probabilities (graded) or the parsed label; None for a failed call."""
    if not requests:
        return []
    if graded:
        return label_logprobs(judge, requests, max_new_tokens=max_new_tokens, desc=desc)
    replies = generate_verdicts(
        judge, requests, seed=seed, max_new_tokens=max_new_tokens, constrained=constrained, desc=desc
    )
    return [parse_verdict(r.text) for r in replies]


def generate_verdicts(judge, requests, *, seed, max_new_tokens, constrained, temperature=0.0, desc="judge"):
    """The judge's replies: the likeliest of [[A]]/[[B]]/[[C]] where the backend can choose (constrained), else
    generated (and parsed by the caller)."""
    if constrained and hasattr(judge, "choose"):
        return judge.choose(
            list(requests),
            list(VERDICT_OPTIONS),
            prefix=VERDICT_PREFIX,
            suffix=VERDICT_SUFFIX,
            seed=seed,
            max_new_tokens=max_new_tokens,
            desc=desc,
        )
    return judge.generate(list(requests), seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, desc=desc)
