"""Faults that must not leak into results: a model changed in place (response-cache identity by content, the model's
own generation defaults kept out of generation) and a kill during training (finished seeds kept and restored, a
checkpoint unpickled only when its fingerprint matches, and then with weights_only=True).

Tiny models built here (a byte-level ChatML tokenizer and a 2-layer Llama saved to tmp_path; the train tests use
the conftest's tiny backbone): seconds each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg, toy_pairs, tree_bytes

from music.chat import ResponseCache
from music.config import ChatModelConfig, Params

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVS = [[{"role": "user", "content": q}] for q in ("hello there", "what is up?", "a b c")]


def save_tiny_lm(path: Path, seed: int = 0) -> None:
    """A 2-layer Llama over the tokenizer's 99 ids, its weights drawn from `seed` (same names, same sizes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)


def save_tiny_tokenizer(path: Path, template: str = CHATML) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + ["Ċ", *(chr(c) if c != 32 else "Ġ" for c in range(32, 127))])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=template,
    )
    tok.save_pretrained(path)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    path = tmp_path / "tiny"
    save_tiny_lm(path)
    save_tiny_tokenizer(path)
    return path


@pytest.fixture(autouse=True)
def fresh_registry():
    """Every load below reads the folder again (models are shared per process otherwise)."""
    from music.chat.transformers_backend import clear_registry

    clear_registry()
    yield
    clear_registry()


def chat(model, cache=None, **kw):
    from music.chat.transformers_backend import TransformersChat

    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("temperature", 0.0)
    return TransformersChat(ChatModelConfig(model=str(model), **kw), cache)


def identity(model, **kw) -> dict:
    from music.chat.transformers_backend import clear_registry

    clear_registry()  # a fresh load, as a new process would do
    return chat(model, **kw).identity()


# --- the response-cache identity -----------------------------------------------------------------------------


def test_identity_is_stable_across_loads_and_a_rerun_hits_the_cache(tiny_folder, tmp_path):
    from music.chat.transformers_backend import clear_registry

    cache = ResponseCache.in_dir(tmp_path / "cache")
    first = chat(tiny_folder, cache)
    replies = first.generate(CONVS, seed=3)
    assert first.units_generated == 1
    clear_registry()
    again = chat(tiny_folder, cache)
    assert again.identity() == first.identity()
    assert again.generate(CONVS, seed=3) == replies and again.units_generated == 0  # every reply from the cache
    ident = json.dumps(first.identity())
    assert str(tmp_path) not in ident and "tiny" not in ident  # content, not location


def test_a_copy_elsewhere_has_the_same_identity(tiny_folder, tmp_path):
    copy = tmp_path / "elsewhere" / "other-name"
    shutil.copytree(tiny_folder, copy)
    assert identity(copy) == identity(tiny_folder)


def test_weights_retrained_in_place_change_the_identity_and_miss_the_cache(tiny_folder, tmp_path):
    from music.chat.transformers_backend import clear_registry

    cache = ResponseCache.in_dir(tmp_path / "cache")
    before = chat(tiny_folder, cache)
    before.generate(CONVS, seed=0)
    names = sorted(p.name for p in tiny_folder.iterdir())
    save_tiny_lm(tiny_folder, seed=1)  # same file names and sizes, other weights
    assert sorted(p.name for p in tiny_folder.iterdir()) == names
    clear_registry()
    after = chat(tiny_folder, cache)
    assert after.identity() != before.identity()
    after.generate(CONVS, seed=0)
    assert after.units_generated == 1  # not served the old model's replies


def test_generation_config_chat_template_and_revision_change_the_identity(tiny_folder):
    from transformers import GenerationConfig

    base = identity(tiny_folder)
    assert identity(tiny_folder, revision="v2") != base != identity(tiny_folder, dtype="bfloat16")
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, repetition_penalty=1.05).save_pretrained(
        tiny_folder
    )
    with_gen = identity(tiny_folder)
    assert with_gen != base
    save_tiny_tokenizer(tiny_folder, template=CHATML.replace("<|im_start|>assistant\n", "<|im_start|>assistant:\n"))
    assert identity(tiny_folder) not in (base, with_gen)


def test_revision_reaches_from_pretrained(tiny_folder, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*a, _real=real, _cls=cls.__name__, **k):
            seen.append((_cls, k.get("revision")))
            return _real(*a, **k)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    chat(tiny_folder, revision="abc123")
    assert ("AutoModelForCausalLM", "abc123") in seen and ("AutoTokenizer", "abc123") in seen


