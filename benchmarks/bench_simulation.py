"""Simulation throughput: today's path (every prompt encoded whole) vs key/value reuse, side by side.

    .venv/bin/python benchmarks/bench_simulation.py            # 16 seeds, 3 turns, user 32 / assistant 48 tokens
    .venv/bin/python benchmarks/bench_simulation.py --smoke    # seconds: what tests/test_benchmarks.py runs
    .venv/bin/python benchmarks/bench_simulation.py --case long-context [--threads 1]
        # the long-context anomaly: per-turn seconds before/after the decoding fix, 8 seeds of <= 1,500 characters
        # (ShareGPT), 5 turns, 32 tokens a reply, side by side

One process, the same seeds (outputs/seeds/train.jsonl if present, else built-in questions), the
response cache off. The workload is the pipeline's: music.stages.simulate.simulate_seeds for K turns, then
music.stages.contrast.contrast_conversations (method "resample") whose rejected branch diverges at turn 1 or 2
(min_turns_after_divergence=1) and is continued to the end, batch 8, temperature 0.7.

Every generate call of that workload runs on both paths, one after the other with the order alternating
from call to call, so both see the same load on a shared machine; the roll-out continues with today's
replies, and the share of replies identical between the two paths is reported. Each path is timed per
call; generated tokens/s = generated tokens (up to and including the stop token, as the backends count
them) / generation seconds (wall clock; process CPU seconds too, as a check less sensitive to other jobs
on a shared machine). Printed for both: prompt tokens per generated token, prompt tokens actually
encoded per generated token, generated tokens/s; then the ratios reuse/today and the prefix store's peak
memory. Targets: encoded per generated token at most half of today's, throughput >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FALLBACK_QUESTIONS = [
    ("How do I make braised pork belly?", "Braise cubed pork belly with soy sauce, sugar and ginger for an hour."),
    ("Write a Python function to reverse a string.", "def reverse(s):\n    return s[::-1]"),
    ("What are good places to visit in Paris?", "The Louvre, the Eiffel Tower and Montmartre are classics."),
    ("How can I sleep better?", "Keep a regular schedule, avoid screens before bed and keep the room cool."),
    ("Explain what a hash table is.", "A hash table maps keys to values by hashing each key to a bucket."),
    ("Give me a name for a bakery.", "How about 'The Rolling Pin'?"),
    ("How do I start running?", "Begin with short run-walk intervals three times a week."),
    ("What is photosynthesis?", "Plants turn light, water and CO2 into sugar and oxygen."),
]


def load_seeds(path: Path, n: int):
    from music.stages.seed import Seed, read_seeds

    if path.is_file():
        seeds = read_seeds(path)[:n]
        if len(seeds) >= n:
            return seeds, str(path)
    seeds = [
        Seed(
            f"bench-{i}",
            f"bench-{i}",
            "bench",
            "train",
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            None,
            None,
        )
        for i, (q, a) in enumerate((FALLBACK_QUESTIONS * (n // len(FALLBACK_QUESTIONS) + 1))[:n])
    ]
    return seeds, "built-in questions"


class Twin:
    """One role. Each generate call runs on today's backend and on the reusing one (alternately first) and
    returns today's replies; seconds and identical replies are counted per path."""

    PATHS = ("today", "reuse")

    def __init__(self, today, reuse, clock: list[int]):
        self.backends = {"today": today, "reuse": reuse}
        self.name = today.name
        self.clock = clock  # shared by the roles: the order alternates over all calls
        self.seconds = {p: 0.0 for p in self.PATHS}
        self.cpu_seconds = {p: 0.0 for p in self.PATHS}
        self.replies = 0
        self.identical = 0

    def generate(self, conversations, **kw):
        order = self.PATHS if self.clock[0] % 2 == 0 else self.PATHS[::-1]
        self.clock[0] += 1
        out = {}
        for path in order:
            t, c = time.perf_counter(), time.process_time()
            out[path] = self.backends[path].generate(conversations, **kw)
            self.seconds[path] += time.perf_counter() - t
            self.cpu_seconds[path] += time.process_time() - c
        self.replies += len(conversations)
        self.identical += sum(
            a.text == b.text and a.finish_reason == b.finish_reason for a, b in zip(out["today"], out["reuse"])
        )
        return out["today"]


