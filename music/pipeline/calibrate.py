"""Measured throughput of this machine, for the planner's time estimates (music.pipeline.plan).

    python -m music.pipeline.calibrate [--cache-dir .cache/music] [--force]

A probe of a few seconds times what the stages spend their time on, with the embedded SmolLM2-135M
(music.models.embedded; offline):

- prefill: a batch of 4 prompts of 64 new tokens through the decoder layers (as the backend's prefix
  completion encodes new prompt tokens: no vocabulary projection), in tokens per second;
- decode: one generation step of a batch of 1 and of 8 rows (generate, greedy, a forced length: the time of
  9 steps minus that of 1), in seconds;
- reward-model layers: one decoder layer's forward on 8 x 128 tokens without autograd (scoring, and the
  frozen bottom computed once per conversation), and forward + backward through it with the input's
  gradient (a LoRA training step's top layers), in tokens per second per layer.

The result is cached in {cache}/calibration/<key>.json, where the key is a digest of what the numbers depend
on: CPU model, usable cores, OMP_NUM_THREADS, Python, torch and transformers versions, and the GPUs the NVIDIA
driver lists (read without importing torch, so `make plan` stays light). `make plan` reads the cache (and runs
the probe once when it is missing, with --calibrate; never with --reference); tests inject throughputs instead.

On a GPU the probe measures the small model on the GPU too, but the planner keeps its stated GPU and server
constants for large models (a 135M model says little about a 9B one's utilisation): see README "Running at
paper scale" for the commands that measure those.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from music.config import EMBEDDED_MODEL

CALIBRATION_DIR = "calibration"
PROBE_VERSION = 1  # bump when the probe measures something else: old cache files are then ignored
PROBE_BATCH = 8  # the default in-process batch_size (chat roles, scoring)
PROBE_PREFILL = (4, 64)  # rows x new tokens encoded
PROBE_CONTEXT = 16  # decode steps are timed after a prompt this long (the prompt's prefill is subtracted)
PROBE_STEPS = 8
PROBE_LAYER_TOKENS = 128


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """GPU models the NVIDIA driver lists (no CUDA or torch import: the cache is looked up by `make plan`)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return names


def machine_identity() -> dict:
    """What the measured numbers depend on; read without importing torch (the planner stays light)."""
    return {
        "probe": PROBE_VERSION,
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": _cores(),
        "threads": os.environ.get("OMP_NUM_THREADS") or str(_cores()),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "gpus": _gpus(),
    }


def identity_key(ident: dict) -> str:
    text = json.dumps(ident, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_file(cache_dir: str | Path, ident: dict) -> Path:
    return Path(cache_dir) / CALIBRATION_DIR / f"{identity_key(ident)}.json"


def _best(fn, repeats: int = 3) -> float:
    """Fastest of `repeats` timed calls after one warm-up (a busy machine adds to every call; the minimum is the
    machine's own speed)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def probe(model: str = EMBEDDED_MODEL) -> dict:
    """Time prefill, decode steps and one RM layer's forward and forward + backward (a few seconds)."""
    import torch

    from music.chat.transformers_backend import shared_model

    started = time.perf_counter()
    lm, tok = shared_model(model)
    device = next(lm.parameters()).device
    vocab = lm.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def ids(b: int, n: int):
        return torch.randint(100, min(vocab, 30000), (b, n), generator=gen).to(device)

    B = PROBE_BATCH
    prompt = ids(*PROBE_PREFILL)
    mask = torch.ones_like(prompt)
    inner = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model

    def prefill():
        with torch.no_grad():
            inner(input_ids=prompt, attention_mask=mask, use_cache=True)

    t_prefill = _best(prefill, 2)

    def decode_time(b: int) -> float:
        p = ids(b, PROBE_CONTEXT)
        m = torch.ones_like(p)
        kw = dict(do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)

        def run(n: int):
            with torch.no_grad():
                lm.generate(input_ids=p, attention_mask=m, max_new_tokens=n, min_new_tokens=n, **kw)

        one = _best(lambda: run(1), 1)
        many = _best(lambda: run(1 + PROBE_STEPS), 1)
        return max(1e-6, (many - one) / PROBE_STEPS)

    step1, step8 = decode_time(1), decode_time(B)

    layer = inner.layers[0]
    hidden = torch.randn(B, PROBE_LAYER_TOKENS, lm.config.hidden_size, generator=gen).to(device)
    pos = torch.arange(PROBE_LAYER_TOKENS, device=device).unsqueeze(0).expand(B, -1)
    rotary = inner.rotary_emb(hidden, pos)

    def layer_fwd():
        with torch.no_grad():
            layer(hidden, position_embeddings=rotary, position_ids=pos)

    def layer_train():
        x = hidden.detach().requires_grad_(True)
        out = layer(x, position_embeddings=rotary, position_ids=pos)
        out = out[0] if isinstance(out, tuple) else out
        out.float().mean().backward()

    tokens = B * PROBE_LAYER_TOKENS
    t_fwd = _best(layer_fwd, 2)
    t_train = _best(layer_train, 2)
    n_params = sum(p.numel() for p in lm.parameters())
    return {
        "model": model,
        "model_params": n_params,
        "device": str(device),
        "prefill_tok_s": PROBE_PREFILL[0] * PROBE_PREFILL[1] / t_prefill,
        "prefill_batch": list(PROBE_PREFILL),
        "decode_step_s": {"1": step1, str(B): step8},
        "decode_context": PROBE_CONTEXT,
        "layer_forward_tok_s": tokens / t_fwd,
        "layer_train_tok_s": tokens / t_train,
        "layer_batch": [B, PROBE_LAYER_TOKENS],
        "probe_s": round(time.perf_counter() - started, 1),
    }


def load_cached(cache_dir: str | Path) -> dict | None:
    """The cached calibration of this machine and these library versions, or None (imports no model library)."""
    ident = machine_identity()
    path = cache_file(cache_dir, ident)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("identity") == ident else None


def calibrate(cache_dir: str | Path, force: bool = False) -> dict:
    """The cached calibration, or a fresh probe written to the cache."""
    if not force:
        cached = load_cached(cache_dir)
        if cached is not None:
            return cached
    ident = machine_identity()
    data = {"identity": ident, "key": identity_key(ident), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    data.update(probe())
    path = cache_file(cache_dir, ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    data["path"] = str(path)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m music.pipeline.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=".cache/music", help="where calibration/<key>.json is kept")
    ap.add_argument("--force", action="store_true", help="probe again even when a cached calibration exists")
    args = ap.parse_args(argv)
    data = calibrate(args.cache_dir, force=args.force)
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
