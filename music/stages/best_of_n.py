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
A judge compares the baseline RM's final conversation with the MUSIC RM's in both orders; when both
RMs picked identical conversations the game is a tie and the judge is not called. A disagreement between
the two orders is a tie (as in MT-Bench's pairwise judging). The judge prompt states only what holds in
both settings: the first user message is shared, later ones may differ (simulated per conversation).

Every training seed plays: seed s of the baseline RM against seed s of the MUSIC RM, one game per
(prompt, N, seed). Per N the stage reports wins W, ties T, losses L over the N_games games, the win rate
(W + T/2) / N_games (ties split, the paper's comparison) beside W / (W + L) (decided games only), each
with a 95% percentile bootstrap over prompts (a prompt's games, all seeds, resampled together).
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
from music.evaluate.judge import VERDICT_OPTIONS, combine_orders, judge_request, load_template, parse_verdict
from music.evaluate.pairwise import require_model
from music.evaluate.stats import resample_indices, wilson_interval
from music.failures import check_failed_share, failure_summary
from music.files import write_json, write_jsonl
from music.rm.score import RewardScorer
from music.sources.prompts import load_prompts
from music.stages import check_variant
from music.store import seed_dir

N_BOOT = 4000  # bootstrap draws over prompts for the win-rate intervals

RMS = ("baseline", "music")


@dataclass
class Game:
    question_id: object  # the prompt's id in its source
    n: int
    conversations: dict[str, list[dict] | None]  # rm name -> final conversation (None: generation failed)
    outcome: str = "failed"  # for MUSIC: win | tie | loss | failed
    identical: bool = False
    verdicts: list[str | None] = field(default_factory=list)  # [A=baseline order, A=music order]
    replies: list[str | None] = field(default_factory=list)
    consistent: bool | None = None
    rm_seed: int | None = None  # the training seed of both RMs (seed s of baseline vs seed s of MUSIC)


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
) -> list[Game]:
    """Play one game per (prompt, N in cfg.bon_ns) over cfg.bon_turns assistant turns (default: the fewest any
    prompt scripts); see the module docstring. Sampling and judging settings come from cfg.policy, cfg.judge,
    cfg.judge_constrained and cfg.seed.

    `scorers[rm].score(conversations)` gives the scores; a OneAtATime keeps one RM loaded.
    `user` (a chat backend, sampled with `user_cfg`'s settings) writes the user turns a prompt does not script.
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
            )
            if keys
            else []
        )
        cand_by_key = dict(zip(keys, cands))
        for rm in order:  # one RM at a time, every context of the turn in one scoring call
            mine = {k: key for k, key in key_of.items() if k[1] == rm}
            scores = score_keys(scorers[rm], sorted(set(mine.values())), ctx_of_key, cand_by_key) if mine else {}
            for k, key in mine.items():
                i = pick(scores[key], k[2])
                contexts[k] = (
                    None if i is None else contexts[k] + [{"role": "assistant", "content": cand_by_key[key][i]}]
                )
        order.reverse()  # the RM scored last stays loaded for the next turn
    games = [
        Game(prompt_id(questions[q]), n, {rm: contexts[(q, rm, n)] for rm in RMS})
        for q in range(len(questions))
        for n in ns
    ]
    _judge_games(
        games,
        judge,
        template,
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
    max_new_tokens: int,
    temperature: float,
    seed: int,
    constrained: bool = False,
) -> None:
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
            replies = judge.choose(
                requests,
                list(VERDICT_OPTIONS),
                prefix="[[",
                suffix="]]",
                seed=seed,
                max_new_tokens=max_new_tokens,
                desc="judge",
            )
        else:
            replies = judge.generate(
                requests, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, desc="judge"
            )
        for i, g in enumerate(owners):
            g.replies = [replies[2 * i].text, replies[2 * i + 1].text]
            g.verdicts = [parse_verdict(r) for r in g.replies]
            g.outcome, g.consistent = combine_orders(*g.verdicts)


def win_rates(outcomes: Sequence[str]) -> tuple[float | None, float | None]:
    """((W + T/2) / N, W / (W + L)) for MUSIC over played games; None where the denominator is 0."""
    w, t, losses = (sum(o == k for o in outcomes) for k in ("win", "tie", "loss"))
    n = w + t + losses
    return ((w + t / 2) / n if n else None, w / (w + losses) if w + losses else None)


def prompt_bootstrap(games: Sequence[Game], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """95% percentile intervals of both win rates, resampling prompts (each prompt's games together).
    W / (W + L) is undefined in a draw without decided games: those draws are left out (counted)."""
    import numpy as np

    by_prompt: dict[str, list[str]] = {}
    for g in games:
        by_prompt.setdefault(str(g.question_id), []).append(g.outcome)
    prompts = sorted(by_prompt)
    if not prompts:
        return {
            "win_rate_ties_half_ci_low": None,
            "win_rate_ties_half_ci_high": None,
            "win_rate_decided_ci_low": None,
            "win_rate_decided_ci_high": None,
            "boot_draws_without_decided_games": 0,
        }
    counts = np.array(
        [[sum(o == k for o in by_prompt[p]) for k in ("win", "tie", "loss")] for p in prompts], dtype=float
    )
    picks = resample_indices(np.random.default_rng(seed), len(prompts), n_boot)
    w, t, losses = (counts[:, j][picks].sum(axis=1) for j in range(3))
    tied_half = (w + t / 2) / (w + t + losses)
    decided = w + losses > 0
    out = {
        "win_rate_ties_half_ci_low": float(np.quantile(tied_half, 0.025)),
        "win_rate_ties_half_ci_high": float(np.quantile(tied_half, 0.975)),
        "win_rate_decided_ci_low": None,
        "win_rate_decided_ci_high": None,
        "boot_draws_without_decided_games": int((~decided).sum()),
    }
    if decided.any():
        ratio = w[decided] / (w + losses)[decided]
        out["win_rate_decided_ci_low"], out["win_rate_decided_ci_high"] = (
            float(np.quantile(ratio, 0.025)),
            float(np.quantile(ratio, 0.975)),
        )
    return out


def summarize(games: Sequence[Game]) -> dict:
    """Per N: counts, rates for MUSIC with 95% Wilson intervals, the two win rates ((W + T/2) / N and
    W / (W + L)) with prompt-bootstrap intervals, whether every game tied, and the judge's bookkeeping."""
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
        row["win_rate_ties_half"], row["win_rate_decided"] = win_rates([g.outcome for g in played])
        row.update(prompt_bootstrap(played))
        row["n_prompts"] = len({str(g.question_id) for g in played})
        row["all_ties"] = int(total > 0 and counts["tie"] == total)  # 1: no game was decided either way
        by_n[str(n)] = row
    return by_n


def game_failures(games: Sequence[Game]) -> dict:
    """music.failures summary: a game fails when an RM's conversation could not be generated (every candidate
    of a turn, or a simulated user turn, failed). An unparsed judge verdict is a tie, counted in `by_n`."""
    return failure_summary(
        len(games),
        [
            (
                "no_conversation",
                f"question {g.question_id} N={g.n}: no conversation for "
                f"{', '.join(rm for rm, c in g.conversations.items() if c is None)}",
            )
            for g in games
            if g.outcome == "failed"
        ],
    )


def game_record(g: Game) -> dict:
    return dataclasses.asdict(g)


# ---------------------------------------------------------------- stage
def _same_model(a, b) -> bool:
    """Two ChatModelConfigs that differ only in sampling settings can share one loaded backend."""
    sampling = ("temperature", "max_new_tokens", "top_p")
    ident = [{k: v for k, v in dataclasses.asdict(c).items() if k not in sampling} for c in (a, b)]
    return ident[0] == ident[1]


def run(params: Params, *, variant: str | None = None) -> dict:
    """The best_of_n stage: needs both trained RMs; writes best_of_n.json (+ the games as jsonl)."""
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
    games, loads = [], 0
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
        )
        scorers.release()
        loads += scorers.loads
        for g in played:
            g.rm_seed = s
        games += played
    failures = game_failures(games)  # fail before writing anything: a broken run must not look like a result
    check_failed_share(
        failures,
        cfg.max_failed_share,
        what="best_of_n: games",
        key="evaluate.max_failed_share",
        advice="Check the served roles (evaluate.policy, simulate.user: base_urls, model, load; "
        "max_retries, timeout_s) and rerun; finished replies come from the response cache.",
    )
    numbers = {  # outputs/metrics/best_of_n.json: numbers only, committed to git
        "by_n": summarize(games),
        "n_prompts": len(questions),
        "turns": turns,
        "turns_simulated": max(0, turns - min(len(q["turns"]) for q in questions)),
        "rm_loads": loads,
        "rm_seeds": len(seed_dirs),
    }
    info = {  # outputs/evaluation/best_of_n_info.json: what was compared and how (text)
        "source": cfg.bon_source,
        "question_ids": [prompt_id(q) for q in questions],
        "policy": cfg.policy.model,
        "judge": cfg.judge.model,
        "user": user_cfg.model if needs_user else None,
        "model_dirs": {str(s): {rm: str(d) for rm, d in dirs.items()} for s, dirs in seed_dirs.items()},
        "judge_mode": "constrained (likeliest verdict token)" if cfg.judge_constrained else "generated and parsed",
        "rule": "MUSIC wins a game only if the judge prefers it in both orders; disagreement, a tie verdict, "
        "an unparsed reply, or identical picks (judge not called) count as a tie",
        "seeds": "every training seed plays: seed s of the baseline RM against seed s of the MUSIC RM; one game per "
        "(prompt, N, seed), pooled per N",
        "win_rate": "win_rate_ties_half = (W + T/2) / games, win_rate_decided = W / (W + L); 95% percentile "
        "bootstrap over prompts (each prompt's games, every seed, resampled together); all_ties = 1 when no game "
        "was decided",
        "failures": failures,  # games with no conversation (music.failures), below evaluate.max_failed_share
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
