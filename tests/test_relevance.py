"""Relevance checks of the contrast stage: the modified request kept, contrast margins, echo, and their filters."""

from __future__ import annotations

import pytest

from music.chat import ChatReply
from music.config import ContrastConfig, SimulateConfig
from music.contrast import contrast_conversations
from music.filters import apply_filters
from music.relevance import Contrast, contrast_margins, echo_scores, pick_modified_request
from music.simulate import simulate_seeds
from helpers import USER_PROMPT, FakeChat, WordOverlapEncoder, make_seeds

ENC = WordOverlapEncoder()


def test_the_kept_request_is_on_topic_and_unlike_the_original():
    original = "how long do I boil an egg"
    anchor = "Eggs and pasta both cook in boiling water."
    candidates = ["how long do I boil an egg please",  # a paraphrase: useless as a contrast
                  "what pasta shape goes with pesto",  # on topic, a different request
                  "tell me about the stock market"]  # off topic
    best, scores = pick_modified_request(ENC, original, anchor, candidates)
    assert best == 1 and scores[1] > scores[2] and scores[1] > scores[0]
    assert pick_modified_request(ENC, original, anchor, candidates[:1])[0] == 0
    with pytest.raises(ValueError):
        pick_modified_request(ENC, original, anchor, [])


def test_margins_say_which_reply_answers_which_request():
    good = Contrast("boil an egg", "cook pasta", chosen_reply="boil the egg nine minutes",
                    rejected_reply="cook the pasta ten minutes")
    swapped = Contrast("boil an egg", "cook pasta", chosen_reply="cook the pasta ten minutes",
                       rejected_reply="boil the egg nine minutes")
    (c1, r1), (c2, r2) = contrast_margins(ENC, [good, swapped])
    assert c1 > 0 and r1 > 0 and c2 < 0 and r2 < 0
    assert contrast_margins(ENC, []) == []


def test_echo_sees_a_repeated_message_and_ignores_the_seed_context():
    ctx = [{"role": "user", "content": "tell me a joke"}, {"role": "assistant", "content": "why did the chicken cross"}]
    fine = ctx + [{"role": "user", "content": "another one about cats"}, {"role": "assistant", "content": "cats nap all day"}]
    parrot = ctx + [{"role": "user", "content": "another one about cats"}, {"role": "assistant", "content": "another one about cats"}]
    loop = fine + [{"role": "user", "content": "another one about cats"}, {"role": "assistant", "content": "dogs bark"}]
    scores = echo_scores(ENC, [fine, parrot, loop, ctx + ctx[1:]], [2, 2, 2, 2])
    assert scores[0] < 0.5 and scores[1] == 1.0 and scores[2] == 1.0


def _convs(n=4, turns=3):
    return simulate_seeds(make_seeds(n), FakeChat("fake:user"), FakeChat("fake:assistant"), SimulateConfig(turns=turns),
                          split="train")


def test_resampling_asks_k_times_in_one_call_and_records_relevance():
    user, asst = FakeChat("fake:user"), FakeChat("fake:assistant")
    cfg = ContrastConfig(method="resample", candidates=3, divergence="fixed", divergence_turn=1)
    cands = contrast_conversations(_convs(), user=user, assistant=asst, contrast=None, sim_cfg=SimulateConfig(turns=3),
                                   cfg=cfg, split="train", encoder=ENC)
    assert user.calls == 1 + 2  # one call for the 3 x 4 resampled requests, then the rejected branch's 2 turns
    for c in cands:
        rel = c["fields"]["relevance"]
        assert c["failure"] is None and rel["modified_candidates"] == 3 and len(c["notes"]["modified_scores"]) == 3
        assert rel["chosen_margin"] > 0 and rel["rejected_margin"] > 0  # the fake replies name what they answer
        assert c["fields"]["modified_request"] != c["fields"]["original_request"]
    kept, stats = apply_filters(cands, cfg)
    assert stats["kept"] == len(cands)


def test_unusable_samples_are_not_kept_and_a_weak_contrast_is_filtered():
    def leaky_or_same(messages, seed):  # every resampled request is unusable for the first conversation
        resampling = messages[0]["content"] == USER_PROMPT and len(messages) == 4  # the divergence request of seed 0
        if resampling and "Question 0" in messages[2]["content"] and seed % 2:
            return ChatReply("Sure, here is the answer.", "stop")  # the user model answering: a leak
        return None

    convs = _convs()
    cfg = ContrastConfig(method="resample", candidates=2, divergence="fixed", divergence_turn=1)
    cands = contrast_conversations(convs, user=FakeChat("fake:user", script=leaky_or_same),
                                   assistant=FakeChat("fake:assistant"), contrast=None, sim_cfg=SimulateConfig(turns=3),
                                   cfg=cfg, split="train", encoder=ENC)
    assert all(c["notes"]["modified_candidates"] in (1, 2) for c in cands)  # a leaking sample is never kept
    assert all(c["fields"]["modified_request"] != "Sure, here is the answer." for c in cands)
    strict = ContrastConfig(**{**cfg.__dict__, "min_contrast_margin": 2.0})  # no margin can reach it
    kept, stats = apply_filters(cands, strict)
    assert kept == [] and stats["removed"]["weak_contrast"] == len(cands)
    off = ContrastConfig(**{**cfg.__dict__, "min_contrast_margin": None, "max_echo_similarity": None})
    assert apply_filters(cands, off)[1]["kept"] == len(cands)


def test_an_echoing_conversation_is_filtered():
    cfg = ContrastConfig(method="resample", candidates=1, divergence="fixed", divergence_turn=1, max_echo_similarity=0.9)
    cands = contrast_conversations(_convs(), user=FakeChat("fake:user"), assistant=FakeChat("fake:assistant"),
                                   contrast=None, sim_cfg=SimulateConfig(turns=3), cfg=cfg, split="train", encoder=ENC)
    cands[0]["notes"]["echo"] = 0.97
    kept, stats = apply_filters(cands, cfg)
    assert stats["removed"]["echo"] == 1 and len(kept) == len(cands) - 1


def test_of_the_answered_requests_the_clearest_contrast_is_kept():
    from music.contrast import pick_contrasts
    from music.simulate import Event

    def ev(text):
        return Event("rejected", 2, "assistant", "stop", text, text)

    chosen = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "boil an egg"}, {"role": "assistant", "content": "boil the egg nine minutes"}]
    w = {"history": chosen[:3], "reply_at": 3, "cand": {"fields": {"chosen": chosen}, "events": [], "notes": {}}}
    requests = [ev("cook pasta"), ev("bake bread")]
    answers = [(ev("boil the pasta"), None),  # half about the egg: a weak contrast
               (ev("bake the bread in the oven"), None)]  # clearly answers the modified request
    [(kept_w, (answer, failure))] = pick_contrasts([(w, r) for r in requests], answers, ENC)
    assert kept_w is w and answer.text == "bake the bread in the oven" and failure is None
    assert w["cand"]["fields"]["modified_request"] == "bake bread" and w["cand"]["notes"]["answered_candidates"] == 2
    assert w["cand"]["notes"]["rejected_margin"] > 0 and w["cand"]["notes"]["chosen_margin"] > 0
    # a failed answer is never preferred to a usable one
    w2 = {**w, "cand": {"fields": {"chosen": chosen}, "events": [], "notes": {}}}
    [(_, (answer, failure))] = pick_contrasts([(w2, r) for r in requests], [(ev(""), "empty_reply"), answers[0]], ENC)
    assert failure is None and answer.text == "boil the pasta"
