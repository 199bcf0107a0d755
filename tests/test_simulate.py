"""The simulator: role-swapped user view, clean-up, batched roll-outs, failures, byte-identical outputs,
and a crash-and-rerun through the real response cache that regenerates nothing already finished."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import USER_PROMPT, Crash, FakeChat, make_seeds, tree_bytes, write_seed_files

from music.chat import ChatReply, ResponseCache
from music.chat.rollout import SimPrompts, clean_user_text, trim_to_sentence, user_view
from music.config import SimulateConfig
from music.schema import validate_conversation
from music.stages.simulate import run as run_simulate
from music.stages.simulate import simulate_seeds

# --- rendering and clean-up ----------------------------------------------------------------------------------


def test_user_view_swaps_roles_and_drops_the_assistant_system_prompt():
    prompts = SimPrompts.load()
    conv = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    view = user_view(conv, prompts)
    assert [m["role"] for m in view] == ["system", "user", "assistant", "user"]
    assert view[0]["content"] == prompts.user.text and view[1]["content"] == prompts.opener.text
    assert view[2]["content"] == "Hi?" and view[3]["content"] == "Hello."  # the model replies to the real assistant
    validate_conversation(view, source="test", record=0)


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("User: How long?", "How long?"),
        ('"How long does it take?"', "How long does it take?"),
        ('**User:** "Can you add comments?"', "Can you add comments?"),
        ("  plain text  ", "plain text"),
        ("User:", ""),
    ],
)
def test_clean_user_text(raw, clean):
    assert clean_user_text(raw) == clean


def test_trim_to_sentence():
    assert trim_to_sentence("First one. Second one is cut") == "First one."
    assert trim_to_sentence("Is it? Yes! And then") == "Is it? Yes!"
    assert trim_to_sentence("no sentence end at all") is None
    assert trim_to_sentence("line one\nline two cut") == "line one"


# --- roll-outs ---------------------------------------------------------------------------------------------------


def test_simulation_is_batched_and_extends_every_conversation():
    seeds = make_seeds(5)
    user, assistant = FakeChat("fake:user"), FakeChat("fake:assistant")
    recs = simulate_seeds(seeds, user, assistant, SimulateConfig(turns=3, real_next_user=False), split="train")
    assert user.calls == 3 and assistant.calls == 3  # one call per role per turn, not per conversation
    for s, r in zip(seeds, recs):
        msgs = validate_conversation(r["messages"], source="test", record=r["seed_id"], must_end_with="assistant")
        assert msgs[: len(s.context)] == s.context
        assert len(msgs) == len(s.context) + 6 and r["failure"] is None
        assert [e["role"] for e in r["events"]] == ["user", "assistant"] * 3
        assert [e["turn"] for e in r["events"]] == [r["context_turns"] + t for t in (1, 1, 2, 2, 3, 3)]
        assert msgs[len(s.context)]["content"].startswith("Could you tell me more")
        assert r["models"] == {"user": "fake:user", "assistant": "fake:assistant"}
        assert {p["name"] for p in r["prompts"]} == {"user_simulator.txt", "user_opener.txt", "assistant_system.txt"}


def test_failed_user_turn_stops_that_conversation_only():
    def script(messages, seed):  # the user model returns an empty message for seed 1 on its first turn
        if (
            messages[0]["content"] == USER_PROMPT
            and any("Reply 1 " in m["content"] for m in messages)
            and sum(m["role"] == "assistant" for m in messages) == 2
        ):
            return ChatReply('User: ""', "stop")
        return None

    recs = simulate_seeds(
        make_seeds(3), FakeChat(script=script), FakeChat(), SimulateConfig(turns=2, real_next_user=False), split="train"
    )
    bad = recs[1]
    assert bad["failure"] == "empty_reply"
    assert bad["messages"] == make_seeds(3)[1].context and len(bad["events"]) == 1
    assert all(r["failure"] is None and len(r["events"]) == 4 for r in (recs[0], recs[2]))


def test_generation_error_and_truncation_are_recorded():
    def script(messages, seed):
        if messages[0]["content"] != USER_PROMPT:
            if "Question 0" in messages[1]["content"]:
                return ChatReply(None, "error", "server down")
            return ChatReply("A full sentence. And a cut-off", "length")
        return None

    recs = simulate_seeds(
        make_seeds(3)[:1] + make_seeds(3)[2:],
        FakeChat(),
        FakeChat(script=script),
        SimulateConfig(turns=1, real_next_user=False),
        split="train",
    )
    assert recs[0]["failure"] == "generation_error" and recs[0]["events"][-1]["error"] == "server down"
    ev = recs[1]["events"][-1]
    assert recs[1]["failure"] is None and ev["finish_reason"] == "length" and ev["trimmed"]
    assert recs[1]["messages"][-1]["content"] == "A full sentence."


# --- the stage: outputs, determinism, crash-and-rerun --------------------------------------------------------


def test_run_simulate_writes_loadable_byte_identical_datasets(tmp_path):
    from datasets import load_from_disk

    P = write_seed_files(tmp_path)
    run_simulate(P, backends=(FakeChat(), FakeChat()))
    out = Path(P.paths.conversations)
    first = {split: tree_bytes(out / split) for split in ("train", "eval")}
    ds = load_from_disk(str(out / "train"))
    assert len(ds) == 3 and ds[0]["seed_id"] == "train-s0" and ds[0]["messages"][-1]["role"] == "assistant"
    assert "state.json" in first["train"] and any(k.endswith(".arrow") for k in first["train"])
    run_simulate(P, backends=(FakeChat(), FakeChat()))
    assert {split: tree_bytes(out / split) for split in ("train", "eval")} == first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_killed_run_resumes_without_regenerating_and_matches_uninterrupted(tmp_path):
    P = write_seed_files(tmp_path / "a", n_train=6, n_eval=2)
    # Uninterrupted reference, its own cache.
    ref_user, ref_asst = (
        FakeChat("u", ResponseCache.in_dir(tmp_path / "ref_cache")),
        FakeChat("a", ResponseCache.in_dir(tmp_path / "ref_cache")),
    )
    run_simulate(P, backends=(ref_user, ref_asst))
    reference = tree_bytes(Path(P.paths.conversations))
    total = ref_user.units_generated + ref_asst.units_generated

    # Same work into a fresh output and cache; the user model dies in its second turn (after 6 + 3 units).
    Q = write_seed_files(tmp_path / "b", n_train=6, n_eval=2)
    cache = ResponseCache.in_dir(Q.paths.cache)
    user1, asst1 = FakeChat("u", cache, crash_after=9), FakeChat("a", cache)
    with pytest.raises(Crash):
        run_simulate(Q, backends=(user1, asst1))
    assert not Path(Q.paths.conversations, "train").exists()  # nothing half-written
    done_before = user1.units_generated + asst1.units_generated
    assert done_before == 6 + 6 + 3

    user2, asst2 = FakeChat("u", cache), FakeChat("a", cache)
    run_simulate(Q, backends=(user2, asst2))
    # Nothing finished before the crash ran again, and everything ran exactly once overall.
    assert done_before + user2.units_generated + asst2.units_generated == total
    both = user1.generated + asst1.generated + user2.generated + asst2.generated
    assert max(both.values()) == 1
    assert tree_bytes(Path(Q.paths.conversations)) == reference


@pytest.mark.slow
def test_same_seed_gives_byte_identical_outputs_on_the_embedded_model(tmp_path):
    from music.chat import make_chat

    P = write_seed_files(tmp_path, n_train=2, n_eval=1)
    P.simulate.turns = 1
    for cfg in (P.simulate.user, P.simulate.assistant):
        cfg.max_new_tokens = 8
    outs = []
    for run in range(2):  # no cache: both runs really generate
        P.paths.conversations = str(tmp_path / f"conv{run}")
        run_simulate(P, backends=(make_chat(P.simulate.user, None), make_chat(P.simulate.assistant, None)))
        outs.append(tree_bytes(Path(P.paths.conversations)))
    assert outs[0] == outs[1]
    from music.store import load_records

    recs = load_records(tmp_path / "conv0" / "train")
    assert len(recs) == 2 and all(r["models"]["user"].startswith("transformers:") for r in recs)
    assert all(len(r["events"]) >= 1 for r in recs)


def test_only_the_first_eval_seeds_are_simulated(tmp_path):
    from music.store import load_records

    P = write_seed_files(tmp_path, n_train=2, n_eval=3)
    P.simulate.turns = 1
    P.simulate.max_eval_conversations = 1
    summary = run_simulate(P, backends=(FakeChat("fake:user"), FakeChat("fake:assistant")))
    assert summary["train"]["conversations"] == 2 and summary["eval"]["conversations"] == 1
    assert [r["seed_id"] for r in load_records(Path(P.paths.conversations) / "eval")] == ["eval-s0"]


def test_a_cut_user_message_ends_at_its_last_whole_word_a_cut_reply_does_not():
    from music.chat.rollout import make_event, trim_to_word

    cut = ChatReply(
        "I meant that when someone presents their case where they claim that a service allows them to", "length"
    )
    user, failure = make_event(cut, branch="chosen", turn=2, role="user", trim=True, user_voice=True)
    assert (
        failure is None
        and user.trimmed
        and user.text == "I meant that when someone presents their case where they claim that a service allows them"
    )
    reply, _ = make_event(cut, branch="chosen", turn=2, role="assistant", trim=True)
    assert not reply.trimmed  # an assistant reply cut mid-sentence stays cut: the truncated filter counts it
    assert trim_to_word("too short here") is None


# --- the real next user message at turn 1 (simulate.real_next_user) ------------------------------------------------


def test_real_next_user_is_used_verbatim_at_turn_1_and_no_user_generation_is_asked_for_it():
    import dataclasses

    seeds = make_seeds(4)
    seeds[2] = dataclasses.replace(seeds[2], next_user=None)  # no real next message: turn 1 is generated (counted)
    user, assistant = FakeChat("fake:user"), FakeChat("fake:assistant")
    recs = simulate_seeds(seeds, user, assistant, SimulateConfig(turns=3, real_next_user=True), split="train")
    assert sum(user.generated.values()) == 3 * 2 + 1 * 3  # turn 1 asked only for the seed without one
    assert assistant.calls == 3
    for s, r in zip(seeds, recs):
        first = r["messages"][len(s.context)]
        assert first["role"] == "user" and r["failure"] is None and len(r["messages"]) == len(s.context) + 6
        if s.next_user:
            assert first["content"] == s.next_user  # verbatim
            assert r["real_user_turns"] == [r["context_turns"] + 1]
            assert r["events"][0] == {**r["events"][0], "role": "user", "real": True, "text": s.next_user}
            assert [e["real"] for e in r["events"][1:]] == [False] * 5
            assert r["messages"][len(s.context) + 1]["content"].endswith(f"on {s.next_user.split()[-1].rstrip('?')}.")
        else:
            assert first["content"].startswith("Could you tell me more") and r["real_user_turns"] == []
    from music.stages.simulate import real_next_user_counts

    assert real_next_user_counts(recs, SimulateConfig(real_next_user=True)) == {"real": 3, "generated_no_next_user": 1}
    # every seed with a real next message: no user call at all at step 1
    user2 = FakeChat("fake:user")
    simulate_seeds(make_seeds(3), user2, FakeChat(), SimulateConfig(turns=2, real_next_user=True), split="train")
    assert user2.calls == 1


def test_without_the_switch_turn_1_is_generated_as_before():
    seeds = make_seeds(3)
    user = FakeChat("fake:user")
    recs = simulate_seeds(seeds, user, FakeChat(), SimulateConfig(turns=2, real_next_user=False), split="train")
    assert user.calls == 2 and sum(user.generated.values()) == 6
    for s, r in zip(seeds, recs):
        assert r["messages"][len(s.context)]["content"] != s.next_user and r["real_user_turns"] == []
        assert not any(e["real"] for e in r["events"])
