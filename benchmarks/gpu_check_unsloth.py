"""GPU check of the Unsloth reward-model path (never run on CPU: it exits with a message there).

    python benchmarks/gpu_check_unsloth.py [--backbone embedded:smollm2-135m-instruct] [--layers 4] [--steps 6]

Needs a CUDA GPU and the GPU extra (`pip install -e '.[gpu]'`: unsloth 2026.10.9). It runs what the
CPU tests cannot: load the backbone through Unsloth with num_labels=1 (assert a one-output `score` head,
unsloth#1730), cut it to --layers, add LoRA through FastLanguageModel.get_peft_model (score head
trainable), train --steps steps with this package's trainer, merge and save, reload the folder with
plain transformers, and compare the scores. Prints each step and ends with "GPU CHECK OK".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    import unsloth  # noqa: F401,I001  (first: it patches transformers/peft at import)
except ImportError as exc:
    raise SystemExit(f"unsloth is not installed ({exc}): pip install -e '.[gpu]' on a GPU machine")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from music.config import EMBEDDED_MODEL, TrainConfig  # noqa: E402
from music.schema import PreferencePair  # noqa: E402


def toy_pairs(n: int) -> list[PreferencePair]:
    pairs = []
    for i in range(n):
        q = {"role": "user", "content": f"Question {i}: how do I cook rice? " + "please " * (i % 4)}
        good = {"role": "assistant", "content": "Rinse the rice, add water 1:1.5, simmer 15 minutes. " * (1 + i % 3)}
        bad = {"role": "assistant", "content": "Here is a recipe for pancakes instead. " * (1 + i % 3)}
        pairs.append(PreferencePair([q, good], [q, bad], {"pair_id": f"g{i}", "kind": "d"}))
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=EMBEDDED_MODEL)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: this check only runs on a GPU machine")
        return 2
    print(f"torch {torch.__version__}, unsloth {unsloth.__version__}, GPU {torch.cuda.get_device_name(0)}")

    from music.rm.model import choose_backend, load_reward_model, score_head
    from music.rm.score import RewardScorer, score_conversations
    from music.rm.train import run_training, save_reward_model

    choice = choose_backend("auto")
    print(f"1. backend auto -> {choice.name}: {choice.reason}")
    assert choice.name == "unsloth", "auto did not pick Unsloth on a GPU with unsloth installed"

    cfg = TrainConfig(backbone=args.backbone, num_layers=args.layers, backend="unsloth", lora=True,
                      max_steps=args.steps, batch_size=4, max_length=512, learning_rate=5e-4, save_every=0,
                      dtype="auto", gradient_checkpointing=True)  # the paper profile's settings on a GPU
    model, tok, info = load_reward_model(cfg)
    head = score_head(model)
    print(f"2. loaded {info['model_class']} ({info['num_layers']} layers, device {info['device']}); "
          f"score head {tuple(head.weight.shape)} trainable={head.weight.requires_grad}; "
          f"pad {info['pad_token']!r}={info['pad_token_id']}; trainable {info['trainable_params']:,}/{info['total_params']:,}")
    print(f"   dtype {info['dtype']} (head {info['head_dtype']}), gradient checkpointing {info['gradient_checkpointing']}")
    assert info["dtype"] in ("bfloat16", "float16") and info["head_dtype"] == "float32"
    del model

    pairs = toy_pairs(4 * args.steps)
    t0 = time.perf_counter()
    out = run_training(cfg, {"d": pairs}, progress=True)
    m = out.metrics
    print(f"3. trained {m['steps']} steps in {time.perf_counter() - t0:.1f}s: loss {out.curve[0]['loss']:.4f} -> "
          f"{m['last_step_loss']:.4f}, {out.timing['tokens_per_s']} tokens/s, backend {m['backend']['backend']}")
    assert m["backend"]["backend"] == "unsloth"

    convs = [p.chosen for p in pairs[:4]] + [p.rejected for p in pairs[:4]]
    with tempfile.TemporaryDirectory() as tmp:
        merged = save_reward_model(out, Path(tmp) / "rm")
        mem = score_conversations(merged, out.tokenizer, convs, max_length=512)
        dtype = str(next(merged.parameters()).dtype).replace("torch.", "")
        re = RewardScorer(Path(tmp) / "rm", dtype=dtype).score(convs)
        re32 = RewardScorer(Path(tmp) / "rm", dtype="float32").score(convs)
        files = sorted(p.name for p in (Path(tmp) / "rm").iterdir())
    diff = max(abs(a - b) for a, b in zip(mem, re))
    diff32 = max(abs(a - b) for a, b in zip(mem, re32))
    print(f"4. saved {files}")
    print(f"5. reload ({dtype}) max |score diff| {diff:.2e}; reload fp32 {diff32:.2e}")
    print(f"   chosen {[round(x, 3) for x in mem[:4]]} rejected {[round(x, 3) for x in mem[4:]]}")
    assert diff < 1e-2, "reloaded model scores differ from the in-memory model"
    print("GPU CHECK OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