def long_seeds(path: Path, n: int, max_chars: int):
    """The n longest seed contexts (<= max_chars characters) of a ShareGPT file, else built-in long ones."""
    from music.stages.seed import Seed

    if path.is_file():
        from music.config import SeedConfig
        from music.sources.sharegpt import load_sharegpt
        from music.stages.seed import draw_seeds

        cfg = SeedConfig(
            n_train=5 * n,
            n_eval=0,
            n_eval_conversations=0,
            max_context_turns=2,
            max_message_chars=max_chars,
            max_context_chars=max_chars,
        )
        pool = draw_seeds(load_sharegpt(path, limit=4000), cfg).train
        seeds = sorted(pool, key=lambda s: (-sum(len(m["content"]) for m in s.context), s.seed_id))[:n]
        if len(seeds) == n:
            return seeds, f"{path.name}, the {n} longest of {len(pool)} drawn seed contexts"
    seeds = []
    for i, (q, a) in enumerate((FALLBACK_QUESTIONS * (n // len(FALLBACK_QUESTIONS) + 1))[:n]):
        a = (a + " ") * max(1, (max_chars - len(q)) // (len(a) + 1))
        seeds.append(
            Seed(
                f"bench-{i}",
                f"bench-{i}",
                "bench",
                "train",
                [{"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}],
                None,
                None,
            )
        )
    return seeds, "built-in questions with long answers"


class Modes:
    """One role for the long-context case: every generate call runs on the old decoding ("before": transformers'
    repeat_kv attention and a cache grown by torch.cat) and the new one ("after"), each with its own prefix
    store, the order alternating; seconds are summed per (simulated turn, path); today's (after) replies go on."""

    PATHS = ("before", "after")

    def __init__(self, backends: dict, clock: list[int], table: dict, role: str):
        self.backends, self.clock, self.table, self.role = backends, clock, table, role
        self.name = backends["after"].name
        self.replies = self.identical = 0

    def generate(self, conversations, **kw):
        from music.chat.transformers_backend import use_gqa_attention

        turn = int(str(kw.get("desc", "")).rsplit(" ", 1)[-1])  # "... user step k": simulated turn k
        order = self.PATHS if self.clock[0] % 2 == 0 else self.PATHS[::-1]
        self.clock[0] += 1
        out = {}
        for path in order:
            b = self.backends[path]
            use_gqa_attention(b.lm, path == "after")
            t, c, e = time.perf_counter(), time.process_time(), b.tokens.encoded
            out[path] = b.generate(conversations, **kw)
            row = self.table.setdefault(
                turn, {p: {"seconds": 0.0, "cpu_seconds": 0.0, "encoded": 0} for p in self.PATHS}
            )
            row[path]["seconds"] += time.perf_counter() - t
            row[path]["cpu_seconds"] += time.process_time() - c
            row[path]["encoded"] += b.tokens.encoded - e
        use_gqa_attention(self.backends["after"].lm, True)
        self.replies += len(conversations)
        self.identical += sum(a.text == b.text for a, b in zip(out["before"], out["after"]))
        return out["after"]


def long_context(args) -> dict:
    """Per-turn seconds of one roll-out (simulate only), before and after the decoding fix, side by side."""
    import torch

    from music.chat import make_chat
    from music.chat.kv_cache import PrefixKVStore
    from music.chat.rollout import SimPrompts
    from music.config import EMBEDDED_MODEL, ChatModelConfig, SimulateConfig
    from music.stages.simulate import simulate_seeds

    def backend(tokens: int, path: str):
        b = make_chat(
            ChatModelConfig(
                model=args.model or EMBEDDED_MODEL,
                max_new_tokens=tokens,
                temperature=args.temperature,
                repetition_penalty=args.repetition_penalty,
                batch_size=args.batch_size,
            ),
            None,
        )
        b.grow_in_place = path == "after"
        return b

    chats = {
        (role, p): backend(tokens, p)
        for role, tokens in (("user", args.user_tokens), ("assistant", args.assistant_tokens))
        for p in Modes.PATHS
    }
    if chats["user", "after"].kv is None:
        raise SystemExit(f"key/value reuse is unavailable for this model: {chats['user', 'after'].reuse_off_reason}")
    before_store = PrefixKVStore(chats["user", "after"].kv.budget_bytes)  # each path reuses only its own states
    chats["user", "before"].kv = chats["assistant", "before"].kv = before_store
    seeds, source = long_seeds(Path(args.sharegpt), args.seeds, args.max_context_chars)
    prompts = SimPrompts.load()
    for c in chats.values():  # warm-up: the first generate of a process is slow
        c.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=2, seed=-1)
    chats["user", "after"].kv.clear()
    before_store.clear()
    clock, table = [0], {}
    user = Modes({p: chats["user", p] for p in Modes.PATHS}, clock, table, "user")
    assistant = Modes({p: chats["assistant", p] for p in Modes.PATHS}, clock, table, "assistant")
    simulate_seeds(seeds, user, assistant, SimulateConfig(turns=args.turns), split="bench", prompts=prompts)
    rows = [
        {
            "turn": t,
            **{f"{p}_{k}": round(v, 2) for p in Modes.PATHS for k, v in table[t][p].items()},
            "speedup": round(table[t]["before"]["seconds"] / max(table[t]["after"]["seconds"], 1e-9), 2),
        }
        for t in sorted(table)
    ]
    tot = {p: sum(table[t][p]["seconds"] for t in table) for p in Modes.PATHS}
    replies = user.replies + assistant.replies
    identical = user.identical + assistant.identical
    result = {
        "case": "long-context",
        "seeds": len(seeds),
        "seed_source": source,
        "context_chars": [sum(len(m["content"]) for m in s.context) for s in seeds],
        "turns": args.turns,
        "batch_size": args.batch_size,
        "user_tokens": args.user_tokens,
        "assistant_tokens": args.assistant_tokens,
        "threads": torch.get_num_threads(),
        "model": args.model or EMBEDDED_MODEL,
        "per_turn": rows,
        "seconds_before": round(tot["before"], 1),
        "seconds_after": round(tot["after"], 1),
        "speedup": round(tot["before"] / max(tot["after"], 1e-9), 2),
        "identical_replies": f"{identical}/{replies}",
        "identical_share": round(identical / max(replies, 1), 4),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{len(seeds)} seeds ({source}), {args.turns} turns, user {args.user_tokens} / assistant "
        f"{args.assistant_tokens} tokens, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        "key/value reuse on"
    )
    print("turn | before: s (cpu s) | after: s (cpu s) | before/after   (user + assistant calls of the turn)")
    for r in rows:
        print(
            f"{r['turn']:>4} | {r['before_seconds']:7.1f} ({r['before_cpu_seconds']:6.1f}) | "
            f"{r['after_seconds']:7.1f} ({r['after_cpu_seconds']:6.1f}) | {r['speedup']:.2f}x"
        )
    print(
        f"total: before {result['seconds_before']} s, after {result['seconds_after']} s ({result['speedup']:.2f}x); "
        f"identical replies {identical}/{replies}"
    )
    if args.json:
        from music.files import write_json

        write_json(args.json, result)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--user-tokens", type=int, default=32)
    ap.add_argument("--assistant-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repetition-penalty", type=float, default=1.1, help="the default profile's (params.yaml)")
    ap.add_argument("--kv-cache-mb", type=int, default=None, help="default: ChatModelConfig's")
    ap.add_argument("--seeds-file", default=str(ROOT / "outputs" / "seeds" / "train.jsonl"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice). On a machine shared with other jobs, 1 thread "
        "measures far more steadily: 2 threads that get one core between them wait on each other",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: 2 seeds, 2 turns, 4-token replies, batch 2 (tests/test_benchmarks.py)",
    )
    ap.add_argument(
        "--case",
        choices=["reuse", "long-context"],
        default="reuse",
        help="reuse: today's path vs key/value reuse (above); long-context: per-turn seconds of the "
        "decoding fix, before vs after, with paper-like turns and seed lengths",
    )
    ap.add_argument(
        "--sharegpt",
        default=str(ROOT / "data" / "sharegpt" / "conversations.jsonl"),
        help="long-context case: seed contexts (up to --max-context-chars) from this file when present",
    )
    ap.add_argument("--max-context-chars", type=int, default=1500)
    args = ap.parse_args(argv)
    if args.case == "long-context" and not args.smoke:  # profiles/paper.yaml's turns, ShareGPT contexts <= 1,500 chars
        defaults = {"seeds": (16, 8), "turns": (3, 5), "assistant_tokens": (48, 32)}
        for key, (default, value) in defaults.items():
            if getattr(args, key) == default:
                setattr(args, key, value)
    if args.smoke:
        args.seeds, args.turns, args.user_tokens, args.assistant_tokens, args.batch_size = 2, 2, 4, 4, 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case == "long-context":
        return long_context(args)

    from music.chat import make_chat
    from music.chat.base import TokenMeter
    from music.chat.rollout import SimPrompts, assistant_view, user_view
    from music.config import EMBEDDED_MODEL, ChatModelConfig, ContrastConfig, SimulateConfig
    from music.stages.contrast import contrast_conversations
    from music.stages.simulate import simulate_seeds

    def backend(tokens: int, reuse: bool):
        kw = {} if args.kv_cache_mb is None else {"kv_cache_mb": args.kv_cache_mb}
        return make_chat(
            ChatModelConfig(
                model=args.model or EMBEDDED_MODEL,
                max_new_tokens=tokens,
                temperature=args.temperature,
                repetition_penalty=args.repetition_penalty,
                batch_size=args.batch_size,
                reuse_kv=reuse,
                **kw,
            ),
            None,
        )  # no response cache: every call really generates

    chats = {
        (role, path): backend(tokens, path == "reuse")
        for role, tokens in (("user", args.user_tokens), ("assistant", args.assistant_tokens))
        for path in Twin.PATHS
    }
    store = chats["user", "reuse"].kv
    if store is None:
        raise SystemExit(f"key/value reuse is unavailable for this model: {chats['user', 'reuse'].reuse_off_reason}")
    seeds, seed_source = load_seeds(Path(args.seeds_file), args.seeds)

    # Warm-up on the real batch shape (the first generate of a shape is slow), then an empty store.
    prompts = SimPrompts.load()
    views = [user_view(s.context, prompts) for s in seeds[: args.batch_size]]
    for c in chats.values():
        c.generate(views, max_new_tokens=2, seed=-1)
        c.generate([assistant_view(s.context, prompts) for s in seeds[:1]], max_new_tokens=2, seed=-1)
    store.clear()
    store.peak_bytes = 0

    meters = {p: TokenMeter(user=chats["user", p], assistant=chats["assistant", p]) for p in Twin.PATHS}
    clock = [0]
    user = Twin(chats["user", "today"], chats["user", "reuse"], clock)
    assistant = Twin(chats["assistant", "today"], chats["assistant", "reuse"], clock)
    sim_cfg = SimulateConfig(turns=args.turns)
    t0 = time.perf_counter()
    convs = simulate_seeds(seeds, user, assistant, sim_cfg, split="bench", prompts=prompts)
    contrast_cfg = ContrastConfig(method="resample", divergence="random", min_turns_after_divergence=1)
    cands = contrast_conversations(
        convs,
        user=user,
        assistant=assistant,
        contrast=None,
        sim_cfg=sim_cfg,
        cfg=contrast_cfg,
        split="bench",
        prompts=prompts,
    )
    wall = time.perf_counter() - t0

    paths = {}
    for p in Twin.PATHS:
        tok = meters[p].report()["total"]
        secs = user.seconds[p] + assistant.seconds[p]
        cpu = user.cpu_seconds[p] + assistant.cpu_seconds[p]
        paths[p] = {
            **tok,
            "seconds": round(secs, 1),
            "generated_per_s": round(tok["generated_tokens"] / secs, 2),
            "cpu_seconds": round(cpu, 1),
            "generated_per_cpu_s": round(tok["generated_tokens"] / cpu, 2),
        }
    replies = user.replies + assistant.replies
    identical = user.identical + assistant.identical
    result = {
        "seeds": len(seeds),
        "seed_source": seed_source,
        "turns": args.turns,
        "batch_size": args.batch_size,
        "user_tokens": args.user_tokens,
        "assistant_tokens": args.assistant_tokens,
        "temperature": args.temperature,
        "repetition_penalty": args.repetition_penalty,
        "threads": torch.get_num_threads(),
        "model": args.model or EMBEDDED_MODEL,
        "rejected_branches": sum(c["fields"]["rejected"] is not None for c in cands),
        "generate_calls": clock[0],
        "wall_seconds_both_paths": round(wall, 1),
        "today": paths["today"],
        "reuse": paths["reuse"],
        "throughput_reuse_over_today": round(paths["reuse"]["generated_per_s"] / paths["today"]["generated_per_s"], 2),
        "cpu_throughput_reuse_over_today": round(
            paths["reuse"]["generated_per_cpu_s"] / paths["today"]["generated_per_cpu_s"], 2
        ),
        "encoded_per_generated_reuse_over_today": round(
            paths["reuse"]["encoded_per_generated"] / paths["today"]["encoded_per_generated"], 3
        ),
        "identical_replies": f"{identical}/{replies}",
        "identical_share": round(identical / replies, 4),
        "kv_store": {
            **store.stats(),
            "peak_mb": round(store.peak_bytes / 2**20, 1),
            "budget_mb": round(store.budget_bytes / 2**20),
        },
    }
    print(json.dumps(result, indent=2))
    for p in Twin.PATHS:
        r = paths[p]
        print(
            f"{p:>6}: prompt/generated {r['prompt_per_generated']:.2f} | encoded/generated "
            f"{r['encoded_per_generated']:.2f} | {r['generated_per_s']:.1f} generated tok/s "
            f"({r['generated_tokens']} tokens in {r['seconds']:.0f} s)"
        )
    ok_enc = result["encoded_per_generated_reuse_over_today"] <= 0.5
    ok_tps = result["throughput_reuse_over_today"] >= 1.5
    print(
        f"reuse/today: throughput {result['throughput_reuse_over_today']:.2f}x (target >= 1.5: "
        f"{'met' if ok_tps else 'NOT met'}); encoded per generated token "
        f"{result['encoded_per_generated_reuse_over_today']:.3f} (target <= 0.5: {'met' if ok_enc else 'NOT met'})"
    )
    print(
        f"process CPU time (less sensitive to other jobs on the machine): generated tokens per CPU second "
        f"{paths['today']['generated_per_cpu_s']:.2f} today, {paths['reuse']['generated_per_cpu_s']:.2f} reuse: "
        f"{result['cpu_throughput_reuse_over_today']:.2f}x"
    )
    print(
        f"identical replies: {identical}/{replies} ({100 * identical / replies:.1f}%); "
        f"prefix store peak {result['kv_store']['peak_mb']} MB of {result['kv_store']['budget_mb']} MB"
    )
    if args.json:
        from music.files import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
