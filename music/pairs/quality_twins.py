"""Held-out quality twins: a strong and a weak reply at one turn, the difference at the last turn or one
turn before it, everything else identical.

- ShareGPT (the eval seeds): the held-out last-turn pairs D (the real ChatGPT reply vs the embedded
  model's reply to the same context) are the last-turn twins; with the conversation's real next turn
  appended to both sides they become the early-turn twins (the difference one turn from the end).
- MT-Bench (the 30 questions with GPT-4 reference answers): turn 1 = GPT-4's reference vs the embedded
  model's answer, then question 2 and GPT-4's second reference answer on both sides (early twin); and
  turn 1 = the reference on both sides, turn 2 = GPT-4's reference vs the embedded model's (last twin).
A reward model that reads the history should get the early twins right about as often as the last ones.
"""

from __future__ import annotations

from typing import Any, Sequence

from music.chat.base import derive_seed
from music.chat.rollout import SimPrompts, assistant_view, make_event
from music.schema import pair_record, user_turns

SHAREGPT, MTBENCH = "sharegpt", "mtbench"


def _twin(chosen: list[dict], rejected: list[dict], *, pair_id: str, source: str, **meta) -> dict:
    diverge = next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b)
    return pair_record(
        chosen=chosen,
        rejected=rejected,
        pair_id=pair_id,
        kind="quality",
        source=source,
        divergence_turn=user_turns(chosen[: diverge + 1]),
        turns_after_divergence=user_turns(chosen) - user_turns(chosen[: diverge + 1]),
        **meta,
    )


def sharegpt_twins(d_pairs: Sequence[dict], seeds: Sequence[Any]) -> list[dict]:
    """Last and early twins from held-out D records (pair_id d-<seed_id>) and their seeds' following turn."""
    following = {s.seed_id: s.following for s in seeds}
    out = []
    for d in d_pairs:
        meta = dict(
            seed_id=d["seed_id"],
            conversation_id=d["conversation_id"],
            original_request=d["original_request"],
            models=d["models"],
            prompts=d["prompts"],
        )
        out.append(
            _twin(
                d["chosen"], d["rejected"], pair_id=f"quality-{SHAREGPT}-{d['seed_id']}-last", source=SHAREGPT, **meta
            )
        )
        after = following.get(d["seed_id"]) or []
        if after:
            out.append(
                _twin(
                    [*d["chosen"], *after],
                    [*d["rejected"], *after],
                    pair_id=f"quality-{SHAREGPT}-{d['seed_id']}-early",
                    source=SHAREGPT,
                    **meta,
                )
            )
    return out


def mtbench_twins(
    questions: Sequence[dict], references: dict, assistant: Any, *, seed: int, max_chars: int, trim: bool = True
) -> tuple[list[dict], dict]:
    """(twin records, counts): the embedded model answers each referenced question's two turns (two batched
    calls); questions whose conversations exceed `max_chars` are skipped (the RM must see them whole)."""
    prompts = SimPrompts.load()
    referenced = [
        q
        for q in questions
        if q["question_id"] in references and len(q["turns"]) >= 2 and len(references[q["question_id"]]) >= 2
    ]
    # The strong conversation alone (both questions, both reference answers) already over the limit: skipped
    # before anything is generated for it.
    usable = [
        q
        for q in referenced
        if sum(map(len, q["turns"][:2])) + sum(map(len, references[q["question_id"]][:2])) <= max_chars
    ]
    first = [[{"role": "user", "content": q["turns"][0]}] for q in usable]
    replies1 = assistant.generate(
        [assistant_view(h, prompts) for h in first],
        seed=derive_seed(seed, "mtbench", 1),
        desc="mt-bench weak answers, turn 1",
    )
    second = [
        [
            *h,
            {"role": "assistant", "content": references[q["question_id"]][0]},
            {"role": "user", "content": q["turns"][1]},
        ]
        for q, h in zip(usable, first)
    ]
    replies2 = assistant.generate(
        [assistant_view(h, prompts) for h in second],
        seed=derive_seed(seed, "mtbench", 2),
        desc="mt-bench weak answers, turn 2",
    )
    out, counts = (
        [],
        {"questions_with_references": len(referenced), "failed": 0, "too_long": len(referenced) - len(usable)},
    )
    for q, h1, h2, r1, r2 in zip(usable, first, second, replies1, replies2):
        ref = references[q["question_id"]]
        (e1, f1), (e2, f2) = (
            make_event(r, branch="d", turn=t, role="assistant", trim=trim) for r, t in ((r1, 1), (r2, 2))
        )
        if (
            f1
            or f2
            or (e1.finish_reason == "length" and not e1.trimmed)
            or (e2.finish_reason == "length" and not e2.trimmed)
        ):
            counts["failed"] += 1
            continue
        strong = [*h2, {"role": "assistant", "content": ref[1]}]
        early = (strong, [*h1, {"role": "assistant", "content": e1.text}, *strong[2:]])
        last = (strong, [*h2, {"role": "assistant", "content": e2.text}])
        if max(sum(len(m["content"]) for m in c) for c in (*early, *last)) > max_chars:
            counts["too_long"] += 1
            continue
        meta = dict(
            conversation_id=f"mtbench-{q['question_id']}",
            models={"assistant": assistant.name},
            prompts=[prompts.assistant.meta()],
        )
        out.append(
            _twin(
                *early,
                pair_id=f"quality-{MTBENCH}-{q['question_id']}-early",
                source=MTBENCH,
                original_request=q["turns"][0],
                **meta,
            )
        )
        out.append(
            _twin(
                *last,
                pair_id=f"quality-{MTBENCH}-{q['question_id']}-last",
                source=MTBENCH,
                original_request=q["turns"][1],
                **meta,
            )
        )
    counts["kept_questions"] = len(out) // 2
    return out, counts
