"""GPU check of the Unsloth reward-model path (exits with a message where there is no CUDA GPU).

    python benchmarks/gpu_check_unsloth.py [--case all|reload|gemma2] [--steps 6] [--gemma-steps 4]

Needs a CUDA GPU and the GPU extra (`pip install -r requirements/gpu.txt`: unsloth 2026.10.9). Under 8
minutes on one H100 (both cases). Nothing is downloaded: the embedded SmolLM2 and a random Gemma-2 built
from the committed config.

Case `reload` (the embedded SmolLM2, cut to --layers): load through Unsloth with num_labels=1 (a
one-output `score` head, https://github.com/unslothai/unsloth/issues/1730), LoRA through
FastLanguageModel.get_peft_model, train --steps steps with this package's trainer, score in memory (Unsloth's
kernels), save with save_reward_model, then score
the saved folder in a separate process that never imports Unsloth (music.rm.score.load_scoring_model: the
evaluate stage's path) and compare the scores. It also prints how much of the LoRA update a merge into
bf16 would have dropped, and how far the scores move without the adapter (the size of what is checked).

Case `gemma2` (a Gemma-2-9B-it-shaped model from music/models/configs/gemma-2-9b-it.json with random
weights and 2 decoder layers, full widths and vocabulary; SmolLM2's tokenizer, since Gemma's is gated and
the machine is offline): train --gemma-steps steps through Unsloth at the paper profile's max length
(2,048) and micro-batch (8 pairs = 16 sequences), print peak GPU memory and training tokens/s beside the
planner's estimates for the same 2-layer shape (music.pipeline.plan: memory, FLOPs per token, hence TFLOP/s), then
the same save / separate-process reload comparison: Unsloth's soft-capped Gemma-2 attention in training
against music.rm.model.attention_implementation (eager) in scoring.

Prints each step and ends with "GPU CHECK OK". The CPU-side pieces (pairs, the child scorer, the planner's
estimate, the comparison) are importable and smoke-tested on CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from music.config import EMBEDDED_MODEL, Params, TrainConfig  # noqa: E402  (imports neither torch nor transformers)
from music.schema import PreferencePair  # noqa: E402

PAPER_MAX_LENGTH = 2048  # profiles/paper.yaml train.max_length
PAPER_MICRO_BATCH = 8  # profiles/paper.yaml train.batch_size (pairs; 16 sequences)
GEMMA = "google/gemma-2-9b-it"
# Scores before saving (Unsloth's fused kernels, in process) and after reloading (transformers + PEFT, another
# process) are the same function in bf16 computed by different kernels: they may differ by bf16 rounding.
REL_TOL = 0.05  # max |diff| <= REL_TOL * (1 + max |score|)


# ---------------------------------------------------------------- CPU-side pieces (tested on CPU)


def toy_pairs(n: int, repeat: int = 1, turns: int = 1) -> list[PreferencePair]:
    """Learnable pairs; `repeat` and `turns` make them long (turns beyond max_length are dropped, oldest first)."""
    pairs = []
    for i in range(n):
        chosen, rejected = [], []
        for t in range(turns):
            q = {"role": "user", "content": f"Question {i}.{t}: how do I cook rice? " + "please " * (i % 4) * repeat}
            good = {
                "role": "assistant",
                "content": "Rinse the rice, add water 1:1.5, simmer 15 minutes. " * (1 + i % 3) * repeat,
            }
            bad = {"role": "assistant", "content": "Here is a recipe for pancakes instead. " * (1 + i % 3) * repeat}
            chosen += [q, good]
            rejected += [q, bad]
        pairs.append(PreferencePair(chosen, rejected, {"pair_id": f"g{i}", "kind": "d"}))
    return pairs


def compare(before: list[float], after: list[float]) -> dict:
    diff = max(abs(a - b) for a, b in zip(before, after))
    scale = 1 + max(abs(x) for x in before)
    return {
        "max_abs_diff": diff,
        "tolerance": REL_TOL * scale,
        "ok": diff <= REL_TOL * scale and len(before) == len(after),
    }


def score_in_child(
    model_dir: Path, convs: list[list[dict]], dtype: str, max_length: int, device: str | None = None
) -> dict:
    """Score `convs` with the saved folder in a fresh Python process that does not import Unsloth."""
    with tempfile.TemporaryDirectory() as tmp:
        cj, out = Path(tmp) / "convs.json", Path(tmp) / "scores.json"
        cj.write_text(json.dumps(convs), encoding="utf-8")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "score",
            "--model",
            str(model_dir),
            "--convs",
            str(cj),
            "--out",
            str(out),
            "--dtype",
            dtype,
            "--max-length",
            str(max_length),
        ] + (["--device", device] if device else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"scoring in a separate process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return json.loads(out.read_text(encoding="utf-8"))


def child_main(args) -> int:
    """`score`: the evaluate stage's loading path (RewardScorer), in a process without Unsloth."""
    import torch

    from music.rm.model import score_head
    from music.rm.score import RewardScorer

    convs = json.loads(Path(args.convs).read_text(encoding="utf-8"))
    scorer = RewardScorer(args.model, batch_size=8, max_length=args.max_length, device=args.device, dtype=args.dtype)
    scores = scorer.score(convs)
    base = scorer.model.get_base_model() if hasattr(scorer.model, "get_base_model") else scorer.model
    result = {
        "scores": scores,
        "unsloth_imported": "unsloth" in sys.modules,
        "head_dtype": str(score_head(scorer.model).weight.dtype).replace("torch.", ""),
        "attn_implementation": base.config._attn_implementation,
        "model_class": type(scorer.model).__name__,
        "dtype": scorer.dtype,
    }
    if hasattr(scorer.model, "disable_adapter"):  # how far the adapter moves the scores: the size of the check
        from music.rm.score import score_conversations

        with scorer.model.disable_adapter():
            result["scores_without_adapter"] = score_conversations(
                scorer.model, scorer.tokenizer, convs, max_length=args.max_length
            )
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name(0)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def planner_estimate(backbone: str, cfg: TrainConfig) -> dict:
    """music.pipeline.plan's training memory and FLOPs per token for `cfg` on `backbone`'s shape
    (a local folder works)."""
    from music.models.shapes import backbone_shape, resolve_dtype
    from music.pipeline.plan import Assumptions, train_flops_per_token, training_memory

    P = Params()
    P.train = cfg
    shape = backbone_shape(backbone)
    A = Assumptions()
    mem = training_memory(P, shape, A, resolve_dtype(cfg.dtype, shape.torch_dtype, cuda=True))
    return {
        "total_gb": mem["total_gb"],
        "gb": mem["gb"],
        "attention": mem["attention"],
        "flops_per_token": train_flops_per_token(P, shape, mem["gradient_checkpointing"], "gpu"),
        "assumed_tflops": A.gpu_tflops,
    }


