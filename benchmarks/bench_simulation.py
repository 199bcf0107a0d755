"""Simulation throughput: the batched simulator vs one conversation at a time vs raw batched generate.

    .venv/bin/python benchmarks/bench_simulation.py --seeds 8 --turns 1 --max-new-tokens 32

On the same seeds, in one process, with the response cache off:
  (a) batched   music.simulate.simulate_seeds on all seeds (one generate call per role per turn);
  (b) naive     the same function called once per seed (batch of one);
  (c) raw       model.generate on exactly the prompts (a) sent, in the same batches: the upper limit.
Throughput = generated tokens / generation seconds, tokens counted by re-tokenising each reply the
same way for all three. Prints tokens/s and the ratios batched/naive and batched/raw.
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
    from music.seeding import Seed, read_seeds

    if path.is_file():
        seeds = read_seeds(path)[:n]
        if len(seeds) >= n:
            return seeds, str(path)
    seeds = [Seed(f"bench-{i}", f"bench-{i}", "bench", "train",
                  [{"role": "user", "content": q}, {"role": "assistant", "content": a}], None, None)
             for i, (q, a) in enumerate((FALLBACK_QUESTIONS * (n // len(FALLBACK_QUESTIONS) + 1))[:n])]
    return seeds, "built-in questions"


class Recorder:
    """Wraps a backend: times each generate call and keeps its prompts, seed and replies."""

    def __init__(self, backend):
        self.backend, self.name = backend, backend.name
        self.calls: list[dict] = []

    def generate(self, conversations, **kw):
        t = time.perf_counter()
        replies = self.backend.generate(conversations, **kw)
        self.calls.append({"conversations": conversations, "kw": kw, "replies": replies,
                           "seconds": time.perf_counter() - t})
        return replies


def count_tokens(tok, texts) -> int:
    return sum(len(tok(t or "", add_special_tokens=False)["input_ids"]) for t in texts)


def run_sim(seeds, user, assistant, cfg):
    from music.simulate import simulate_seeds

    u, a = Recorder(user), Recorder(assistant)
    simulate_seeds(seeds, u, a, cfg, split="bench")
    return u.calls + a.calls


def raw_generate(backend, calls) -> tuple[int, float]:
    """Same prompts, same batches, same generation config as the backend; only model.generate is timed."""
    import torch

    tok, lm = backend.tok, backend.lm
    n_tokens, seconds = 0, 0.0
    for call in calls:
        params = backend.sampling(call["kw"].get("seed", 0), None, None)
        gen_cfg = backend._generation_config(params)
        prompts = [backend.render(c) for c in call["conversations"]]
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        for start in range(0, len(order), backend.cfg.batch_size):
            batch = [prompts[i] for i in order[start : start + backend.cfg.batch_size]]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), backend.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(batch):
                ids[row, width - len(p) :] = torch.tensor(p)
                mask[row, width - len(p) :] = 1
            torch.manual_seed(params.seed)
            t = time.perf_counter()
            with torch.inference_mode():
                out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            seconds += time.perf_counter() - t
            n_tokens += count_tokens(tok, [backend._decode(row).text for row in out[:, width:].tolist()])
    return n_tokens, seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the number of seeds")
    ap.add_argument("--seeds-file", default=str(ROOT / "outputs" / "seeds" / "train.jsonl"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from music.chat import make_chat
    from music.config import EMBEDDED_MODEL, ChatModelConfig, SimulateConfig

    cfg = ChatModelConfig(model=args.model or EMBEDDED_MODEL, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size or args.seeds)
    backend = make_chat(cfg, None)  # no response cache: every variant really generates
    tok = backend.tok
    seeds, seed_source = load_seeds(Path(args.seeds_file), args.seeds)
    sim_cfg = SimulateConfig(turns=args.turns)
    # Warm-up on the real batch shape: the first generate on a new shape is much slower (kernel set-up).
    from music.simulate import SimPrompts, user_view

    views = [user_view(s.context, SimPrompts.load()) for s in seeds]
    backend.generate(views, max_new_tokens=2, seed=-1)
    backend.generate(views[:1], max_new_tokens=2, seed=-1)

    def measure(calls):
        return count_tokens(tok, [r.text for c in calls for r in c["replies"]]), sum(c["seconds"] for c in calls)

    batched_calls = run_sim(seeds, backend, backend, sim_cfg)
    batched = measure(batched_calls)
    naive = [0, 0.0]
    for s in seeds:
        n, t = measure(run_sim([s], backend, backend, sim_cfg))
        naive[0] += n
        naive[1] += t
    raw = raw_generate(backend, batched_calls)

    # On CPU the prompt (prefill) is compute-bound and costs the same batched or not; only decoding gains
    # from batching. This ratio says how much of the work batching can speed up at all.
    prompt_tokens = sum(len(backend.render(c)) for call in batched_calls for c in call["conversations"])
    rate = {name: n / t for name, (n, t) in {"batched": batched, "naive": naive, "raw": raw}.items()}
    result = {
        "seeds": len(seeds), "seed_source": seed_source, "turns": args.turns, "max_new_tokens": args.max_new_tokens,
        "batch_size": cfg.batch_size, "threads": torch.get_num_threads(), "model": cfg.model,
        "tokens": {"batched": batched[0], "naive": naive[0], "raw": raw[0]},
        "seconds": {"batched": round(batched[1], 2), "naive": round(naive[1], 2), "raw": round(raw[1], 2)},
        "tokens_per_s": {k: round(v, 2) for k, v in rate.items()},
        "batched_over_naive": round(rate["batched"] / rate["naive"], 2),
        "batched_over_raw": round(rate["batched"] / rate["raw"], 3),
        "prompt_tokens": prompt_tokens, "prompt_tokens_per_generated_token": round(prompt_tokens / max(batched[0], 1), 1),
    }
    print(json.dumps(result, indent=2))
    print(f"batched {rate['batched']:.1f} tok/s | naive {rate['naive']:.1f} tok/s | raw generate {rate['raw']:.1f} tok/s")
    print(f"batched/naive = {result['batched_over_naive']:.2f}x (target >= 5x); "
          f"batched/raw = {result['batched_over_raw']:.3f} (target >= 0.85)")
    if args.json:
        from music.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
