"""Stage `simulate`: continue each seed context for K turns, one model playing the user, one the assistant.

Each turn is two batched calls over every live conversation (user model, then assistant model), never
one conversation at a time (the mechanics, the user model's swapped roles included, are in
music.chat.rollout).

Every generated message is logged as an *event* (raw text, finish reason, trimming) so the filters
can count failures later. A conversation whose user or assistant turn failed (error, empty after
clean-up) stops there and carries `failure`; it is kept in the output and removed (and counted) when
pairs are built. Per-call seeds derive from (config seed, split, branch, role, step) and conversations
keep the seed file's order, so a rerun after a crash asks the cached backend exactly the same calls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from music.chat.base import TokenMeter, derive_seed
from music.chat.rollout import Chat, Rollout, SimPrompts, make_backends, real_user_event, roll_out
from music.config import Params, SimulateConfig
from music.failures import check_failed_share, describe, failure_summary
from music.files import write_json
from music.schema import user_turns
from music.stages import check_variant
from music.stages.seed import read_seeds
from music.store import conversation_features, save_records

log = logging.getLogger(__name__)


def simulate_seeds(
    seeds: Sequence[Any],
    user: Chat,
    assistant: Chat,
    cfg: SimulateConfig,
    *,
    split: str,
    prompts: SimPrompts | None = None,
) -> list[dict]:
    """Conversation records: each seed's context continued by `cfg.turns` simulated turns (batched).

    With `cfg.real_next_user`, turn 1's user message is the seed's real `next_user`, verbatim (an event with
    `real: true`; the record's `real_user_turns` lists it); a seed without one gets a generated message.
    """
    cfg.validate()
    prompts = prompts or SimPrompts.load()
    rollouts = [Rollout(s.seed_id, "chosen", [dict(m) for m in s.context]) for s in seeds]
    targets = [r.turns + cfg.turns for r in rollouts]
    for s, r in zip(seeds, rollouts):
        if cfg.real_next_user and (s.next_user or "").strip():
            r.add(real_user_event(s.next_user, branch="chosen", turn=r.turns + 1), None)
    roll_out(
        rollouts,
        targets,
        user,
        assistant,
        prompts=prompts,
        seed=derive_seed(cfg.seed, "simulate", split),
        tag=f"simulate {split}",
        trim=cfg.trim_truncated,
    )
    out = []
    for s, r in zip(seeds, rollouts):
        out.append(
            {
                "seed_id": s.seed_id,
                "conversation_id": s.conversation_id,
                "source": s.source,
                "split": s.split,
                "context_turns": user_turns(s.context),
                "turns": cfg.turns,
                "messages": r.messages,
                "real_user_turns": [e.turn for e in r.events if e.real],
                "events": [e.to_record() for e in r.events],
                "failure": r.failure,
                "models": {"user": user.name, "assistant": assistant.name},
                "prompts": prompts.meta(),
            }
        )
    return out


# --- the stage -------------------------------------------------------------------------------------------------

SPLITS = ("train", "eval")


def run(
    params: Params,
    *,
    variant: str | None = None,
    splits: Sequence[str] = SPLITS,
    backends: tuple[Chat, Chat] | None = None,
) -> dict:
    """Read outputs/seeds/{split}.jsonl, write outputs/conversations/{split}; returns a summary.

    The eval split simulates only its first `simulate.max_eval_conversations` seeds (the held-out MUSIC
    pairs); every eval seed still serves the held-out last-turn and quality pairs, which need no simulation.
    """
    check_variant("simulate", variant)
    user, assistant = backends or make_backends(params)
    summary = {}
    for split in splits:
        seeds = read_seeds(Path(params.paths.seeds) / f"{split}.jsonl")
        if split == "eval" and params.simulate.max_eval_conversations is not None:
            seeds = seeds[: params.simulate.max_eval_conversations]
        meter = TokenMeter(user=user, assistant=assistant)
        records = simulate_seeds(seeds, user, assistant, params.simulate, split=split)
        failures = conversation_failures(records)
        check_failed_share(
            failures,
            params.simulate.max_failed_share,
            what=f"simulate ({split}): conversations",
            key="simulate.max_failed_share",
            advice=SIMULATE_ADVICE,
        )
        save_records(records, Path(params.paths.conversations) / split, conversation_features())
        summary[split] = {
            "conversations": len(records),
            "failed": sum(r["failure"] is not None for r in records),
            "real_next_user": real_next_user_counts(records, params.simulate),
            "request_failures": failures,
            "tokens": meter.report(),
        }  # prompt tokens asked/encoded per generated token; {} if uncounted
        if failures["failed"]:
            log.warning(
                "simulate (%s) request failures, below simulate.max_failed_share: %s", split, describe(failures)
            )
    # The counts, where the notebook and a user look (an output of the stage: they do not depend on the cache)
    report_path = Path(params.paths.conversations) / FAILURE_REPORT
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    write_json(report_path, {**report, **{s: v["request_failures"] for s, v in summary.items()}})
    return summary


FAILURE_REPORT = "failure_report.json"
SIMULATE_ADVICE = (
    "The first error of each reason says why; check the server (simulate.user / simulate.assistant: "
    "base_urls, model, load), raise max_retries or timeout_s for a busy server, then rerun "
    "(finished replies come from the response cache)."
)


def real_next_user_counts(records: Sequence[dict], cfg: SimulateConfig) -> dict | None:
    """With simulate.real_next_user: conversations whose turn-1 user message is the seed's real one, and those
    whose seed had none (their turn 1 was generated); None when the switch is off."""
    if not cfg.real_next_user:
        return None
    real = sum(bool(r.get("real_user_turns")) for r in records)
    return {"real": real, "generated_no_next_user": len(records) - real}


def conversation_failures(records: Sequence[dict]) -> dict:
    """music.failures summary of a split: conversations stopped by a failed request (`generation_error`), with
    each reason's first error. A conversation stopped by an empty reply is the model's doing, not a failure
    (the contrast stage's filters count it)."""
    failed = []
    for r in records:
        if r["failure"] == "generation_error":
            error = next((e["error"] for e in r["events"] if e["finish_reason"] == "error"), None) or "no text"
            failed.append(("generation_error", f"{r['seed_id']}: {error}"))
    return failure_summary(len(records), failed)
