"""The planner: every profile plans offline, checks name their key, memory arithmetic matches real models."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

from music.config import Params, from_dict, load_params
from music.models.shapes import COMMITTED_CONFIGS, CONFIG_DIR, backbone_shape
from music.pipeline.plan import Assumptions, main, make_plan, parse_assumptions

PROFILES = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]
PAPER = REPO / "profiles" / "paper.yaml"


def raw(path):
    return yaml.safe_load(path.read_text())


def plan_of(data: dict, **assume):
    return make_plan(from_dict(Params, data, "test"), Assumptions(**assume))


def error_keys(plan) -> list[str]:
    return [e["key"] for e in plan["errors"]]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_plans_without_errors(path, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--params", str(path), "--out", str(out)]) == 0, capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["ok"] and plan["total_hours"] is not None
    gen = {g["role"] for s in ("simulate", "contrast", "best_of_n") for g in plan["stages"][s].get("generation", [])}
    assert {"simulate.user", "simulate.assistant", "evaluate.policy", "evaluate.judge"} <= gen
    assert all(v["steps"] for v in plan["stages"]["train"]["variants"].values())
    printed = capsys.readouterr().out
    assert "Training memory per GPU" in printed and "Hours by stage" in printed


def test_paper_profile_fits_one_80gb_gpu_only_with_checkpointing():
    plan = make_plan(load_params(PAPER))
    train = plan["stages"]["train"]
    mem = train["memory"]
    assert train["device"] == "gpu" and train["dtype"] == "bfloat16"
    assert mem["gradient_checkpointing"] is True  # auto: on for a 9B backbone
    assert mem["total_gb"] <= 80 < mem["gb"]["total_no_checkpointing"]
    assert 18 < mem["gb"]["weights"] < 19  # 9.24B parameters in bf16
    assert plan["stages"]["best_of_n"]["memory"]["models_resident"] == 1
    assert plan["stages"]["best_of_n"]["available"] >= plan["stages"]["best_of_n"]["prompts"]


def test_paper_profile_trains_lora_at_a_lora_rate_and_prints_it(capsys, tmp_path):
    plan = make_plan(load_params(PAPER))
    train = plan["stages"]["train"]
    assert train["lora"] is True and train["learning_rate"] >= 1e-5
    assert not [w for w in plan["warnings"] if w["key"] == "train.learning_rate"]
    assert main(["--params", str(PAPER), "--out", str(tmp_path / "plan.json")]) == 0
    assert f"LoRA learning rate {train['learning_rate']:g}" in capsys.readouterr().out


def test_lora_at_a_full_fine_tuning_rate_warns():
    data = copy.deepcopy(raw(PAPER))
    data["train"]["learning_rate"] = 2e-6  # the paper's rate, meant for full fine-tuning
    plan = plan_of(data)
    assert [w for w in plan["warnings"] if w["key"] == "train.learning_rate" and "LoRA" in w["message"]]
    data["train"]["lora"] = False  # full fine-tuning: no LoRA warning (bf16 resolution has its own)
    assert not [w for w in plan_of(data)["warnings"] if w["key"] == "train.learning_rate"]


def test_the_old_paper_best_of_n_setting_fails_on_its_key():
    data = raw(PAPER)
    data["evaluate"] = {k: v for k, v in data["evaluate"].items() if k not in ("bon_source", "bon_turns")}
    data["evaluate"]["bon_prompts"] = 1000  # MT-Bench, the old only source, has 80 questions
    plan = plan_of(data)
    assert error_keys(plan) == ["evaluate.bon_prompts"]
    assert "80" in plan["errors"][0]["message"]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["contrast"].update(divergence="fixed", divergence_turn=9), "contrast.divergence_turn"),
        (
            lambda d: d["contrast"].update(divergence="random", min_turns_after_divergence=5),
            "contrast.min_turns_after_divergence",
        ),
        (lambda d: d["train"].update(max_length=9000), "train.max_length"),
        (lambda d: d["evaluate"].update(max_length=9000), "evaluate.max_length"),
        (lambda d: d["train"].update(gradient_checkpointing=False), "train.batch_size"),
        (lambda d: d["evaluate"].update(bon_source="file:/no/such/prompts.jsonl"), "evaluate.bon_source"),
        (lambda d: d["seed"].update(n_train=90_000), "seed.n_train"),
    ],
)
def test_cross_stage_errors_name_the_key(edit, key):
    data = copy.deepcopy(raw(PAPER))
    edit(data)
    plan = plan_of(data)
    assert key in error_keys(plan), plan["errors"]


def test_bad_values_are_config_errors_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  bon_source: nonsense\n")
    assert main(["--params", str(bad), "--out", str(tmp_path / "p.json")]) == 1
    assert "ERROR [evaluate.bon_source]" in capsys.readouterr().out


def test_assumptions_are_overridable():
    A = parse_assumptions(["gpu_memory_gb=40", "server_decode_tok_s=4000", "device=gpu"])
    assert (A.gpu_memory_gb, A.server_decode_tok_s, A.device) == (40.0, 4000.0, "gpu")
    plan = make_plan(load_params(PAPER), A)
    assert "train.batch_size" in error_keys(plan)  # ~52 GB does not fit 40 GB
    slow = make_plan(load_params(PAPER), parse_assumptions(["server_decode_tok_s=1000"]))
    fast = make_plan(load_params(PAPER), parse_assumptions(["server_decode_tok_s=4000"]))
    assert slow["hours"]["simulate"] > fast["hours"]["simulate"]
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        parse_assumptions(["no_such_thing=1"])


def test_plan_loads_no_model_and_no_network_library(tmp_path):
    code = (
        "import sys; from music.pipeline.plan import main; "
        "rc = main(['--params', 'profiles/paper.yaml', '--out', sys.argv[1]]);"
        "heavy = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers', 'datasets', 'huggingface_hub'));"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p.json")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY []" in done.stdout


@pytest.mark.parametrize("model", sorted(set(COMMITTED_CONFIGS)))
def test_shapes_match_transformers_models_on_the_meta_device(model):
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    shape = backbone_shape(model)
    data = json.loads((CONFIG_DIR / COMMITTED_CONFIGS[model]).read_text())
    cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    cfg.num_labels = 1
    with torch.device("meta"):
        rm = AutoModelForSequenceClassification.from_config(cfg)
    assert sum(p.numel() for p in rm.parameters()) == shape.reward_params()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(rm, LoraConfig(task_type="SEQ_CLS", r=8, target_modules=targets, modules_to_save=["score"]))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert trainable == shape.lora_params(8) + shape.hidden_size  # adapters + the score head


def test_unknown_backbone_is_an_error_naming_train_backbone():
    data = raw(REPO / "profiles" / "tiny.yaml")
    data["train"]["backbone"] = "nobody/unknown-model"
    assert "train.backbone" in error_keys(plan_of(data))


def test_paper_profile_reports_its_early_turn_items_and_refuses_none(tmp_path):
    data = raw(PAPER)
    assert data["heldout"]["quality_mtbench"] is False  # the "weak" twin would be the strong served model
    conv = {"role": "user", "content": "q"}
    rows = [
        {
            "conversation_id": f"c{i}",
            "messages": [
                conv,
                {"role": "assistant", "content": "a" * (10 + i)},
                conv,
                {"role": "assistant", "content": "b" * (10 + i)},
                conv,
                {"role": "assistant", "content": "c"},
            ],
        }
        for i in range(5)
    ]
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data["heldout"]["swap_source"] = f"file:{path}"
    early = plan_of(data)["stages"]["evaluate"]["early_turn_items"]
    assert early == {**early, "total": 5 * 2, "quality": 0, "swap": 5 * 2}  # 3 assistant turns: distances 2 and 3
    assert any("counted in" in note for note in early["assumes"])
    data["heldout"]["swap_source"] = "seeds"  # Skywork from the hub: mostly one turn, assumed none
    plan = plan_of(data)
    assert "heldout.swap_source" in error_keys(plan) and plan["stages"]["evaluate"]["early_turn_items"]["total"] == 0
    assert any("seed_multi_turn_share" in note for note in plan["stages"]["evaluate"]["early_turn_items"]["assumes"])
    assert "heldout.swap_source" not in error_keys(plan_of(data, seed_multi_turn_share=0.05))


def test_the_planner_counts_what_the_profile_will_load(tmp_path):
    """A local RewardBench file's rows (not the hub's 2,985) and a local Best-of-N source's prompts."""
    rb = tmp_path / "rewardbench.jsonl"
    rb.write_text(
        "".join(
            json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r", "subset": "alpacaeval-easy"}) + "\n"
            for i in range(46)
        )
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": i, "turns": [f"question {i}?"]}) + "\n" for i in range(7)))
    data = raw(REPO / "params.yaml")
    data["evaluate"].update(rewardbench=True, rewardbench_path=str(rb), bon_source=f"file:{prompts}", bon_prompts=5)
    plan = plan_of(data)
    ev = plan["stages"]["evaluate"]
    assert ev["rewardbench"] == {"rows": 46, "from": f"{rb} (rows read)"}
    assert ev["conversations_scored_per_model"]["rewardbench"] == 2 * 46
    assert plan["stages"]["best_of_n"]["available"] == 7
    data["evaluate"].update(rewardbench_path=None)  # the hub's filtered split
    assert plan_of(data)["stages"]["evaluate"]["conversations_scored_per_model"]["rewardbench"] == 2 * 2985
    data["evaluate"].update(rewardbench_path=str(tmp_path / "absent.jsonl"))
    assert "evaluate.rewardbench_path" in error_keys(plan_of(data))
    data["evaluate"].update(rewardbench_path=None, bon_prompts=8)
    assert "evaluate.bon_prompts" in error_keys(plan_of(data))


def test_the_planner_warns_about_an_unset_key_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    warned = [w["key"] for w in make_plan(load_params(PAPER))["warnings"]]
    assert "simulate.user.api_key_env" in warned and "evaluate.judge.api_key_env" in warned
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert not [w for w in make_plan(load_params(PAPER))["warnings"] if w["key"].endswith("api_key_env")]


def test_reused_bottom_layers_are_counted_once_not_per_model():
    P = load_params(REPO / "params.yaml")
    on = make_plan(P)
    off_data = yaml.safe_load((REPO / "params.yaml").read_text())
    off_data["train"]["reuse_frozen_layers"] = False
    off = make_plan(from_dict(Params, off_data, "test"))
    ev_on, ev_off = on["stages"]["evaluate"], off["stages"]["evaluate"]
    L, k, models = P.train.num_layers, P.train.lora_last_layers, ev_on["models"]
    assert ev_on["frozen_share"] == round((L - k) / L, 3) and ev_off["frozen_share"] == 0.0
    from music.models.shapes import backbone_shape
    from music.pipeline.plan import top_layer_work

    top = top_layer_work(backbone_shape(P.train.backbone), L, L - k)
    assert k == 1 and 0 < top < 0.1  # one Llama layer above the bottom: scored at the last token (k/v per token)
    assert top_layer_work(backbone_shape(P.train.backbone), L, L - 2) == 2.0  # two layers: both in full
    expected = (models * top / L + (L - k) / L) / models  # the top layer's work per model, the bottom once
    assert ev_on["compute_s"] / ev_off["compute_s"] == pytest.approx(expected, rel=1e-6)
    assert on["hours"]["train"] < off["hours"]["train"]


def test_a_real_first_user_message_costs_no_user_generation_and_real_divergence_is_turn_1():
    data = raw(REPO / "params.yaml")
    data["simulate"]["real_next_user"] = False
    data["contrast"]["divergence"] = "random"
    before = plan_of(copy.deepcopy(data))
    data["simulate"]["real_next_user"] = True
    data["contrast"]["divergence"] = "real"
    after = plan_of(data)

    def requests(plan, stage, role):
        return next(g["requests"] for g in plan["stages"][stage]["generation"] if g["role"] == role)

    n, K = before["stages"]["simulate"]["conversations"], data["simulate"]["turns"]
    assert requests(before, "simulate", "simulate.user") == n * K
    assert requests(after, "simulate", "simulate.user") == n * (K - 1)  # turn 1 is the seed's real message
    assert requests(after, "simulate", "simulate.assistant") == n * K
    assert after["stages"]["contrast"]["divergence_turns"] == [1] and not after["errors"]
    c = data["contrast"]
    assert c["method"] == "retrieve"  # the modified request is a person's: the user model writes the later turns only
    assert requests(after, "contrast", "simulate.user") == n * (K - 1)
    data["contrast"].update(method="resample", request_similarity=None)  # rewrites at turn 1, then the K - 1 turns
    assert requests(plan_of(data), "contrast", "simulate.user") == n * c["candidates"] + n * (K - 1)


# ---------------------------------------------------------------- time: planned vs measured

FRESH_RUN = json.loads((REPO / "tests" / "fixtures" / "plan_fresh_run.json").read_text())


def _with(data: dict, overrides: dict) -> dict:
    """`data` with the fixture's overrides (keys the config no longer has are skipped)."""
    data = copy.deepcopy(data)
    for section, values in overrides.items():
        known = getattr(getattr(Params(), section), "__dataclass_fields__", {})
        data.setdefault(section, {}).update({k: v for k, v in values.items() if k in known})
    return data


def _measured(stages: dict) -> dict:
    return {k: {"wall_s": v, "parts": {k: v}, "units": {}} for k, v in stages.items()}


def test_default_profile_plans_the_fresh_clone_run_within_a_third():
    """The reference speeds and the cost model against a fresh clone's make run (2 cores, stage times in the
    fixture): every stage within [0.67, 1.5] of what it measured."""
    from music.pipeline.timings import compare

    data = _with(raw(REPO / "params.yaml"), FRESH_RUN["params"])
    rows = compare(plan_of(data), _measured(FRESH_RUN["measured_s"]))
    assert {r["stage"] for r in rows} >= {"heldout", "simulate", "contrast", "train", "evaluate", "best_of_n"}
    outside = [(r["stage"], round(r["ratio"], 2)) for r in rows if not 0.67 <= r["ratio"] <= 1.5]
    assert not outside, rows


def test_tiny_profile_plans_its_recorded_timings_within_a_generous_bound():
    from music.pipeline.timings import compare

    rows = compare(plan_of(raw(REPO / "profiles" / "tiny.yaml")), _measured(FRESH_RUN["tiny_measured_s"]))
    assert len(rows) == len(FRESH_RUN["tiny_measured_s"]) + 1  # every stage, and the total
    assert all(0.25 <= r["ratio"] <= 4 for r in rows), rows


def test_every_stage_has_an_estimate():
    plan = make_plan(load_params(REPO / "params.yaml"))
    assert list(plan["hours"]) == ["seed", "heldout", "simulate", "contrast", "train", "evaluate", "best_of_n", "plots"]
    assert all(h is not None and h > 0 for h in plan["hours"].values())


def test_the_cost_model_counts_batches_and_the_games_played():
    P = load_params(REPO / "params.yaml")
    plan = make_plan(P)
    sim = {g["role"]: g for g in plan["stages"]["simulate"]["generation"]}
    # real first request: the assistant answers turns 1..K, the user writes turns 2..K, in batches per split
    n_train, n_eval = P.seed.n_train, min(P.simulate.max_eval_conversations, P.seed.n_eval)
    batches = sum(-(-n // P.simulate.assistant.batch_size) for n in (n_train, n_eval))
    assert sim["simulate.assistant"]["decode_steps"] == P.simulate.turns * batches * 48
    assert sim["simulate.user"]["decode_steps"] == (P.simulate.turns - 1) * batches * 32
    # prefix reuse: far fewer tokens encoded than the prompts hold
    assert sim["simulate.assistant"]["encoded_tokens_typical"] < 0.5 * sim["simulate.assistant"]["prompt_tokens"]
    played = plan["stages"]["best_of_n"]["played"]
    games = len(P.train.seeds) * P.evaluate.bon_prompts * len(P.evaluate.bon_ns)
    assert 0 < played["judged_games"] < games


def test_compare_reads_recorded_timings_and_sums_variants(tmp_path, capsys):
    from music.pipeline import timings

    data = raw(REPO / "profiles" / "tiny.yaml")
    data["paths"] = {**data["paths"], "reports": str(tmp_path / "reports"), "seeds": str(tmp_path / "seeds")}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "stats.json").write_text(json.dumps({"train_seeds": 4, "eval_seeds": 2}))
    out = tmp_path / "plan.json"
    assert main(["--params", str(params_file), "--out", str(out), "--reference"]) == 0
    assert timings.record("seed", None, 3.0, params_file).name == "seed.json"
    for variant, wall in (("baseline", 20.0), ("music", 30.0)):
        timings.record("train", variant, wall, params_file)
    recorded = timings.measured(tmp_path / "reports")
    assert recorded["train"]["wall_s"] == 50.0 and set(recorded["train"]["parts"]) == {"train@baseline", "train@music"}
    assert recorded["seed"]["units"] == {"train_seeds": 4, "eval_seeds": 2}
    capsys.readouterr()
    assert main(["--params", str(params_file), "--out", str(out), "--compare"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(out.read_text())
    train_ratio = plan["hours"]["train"] * 3600 / 50.0
    assert f"{train_ratio:.2f}x" in printed and "seed" in printed and "total" in printed
    assert "simulate" not in printed  # not measured: no row


def test_a_calibration_replaces_the_reference_speeds_and_assume_still_wins(tmp_path, monkeypatch):
    from music.pipeline import calibrate
    from music.pipeline.plan import apply_calibration

    ident = calibrate.machine_identity()
    fake = {
        "identity": ident,
        "key": calibrate.identity_key(ident),
        "prefill_tok_s": 900.0,
        "decode_step_s": {"1": 0.025, "8": 0.0625},
        "layer_forward_tok_s": 48000.0,
        "layer_train_tok_s": 22000.0,
    }
    path = calibrate.cache_file(tmp_path, ident)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fake))
    assert calibrate.load_cached(tmp_path)["key"] == fake["key"]
    P = load_params(REPO / "params.yaml")
    ref = make_plan(P, Assumptions())
    A = parse_assumptions(["cpu_layer_train_tok_s=11000"])
    info = apply_calibration(A, calibrate.load_cached(tmp_path), {"cpu_layer_train_tok_s"})
    assert info["key"] == fake["key"] and A.cpu_layer_train_tok_s == 11000 and A.cpu_prefill_tok_s == 900
    fast = make_plan(P, A)
    for stage in ("simulate", "contrast"):  # twice as fast, less the fixed per-stage overhead
        assert 0.45 < fast["hours"][stage] / ref["hours"][stage] < 0.6
    # another machine (or library version) has another key: its file is not read
    monkeypatch.setattr(calibrate, "_cpu_model", lambda: "another cpu")
    assert calibrate.load_cached(tmp_path) is None