def test_weight_file_fingerprint_samples_every_tensor_of_a_large_file(tmp_path):
    from safetensors.torch import save_file

    from music.models.embedded import file_fingerprint

    tensors = {f"layer{i:02d}.weight": torch.randn(64, 1024) for i in range(24)}  # 6 MiB: sampled, not read whole
    save_file(tensors, tmp_path / "a.safetensors")
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert file_fingerprint(tmp_path / "a.safetensors") == file_fingerprint(tmp_path / "b.safetensors")
    tensors["layer11.weight"] = tensors["layer11.weight"] + 1e-3  # one tensor in the middle retrained
    save_file(tensors, tmp_path / "b.safetensors")
    a, b = file_fingerprint(tmp_path / "a.safetensors"), file_fingerprint(tmp_path / "b.safetensors")
    assert a["size"] == b["size"] and a["sampled"] != b["sampled"]


# --- generation uses the configured sampling only --------------------------------------------------------------


def used_generation_configs(c) -> list:
    """Spy on the GenerationConfig generate() actually runs with (after it merged the model's defaults)."""
    real = c.lm._prepare_generation_config
    seen = []

    def spy(*a, **k):
        g, kw = real(*a, **k)
        seen.append(g)
        return g, kw

    c.lm._prepare_generation_config = spy
    return seen


@pytest.mark.parametrize("reuse", [True, False])
def test_a_setting_turned_off_stays_off_whatever_the_models_generation_config_says(tiny_folder, reuse):
    from transformers import GenerationConfig

    from music.models import load_causal_lm

    model_defaults = dict(repetition_penalty=1.05, top_k=20, min_p=0.1, no_repeat_ngram_size=3, temperature=0.3)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, **model_defaults).save_pretrained(
        tiny_folder
    )
    # transformers itself fills every field left unset from the model's file: 1.0 ("off") would not be off
    raw = load_causal_lm(str(tiny_folder))
    leaked, _ = raw._prepare_generation_config(GenerationConfig(max_new_tokens=2))
    assert leaked.repetition_penalty == 1.05 and leaked.top_k == 20 and leaked.do_sample is True

    greedy = chat(tiny_folder, reuse_kv=reuse, repetition_penalty=1.0, temperature=0.0)
    seen = used_generation_configs(greedy)
    greedy.generate(CONVS, seed=0)
    (g,) = seen
    assert g.repetition_penalty == 1.0 and g.do_sample is False and g.no_repeat_ngram_size == 0 and g.min_p is None
    assert g.eos_token_id == greedy.stop_ids == [2] and g.pad_token_id == 0  # the special tokens are kept

    sampled = chat(tiny_folder, reuse_kv=reuse, repetition_penalty=1.0, temperature=0.7, top_p=0.9)
    seen = used_generation_configs(sampled)
    sampled.generate(CONVS, seed=0)
    (g,) = seen
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.min_p) == (True, 0.7, 0.9, 0, None)
    assert g.repetition_penalty == 1.0 and g.no_repeat_ngram_size == 0
    on = chat(tiny_folder, reuse_kv=reuse, repetition_penalty=1.3)
    seen = used_generation_configs(on)
    on.generate(CONVS, seed=0)
    assert seen[0].repetition_penalty == 1.3  # a setting turned on is applied


# --- training survives a kill ------------------------------------------------------------------------------------


class Killed(RuntimeError):
    pass


def train_params(root: Path, backbone: str, seeds=(0, 1, 2)) -> Params:
    P = Params()
    P.train = tiny_cfg(backbone, max_steps=3, save_every=1, seeds=list(seeds), variants={"baseline": ["d"]})
    P.paths.models, P.paths.cache, P.paths.reports = str(root / "models"), str(root / "cache"), str(root / "reports")
    return P


