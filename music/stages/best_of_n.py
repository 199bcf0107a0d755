"""Best-of-N with two reward models over K-turn conversations, judged pairwise in both orders.

Prompts come from a source (music.sources.prompts: MT-Bench's two scripted user turns by default,
HH-RLHF or UltraInteract first turns, or a local file). A game is K assistant turns (`bon_turns`,
default: the prompt's own turns). User turn t is the prompt's t-th turn where it has one; beyond that
the user simulator (simulate.user, the same role-play as the simulate stage) writes it from that
conversation so far, so the user's later turns react to what that RM picked.

At each assistant turn the policy samples max(N) candidates for a context once; for smaller N the
first N of them are reused (same context, same samples, so N=2 is a prefix of N=4 and N=8). Turn-1
contexts are shared by both RMs; later contexts contain that RM's own picks, so they differ per RM
and N (identical ones are generated once). Each RM picks the candidate whose whole conversation so
far it scores highest. The RMs score one at a time (`OneAtATime` keeps one loaded: two 9B RMs do not
fit one GPU together), in alternating order so the last one of a turn stays loaded for the next.
A candidate whose request failed (or came back empty) is counted (`candidate_failures`, under
evaluate.max_failed_share); a game in which an RM picked among fewer than N usable candidates is a *short*
game (`n_short_games`), played and shown.

A judge compares the baseline RM's final conversation with the MUSIC RM's in both orders; when both RMs
picked identical conversations the game is a tie and the judge is not called. By default
(`bon_judge_graded`) the verdict is graded: the judge's log-probabilities of the labels A and B in each order,
summed across the orders so that a constant position preference cancels (music.evaluate.judge); MUSIC wins
when the summed margin favours its conversation. With `bon_judge_graded: false` the verdict is a label and a
disagreement between the orders is a tie (as in MT-Bench's pairwise judging). A judge call that fails (no
log-probabilities, an unparsed label) fails its game, counted per reason under evaluate.max_failed_share.
Before its verdicts are read, the judge is measured on `bon_judge_check_pairs` held-out quality twins (a known
answer: the real or reference reply beats the weak one; no RM trained on them), judged the same way: its
accuracy with a bootstrap interval over conversations. A judge whose interval holds 50% is at chance, and the
comparison it judges is then uninformative, whatever the win rate. The judge prompt states only what holds in
all settings: the first user message is shared, later ones may differ (simulated per conversation).

Every training seed plays: seed s of the baseline RM against seed s of the MUSIC RM, one game per
(prompt, N, seed). Per N the stage reports wins W, ties T, losses L over the N_games games, the win rate
(W + T/2) / N_games (ties split, the paper's comparison) beside W / (W + L) (decided games only), each
with a 95% percentile bootstrap that resamples prompts (each prompt's games together) and the paired seeds
(music.evaluate.stats.resample_counts: the two levels of the other endpoints' intervals).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from music.chat import make_chat
from music.chat.base import derive_seed
from music.chat.rollout import SimPrompts, make_event, user_view
from music.config import ChatModelConfig, EvalConfig, Params
from music.evaluate.judge import (
    combine_orders,
    generate_verdicts,
    graded_margin,
    judge_check,
    judge_request,
    label_logprobs,
    likeliest,
    load_template,
    outcome_of_margin,
    parse_verdict,
)
from music.evaluate.pairwise import require_model
from music.evaluate.stats import resample_counts, wilson_interval
from music.failures import check_failed_share, failure_summary
from music.files import write_json, write_jsonl
from music.rm.score import RewardScorer
from music.sources.prompts import load_prompts
from music.stages import check_variant
from music.store import read_pairs, seed_dir

N_BOOT = 4000  # bootstrap draws over prompts and seeds for the win-rate intervals (and over the judge check pairs)

RMS = ("baseline", "music")
SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # MUSIC's share of a game, (W + T/2) / N
JUDGE_CHECK_SET = "quality_eval"  # the held-out quality twins (music.stages.heldout) in paths.heldout
# known pairs whose judge prompt is longer are left out of the judge check: a 135M judge reads about 250 prompt
# tokens a second on 2 CPU cores, and the longest twins' prompts run to 4,400 characters (median 2,200); 85 of the
# default run's 133 twins fit
JUDGE_CHECK_MAX_CHARS = 2500


@dataclass
class Game:
    question_id: object  # the prompt's id in its source
    n: int
    conversations: dict[str, list[dict] | None]  # rm name -> final conversation (None: generation failed)
    outcome: str = "failed"  # for MUSIC: win | tie | loss | failed
    identical: bool = False
    verdicts: list[str | None] = field(default_factory=list)  # [A=baseline order, A=music order]; graded: likeliest
    replies: list[str | None] = field(default_factory=list)  # label verdicts: the judge's raw replies
    consistent: bool | None = None  # label verdicts: both orders agreed
    rm_seed: int | None = None  # the training seed of both RMs (seed s of baseline vs seed s of MUSIC)
    margin: float | None = None  # graded: MUSIC's advantage in nats, both orders summed (> 0 favours MUSIC)
    logprobs: list[dict | None] = field(default_factory=list)  # graded: {label: log-probability} per order
    failure: str | None = None  # why it failed: no_conversation | judge_error | judge_unparsed
    error: str | None = None  # the first error behind `failure`
    candidates: dict[str, list[list[int]]] = field(default_factory=dict)  # rm -> per turn [usable, distinct] of N
    picks: dict[str, list[int | None]] = field(default_factory=dict)  # rm -> per turn the picked candidate's index


@dataclass
class CandidateLog:
    """Every policy candidate sampled (all games of a call) and the ones that failed, (reason, error) each."""

    sampled: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def prompt_id(p: dict) -> object:
    return p["prompt_id"] if "prompt_id" in p else p["question_id"]


def choose_questions(prompts: Sequence[dict], k: int, seed: int) -> list[dict]:
    """k prompts, a seeded sample in id order (stable across runs; MT-Bench's choice is unchanged)."""
    pool = sorted((p for p in prompts if p.get("turns")), key=lambda p: str(prompt_id(p)))
    if len(pool) < k:
        raise ValueError(f"asked for {k} best-of-N prompts (evaluate.bon_prompts) but the source has {len(pool)}")
    picked = random.Random(seed).sample(range(len(pool)), k)
    return [pool[i] for i in sorted(picked)]


class OneAtATime:
    """Reward models by name, loaded on first use; at most one is in memory (the other is freed first)."""

    def __init__(self, factories: dict[str, Callable[[], Any]]):
        self.factories = factories
        self.name: str | None = None
        self.current: Any = None
        self.loads = 0

    def __getitem__(self, rm: str):
        if rm != self.name:
            self.release()
            self.current, self.name = self.factories[rm](), rm
            self.loads += 1
        return self.current

    def release(self) -> None:
        self.current, self.name = None, None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def sample_candidates(
    policy, contexts, counts, *, seed, max_new_tokens, temperature, desc, log: CandidateLog | None = None
) -> list[list[str | None]]:
    """counts[i] samples for contexts[i] in ONE generate call (identical inputs = distinct samples). A failed
    request (policy_error) or an empty reply (policy_empty) is None, and counted in `log`."""
    flat = [ctx for ctx, k in zip(contexts, counts) for _ in range(k)]
    replies = policy.generate(flat, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, desc=desc)
    texts = [r.text.strip() if r.text and r.text.strip() else None for r in replies]
    if log is not None:
        log.sampled += len(replies)
        log.failures += [
            ("policy_error", f"{desc}: {r.error or 'request failed'}")
            if r.text is None
            else ("policy_empty", f"{desc}: an empty reply (finish_reason {r.finish_reason})")
            for r, t in zip(replies, texts)
            if t is None
        ]
    out, i = [], 0
    for k in counts:
        out.append(texts[i : i + k])
        i += k
    return out


def pick(scores: Sequence[float], n: int) -> int | None:
    """Index of the best of the first n candidates (lowest index on ties); None if all failed."""
    best = max(range(n), key=lambda i: (scores[i], -i))
    return None if scores[best] == -math.inf else best


def score_keys(scorer, keys, ctx_of_key, cand_by_key) -> dict:
    """key -> one score per candidate (-inf for failed ones), all keys in ONE scorer call."""
    convs, owners = [], []
    for key in keys:
        for j, c in enumerate(cand_by_key[key]):
            if c is not None:
                convs.append(ctx_of_key[key] + [{"role": "assistant", "content": c}])
                owners.append((key, j))
    out = {key: [-math.inf] * len(cand_by_key[key]) for key in keys}
    for (key, j), score in zip(owners, scorer.score(convs) if convs else []):
        out[key][j] = score
    return out


def simulate_user_turns(
    user,
    contexts: dict,
    needs: list,
    *,
    prompts: SimPrompts,
    seed: int,
    turn: int,
    max_new_tokens: int | None,
    temperature: float | None,
    trim: bool,
) -> None:
    """Append a simulated user message to each context in `needs` (distinct contexts asked once)."""
    distinct: dict[tuple, list[dict]] = {}
    for k in needs:
        distinct.setdefault((k[0], repr(contexts[k])), contexts[k])
    keys = sorted(distinct)
    replies = user.generate(
        [user_view(distinct[key], prompts) for key in keys],
        seed=derive_seed(seed, "bon-user", turn),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        desc=f"best-of-N user turn {turn}",
    )
    text = {}
    for key, rep in zip(keys, replies):
        event, failure = make_event(rep, branch="best_of_n", turn=turn, role="user", trim=trim, user_voice=True)
        text[key] = None if failure else event.text
    for k in needs:
        t = text[(k[0], repr(contexts[k]))]
        contexts[k] = None if t is None else contexts[k] + [{"role": "user", "content": t}]


def run_best_of_n(
    questions: Sequence[dict],
    scorers,
    policy,
    judge,
    cfg: EvalConfig,
    *,
    user=None,
    user_cfg: ChatModelConfig | None = None,
    trim: bool = True,
    template: str | None = None,
    sim_prompts: SimPrompts | None = None,
    log: CandidateLog | None = None,
) -> list[Game]:
    """Play one game per (prompt, N in cfg.bon_ns) over cfg.bon_turns assistant turns (default: the fewest any
    prompt scripts); see the module docstring. Sampling and judging settings come from cfg.policy, cfg.judge,
    cfg.bon_judge_graded, cfg.judge_constrained and cfg.seed.

    `scorers[rm].score(conversations)` gives the scores; a OneAtATime keeps one RM loaded.
    `user` (a chat backend, sampled with `user_cfg`'s settings) writes the user turns a prompt does not script.
    `log` (a CandidateLog) counts the policy candidates sampled and the failed ones.
    """
    ns = sorted(set(int(n) for n in cfg.bon_ns))
    seed = cfg.seed
    template = template or load_template()
    turns = cfg.bon_turns or min(len(q["turns"]) for q in questions)
    if user is None and any(len(q["turns"]) < turns for q in questions):
        raise ValueError(f"{turns} turns need a user simulator for the prompts with fewer scripted turns")
    sim_prompts = sim_prompts or (SimPrompts.load() if user is not None else None)
    # context per (question index, rm, n); starts with the first user turn, shared by all.
    contexts: dict[tuple, list[dict] | None] = {(q, rm, n): [] for q in range(len(questions)) for rm in RMS for n in ns}
    seen: dict[tuple, list[list[int]]] = {k: [] for k in contexts}  # per turn [usable, distinct] of the first N
    picked: dict[tuple, list[int | None]] = {k: [] for k in contexts}
    order = list(RMS)
    for t in range(turns):
        simulated = []
        for (q, rm, n), ctx in contexts.items():
            if ctx is None:
                continue
            if t < len(questions[q]["turns"]):
                ctx.append({"role": "user", "content": questions[q]["turns"][t]})
            else:
                simulated.append((q, rm, n))
        if simulated:
            simulate_user_turns(
                user,
                contexts,
                simulated,
                prompts=sim_prompts,
                seed=seed,
                turn=t + 1,
                max_new_tokens=user_cfg.max_new_tokens if user_cfg else None,
                temperature=user_cfg.temperature if user_cfg else None,
                trim=trim,
            )
        # Distinct contexts, each sampled max(N that uses it) times.
        key_of = {k: (k[0], repr(c)) for k, c in contexts.items() if c is not None}
        need: dict[tuple, int] = {}
        ctx_of_key: dict[tuple, list[dict]] = {}
        for k, key in key_of.items():
            need[key] = max(need.get(key, 0), k[2])
            ctx_of_key[key] = contexts[k]
        keys = sorted(need)
        cands = (
            sample_candidates(
                policy,
                [ctx_of_key[k] for k in keys],
                [need[k] for k in keys],
                seed=seed + t,
                max_new_tokens=cfg.policy.max_new_tokens,
                temperature=cfg.policy.temperature,
                desc=f"best-of-N turn {t + 1}",
                log=log,
            )
            if keys
            else []
        )
        cand_by_key = dict(zip(keys, cands))
        for rm in order:  # one RM at a time, every context of the turn in one scoring call
            mine = {k: key for k, key in key_of.items() if k[1] == rm}
            scores = score_keys(scorers[rm], sorted(set(mine.values())), ctx_of_key, cand_by_key) if mine else {}
            for k, key in mine.items():
                first = [c for c in cand_by_key[key][: k[2]] if c is not None]
                seen[k].append([len(first), len(set(first))])
                i = pick(scores[key], k[2])
                picked[k].append(i)
                contexts[k] = (
                    None if i is None else contexts[k] + [{"role": "assistant", "content": cand_by_key[key][i]}]
                )
        order.reverse()  # the RM scored last stays loaded for the next turn
    games = [
        Game(
            prompt_id(questions[q]),
            n,
            {rm: contexts[(q, rm, n)] for rm in RMS},
            candidates={rm: seen[(q, rm, n)] for rm in RMS},
            picks={rm: picked[(q, rm, n)] for rm in RMS},
        )
        for q in range(len(questions))
        for n in ns
    ]
    _judge_games(
        games,
        judge,
        template,
        graded=cfg.bon_judge_graded,
        max_new_tokens=cfg.judge.max_new_tokens,
        temperature=cfg.judge.temperature,
        seed=seed,
        constrained=cfg.judge_constrained,
    )
    return games


def _judge_games(
    games: list[Game],
    judge,
    template: str,
    *,
    graded: bool = True,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    constrained: bool = False,
) -> None:
    requests, owners = [], []
    for g in games:
        base, mus = g.conversations["baseline"], g.conversations["music"]
        if base is None or mus is None:  # outcome stays "failed"
            g.failure = "no_conversation"
            g.error = f"no conversation for {', '.join(rm for rm, c in g.conversations.items() if c is None)}"
            continue
        if base == mus:
            g.identical, g.outcome = True, "tie"
            continue
        requests += [judge_request(template, base, mus), judge_request(template, mus, base)]
        owners.append(g)
    if not requests:
        return
    if graded:  # the labels' log-probabilities in both orders, summed: a constant position preference cancels
        lps = label_logprobs(judge, requests, max_new_tokens=max_new_tokens, desc="judge")
        for i, g in enumerate(owners):
            g.logprobs = [lps[2 * i], lps[2 * i + 1]]
            g.verdicts = [likeliest(lp) for lp in g.logprobs]
            g.margin = graded_margin(*g.logprobs)
            if g.margin is None:
                g.failure, g.error = "judge_error", "the judge gave no label log-probabilities in one order or both"
            else:
                g.outcome = outcome_of_margin(g.margin)
        return
    replies = generate_verdicts(
        judge,
        requests,
        seed=seed,
        max_new_tokens=max_new_tokens,
        constrained=constrained,
        temperature=temperature,
        desc="judge",
    )
    for i, g in enumerate(owners):
        pair = [replies[2 * i], replies[2 * i + 1]]
        g.replies = [r.text for r in pair]
        g.verdicts = [parse_verdict(r.text) for r in pair]
        if any(r.text is None for r in pair):
            g.failure = "judge_error"
            g.error = next(r.error or "request failed" for r in pair if r.text is None)
        elif None in g.verdicts:
            g.failure, g.error = "judge_unparsed", f"no verdict in {g.replies!r}"
        else:
            g.outcome, g.consistent = combine_orders(*g.verdicts)


def win_rates(outcomes: Sequence[str]) -> tuple[float | None, float | None]:
    """((W + T/2) / N, W / (W + L)) for MUSIC over played games; None where the denominator is 0."""
    w, t, losses = (sum(o == k for o in outcomes) for k in ("win", "tie", "loss"))
    n = w + t + losses
    return ((w + t / 2) / n if n else None, w / (w + losses) if w + losses else None)


def design_bootstrap(games: Sequence[Game], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """95% percentile intervals of both win rates, resampling the design's two levels: prompts (each prompt's
    games, every seed, together) and, within each draw, the paired training seeds (seed s of both RMs: one game per
    prompt each), with music.evaluate.stats.resample_counts in two_level_bootstrap's order (prompts, then seeds).
    Failed games are left out of every draw. W / (W + L) is undefined in a draw without decided games: those draws
    are left out (counted)."""
    import numpy as np

    played = [g for g in games if g.outcome != "failed"]
    prompts = sorted({str(g.question_id) for g in played})
    seeds = sorted({g.rm_seed for g in played}, key=str)
    out = {
        "win_rate_ties_half_ci_low": None,
        "win_rate_ties_half_ci_high": None,
        "win_rate_decided_ci_low": None,
        "win_rate_decided_ci_high": None,
        "boot_draws_without_decided_games": 0,
        "n_seeds": len(seeds),
    }
    if not played:
        return out
    col, row = {p: i for i, p in enumerate(prompts)}, {s: i for i, s in enumerate(seeds)}
    shape = (len(seeds), len(prompts))
    score, won, ok, decided = (np.zeros(shape) for _ in range(4))
    for g in played:
        at = (row[g.rm_seed], col[str(g.question_id)])
        if ok[at]:
            raise ValueError(f"two games of prompt {g.question_id}, N={g.n}, seed {g.rm_seed}")
        ok[at], score[at] = 1.0, SCORE[g.outcome]
        decided[at], won[at] = float(g.outcome != "tie"), float(g.outcome == "win")
    rng = np.random.default_rng(seed)
    w = resample_counts(rng, len(prompts), n_boot)  # (draws x prompts)
    c = resample_counts(rng, len(seeds), n_boot)  # (draws x seeds)

    def ratio(values, mask):
        num, den = ((c @ (values * mask)) * w).sum(axis=1), ((c @ mask) * w).sum(axis=1)
        keep = den > 0
        return num[keep] / den[keep], int((~keep).sum())

    half, _ = ratio(score, ok)
    out["win_rate_ties_half_ci_low"], out["win_rate_ties_half_ci_high"] = (
        float(np.quantile(half, 0.025)),
        float(np.quantile(half, 0.975)),
    )
    dec, out["boot_draws_without_decided_games"] = ratio(won, decided)
    if dec.size:
        out["win_rate_decided_ci_low"], out["win_rate_decided_ci_high"] = (
            float(np.quantile(dec, 0.025)),
            float(np.quantile(dec, 0.975)),
        )
    return out


def summarize(games: Sequence[Game], judge: dict | None = None) -> dict:
    """Per N: counts, rates for MUSIC with 95% Wilson intervals (over games, as if independent), the two win rates
    ((W + T/2) / N and W / (W + L)) with prompt x seed bootstrap intervals, how often both RMs picked the identical
    conversation, short games (fewer than N usable candidates at some turn), failures by reason, the judge's
    bookkeeping and (given `judge`, the judge check's numbers) its accuracy on known pairs."""
    by_n: dict[str, dict] = {}
    for n in sorted({g.n for g in games}):
        gs = [g for g in games if g.n == n]
        played = [g for g in gs if g.outcome != "failed"]
        total = len(played)
        counts = {o: sum(g.outcome == o for g in played) for o in ("win", "tie", "loss")}
        verdicts = [v for g in gs for v in g.verdicts]
        sets = [s for g in gs for per_turn in g.candidates.values() for s in per_turn]
        failures: dict[str, int] = {}
        for g in gs:
            if g.outcome == "failed":
                reason = g.failure or "no_conversation"
                failures[reason] = failures.get(reason, 0) + 1
        margins = [g.margin for g in played if g.margin is not None]
        row = {
            "n_games": total,
            "wins": counts["win"],
            "ties": counts["tie"],
            "losses": counts["loss"],
            "n_identical": sum(g.identical for g in played),
            "identical_share": sum(g.identical for g in played) / total if total else None,
            "n_short_games": sum(any(s[0] < n for per in g.candidates.values() for s in per) for g in gs),
            "candidate_distinct_share": sum(s[1] for s in sets) / sum(s[0] for s in sets)
            if sum(s[0] for s in sets)
            else None,
            "n_judge_calls": len(verdicts),
            "n_unparsed": sum(g.failure == "judge_unparsed" for g in gs),
            "n_inconsistent": sum(g.consistent is False for g in played),
            "n_failed": len(gs) - total,
            "failures": dict(sorted(failures.items())),
            "verdict_a": sum(v == "A" for v in verdicts),
            "verdict_b": sum(v == "B" for v in verdicts),
            "verdict_c": sum(v == "C" for v in verdicts),
            "mean_margin": sum(margins) / len(margins) if margins else None,
        }
        for o in ("win", "tie", "loss"):
            lo, hi = wilson_interval(counts[o], total)
            row[f"{o}_rate"] = counts[o] / total if total else None
            row[f"{o}_ci_low"], row[f"{o}_ci_high"] = (lo, hi) if total else (None, None)
        row["win_rate_ties_half"], row["win_rate_decided"] = win_rates([g.outcome for g in played])
        row.update(design_bootstrap(played))
        row["n_prompts"] = len({str(g.question_id) for g in played})
        row["all_ties"] = int(total > 0 and counts["tie"] == total)  # 1: no game was decided either way
        if judge:
            row.update(
                judge_accuracy=judge.get("accuracy"),
                judge_accuracy_ci_low=judge.get("ci_low"),
                judge_accuracy_ci_high=judge.get("ci_high"),
                judge_at_chance=judge.get("at_chance"),
            )
        by_n[str(n)] = row
    return by_n


def game_failures(games: Sequence[Game]) -> dict:
    """music.failures summary over games: a game fails when an RM's conversation could not be generated (every
    candidate of a turn, or a simulated user turn, failed: no_conversation), or a judge call failed (judge_error:
    the request failed or gave no label log-probabilities; judge_unparsed: a label reply without a verdict)."""
    return failure_summary(
        len(games),
        [
            (g.failure or "no_conversation", f"question {g.question_id} N={g.n} seed {g.rm_seed}: {g.error}")
            for g in games
            if g.outcome == "failed"
        ],
    )


def game_record(g: Game) -> dict:
    return dataclasses.asdict(g)


def known_pairs(heldout_dir: str | Path, k: int, seed: int, template: str | None = None) -> list:
    """k held-out quality twins (a seeded sample in pair-id order; all of them when there are fewer): pairs with a
    known answer, the real or reference reply (chosen) against the weak one (rejected), that no RM trained on.
    Only pairs whose judge prompt (with `template`) has at most JUDGE_CHECK_MAX_CHARS characters are drawn."""
    template = template or load_template()
    pairs = sorted(
        (
            p
            for p in read_pairs(Path(heldout_dir) / JUDGE_CHECK_SET)
            if len(judge_request(template, p.chosen, p.rejected)[0]["content"]) <= JUDGE_CHECK_MAX_CHARS
        ),
        key=lambda p: str(p.meta.get("pair_id")),
    )
    if len(pairs) <= k:
        return pairs
    picked = random.Random(derive_seed(seed, "judge-check")).sample(range(len(pairs)), k)
    return [pairs[i] for i in sorted(picked)]


def check_judge(judge, cfg: EvalConfig, heldout_dir: str | Path, template: str) -> tuple[dict | None, dict]:
    """The judge measured on cfg.bon_judge_check_pairs known pairs (None when 0), judged as the games are;
    returns (numbers, info: which pairs and each pair's verdict). Fails the stage when more than
    evaluate.max_failed_share of the judge's calls failed."""
    if not cfg.bon_judge_check_pairs:
        return None, {"pairs": 0, "note": "evaluate.bon_judge_check_pairs is 0: the judge was not measured"}
    pairs = known_pairs(heldout_dir, cfg.bon_judge_check_pairs, cfg.seed, template)
    numbers, records = judge_check(
        judge,
        pairs,
        template,
        graded=cfg.bon_judge_graded,
        clusters=[p.meta.get("conversation_id", i) for i, p in enumerate(pairs)],
        seed=cfg.seed,
        max_new_tokens=cfg.judge.max_new_tokens,
        constrained=cfg.judge_constrained,
        n_boot=N_BOOT,
    )
    failures = failure_summary(
        len(pairs),
        [
            ("judge_error", f"known pair {r['pair_id']}: no verdict in one order or both")
            for r in records
            if r["score"] is None
        ],
    )
    check_failed_share(
        failures,
        cfg.max_failed_share,
        what="best_of_n: judge check on known pairs",
        key="evaluate.max_failed_share",
        advice="Check the judge (evaluate.judge: base_urls, model; a served judge must return logprobs for "
        "bon_judge_graded: true, or set bon_judge_graded: false) and rerun.",
    )
    info = {
        "source": str(Path(heldout_dir) / JUDGE_CHECK_SET),
        "pairs": len(pairs),
        "failures": failures,
        "records": records,
    }
    return numbers, info


# ---------------------------------------------------------------- stage
def _same_model(a, b) -> bool:
    """Two ChatModelConfigs that differ only in sampling settings can share one loaded backend."""
    sampling = ("temperature", "max_new_tokens", "top_p")
    ident = [{k: v for k, v in dataclasses.asdict(c).items() if k not in sampling} for c in (a, b)]
    return ident[0] == ident[1]


def run(params: Params, *, variant: str | None = None) -> dict:
    """The best_of_n stage: needs both trained RMs and the held-out quality twins; writes best_of_n.json
    (+ the games as jsonl)."""
    check_variant("best_of_n", variant)
    cfg = params.evaluate
    # every training seed plays: seed s of the baseline RM against seed s of the MUSIC RM (checked before anything runs)
    seed_dirs = {
        s: {rm: require_model(seed_dir(params.paths.models, rm, s), f"{rm} (seed {s})") for rm in RMS}
        for s in params.train.seeds
    }
    questions = choose_questions(load_prompts(cfg.bon_source), cfg.bon_prompts, cfg.seed)
    turns = cfg.bon_turns or min(len(q["turns"]) for q in questions)
    start = time.perf_counter()
    policy = make_chat(cfg.policy, params.paths.cache, role="evaluate.policy")
    judge = (
        policy
        if _same_model(cfg.policy, cfg.judge)
        else make_chat(cfg.judge, params.paths.cache, role="evaluate.judge")
    )
    template = load_template()
    # the judge first, on pairs with a known answer: a judge that fails here stops the stage before any game
    judge_numbers, judge_info = check_judge(judge, cfg, params.paths.heldout, template)
    judge_seconds = round(time.perf_counter() - start, 1)
    user_cfg = params.simulate.user
    needs_user = any(len(q["turns"]) < turns for q in questions)
    user = None
    if needs_user:
        user = (
            policy
            if _same_model(cfg.policy, user_cfg)
            else judge
            if _same_model(cfg.judge, user_cfg)
            else make_chat(user_cfg, params.paths.cache, role="simulate.user")
        )
    games, loads, log = [], 0, CandidateLog()
    for s, model_dirs in seed_dirs.items():  # the same prompts and sampling seed: turn-1 candidates are shared (cache)
        scorers = OneAtATime(
            {
                rm: (
                    lambda d=d: RewardScorer(
                        str(d), batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype
                    )
                )
                for rm, d in model_dirs.items()
            }
        )
        played = run_best_of_n(
            questions,
            scorers,
            policy,
            judge,
            cfg,
            user=user,
            user_cfg=user_cfg,
            trim=params.simulate.trim_truncated,
            template=template,
            log=log,
        )
        scorers.release()
        loads += scorers.loads
        for g in played:
            g.rm_seed = s
        games += played
    # fail before writing anything: a broken run must not look like a result
    candidate_failures = failure_summary(log.sampled, log.failures)
    check_failed_share(
        candidate_failures,
        cfg.max_failed_share,
        what="best_of_n: policy candidates",
        key="evaluate.max_failed_share",
        advice="Check the policy (evaluate.policy: base_urls, model, max_new_tokens; max_retries, timeout_s) and "
        "rerun; finished replies come from the response cache.",
    )
    failures = game_failures(games)
    check_failed_share(
        failures,
        cfg.max_failed_share,
        what="best_of_n: games",
        key="evaluate.max_failed_share",
        advice="Check the served roles (evaluate.policy, evaluate.judge, simulate.user: base_urls, model, load; "
        "max_retries, timeout_s) and rerun; finished replies come from the response cache.",
    )
    numbers = {  # outputs/metrics/best_of_n.json: numbers only, committed to git
        "by_n": summarize(games, judge_numbers),
        "judge_check": judge_numbers,
        "n_prompts": len(questions),
        "turns": turns,
        "turns_simulated": max(0, turns - min(len(q["turns"]) for q in questions)),
        "rm_loads": loads,
        "rm_seeds": len(seed_dirs),
        "candidates_sampled": log.sampled,
        "candidates_failed": candidate_failures["failed"],
        "candidates_failed_by_reason": {r: v["count"] for r, v in candidate_failures["by_reason"].items()},
    }
    info = {  # outputs/evaluation/best_of_n_info.json: what was compared and how (text)
        "source": cfg.bon_source,
        "question_ids": [prompt_id(q) for q in questions],
        "policy": cfg.policy.model,
        "judge": cfg.judge.model,
        "user": user_cfg.model if needs_user else None,
        "model_dirs": {str(s): {rm: str(d) for rm, d in dirs.items()} for s, dirs in seed_dirs.items()},
        "judge_mode": (
            "graded: log p([[A]]) - log p([[B]]) per order, summed over both orders (position bias cancels)"
            if cfg.bon_judge_graded
            else "label: the likeliest verdict token (constrained)"
            if cfg.judge_constrained
            else "label: generated and parsed"
        ),
        "rule": (
            "MUSIC wins a game when the judge's graded margin, summed over both orders, favours its conversation "
            "(loses when it favours the baseline's; a margin of 0 is a tie); identical picks (judge not called) "
            "are ties; a judge call without log-probabilities fails the game"
            if cfg.bon_judge_graded
            else "MUSIC wins a game only if the judge prefers it in both orders; disagreement, a tie verdict or "
            "identical picks (judge not called) count as a tie; a failed or unparsed judge reply fails the game"
        ),
        "seeds": "every training seed plays: seed s of the baseline RM against seed s of the MUSIC RM; one game per "
        "(prompt, N, seed), pooled per N",
        "win_rate": "win_rate_ties_half = (W + T/2) / games, win_rate_decided = W / (W + L); 95% percentile "
        "bootstrap over prompts (each prompt's games resampled together) and the paired training seeds; "
        "all_ties = 1 when no game was decided",
        "judge_check_info": judge_info,  # the known pairs and the judge's verdict on each
        "judge_check_seconds": judge_seconds,
        "failures": failures,  # games that failed (music.failures), below evaluate.max_failed_share
        "candidate_failures": candidate_failures,  # policy candidates that failed, below evaluate.max_failed_share
    }
    seconds = round(time.perf_counter() - start, 1)
    write_json(Path(params.paths.metrics) / "best_of_n.json", numbers)
    write_json(Path(params.paths.evaluation) / "best_of_n_info.json", info)
    write_jsonl(
        Path(params.paths.evaluation) / "best_of_n_games.jsonl", (game_record(g) for g in games)
    )  # dvc.yaml outs
    write_json(Path(params.paths.reports) / "timings" / "best_of_n.json", {"seconds": seconds})
    result = {**numbers, **info, "seconds": seconds}
    return result
