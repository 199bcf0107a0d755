"""The package's own reward-model trainer (plain torch): Bradley-Terry loss, AdamW, linear warmup/decay,
gradient accumulation, length-grouped batches, resumable checkpoints, and a saved final model (LoRA kept
unmerged beside its base: music.rm.model.save_model_folder).

Resume: every `save_every` optimizer steps the trainable weights (LoRA + score head, or all weights),
the optimizer, the scheduler, the RNG states and the step go to
`{resume_dir}/{variant}-seed{seed}-{hash of config + data}/checkpoint.pt`, a folder outside the stage's output
(DVC deletes a stage's outputs when it starts). A rerun with the same config and data continues from
there and ends with the same weights as an uninterrupted run. Beside the checkpoint, checkpoint.json holds
its fingerprint and the trainer's code and library versions (`trainer_digest`); the checkpoint is unpickled
(torch.load with weights_only=True: tensors and plain types only) only when those match.

After success the folder is removed, or with `keep_finished` (the train stage) it keeps a copy of the saved
model (finished/ + finished.json) until the caller drops it (`drop_resume_folders`): a rerun after a kill
restores the seeds that had finished, byte for byte, and trains only the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from music.config import TrainConfig
from music.files import atomic_path, dumps_canonical
from music.rm.data import EncodedPair, collate_pairs, encode_pairs, length_grouped_batches, mix_pairs
from music.rm.frozen import frozen_bottom_for_training
from music.rm.model import load_reward_model, reward_scores, save_model_folder
from music.rm.schedule import full_batches, matched_steps, steps_for

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"  # fingerprint + trainer digest, read before the checkpoint is unpickled
FINISHED = "finished"  # a finished seed's saved model folder, kept with keep_finished
FINISHED_META = "finished.json"  # fingerprint + trainer digest + the run's timing; written after FINISHED
log = logging.getLogger(__name__)
StepCallback = Callable[[int, dict], None]  # (optimizer step done, its curve row); may raise to stop


def bt_loss(chosen, rejected, margin: float = 0.0, center_coef: float = 0.0):
    """Bradley-Terry: -log sigmoid(r_c - r_r - margin) [+ center_coef * mean((r_c + r_r)^2)].

    Returns (loss, accuracy); accuracy is strict (a tie counts as wrong, as in RewardBench).

    >>> import torch
    >>> loss, acc = bt_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))  # a win and a tie
    >>> round(loss.item(), 4), acc.item()  # (-log sigmoid(2) - log sigmoid(0)) / 2
    (0.41, 0.5)
    >>> loss, acc = bt_loss(torch.tensor([1.0]), torch.tensor([1.0]), center_coef=0.5)  # + 0.5 * (1 + 1)^2
    >>> round(loss.item(), 4), acc.item()
    (2.6931, 0.0)
    """
    import torch.nn.functional as F

    chosen, rejected = chosen.float(), rejected.float()
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    acc = (chosen > rejected).float().mean()
    return loss, acc


def fingerprint(cfg: TrainConfig, variant: str, pairs: list, seed: int, steps: int | None = None) -> str:
    """Hash of everything that decides the result (save_every only decides where we can resume; `seeds`
    lists the other runs; `steps`, when matched across variants, depends on the other variants' data)."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("save_every", "seeds")}
    head = {"config": conf, "variant": variant, "seed": seed, **({} if steps is None else {"steps": steps})}
    h = hashlib.sha256(dumps_canonical(head).encode())
    for p in pairs:
        h.update(json.dumps(p.to_record(), sort_keys=True, default=str, ensure_ascii=False).encode())
    return h.hexdigest()


def training_fingerprint(
    cfg: TrainConfig, pairs_by_kind: dict[str, Any], variant: str, seed: int, matched: dict | None = None
) -> str:
    """The fingerprint run_training computes for these arguments (the pairs mixed as it mixes them)."""
    pairs, _ = mix_pairs(pairs_by_kind, cfg.variants[variant], cfg.music_ratio, seed)
    return fingerprint(cfg, variant, pairs, seed, None if matched is None else matched["steps"])


def trainer_digest() -> dict:
    """What besides config and data decides a trained model: the trainer's code (music/rm's training modules,
    music/models/*.py) and the torch, transformers and peft versions. A checkpoint or finished seed from other
    code is not reused."""
    from importlib import metadata

    import music

    # Read only to tell whether a checkpoint may be reused; the trained model never depends on these bytes. The
    # modules training imports (music/rm/score.py, scoring only, is left out: it is not a dep of the train stage).
    root = Path(list(music.__path__)[0])
    h = hashlib.sha256()
    trainer = [root / "rm" / f"{name}.py" for name in ("__init__", "data", "frozen", "model", "schedule", "train")]
    for f in sorted([*trainer, *(root / "models").glob("*.py")]):
        h.update(f"{f.parent.name}/{f.name}\n".encode() + f.read_bytes())
    versions = {}
    for package in ("torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"code": h.hexdigest(), **versions}


def resume_folder(resume_dir: str | Path, variant: str, seed: int, fp: str) -> Path:
    """Where one run's checkpoint (and, with keep_finished, its finished model) lives."""
    return Path(resume_dir) / f"{variant}-seed{seed}-{fp[:16]}"


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _meta_matches(meta: dict | None, fp: str) -> bool:
    return meta is not None and meta.get("fingerprint") == fp and meta.get("trainer") == trainer_digest()


def _write_meta(path: Path, meta: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(math.ceil(total_steps * warmup_ratio))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


def plan_batches(
    encoded: list[EncodedPair], cfg: TrainConfig, seed: int = 0, steps: int | None = None
) -> tuple[list[list[int]], int]:
    """The whole run's micro-batches (indices into `encoded`), each of exactly batch_size pairs, and the
    number of optimizer steps: `steps` when given (matched across variants: music.rm.schedule), else
    train.max_steps, else train.epochs over these pairs. The data cycles (epoch after epoch) until then."""
    lengths = [p.length for p in encoded]
    if steps is None:
        steps = cfg.max_steps or steps_for(len(encoded), cfg.epochs, cfg.batch_size, cfg.grad_accum)
    micro: list[list[int]] = []
    epoch = 0
    while len(micro) < steps * cfg.grad_accum:
        batches = length_grouped_batches(lengths, cfg.batch_size, seed, epoch, group=cfg.length_grouping)
        micro += full_batches(batches, lengths, cfg.batch_size, seed, epoch)
        epoch += 1
    return micro[: steps * cfg.grad_accum], steps


@dataclass
class TrainOutcome:
    model: Any  # the training model (PEFT-wrapped when LoRA)
    tokenizer: Any
    metrics: dict  # deterministic: the same config and data give the same values
    curve: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)  # wall clock and resume history: never in a tracked output


# ---------------------------------------------------------------- resume state


def _rng_state() -> dict:
    """Every RNG state as tensors and plain types (what torch.load(weights_only=True) reads back)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    st = {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict) -> None:
    import torch

    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    blob = {
        **state,
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
    }
    with atomic_path(folder / CHECKPOINT) as tmp:
        torch.save(blob, tmp)
    _write_meta(folder / CHECKPOINT_META, {"fingerprint": state["fingerprint"], "trainer": trainer_digest()})


def load_checkpoint(folder: Path, model, optimizer, scheduler, fp: str) -> dict | None:
    """Restore a checkpoint written for this exact config and data by this trainer; None when there is none.

    checkpoint.json is read first: a checkpoint without one, or of another fingerprint or trainer, is never
    unpickled; a matching one is read with weights_only=True (tensors and plain types only)."""
    import torch

    path = folder / CHECKPOINT
    if not path.exists() or not _meta_matches(_read_meta(folder / CHECKPOINT_META), fp):
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint costs a restart, never a wrong model
        log.warning("ignoring the unreadable checkpoint %s (%s); training from the start", path, e)
        return None
    if blob.get("fingerprint") != fp:
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
    return blob


# ---------------------------------------------------------------- the loop


def run_training(
    cfg: TrainConfig,
    pairs_by_kind: dict[str, Any],
    variant: str = "baseline",
    resume_dir: str | Path | None = None,
    callback: StepCallback | None = None,
    device: str | None = None,
    progress: bool = True,
    seed: int = 0,
    matched: dict | None = None,
) -> TrainOutcome:
    """Train one variant with one seed; returns the in-memory model, its tokenizer, metrics and curve rows.

    `matched` (music.rm.schedule.matched_steps over every variant) fixes the step count shared by all arms;
    without it the steps come from this variant's own pairs (train.max_steps, else train.epochs)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    if variant not in cfg.variants:
        raise ValueError(f"unknown variant {variant!r}; train.variants has {sorted(cfg.variants)}")
    pairs, n_per_kind = mix_pairs(pairs_by_kind, cfg.variants[variant], cfg.music_ratio, seed)
    fp = fingerprint(cfg, variant, pairs, seed, None if matched is None else matched["steps"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    model, tok, info = load_reward_model(cfg, device=device, seed=seed)
    dev = next(model.parameters()).device
    frozen = frozen_bottom_for_training(cfg, model, info)  # None: every layer runs (train.reuse_frozen_layers)
    encoded, trunc = encode_pairs(tok, pairs, cfg.max_length, source=f"pairs for variant {variant!r}")
    micro, total_steps = plan_batches(encoded, cfg, seed, None if matched is None else matched["steps"])

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg.warmup_ratio))

    folder = resume_folder(resume_dir, variant, seed, fp) if resume_dir else None
    state = {"step": 0, "curve": [], "real_tokens": 0, "padded_tokens": 0, "seconds": 0.0, "resumed_from": None}
    blob = load_checkpoint(folder, model, optimizer, scheduler, fp) if folder else None
    if blob:
        state = {k: blob[k] for k in state}
        state["resumed_from"] = blob["step"]

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train RM ({variant})", disable=not progress)
    for step in range(state["step"], total_steps):
        t0 = time.perf_counter()
        losses, accs = [], []
        for b in micro[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]:
            batch = [encoded[i] for i in b]
            ids, mask = collate_pairs(batch, tok.pad_token_id)
            if frozen:
                scores = frozen.scores(
                    [p.chosen for p in batch] + [p.rejected for p in batch], ids.to(dev), mask.to(dev)
                )
            else:
                scores = reward_scores(model, ids.to(dev), mask.to(dev))
            loss, acc = bt_loss(scores[: len(batch)], scores[len(batch) :], cfg.margin, cfg.center_coef)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            accs.append(acc.item())
            state["real_tokens"] += int(mask.sum())
            state["padded_tokens"] += mask.numel()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["seconds"] += time.perf_counter() - t0
        row = {"step": step + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs))}
        state["curve"].append(row)
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
        if folder and cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total_steps:
            save_checkpoint(folder, model, optimizer, scheduler, {**state, "fingerprint": fp})
        if callback:
            callback(state["step"], row)
    bar.close()
    model.eval()

    curve = state["curve"]
    window = curve[-max(1, math.ceil(len(curve) / 10)) :]
    metrics = {
        "variant": variant,
        "seed": seed,
        "final_loss": float(np.mean([r["loss"] for r in window])),
        "final_accuracy": float(np.mean([r["accuracy"] for r in window])),
        "last_step_loss": curve[-1]["loss"],
        "steps": total_steps,
        "pairs": len(pairs),
        "pairs_per_step": cfg.batch_size * cfg.grad_accum,  # every micro-batch is full (music.rm.schedule)
        "epochs_over_data": round(total_steps * cfg.batch_size * cfg.grad_accum / len(pairs), 2),
        "matched_arms": matched,  # the shared step count and its rule (None: this variant's own epochs)
        "pairs_per_kind": n_per_kind,
        "padding_share": round(1 - state["real_tokens"] / state["padded_tokens"], 4) if state["padded_tokens"] else 0.0,
        "truncation": trunc,
        "backend": info,
        "config": {**asdict(cfg), "seed": seed},
        "fingerprint": fp,
    }
    timing = {
        "variant": variant,
        "seed": seed,
        "train_seconds": round(state["seconds"], 2),
        "seconds_per_step": round(state["seconds"] / total_steps, 3),  # resumed runs carry earlier time
        "tokens_per_s": round(state["real_tokens"] / state["seconds"], 1) if state["seconds"] else None,
        "resumed_from_step": state["resumed_from"],
        "frozen_layers_reused": frozen.stats() if frozen else None,
    }
    return TrainOutcome(model, tok, metrics, curve, timing)