@pytest.mark.slow  # trains seven tiny models (about 20 s on two busy cores)
def test_a_kill_in_seed_k_reruns_only_the_unfinished_seeds_with_identical_results(tiny_backbone, tmp_path, monkeypatch):
    import music.rm.train as rm_train
    import music.stages.train as train_stage

    monkeypatch.setattr(train_stage, "load_variant_pairs", lambda *a, **k: {"d": toy_pairs(8)})
    ref_params = train_params(tmp_path / "ref", tiny_backbone)
    reference = train_stage.run(ref_params, variant="baseline", progress=False)

    real_run_training = rm_train.run_training
    trained: list[int] = []

    def crash_in_seed_2(cfg, pairs, variant, resume_dir, callback, *rest):
        seed = rest[2]  # (device, progress, seed, matched)
        trained.append(seed)

        def kill_at_step_2(step, row):
            if seed == 2 and step == 2:
                raise Killed("killed during seed 2")

        return real_run_training(cfg, pairs, variant, resume_dir, kill_at_step_2, *rest)

    monkeypatch.setattr(rm_train, "run_training", crash_in_seed_2)
    P = train_params(tmp_path / "run", tiny_backbone)
    with pytest.raises(Killed):
        train_stage.run(P, variant="baseline", progress=False)
    assert trained == [0, 1, 2]
    shutil.rmtree(P.paths.models)  # DVC removes a stage's outputs before it runs the stage again

    trained.clear()
    monkeypatch.setattr(rm_train, "run_training", lambda *a: trained.append(a[7]) or real_run_training(*a))
    runs = train_stage.run(P, variant="baseline", progress=False)
    assert trained == [2]  # seeds 0 and 1 were restored, not trained again
    assert [r["timing"].get("restored", False) for r in runs] == [True, True, False]
    assert runs[2]["timing"]["resumed_from_step"] == 2  # the killed seed went on from its last checkpoint
    for seed in (0, 1):  # restored: the very bytes an uninterrupted run writes
        assert tree_bytes(Path(P.paths.models) / "baseline" / f"seed{seed}") == tree_bytes(
            Path(ref_params.paths.models) / "baseline" / f"seed{seed}"
        )
    strip = [{k: v for k, v in r.items() if k != "timing"} for r in reference]
    assert [{k: v for k, v in r.items() if k != "timing"} for r in runs] == strip
    from music.rm.score import RewardScorer

    convs = [p.chosen for p in toy_pairs(3)]
    for seed in (0, 1, 2):
        got = RewardScorer(Path(P.paths.models) / "baseline" / f"seed{seed}").score(convs)
        want = RewardScorer(Path(ref_params.paths.models) / "baseline" / f"seed{seed}").score(convs)
        assert got == pytest.approx(want, abs=1e-6)
    assert list((Path(P.paths.cache) / "rm_resume").iterdir()) == []  # kept only until every seed is saved


def _toy_training_state(tmp_path):
    from music.rm.train import lr_lambda, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10, 0.1))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    folder = tmp_path / "resume" / "baseline-seed0-0123456789abcdef"
    state = {"step": 1, "curve": [{"step": 1, "loss": 0.5, "accuracy": 1.0}], "real_tokens": 3, "padded_tokens": 4}
    state |= {"seconds": 0.1, "resumed_from": None, "fingerprint": "f" * 64}
    save_checkpoint(folder, model, opt, sched, state)
    return folder, model, opt, sched


def test_a_checkpoint_loads_with_weights_only_and_restores_every_rng(tmp_path, monkeypatch):
    import random

    import numpy as np

    from music.rm.train import load_checkpoint

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    folder, model, opt, sched = _toy_training_state(tmp_path)
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    random.seed(9)
    np.random.seed(9)
    blob = load_checkpoint(folder, model, opt, sched, "f" * 64)
    assert calls == [True] and blob["step"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect


def test_a_checkpoint_of_another_fingerprint_is_never_unpickled(tmp_path, monkeypatch):
    from music.rm.train import CHECKPOINT, CHECKPOINT_META, load_checkpoint

    folder, model, opt, sched = _toy_training_state(tmp_path)
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or pytest.fail("unpickled"))
    assert load_checkpoint(folder, model, opt, sched, "e" * 64) is None  # another config or data
    meta = json.loads((folder / CHECKPOINT_META).read_text())
    (folder / CHECKPOINT_META).write_text(json.dumps({**meta, "trainer": {"code": "other"}}))
    assert load_checkpoint(folder, model, opt, sched, "f" * 64) is None  # other trainer code
    (folder / CHECKPOINT_META).unlink()
    assert load_checkpoint(folder, model, opt, sched, "f" * 64) is None  # an old checkpoint without its note
    # a file that says it matches but holds something other than tensors and plain types is refused, not run
    (folder / CHECKPOINT_META).write_text(json.dumps(meta))
    monkeypatch.undo()

    class Payload:
        def __reduce__(self):
            return (pytest.fail, ("code in a checkpoint ran",))

    torch.save({"fingerprint": "f" * 64, "evil": Payload()}, folder / CHECKPOINT)
    assert load_checkpoint(folder, model, opt, sched, "f" * 64) is None
    assert not calls
