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
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Sequence

from music.chat.base import TokenMeter, derive_seed
from music.config import ContrastConfig, Params, SimulateConfig
from music.filters import REASONS, apply_filters
from music.io import write_json
from music.prompts import load_prompt
from music.schema import user_turns
from music.simulate import Chat, Rollout, SimPrompts, assistant_view, make_event, roll_out, user_view, with_system

METHODS = ("instruct", "resample", "auto")

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
    """The 1-based *simulated* turn where the rejected branch diverges (random: keyed by seed_id)."""
    if cfg.divergence == "fixed":
        if not 1 <= cfg.divergence_turn <= turns:
            raise ValueError(f"contrast.divergence_turn={cfg.divergence_turn} is outside 1..{turns} simulated turns")
        return cfg.divergence_turn
    if cfg.divergence == "random":
        hi = turns - cfg.min_turns_after_divergence
        if hi < 1:
            raise ValueError(f"contrast.min_turns_after_divergence={cfg.min_turns_after_divergence} leaves no turn "
                             f"to diverge at among {turns} simulated turns")
        return random.Random(derive_seed(cfg.seed, "divergence", seed_id)).randint(1, hi)
    raise ValueError(f"contrast.divergence must be 'fixed' or 'random', got {cfg.divergence!r}")


def history_to_user_turn(messages: list[dict], turn: int) -> list[dict]:
    """Messages up to and including the `turn`-th (1-based) user message."""
    seen = 0
    for i, m in enumerate(messages):
        seen += m["role"] == "user"
        if seen == turn:
            return [dict(x) for x in messages[: i + 1]]
    raise ValueError(f"conversation has only {seen} user turns, asked for turn {turn}")


def contrast_conversations(convs: Sequence[dict], *, user: Chat, assistant: Chat, contrast: Chat | None,
                           sim_cfg: SimulateConfig, cfg: ContrastConfig, split: str,
                           prompts: SimPrompts | None = None) -> list[dict]:
    """Filter candidates {"fields", "events", "failure", "notes"}, one per conversation, in input order."""
    if cfg.method not in METHODS:
        raise ValueError(f"contrast.method must be one of {METHODS}, got {cfg.method!r}")
    prompts = prompts or SimPrompts.load()
    instruct_prompt = load_prompt("contrast_instruct")
    base = derive_seed(cfg.seed, "contrast", split)
    trim = sim_cfg.trim_truncated
    cands: list[dict] = []
    work: list[dict] = []  # candidates still being built, with their histories
    for conv in convs:
        models = {"user": conv["models"]["user"], "assistant": conv["models"]["assistant"]}
        fields = dict(chosen=conv["messages"], rejected=None, pair_id=f"music-{conv['seed_id']}", kind="music",
                      seed_id=conv["seed_id"], conversation_id=conv["conversation_id"], models=models,
                      prompts=list(conv["prompts"]))
        cand = {"fields": fields, "events": list(conv["events"]), "failure": conv["failure"], "notes": {}}
        cands.append(cand)
        if conv["failure"] is not None:
            continue
        d = pick_divergence(conv["seed_id"], conv["turns"], cfg)
        g = conv["context_turns"] + d
        history = history_to_user_turn(conv["messages"], g)
        fields.update(divergence_turn=g, turns_after_divergence=user_turns(conv["messages"]) - g,
                      original_request=history[-1]["content"])
        work.append({"cand": cand, "pos": len(cands) - 1, "history": history, "turn": g,
                     "target": user_turns(conv["messages"])})

    answered: list[tuple[dict, Any]] = []  # (work item, answer event)
    resample: list[dict] = []
    if cfg.method in ("instruct", "auto") and work:
        if contrast is None:
            raise ValueError("contrast.method needs the contrast backend")
        replies = contrast.generate([with_system(w["history"], instruct_prompt.text) for w in work],
                                    seed=derive_seed(base, "instruct"), desc=f"contrast {split} instruct")
        for w, rep in zip(work, replies):
            parsed = parse_contrast(rep.text) if rep.finish_reason != "error" else None
            w["cand"]["notes"]["instruct_raw"] = rep.text
            w["cand"]["notes"]["instruct_parsed"] = parsed is not None
            if parsed is not None:
                event, failure = make_event(rep, branch="rejected", turn=w["turn"], role="assistant", trim=trim,
                                            text=parsed[1], method="instruct")
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

    if resample:  # the user model asks again from the same history; the assistant answers that request
        replies = user.generate([user_view(w["history"][:-1], prompts) for w in resample],
                                seed=derive_seed(base, "resample", "user"), desc=f"contrast {split} resample user")
        asked = []
        for w, rep in zip(resample, replies):
            event, failure = make_event(rep, branch="rejected", turn=w["turn"], role="modified_request", trim=trim,
                                        user_voice=True, method="resample")
            w["cand"]["events"].append(event.to_record())
            w["cand"]["fields"].update(modified_request=event.text or None, contrast_method="resample")
            same = event.text.strip().casefold() == w["history"][-1]["content"].strip().casefold()
            if failure or same:  # an equal request would only be filtered: skip its answer
                w["cand"]["failure"] = failure or "modified_request"
            else:
                asked.append((w, event.text))
        replies = assistant.generate([assistant_view([*w["history"][:-1], {"role": "user", "content": q}], prompts)
                                      for w, q in asked],
                                     seed=derive_seed(base, "resample", "assistant"), desc=f"contrast {split} resample answer") if asked else []
        for (w, _), rep in zip(asked, replies):
            answered.append((w, make_event(rep, branch="rejected", turn=w["turn"], role="assistant", trim=trim,
                                           method="resample")))

    answered.sort(key=lambda a: a[0]["pos"])  # input order, whatever the method
    rollouts, targets = [], []
    for w, (event, failure) in answered:
        r = Rollout(w["cand"]["fields"]["pair_id"], "rejected", w["history"])
        r.add(event, failure)
        rollouts.append(r)
        targets.append(w["target"])
        w["rollout"] = r
    roll_out(rollouts, targets, user, assistant, prompts=prompts, seed=derive_seed(base, "rejected"),
             tag=f"contrast {split} rejected", trim=trim)
    for (w, _), r in zip(answered, rollouts):
        cand = w["cand"]
        cand["events"].extend(e.to_record() for e in r.events)
        if r.failure is not None:
            cand["failure"] = r.failure
        else:
            cand["fields"]["rejected"] = r.messages
    return cands