def share_lost_by_bf16_merge(model) -> float | None:
    """Of the LoRA-adapted weights, the share a merge into bf16 (W + BA*s, rounded) would leave unchanged."""
    import torch

    lost = total = 0
    for m in model.modules():
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
            w = m.base_layer.weight
            delta = (m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float()) * m.scaling["default"]
            lost += int(((w.float() + delta).to(torch.bfloat16) == w.to(torch.bfloat16)).sum())
            total += w.numel()
    return lost / total if total else None


# ---------------------------------------------------------------- the GPU cases


def check_reload(name: str, out, convs: list[list[dict]], max_length: int) -> dict:
    """Scores in memory (training process) vs the saved folder scored in a process without Unsloth."""
    from music.rm.score import score_conversations
    from music.rm.train import save_reward_model

    mem = score_conversations(out.model, out.tokenizer, convs, max_length=max_length)
    lost = share_lost_by_bf16_merge(out.model)
    with tempfile.TemporaryDirectory() as tmp:
        save_reward_model(out, Path(tmp) / "rm")
        files = sorted(p.name for p in (Path(tmp) / "rm").iterdir())
        dtype = out.metrics["backend"]["dtype"]
        child = score_in_child(Path(tmp) / "rm", convs, dtype, max_length)
    cmp = compare(mem, child["scores"])
    effect = (
        max(abs(a - b) for a, b in zip(child["scores"], child["scores_without_adapter"]))
        if "scores_without_adapter" in child
        else None
    )
    print(f"   [{name}] saved {files}")
    print(
        f"   [{name}] reload in a separate process: unsloth imported {child['unsloth_imported']}, "
        f"{child['model_class']}, {child['dtype']}, head {child['head_dtype']}, "
        f"attention {child['attn_implementation']}"
    )
    print(
        f"   [{name}] max |score diff| in memory vs reloaded {cmp['max_abs_diff']:.3e} "
        f"(tolerance {cmp['tolerance']:.3e}); "
        f"scores move {effect if effect is None else f'{effect:.3e}'} without the adapter; a bf16 merge would "
        f"drop {'?' if lost is None else f'{100 * lost:.1f}%'} of the adapted weights' updates"
    )
    print(
        f"   [{name}] in memory {[round(x, 4) for x in mem[:4]]} reloaded {[round(x, 4) for x in child['scores'][:4]]}"
    )
    assert not child["unsloth_imported"], "the reload process imported unsloth"
    assert child["head_dtype"] == "float32", "the score head did not reload in float32"
    assert cmp["ok"], f"{name}: reloaded scores differ from the in-memory model by {cmp['max_abs_diff']:.3e}"
    return {"compare": cmp, "adapter_effect": effect, "lost_by_bf16_merge": lost, "child": child}


