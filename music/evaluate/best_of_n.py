"""Best-of-N with two reward models on two-turn prompts, judged pairwise in both orders.

At each assistant turn the policy samples max(N) candidates for a context once; for smaller N the
first N of them are reused (same context, same samples, so N=2 is a prefix of N=4 and N=8). Turn-1
contexts are shared by both RMs; turn-2 contexts contain that RM's own turn-1 pick, so they differ
per RM and N (identical ones are generated once). Each RM picks the candidate whose whole
conversation so far it scores highest. A judge compares the baseline RM's final conversation with
the MUSIC RM's in both orders; when both RMs picked identical conversations the game is a tie and
the judge is not called.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from music.chat import make_chat
from music.evaluate.judge import VERDICT_OPTIONS, combine_orders, judge_request, load_template, parse_verdict
from music.evaluate.pairwise import require_model
from music.evaluate.stats import wilson_interval
from music.io import write_json, write_jsonl
from music.rm.score import RewardScorer
from music.sources import load_mtbench_questions

RMS = ("baseline", "music")


@dataclass
class Game:
    question_id: object
    n: int
    conversations: dict[str, list[dict] | None]  # rm name -> final conversation (None: generation failed)
    outcome: str = "failed"  # for MUSIC: win | tie | loss | failed
    identical: bool = False
    verdicts: list[str | None] = field(default_factory=list)  # [A=baseline order, A=music order]
    replies: list[str | None] = field(default_factory=list)
    consistent: bool | None = None


def choose_questions(questions: Sequence[dict], k: int, seed: int) -> list[dict]:
    """k two-turn questions, a seeded sample in question_id order (stable across runs)."""
    two_turn = sorted((q for q in questions if len(q.get("turns", [])) >= 2), key=lambda q: str(q["question_id"]))
    if len(two_turn) < k:
        raise ValueError(f"asked for {k} best-of-N prompts but only {len(two_turn)} two-turn questions exist")
    picked = random.Random(seed).sample(range(len(two_turn)), k)
    return [two_turn[i] for i in sorted(picked)]


def sample_candidates(policy, contexts, counts, *, seed, max_new_tokens, temperature, desc) -> list[list[str | None]]:
    """counts[i] samples for contexts[i] in ONE generate call (identical inputs = distinct samples)."""
    flat = [ctx for ctx, k in zip(contexts, counts) for _ in range(k)]
    replies = policy.generate(flat, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, desc=desc)
    texts = [r.text.strip() if r.text and r.text.strip() else None for r in replies]
    out, i = [], 0
    for k in counts:
        out.append(texts[i : i + k])
        i += k
    return out


def score_candidates(scorer, context: list[dict], candidates: Sequence[str | None]) -> list[float]:
    """Score context + candidate as one conversation; failed candidates get -inf."""
    valid = [c for c in candidates if c is not None]
    scores = iter(scorer.score([context + [{"role": "assistant", "content": c}] for c in valid]) if valid else [])
    return [next(scores) if c is not None else -math.inf for c in candidates]


def pick(scores: Sequence[float], n: int) -> int | None:
    """Index of the best of the first n candidates (lowest index on ties); None if all failed."""
    best = max(range(n), key=lambda i: (scores[i], -i))
    return None if scores[best] == -math.inf else best


def _select_turn(scorers, contexts_by_rm_n, candidates_by_key, key_by_rm_n):
    """For each (rm, n): the chosen reply text (or None), scoring each context once per RM."""
    scores_cache: dict[tuple[str, object], list[float]] = {}
    chosen = {}
    for (rm, n), ctx in contexts_by_rm_n.items():
        if ctx is None:
            chosen[(rm, n)] = None
            continue
        key = key_by_rm_n[(rm, n)]
        if (rm, key) not in scores_cache:
            scores_cache[(rm, key)] = score_candidates(scorers[rm], ctx, candidates_by_key[key])
        i = pick(scores_cache[(rm, key)], n)
        chosen[(rm, n)] = None if i is None else candidates_by_key[key][i]
    return chosen


def run_best_of_n(
    questions: Sequence[dict],
    scorers: dict,
    policy,
    judge,
    *,
    ns: Sequence[int],
    seed: int,
    policy_max_new_tokens: int,
    policy_temperature: float,
    judge_max_new_tokens: int,
    judge_temperature: float,
    judge_constrained: bool = False,
    template: str | None = None,
) -> list[Game]:
    """Play one game per (question, N); see the module docstring for the protocol."""
    ns = sorted(set(int(n) for n in ns))
    template = template or load_template()
    turns = len(questions[0]["turns"])  # MT-Bench: 2
    # context per (question index, rm, n); starts with the first user turn, shared by all.
    contexts = {(q, rm, n): [] for q in range(len(questions)) for rm in RMS for n in ns}
    for t in range(turns):
        for (q, rm, n), ctx in contexts.items():
            if ctx is not None:
                ctx.append({"role": "user", "content": questions[q]["turns"][t]})
        # Distinct contexts, each sampled max(N that uses it) times.
        key_of = {k: (k[0], repr(c)) for k, c in contexts.items() if c is not None}
        need: dict[tuple, int] = {}
        ctx_of_key: dict[tuple, list[dict]] = {}
        for k, key in key_of.items():
            need[key] = max(need.get(key, 0), k[2])
            ctx_of_key[key] = contexts[k]
        keys = sorted(need)
        cands = sample_candidates(
            policy, [ctx_of_key[k] for k in keys], [need[k] for k in keys], seed=seed + t,
            max_new_tokens=policy_max_new_tokens, temperature=policy_temperature, desc=f"best-of-N turn {t + 1}",
        )
        cand_by_key = dict(zip(keys, cands))
        for q in range(len(questions)):
            sub = {(rm, n): contexts[(q, rm, n)] for rm in RMS for n in ns}
            chosen = _select_turn(scorers, sub, cand_by_key, {(rm, n): key_of.get((q, rm, n)) for rm in RMS for n in ns})
            for (rm, n), text in chosen.items():
                if text is None:
                    contexts[(q, rm, n)] = None
                else:
                    contexts[(q, rm, n)] = contexts[(q, rm, n)] + [{"role": "assistant", "content": text}]
    games = [
        Game(questions[q]["question_id"], n, {rm: contexts[(q, rm, n)] for rm in RMS})
        for q in range(len(questions)) for n in ns
    ]
    _judge_games(games, judge, template, max_new_tokens=judge_max_new_tokens, temperature=judge_temperature, seed=seed,
                 constrained=judge_constrained)
    return games


def _judge_games(games: list[Game], judge, template: str, *, max_new_tokens: int, temperature: float, seed: int,
                 constrained: bool = False) -> None:
    requests, owners = [], []
    for g in games:
        base, mus = g.conversations["baseline"], g.conversations["music"]
        if base is None or mus is None:
            continue  # outcome stays "failed"
        if base == mus:
            g.identical, g.outcome = True, "tie"
            continue
        requests += [judge_request(template, base, mus), judge_request(template, mus, base)]
        owners.append(g)
    if requests:
        if constrained:  # the verdict is the likeliest of [[A]]/[[B]]/[[C]] (generation where unsupported)
            replies = judge.choose(requests, list(VERDICT_OPTIONS), prefix="[[", suffix="]]", seed=seed,
                                   max_new_tokens=max_new_tokens, desc="judge")
        else:
            replies = judge.generate(requests, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, desc="judge")
        for i, g in enumerate(owners):
            g.replies = [replies[2 * i].text, replies[2 * i + 1].text]
            g.verdicts = [parse_verdict(r) for r in g.replies]
            g.outcome, g.consistent = combine_orders(*g.verdicts)


def summarize(games: Sequence[Game]) -> dict:
    """Per N: counts, rates for MUSIC with 95% Wilson intervals, and the judge's bookkeeping."""
    by_n: dict[str, dict] = {}
    for n in sorted({g.n for g in games}):
        gs = [g for g in games if g.n == n]
        played = [g for g in gs if g.outcome != "failed"]
        total = len(played)
        counts = {o: sum(g.outcome == o for g in played) for o in ("win", "tie", "loss")}
        verdicts = [v for g in played for v in g.verdicts]
        row = {
            "n_games": total,
            "wins": counts["win"],
            "ties": counts["tie"],
            "losses": counts["loss"],
            "n_identical": sum(g.identical for g in played),
            "n_judge_calls": len(verdicts),
            "n_unparsed": sum(v is None for v in verdicts),
            "n_inconsistent": sum(g.consistent is False for g in played),
            "n_failed": len(gs) - total,
            "verdict_a": sum(v == "A" for v in verdicts),
            "verdict_b": sum(v == "B" for v in verdicts),
            "verdict_c": sum(v == "C" for v in verdicts),
        }
        for o in ("win", "tie", "loss"):
            lo, hi = wilson_interval(counts[o], total)
            row[f"{o}_rate"] = counts[o] / total if total else None
            row[f"{o}_ci_low"], row[f"{o}_ci_high"] = (lo, hi) if total else (None, None)
        by_n[str(n)] = row
    return by_n


