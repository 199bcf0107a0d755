"""Faults in configuration and paths fail at load, naming the key, and nothing is destroyed: output paths that
would replace the repository, its raw data or each other; atomic_path on an empty name or a folder above the
working directory; wrong-format labelled sets; config values of the wrong type or range; YAML values that are
not plain data. No models are loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from music.config import ContrastConfig, Params, SeedConfig, from_dict, load_params, read_params_file
from music.errors import DataError
from music.evaluate.pairwise import local_pairs
from music.files import atomic_path, write_jsonl
from music.sources import load_hh, load_ultrafeedback
from music.sources.prompts import load_prompts
from music.sources.records import MAX_MALFORMED_SHARE, iter_records


def write_params(folder: Path, params: dict, name: str = "params.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- 2. output paths that cannot destroy anything
@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("seeds", "", "non-empty"),
        ("seeds", "   ", "non-empty"),
        ("seeds", ".", "folder above it"),
        ("seeds", "outputs/..", "folder above it"),
        ("seeds", "data", "paths.data"),
        ("seeds", "data/seeds", "paths.data"),
        ("seeds", ".git", r"\.git/"),
        ("seeds", ".venv", r"\.venv/"),
        ("seeds", "music", "music/"),
        ("seeds", "/", "folder above it"),
        ("seeds", str(REPO), "folder above it"),
        ("seeds", str(REPO.parent), "folder above it"),
        ("seeds", str(Path.home()), "folder above it"),
        ("seeds", str(REPO / ".git"), r"\.git/"),
        ("seeds", "../x", "climbs out"),
        ("seeds", "outputs/../../x", "climbs out"),
        ("evaluation", "outputs/models/x", "paths.models"),
        ("evaluation", "outputs/models", "paths.models"),
        ("models", "outputs", "paths.seeds"),  # holds every other output: named, not the untouched default
        ("cache", "outputs/seeds/cache", "paths.seeds"),
        ("reports", "outputs/plots", "paths.plots"),
        ("data", "outputs", "paths.data"),  # every output would lie inside the raw inputs
    ],
)
def test_output_paths_that_would_destroy_something_fail_at_load_naming_the_key(
    tmp_path, monkeypatch, key, value, problem
):
    monkeypatch.chdir(REPO)  # relative paths are read from the working directory: the repository
    path = write_params(tmp_path, {"paths": {key: value}})
    with pytest.raises(DataError, match=problem) as exc:
        load_params(path)
    named = "seeds" if key == "data" else key
    assert str(exc.value).startswith(f"{path}.paths, record -, field '{named}'")


def test_the_default_paths_and_scratch_folders_outside_the_repository_load(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert load_params(REPO / "params.yaml").paths.seeds == "outputs/seeds"
    scratch = {name: str(tmp_path / "run" / name) for name in ("seeds", "models", "cache", "reports")}
    params = load_params(write_params(tmp_path, {"paths": {**scratch, "data": str(REPO / "data")}}))
    assert params.paths.models == scratch["models"]


@pytest.fixture
def scratch_repo(tmp_path, monkeypatch):
    """A folder that looks like a checkout (files, .git, data), the working directory for the test."""
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.jsonl").write_text("{}\n")
    (tmp_path / "params.yaml").write_text("seed: {}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("target", ["", ".", "..", "/", "data/..", "SCRATCH", "PARENT"])
def test_atomic_path_refuses_a_target_that_holds_the_working_directory(scratch_repo, target):
    before = _tree(scratch_repo)
    target = {"SCRATCH": str(scratch_repo), "PARENT": str(scratch_repo.parent)}.get(target, target)
    entered = False
    with pytest.raises(DataError, match="refusing"):
        with atomic_path(target) as tmp:
            entered = True
            Path(tmp).mkdir()
    assert not entered and _tree(scratch_repo) == before  # every file kept, no temporary left behind


def test_atomic_path_removes_only_its_own_temporary(scratch_repo):
    before = _tree(scratch_repo)
    with pytest.raises(RuntimeError):
        with atomic_path("out/result") as tmp:
            tmp.mkdir()
            (tmp / "half.json").write_text("{")
            raise RuntimeError("crash mid-write")
    assert _tree(scratch_repo) == {**before, "out": None}  # the folder beside it stays, empty
    with atomic_path("out/result") as tmp:
        tmp.write_text("done")
    assert (scratch_repo / "out" / "result").read_text() == "done"
    assert sorted(p.name for p in (scratch_repo / "out").iterdir()) == ["result"]
    assert {k: v for k, v in _tree(scratch_repo).items() if not k.startswith("out")} == before


# ---------------------------------------------------------------- 6. every labelled reader has the malformed share
def ultrafeedback_rows(n: int) -> list[dict]:
    """trl-lib/ultrafeedback_binarized rows: message lists, not HH transcripts."""
    return [
        {
            "prompt": f"Question {i}?",
            "chosen": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Good {i}."}],
            "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Bad {i}."}],
            "score_chosen": 8.0,
            "score_rejected": 3.0,
        }
        for i in range(n)
    ]


def hh_rows(n: int, bad: set[int] = frozenset()) -> list[dict]:
    row = lambda i: {  # noqa: E731
        "chosen": f"\n\nHuman: Question {i}?\n\nAssistant: {'' if i in bad else f'Good {i}.'}",
        "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: Bad {i}.",
    }
    return [row(i) for i in range(n)]


def test_a_wrong_format_local_set_fails_naming_its_file(tmp_path):
    path = tmp_path / "hh-looks-like-ultrafeedback.jsonl"
    write_jsonl(path, ultrafeedback_rows(60))
    with pytest.raises(DataError, match="60 of 60 records are malformed") as exc:
        local_pairs("hh", path, limit=60)
    assert str(exc.value).startswith(str(path)) and "local set 'hh'" in str(exc.value)
    pairs, skipped = local_pairs("ultrafeedback", path, limit=60)  # read as what it is: all of it
    assert len(pairs) == 60 and skipped == 0


def test_local_sets_skip_malformed_records_only_up_to_the_shared_limit(tmp_path):
    path = tmp_path / "hh.jsonl"
    write_jsonl(path, hh_rows(200, bad={86}))  # 1 of 200: under the limit, skipped and counted
    pairs, skipped = local_pairs("hh", path, limit=None)
    assert len(pairs) == 199 and skipped == 1
    write_jsonl(path, hh_rows(100, bad={10, 20}))  # 2 of 100: over 1%
    with pytest.raises(DataError, match=r"2 of 100 records are malformed, more than .*MAX_MALFORMED_SHARE=0\.01"):
        local_pairs("hh", path, limit=None)
    assert local_pairs("hh", path, limit=None, max_malformed_share=0.05)[1] == 2


def test_one_malformed_share_for_every_reader():
    assert SeedConfig().max_malformed_share == ContrastConfig().max_malformed_share == MAX_MALFORMED_SHARE


def test_a_prompt_source_that_yields_nothing_fails_naming_it(tmp_path):
    path = tmp_path / "hh.jsonl"
    write_jsonl(path, ultrafeedback_rows(5))
    with pytest.raises(DataError, match="yields no prompts") as exc:
        load_prompts(f"hh:{path}")
    assert str(path) in str(exc.value)


def test_the_trainer_benchmark_reads_real_hh_past_its_malformed_record(shared_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rm_trainer", REPO / "benchmarks" / "bench_rm_trainer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert len(bench.hh_pairs(32)) == 32  # line 87 (an empty turn) used to crash it


# ---------------------------------------------------------------- d_limit and limit: one meaning for every format
def test_limit_means_the_same_for_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ultrafeedback_rows(5)
    write_jsonl(tmp_path / "uf.jsonl", rows)
    (tmp_path / "uf.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "uf.parquet")
    for name in ("uf.jsonl", "uf.json", "uf.parquet"):
        assert len(load_ultrafeedback(tmp_path / name, limit=None)) == 5, name  # None: all
        assert len(load_ultrafeedback(tmp_path / name, limit=2)) == 2, name
        with pytest.raises(ValueError, match="limit must be an int >= 1"):
            list(iter_records(tmp_path / name, limit=0))  # 0 used to mean none for .jsonl, all for .parquet
    with pytest.raises(ValueError, match="limit must be"):
        load_hh(tmp_path / "uf.jsonl", limit=0)


# ---------------------------------------------------------------- 7. config checked for type and range
@pytest.mark.parametrize(
    "data, where, key",
    [
        ({"simulate": {"turns": 2.5}}, "simulate", "turns"),
        ({"simulate": {"turns": True}}, "simulate", "turns"),
        ({"simulate": {"turns": "2"}}, "simulate", "turns"),
        ({"simulate": {"user": {"base_urls": "http://host:8000/v1"}}}, "simulate.user", "base_urls"),
        ({"simulate": {"user": {"base_urls": [8000]}}}, "simulate.user", "base_urls"),
        ({"simulate": {"user": {"backoff_s": -1}}}, "simulate.user", "backoff_s"),
        ({"simulate": {"user": {"temperature": "hot"}}}, "simulate.user", "temperature"),
        ({"simulate": {"user": None}}, "simulate", "user"),
        ({"simulate": {"max_eval_conversations": 1.5}}, "simulate", "max_eval_conversations"),
        ({"simulate": {"seed": -1}}, "simulate", "seed"),
        ({"train": {"lora_r": 0}}, "train", "lora_r"),
        ({"train": {"lora_dropout": 1.5}}, "train", "lora_dropout"),
        ({"train": {"lora_dropout": -0.1}}, "train", "lora_dropout"),
        ({"train": {"lora_alpha": 0}}, "train", "lora_alpha"),
        ({"train": {"lora_last_layers": 0}}, "train", "lora_last_layers"),
        ({"train": {"learning_rate": "5e-4x"}}, "train", "learning_rate"),
        ({"train": {"epochs": float("nan")}}, "train", "epochs"),
        ({"train": {"weight_decay": -0.1}}, "train", "weight_decay"),
        ({"train": {"max_grad_norm": -1}}, "train", "max_grad_norm"),
        ({"train": {"seeds": "0"}}, "train", "seeds"),
        ({"train": {"seeds": [0, 1.5]}}, "train", "seeds"),
        ({"train": {"variants": {"music": "d"}}}, "train", "variants"),
        ({"train": {"lora": "yes"}}, "train", "lora"),
        ({"train": {"gradient_checkpointing": 1}}, "train", "gradient_checkpointing"),
        ({"evaluate": {"max_length": 0}}, "evaluate", "max_length"),
        ({"evaluate": {"local_sets": {"hh": None}}}, "evaluate", "local_sets"),
        ({"evaluate": {"bon_ns": [2, 4.5]}}, "evaluate", "bon_ns"),
        ({"evaluate": {"rewardbench": "false"}}, "evaluate", "rewardbench"),
        ({"contrast": {"d_limit": 0}}, "contrast", "d_limit"),
        ({"contrast": {"max_reply_chars": 0}}, "contrast", "max_reply_chars"),
        ({"contrast": {"max_echo_similarity": 1.5}}, "contrast", "max_echo_similarity"),
        ({"contrast": {"request_similarity": "0.2"}}, "contrast", "request_similarity"),
        ({"seed": {"require_next_turn": "yes"}}, "seed", "require_next_turn"),
        ({"seed": {"path": None}}, "seed", "path"),
        ({"seed": {"max_message_chars": 0}}, "seed", "max_message_chars"),
        ({"seed": {"max_malformed_share": 2}}, "seed", "max_malformed_share"),
        ({"heldout": {"swap_conversations": 2.0}}, "heldout", "swap_conversations"),
        ({"plots": {"formats": "png"}}, "plots", "formats"),
        ({"plots": {"dpi": 0}}, "plots", "dpi"),
        ({"seed": None}, "", "seed"),
    ],
    ids=lambda v: None if isinstance(v, dict) else str(v),
)
def test_bad_config_values_fail_naming_file_section_and_key(data, where, key):
    with pytest.raises(DataError) as exc:
        from_dict(Params, data, "params.yaml")
    prefix = f"params.yaml.{where}" if where else "params.yaml"
    assert str(exc.value).startswith(f"{prefix}, record -, field '{key}'"), str(exc.value)


def test_type_errors_say_what_was_expected_and_what_came():
    with pytest.raises(DataError) as exc:
        from_dict(Params, {"simulate": {"turns": 2.5}}, "params.yaml")
    assert str(exc.value) == "params.yaml.simulate, record -, field 'turns': expected int, got 2.5"
    with pytest.raises(DataError, match=r"expected list\[str\] \(a list\), got 'http://host:8000/v1'"):
        from_dict(Params, {"simulate": {"user": {"base_urls": "http://host:8000/v1"}}}, "params.yaml")


def test_well_typed_values_still_load():
    params = from_dict(
        Params,
        {
            "train": {"epochs": 2, "learning_rate": 1, "num_layers": None, "lora_last_layers": None},  # ints as floats
            "contrast": {"d_limit": None, "request_similarity": [0, 0.5]},
            "evaluate": {"max_length": None, "bon_turns": 3},
            "simulate": {"user": {"revision": None, "base_urls": ["http://a/v1", "http://b/v1"]}},
        },
        "params.yaml",
    )
    assert params.train.epochs == 2 and params.contrast.d_limit is None and params.simulate.user.base_urls[1]


# ---------------------------------------------------------------- 7. only plain JSON-like YAML values
@pytest.mark.parametrize(
    "text, key, what",
    [
        ("seed:\n  split: !!binary aGVsbG8=\n", "seed.split", r"binary data \(!!binary\)"),
        ("seed:\n  split: 2024-01-01\n", "seed.split", "a date or timestamp"),
        ("seed:\n  split: 2024-01-01 10:00:00\n", "seed.split", "a date or timestamp"),
        ("plots:\n  formats: !!set {png: null}\n", "plots.formats", "set"),
        ("evaluate:\n  local_sets: !!omap [{hh: a.jsonl}]\n", "evaluate.local_sets[0]", "tuple"),
        ("train:\n  epochs: .inf\n", "train.epochs", "finite"),
        ("train:\n  variants: {1: [d]}\n", "train.variants.1", "keys must be strings"),
    ],
)
def test_non_json_yaml_values_are_refused_naming_file_and_key(tmp_path, text, key, what):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    for read in (read_params_file, load_params):  # what papermill would inject, and the typed load
        with pytest.raises(DataError, match=what) as exc:
            read(path)
        assert str(exc.value).startswith(f"{path}, record -, field '{key}'"), str(exc.value)


def test_every_params_file_still_loads():
    for path in (REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))):
        assert isinstance(load_params(path), Params), path