def case_reload(args) -> None:
    from music.rm.model import choose_backend, load_reward_model, score_head
    from music.rm.train import free_accelerator_memory, run_training

    choice = choose_backend("auto")
    print(f"reload 1. backend auto -> {choice.name}: {choice.reason}")
    assert choice.name == "unsloth", "auto did not pick Unsloth on a GPU with unsloth installed"
    cfg = TrainConfig(
        backbone=args.backbone,
        num_layers=args.layers,
        backend="unsloth",
        lora=True,
        max_steps=args.steps,
        batch_size=4,
        max_length=512,
        learning_rate=5e-4,
        save_every=0,
        dtype="auto",
        gradient_checkpointing=True,
        seeds=[0],
    )
    model, tok, info = load_reward_model(cfg)
    head = score_head(model)
    print(
        f"reload 2. loaded {info['model_class']} ({info['num_layers']} layers, device {info['device']}); "
        f"score head {tuple(head.weight.shape)} trainable={head.weight.requires_grad}; "
        f"pad {info['pad_token']!r}={info['pad_token_id']}; "
        f"trainable {info['trainable_params']:,}/{info['total_params']:,}; "
        f"dtype {info['dtype']} (head {info['head_dtype']})"
    )
    assert info["dtype"] in ("bfloat16", "float16") and info["head_dtype"] == "float32"
    del model, head
    free_accelerator_memory()
    pairs = toy_pairs(4 * args.steps)
    t0 = time.perf_counter()
    out = run_training(cfg, {"d": pairs}, progress=False)
    m = out.metrics
    print(
        f"reload 3. trained {m['steps']} steps in {time.perf_counter() - t0:.1f}s: loss {out.curve[0]['loss']:.4f} -> "
        f"{m['last_step_loss']:.4f}, {out.timing['tokens_per_s']} tokens/s, backend {m['backend']['backend']}"
    )
    assert m["backend"]["backend"] == "unsloth"
    convs = [p.chosen for p in pairs[:4]] + [p.rejected for p in pairs[:4]]
    check_reload("reload", out, convs, cfg.max_length)
    del out
    free_accelerator_memory()