def write_curve(path: Path, curve: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "accuracy"])
        w.writeheader()
        for r in curve:
            w.writerow({"step": r["step"], "loss": f"{r['loss']:.6f}", "accuracy": f"{r['accuracy']:.4f}"})


def save_reward_model(outcome: TrainOutcome, out_dir: str | Path):
    """Write the reward model (base + unmerged float32 LoRA adapter and head: music.rm.model.save_model_folder)
    + tokenizer + train_metrics.json + curve.csv, atomically. Returns the (unchanged) in-memory model.
    """
    model = outcome.model
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_model_folder(model, outcome.tokenizer, tmp, base_name=outcome.metrics["config"]["backbone"])
        write_curve(tmp / "curve.csv", outcome.curve)
        (tmp / "train_metrics.json").write_text(
            json.dumps(outcome.metrics, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
    return model


def train_reward_model(
    cfg: TrainConfig,
    pairs_by_kind: dict[str, Any],
    out_dir: str | Path,
    resume_dir: str | Path | None = None,
    variant: str = "baseline",
    callback: StepCallback | None = None,
    device: str | None = None,
    progress: bool = True,
    seed: int = 0,
    matched: dict | None = None,
    keep_finished: bool = False,
) -> dict:
    """Train a variant with one seed, save the model to out_dir, drop its resume checkpoint.

    Returns the metrics saved in train_metrics.json plus, under "timing", the wall-clock numbers that
    are kept out of the (DVC-tracked) model folder so a rerun writes identical bytes.

    With `resume_dir`, a finished copy of this very run (same fingerprint and trainer, kept by an earlier call
    with `keep_finished`) is restored into out_dir instead of training (timing["restored"] is True). With
    `keep_finished`, the saved model is kept in the run's resume folder (hard links where the file system allows,
    else a copy) for such a rerun, until drop_resume_folders removes it.
    """
    if resume_dir:
        restored = restore_finished(cfg, pairs_by_kind, out_dir, resume_dir, variant, seed, matched)
        if restored is not None:
            return restored
    outcome = run_training(cfg, pairs_by_kind, variant, resume_dir, callback, device, progress, seed, matched)
    save_reward_model(outcome, out_dir)
    if resume_dir:
        folder = resume_folder(resume_dir, variant, seed, outcome.metrics["fingerprint"])
        if keep_finished:
            _keep_finished(folder, out_dir, outcome.metrics["fingerprint"], outcome.timing)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return {**outcome.metrics, "timing": outcome.timing}


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _keep_finished(folder: Path, out_dir: str | Path, fp: str, timing: dict) -> None:
    """Keep a finished seed's saved model beside its (now useless, removed) checkpoint; finished.json last."""
    (folder / FINISHED_META).unlink(missing_ok=True)
    with atomic_path(folder / FINISHED) as tmp:
        shutil.copytree(out_dir, tmp, copy_function=_link_or_copy)
    _write_meta(folder / FINISHED_META, {"fingerprint": fp, "trainer": trainer_digest(), "timing": timing})
    (folder / CHECKPOINT_META).unlink(missing_ok=True)
    (folder / CHECKPOINT).unlink(missing_ok=True)


def restore_finished(
    cfg: TrainConfig,
    pairs_by_kind: dict[str, Any],
    out_dir: str | Path,
    resume_dir: str | Path,
    variant: str = "baseline",
    seed: int = 0,
    matched: dict | None = None,
) -> dict | None:
    """Copy a kept finished run of these arguments into out_dir and return what train_reward_model returned for
    it (metrics from its train_metrics.json, its timing with "restored": True); None when there is none."""
    if variant not in cfg.variants:
        return None  # run_training says what is wrong
    fp = training_fingerprint(cfg, pairs_by_kind, variant, seed, matched)
    folder = resume_folder(resume_dir, variant, seed, fp)
    meta = _read_meta(folder / FINISHED_META)
    if not _meta_matches(meta, fp) or not (folder / FINISHED / "train_metrics.json").is_file():
        return None
    with atomic_path(out_dir) as tmp:
        shutil.copytree(folder / FINISHED, tmp)
    metrics = json.loads((Path(out_dir) / "train_metrics.json").read_text(encoding="utf-8"))
    log.info("restored %s seed %s from %s (finished before an interruption)", variant, seed, folder)
    return {**metrics, "timing": {**meta.get("timing", {}), "restored": True}}


def drop_resume_folders(resume_dir: str | Path, variant: str) -> int:
    """Remove every resume folder of a variant (checkpoints and kept finished seeds, of any fingerprint): the
    train stage calls it once all its seeds are saved. Returns how many were removed."""
    pattern = re.compile(rf"{re.escape(variant)}-seed\d+-[0-9a-f]{{16}}")
    root = Path(resume_dir)
    gone = 0
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and pattern.fullmatch(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            gone += 1
    return gone


def free_accelerator_memory() -> None:
    """Between training runs: collect the last model's reference cycles (Unsloth's patched models hold some,
    so dropping the last name does not free them) and return PyTorch's cached GPU blocks to the driver.
    (torch.cuda.empty_cache is a no-op when CUDA was never initialised.)"""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def matched_arms(cfg: TrainConfig, pairs_by_kind: dict[str, Any]) -> dict:
    """The step count every variant of train.variants trains for (music.rm.schedule.matched_steps), from
    each variant's number of pairs after mixing (the count does not depend on the seed)."""
    counts = {v: len(mix_pairs(pairs_by_kind, kinds, cfg.music_ratio, 0)[0]) for v, kinds in cfg.variants.items()}
    return matched_steps(counts, cfg)
