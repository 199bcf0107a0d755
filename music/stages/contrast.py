"""Stage `contrast`: from each simulated conversation, a MUSIC pair whose rejected branch goes wrong at one turn.

Chosen = the simulated conversation. Rejected = the same history up to the user message of the
divergence turn, then a reply that answers a *modified* request (close to, but not, what the user
asked), then the rest of the turns simulated again on that branch (the user model sees the rejected
history), so the error stays in the conversation. Both branches have the same number of turns.

The modified request comes from one of two methods (ContrastConfig.method):
- "instruct": the contrast model gets our contrastive system prompt and replies
  "MODIFIED REQUEST: ...\nANSWER: ..."; only the answer enters the conversation.
- "resample": the user model writes the divergence turn's request again from the same history (a new
  sample: same topic, different request), and the assistant model answers it normally. Tiny models
  cannot follow the instruct format; this still gives "a good answer to a related request".
- "auto": instruct, falling back to resample where the reply does not parse.
- "retrieve": the modified request is a real person's request, the opening of another conversation of the
  training side nearest to the original inside contrast.request_similarity (music.pairs.retrieve), and the
  assistant model answers it normally.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Sequence

from music.chat import make_chat
from music.chat.base import TokenMeter, derive_seed
from music.chat.rollout import (
    Chat,
    Event,
    Rollout,
    SimPrompts,
    assistant_view,
    make_backends,
    make_event,
    roll_out,
    user_view,
    with_system,
)
from music.config import ContrastConfig, Params, SimulateConfig
from music.failures import StageFailed, check_failed_share, describe, failure_summary
from music.files import write_json
from music.models.encoder import shared_encoder
from music.pairs.filters import REASONS, apply_filters, generation_error, normalized, user_leaks
from music.pairs.last_turn import d_candidates, d_records_from_source, parse_d_source
from music.pairs.relevance import Contrast, Encoder, contrast_margins, echo_scores, in_band, pick_modified_request
from music.pairs.retrieve import SOURCE_PREFIX, PoolRequest, held_out_conversations, nearest_in_band, request_pool
from music.prompts import load_prompt
from music.schema import first_difference_distance, pair_record, user_turns
from music.stages import check_variant
from music.stages.seed import (
    SEED_FILES,
    load_seed_source,
    read_conversation_ids,
    read_conversations,
    read_seeds,
)
from music.store import load_records, pair_features, save_records

_PARSE = re.compile(
    r"modified\s+request\s*\**\s*:\s*\**\s*(?P<req>.+?)\s*\n\s*[*#\s]*answer\s*\**\s*:\s*\**\s*(?P<ans>.+)",
    re.I | re.S,
)


def parse_contrast(text: str | None) -> tuple[str, str] | None:
    """(modified request, answer) from a 'MODIFIED REQUEST: ...\\nANSWER: ...' reply, or None."""
    m = _PARSE.search(text or "")
    if not m:
        return None
    req, ans = m.group("req").strip().strip("*\"'").strip(), m.group("ans").strip()
    return (req, ans) if req and ans else None


def pick_divergence(seed_id: str, turns: int, cfg: ContrastConfig) -> int:
    """The 1-based *simulated* turn where the rejected branch diverges (random: keyed by seed_id; real: turn 1,
    whose user message is the seed's real next one when simulate.real_next_user is on)."""
    cfg.validate()
    if cfg.divergence == "real":
        if turns - 1 < cfg.min_turns_after_divergence:
            raise ValueError(
                f"contrast.divergence=real diverges at simulated turn 1: {turns} simulated turns leave "
                f"fewer than contrast.min_turns_after_divergence={cfg.min_turns_after_divergence} after it"
            )
        return 1
    if cfg.divergence == "fixed":
        if not 1 <= cfg.divergence_turn <= turns:
            raise ValueError(f"contrast.divergence_turn={cfg.divergence_turn} is outside 1..{turns} simulated turns")
        return cfg.divergence_turn
    else:  # random
        hi = turns - cfg.min_turns_after_divergence
        if hi < 1:
            raise ValueError(
                f"contrast.min_turns_after_divergence={cfg.min_turns_after_divergence} leaves no turn "
                f"to diverge at among {turns} simulated turns"
            )
        return random.Random(derive_seed(cfg.seed, "divergence", seed_id)).randint(1, hi)


def history_to_user_turn(messages: list[dict], turn: int) -> list[dict]:
    """Messages up to and including the `turn`-th (1-based) user message."""
    seen = 0
    for i, m in enumerate(messages):
        seen += m["role"] == "user"
        if seen == turn:
            return [dict(x) for x in messages[: i + 1]]
    raise ValueError(f"conversation has only {seen} user turns, asked for turn {turn}")


def contrast_conversations(
    convs: Sequence[dict],
    *,
    user: Chat,
    assistant: Chat,
    contrast: Chat | None,
    sim_cfg: SimulateConfig,
    cfg: ContrastConfig,
    split: str,
    prompts: SimPrompts | None = None,
    encoder: Encoder | None = None,
    pool: Sequence[PoolRequest] | None = None,
) -> list[dict]:
    """Filter candidates {"fields", "events", "failure", "notes"}, one per conversation, in input order.

    `encoder` scores relevance (music.pairs.relevance); default: the configured sentence encoder. `pool`: the
    requests method "retrieve" draws from (music.pairs.retrieve.request_pool; retrieval_pool reads it).
    """
    cfg.validate()
    encoder = encoder or shared_encoder(cfg.encoder)
    prompts = prompts or SimPrompts.load()
    instruct_prompt = load_prompt("contrast_instruct")
    base = derive_seed(cfg.seed, "contrast", split)
    trim = sim_cfg.trim_truncated
    cands: list[dict] = []
    work: list[dict] = []  # candidates still being built, with their histories
    for conv in convs:
        models = {"user": conv["models"]["user"], "assistant": conv["models"]["assistant"]}
        fields = dict(
            chosen=conv["messages"],
            rejected=None,
            pair_id=f"music-{conv['seed_id']}",
            kind="music",
            seed_id=conv["seed_id"],
            conversation_id=conv["conversation_id"],
            models=models,
            prompts=list(conv["prompts"]),
        )
        cand = {"fields": fields, "events": list(conv["events"]), "failure": conv["failure"], "notes": {}}
        cands.append(cand)
        if conv["failure"] is not None:
            cand["notes"]["simulate_failure"] = conv["failure"]  # counted by the simulate stage, not here
            continue
        d = pick_divergence(conv["seed_id"], conv["turns"], cfg)
        g = conv["context_turns"] + d
        history = history_to_user_turn(conv["messages"], g)
        fields.update(
            divergence_turn=g,
            turns_after_divergence=user_turns(conv["messages"]) - g,
            original_request=history[-1]["content"],
        )
        real_turns = conv.get("real_user_turns") or []
        cand["notes"]["original_request_real"] = g in real_turns  # a person's request (the seed's next_user)
        start = len(history_to_user_turn(conv["messages"], conv["context_turns"] + 1)) - 1  # first simulated message
        if conv["context_turns"] + 1 in real_turns:  # a real message is not generated: the echo check starts after it
            start += 1
        work.append(
            {
                "cand": cand,
                "pos": len(cands) - 1,
                "history": history,
                "turn": g,
                "start": start,
                "reply_at": len(history),  # index of the divergence reply, the same in both branches
                "target": user_turns(conv["messages"]),
            }
        )

    answered: list[tuple[dict, Any]] = []  # (work item, answer event)
    resample: list[dict] = []
    if cfg.method in ("instruct", "auto") and work:
        if contrast is None:
            raise ValueError("contrast.method needs the contrast backend")
        replies = contrast.generate(
            [with_system(w["history"], instruct_prompt.text) for w in work],
            seed=derive_seed(base, "instruct"),
            desc=f"contrast {split} instruct",
        )
        for w, rep in zip(work, replies):
            parsed = parse_contrast(rep.text) if rep.finish_reason != "error" else None
            w["cand"]["notes"]["instruct_raw"] = rep.text
            w["cand"]["notes"]["instruct_parsed"] = parsed is not None
            if rep.finish_reason == "error":
                w["cand"]["notes"]["instruct_error"] = rep.error or "no text"
            if parsed is not None:
                event, failure = make_event(
                    rep,
                    branch="rejected",
                    turn=w["turn"],
                    role="assistant",
                    trim=trim,
                    text=parsed[1],
                    method="instruct",
                )
                w["cand"]["fields"].update(modified_request=parsed[0], contrast_method="instruct")
                w["cand"]["fields"]["models"]["contrast"] = contrast.name
                w["cand"]["fields"]["prompts"].append(instruct_prompt.meta())
                answered.append((w, (event, failure)))
            elif cfg.method == "auto" and rep.finish_reason != "error":
                resample.append(w)
            else:
                w["cand"]["failure"] = "generation_error" if rep.finish_reason == "error" else "modified_request"
    elif cfg.method == "resample":
        resample = list(work)

    options: list[tuple[dict, list[Any]]] = []
    if resample:  # the user model asks again from the same history
        options = resampled_requests(
            resample,
            user,
            encoder,
            prompts=prompts,
            k=cfg.candidates,
            keep=cfg.answered_candidates,
            trim=trim,
            seed=derive_seed(base, "resample", "user"),
            split=split,
            band=cfg.request_similarity,
        )
    elif cfg.method == "retrieve" and work:
        if pool is None:
            raise ValueError("contrast.method retrieve needs the request pool (music.pairs.retrieve)")
        options = retrieved_requests(work, pool, encoder, keep=cfg.answered_candidates, band=cfg.request_similarity)
    if options:  # the assistant answers the modified requests as it answers any request
        method = cfg.method if cfg.method == "retrieve" else "resample"
        flat = [(w, event) for w, events in options for event in events]
        replies = assistant.generate(
            [assistant_view([*w["history"][:-1], {"role": "user", "content": e.text}], prompts) for w, e in flat],
            seed=derive_seed(base, method, "assistant"),
            desc=f"contrast {split} {method} answers",
        )
        answers = [
            make_event(rep, branch="rejected", turn=w["turn"], role="assistant", trim=trim, method=method)
            for (w, _), rep in zip(flat, replies)
        ]
        answered += pick_contrasts(flat, answers, encoder)

    answered.sort(key=lambda a: a[0]["pos"])  # input order, whatever the method
    rollouts, targets = [], []
    for w, (event, failure) in answered:
        r = Rollout(w["cand"]["fields"]["pair_id"], "rejected", list(w["history"]))
        r.add(event, failure)
        rollouts.append(r)
        targets.append(w["target"])
        w["rollout"] = r
    roll_out(
        rollouts,
        targets,
        user,
        assistant,
        prompts=prompts,
        seed=derive_seed(base, "rejected"),
        tag=f"contrast {split} rejected",
        trim=trim,
    )
    for (w, _), r in zip(answered, rollouts):
        cand = w["cand"]
        cand["events"].extend(e.to_record() for e in r.events)
        if r.failure is not None:
            cand["failure"] = r.failure
        else:
            cand["fields"]["rejected"] = r.messages
    add_relevance([w for w, _ in answered if w["cand"]["fields"]["rejected"] is not None], encoder)
    return cands


def resampled_requests(
    work: Sequence[dict],
    user: Chat,
    encoder: Encoder,
    *,
    prompts: SimPrompts,
    k: int,
    keep: int,
    trim: bool,
    seed: int,
    split: str,
    band: Sequence[float] | None = None,
) -> list[tuple[dict, list[Any]]]:
    """The user model writes each divergence request again `k` times (one batched call). Of the usable
    samples (not failed, cut, leaking or equal to the original), the `keep` most unlike the original but on
    the conversation's topic (music.pairs.relevance.pick_modified_request's score) go on to be answered.
    With `band` = [lo, hi] (contrast.request_similarity), only samples whose similarity to the original lies
    in the window are ranked (music.pairs.relevance.in_band); the others are counted in the notes
    (`outside_band`), and an item with usable samples but none in the window is dropped as `request_band`
    (a filter reason, not a request failure).
    Returns (work item, request events, best first); an item with no usable sample gets a counted failure."""
    views = [user_view(w["history"][:-1], prompts) for w in work]
    replies = user.generate([v for v in views for _ in range(k)], seed=seed, desc=f"contrast {split} resample requests")
    out = []
    for j, w in enumerate(work):
        original, anchor = w["history"][-1]["content"], w["history"][-2]["content"]
        events, failures = [], []
        for rep in replies[j * k : (j + 1) * k]:
            event, failure = make_event(
                rep,
                branch="rejected",
                turn=w["turn"],
                role="modified_request",
                trim=trim,
                user_voice=True,
                method="resample",
            )
            if failure is None and (
                normalized(event.text) == normalized(original)
                or user_leaks(event.text)
                or (event.finish_reason == "length" and not event.trimmed)
            ):
                failure = "modified_request"
            events.append(event)
            failures.append(failure)
        usable = [e for e, f in zip(events, failures) if f is None]
        w["cand"]["notes"]["modified_candidates"] = len(usable)
        w["cand"]["fields"]["contrast_method"] = "resample"
        if not usable:  # keep the first sample's record so the filters count why
            w["cand"]["events"].append(events[0].to_record())
            w["cand"]["fields"]["modified_request"] = events[0].text or None
            w["cand"]["failure"] = "generation_error" if "generation_error" in failures else "modified_request"
            continue
        if band is not None:
            inside, sims = in_band(encoder, original, [e.text for e in usable], band)
            w["cand"]["notes"].update(outside_band=len(usable) - len(inside), request_similarities=sims)
            if not inside:  # the sample nearest the window stands for the item in the filters' count
                near = min(range(len(usable)), key=lambda i: (min(abs(sims[i] - band[0]), abs(sims[i] - band[1])), i))
                w["cand"]["events"].append(usable[near].to_record())
                w["cand"]["fields"]["modified_request"] = usable[near].text
                w["cand"]["notes"]["request_similarity"] = sims[near]
                w["cand"]["failure"] = "request_band"
                continue
            usable = [usable[i] for i in inside]
        _, scores = pick_modified_request(encoder, original, anchor, [e.text for e in usable])
        ranked = sorted(range(len(usable)), key=lambda i: (-scores[i], i))[:keep]
        w["cand"]["notes"]["modified_scores"] = scores
        out.append((w, [usable[i] for i in ranked]))
    return out


def retrieved_requests(
    work: Sequence[dict], pool: Sequence[PoolRequest], encoder: Encoder, *, keep: int, band: Sequence[float]
) -> list[tuple[dict, list[Any]]]:
    """Method "retrieve": per work item, the `keep` pool requests nearest to the divergence request inside `band`
    (music.pairs.retrieve.nearest_in_band), as request events (a person's words: nothing generated). An item with
    none in the window is dropped as `request_band` (a filter reason, as with resample's window). Returns (work
    item, request events, nearest first)."""
    found = nearest_in_band(
        encoder,
        [w["history"][-1]["content"] for w in work],
        [w["cand"]["fields"]["conversation_id"] for w in work],
        pool,
        band,
        keep,
    )
    out = []
    for w, near in zip(work, found):
        notes, fields = w["cand"]["notes"], w["cand"]["fields"]
        fields["contrast_method"] = "retrieve"
        notes["modified_candidates"] = len(near)
        notes["retrieved"] = {req.text: req.conversation_id for req, _ in near}
        if not near:
            w["cand"]["failure"] = "request_band"
            continue
        events = [
            Event("rejected", w["turn"], "modified_request", "stop", req.text, req.text, method="retrieve", real=True)
            for req, _ in near
        ]
        out.append((w, events))
    return out


def pick_contrasts(
    flat: Sequence[tuple[dict, Any]], answers: Sequence[tuple[Any, str | None]], encoder: Encoder
) -> list[tuple[dict, tuple[Any, str | None]]]:
    """Per work item, of its answered requests keep the clearest contrast: the highest min(chosen margin,
    rejected margin) (music.pairs.relevance.contrast_margins: each reply closer to its own request). Returns
    (work item, (answer event, failure)) in the answered list's shape."""
    scored = [
        (
            i,
            Contrast(
                w["history"][-1]["content"], req.text, w["cand"]["fields"]["chosen"][w["reply_at"]]["content"], ans.text
            ),
        )
        for i, ((w, req), (ans, fail)) in enumerate(zip(flat, answers))
        if fail is None
    ]
    margins = dict(zip((i for i, _ in scored), contrast_margins(encoder, [c for _, c in scored])))
    best: dict[int, int] = {}  # id(work item) -> index into flat
    for i, (w, _) in enumerate(flat):
        j = best.get(id(w))
        score = min(margins[i]) if i in margins else None
        if j is None or (score is not None and (j not in margins or score > min(margins[j]))):
            best[id(w)] = i
    out = []
    for i in sorted(best.values()):
        w, req = flat[i]
        w["cand"]["events"].append(req.to_record())
        w["cand"]["fields"]["modified_request"] = req.text
        if req.text in w["cand"]["notes"].get("retrieved", {}):  # method retrieve: where the request comes from
            w["cand"]["fields"]["models"]["contrast"] = SOURCE_PREFIX + w["cand"]["notes"]["retrieved"][req.text]
        w["cand"]["notes"]["answered_candidates"] = sum(x is w for x, _ in flat)
        if i in margins:
            w["cand"]["notes"]["chosen_margin"], w["cand"]["notes"]["rejected_margin"] = margins[i]
        out.append((w, answers[i]))
    # how close each answered request is to the original (the measure of contrast.request_similarity)
    sims = (
        encoder.similarity(
            [flat[i][1].text for i in sorted(best.values())],
            [flat[i][0]["history"][-1]["content"] for i in sorted(best.values())],
        )
        if best
        else []
    )
    for i, sim in zip(sorted(best.values()), sims):
        flat[i][0]["cand"]["notes"]["request_similarity"] = round(sim, 6)
    return out


def add_relevance(work: Sequence[dict], encoder: Encoder) -> None:
    """Echo scores of both branches (and contrast margins where no earlier step computed them), into each
    candidate's notes (the filters read them) and its pair record (`relevance`)."""
    todo = [w for w in work if "rejected_margin" not in w["cand"]["notes"]]
    items = [
        Contrast(
            w["cand"]["fields"]["original_request"],
            w["cand"]["fields"]["modified_request"],
            w["cand"]["fields"]["chosen"][w["reply_at"]]["content"],
            w["cand"]["fields"]["rejected"][w["reply_at"]]["content"],
        )
        for w in todo
    ]
    for w, (cm, rm) in zip(todo, contrast_margins(encoder, items)):
        w["cand"]["notes"].update(chosen_margin=cm, rejected_margin=rm)
    convs = [c for w in work for c in (w["cand"]["fields"]["chosen"], w["cand"]["fields"]["rejected"])]
    echoes = echo_scores(encoder, convs, [w["start"] for w in work for _ in (0, 1)])
    for j, w in enumerate(work):
        notes = w["cand"]["notes"]
        notes["echo"] = max(echoes[2 * j], echoes[2 * j + 1])
        w["cand"]["fields"]["relevance"] = {
            k: notes.get(k)
            for k in (
                "chosen_margin",
                "rejected_margin",
                "echo",
                "modified_candidates",
                "original_request_real",
                "request_similarity",
            )
        }


STORED_DECIMALS = 4  # relevance floats as written to disk: their last bits differ between CPUs, these digits rarely


def stored_floats(value: Any) -> Any:
    """`value` with every float rounded to STORED_DECIMALS (lists and mappings too): what the pair records keep.
    The filters decide on the unrounded values before this."""
    if isinstance(value, float):
        return round(value, STORED_DECIMALS)
    if isinstance(value, list):
        return [stored_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: stored_floats(v) for k, v in value.items()}
    return value


def candidates_to_records(kept: Sequence[dict]) -> list[dict]:
    return [pair_record(**{**c["fields"], "relevance": stored_floats(c["fields"].get("relevance"))}) for c in kept]


def method_counts(cands: Sequence[dict], kept: Sequence[dict]) -> dict:
    """How rejected replies were made (kept pairs), and how often the instruct reply failed to parse."""
    out = {"instruct_tried": 0, "instruct_unparsed": 0, "kept_instruct": 0, "kept_resample": 0}
    if any(c["fields"].get("contrast_method") == "retrieve" for c in cands):
        out["kept_retrieve"] = 0
    for c in cands:
        if "instruct_parsed" in c["notes"]:
            out["instruct_tried"] += 1
            out["instruct_unparsed"] += not c["notes"]["instruct_parsed"]
    for c in kept:
        m = c["fields"].get("contrast_method")
        if m:
            out[f"kept_{m}"] += 1
    return out


# --- the stage -------------------------------------------------------------------------------------------------


def run(
    params: Params,
    *,
    variant: str | None = None,
    splits: Sequence[str] = ("train", "eval"),
    backends: tuple[Chat, Chat, Chat | None] | None = None,
    encoder: Encoder | None = None,
) -> dict:
    """Read outputs/conversations/{split} (and the train seeds for D); write outputs/pairs/{music_train, music_eval,
    d_train} and filter_report.json. Held-out D pairs, quality twins and swap items: the heldout stage
    (music.stages.heldout).

    `backends` (user, assistant, contrast) and `encoder` replace the configured models (tests use fakes).
    """
    check_variant("contrast", variant)
    cfg = params.contrast
    if backends is None:
        user, assistant = make_backends(params)
        contrast = (
            make_chat(cfg.contrast, params.paths.cache, role="contrast.contrast")
            if cfg.method in ("instruct", "auto")
            else None
        )
    else:
        user, assistant, contrast = backends
    pool = retrieval_pool(params) if cfg.method == "retrieve" else None
    meter = TokenMeter(user=user, assistant=assistant, contrast=contrast)
    d_from_source = parse_d_source(cfg.d_source) is not None
    out_dir = Path(params.paths.pairs)
    report: dict = {
        "reasons": list(REASONS),
        "splits": {},
        "methods": {},
        "multi_turn": {},
        "failures": {},
        "d_source": cfg.d_source,
        "method": cfg.method,
        "divergence": cfg.divergence,
    }
    if pool is not None:
        report["retrieval_pool"] = len(pool)
    written: dict[str, list[dict]] = {}  # the records of each pair set, for check_invariants
    for split in splits:
        cands, kept, stats = split_candidates(
            params, cfg, split, user=user, assistant=assistant, contrast=contrast, encoder=encoder, pool=pool
        )
        methods = method_counts(cands, kept)
        report["failures"][f"music_{split}"] = failures = candidate_failures(cands, cfg)
        check_failed_share(
            failures,
            cfg.max_failed_share,
            what=f"contrast ({split}): MUSIC candidates",
            key="contrast.max_failed_share",
            advice=contrast_advice(cfg, methods),
        )
        if split == "train" and len(kept) < cfg.min_music_train_pairs:
            raise StageFailed(
                f"contrast (train): {len(kept)} of {failures['units']} MUSIC candidates kept, fewer than "
                f"contrast.min_music_train_pairs={cfg.min_music_train_pairs} (train@music trains on them). Removed by "
                f"reason: {nonzero(stats['removed'])}; contrast methods: {methods}; request/parse failures: "
                f"{describe(failures)}. {contrast_advice(cfg, methods)}",
                failures,
            )
        records = candidates_to_records(kept)
        save_records(records, out_dir / f"music_{split}", pair_features())
        written[f"music_{split}"] = records
        report["splits"][f"music_{split}"] = stats
        report["methods"][f"music_{split}"] = methods
        report["multi_turn"][f"music_{split}"] = multi_turn_share(records)
        report.setdefault("band", {})[f"music_{split}"] = band_counts(cands, kept, cfg)

        if split != "train":  # held-out D pairs and quality twins: the heldout stage (music.stages.heldout)
            continue
        d_records: list[dict] = []
        if cfg.d_pairs and d_from_source:
            held_out = set().union(
                *(
                    read_conversation_ids(Path(params.paths.seeds) / SEED_FILES[name])
                    for name in ("eval", "eval_conversations")
                )
            )
            report.setdefault("d_source_malformed", {})[f"d_{split}"] = malformed = {}
            d_records = d_records_from_source(cfg, split, held_out, malformed, eval_split=params.heldout.d_eval_split)
            report["splits"][f"d_{split}"] = {
                "candidates": len(d_records),
                "kept": len(d_records),
                "removed": {r: 0 for r in REASONS},
            }
        elif cfg.d_pairs:
            seeds = read_seeds(Path(params.paths.seeds) / f"{split}.jsonl")
            d_cands = d_candidates(
                seeds,
                assistant,
                split=split,
                seed=derive_seed(cfg.seed, "d", split),
                trim=params.simulate.trim_truncated,
            )
            d_kept, d_stats = apply_filters(d_cands, cfg)
            report["failures"][f"d_{split}"] = d_failures = candidate_failures(d_cands, cfg)
            check_failed_share(
                d_failures,
                cfg.max_failed_share,
                what=f"contrast ({split}): D candidates (seeds)",
                key="contrast.max_failed_share",
                advice=contrast_advice(cfg, {}),
            )
            d_records = candidates_to_records(d_kept)
            report["splits"][f"d_{split}"] = d_stats
        save_records(d_records, out_dir / f"d_{split}", pair_features())
        written[f"d_{split}"] = d_records
    check_invariants(report, written, cfg)
    write_json(out_dir / "filter_report.json", report)
    # Not in filter_report.json: the counts depend on what the response cache already held.
    report["tokens"] = meter.report()
    return report


def split_candidates(
    params: Params,
    cfg: ContrastConfig,
    split: str,
    *,
    user: Chat,
    assistant: Chat,
    contrast: Chat | None,
    encoder: Encoder | None,
    pool: Sequence[PoolRequest] | None,
) -> tuple[list[dict], list[dict], dict]:
    """(candidates, kept, filter stats) of one split's simulated conversations (outputs/conversations/{split})."""
    cands = contrast_conversations(
        load_records(Path(params.paths.conversations) / split),
        user=user,
        assistant=assistant,
        contrast=contrast,
        sim_cfg=params.simulate,
        cfg=cfg,
        split=split,
        encoder=encoder,
        pool=pool,
    )
    kept, stats = apply_filters(cands, cfg)
    return cands, kept, stats


def retrieval_pool(params: Params) -> list[PoolRequest]:
    """Method "retrieve": the opening requests of the seed source's training side (music.pairs.retrieve), no
    longer than seed.max_message_chars (what a seed's real next request may be)."""
    conversations, _ = load_seed_source(params.seed)
    seeds = Path(params.paths.seeds)
    whole = [read_conversations(seeds / SEED_FILES[name]) for name in ("eval_conversations", "dev_conversations")]
    held_out = held_out_conversations(read_seeds(seeds / SEED_FILES["eval"]), [c for cs in whole for c in cs])
    return request_pool(conversations, held_out, max_chars=params.seed.max_message_chars)


def candidate_failures(cands: Sequence[dict], cfg: ContrastConfig) -> dict:
    """music.failures summary of a split's candidates that reached this stage (a conversation the simulate
    stage already lost is counted there): a request failed (`generation_error`), or, with method instruct,
    the contrast reply did not parse (`instruct_unparsed`; `auto` falls back to resample instead). What the
    filters remove on purpose (weak_contrast, echo, empty or cut replies...) is not a failure."""
    units, failed = 0, []
    for c in cands:
        if c.get("notes", {}).get("simulate_failure"):
            continue
        units += 1
        label = c["fields"]["pair_id"]
        error = generation_error(c, cfg)
        if error is not None:
            failed.append(("generation_error", f"{label}: {error}"))
        elif cfg.method == "instruct" and c.get("notes", {}).get("instruct_parsed") is False:
            raw = c["notes"].get("instruct_raw") or ""
            failed.append(
                ("instruct_unparsed", f"{label}: the reply is not 'MODIFIED REQUEST: ...\\nANSWER: ...': {raw[:200]!r}")
            )
    return failure_summary(units, failed)


def contrast_advice(cfg: ContrastConfig, methods: dict) -> str:
    tips = []
    if methods.get("instruct_unparsed"):
        tips.append(
            f"the contrast model's replies did not parse ({methods['instruct_unparsed']} of "
            f"{methods['instruct_tried']}): set contrast.method: auto (resample where unparsed) or resample, "
            "or use a stronger contrast model (contrast.contrast.model)"
        )
    if cfg.method == "retrieve":
        tips.append(
            "many `request_band` drops (no opening request of the training side within contrast.request_similarity "
            "of the original): widen the window or use a larger seed source (seed.path)"
        )
    elif cfg.method != "instruct":
        tips.append(
            "many `modified_request` drops (no usable resampled request): raise contrast.candidates or use a "
            "stronger user model (simulate.user)"
        )
    tips.append(
        "a failed request: check the server named in the first error (base_urls, model, load; max_retries, "
        "timeout_s) and rerun (finished replies come from the response cache)"
    )
    if cfg.method in ("resample", "auto") and cfg.request_similarity is not None:
        tips.append(
            "many `request_band` drops (no rewrite within contrast.request_similarity of the original): raise "
            "contrast.candidates, widen the window, or set it to null"
        )
    tips.append(
        "no pair kept: loosen the filter that removed most (contrast.min_contrast_margin, "
        "contrast.max_echo_similarity, max_reply_chars) or draw more seeds (seed.n_train)"
    )
    return "What to change: " + "; ".join(tips) + "."


def band_counts(cands: Sequence[dict], kept: Sequence[dict], cfg: ContrastConfig) -> dict:
    """Rewritten requests ranked and dropped for lying outside contrast.request_similarity (filter drops, not
    request failures), and how many divergence requests were a person's (the seed's real next user message),
    among the candidates and the kept pairs."""
    notes = [c.get("notes", {}) for c in cands]
    return {
        "request_similarity": cfg.request_similarity,
        "rewrites_usable": sum(n.get("modified_candidates", 0) for n in notes),  # before the window
        "rewrites_outside_band": sum(n.get("outside_band", 0) for n in notes),
        "no_rewrite_in_band": sum(c.get("failure") == "request_band" for c in cands),
        "real_requests": sum(bool(n.get("original_request_real")) for n in notes),
        "kept_real_requests": sum(bool(c.get("notes", {}).get("original_request_real")) for c in kept),
    }


def near_miss_rows(records: Sequence[dict], n: int = 10, seed: int = 0) -> list[dict]:
    """`n` kept MUSIC pairs whose divergence request is a person's (the seed's real next user message), drawn at
    random with `seed` (not nearest first: a reader sees what the method typically keeps), in file order: per
    pair the two requests, their similarity, and the two replies at the divergence (the chosen one answers the
    person, the rejected one the modified request), for notebook 03."""
    rows = []
    for r in records:
        rel = r.get("relevance") or {}
        if not rel.get("original_request_real"):
            continue
        at = [i for i, m in enumerate(r["chosen"]) if m["role"] == "user"][r["divergence_turn"] - 1] + 1
        rows.append(
            {
                "pair_id": r["pair_id"],
                "original request (real)": r["original_request"],
                "modified request": r["modified_request"],
                "similarity": rel.get("request_similarity"),
                "chosen reply": r["chosen"][at]["content"],
                "rejected reply": r["rejected"][at]["content"],
                "chosen margin": rel.get("chosen_margin"),
                "rejected margin": rel.get("rejected_margin"),
            }
        )
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in picked]


def nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


MIN_MULTI_TURN_SHARE = 0.9  # kept pairs with a turn after the divergence differ in >= 2 assistant turns


def check_invariants(report: dict, written: dict[str, list[dict]], cfg: ContrastConfig) -> None:
    """What the stage promises, checked before its report is written: with `min_turns_after_divergence` >= 1
    nearly every MUSIC pair differs in two or more assistant turns (a later reply may repeat by chance), and no
    conversation feeds both training pairs and held-out MUSIC pairs."""
    if cfg.min_turns_after_divergence >= 1:
        low = {
            k: v
            for k, v in report["multi_turn"].items()
            if v["share"] is not None and v["share"] < MIN_MULTI_TURN_SHARE
        }
        if low:
            raise RuntimeError(
                f"contrast: pairs that differ in two or more turns are below {MIN_MULTI_TURN_SHARE:.0%} "
                f"(filter_report multi_turn): {low}"
            )
    held_out = {r["conversation_id"] for r in written.get("music_eval", [])}
    trained = {r["conversation_id"] for name in ("d_train", "music_train") for r in written.get(name, [])}
    both = sorted(held_out & trained)
    if both:
        raise RuntimeError(f"contrast: conversations feed both training and held-out MUSIC pairs: {both[:5]}")


def multi_turn_share(records: Sequence[dict]) -> dict:
    """How many pairs differ in two or more assistant turns (a pair that differs only in its last reply is a
    last-turn pair, whatever made it)."""
    multi = sum(first_difference_distance(r["chosen"], r["rejected"]) >= 2 for r in records)
    return {
        "pairs": len(records),
        "two_or_more_turns": multi,
        "share": round(multi / len(records), 4) if records else None,
    }