def case_gemma2(args) -> None:
    import torch

    from music.models import load_tokenizer
    from music.models.random_backbone import write_random_backbone
    from music.rm.train import free_accelerator_memory, run_training

    tok = load_tokenizer(EMBEDDED_MODEL, padding_side="right")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = write_random_backbone(
            GEMMA, Path(tmp) / "gemma2", tok, num_layers=2, dtype="bfloat16", vocab_size=256000
        )  # Gemma-2's embedding table; the tokenizer uses the first ids
        print(f"gemma2 1. random 2-layer Gemma-2-9B-shaped backbone written in {time.perf_counter() - t0:.1f}s")
        cfg = TrainConfig(
            backbone=folder,
            num_layers=None,
            backend="unsloth",
            lora=True,
            lora_last_layers=None,
            max_steps=args.gemma_steps,
            batch_size=PAPER_MICRO_BATCH,
            grad_accum=1,
            max_length=PAPER_MAX_LENGTH,
            learning_rate=1e-4,
            save_every=0,
            dtype="auto",
            gradient_checkpointing=True,
            seeds=[0],
        )
        est = planner_estimate(folder, cfg)
        pairs = toy_pairs(
            PAPER_MICRO_BATCH * args.gemma_steps, repeat=2, turns=60
        )  # > 2,048 tokens: oldest turns dropped
        stamps: list[float] = []
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = run_training(
            cfg, {"d": pairs}, progress=False, callback=lambda step, row: stamps.append(time.perf_counter())
        )
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        m, timing = out.metrics, out.timing
        tokens = timing["tokens_per_s"] * timing["train_seconds"]
        steady = (tokens * (len(stamps) - 1) / len(stamps)) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
        print(
            f"gemma2 2. trained {m['steps']} steps of {2 * PAPER_MICRO_BATCH} x <= {PAPER_MAX_LENGTH} tokens in "
            f"{time.perf_counter() - t0:.1f}s (backend {m['backend']['backend']}, {m['backend']['model_class']}, "
            f"dtype {m['backend']['dtype']}, head {m['backend']['head_dtype']}; padding share {m['padding_share']})"
        )
        print(
            f"gemma2 3. peak GPU memory {peak:.2f} GiB allocated ({reserved:.2f} GiB reserved); planner for this "
            f"2-layer shape: {est['total_gb']:.2f} GB (weights {est['gb']['weights']:.2f}, activations "
            f"{est['gb']['activations_checkpointing']:.2f}, overhead {est['gb']['overhead']:.1f}; "
            f"{est['attention']} attention)"
        )
        tflops = [None if v is None else v * est["flops_per_token"] / 1e12 for v in (timing["tokens_per_s"], steady)]
        print(
            f"gemma2 4. training {timing['tokens_per_s']:.0f} tokens/s over all steps"
            + (f", {steady:.0f} tokens/s after the first" if steady else "")
            + f" = {tflops[0]:.0f}"
            + (f" / {tflops[1]:.0f}" if steady else "")
            + f" TFLOP/s by the planner's {est['flops_per_token'] / 1e9:.2f} GFLOP per token "
            f"(assumed: {est['assumed_tflops']:g})"
        )
        assert m["backend"]["backend"] == "unsloth" and "ForSequenceClassification" in m["backend"]["model_class"]
        convs = [p.chosen for p in pairs[:4]] + [p.rejected for p in pairs[:4]]
        check_reload("gemma2", out, convs, cfg.max_length)
        del out
        free_accelerator_memory()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    sc = sub.add_parser("score", help="(internal) score a saved folder in this process, without Unsloth")
    sc.add_argument("--model", required=True)
    sc.add_argument("--convs", required=True)
    sc.add_argument("--out", required=True)
    sc.add_argument("--dtype", default="auto")
    sc.add_argument("--max-length", type=int, default=512)
    sc.add_argument("--device", default=None)
    ap.add_argument("--case", choices=("all", "reload", "gemma2"), default="all")
    ap.add_argument("--backbone", default=EMBEDDED_MODEL)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--gemma-steps", type=int, default=4)
    args = ap.parse_args(argv)
    if args.command == "score":
        return child_main(args)

    try:
        import unsloth  # noqa: F401,I001  (first: it patches transformers/peft at import)
    except ImportError as exc:
        print(f"unsloth is not installed ({exc}): pip install -r requirements/gpu.txt on a GPU machine")
        return 2
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: this check only runs on a GPU machine")
        return 2
    print(f"torch {torch.__version__}, unsloth {unsloth.__version__}, GPU {torch.cuda.get_device_name(0)}")
    start = time.perf_counter()
    if args.case in ("all", "reload"):
        case_reload(args)
    if args.case in ("all", "gemma2"):
        case_gemma2(args)
    print(f"GPU CHECK OK ({time.perf_counter() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