def game_record(g: Game) -> dict:
    return dataclasses.asdict(g)


# ---------------------------------------------------------------- stage
def _same_model(a, b) -> bool:
    """Two ChatModelConfigs that differ only in sampling settings can share one loaded backend."""
    sampling = ("temperature", "max_new_tokens", "top_p")
    ident = [{k: v for k, v in dataclasses.asdict(c).items() if k not in sampling} for c in (a, b)]
    return ident[0] == ident[1]


def run_stage(P, *, questions_path: str | None = None) -> dict:
    """The best_of_n stage: needs both trained RMs; writes best_of_n.json (+ the games as jsonl)."""
    cfg = P.evaluate
    model_dirs = {rm: require_model(Path(P.paths.models) / rm, rm) for rm in RMS}
    questions = choose_questions(load_mtbench_questions(questions_path or cfg.bon_questions_path), cfg.bon_prompts, cfg.seed)
    start = time.perf_counter()
    scorers = {rm: RewardScorer(str(d), batch_size=cfg.batch_size, max_length=cfg.max_length) for rm, d in model_dirs.items()}
    policy = make_chat(cfg.policy, P.paths.cache)
    judge = policy if _same_model(cfg.policy, cfg.judge) else make_chat(cfg.judge, P.paths.cache)
    games = run_best_of_n(
        questions, scorers, policy, judge, ns=cfg.bon_ns, seed=cfg.seed,
        policy_max_new_tokens=cfg.policy.max_new_tokens, policy_temperature=cfg.policy.temperature,
        judge_max_new_tokens=cfg.judge.max_new_tokens, judge_temperature=cfg.judge.temperature,
        judge_constrained=cfg.judge_constrained,
    )
    result = {
        "by_n": summarize(games),
        "n_prompts": len(questions),
        "question_ids": [q["question_id"] for q in questions],
        "policy": cfg.policy.model,
        "judge": cfg.judge.model,
        "judge_mode": "constrained (likeliest verdict token)" if cfg.judge_constrained else "generated and parsed",
        "seconds": round(time.perf_counter() - start, 1),
        "rule": "MUSIC wins a game only if the judge prefers it in both orders; disagreement, a tie verdict, "
        "an unparsed reply, or identical picks (judge not called) count as a tie",
    }
    metrics = Path(P.paths.metrics)
    write_json(metrics / "best_of_n.json", result)
    write_jsonl(metrics / "best_of_n_games.jsonl", (game_record(g) for g in games))
    return result