def candidates_to_records(kept: Sequence[dict]) -> list[dict]:
    from music.pairs import pair_record

    return [pair_record(**c["fields"]) for c in kept]


def method_counts(cands: Sequence[dict], kept: Sequence[dict]) -> dict:
    """How rejected replies were made (kept pairs), and how often the instruct reply failed to parse."""
    out = {"instruct_tried": 0, "instruct_unparsed": 0, "kept_instruct": 0, "kept_resample": 0}
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

def held_out_conversation_ids(seeds_dir: Path) -> set[str]:
    """Conversation ids the seed stage kept for evaluation (eval seeds and whole eval conversations)."""
    from music.io import read_jsonl

    ids = set()
    for name in ("eval.jsonl", "eval_conversations.jsonl"):
        if (seeds_dir / name).exists():
            ids |= {rec["conversation_id"] for _, rec in read_jsonl(seeds_dir / name)}
    return ids


def run_contrast(P: Params, *, splits: Sequence[str] = ("train", "eval"),
                 backends: tuple[Chat, Chat, Chat | None] | None = None) -> dict:
    """Read outputs/conversations/{split} (and seeds for D); write outputs/pairs/* and filter_report.json."""
    from music.pairs import d_candidates, d_records_from_source, load_records, pair_features, parse_d_source, save_records
    from music.seeding import read_seeds
    from music.simulate import make_backends

    cfg = P.contrast
    if backends is None:
        from music.chat import make_chat

        user, assistant = make_backends(P)
        contrast = make_chat(cfg.contrast, P.paths.cache) if cfg.method != "resample" else None
    else:
        user, assistant, contrast = backends
    meter = TokenMeter(user=user, assistant=assistant, contrast=contrast)
    d_from_source = parse_d_source(cfg.d_source) is not None
    out_dir = Path(P.paths.pairs)
    report: dict = {"reasons": list(REASONS), "splits": {}, "methods": {}, "d_source": cfg.d_source,
                    "method": cfg.method, "divergence": cfg.divergence}
    for split in splits:
        convs = load_records(Path(P.paths.conversations) / split)
        cands = contrast_conversations(convs, user=user, assistant=assistant, contrast=contrast, sim_cfg=P.simulate,
                                       cfg=cfg, split=split)
        kept, stats = apply_filters(cands, cfg)
        save_records(candidates_to_records(kept), out_dir / f"music_{split}", pair_features())
        report["splits"][f"music_{split}"] = stats
        report["methods"][f"music_{split}"] = method_counts(cands, kept)

        d_records: list[dict] = []
        if cfg.d_pairs and d_from_source:
            d_records = d_records_from_source(cfg, split, held_out_conversation_ids(Path(P.paths.seeds)))
            report["splits"][f"d_{split}"] = {"candidates": len(d_records), "kept": len(d_records),
                                             "removed": {r: 0 for r in REASONS}}
        elif cfg.d_pairs:
            seeds = read_seeds(Path(P.paths.seeds) / f"{split}.jsonl")
            d_cands = d_candidates(seeds, assistant, split=split, seed=derive_seed(cfg.seed, "d", split),
                                   trim=P.simulate.trim_truncated)
            d_kept, d_stats = apply_filters(d_cands, cfg)
            d_records = candidates_to_records(d_kept)
            report["splits"][f"d_{split}"] = d_stats
        save_records(d_records, out_dir / f"d_{split}", pair_features())
    write_json(out_dir / "filter_report.json", report)
    # Not in filter_report.json: the counts depend on what the response cache already held.
    report["tokens"] = meter.report()
    return report
